"""One run of a batcher's loops, from ``start()`` (or ``serve()``) until they
have ended: the loops themselves (the aggregator, the workers and the deadline
keeper, children of one task group) and their shared state: the two streams (the
submission side is :class:`~batcher._submission.Intake`), the loops' cancel scope,
the free-worker count and the fatal exception, if any."""

from __future__ import annotations

from heapq import heappop, heappush
from threading import get_ident
from typing import Any, NoReturn

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import current_token

from ._aggregator import WAKE_UP, Aggregator
from ._cost_fit import CostFit
from ._exceptions import closed_error
from ._future import PENDING, Batch, BatchFuture
from ._host import Host, Serve
from ._model import Model
from ._settings import Settings
from ._stats import Counters
from ._submission import NOT_RUNNING, Intake
from ._transitions import fail, fail_queued
from ._worker import RETIRE, Worker

__all__ = ("NOT_RUNNING", "STOPPED", "NotRunning", "Run")

OTHER_TASK = (
    "stop() must be called by the task that called start() (as 'async with batcher:' does); "
    "to stop a batcher from any task, run it with serve() in a task group"
)


class Run(Intake):
    """One run's state, made when the batcher starts and dropped when it stops.

    The submission stream carries futures from ``submit`` to the aggregator, the
    batch stream closed batches from the aggregator to the workers. A record's way
    into the submission stream is in the base class, :class:`Intake`.
    """

    __slots__ = (
        "_free_workers",
        "_left",
        "_spawned",
        "_workers",
        "batch_receive",
        "batch_send",
        "cost_fit",
        "loop",
        "loops",
        "model",
        "owner",
        "owner_task",
        "retiring",
        "scope",
        "stopped",
        "taken_back",
    )

    def __init__(self, settings: Settings, counters: Counters, *, started: bool) -> None:
        super().__init__(settings, counters)
        #: The task that called ``start()`` (if ``started``), which alone can stop it.
        self.owner_task = anyio.get_current_task().id if started else None
        self.batch_send, self.batch_receive = anyio.create_memory_object_stream[Batch](settings.prefetch_batches)
        #: With ``cost_model="measured"``: the fit of batch times the workers feed and the
        #: aggregator's assembly reads.
        self.cost_fit = counters.cost_fit = CostFit() if settings.cost_model == "measured" else None
        #: Set once the loops have ended and every future they held has ended.
        self.stopped = anyio.Event()
        #: Encloses the loops; cancelled to end them at once.
        self.scope = anyio.CancelScope()
        #: Where ``start()`` runs the loops (``_host.py``) until ``stop()``; ``None`` under ``serve()``.
        self.owner: Host | None = None
        #: The event loop the run belongs to (its native token).
        counters.token = token = current_token()
        self.loop = token.native_token
        counters.end_fatally = self.end_fatally  # for an observer's or a done-callback's KeyboardInterrupt
        counters.workers, counters.self_waiting = settings.max_concurrent_batches, 0
        # Workers waiting for a batch, less the batches already on their way to them.
        self._free_workers = 0
        self._workers = settings.max_concurrent_batches  # how many will stay
        self._spawned = settings.max_concurrent_batches  # how many indices are in use or left
        self._left: list[int] = []  # the indices of workers that left, for new ones (a heap)
        #: Workers to leave when they next look for a batch (``configure()`` shrank the pool).
        self.retiring = 0
        #: Records of batches closed ahead and taken back as the first priority came (see note_priority).
        self.taken_back: list[BatchFuture[Any]] = []
        #: The task group of the aggregator and the workers, and the model, while they run.
        self.loops: TaskGroup | None = None
        self.model: Model | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self, serve: Serve) -> None:
        """Run ``serve(self)`` in the task group the ``start()`` calls of this task share."""
        self.owner = host = await Host.join()
        try:
            await host.start(serve, self)
        except BaseException:  # it could not start (and has left the host)
            self.owner = None
            self._unhook()
            self.close_streams()
            self.stopped.set()
            raise

    async def serve(self, model: Model, *, task_status: TaskStatus[None]) -> None:
        """Run the aggregator and the workers until input has ended and every batch
        has run, or until cancelled; then fail what is left and close the streams."""
        counters = self.counters
        try:
            with self.scope:
                async with model.session(), anyio.create_task_group() as keeper:
                    await keeper.start(self.deadlines.keep)
                    async with anyio.create_task_group() as loops:
                        await loops.start(Aggregator(self, counters).run)
                        for index in range(self._workers):
                            await loops.start(Worker(self, model, counters, index).run)
                        self.loops, self.model = loops, model
                        self._resize()  # to what configure() may have set as they started
                        task_status.started()
                    keeper.cancel_scope.cancel()  # every record has been dispatched or has ended
        finally:
            self.loops = self.model = None
            self.end_input()  # (if cancelled, one of the loops did already)
            # A batch the aggregator closed as the workers were cancelled, and records
            # still queued behind the stream if the aggregator never took them.
            error = closed_error(self.fatal)
            fail_queued(self.batch_receive, error, counters)
            fail_queued(self.submit_receive, error, counters)
            self.fail_overflow(error)
            fail(self.taken_back, error, counters)
            self._unhook()
            self.close_streams()
            self.stopped.set()

    async def close(self, *, abort: bool, in_worker: bool, abort_after_s: float | None = None) -> None:
        """End the input, then wait until every record submitted has been processed
        and the loops have ended; with ``abort``, or once ``abort_after_s`` has passed,
        cancel them instead. From inside the process function (``in_worker``), only end
        the input: the loops cannot end while the call waits for them. After ``start()``,
        leave its task group (:meth:`_left_by_caller`); re-raise the fatal exception.
        """
        self.check_thread()
        if in_worker or self.owner is None:  # (under serve(), any task may stop it)
            self.end_input()
            if in_worker:
                self.abort_after(abort_after_s)
            else:
                await self._drain(abort_after_s)
            return
        owner, self.owner = self._left_by_caller(self.owner), None
        self.end_input()
        if abort:
            self.scope.cancel()
        try:
            await self._drain(abort_after_s)
        except BaseException:  # cancelled: abort, as leaving a task group does
            self.scope.cancel()
            with anyio.CancelScope(shield=True):
                await self.stopped.wait()
            if self.fatal is not None:
                raise self.fatal from None  # not lost to the cancellation (its scope stays cancelled)
            raise
        finally:
            if owner is not None:
                await self._leave(owner)
        if self.fatal is not None:
            raise self.fatal

    def _left_by_caller(self, owner: Host) -> Host | None:
        # start()'s task group, which only the task that called start() may leave; None
        # if it has ended in it (asyncio allows it: wait_for() on 3.11, a fixture's setup
        # task): the loops run on there, and this stop ends them, leaving it as it is.
        if anyio.get_current_task().id == self.owner_task:
            return owner
        if any(task.id == self.owner_task for task in anyio.get_running_tasks()):
            raise RuntimeError(OTHER_TASK)
        return None

    async def _drain(self, abort_after_s: float | None) -> None:
        # Wait for the loops to end (cancelled past ``abort_after_s``: an abort).
        self.abort_after(abort_after_s)
        await self.stopped.wait()

    def abort_after(self, seconds: float | None) -> None:
        """Have the loops' scope cancel them (an abort) ``seconds`` from now, or sooner."""
        if seconds is not None:
            self.scope.deadline = min(self.scope.deadline, anyio.current_time() + seconds)

    async def _leave(self, owner: Host) -> None:
        # Leave start()'s task group. What that raises (on trio, the cancellation of
        # another run stopped before, left in the group) gives way to this run's fatal
        # error, which close() raises next (its scope stays cancelled).
        try:
            await owner.leave()
        except BaseException as exc:
            if self.fatal is None or not _cancellation(exc):
                raise

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
        """A worker waits for its next batch; wake the aggregator if it was the only
        one and records are queued (otherwise the next record wakes it)."""
        self._free_workers += 1
        if self._free_workers == 1 and self.counters.queued:
            self._wake_aggregator()

    def _wake_aggregator(self) -> None:
        try:
            self.submit_send.send_nowait(WAKE_UP)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the aggregator has records to pull, or input has ended: it is awake

    def batch_sent(self) -> None:
        """The aggregator has sent a batch to the (possibly busy) workers (or a ready
        worker leaves: the pool shrank)."""
        self._free_workers -= 1

    def batch_taken_back(self) -> None:
        """The aggregator has taken back a batch that no worker had taken."""
        self._free_workers += 1

    def note_priority(self, priority: int) -> None:
        """A record of ``priority`` is being submitted. The first of another priority
        than 0 switches the aggregator to priority order at its next step (it reads a
        queue in arrival order only as far as its next batch needs, so it may not reach
        that record for long): the batches closed ahead for busy workers that none has
        taken are taken back now, before one does (the batch the aggregator may be
        waiting to send joins them as room is made). Once input has ended the record is
        refused, and the aggregator may have finished: nothing is taken back."""
        if not priority or self.counters.priority_seen or self._input_ended:
            return
        self.check_thread()  # before anything changes
        self.counters.priority_seen = True
        while True:
            try:
                batch = self.batch_receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            self.batch_taken_back()
            self.taken_back.extend(future for future in batch if future._state == PENDING)

    def reconfigure(self, settings: Settings) -> None:
        """Apply new settings (checked already): the aggregator picks them up when it
        next decides (it is woken to), and the pool of workers grows or shrinks."""
        self.apply(settings)
        self._wake_aggregator()
        self._resize()

    def _resize(self) -> None:
        # Start or retire workers to make the pool max_concurrent_batches strong.
        loops, model, settings = self.loops, self.model, self.settings
        if loops is None or model is None or self.scope.cancel_called:
            return  # starting (serve() resizes once its workers run), or aborting
        while self._workers < settings.max_concurrent_batches:
            if self.retiring:
                self.retiring -= 1  # a busy worker asked to leave stays after all
            else:
                loops.start_soon(Worker(self, model, self.counters, self._next_index()).run)
            self._workers += 1
        while self._workers > settings.max_concurrent_batches:
            self._workers -= 1
            if self.batch_send.statistics().tasks_waiting_receive:
                self.batch_send.send_nowait(RETIRE)  # straight to an idle worker, which leaves
                self.batch_sent()
            else:
                self.retiring += 1  # no worker waits for a batch: the first between two leaves
        self.counters.workers = self._workers  # those that will take another batch (ModelCall.begin_wait)

    def _next_index(self) -> int:
        # The index of a worker started now: the lowest one a worker left, else a new
        # one. Indices stay below the most workers that ran at once, and so do the
        # cost fit's bit masks of the workers that ran each shape.
        if self._left:
            index = heappop(self._left)
            if self.cost_fit is not None:
                self.cost_fit.forget(index)
            return index
        self._spawned += 1
        return self._spawned - 1

    def worker_left(self, index: int) -> None:
        """The worker of ``index`` has ended; a worker started later may take its index."""
        heappush(self._left, index)

    def orphaned(self) -> bool:
        """Whether the event loop of this run ended without stopping it (``start()``
        with no ``stop()``): the caller runs another loop on the run's thread."""
        return self.thread == get_ident() and current_token().native_token is not self.loop

    def _unhook(self) -> None:
        # The loops are over: an observer's or a callback's BaseException is raised where it is from now on.
        if self.counters.end_fatally == self.end_fatally:
            self.counters.end_fatally = None

    def end_fatally(self, exc: BaseException) -> None:
        """Keep ``exc`` (the first such) for ``stop()``, refuse records from now on, and cancel the loops."""
        if self.fatal is None:
            self.fatal = exc
        self.end_input()
        self.scope.cancel()


class NotRunning:
    """What a batcher holds instead of a :class:`Run` while it is not running: it
    refuses records, so that ``submit`` needs no check of its own."""

    __slots__ = ("fatal",)

    def __init__(self, fatal: BaseException | None = None) -> None:
        #: What ended the last run, if a process function's exception did: the cause
        #: of the refusal (a ``SyncBatcher`` names it, see ``_loop.refused_as_not_running``).
        self.fatal = fatal

    def refuse(self, *args: object) -> NoReturn:
        raise RuntimeError(NOT_RUNNING) from self.fatal

    def check_thread(self) -> None:
        """Any thread may configure a batcher that is not running."""

    def note_priority(self, priority: int) -> None:
        """No batch was closed."""

    try_submit = submit = queue_behind = submit_all = refuse


STOPPED = NotRunning()


def _cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation, or a group of nothing else."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(cancelled)[1] is None
    return isinstance(exc, cancelled)
