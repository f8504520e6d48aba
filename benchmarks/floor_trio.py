"""The overhead floor on trio: the least work a trio batcher can do.

The same shape as :class:`benchmarks.floor.FloorBatcher`: a deque of pending
records and one consumer task, which waits on a :class:`trio.Event` while the
deque is empty, takes up to ``max_batch_size`` records, awaits the process
function and hands each result to a minimal future (a value and a
:class:`trio.Event`, made only when someone waits). No anyio, no validation, no
backpressure, no budget. It shows what trio itself costs per record, so the
scaling tables can tell trio's growth from the library's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

import trio

RecordT = TypeVar("RecordT")
ResultT = TypeVar("ResultT")


class TrioFuture(Generic[ResultT]):
    """A result slot that can be awaited once it is set."""

    __slots__ = ("_done", "_event", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._event: trio.Event | None = None

    def set_result(self, value: ResultT) -> None:
        self._done, self._value = True, value
        if self._event is not None:
            self._event.set()

    def __await__(self) -> Generator[Any, Any, ResultT]:
        if not self._done:
            if self._event is None:
                self._event = trio.Event()
            yield from self._event.wait().__await__()
        return self._value  # type: ignore[no-any-return]


class TrioFloorBatcher(Generic[RecordT, ResultT]):
    """Minimal trio batcher with ``submit``; use as ``async with``."""

    def __init__(
        self, process_fn: Callable[[list[RecordT]], Awaitable[list[ResultT]]], *, max_batch_size: int = 256
    ) -> None:
        self._process_fn = process_fn
        self._max_batch_size = max_batch_size
        self._pending: deque[tuple[RecordT, TrioFuture[ResultT]]] = deque()
        self._wakeup = trio.Event()
        self._closing = False
        self._nursery_manager = trio.open_nursery()

    async def __aenter__(self) -> TrioFloorBatcher[RecordT, ResultT]:
        nursery = await self._nursery_manager.__aenter__()
        nursery.start_soon(self._consume)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._closing = True
        self._wakeup.set()
        await self._nursery_manager.__aexit__(*exc_info)

    async def submit(self, record: RecordT) -> TrioFuture[ResultT]:
        """Queue one record; the returned future resolves to its result."""
        future: TrioFuture[ResultT] = TrioFuture()
        self._pending.append((record, future))
        self._wakeup.set()
        return future

    async def _consume(self) -> None:
        pending = self._pending
        while pending or not self._closing:
            if not pending:
                self._wakeup = trio.Event()  # trio's events cannot be cleared
                await self._wakeup.wait()
                continue
            batch = [pending.popleft() for _ in range(min(len(pending), self._max_batch_size))]
            results = await self._process_fn([record for record, _ in batch])
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)
