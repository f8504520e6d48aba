"""A process function that records what it saw and can hold a batch in flight, a
batcher whose model is blocked on its first batch, and a bound on a class's tests."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple, TypeVar

import anyio

from batcher import BatchFuture, DynamicBatcher

# What submit and its twins raise once the batcher has stopped.
NOT_RUNNING = "batcher is not running; use 'async with batcher:' or start()"


class Seen:
    """The batches a test's process function saw."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    @property
    def records(self) -> list[Any]:
        """Every record the model saw, in the order it saw them."""
        return [record for batch in self.batches for record in batch]


class Recorder(Seen):
    """An async process function that records each batch and answers ``("done", record)``
    for each record. While ``hold`` is set, each call parks inside the model until
    :meth:`release` (which lets every held and later batch through), so a test can keep
    a worker busy."""

    def __init__(self, *, hold: bool = False) -> None:
        super().__init__()
        self.hold = hold
        self.entered = anyio.Event()
        self._released = anyio.Event()

    async def __call__(self, batch: list[Any]) -> list[Any]:
        self.batches.append(list(batch))
        self.entered.set()
        if self.hold:
            await self._released.wait()
        return [("done", record) for record in batch]

    def release(self) -> None:
        self.hold = False
        self._released.set()


class Blocked(NamedTuple):
    batcher: DynamicBatcher[Any, Any]
    model: Recorder
    first: BatchFuture[Any]  # the record "first", of cost 1, which the model holds


@asynccontextmanager
async def blocked_batcher(**settings: Any) -> AsyncIterator[Blocked]:
    """Run ``DynamicBatcher(model, **settings)`` with a held :class:`Recorder` as its
    model, and enter the block once the model has entered its first batch (the record
    ``"first"``), so the worker is busy. Leaving the block normally releases the model
    and drains the batcher; leaving it with an exception does not release it. The
    whole block is bounded by ``anyio.fail_after(5)``.

    ``async with blocked_batcher(max_batch_size=1) as (batcher, model, first): ...``
    """
    model = Recorder(hold=True)
    with anyio.fail_after(5):
        async with DynamicBatcher(model, **settings) as batcher:
            first = await batcher.submit("first", estimated_cost=1)
            await model.entered.wait()
            yield Blocked(batcher, model, first)
            model.release()


class EntryHeld:
    """A mixin for a model that is an async context manager: its entry, as the batcher
    starts, sets ``entering`` and waits there until ``enter`` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entering, self.enter = anyio.Event(), anyio.Event()

    async def __aenter__(self) -> Any:
        self.entering.set()
        await self.enter.wait()
        return self


C = TypeVar("C", bound=Callable[..., Any])


def bounded(seconds: float) -> Callable[[C], C]:
    """A decorator of an async test, or of a class (each of its ``async def test_...``):
    it runs within ``anyio.fail_after(seconds)``, so a test whose awaited event never
    comes fails instead of hanging until pytest's timeout."""

    def bound(target: C) -> C:
        if not isinstance(target, type):
            return _within(seconds, target)  # type: ignore[return-value]
        for name, test in list(vars(target).items()):
            if name.startswith("test") and inspect.iscoroutinefunction(test):
                setattr(target, name, _within(seconds, test))
        return target

    return bound


def _within(seconds: float, test: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(test)
    async def within(*args: Any, **kwargs: Any) -> Any:
        with anyio.fail_after(seconds):
            return await test(*args, **kwargs)

    return within
