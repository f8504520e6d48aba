"""The future a caller gets back from ``submit``, and how callers wait for it.

A future is ``PENDING`` while its record is queued, ``DISPATCHED`` once a worker
has taken its batch, then ends exactly once: ``RESULT``, ``ERROR`` or
``CANCELLED``. The loops change its state only through the functions of
``_transitions.py``; no module but these two writes a future's private attributes.
Callers that wait share events (:func:`park`, :func:`until_done`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from enum import IntEnum
from threading import get_ident
from typing import Any, Generic, TypeAlias, cast

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from ._callbacks import Callbacks, call_back
from ._events import records_dropped
from ._exceptions import RecordCancelledError, raisable
from ._model_call import MODEL_CALL, model_wait
from ._protocols import ResultT
from ._stats import Counters

__all__ = (
    "Batch",
    "BatchFuture",
    "State",
    "is_pending",
    "make_event",
    "park",
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

FOREIGN_THREAD = (
    "a batcher's future was awaited or cancelled from a thread other than its event loop's; "
    "await it on that loop (from other threads use SyncBatcher, whose futures are concurrent.futures ones)"
)


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
        :raises RuntimeError: if called from a thread other than the batcher's event loop's
        """
        if self._state != PENDING:
            return False
        counters = self._counters
        if get_ident() != counters.thread:
            raise RuntimeError(FOREIGN_THREAD)
        counters.cancelled += 1
        self._finish(CANCELLED, None)
        if counters.observe is not None:
            records_dropped(counters.observe, counters, "withdrawn", 1, self._cost)
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
            raise raisable(exc.with_traceback(traceback))
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

    def remove_done_callback(self, function: Callable[[BatchFuture[ResultT]], object]) -> int:
        """Forget every ``function`` added by :meth:`add_done_callback` and not called
        yet (as :meth:`asyncio.Future.remove_done_callback`, which ``asyncio.wait``
        calls).

        :return: how many were forgotten
        """
        event = self._event
        if not isinstance(event, Callbacks):
            return 0
        kept = [other for other in event.functions if other != function]
        removed = len(event.functions) - len(kept)
        event.functions = kept
        return removed

    async def wait(self) -> ResultT:
        """Wait for the future to end; the same as ``await future``."""
        return await self

    def __await__(self) -> Generator[Any, Any, ResultT]:
        if self._state < RESULT:
            while (waiting := until_done(self)) is not None:
                yield from waiting.__await__()
            if self._state == ERROR:  # a cancellation that came meanwhile wins (see until_done)
                yield from checkpoint_if_cancelled().__await__()
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


# ------------------------------------------------ waiting for a future


#: How many waiting callers share one event (``park``) while batches follow arrival order.
PARKED = 16


def park(counters: Counters) -> anyio.Event:
    """The event a caller about to wait on a future parks on: shared by up to
    ``counters.park_group`` callers that park one after another, and set when the
    first of their futures ends; the others then park again (``until_done``).

    Callers share only while batches follow arrival order (``PARKED`` then; the
    run sets it): those that park together then mostly end together, as their
    records are consecutive, and a parked caller costs a share of an event, not a
    whole one. With grouping by cost, priorities or measured choice, their records
    scatter over many batches, and nearly every caller would be woken early once
    (on trio, 45 % slower with 10,000 concurrent grouped callers)."""
    event = counters.parked
    if event is None or counters.parked_left == 0 or event.is_set():
        event = counters.parked = counters.new_event()
        counters.parked_left = counters.park_group
    counters.parked_left -= 1
    return event


def make_event(future: BatchFuture[Any]) -> None:
    """Give ``future`` its event now, for a caller that will wait on it (a ``submit()``
    parked behind a full stream takes it as it parks)."""
    if future._event is None:
        future._event = park(future._counters)


def withdrawn() -> BatchFuture[Any]:
    """A future withdrawn before it began, as a message the loops drop like any withdrawn record."""
    future: BatchFuture[Any] = BatchFuture(None, 0, Counters())
    future._state = CANCELLED
    return future


def until_done(future: BatchFuture[Any]) -> Coroutine[Any, Any, None] | None:
    """What to await next while ``future`` has not ended (an event's ``wait()``), or
    ``None`` once it has: await it in a loop. ``call()`` does, rather than awaiting
    the future, so a parked caller keeps one coroutine fewer and no generator.

    Callers share their event (:func:`park`): woken by another future's end, a
    caller parks again on a fresh one (where a cancellation that came meanwhile is
    delivered). One that finds its future failed takes a checkpoint before it raises
    (``call()``, ``__await__``), so that, as when each caller had an event of its
    own, a cancelled caller raises the cancellation, not the error of a batcher
    that closed under it.

    :raises RuntimeError: if called from a thread other than the batcher's event
        loop's; and, from the awaitable, if the batcher's process function would
        wait for itself (:meth:`ModelCall.begin_wait`)
    """
    if future._state >= RESULT:
        return None
    counters = future._counters
    if get_ident() != counters.thread:
        raise RuntimeError(FOREIGN_THREAD)
    slot = future._event
    event = slot.event if isinstance(slot, Callbacks) else slot
    if event is None or event.is_set():
        # The first wait parks with others; a caller woken by another future's end parks
        # again on an event of its own, so it is woken early at most once.
        event = park(counters) if event is None else counters.new_event()
        if isinstance(slot, Callbacks):
            slot.event = event
        else:
            future._event = event
    if MODEL_CALL.get() is None:
        return event.wait()
    return model_wait(counters, event)  # in a process function: perhaps its own batcher's


def is_pending(future: BatchFuture[Any]) -> bool:
    """Whether the future's record is still queued (not withdrawn, not dispatched)."""
    return future._state == PENDING
