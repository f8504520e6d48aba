"""What a batcher tells its observers: one small immutable event when a batch is
dispatched and when it ends, and one when records leave without reaching the
model (withdrawn, expired, refused by load shedding, or failed by an abnormal stop).

An observer is any callable taking an event; it runs in the task that caused the
event (a worker, a submitter), so it must be quick and must not block. One that
raises an ``Exception`` is logged and never breaks the batcher; one that raises past
it (``KeyboardInterrupt``) ends the batcher as the process function would. A batch's
two events are told to the observers there were when it was dispatched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._callbacks import raised_past_exception
from ._model import is_async

if TYPE_CHECKING:
    from ._future import BatchFuture
    from ._stats import Counters

__all__ = (
    "BatchDispatched",
    "BatchEnded",
    "Event",
    "Observer",
    "Observers",
    "Outcome",
    "RecordsDropped",
    "batch_dispatched",
    "batch_ended",
    "records_dropped",
)

logger = logging.getLogger("batcher")


@dataclass(frozen=True, slots=True)
class BatchDispatched:
    """A worker has taken a batch and is about to run it."""

    batch: int  #: the batch's number in the batcher's life, from 1
    worker: int  #: which worker runs it, from 0 (one ``configure()`` starts takes the lowest index left)
    size: int  #: its records
    cost: int  #: its cost by the cost model (``padded``: ``size * max(costs)``)
    records_cost: int  #: the sum of its records' own costs (tokens, for a padded model)
    #: ``cost / target_batch_cost`` as it is at dispatch: above 1 for one oversized
    #: record, or for a batch closed ahead before ``configure()`` lowered the target
    fill_ratio: float
    queue_waits_s: tuple[float, ...]  #: each record's time from submit to dispatch, in seconds
    queued: int  #: records still queued, after this batch left the queue
    queued_cost: int  #: their cost
    batches_in_flight: int  #: batches in the process function, this one included


Outcome: TypeAlias = Literal["ok", "failed", "timed_out", "closed"]


@dataclass(frozen=True, slots=True)
class BatchEnded:
    """A batch has ended: ``outcome`` is ``"ok"`` (results handed out; ``failed``
    of them were exceptions in their slots), ``"failed"`` (the process function
    raised), ``"timed_out"`` (``process_timeout_s``) or ``"closed"`` (the batcher
    was cancelled or ended by a fatal exception)."""

    batch: int
    worker: int
    size: int
    cost: int
    duration_s: float  #: time in the process function
    outcome: Outcome
    failed: int  #: records that ended with an exception
    queued: int  #: records queued as it ended
    queued_cost: int  #: their cost
    batches_in_flight: int  #: batches still in the process function


@dataclass(frozen=True, slots=True)
class RecordsDropped:
    """Records left without reaching the model: ``"withdrawn"`` (cancelled before
    dispatch), ``"expired"`` (``QueueTimeoutError``), ``"shed"`` (refused with
    ``BatcherOverloadedError``; never queued) or ``"closed"`` (still queued when the
    batcher stopped abnormally: failed with ``BatcherClosedError``)."""

    reason: Literal["withdrawn", "expired", "shed", "closed"]
    records: int
    cost: int
    queued: int  #: records queued once they left (as in the batch events)
    queued_cost: int  #: their cost
    batches_in_flight: int  #: batches in the process function


Event: TypeAlias = BatchDispatched | BatchEnded | RecordsDropped
Observer: TypeAlias = Callable[[Event], object]


class Observers:
    """The observers of one batcher, called in the order they were added."""

    __slots__ = ("_observers",)

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        """:raises TypeError: if ``observers`` is not an iterable of plain callables (naming it)"""
        self._observers: tuple[Observer, ...] = ()
        if not isinstance(observers, Iterable) or isinstance(observers, (str, bytes)):
            raise TypeError(f"observers must be a list of callables, got {type(observers).__name__}")
        for observer in observers:
            try:
                self.add(observer)
            except TypeError as exc:
                raise TypeError(f"observers: {exc}") from None

    def __bool__(self) -> bool:
        return bool(self._observers)

    def add(self, observer: Observer) -> None:
        """:raises TypeError: if ``observer`` is not a plain callable"""
        if not callable(observer):
            raise TypeError(f"an observer must be callable, got {type(observer).__name__}")
        if is_async(observer):
            raise TypeError(
                f"an observer must be a plain callable, got the async {observer!r}: observers run inside "
                "the batcher's loops, which do not await them (hand the event to a task of your own)"
            )
        self._observers = (*self._observers, observer)

    def remove(self, observer: Observer) -> None:
        """:raises ValueError: if ``observer`` was not added"""
        if observer not in self._observers:
            raise ValueError("remove_observer() got an observer that was not added")
        observers = list(self._observers)
        observers.remove(observer)
        self._observers = tuple(observers)

    def frozen(self, counters: Counters) -> Callable[[Event], None]:
        """A call of the observers there are now, unchanged by later adds and removes
        (so a batch's end goes to those that saw it dispatched)."""
        return partial(_tell, self._observers, counters)


def _tell(observers: tuple[Observer, ...], counters: Counters, event: Event) -> None:
    for observer in observers:
        try:
            observer(event)
        except Exception:
            logger.exception("observer %r raised on %r; the batcher goes on", observer, event)
        except BaseException as exc:
            raised_past_exception(counters, exc, f"observer {observer!r} on {event!r}")


def batch_dispatched(
    observe: Observer,
    counters: Counters,
    number: int,
    worker: int,
    batch: list[BatchFuture[Any]],
    cost: int,
    target: int,
    waits: list[float],
) -> None:
    """Tell the observers (there are some) that a batch was dispatched."""
    records_cost = sum(future._cost for future in batch)
    shape = (number, worker, len(batch), cost, records_cost, cost / target, tuple(waits))
    observe(BatchDispatched(*shape, counters.queued, counters.queued_cost, counters.running))


def records_dropped(
    observe: Observer,
    counters: Counters,
    reason: Literal["withdrawn", "expired", "shed", "closed"],
    records: int,
    cost: int,
) -> None:
    """Tell the observers (there are some) that records left without reaching the model."""
    observe(RecordsDropped(reason, records, cost, counters.queued, counters.queued_cost, counters.running))


def batch_ended(
    observe: Observer,
    counters: Counters,
    number: int,
    worker: int,
    batch: list[BatchFuture[Any]],
    cost: int,
    duration: float,
    outcome: Outcome,
    results: list[Any] | None,
) -> None:
    """Tell the observers (there are some) that a batch ended with ``outcome``
    (``results``: those it returned, if any)."""
    if results is not None:
        failed = sum(isinstance(result, Exception) for result in results)
    else:  # the batch streamed or failed: its futures have ended, a streamed one perhaps with its result
        failed = sum(future.exception() is not None for future in batch if future.done() and not future.cancelled())
    shape = (number, worker, len(batch), cost, duration, outcome, failed)
    observe(BatchEnded(*shape, counters.queued, counters.queued_cost, counters.running))
