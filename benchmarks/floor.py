"""The overhead floor: about the least work an asyncio batcher can do.

A deque of ``(record, cost, future)`` triples and a single consumer task. The
consumer waits on an :class:`asyncio.Event` while the deque is empty, then
takes up to ``max_batch_size`` records (stopping earlier if the next record
would push the batch over ``target_batch_cost``, when one is given), awaits
the process function and sets the results on plain :class:`asyncio.Future`
objects. No anyio, no validation, no backpressure, no timeouts, no
statistics.

It stands for what batching costs at minimum, so ``batcher / floor`` in the
report says how much of the floor's speed the library keeps while adding its
features.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

RecordT = TypeVar("RecordT")
ResultT = TypeVar("ResultT")

_Pending = tuple[RecordT, int, asyncio.Future[ResultT]]


class FloorBatcher(Generic[RecordT, ResultT]):
    """Minimal batcher with the same ``submit``/``submit_batch`` shape as the others.

    :param process_fn: ``async def f(batch: list) -> list``, results in input order
    :param max_batch_size: most records per batch
    :param target_batch_cost: if given, a batch stops before the record that
        would take its summed cost over this budget (a batch holds at least one)
    """

    def __init__(
        self,
        process_fn: Callable[[list[RecordT]], Awaitable[list[ResultT]]],
        *,
        max_batch_size: int = 256,
        target_batch_cost: int | None = None,
    ) -> None:
        self._process_fn = process_fn
        self._max_batch_size = max_batch_size
        self._target_batch_cost = target_batch_cost
        self._pending: deque[_Pending[RecordT, ResultT]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._consumer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FloorBatcher[RecordT, ResultT]:
        self._consumer = asyncio.create_task(self._consume())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        self._wakeup.set()
        if self._consumer is not None:
            await self._consumer

    async def submit(self, record: RecordT, *, estimated_cost: int | None = None) -> asyncio.Future[ResultT]:
        """Queue one record; the returned future resolves to its result."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._pending.append((record, 1 if estimated_cost is None else estimated_cost, future))
        self._wakeup.set()
        return future

    async def submit_batch(
        self, records: Sequence[RecordT], *, estimated_cost: Sequence[int] | None = None
    ) -> list[asyncio.Future[ResultT]]:
        """Queue many records at once; one future per record, in order."""
        loop = asyncio.get_running_loop()
        costs = [1] * len(records) if estimated_cost is None else estimated_cost
        futures: list[asyncio.Future[ResultT]] = []
        for record, cost in zip(records, costs, strict=True):
            future: asyncio.Future[ResultT] = loop.create_future()
            self._pending.append((record, cost, future))
            futures.append(future)
        self._wakeup.set()
        return futures

    async def _consume(self) -> None:
        while self._pending or not self._closing:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._run(self._take())

    def _take(self) -> list[_Pending[RecordT, ResultT]]:
        pending = self._pending
        budget = self._target_batch_cost
        batch: list[_Pending[RecordT, ResultT]] = []
        cost = 0
        while pending and len(batch) < self._max_batch_size:
            if budget is not None and batch and cost + pending[0][1] > budget:
                break
            item = pending.popleft()
            batch.append(item)
            cost += item[1]
        return batch

    async def _run(self, batch: list[_Pending[RecordT, ResultT]]) -> None:
        try:
            results = await self._process_fn([record for record, _, _ in batch])
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
