"""DynamicBatcher: the lifecycle, the aggregation loop and the processing loop.

One record's path, top to bottom: :meth:`DynamicBatcher.submit` prices the record
and sends its future into the submission stream; :meth:`~DynamicBatcher._aggregate`
pulls futures into the assembly (``_assembly.py``) and, when a batch should close,
sends it into the batch stream; :meth:`~DynamicBatcher._work` calls the process
function and ends the batch's futures.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Iterable, Sequence
from time import monotonic, perf_counter
from types import TracebackType
from typing import Any, Generic, Self, cast

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._assembly import Assembly, batch_cost, close_delay, make_assembly
from ._exceptions import BatcherClosedError
from ._future import DISPATCHED, ERROR, PENDING, RESULT, BatchFuture, event_factory
from ._protocols import CostEstimatorFn, CostModel, ProcessFn, RecordT, ResultT
from ._stats import BatchStats, Counters
from ._validate import check_int, check_seconds

__all__ = ("DynamicBatcher",)

logger = logging.getLogger("batcher")

_NOT_RUNNING = "batcher is not running; use 'async with batcher:' or start()"

# What the submission stream carries: a record's future, or None, which a worker
# sends to wake the aggregator when it becomes free.
_Submission = BatchFuture[Any] | None


def _closed() -> BatcherClosedError:
    return BatcherClosedError("the batcher closed before this record was processed")


def _is_async(fn: object) -> bool:
    call = type(fn).__call__ if not inspect.isroutine(fn) else None  # an object with async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


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
    :param cost_model: ``"sum"`` (a batch costs the sum of its records' costs) or
        ``"padded"`` (``len(batch) * max(cost)``, as a padded model computes).
    :param group_by_cost: build each batch around the oldest queued record from the
        queued records of the most similar cost, instead of in arrival order.
    :param process_timeout_s: a batch whose process function runs longer fails with
        :exc:`TimeoutError`; ``None`` for no limit.
    """

    #: Names used in error messages; TokenBatcher speaks of tokens.
    _explicit_name = "estimated_cost"
    _estimator_name = "cost_estimator"
    _target_name = "target_batch_cost"
    _default_name = "default_cost"
    #: Methods a record may have to give its own cost, in order of precedence.
    _cost_methods: tuple[str, ...] = ("estimate_cost",)

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
    ) -> None:
        if not callable(process_fn):
            raise TypeError(f"process_fn must be callable, got {type(process_fn).__name__}")
        if cost_estimator is not None and not callable(cost_estimator):
            raise TypeError(f"{self._estimator_name} must be callable or None, got {type(cost_estimator).__name__}")
        self._target = check_int(self._target_name, target_batch_cost, 1)
        self._max_batch_size = check_int("max_batch_size", max_batch_size, 1)
        self._min_batch_size = check_int("min_batch_size", min_batch_size, 1)
        if min_batch_size > max_batch_size:
            raise ValueError(f"min_batch_size must be <= max_batch_size, got {min_batch_size} > {max_batch_size}")
        self._timeout = check_seconds("batch_timeout_s", batch_timeout_s)
        self._max_queue_size = check_int("max_queue_size", max_queue_size, 1)
        self._prefetch = check_int("prefetch_batches", prefetch_batches, 0)
        self._default_cost = check_int(self._default_name, default_cost, 0)
        self._workers = check_int("max_concurrent_batches", max_concurrent_batches, 1)
        if cost_model not in ("sum", "padded"):
            raise ValueError(f"cost_model must be 'sum' or 'padded', got {cost_model!r}")
        if process_timeout_s is not None:
            check_seconds("process_timeout_s", process_timeout_s)
            if process_timeout_s == 0:
                raise ValueError("process_timeout_s must be > 0 or None, got 0")
        self._process_fn = process_fn
        self._is_async = _is_async(process_fn)
        self._cost_estimator = cost_estimator
        self._eager = bool(eager_dispatch)
        self._cost_model: CostModel = cost_model
        self._group_by_cost = bool(group_by_cost)
        self._process_timeout = process_timeout_s
        self._counters = Counters()
        self._estimator_label = f"the cost from {self._estimator_name}"
        # record type -> the method that gives its cost, and its name for errors
        self._method_of: dict[type, tuple[str | None, str]] = {}
        # Set while running:
        self._submit_send: MemoryObjectSendStream[_Submission] | None = None
        self._task_group: TaskGroup | None = None  # ours, when started by start()
        self._stopped: anyio.Event | None = None  # while running; set once the loops have ended
        self._limiter: anyio.CapacityLimiter | None = None
        self._loops: TaskGroup | None = None  # the task group running the loops
        self._fatal: BaseException | None = None
        # Free workers minus batches already sent to them and not yet received.
        self._demand = 0

    # ------------------------------------------------------------------ state

    @property
    def is_running(self) -> bool:
        """Whether the aggregation and processing loops are active."""
        return self._stopped is not None

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters (see :class:`BatchStats`)."""
        return self._counters.snapshot()

    def __repr__(self) -> str:
        c = self._counters
        if not self.is_running:
            return f"<{type(self).__name__} stopped submitted={c.submitted} completed={c.completed}>"
        queued = c.submitted - c.cancelled - c.dispatched
        in_flight = c.dispatched - c.completed
        return f"<{type(self).__name__} running queued={max(queued, 0)} in_flight={max(in_flight, 0)}>"

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On error the body's own exception propagates, not an exception group.
        await self._close(abort=exc is not None)

    async def start(self) -> None:
        """Start the loops; they run until :meth:`stop`.

        Call :meth:`start` and :meth:`stop` from the same task, at the same level
        of cancel scopes (as ``async with batcher:`` does for you).

        :raises RuntimeError: if the batcher is already running
        """
        self._check_startable()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(self._serve, False)
        except BaseException as exc:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._task_group = task_group

    async def stop(self) -> None:
        """Stop accepting records, process every record already submitted, and
        stop the loops. Does nothing if the batcher is not running.

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

        Cancelling the task running :meth:`serve` fails every unfinished future
        with :exc:`BatcherClosedError`.
        """
        self._check_startable()
        await self._serve(True, task_status=task_status)

    def _check_startable(self) -> None:
        if self._stopped is not None or self._task_group is not None:
            raise RuntimeError("batcher is already running; stop() it before starting it again")

    async def _close(self, *, abort: bool) -> None:
        task_group, self._task_group = self._task_group, None
        send, stopped = self._submit_send, self._stopped
        if send is not None:
            send.close()  # end of input: the aggregator drains, flushes and finishes
        if task_group is not None:  # started by start() or async with
            if abort:
                task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            fatal, self._fatal = self._fatal, None
            if fatal is not None:
                raise fatal
        elif stopped is not None:  # running under serve() in the caller's task group
            await stopped.wait()

    async def _serve(self, raise_fatal: bool, *, task_status: TaskStatus[None]) -> None:
        submit_send, submit_receive = anyio.create_memory_object_stream[_Submission](self._max_queue_size)
        batch_send, batch_receive = anyio.create_memory_object_stream[list[BatchFuture[Any]]](self._prefetch)
        self._submit_send = submit_send
        self._stopped = anyio.Event()
        self._counters.new_event = event_factory()
        self._limiter = anyio.CapacityLimiter(self._workers)
        self._demand = 0
        try:
            with submit_send, batch_receive:
                try:
                    async with anyio.create_task_group() as task_group:
                        self._loops = task_group
                        await task_group.start(self._aggregate, submit_receive, batch_send)
                        for _ in range(self._workers):
                            await task_group.start(self._work, batch_receive.clone())
                        task_status.started()
                finally:
                    # A batch the aggregator closed as the workers were cancelled.
                    closed = _closed()
                    while True:
                        try:
                            self._fail(batch_receive.receive_nowait(), closed)
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
        finally:
            self._submit_send = None
            stopped, self._stopped = self._stopped, None
            stopped.set()
        if raise_fatal and self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal

    # ---------------------------------------------------------------- submit

    async def submit(self, record: RecordT, *, estimated_cost: int | None = None) -> BatchFuture[ResultT]:
        """Queue one record and return its future.

        The cost is, first that applies: ``estimated_cost``, the cost estimator,
        ``record.estimate_cost()``, ``default_cost``. Waits while the submission
        stream is full (backpressure); a caller cancelled while waiting has its
        record withdrawn.

        :raises TypeError: if the cost is not an ``int``
        :raises ValueError: if the cost is negative
        :raises RuntimeError: if the batcher is not running
        """
        future = self._new_future(record, estimated_cost, self._explicit_name)
        # _enqueue() inlined: this is the hot path of producers.
        try:
            self._enqueue_nowait(future)
        except anyio.WouldBlock:
            await self._enqueue_waiting(future)
        return future

    def submit_nowait(self, record: RecordT, *, estimated_cost: int | None = None) -> BatchFuture[ResultT]:
        """Like :meth:`submit`, without waiting.

        :raises anyio.WouldBlock: if the submission stream is full
        """
        future = self._new_future(record, estimated_cost, self._explicit_name)
        self._enqueue_nowait(future)
        return future

    async def submit_batch(
        self, records: Iterable[RecordT], *, estimated_cost: Sequence[int] | None = None
    ) -> list[BatchFuture[ResultT]]:
        """Queue many records; return their futures in the same order.

        Every cost is checked before any record is queued. Waits for room as
        :meth:`submit` does; if the call is cancelled, or the batcher stops, while it
        waits, it raises and withdraws the records it had queued (those a worker has
        not taken yet).
        """
        return await self._submit_many(records, estimated_cost, self._explicit_name)

    async def call(self, record: RecordT, *, estimated_cost: int | None = None) -> ResultT:
        """Submit one record and wait for its result.

        If the caller is cancelled (``anyio.fail_after``, ``move_on_after``, a
        cancelled task group) before the record is dispatched, the record is
        withdrawn and never reaches the process function. This is the per-request
        deadline: ``with anyio.fail_after(1): await batcher.call(x)``.
        """
        return await self._call(self._new_future(record, estimated_cost, self._explicit_name))

    def _new_future(self, record: Any, cost: int | None, name: str) -> BatchFuture[ResultT]:
        if cost is None:
            cost, name = self._estimate(record)
        if type(cost) is not int or cost < 0:
            check_int(name, cost, 0)  # raises, naming where the cost came from
        return BatchFuture(record, cost, self._counters)

    def _estimate(self, record: Any) -> tuple[Any, str]:
        if self._cost_estimator is not None:
            return self._cost_estimator(record), self._estimator_label
        kind = type(record)
        try:
            method, label = self._method_of[kind]
        except KeyError:
            method = next((m for m in self._cost_methods if callable(getattr(kind, m, None))), None)
            label = f"the cost from {kind.__name__}.{method}()" if method else self._default_name
            self._method_of[kind] = method, label
        if method is None:
            return self._default_cost, label
        return getattr(record, method)(), label

    async def _enqueue(self, future: BatchFuture[ResultT]) -> BatchFuture[ResultT]:
        try:
            self._enqueue_nowait(future)
        except anyio.WouldBlock:
            await self._enqueue_waiting(future)
        return future

    async def _call(self, future: BatchFuture[ResultT]) -> ResultT:
        # _enqueue() inlined: this is the hot path of closed-loop callers.
        try:
            self._enqueue_nowait(future)
        except anyio.WouldBlock:
            await self._enqueue_waiting(future)
        try:
            return await future
        except BaseException:
            future.cancel()  # withdraws the record unless it was already dispatched
            raise

    def _enqueue_nowait(self, future: BatchFuture[Any]) -> None:
        send = self._submit_send
        if send is None:
            raise RuntimeError(_NOT_RUNNING)
        try:
            send.send_nowait(future)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise RuntimeError(_NOT_RUNNING) from None
        self._counters.submitted += 1

    async def _enqueue_waiting(self, future: BatchFuture[Any]) -> None:
        send = self._submit_send
        assert send is not None
        try:
            await send.send(future)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise RuntimeError(_NOT_RUNNING) from None
        except BaseException:
            # Cancelled while waiting for room. The record may or may not have made
            # it into the stream; either way it is withdrawn and counted as such.
            self._counters.submitted += 1
            future.cancel()
            raise
        self._counters.submitted += 1

    async def _submit_many(
        self, records: Iterable[RecordT], costs: Sequence[int] | None, name: str
    ) -> list[BatchFuture[ResultT]]:
        records = list(records)
        counters = self._counters
        if costs is None:
            futures = [self._new_future(record, None, name) for record in records]
        else:
            if isinstance(costs, (str, bytes)) or not isinstance(costs, Sequence):
                raise TypeError(f"{name} must be a sequence of ints or None, got {type(costs).__name__}")
            if len(costs) != len(records):
                raise ValueError(f"{name} has {len(costs)} items but records has {len(records)}")
            for index, cost in enumerate(costs):
                if type(cost) is not int or cost < 0:
                    check_int(f"{name}[{index}]", cost, 0)  # raises, naming the item
            futures = [BatchFuture(record, cost, counters) for record, cost in zip(records, costs, strict=True)]
        if self._submit_send is None:
            raise RuntimeError(_NOT_RUNNING)
        queued = 0
        try:
            for future in futures:
                await self._enqueue(future)
                queued += 1
        except BaseException:
            # The caller gets no futures back: withdraw what this call had queued.
            for future in futures[:queued]:
                future.cancel()
            raise
        return futures

    # ------------------------------------------------------------ aggregator

    async def _aggregate(
        self,
        submissions: MemoryObjectReceiveStream[_Submission],
        batches: MemoryObjectSendStream[list[BatchFuture[Any]]],
        *,
        task_status: TaskStatus[None],
    ) -> None:
        """Pull submitted records into the assembly; close a batch when it is full,
        or when a worker is free for it; at end of input, flush everything."""
        assembly: Assembly[BatchFuture[Any]] = make_assembly(
            target_cost=self._target,
            max_batch_size=self._max_batch_size,
            cost_model=self._cost_model,
            group_by_cost=self._group_by_cost,
            window=max(self._max_queue_size, self._max_batch_size),
        )
        eager, min_size, timeout = self._eager, self._min_batch_size, self._timeout
        opened_at = 0.0  # when the oldest queued record arrived (monotonic clock)
        checkpointed = False
        ended = False

        def admit(future: _Submission) -> None:
            nonlocal opened_at
            if future is not None and future._state == PENDING:
                if not assembly:
                    opened_at = monotonic()
                assembly.add(future, future._cost)

        with submissions, batches:
            task_status.started()
            try:
                while True:
                    # Take in everything already submitted, up to a full batch.
                    while not ended and not assembly.full():
                        try:
                            future = submissions.receive_nowait()
                        except anyio.WouldBlock:
                            break
                        except anyio.EndOfStream:
                            ended = True
                            break
                        if future is not None and future._state == PENDING:  # admit(), inlined
                            if not assembly:
                                opened_at = monotonic()
                            assembly.add(future, future._cost)

                    delay = close_delay(
                        queued=len(assembly),
                        full=assembly.full(),
                        ended=ended,
                        worker_free=self._demand > 0,
                        eager=eager,
                        min_batch_size=min_size,
                        waited_s=monotonic() - opened_at,
                        batch_timeout_s=timeout,
                    )
                    if delay == 0:
                        if eager and not checkpointed and not (ended or assembly.full()):
                            # Let producers that are already runnable add theirs first.
                            checkpointed = True
                            await checkpoint()
                            continue
                        await self._dispatch(assembly.take()[0], batches)
                        checkpointed = False
                        continue
                    if ended:
                        return
                    if delay is None and assembly:
                        # Every worker is busy: this batch grows until one is free, and
                        # then goes without the eager checkpoint.
                        checkpointed = True
                    try:
                        if delay is None:
                            admit(await submissions.receive())
                        else:
                            with anyio.move_on_after(delay):
                                admit(await submissions.receive())
                    except anyio.EndOfStream:
                        ended = True
            except BaseException:
                closed = _closed()
                while assembly:
                    self._fail(assembly.take()[0], closed)
                while True:
                    try:
                        future = submissions.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    if future is not None:
                        self._fail([future], closed)
                raise

    async def _dispatch(
        self, batch: list[BatchFuture[Any]], batches: MemoryObjectSendStream[list[BatchFuture[Any]]]
    ) -> None:
        """Send a closed batch to the workers (its cost is counted when one takes it)."""
        self._demand -= 1
        try:
            try:
                batches.send_nowait(batch)
            except anyio.WouldBlock:
                await batches.send(batch)
        except BaseException:
            self._fail(batch, _closed())
            raise

    # ---------------------------------------------------------------- worker

    async def _work(
        self, batches: MemoryObjectReceiveStream[list[BatchFuture[Any]]], *, task_status: TaskStatus[None]
    ) -> None:
        """Take batches one at a time, run them, end their futures."""
        counters = self._counters
        # A batch whose results are in but not yet handed to its futures.
        finished: tuple[list[BatchFuture[Any]], list[Any]] | None = None
        with batches:
            task_status.started()
            try:
                while True:
                    self._demand += 1
                    if self._demand == 1:
                        self._wake_aggregator()
                    batch = None
                    if finished is not None:
                        # Give the aggregator, just woken, a turn to hand over the batch
                        # that grew while the model ran: the model starts on it before
                        # the callers of the finished batch resume and compete for the loop.
                        await checkpoint()
                        try:
                            batch = batches.receive_nowait()
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            pass
                        self._settle(*finished)
                        finished = None
                    if batch is None:
                        idle_from = perf_counter()
                        try:
                            batch = await batches.receive()
                        except anyio.EndOfStream:
                            return
                        counters.idle += perf_counter() - idle_from
                    busy_from = perf_counter()
                    finished = await self._run(batch)
                    counters.busy += perf_counter() - busy_from
            except BaseException:
                if finished is not None:
                    self._settle(*finished)
                closed = _closed()
                while True:
                    try:
                        self._fail(batches.receive_nowait(), closed)
                    except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                        break
                raise

    def _wake_aggregator(self) -> None:
        send = self._submit_send
        if send is not None:
            try:
                send.send_nowait(None)
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the aggregator has records to pull, or input has ended: it is awake

    async def _run(self, closed_batch: list[BatchFuture[Any]]) -> tuple[list[BatchFuture[Any]], list[Any]] | None:
        """Run one batch through the process function.

        Return the batch and its results for :meth:`_settle`, or ``None`` if the
        batch has already been failed (or had no record left).
        """
        # Records withdrawn while their batch waited for this worker are left out;
        # from here on the others can no longer be withdrawn.
        batch = [future for future in closed_batch if future._state == PENDING]
        if not batch:
            return None
        for future in batch:
            future._state = DISPATCHED
        records = [future._record for future in batch]
        counters = self._counters
        counters.batches += 1
        counters.dispatched += len(batch)
        counters.batch_cost += batch_cost([future._cost for future in batch], self._cost_model)
        try:
            if self._process_timeout is None:
                results = await self._invoke(records)
            else:
                with anyio.fail_after(self._process_timeout):
                    results = await self._invoke(records)
            if not isinstance(results, list):
                if isinstance(results, (str, bytes)) or not isinstance(results, Iterable):
                    raise TypeError(f"process_fn must return a list, got {type(results).__name__}")
                results = list(results)
            if len(results) != len(batch):
                raise ValueError(f"process_fn returned {len(results)} results for a batch of {len(batch)} records")
        except Exception as exc:
            logger.error("process_fn failed on a batch of %d records: %r", len(batch), exc, exc_info=exc)
            self._fail(batch, exc)
            return None
        except BaseException as exc:
            closed = _closed()
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self._fail(batch, closed)
                raise
            # KeyboardInterrupt, SystemExit...: close the batcher; stop() or the
            # end of `async with` (or serve()) re-raises it.
            logger.error("process_fn raised %r on a batch of %d records; closing", exc, len(batch))
            closed.__cause__ = exc
            self._fail(batch, closed)
            self._fatal = exc
            assert self._loops is not None
            self._loops.cancel_scope.cancel()
            return None
        return batch, results

    def _settle(self, batch: list[BatchFuture[Any]], results: list[Any]) -> None:
        """End each future of ``batch`` with its result (an ``Exception`` fails it)."""
        failed = 0
        for future, result in zip(batch, results, strict=True):
            # BatchFuture._finish, inlined: this runs once per record.
            if isinstance(result, Exception):
                failed += 1
                future._state = ERROR
            else:
                future._state = RESULT
            future._value = result
            future._record = None
            event = future._event
            if event is not None:
                event.set()
        counters = self._counters
        counters.completed += len(batch)
        counters.failed += failed

    async def _invoke(self, records: list[Any]) -> Any:
        if self._is_async:
            return await cast(Awaitable[Any], self._process_fn(records))
        limiter = self._limiter
        assert limiter is not None
        try:
            result = await anyio.to_thread.run_sync(self._process_fn, records, limiter=limiter, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # The abandoned thread runs on, and under trio it keeps its limiter token
            # until it returns: add one so the next batch is not stuck behind it.
            limiter.total_tokens += 1
            raise
        if inspect.isawaitable(result):
            result = await result
        return result

    def _fail(self, batch: list[BatchFuture[Any]], exc: BaseException) -> None:
        """End every unfinished future of ``batch`` with ``exc``."""
        ended = 0
        for future in batch:
            if future._state < RESULT:
                ended += 1
                future._finish(ERROR, exc)
        self._counters.completed += ended
        self._counters.failed += ended
