"""Counters kept while a batcher runs, and the snapshot users read."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import EventLoopToken

if TYPE_CHECKING:
    from ._cost_fit import CostFit
    from ._events import Event

__all__ = ("WINDOW", "BatchStats", "Counters", "FittedCost", "event_factory")

#: How many recent samples the percentiles of :class:`BatchStats` are over.
WINDOW = 1024


@dataclass(frozen=True)
class FittedCost:
    """What ``cost_model="measured"`` has found a batch's time to be, in seconds:
    ``fixed_s + per_record_s x records + per_padded_token_s x records x longest``,
    and ``new_shape_s`` more for a shape (records x longest) that the worker has not
    run before. Fitted by least squares with no negative term over the last
    ``batches`` batches (at most 64). On a GPU, ``fixed_s`` is what every batch pays
    whatever its size, and ``new_shape_s`` a thread's first run of a shape; on a
    CPU, ``per_padded_token_s`` is most of a transformer's time.
    """

    fixed_s: float
    per_record_s: float
    per_padded_token_s: float
    new_shape_s: float
    batches: int

    def predict(self, records: int, padded_tokens: int, new_shape: bool = False) -> float:
        """The seconds this fit predicts for a batch of ``records`` records and
        ``padded_tokens`` padded tokens (records x longest)."""
        seconds = self.fixed_s + self.per_record_s * records + self.per_padded_token_s * padded_tokens
        return seconds + self.new_shape_s if new_shape else seconds


@dataclass(frozen=True)
class BatchStats:
    """A snapshot of a batcher's counters; later work does not change it.

    Counts accumulate over the batcher's whole life, across restarts.
    ``total_completed`` counts futures that ended with a result or an exception
    (``total_failed`` of them with an exception); ``total_cancelled`` counts
    records withdrawn before dispatch; ``total_expired`` counts records that
    failed with :exc:`QueueTimeoutError` (still queued at their queue deadline,
    never dispatched); ``total_shed`` counts records refused with
    :exc:`BatcherOverloadedError` (never submitted). Once a batcher has stopped,
    ``total_submitted == total_completed + total_cancelled + total_expired``.

    ``queued``, ``queued_cost`` and ``batches_in_flight`` are the state when the
    snapshot was taken. The percentiles (``None`` before any sample) are over a
    recent window: the process-function time of the last ``WINDOW`` batches, and
    the queue wait (submit to dispatch) of the last ``WINDOW`` timed records. One
    record at a time is timed (the first submitted after the last timed one was
    dispatched: about one a batch), or every one while an observer is attached.

    ``busy_time_s`` and ``idle_time_s`` sum over the workers their time in the
    process function and their time waiting for a batch; a wait counts once it
    has ended (with a batch, or with the stop).

    ``fitted_cost`` is, with ``cost_model="measured"``, the fit the batcher chooses
    batches by (:class:`FittedCost`); ``None`` until its first 8 batches ran, and
    with the other cost models. After a stop it is the last run's; a restart fits
    anew.
    """

    total_submitted: int = 0
    total_completed: int = 0
    total_failed: int = 0
    total_cancelled: int = 0
    total_shed: int = 0
    total_expired: int = 0
    total_batches: int = 0
    total_batch_cost: int = 0
    avg_batch_size: float = 0.0
    avg_batch_cost: float = 0.0
    busy_time_s: float = 0.0
    idle_time_s: float = 0.0
    queued: int = 0
    queued_cost: int = 0
    batches_in_flight: int = 0
    queue_wait_p50_s: float | None = None
    queue_wait_p90_s: float | None = None
    queue_wait_p99_s: float | None = None
    batch_duration_p50_s: float | None = None
    batch_duration_p90_s: float | None = None
    batch_duration_p99_s: float | None = None
    fitted_cost: FittedCost | None = None

    @property
    def utilization(self) -> float:
        """Fraction of worker time spent in the process function: busy / (busy + idle),
        0.0 before any time was measured."""
        total = self.busy_time_s + self.idle_time_s
        return self.busy_time_s / total if total > 0 else 0.0


class Counters:
    """The live, mutable counters behind :class:`BatchStats`, shared by a batcher
    and its futures; also what those futures need to know of the running batcher:
    how to make an event on its loop, and how many workers wait for its own records."""

    __slots__ = (
        "batch_cost",
        "batches",
        "busy",
        "cancelled",
        "closed",
        "completed",
        "cost_fit",
        "dispatched",
        "durations",
        "end_fatally",
        "expired",
        "failed",
        "idle",
        "new_event",
        "observe",
        "park_group",
        "parked",
        "parked_left",
        "priority_seen",
        "queued_cost",
        "running",
        "self_waiting",
        "shed",
        "submitted",
        "thread",
        "timed",
        "token",
        "waits",
        "workers",
    )

    def __init__(self) -> None:
        self.new_event: Callable[[], anyio.Event] = anyio.Event
        #: The event callers park on now, shared by up to ``park_group`` of them
        #: (``_future.park``), and how many more may join it.
        self.parked: anyio.Event | None = None
        self.parked_left = 0
        #: How many callers one parking event takes: 1 (none shared) unless batches
        #: follow arrival order.
        self.park_group = 1
        #: The run's workers that will take another batch (``max_concurrent_batches``
        #: once a resize is done), and how many calls of the process function wait for
        #: records of this batcher (``ModelCall.begin_wait``).
        self.workers = 0
        self.self_waiting = 0
        #: Whether a record of a priority other than 0 was submitted in this run: the
        #: aggregator then switches to priority order before it reads that record.
        self.priority_seen = False
        self.submitted = 0
        #: The thread of the event loop of the current (or last) run: futures are awaited there.
        self.thread = 0
        #: That event loop, for what another thread hands it (a stream the cyclic GC collected there).
        self.token: EventLoopToken | None = None
        self.dispatched = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.shed = 0
        self.expired = 0
        #: Records failed while still queued, as the batcher closed (in ``failed`` too).
        self.closed = 0
        #: The cost of the records submitted and neither withdrawn, failed nor dispatched.
        self.queued_cost = 0
        self.batches = 0
        self.batch_cost = 0
        self.busy = 0.0
        self.idle = 0.0
        #: The batcher's observers, or ``None`` while it has none (see ``_events.py``).
        self.observe: Callable[[Event], None] | None = None
        #: While a run's loops run: what ends it for a ``BaseException`` an observer or
        #: a done-callback raised (``_callbacks.raised_past_exception``).
        self.end_fatally: Callable[[BaseException], None] | None = None
        #: Without observers, the one record being timed from submit to dispatch.
        self.timed: Any = None
        self.waits: deque[float] = deque(maxlen=WINDOW)  # queue waits of timed records, seconds
        self.durations: deque[float] = deque(maxlen=WINDOW)  # process-function time of batches
        self.running = 0  # batches in the process function
        #: With ``cost_model="measured"``: the fit of the current run (the last, once stopped).
        self.cost_fit: CostFit | None = None

    @property
    def queued(self) -> int:
        """Records submitted and neither withdrawn, expired, failed by a close nor
        taken by a worker yet."""
        return max(self.submitted - self.cancelled - self.expired - self.closed - self.dispatched, 0)

    @property
    def in_flight(self) -> int:
        """Records taken by a worker whose futures have not ended yet."""
        return max(self.dispatched - self.completed + self.closed, 0)

    def snapshot(self) -> BatchStats:
        batches = self.batches
        return BatchStats(
            total_submitted=self.submitted,
            total_completed=self.completed,
            total_failed=self.failed,
            total_cancelled=self.cancelled,
            total_shed=self.shed,
            total_expired=self.expired,
            total_batches=batches,
            total_batch_cost=self.batch_cost,
            avg_batch_size=self.dispatched / batches if batches else 0.0,
            avg_batch_cost=self.batch_cost / batches if batches else 0.0,
            busy_time_s=self.busy,
            idle_time_s=self.idle,
            queued=self.queued,
            queued_cost=self.queued_cost,
            batches_in_flight=self.running,
            **_percentiles("queue_wait", self.waits),
            **_percentiles("batch_duration", self.durations),
            fitted_cost=_fitted(self.cost_fit),
        )


def _fitted(fit: CostFit | None) -> FittedCost | None:
    if fit is None or fit.coefficients is None:
        return None
    return FittedCost(*fit.coefficients, batches=fit.batches)


def _percentiles(name: str, samples: deque[float]) -> dict[str, float | None]:
    """p50, p90 and p99 of ``samples`` as ``BatchStats`` fields, by nearest rank: the
    smallest sample that at least that share of the samples do not exceed."""
    ordered = sorted(samples)
    count = len(ordered)
    return {f"{name}_p{rank}_s": ordered[(rank * count + 99) // 100 - 1] if count else None for rank in (50, 90, 99)}


def event_factory() -> Callable[[], anyio.Event]:
    """Return the cheapest way to make an ``anyio.Event`` on the running loop.

    ``anyio.Event()`` looks up the running backend on every call; the concrete
    class it returns can be called directly, which halves the cost of each waiter.
    """
    event_class = type(anyio.Event())
    try:
        if isinstance(event_class(), anyio.Event):
            return event_class
    except Exception:
        pass
    return anyio.Event
