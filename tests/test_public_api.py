"""The public namespace, its documentation and its logger."""

from __future__ import annotations

import inspect
import logging
import pydoc
import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest

import batcher


def test_every_public_name_is_exported() -> None:
    public = {name for name in dir(batcher) if not name.startswith("_")}
    # batcher.ray needs the ray extra: a submodule imported on demand, never by batcher itself.
    assert public - {"ray"} <= set(batcher.__all__)
    for name in batcher.__all__:
        assert hasattr(batcher, name), name


def test_version_comes_from_metadata() -> None:
    assert batcher.__version__ == metadata.version("batcher")


def test_closed_error_is_a_runtime_error() -> None:
    assert issubclass(batcher.BatcherClosedError, RuntimeError)


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(batcher.Prompt("hi"), batcher.TokenEstimator)
    assert not isinstance("hi", batcher.CostEstimator)


@pytest.mark.parametrize("kind", [batcher.DynamicBatcher, batcher.TokenBatcher])
def test_help_describes_every_parameter(kind: type[Any]) -> None:
    text = pydoc.plain(pydoc.render_doc(kind))
    for name in inspect.signature(kind).parameters:
        assert f":param {name}:" in text, name


@pytest.mark.parametrize("method", ["submit", "submit_nowait", "submit_batch", "call"])
def test_token_batcher_methods_carry_their_own_docstrings(method: str) -> None:
    doc = inspect.getdoc(getattr(batcher.TokenBatcher, method)) or ""
    assert "see :meth:`DynamicBatcher" not in doc
    assert "estimated_tokens" in doc
    assert ":raises RuntimeError:" in doc
    if method == "call":
        assert "with anyio.fail_after(1): await batcher.call(x)" in doc  # the deadline behaviour


def test_the_logger_has_only_a_null_handler() -> None:
    handlers = logging.getLogger("batcher").handlers
    assert [type(handler) for handler in handlers] == [logging.NullHandler]


HANDLED_FAILURE = """
import anyio
from batcher import DynamicBatcher

async def model(batch):
    raise KeyError("the caller handles this")

async def main():
    async with DynamicBatcher(model) as batcher:
        try:
            await batcher.call(1)
        except KeyError:
            print("handled")

anyio.run(main, backend={backend!r})
"""


def test_a_handled_failure_prints_nothing_without_logging_configured(anyio_backend: str) -> None:
    script = HANDLED_FAILURE.format(backend=anyio_backend)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "handled\n", "")


def test_ray_is_imported_only_by_batcher_ray() -> None:
    script = "import sys, batcher; assert 'ray' not in sys.modules; print('ok')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "ok\n")


def test_batcher_ray_without_ray_names_the_extra() -> None:
    script = "import sys; sys.modules['ray'] = None; import batcher.ray"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install -e '.[ray]'" in done.stderr
