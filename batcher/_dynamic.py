"""DynamicBatcher: its settings, its lifecycle, and ``submit``, where a record's path
begins: ``submit`` prices the record (``_pricing.py``), wraps it in a future
(``_future.py``) and sends it into the current run's submission stream (``_run.py``);
the aggregator (``_aggregator.py``) forms batches (``_assembly.py``) and sends them into
the batch stream; a worker (``_worker.py``) runs each through ``_model.py``."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from itertools import count
from typing import Any, Generic, Literal, SupportsIndex, overload

import anyio
from anyio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._aggregator import INTAKE
from ._events import Observer
from ._future import ERROR, BatchFuture, until_done
from ._lifecycle import Lifecycle
from ._map import MapResults, Progress
from ._pricing import Pricing
from ._protocols import CostEstimatorFn, CostModel, ProcessFn, RecordT, ResultT
from ._settings import check_callable, check_options
from ._streaming import RecordStream, StreamFuture, open_stream

__all__ = ("DynamicBatcher",)

_DEFAULT_PRIORITY = 0  # the object the default is (an int equal to it that is another object is checked)


class DynamicBatcher(Lifecycle, Generic[RecordT, ResultT]):
    """Collects records submitted by many tasks into cost-budgeted batches and runs
    each batch through one process function. Works under asyncio and trio.

    Every way of submitting (:meth:`submit`, :meth:`submit_nowait`, :meth:`submit_batch`,
    :meth:`call`, :meth:`map`) takes two options per record: ``priority`` (an ``int``,
    default 0): a higher one is dispatched first, records of one priority in arrival
    order, within the same budget rules (see ``priority_aging_s``); and
    ``max_queue_delay_s``: the record's own queue deadline, overriding the batcher's.

    :param process_fn: takes ``list[record]``, returns one result per record in the
        same order. ``async def`` runs on the event loop, a plain function on its
        worker's own thread. An async generator function streams one item per record
        a step (:meth:`stream`; a record's result is then the list of its items). One
        that is an async context manager is entered as each run starts and exited after its last batch.
    :param cost_estimator: ``record -> int`` cost, used when ``submit`` gets no explicit cost.
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
    :param max_queue_delay_s: a record still queued this many seconds after it was
        submitted fails with :exc:`QueueTimeoutError` without reaching the process
        function (``None``: no deadline); a record's own ``max_queue_delay_s`` wins.
    :param priority_aging_s: a record queued this long counts as the highest
        priority (the oldest of those first), so sustained load of a higher
        priority cannot starve it; ``None`` for never.
    :param stream_buffer: with a streaming process function, how many items of one
        record may wait for its consumer of :meth:`stream`.
    :param stream_stall_s: how long a step of a streaming batch waits, in all, for
        consumers whose ``stream_buffer`` is full; those still full then fail with
        :exc:`StreamLagError`, and the batch goes on without them.
    :param observers: plain callables (not ``async def``) given an event for every
        batch dispatched and ended and records dropped (see :meth:`add_observer`).
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
        max_queue_delay_s: float | None = None,
        priority_aging_s: float | None = 1.0,
        stream_buffer: int = 64,
        stream_stall_s: float = 1.0,
        observers: Iterable[Observer] = (),
    ) -> None:
        self._setup(
            check_callable("process_fn", process_fn),
            Pricing(("cost_estimator", cost_estimator), ("default_cost", default_cost), ("estimate_cost",)),
            ("target_batch_cost", target_batch_cost),
            observers,
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
            max_queue_delay_s=max_queue_delay_s,
            priority_aging_s=priority_aging_s,
            stream_buffer=stream_buffer,
            stream_stall_s=stream_stall_s,
        )

    # ---------------------------------------------------------------- submit

    async def submit(
        self,
        record: RecordT,
        *,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> BatchFuture[ResultT]:
        """Queue one record and return its future.

        The cost is, first that applies: ``estimated_cost``, the cost estimator,
        ``record.estimate_cost()``, ``default_cost``. Waits while the submission stream is full
        (backpressure), then until the next batch hand-over or an idle aggregator; a caller cancelled
        while waiting has its record withdrawn. ``priority`` and ``max_queue_delay_s``: see the class.

        :raises TypeError: if the cost is not an integer (an ``int``, or anything
            with ``__index__`` such as ``numpy.int64``; not a ``bool``), or
            ``priority`` is not an ``int``
        :raises ValueError: if the cost is negative, or ``max_queue_delay_s`` is not > 0
        :raises BatcherOverloadedError: if the record would take the queued cost
            past ``max_queued_cost``
        :raises RuntimeError: if the batcher is not running, or is called from a
            thread other than its event loop's
        """
        future = self._new_future(record, estimated_cost, "estimated_cost", priority, max_queue_delay_s)
        if not self._run.try_submit(future, max_queue_delay_s):
            await self._run.submit(future, max_queue_delay_s)
        return future

    def submit_nowait(
        self,
        record: RecordT,
        *,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> BatchFuture[ResultT]:
        """Like :meth:`submit`, without waiting.

        :raises anyio.WouldBlock: if the submission stream is full
        """
        future = self._new_future(record, estimated_cost, "estimated_cost", priority, max_queue_delay_s)
        if not self._run.try_submit(future, max_queue_delay_s):
            raise anyio.WouldBlock
        return future

    async def submit_batch(
        self,
        records: Iterable[RecordT],
        *,
        estimated_cost: Collection[SupportsIndex] | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> list[BatchFuture[ResultT]]:
        """Queue many records; return their futures in the same order.

        Every cost is checked before any record is queued. Waits for room as
        :meth:`submit` does; if the call is cancelled, or the batcher stops, while it
        waits, it raises and withdraws the records it had queued (those a worker has
        not taken yet). ``estimated_cost`` may be any sized iterable (a numpy array).
        ``priority`` and ``max_queue_delay_s`` apply to every record.
        """
        return await self._submit_all(records, estimated_cost, "estimated_cost", priority, max_queue_delay_s)

    async def call(
        self,
        record: RecordT,
        *,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> ResultT:
        """Submit one record and wait for its result.

        If the caller is cancelled (``anyio.fail_after``, ``move_on_after``, a
        cancelled task group) before the record is dispatched, the record is
        withdrawn and never reaches the process function. This is the per-request
        deadline: ``with anyio.fail_after(1): await batcher.call(x)``.

        :raises QueueTimeoutError: if the record was still queued ``max_queue_delay_s``
            (or the batcher's) after the call
        :raises RuntimeError: as :meth:`submit`, and from inside the batcher's own
            process function while every other worker waits for it too (a self-wait)
        """
        future = self._new_future(record, estimated_cost, "estimated_cost", priority, max_queue_delay_s)
        self._queue_for_call(future, max_queue_delay_s)
        try:
            while (waiting := until_done(future)) is not None:
                await waiting  # here, not in a helper: a parked caller keeps one coroutine
        except BaseException:
            future.cancel()  # withdraws the record unless it was already dispatched
            raise
        if future._state == ERROR:  # a cancellation that came meanwhile wins (see until_done)
            await checkpoint_if_cancelled()
        return future.result()

    def stream(
        self,
        record: RecordT,
        *,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> RecordStream[Any]:
        """Submit one record to a streaming batcher (its process function is an async
        generator function) and return the async iterator of the record's items, a
        :class:`RecordStream`: ``async with batcher.stream(x) as items: async for ...``.
        The record is queued at once, without waiting for room.

        :raises TypeError: if the process function does not stream, and as :meth:`submit`
        :raises ValueError, BatcherOverloadedError, RuntimeError: as :meth:`submit`
        """
        return self._open_stream(
            self._new_future(record, estimated_cost, "estimated_cost", priority, max_queue_delay_s), max_queue_delay_s
        )

    def _open_stream(self, future: BatchFuture[Any], delay: float | None) -> RecordStream[Any]:
        if not isinstance(future, StreamFuture):
            raise TypeError("stream() needs a streaming process_fn: an async generator yielding one item per record")
        self._queue_for_call(future, delay)
        return open_stream(future, self._settings.stream_buffer)

    def _new_future(
        self, record: Any, cost: Any, name: str, priority: int, delay: float | None
    ) -> BatchFuture[ResultT]:
        if priority is not _DEFAULT_PRIORITY or delay is not None:  # a fast path for the defaults
            check_options(priority, delay)
        future = self._future_type(record, self._pricing.price(record, cost, name), self._counters, priority)
        if priority is not _DEFAULT_PRIORITY:  # once priced: a bad cost changes nothing
            self._run.note_priority(priority)
        return future

    def _queue_for_call(self, future: BatchFuture[ResultT], delay: float | None) -> None:
        if not self._run.try_submit(future, delay):
            self._run.queue_behind(future, delay)  # no need to wait for room: call() waits for the result

    @overload
    def map(
        self,
        records: Iterable[RecordT],
        *,
        ordered: bool = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool | Progress | None = ...,
        priority: int = ...,
        max_queue_delay_s: float | None = ...,
    ) -> MapResults[ResultT]: ...
    @overload
    def map(
        self,
        records: Iterable[RecordT],
        *,
        ordered: bool = ...,
        return_exceptions: bool,
        progress: bool | Progress | None = ...,
        priority: int = ...,
        max_queue_delay_s: float | None = ...,
    ) -> MapResults[ResultT | Exception]: ...
    def map(
        self,
        records: Iterable[RecordT],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | Progress | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
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
        :param priority: of every record (see the class)
        :param max_queue_delay_s: of every record (see the class)
        """
        check_options(priority, max_queue_delay_s)
        return MapResults(
            self,
            records,
            ordered=ordered,
            return_exceptions=return_exceptions,
            progress=progress,
            window=self._settings.max_queue_size,
            options={"priority": priority, "max_queue_delay_s": max_queue_delay_s},
        )

    async def _submit_all(
        self,
        records: Iterable[RecordT],
        costs: Collection[SupportsIndex] | None,
        name: str,
        priority: int,
        delay: float | None,
    ) -> list[BatchFuture[ResultT]]:
        check_options(priority, delay)
        records, counters = list(records), self._counters
        futures: list[BatchFuture[ResultT]] = []
        for start, priced in zip(count(0, INTAKE), self._pricing.priced(records, costs, name, INTAKE), strict=False):
            chunk = records[start : start + INTAKE]  # a chunk at a turn of the event loop
            futures.extend([self._future_type(r, c, counters, priority) for r, c in zip(chunk, priced, strict=True)])
            await checkpoint()
        self._run.note_priority(priority)  # once every record is priced: a bad cost changes nothing
        await self._run.submit_all(futures, delay)
        return futures
