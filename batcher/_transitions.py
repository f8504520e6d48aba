"""Every change of a future's state that the loops make: :func:`dispatch` (a
worker takes a batch), :func:`settle` and :func:`end` (results), :func:`fail`,
:func:`expire` (a queue deadline) and :func:`fail_queued`, and the timing of
records from submit to dispatch (:func:`time_queued`). The loops end futures only
through these; a caller withdraws its own record with :meth:`BatchFuture.cancel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import monotonic
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._events import records_dropped
from ._exceptions import queue_timeout
from ._future import DISPATCHED, ERROR, PENDING, RESULT, BatchFuture
from ._stats import Counters

__all__ = ("dispatch", "end", "expire", "fail", "fail_queued", "settle", "time_queued")


def time_queued(future: BatchFuture[Any], now: float) -> None:
    """Time ``future``, queued at ``now`` (the monotonic clock), until it is dispatched,
    if it is to be timed: every record while the batcher is observed, else one at a
    time (``counters.timed``). The time is kept where its result will go."""
    counters = future._counters
    if counters.observe is not None:
        future._value = now
    elif counters.timed is None:
        future._value = now
        counters.timed = future


def dispatch(batch: Sequence[BatchFuture[Any]], counters: Counters) -> tuple[list[BatchFuture[Any]], list[float]]:
    """Mark the still-pending futures of a closed batch dispatched; return them and
    the queue waits (seconds) of those timed. Records withdrawn while their batch
    waited are left out; from here on the others can no longer be withdrawn."""
    taken = [future for future in batch if future._state == PENDING]
    cost = 0
    for future in taken:
        future._state = DISPATCHED
        cost += future._cost
    counters.queued_cost -= cost
    return taken, _waits(taken, counters)


def _waits(taken: list[BatchFuture[Any]], counters: Counters) -> list[float]:
    # The waits of the timed records taken: all while observed; else the one being
    # timed, once it left the queue (if it reached a worker), and the next is timed.
    if counters.observe is None:
        timed = counters.timed
        if timed is None or timed._state == PENDING:
            return []
        counters.timed = None
        taken = [timed] if timed._state == DISPATCHED else []
    now = monotonic()
    waits = []
    for future in taken:
        if future._value is not None:
            waits.append(now - future._value)
            future._value = None
    return waits


def settle(batch: Sequence[BatchFuture[Any]], results: Sequence[Any], counters: Counters) -> int:
    """End each future of a dispatched batch with its result; an ``Exception``
    in a slot fails that future alone. Return how many of them a caller waited
    on (had an event, perhaps shared with others)."""
    failed = waited = 0
    for future, result in zip(batch, results, strict=True):
        # _finish() for a dispatched future, written out: this runs once per record,
        # and the call cost 2-3 % of throughput (BENCHMARKS.md, "Against an earlier
        # revision").
        if isinstance(result, Exception):
            failed += 1
            future._state, future._value = ERROR, (result, result.__traceback__)
        else:
            future._state, future._value = RESULT, result
        future._record = None
        event = future._event
        if event is not None:
            event.set()
            waited += 1
    counters.completed += len(batch)
    counters.failed += failed
    return waited


def end(future: BatchFuture[Any], value: Any, counters: Counters) -> None:
    """End a dispatched ``future`` with ``value``, unless it has ended."""
    if future._state < RESULT:
        future._finish(RESULT, value)
        counters.completed += 1


def fail(batch: Sequence[BatchFuture[Any]], exc: BaseException, counters: Counters) -> None:
    """End every unfinished future of ``batch`` with ``exc``. Records still queued
    (the batcher is closing) are told to the observers as dropped, ``"closed"``."""
    ended = queued = queued_cost = 0
    error = (exc, exc.__traceback__)
    for future in batch:
        if future._state < RESULT:
            ended += 1
            if future._state == PENDING:
                queued += 1
                queued_cost += future._cost
            future._finish(ERROR, error)
    counters.completed += ended
    counters.failed += ended
    if queued:
        counters.closed += queued
        if counters.observe is not None:
            records_dropped(counters.observe, counters, "closed", queued, queued_cost)


def expire(future: BatchFuture[Any], counters: Counters) -> None:
    """Fail ``future`` with :exc:`QueueTimeoutError` if its record is still queued."""
    if future._state == PENDING:
        counters.expired += 1
        future._finish(ERROR, (queue_timeout(), None))  # a new exception: no traceback yet
        if counters.observe is not None:
            records_dropped(counters.observe, counters, "expired", 1, future._cost)


def fail_queued(stream: MemoryObjectReceiveStream[Any], exc: BaseException, counters: Counters) -> None:
    """Fail every future still queued in ``stream`` (single futures, the wake-up among
    them, or batches of them) without waiting."""
    while True:
        try:
            item = stream.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return
        fail((item,) if isinstance(item, BatchFuture) else item, exc, counters)
