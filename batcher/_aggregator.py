"""The aggregator: the loop between the submission stream and the batch stream.

It pulls submitted futures into the assembly (``_assembly.py``), asks the pure
rule :func:`~batcher._decide.next_step` what to do, and does it: close a batch
and send it to the workers, yield once, wait for a record, or finish. When the
first record of a priority other than 0 comes, it moves to batches by priority
(``_priority.py``); when ``configure()`` changed the settings, it takes them up
before it next decides.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from operator import attrgetter
from time import monotonic
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import anyio
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint

from ._assembly import Assembly, make_assembly
from ._budget import Budget, new_budget
from ._cost_fit import CostFit
from ._decide import CLOSE, FINISH, PULL, YIELD, Step, next_step
from ._exceptions import closed_error
from ._future import PENDING, BatchFuture, is_pending, withdrawn
from ._measured import MeasuredAssembly
from ._priority import PriorityAssembly
from ._stats import Counters
from ._transitions import fail, fail_queued

if TYPE_CHECKING:
    from ._run import Run
    from ._settings import Settings

__all__ = ("INTAKE", "WAKE_UP", "Aggregator", "Submission")

#: The most records the aggregator takes in at one turn of the event loop, so that a
#: deep backlog (a pool of 100,000 to group) does not stall the loop while it loads.
INTAKE = 1024


#: The message a worker that has just become free sends into the submission
#: stream while records are queued, so that the aggregator, asleep until a record
#: arrives, looks again (``Run.worker_ready``): a
#: future withdrawn from the start, which the aggregator drops as it drops any.
WAKE_UP: Final = withdrawn()

#: What the submission stream carries: records' futures (and the wake-up).
Submission: TypeAlias = "BatchFuture[Any]"


class Aggregator:
    """Forms one run's batches; :meth:`run` is the loop."""

    __slots__ = (
        "_assembly",
        "_backlog",
        "_closed",
        "_counters",
        "_ended",
        "_opened_at",
        "_run",
        "_settings",
        "_waited_for_worker",
        "_yielded",
    )

    def __init__(self, run: Run, counters: Counters) -> None:
        self._run = run
        self._settings = settings = run.settings
        self._counters = counters
        self._assembly: Assembly[BatchFuture[Any]] | PriorityAssembly[BatchFuture[Any]]
        self._assembly = _assembly_for(settings, run.cost_fit)
        # The batch stream's buffer, read back: batches closed for busy workers
        # return to the queue when records of another priority than 0 first come.
        self._closed = run.batch_receive.clone()
        self._opened_at = 0.0  # when the oldest queued record arrived (monotonic clock)
        self._ended = False  # the submission stream has ended: no record will come
        self._yielded = False  # the next batch has had its eager checkpoint
        self._waited_for_worker = False  # the next batch grew while every worker was busy
        self._backlog = False  # more records were submitted than the last intake took in

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Close batches as :func:`next_step` says until input ends and all is sent.

        If cancelled, fail every future it holds or that is still queued."""
        with self._run.submit_receive, self._run.batch_send, self._closed:
            task_status.started()
            try:
                while True:
                    if self._run.settings is not self._settings:
                        self._reconfigure()
                    self._pull_queued()
                    step = self._next_step()
                    if step is CLOSE:
                        await self._close_batch()
                    elif step is YIELD:
                        self._yielded = True
                        await checkpoint()  # producers that are runnable add theirs first
                    elif step is PULL:
                        await checkpoint()  # a long backlog is taken in a chunk a turn
                    elif step is FINISH:
                        self._run.wake_rooms()
                        return
                    else:
                        await self._wait_for_record(step.delay)
            except BaseException:
                self._fail_all()
                raise

    def _next_step(self) -> Step:
        assembly, settings = self._assembly, self._settings
        return next_step(
            queued=len(assembly),
            full=assembly.full(),
            ended=self._ended,
            worker_free=self._run.worker_free,
            eager=settings.eager_dispatch,
            min_batch_size=settings.min_batch_size,
            waited_s=monotonic() - self._opened_at,
            batch_timeout_s=settings.batch_timeout_s,
            yielded=self._yielded,
            waited_for_worker=self._waited_for_worker,
            backlog=self._backlog,
        )

    def _reconfigure(self) -> None:
        """Take up the settings ``configure()`` made: a new budget rebuilds the
        assembly, with the records it held in their order of arrival."""
        old, new = self._settings, self._run.settings
        self._settings = new
        assembly = self._assembly
        if isinstance(assembly, PriorityAssembly):
            assembly.aging_s = new.priority_aging_s
        if (old.target_batch_cost, old.max_batch_size) == (new.target_batch_cost, new.max_batch_size):
            return
        if isinstance(assembly, PriorityAssembly):
            assembly.rebuild(self._new_level, _budget_for(new), new.grouping_window)
            return
        self._assembly = fresh = self._new_level()
        for item in assembly.queued():
            if item._state == PENDING:
                fresh.add(item, item._cost)

    def _new_level(self) -> Assembly[BatchFuture[Any]]:
        return _assembly_for(self._settings, self._run.cost_fit)

    def _prioritize(self) -> PriorityAssembly[BatchFuture[Any]]:
        """Switch to batches by priority (a record of another priority than 0 has
        come): the records queued so far are priority 0, and count as arrived with
        the oldest of them."""
        settings, queued = self._settings, self._assembly
        self._counters.park_group = 1  # batches no longer follow arrival order (see _future.park)
        self._assembly = assembly = PriorityAssembly(
            make_level=self._new_level,
            make_budget=_budget_for(settings),
            window=settings.grouping_window,
            aging_s=settings.priority_aging_s,
            priority_of=attrgetter("_priority"),
            cost_of=attrgetter("_cost"),
        )
        assembly.adopt(self._take_back_closed(), self._opened_at)
        assembly.adopt(queued.queued(), self._opened_at)
        return assembly

    def _take_back_closed(self) -> list[BatchFuture[Any]]:
        """The records of the batches closed for busy workers and not taken yet, oldest first."""
        records, self._run.taken_back = self._run.taken_back, []
        while True:
            try:
                batch = self._closed.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return records
            self._run.batch_taken_back()
            records.extend(future for future in batch if future._state == PENDING)

    def _pull_queued(self, item: Submission = WAKE_UP) -> None:
        """Admit ``item``, then what is already submitted, until the next batch is
        full, or ``INTAKE`` records were taken in (then note the backlog).

        A withdrawn record, or the wake-up, is dropped."""
        assembly, receive = self._assembly, self._run.submit_receive
        if self._counters.priority_seen and not isinstance(assembly, PriorityAssembly):
            assembly = self._prioritize()  # a record of another priority than 0 was submitted (Run.note_priority)
        full, empty = assembly.full(), not assembly
        self._backlog = False
        taken = 0
        while True:
            if item._state == PENDING:  # not withdrawn, nor the wake-up
                if empty:
                    self._opened_at, empty = monotonic(), False
                full = assembly.add(item, item._cost)
            if full:
                return
            if taken == INTAKE:
                self._backlog = True  # more may be queued: the rest at the next turn
                return
            try:
                item = receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream) as exc:
                behind = self._behind_stream(ended=isinstance(exc, anyio.EndOfStream))
                if behind is None:
                    return
                item = behind
            taken += 1

    def _behind_stream(self, *, ended: bool) -> BatchFuture[Any] | None:
        """The stream is empty (``ended``: for good): the oldest record queued behind
        it, or ``None`` if there is none (and then note the end of input)."""
        behind = self._run.from_overflow()
        if behind is None:
            self._ended = ended
        return behind

    async def _wait_for_record(self, delay: float | None) -> None:
        self._run.wake_rooms()  # nobody waits for room while the aggregator does
        if delay is None and self._assembly:
            self._waited_for_worker = True  # only a busy worker holds a queued batch back
        receive = self._run.submit_receive
        try:
            if delay is None:
                self._pull_queued(await receive.receive())
            else:
                with anyio.move_on_after(delay):
                    self._pull_queued(await receive.receive())
        except anyio.EndOfStream:
            self._ended = True

    async def _close_batch(self) -> None:
        batch = self._assembly.take()[0]
        self._yielded = self._waited_for_worker = False
        self._run.batch_sent()
        send = self._run.batch_send
        try:
            try:
                send.send_nowait(batch)
            except anyio.WouldBlock:
                await send.send(batch)  # every prefetch slot is taken: wait for a worker
        except BaseException:
            self._run.end_input()  # cancelled: a callback the failures call may not queue records
            fail(batch, closed_error(self._run.fatal), self._counters)
            raise

    def _fail_all(self) -> None:
        self._run.end_input()  # first: a callback the failures call may not queue records (they would stay queued)
        error = closed_error(self._run.fatal)
        while self._assembly:
            fail(self._assembly.take()[0], error, self._counters)
        fail_queued(self._run.submit_receive, error, self._counters)
        self._run.fail_overflow(error)
        fail(self._run.taken_back, error, self._counters)  # batches closed ahead, taken back for a first priority


def _assembly_for(settings: Settings, fit: CostFit | None) -> Assembly[BatchFuture[Any]]:
    """The assembly rule the settings ask for; a record withdrawn while queued takes no batch slot."""
    if fit is not None:  # cost_model="measured"
        return MeasuredAssembly(
            target_cost=settings.target_batch_cost,
            max_batch_size=settings.max_batch_size,
            window=settings.grouping_window,
            fit=fit,
            live=is_pending,
        )
    return make_assembly(
        target_cost=settings.target_batch_cost,
        max_batch_size=settings.max_batch_size,
        cost_model=settings.cost_model,
        group_by_cost=settings.group_by_cost,
        window=settings.grouping_window,
        live=is_pending,
        min_efficiency=settings.min_padding_efficiency,
    )


def _budget_for(settings: Settings) -> Callable[[], Budget]:
    """A maker of empty budgets as the settings' assemblies use (``measured``: padded, no floor)."""
    floor = None if settings.cost_model == "measured" else settings.min_padding_efficiency
    return partial(new_budget, settings.target_batch_cost, settings.max_batch_size, settings.cost_model, floor)
