"""The future a caller gets back from ``submit``, and every change of its state.

A future is ``PENDING`` while its record is queued, ``DISPATCHED`` once a worker
has taken its batch, then ends exactly once: ``RESULT``, ``ERROR`` or
``CANCELLED``. The loops end futures only through the functions at the bottom of
this module (:func:`dispatch`, :func:`settle`, :func:`fail`, :func:`fail_queued`);
no other module writes a future's private attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator, Sequence
from contextvars import ContextVar
from enum import IntEnum
from time import monotonic
from typing import Any, Generic, TypeAlias, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ._callbacks import Callbacks, call_back
from ._events import RecordsDropped
from ._exceptions import RecordCancelledError, queue_timeout
from ._protocols import ResultT
from ._stats import Counters

__all__ = (
    "WORKER_OF",
    "Batch",
    "BatchFuture",
    "State",
    "dispatch",
    "end",
    "expire",
    "fail",
    "fail_queued",
    "is_pending",
    "make_event",
    "settle",
    "time_queued",
    "until_done",
    "withdrawn",
)


class State(IntEnum):
    """Where a future is in its life; the last three are ends."""

    PENDING = 0
    DISPATCHED = 1
    RESULT = 2
    ERROR = 3
    CANCELLED = 4


# Module-level names for the states: the loops compare them once per record.
PENDING, DISPATCHED, RESULT, ERROR, CANCELLED = State

SELF_WAIT = (
    "process_fn awaited a result of its own batcher, which would wait for itself: "
    "with max_concurrent_batches=1 the batch it waits for cannot run"
)

#: In a worker's task, and in the tasks the process function starts from it: the
#: counters of that worker's batcher (they identify the batcher to its futures).
WORKER_OF: ContextVar[Counters | None] = ContextVar("batcher_worker_of", default=None)


class BatchFuture(Generic[ResultT]):
    """The eventual result of one submitted record.

    ``await future`` returns the record's result, or raises the very exception the
    process function raised (or returned in the record's slot). It behaves like
    :class:`asyncio.Future` where callers notice: :meth:`done`, :meth:`result`,
    :meth:`exception`, :meth:`cancel`, :meth:`cancelled`, and it can be awaited by
    any number of tasks, under asyncio or trio, or passed to ``asyncio.gather``.

    Cancelling a task that awaits the future does not withdraw the record; use
    :meth:`cancel`, or :meth:`DynamicBatcher.call` which does it for you.
    """

    # One of these exists per queued record: keep it small. The event is created
    # only when someone waits on a future that is not done yet.
    __slots__ = ("_cost", "_counters", "_event", "_priority", "_record", "_state", "_value")

    def __init__(self, record: Any, cost: int, counters: Counters, priority: int = 0) -> None:
        self._record = record
        self._cost = cost
        self._priority = priority
        self._counters = counters
        self._state = PENDING
        self._value: Any = None  # while queued: when it was queued, if it is timed
        self._event: anyio.Event | Callbacks | None = None

    def __repr__(self) -> str:
        return f"<BatchFuture {self._state.name.lower()}>"

    def done(self) -> bool:
        """Return whether the future has ended (result, exception or cancelled)."""
        return self._state >= RESULT

    def cancelled(self) -> bool:
        """Return whether the record was withdrawn before dispatch."""
        return self._state == CANCELLED

    def cancel(self) -> bool:
        """Withdraw the record if it has not been dispatched yet.

        A withdrawn record never reaches the process function, and awaiting its
        future raises :exc:`RecordCancelledError`.

        :return: ``True`` if the record was withdrawn, ``False`` if it was already
            dispatched or the future had already ended
        """
        if self._state != PENDING:
            return False
        counters = self._counters
        counters.cancelled += 1
        self._finish(CANCELLED, None)
        if counters.observe is not None:
            counters.observe(RecordsDropped("withdrawn", 1, self._cost))
        return True

    def result(self) -> ResultT:
        """Return the result, or raise the record's exception.

        :raises RecordCancelledError: if the record was withdrawn
        :raises RuntimeError: if the future has not ended yet
        """
        state = self._state
        if state == RESULT:
            return cast(ResultT, self._value)
        if state == ERROR:
            # As asyncio.Future does: raise with the traceback saved when the future
            # failed, so re-raising does not grow it or keep earlier callers' frames.
            exc, traceback = self._value
            raise exc.with_traceback(traceback)
        if state == CANCELLED:
            raise RecordCancelledError("the record was withdrawn before dispatch")
        raise RuntimeError("result is not ready; await the future first")

    def exception(self) -> BaseException | None:
        """Return the record's exception, or ``None`` if it ended with a result.

        :raises RecordCancelledError: if the record was withdrawn
        :raises RuntimeError: if the future has not ended yet
        """
        state = self._state
        if state == RESULT:
            return None
        if state == ERROR:
            return cast(BaseException, self._value[0])
        if state == CANCELLED:
            raise RecordCancelledError("the record was withdrawn before dispatch")
        raise RuntimeError("exception is not ready; await the future first")

    def add_done_callback(self, function: Callable[[BatchFuture[ResultT]], object]) -> None:
        """Call ``function(future)`` when the future ends, or at once if it has.

        Unlike :class:`asyncio.Future`, the call is made right away, in the task
        that ends the future (usually a worker): ``function`` must be quick and
        must not block. An exception it raises is logged and otherwise ignored.
        """
        if self._state >= RESULT:
            call_back(function, self)
            return
        event = self._event
        if not isinstance(event, Callbacks):
            event = self._event = Callbacks(self, event)
        event.functions.append(function)

    async def wait(self) -> ResultT:
        """Wait for the future to end; the same as ``await future``."""
        return await self

    def __await__(self) -> Generator[Any, Any, ResultT]:
        if self._state < RESULT:
            # until_done(), written out: this runs once per awaited record.
            if self._counters.sole_worker_in_model and WORKER_OF.get() is self._counters:
                raise RuntimeError(SELF_WAIT)
            event = self._event
            if event is None:
                event = self._event = self._counters.new_event()
            yield from event.wait().__await__()
        if self._state == RESULT:
            return cast(ResultT, self._value)
        return self.result()  # raises

    def _finish(self, state: State, value: Any) -> None:
        # Ends the future exactly once; later calls are ignored. ERROR's value is
        # the exception and its traceback as it was when the future failed.
        if self._state >= RESULT:
            return
        if self._state == PENDING:  # it leaves the queue
            self._counters.queued_cost -= self._cost
        self._state = state
        self._value = value
        self._record = None  # the record is no longer needed: let it go
        event = self._event
        if event is not None:
            event.set()


#: A closed batch, as the batch stream carries it.
Batch: TypeAlias = "list[BatchFuture[Any]]"


# ------------------------------------------------ the loops' transitions


def make_event(future: BatchFuture[Any]) -> None:
    """Give ``future`` its event now, for a caller that will wait on it (a ``submit()``
    parked behind a full stream makes it as it parks, while the last record's objects
    are being freed, so that the cyclic GC sees allocation and release alternate)."""
    if future._event is None:
        future._event = future._counters.new_event()


def withdrawn() -> BatchFuture[Any]:
    """A future withdrawn before it began, as a message the loops drop like any withdrawn record."""
    future: BatchFuture[Any] = BatchFuture(None, 0, Counters())
    future._state = CANCELLED
    return future


def until_done(future: BatchFuture[Any]) -> Coroutine[Any, Any, None] | None:
    """What to await until ``future`` ends (its event's ``wait()``), or ``None`` if it
    has: ``call()`` awaits this, not the future, so a parked caller keeps one coroutine
    fewer and no generator (BENCHMARKS.md, "Scaling").

    :raises RuntimeError: if the batcher's only worker would wait for itself
    """
    if future._state >= RESULT:
        return None
    counters = future._counters
    if counters.sole_worker_in_model and WORKER_OF.get() is counters:
        raise RuntimeError(SELF_WAIT)
    event = future._event
    if event is None:
        event = future._event = counters.new_event()
    return event.wait()


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


def is_pending(future: BatchFuture[Any]) -> bool:
    """Whether the future's record is still queued (not withdrawn, not dispatched)."""
    return future._state == PENDING


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


def settle(batch: Sequence[BatchFuture[Any]], results: Sequence[Any], counters: Counters) -> None:
    """End each future of a dispatched batch with its result; an ``Exception``
    in a slot fails that future alone."""
    failed = 0
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
    counters.completed += len(batch)
    counters.failed += failed


def end(future: BatchFuture[Any], value: Any, counters: Counters) -> None:
    """End a dispatched ``future`` with ``value``, unless it has ended."""
    if future._state < RESULT:
        future._finish(RESULT, value)
        counters.completed += 1


def fail(batch: Sequence[BatchFuture[Any]], exc: BaseException, counters: Counters) -> None:
    """End every unfinished future of ``batch`` with ``exc``."""
    ended = 0
    error = (exc, exc.__traceback__)
    for future in batch:
        if future._state < RESULT:
            ended += 1
            future._finish(ERROR, error)
    counters.completed += ended
    counters.failed += ended


def expire(future: BatchFuture[Any], counters: Counters) -> None:
    """Fail ``future`` with :exc:`QueueTimeoutError` if its record is still queued."""
    if future._state == PENDING:
        counters.expired += 1
        future._finish(ERROR, (queue_timeout(), None))  # a new exception: no traceback yet
        if counters.observe is not None:
            counters.observe(RecordsDropped("expired", 1, future._cost))


def fail_queued(stream: MemoryObjectReceiveStream[Any], exc: BaseException, counters: Counters) -> None:
    """Fail every future still queued in ``stream`` (single futures, the wake-up among
    them, or batches of them) without waiting."""
    while True:
        try:
            item = stream.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return
        fail((item,) if isinstance(item, BatchFuture) else item, exc, counters)
