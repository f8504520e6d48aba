"""One run of a batcher's loops, from ``start()`` (or ``serve()``) until they
have ended: the loops themselves (the aggregator and the workers, children of
one task group) and their shared state: the two streams, the thread limiter,
the loops' cancel scope, the free-worker count and the fatal exception, if any."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint

from ._aggregator import INTAKE, WAKE_UP, Aggregator, Submission
from ._cost_fit import CostFit
from ._exceptions import BatcherOverloadedError, closed_error
from ._future import Batch, BatchFuture, fail, fail_queued, make_event
from ._model import Model
from ._settings import Settings
from ._stats import Counters
from ._worker import Worker

__all__ = ("NOT_RUNNING", "STOPPED", "NotRunning", "Run")

#: How many ``submit()`` callers parked behind a full stream share one event.
COHORT = 64

NOT_RUNNING = "batcher is not running; use 'async with batcher:' or start()"
OTHER_THREAD = (
    "batcher was called from a thread other than its event loop's; from other threads use SyncBatcher, "
    "or anyio.from_thread.run(batcher.call, record, token=...) with the token of the loop that started it"
)
OTHER_TASK = (
    "stop() must be called by the task that called start() (as 'async with batcher:' does); "
    "to stop a batcher from any task, run it with serve() in a task group"
)


class Run:
    """One run's state, made when the batcher starts and dropped when it stops.

    The submission stream carries futures from ``submit`` to the aggregator, the
    batch stream closed batches from the aggregator to the workers.
    """

    __slots__ = (
        "_cohort",
        "_free_workers",
        "_input_ended",
        "_newest",
        "_reserved",
        "_room",
        "batch_receive",
        "batch_send",
        "cost_fit",
        "counters",
        "fatal",
        "limiter",
        "max_queued_cost",
        "overflow",
        "owner",
        "owner_task",
        "scope",
        "settings",
        "stopped",
        "submit_receive",
        "submit_send",
        "thread",
    )

    def __init__(self, settings: Settings, owner: TaskGroup | None, counters: Counters) -> None:
        self.settings = settings
        self.counters = counters
        #: The thread of the event loop the run belongs to.
        self.thread = threading.get_ident()
        #: The task that called ``start()``, which alone can exit ``owner``.
        self.owner_task = anyio.get_current_task().id if owner is not None else None
        self.submit_send, self.submit_receive = anyio.create_memory_object_stream[Submission](settings.max_queue_size)
        self.batch_send, self.batch_receive = anyio.create_memory_object_stream[Batch](settings.prefetch_batches)
        #: With ``cost_model="measured"``: the fit of batch times the workers feed and the
        #: aggregator's assembly reads.
        self.cost_fit = CostFit() if settings.cost_model == "measured" else None
        #: Load shedding: the most cost that may be queued (``None``: no limit).
        self.max_queued_cost = settings.max_queued_cost
        #: Threads for a plain process function without a time limit, one per concurrent batch.
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent_batches)
        #: Set once the loops have ended and every future they held has ended.
        self.stopped = anyio.Event()
        #: Encloses the loops; cancelled to end them at once.
        self.scope = anyio.CancelScope()
        #: The task group ``start()`` opened to run the loops in (``None`` under ``serve()``).
        self.owner = owner
        #: A ``BaseException`` (not cancellation) from the process function, which
        #: ended the loops; ``stop()`` re-raises it.
        self.fatal: BaseException | None = None
        # Workers waiting for a batch, less the batches already on their way to them.
        self._free_workers = 0
        #: Records submitted while the submission stream was full, oldest first: the
        #: aggregator takes them after the stream's. A caller parked here costs a
        #: slot in a deque, not a blocked send (an event and two more wake-ups).
        self.overflow: deque[BatchFuture[Any]] = deque()
        #: The events ``submit()`` callers wait on for their records to leave the
        #: overflow, each shared by up to ``COHORT`` consecutive callers and keyed by
        #: the newest one's record: it is set when that record leaves, the others
        #: having left before it.
        self._room: dict[BatchFuture[Any], anyio.Event] = {}
        self._newest: BatchFuture[Any] | None = None  # the key of the cohort still open
        self._cohort = 0  # how many callers share it
        self._input_ended = False
        self._reserved = 0  # queued cost promised to a submit_batch() still sending

    # ----------------------------------------------------------- submission

    def try_submit(self, future: BatchFuture[Any], *, admitted: bool = False) -> bool:
        """Send ``future`` into the submission stream if it has room; return whether it
        did. Unless ``admitted`` (with others, by :meth:`submit_all`), apply ``admit``.

        :raises RuntimeError: if called from another thread, or once input has ended
        """
        if self.thread != threading.get_ident():
            raise RuntimeError(OTHER_THREAD)
        if self.max_queued_cost is not None and not admitted:
            self.admit(future._cost)
        if self.overflow:  # callers wait already: nobody passes them
            if self._input_ended:
                raise RuntimeError(NOT_RUNNING)
            return False
        try:
            self.submit_send.send_nowait(future)
        except anyio.WouldBlock:
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise RuntimeError(NOT_RUNNING) from None
        counters = self.counters
        counters.submitted += 1
        counters.queued_cost += future._cost
        return True

    def admit(self, cost: int, records: int = 1) -> None:
        """Refuse records of this total cost if they would take the queued cost past
        ``max_queued_cost`` (load shedding): nothing is queued, nothing waits.

        :raises BatcherOverloadedError: if they would (:exc:`RuntimeError` once input has ended)
        """
        limit, counters = self.max_queued_cost, self.counters
        if limit is None or counters.queued_cost + self._reserved + cost <= limit:
            return
        if self._input_ended:
            raise RuntimeError(NOT_RUNNING)
        counters.shed += records
        raise BatcherOverloadedError(
            f"the batcher is overloaded: {counters.queued_cost} of max_queued_cost={limit} is queued, "
            f"and {cost} more would not fit; try again later"
        )

    def queue_behind(self, future: BatchFuture[Any]) -> None:
        """Queue ``future`` behind the full submission stream, for a caller that
        waits for the result anyway (``call()``): it waits once, for the result."""
        if self._input_ended:
            raise RuntimeError(NOT_RUNNING)
        self.overflow.append(future)
        counters = self.counters
        counters.submitted += 1
        counters.queued_cost += future._cost

    async def submit(self, future: BatchFuture[Any]) -> None:
        """Queue ``future`` behind the full submission stream and wait until the
        aggregator has taken it. If the caller is cancelled meanwhile, the record is
        withdrawn; if the batcher stops abnormally, the future fails."""
        self.queue_behind(future)
        make_event(future)
        room = self._join_cohort(future)
        try:
            await room.wait()
        except BaseException:
            future.cancel()  # it stays in the overflow until taken, so its cohort is woken
            raise

    def _join_cohort(self, future: BatchFuture[Any]) -> anyio.Event:
        # One event per COHORT callers, not one each: a parked caller then costs
        # its task and a slot here, not an event with its waiter queue.
        newest = self._newest
        room = self._room.pop(newest, None) if newest is not None and self._cohort < COHORT else None
        if room is None:
            room, self._cohort = anyio.Event(), 0
        self._room[future] = room
        self._newest = future
        self._cohort += 1
        return room

    def from_overflow(self) -> BatchFuture[Any] | None:
        """The oldest record queued behind the stream, or ``None``: for the aggregator."""
        if not self.overflow:
            return None
        future = self.overflow.popleft()
        room = self._room.pop(future, None)
        if room is not None:  # the newest of its cohort: all of them have left
            room.set()
            if future is self._newest:
                self._newest = None
        return future

    def fail_overflow(self, exc: BaseException) -> None:
        """Fail every record still queued behind the stream, and wake their callers."""
        while (future := self.from_overflow()) is not None:
            fail((future,), exc, self.counters)

    async def submit_all(self, futures: list[BatchFuture[Any]]) -> None:
        """Send every future, waiting for room as needed, and letting the event loop
        run between chunks. If that raises (the caller is cancelled, the batcher
        stops), withdraw those already sent. With ``max_queued_cost``, all must fit
        at the start, and their room is kept for them until they are sent."""
        total = 0 if self.max_queued_cost is None else sum(future._cost for future in futures)
        self.admit(total, len(futures))
        self._reserved += total  # kept for them until all are sent (counting the sent ones twice)
        sent = 0
        try:
            for start in range(0, len(futures), INTAKE):  # a turn of the event loop per chunk
                for future in futures[start : start + INTAKE]:
                    if not self.try_submit(future, admitted=True):
                        await self.submit(future)
                    sent += 1
                await checkpoint()
        except BaseException:
            for future in futures[:sent]:
                future.cancel()
            raise
        finally:
            self._reserved -= total

    # ------------------------------------------------------------ lifecycle

    async def start(self, serve: Callable[..., Coroutine[Any, Any, None]]) -> None:
        """Enter the owner task group (``start()``'s) and start ``serve(self)`` in it."""
        owner = self.owner
        assert owner is not None
        await owner.__aenter__()
        try:
            await owner.start(serve, self)
        except BaseException as exc:
            owner.cancel_scope.cancel()
            await owner.__aexit__(type(exc), exc, exc.__traceback__)
            self.owner = None
            self.close_streams()
            self.stopped.set()
            raise

    async def serve(self, model: Model, *, task_status: TaskStatus[None]) -> None:
        """Run the aggregator and the workers until input has ended and every batch
        has run, or until cancelled; then fail what is left and close the streams."""
        counters = self.counters
        try:
            with self.scope:
                async with anyio.create_task_group() as loops:
                    await loops.start(Aggregator(self, counters).run)
                    for _ in range(self.settings.max_concurrent_batches):
                        await loops.start(Worker(self, model, counters).run)
                    task_status.started()
        finally:
            # A batch the aggregator closed as the workers were cancelled, and records
            # still queued behind the stream if the aggregator never took them.
            fail_queued(self.batch_receive, closed_error(), counters)
            fail_queued(self.submit_receive, closed_error(), counters)
            self.fail_overflow(closed_error())
            self._input_ended = True
            self.close_streams()
            self.stopped.set()

    async def close(self, *, abort: bool, in_worker: bool) -> None:
        """End the input, then wait until every record submitted has been processed
        and the loops have ended; with ``abort``, cancel them instead.

        From inside the process function (``in_worker``), only end the input: the
        loops cannot end while the call waits for them. After ``start()``, exit
        its task group, which only the task that called ``start()`` can do, and
        re-raise the fatal exception, if any.
        """
        if self.thread != threading.get_ident():
            raise RuntimeError(OTHER_THREAD)
        owner = self.owner
        if in_worker or owner is None:
            self._end_input()
            if not in_worker:
                await self.stopped.wait()
            return
        if anyio.get_current_task().id != self.owner_task:
            raise RuntimeError(OTHER_TASK)
        self.owner = None
        self._end_input()
        if abort:
            owner.cancel_scope.cancel()
        await owner.__aexit__(None, None, None)
        if self.fatal is not None:
            raise self.fatal

    def _end_input(self) -> None:
        # End of input: the aggregator drains the stream and the overflow, flushes, finishes.
        self._input_ended = True
        self.submit_send.close()

    def close_streams(self) -> None:
        """Close every stream end the run made (each loop closes its own as well)."""
        for stream in (self.submit_send, self.submit_receive, self.batch_send, self.batch_receive):
            stream.close()

    # ----------------------------------------------------- free-worker count

    @property
    def worker_free(self) -> bool:
        """Whether a worker is waiting for a batch that nobody has sent it yet."""
        return self._free_workers > 0

    def worker_ready(self) -> None:
        """A worker waits for its next batch; wake the aggregator if it was the only one."""
        self._free_workers += 1
        if self._free_workers == 1:
            try:
                self.submit_send.send_nowait(WAKE_UP)
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the aggregator has records to pull, or input has ended: it is awake

    def batch_sent(self) -> None:
        """The aggregator has sent a batch to the (possibly busy) workers."""
        self._free_workers -= 1

    def end_fatally(self, exc: BaseException) -> None:
        """Keep ``exc`` for ``stop()`` and cancel the loops."""
        self.fatal = exc
        self.scope.cancel()


class NotRunning:
    """What a batcher holds instead of a :class:`Run` while it is not running: it
    refuses records, so that ``submit`` needs no check of its own."""

    __slots__ = ()

    def refuse(self, *args: object) -> NoReturn:
        raise RuntimeError(NOT_RUNNING)

    try_submit = submit = queue_behind = submit_all = refuse


STOPPED = NotRunning()
