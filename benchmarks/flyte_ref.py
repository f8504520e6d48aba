"""Loads flyte's ``DynamicBatcher``, the reference the project is measured against.

flyte 2.12.1 ships its batcher in ``flyte/extras/_dynamic_batcher.py``, a
module that needs only the standard library. Importing the ``flyte`` package
itself would pull in its many dependencies, so it is installed without them
(``pip install --no-deps flyte==2.12.1``) and that one file is loaded
straight from its path. ``importlib.util.find_spec("flyte")`` locates the
package without executing its ``__init__``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

FLYTE_VERSION = "2.12.1"
INSTALL_HINT = f"pip install --no-deps flyte=={FLYTE_VERSION}"
_MODULE_NAME = "benchmarks._flyte_dynamic_batcher"
_RELATIVE_PATH = Path("extras") / "_dynamic_batcher.py"


@dataclass(frozen=True)
class FlyteRef:
    """The loaded module (``None`` when unavailable) and a line saying why or which."""

    module: ModuleType | None
    message: str


def load() -> FlyteRef:
    """Load flyte's batcher module without importing the ``flyte`` package."""
    spec = importlib.util.find_spec("flyte")
    if spec is None or spec.origin is None:
        return FlyteRef(None, f"flyte is not installed; skipping its column ({INSTALL_HINT})")
    path = Path(spec.origin).parent / _RELATIVE_PATH
    if not path.is_file():
        return FlyteRef(None, f"flyte has no {_RELATIVE_PATH}; skipping its column ({INSTALL_HINT})")
    version = importlib.metadata.version("flyte")
    return FlyteRef(_exec_file(path), f"flyte {version}: {path}")


def _exec_file(path: Path) -> ModuleType:
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves string annotations through sys.modules
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module
