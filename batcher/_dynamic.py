"""DynamicBatcher: its settings, its lifecycle, and ``submit``, where a record's path
begins: ``submit`` prices the record (``_pricing.py``), wraps it in a future
(``_future.py``) and sends it into the current run's submission stream (``_run.py``);
the aggregator (``_aggregator.py``) forms batches (``_assembly.py``) and sends them into
the batch stream; a worker (``_worker.py``) runs each through ``_model.py``."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterable
from itertools import count
from types import TracebackType
from typing import Any, Generic, Literal, Self, SupportsIndex, overload

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint

from ._aggregator import INTAKE
from ._future import WORKER_OF, BatchFuture, event_factory, until_done
from ._map import MapResults, Progress
from ._model import Model
from ._pricing import Pricing
from ._protocols import CostEstimatorFn, CostModel, ProcessFn, RecordT, ResultT
from ._run import STOPPED, NotRunning, Run
from ._settings import Settings, check_callable
from ._stats import BatchStats, Counters

__all__ = ("DynamicBatcher",)


class DynamicBatcher(Generic[RecordT, ResultT]):
    """Collects records submitted by many tasks into cost-budgeted batches and runs
    each batch through one process function. Works under asyncio and trio.

    :param process_fn: takes ``list[record]``, returns one result per record in the
        same order. ``async def`` runs on the event loop; a plain function runs in a
        worker thread so it does not stall the loop.
    :param cost_estimator: ``record -> int`` cost, used when ``submit`` gets no
        explicit cost.
    :param target_batch_cost: a batch's cost never exceeds this, except a batch of
        one record that alone costs more.
    :param max_batch_size: most records in one batch.
    :param min_batch_size: a smaller batch waits for more records, but no longer than
        ``batch_timeout_s`` after its first record arrived.
    :param batch_timeout_s: how long a batch may wait to fill (see ``eager_dispatch``).
    :param max_queue_size: capacity of the submission stream; ``submit`` waits while
        it is full. The aggregator holds the batch it is building on top of this
        (with ``group_by_cost``, a pool of up to ``max(max_queue_size, max_batch_size)``).
    :param prefetch_batches: how many full batches may wait for a busy worker.
    :param default_cost: cost of a record with no explicit or estimated cost.
    :param eager_dispatch: when a worker is free, send the queued records at once
        (after one scheduling checkpoint). When false, wait up to
        ``batch_timeout_s`` from the first record for the batch to fill.
    :param max_concurrent_batches: how many batches run at once.
    :param cost_model: ``"sum"`` (a batch costs the sum of its records' costs),
        ``"padded"`` (``len(batch) * max(cost)``, as a padded model computes) or
        ``"measured"`` (padded; each batch is chosen by its cost as timed so far).
    :param group_by_cost: build each batch around the oldest queued record from the
        queued records of the most similar cost, instead of in arrival order.
    :param min_padding_efficiency: with ``cost_model="padded"``, a closing batch takes
        no record that would bring its real over padded cost, ``sum(costs) /
        (len(batch) * max(costs))``, below this; ``None`` for no floor.
    :param max_queued_cost: load shedding: a call that would queue records past this
        total cost raises :exc:`BatcherOverloadedError` at once (nothing is queued);
        ``None`` for no limit (``max_queue_size`` backpressure waits instead).
    :param process_timeout_s: a batch whose process function runs longer fails with
        :exc:`TimeoutError`; ``None`` for no limit. A plain function then runs in a
        daemon thread of its worker, so a stuck call cannot hold the program at exit.
    """

    def __init__(
        self,
        process_fn: ProcessFn[RecordT, ResultT],
        *,
        cost_estimator: CostEstimatorFn[RecordT] | None = None,
        target_batch_cost: int = 32_000,
        max_batch_size: int = 256,
        min_batch_size: int = 1,
        batch_timeout_s: float = 0.05,
        max_queue_size: int = 5_000,
        prefetch_batches: int = 2,
        default_cost: int = 1,
        eager_dispatch: bool = True,
        max_concurrent_batches: int = 1,
        cost_model: CostModel = "sum",
        group_by_cost: bool = False,
        process_timeout_s: float | None = None,
        min_padding_efficiency: float | None = None,
        max_queued_cost: int | None = None,
    ) -> None:
        self._setup(
            check_callable("process_fn", process_fn),
            Pricing(("cost_estimator", cost_estimator), ("default_cost", default_cost), ("estimate_cost",)),
            Settings(
                target_batch_cost=target_batch_cost,
                max_batch_size=max_batch_size,
                min_batch_size=min_batch_size,
                batch_timeout_s=batch_timeout_s,
                max_queue_size=max_queue_size,
                prefetch_batches=prefetch_batches,
                eager_dispatch=eager_dispatch,
                max_concurrent_batches=max_concurrent_batches,
                cost_model=cost_model,
                group_by_cost=group_by_cost,
                process_timeout_s=process_timeout_s,
                min_padding_efficiency=min_padding_efficiency,
                max_queued_cost=max_queued_cost,
            ),
        )

    def _setup(self, process_fn: ProcessFn[RecordT, ResultT], pricing: Pricing, settings: Settings) -> None:
        self._model = Model(process_fn, settings.process_timeout_s)
        self._pricing = pricing
        self._settings = settings
        self._counters = Counters()
        self._run: Run | NotRunning = STOPPED

    @property
    def is_running(self) -> bool:
        """Whether the batcher has started and not yet stopped (after a fatal
        exception, until :meth:`stop` re-raises it)."""
        return self._run is not STOPPED

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters (see :class:`BatchStats`)."""
        return self._counters.snapshot()

    def __repr__(self) -> str:
        c = self._counters
        if not self.is_running:
            return f"<{type(self).__name__} stopped submitted={c.submitted} completed={c.completed}>"
        return f"<{type(self).__name__} running queued={c.queued} in_flight={c.in_flight}>"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # On error the body's own exception propagates, not an exception group.
        await self._close(abort=exc is not None)

    async def start(self) -> None:
        """Start the loops; they run until :meth:`stop`.

        Call :meth:`start` and :meth:`stop` from the same task, at the same level
        of cancel scopes (as ``async with batcher:`` does for you).

        :raises RuntimeError: if the batcher is already running
        """
        run = self._begin(owner=anyio.create_task_group())
        try:
            await run.start(self._serve)
        finally:
            self._forget(run)  # if it could not start

    async def stop(self) -> None:
        """Stop accepting records, process every record already submitted, and
        stop the loops. Does nothing if the batcher is not running. From inside the
        process function it only begins the graceful stop and returns at once.

        :raises RuntimeError: if another task called :meth:`start` (only that task
            can stop it; :meth:`serve` may be stopped from any task), or if called
            from a thread other than the batcher's event loop's
        :raises BaseException: the exception, other than cancellation, that a
            process function raised outside :exc:`Exception` (such as
            :exc:`KeyboardInterrupt`), which ended the batcher
        """
        await self._close(abort=False)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the loops inside a task group the caller owns, until :meth:`stop`::

            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                ...
                await batcher.stop()

        Cancelling its task fails every unfinished future with :exc:`BatcherClosedError`.
        """
        run = self._begin(owner=None)
        await self._serve(run, task_status=task_status)
        if run.fatal is not None:
            raise run.fatal

    def _begin(self, owner: TaskGroup | None) -> Run:
        if self._run is not STOPPED:
            raise RuntimeError("batcher is already running; stop() it before starting it again")
        self._counters.new_event = event_factory()
        run = self._run = Run(self._settings, owner, self._counters)
        return run

    def __del__(self) -> None:
        if isinstance(getattr(self, "_run", STOPPED), Run):
            message = f"{self!r} was garbage-collected without being stopped; use 'async with batcher:' or stop()"
            warnings.warn(message, ResourceWarning, source=self, stacklevel=1)

    def _in_own_worker(self) -> bool:  # called by this batcher's process function?
        return WORKER_OF.get() is self._counters

    def _forget(self, run: Run) -> None:
        # A run is over once its loops have ended and start()'s task group is exited.
        if self._run is run and run.owner is None and run.stopped.is_set():
            self._run = STOPPED

    async def _serve(self, run: Run, *, task_status: TaskStatus[None]) -> None:
        try:
            await run.serve(self._model, task_status=task_status)
        finally:
            self._forget(run)

    async def _close(self, *, abort: bool) -> None:
        run = self._run
        if isinstance(run, Run):
            try:
                await run.close(abort=abort, in_worker=self._in_own_worker())
            finally:
                self._forget(run)

    # ---------------------------------------------------------------- submit

    async def submit(self, record: RecordT, *, estimated_cost: int | None = None) -> BatchFuture[ResultT]:
        """Queue one record and return its future.

        The cost is, first that applies: ``estimated_cost``, the cost estimator,
        ``record.estimate_cost()``, ``default_cost``. Waits while the submission
        stream is full (backpressure); a caller cancelled while waiting has its
        record withdrawn.

        :raises TypeError: if the cost is not an integer (an ``int``, or anything
            with ``__index__`` such as ``numpy.int64``; not a ``bool``)
        :raises ValueError: if the cost is negative
        :raises RuntimeError: if the batcher is not running, or is called from a
            thread other than its event loop's
        """
        future = self._new_future(record, estimated_cost, "estimated_cost")
        if not self._run.try_submit(future):
            await self._run.submit(future)
        return future

    def submit_nowait(self, record: RecordT, *, estimated_cost: int | None = None) -> BatchFuture[ResultT]:
        """Like :meth:`submit`, without waiting.

        :raises anyio.WouldBlock: if the submission stream is full
        """
        future = self._new_future(record, estimated_cost, "estimated_cost")
        if not self._run.try_submit(future):
            raise anyio.WouldBlock
        return future

    async def submit_batch(
        self, records: Iterable[RecordT], *, estimated_cost: Collection[SupportsIndex] | None = None
    ) -> list[BatchFuture[ResultT]]:
        """Queue many records; return their futures in the same order.

        Every cost is checked before any record is queued. Waits for room as
        :meth:`submit` does; if the call is cancelled, or the batcher stops, while it
        waits, it raises and withdraws the records it had queued (those a worker has
        not taken yet). ``estimated_cost`` may be any sized iterable (a numpy array).
        """
        return await self._submit_all(records, estimated_cost, "estimated_cost")

    async def call(self, record: RecordT, *, estimated_cost: int | None = None) -> ResultT:
        """Submit one record and wait for its result.

        If the caller is cancelled (``anyio.fail_after``, ``move_on_after``, a
        cancelled task group) before the record is dispatched, the record is
        withdrawn and never reaches the process function. This is the per-request
        deadline: ``with anyio.fail_after(1): await batcher.call(x)``.

        :raises RuntimeError: as :meth:`submit`, and from inside the batcher's own
            process function while ``max_concurrent_batches`` is 1 (a self-wait)
        """
        future = self._queue_for_call(self._new_future(record, estimated_cost, "estimated_cost"))
        try:
            if (waiting := until_done(future)) is not None:
                await waiting  # here, not in a helper: a parked caller keeps one coroutine
        except BaseException:
            future.cancel()  # withdraws the record unless it was already dispatched
            raise
        return future.result()

    def _new_future(self, record: Any, cost: Any, name: str) -> BatchFuture[ResultT]:
        return BatchFuture(record, self._pricing.price(record, cost, name), self._counters)

    def _queue_for_call(self, future: BatchFuture[ResultT]) -> BatchFuture[ResultT]:
        if not self._run.try_submit(future):
            self._run.queue_behind(future)  # no need to wait for room: call() waits for the result
        return future

    @overload
    def map(
        self,
        records: Iterable[RecordT],
        *,
        ordered: bool = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool | Progress | None = ...,
    ) -> MapResults[ResultT]: ...
    @overload
    def map(
        self,
        records: Iterable[RecordT],
        *,
        ordered: bool = ...,
        return_exceptions: bool,
        progress: bool | Progress | None = ...,
    ) -> MapResults[ResultT | Exception]: ...
    def map(
        self,
        records: Iterable[RecordT],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | Progress | None = None,
    ) -> MapResults[ResultT] | MapResults[ResultT | Exception]:
        """Run every record of ``records`` (any iterable, possibly lazy and longer
        than the queue) through the batcher, one result per record, with at most
        ``max_queue_size`` in flight: ``async with batcher.map(texts) as results:
        async for embedding in results: ...`` (see :class:`MapResults`).

        :param ordered: yield in input order; if false, as results arrive
        :param return_exceptions: yield a failed record's exception in its place;
            if false, raise the first failure and withdraw the rest
        :param progress: ``True`` for a tqdm bar (the ``progress`` extra), or a
            function called with ``(done, total or None)`` after each result
        """
        return MapResults(
            self,
            records,
            ordered=ordered,
            return_exceptions=return_exceptions,
            progress=progress,
            window=self._settings.max_queue_size,
        )

    async def _submit_all(
        self, records: Iterable[RecordT], costs: Collection[SupportsIndex] | None, name: str
    ) -> list[BatchFuture[ResultT]]:
        records, counters = list(records), self._counters
        futures: list[BatchFuture[ResultT]] = []
        for start, priced in zip(count(0, INTAKE), self._pricing.priced(records, costs, name, INTAKE), strict=False):
            chunk = records[start : start + INTAKE]  # a chunk at a turn of the event loop
            futures.extend([BatchFuture(r, cost, counters) for r, cost in zip(chunk, priced, strict=True)])
            await checkpoint()
        await self._run.submit_all(futures)
        return futures
