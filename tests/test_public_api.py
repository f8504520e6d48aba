"""The public namespace."""

from importlib import metadata

import batcher


def test_every_public_name_is_exported() -> None:
    public = {name for name in dir(batcher) if not name.startswith("_")}
    assert public <= set(batcher.__all__)
    for name in batcher.__all__:
        assert hasattr(batcher, name), name


def test_version_comes_from_metadata() -> None:
    assert batcher.__version__ == metadata.version("batcher")


def test_closed_error_is_a_runtime_error() -> None:
    assert issubclass(batcher.BatcherClosedError, RuntimeError)


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(batcher.Prompt("hi"), batcher.TokenEstimator)
    assert not isinstance("hi", batcher.CostEstimator)
