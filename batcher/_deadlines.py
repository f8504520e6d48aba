"""Queue deadlines: a record still queued when its deadline passes fails with
:exc:`QueueTimeoutError` and never reaches the process function.

The deadlines sit in a heap; one task of the run, :meth:`Deadlines.keep`, sleeps
until the earliest and expires the records that are still queued then, wherever
they wait: behind the stream, in it, in the aggregator's next batch, or in a
closed batch no worker has taken yet. A dispatched record is never expired.
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush
from itertools import count
from time import monotonic
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._future import BatchFuture, is_pending
from ._stats import Counters
from ._transitions import expire

__all__ = ("Deadlines",)


class Deadlines:
    """The queue deadlines of one run's records, earliest first."""

    __slots__ = ("_counters", "_heap", "_order", "_wake")

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        # (deadline, order of arrival, future); the order breaks ties without
        # comparing futures. Dispatched records leave lazily, when they come first.
        self._heap: list[tuple[float, int, BatchFuture[Any]]] = []
        self._order = count()
        self._wake: anyio.Event | None = None  # set to make keep() look again

    def add(self, future: BatchFuture[Any], delay: float) -> None:
        """Expire ``future`` if it is still queued ``delay`` seconds from now."""
        heap = self._heap
        if len(heap) > 2 * self._counters.queued + 64:
            # Most entries are of records gone from the queue, which would be kept
            # (with their results) until their deadlines: drop them, once per as
            # many additions as there are entries.
            heap[:] = [entry for entry in heap if is_pending(entry[2])]
            heapify(heap)
        deadline = monotonic() + delay
        heappush(heap, (deadline, next(self._order), future))
        if heap[0][2] is future and self._wake is not None:  # the earliest: keep() sleeps too long
            self._wake.set()

    async def keep(self, *, task_status: TaskStatus[None]) -> None:
        """Expire records as their deadlines pass, until cancelled."""
        task_status.started()
        while True:
            wait_s = self.expire_due(monotonic())
            self._wake = wake = anyio.Event()
            with anyio.move_on_after(wait_s):
                await wake.wait()

    def expire_due(self, now: float) -> float:
        """Expire the queued records whose deadline is ``now`` or earlier; return the
        seconds until the next deadline (``inf`` if there is none)."""
        heap, counters = self._heap, self._counters
        while heap:
            deadline, _, future = heap[0]
            if deadline > now and is_pending(future):
                return deadline - now
            heappop(heap)
            expire(future, counters)  # does nothing unless it is still queued
        return math.inf
