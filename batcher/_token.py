"""TokenBatcher: DynamicBatcher in the words of LLM inference."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any, ClassVar, SupportsIndex, TypeVar

import anyio
from anyio.lowlevel import checkpoint_if_cancelled

from ._dynamic import DynamicBatcher
from ._events import Observer
from ._future import ERROR, BatchFuture, until_done
from ._pricing import check_cost
from ._protocols import CostEstimatorFn, CostModel, ProcessFn, RecordT, ResultT
from ._streaming import RecordStream
from ._synonyms import check_target, either, parts

__all__ = ("TokenBatcher",)

T = TypeVar("T")
U = TypeVar("U")


class TokenBatcher(DynamicBatcher[RecordT, ResultT]):
    """A :class:`DynamicBatcher` whose costs are tokens: collects records (prompts,
    texts) submitted by many tasks into token-budgeted batches and runs each batch
    through one inference function. Works under asyncio and trio.

    A record's tokens are, first that applies: ``estimated_tokens`` (or
    ``estimated_cost``) given to ``submit``, the token estimator,
    ``record.estimate_tokens()``, ``record.estimate_cost()``, for a ``str`` its
    length / 4 + 1 (as :class:`Prompt`), else ``default_token_estimate`` (a
    warning is logged once per record type that falls back to it).

    :param inference_fn: takes ``list[record]``, returns one result per record in
        the same order (an ``Exception`` in a slot fails that record alone).
        ``async def`` runs on the event loop; a plain function runs in a worker
        thread, and if it returns an awaitable, that is awaited on the loop.
    :param process_fn: the same as ``inference_fn`` (flyte's name); give one.
    :param token_estimator: ``record -> int`` tokens, used when ``submit`` gets no
        explicit count. ``cost_estimator`` is the same.
    :param cost_estimator: see ``token_estimator``.
    :param target_batch_tokens: a batch's tokens (by ``cost_model``) never exceed
        this, except a batch of one record that alone has more.
        ``target_batch_cost`` (default 32,000) is the same.
    :param target_batch_cost: see ``target_batch_tokens``.
    :param default_token_estimate: the tokens of a record nothing else prices.
        ``default_cost`` (default 1) is the same.
    :param default_cost: see ``default_token_estimate``.
    :param max_batch_size: most records in one batch.
    :param min_batch_size: a smaller batch waits for more records, but no longer
        than ``batch_timeout_s`` after its first record arrived.
    :param batch_timeout_s: how long a batch may wait to fill (see ``eager_dispatch``).
    :param max_queue_size: capacity of the submission stream; ``submit`` waits
        while it is full. The aggregator holds the batch it is building on top of
        this (with ``group_by_cost``, a pool of up to ``max(max_queue_size,
        max_batch_size)``).
    :param prefetch_batches: how many full batches may wait for a busy worker.
    :param eager_dispatch: when a worker is free, send the queued records at once
        (after one scheduling checkpoint). When false, wait up to
        ``batch_timeout_s`` from the first record for the batch to fill.
    :param max_concurrent_batches: how many batches run at once.
    :param cost_model: ``"sum"`` (a batch has the sum of its records' tokens),
        ``"padded"`` (``len(batch) * max(tokens)``, as a padded model computes) or
        ``"measured"``: padded, and each batch is chosen among grouped and
        arrival-order candidates by its predicted time, from the batches timed so
        far (see the README's "Padding-aware batching").
    :param group_by_cost: build each batch around the oldest queued record from the
        queued records of the most similar length, instead of in arrival order.
    :param process_timeout_s: a batch whose inference function runs longer fails
        with :exc:`TimeoutError`; ``None`` for no limit. A plain function then runs
        in a daemon thread of the worker's own (not an AnyIO worker thread), so a
        call stuck past the limit does not keep the program from exiting.
    :param min_padding_efficiency: with ``cost_model="padded"``, a record stays
        out of a batch if the batch's real tokens over its padded tokens,
        ``sum(tokens) / (len(batch) * max(tokens))``, would fall below this;
        ``None`` for no floor.
    :param max_queued_cost: load shedding: a call that would queue records past
        this many tokens raises :exc:`BatcherOverloadedError` at once (nothing is
        queued); ``None`` for no limit.
    :param max_queue_delay_s: a record still queued this many seconds after it was
        submitted fails with :exc:`QueueTimeoutError`; ``None`` for no deadline.
    :param priority_aging_s: a record queued this long counts as the highest
        priority; ``None`` for never. The ``priority`` and ``max_queue_delay_s`` of
        each record, and ``configure()`` (which also takes ``target_batch_tokens``),
        are as :class:`DynamicBatcher` describes.
    :param stream_buffer: with a streaming inference function (an async generator
        function), how many items of one record may wait for its consumer.
    :param stream_stall_s: how long a step of a streaming batch waits, in all, for
        consumers whose buffer is full before it fails them with :exc:`StreamLagError`.
    :param observers: plain callables (not ``async def``), called with an event for
        every batch dispatched and ended and for records dropped (see
        :meth:`add_observer`, :mod:`batcher.metrics`).
    :raises TypeError: for a setting of the wrong type, naming it
    :raises ValueError: for a setting out of range, naming it
    """

    _synonyms: ClassVar[dict[str, str]] = {"target_batch_tokens": "target_batch_cost"}

    def __init__(
        self,
        inference_fn: ProcessFn[RecordT, ResultT] | None = None,
        *,
        process_fn: ProcessFn[RecordT, ResultT] | None = None,
        token_estimator: CostEstimatorFn[RecordT] | None = None,
        cost_estimator: CostEstimatorFn[RecordT] | None = None,
        target_batch_tokens: int | None = None,
        target_batch_cost: int = 32_000,
        default_token_estimate: int | None = None,
        default_cost: int | None = None,
        max_batch_size: int = 256,
        min_batch_size: int = 1,
        batch_timeout_s: float = 0.05,
        max_queue_size: int = 5_000,
        prefetch_batches: int = 2,
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
        self._setup(  # the parts DynamicBatcher.__init__ builds, in token words
            *parts(inference_fn, process_fn, token_estimator, cost_estimator, default_token_estimate, default_cost),
            either("target_batch_tokens", target_batch_tokens, "target_batch_cost", target_batch_cost, check_target),
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

    async def submit(
        self,
        record: RecordT,
        *,
        estimated_tokens: int | None = None,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> BatchFuture[ResultT]:
        """Queue one record and return its future.

        The record's tokens are ``estimated_tokens``, else ``estimated_cost``, else
        priced as the class describes. Waits while the submission stream is full
        (backpressure); a caller cancelled while waiting has its record withdrawn.

        :raises TypeError: if the token count is not an integer (an ``int``, or
            anything with ``__index__`` such as ``numpy.int64``; not a ``bool``)
        :raises ValueError: if the token count is negative
        :raises RuntimeError: if the batcher is not running, or is called from a
            thread other than its event loop's
        """
        name, cost = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost, check_cost)
        future = self._new_future(record, cost, name, priority, max_queue_delay_s)
        if not self._run.try_submit(future, max_queue_delay_s):
            await self._run.submit(future, max_queue_delay_s)
        return future

    def submit_nowait(
        self,
        record: RecordT,
        *,
        estimated_tokens: int | None = None,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> BatchFuture[ResultT]:
        """Queue one record and return its future, without waiting. Its tokens are
        ``estimated_tokens``, else ``estimated_cost``, else priced as the class
        describes.

        :raises anyio.WouldBlock: if the submission stream is full
        :raises TypeError: if the token count is not an integer
        :raises ValueError: if the token count is negative
        :raises RuntimeError: if the batcher is not running, or is called from a
            thread other than its event loop's
        """
        name, cost = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost, check_cost)
        future = self._new_future(record, cost, name, priority, max_queue_delay_s)
        if not self._run.try_submit(future, max_queue_delay_s):
            raise anyio.WouldBlock
        return future

    async def submit_batch(
        self,
        records: Iterable[RecordT],
        *,
        estimated_tokens: Collection[SupportsIndex] | None = None,
        estimated_cost: Collection[SupportsIndex] | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> list[BatchFuture[ResultT]]:
        """Queue many records; return their futures in the same order.

        ``estimated_tokens`` (or ``estimated_cost``) gives one token count per
        record: a sequence, or any sized iterable such as a numpy array. Every
        count is checked before any record is queued. Waits for room as
        :meth:`submit` does; if the call is cancelled, or the batcher stops, while
        it waits, it raises and withdraws the records it had queued (those a
        worker has not taken yet).

        :raises TypeError: if the counts are not a sized iterable, or one is not an
            integer (the message names its index)
        :raises ValueError: if there are not as many counts as records, or one is
            negative
        :raises RuntimeError: if the batcher is not running, or is called from a
            thread other than its event loop's
        """
        if estimated_tokens is not None and estimated_cost is not None:  # shadowed: checked, not used
            records = list(records)
            self._pricing.check_all(estimated_cost, len(records), "estimated_cost")
        name, costs = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost)
        return await self._submit_all(records, costs, name, priority, max_queue_delay_s)

    async def call(
        self,
        record: RecordT,
        *,
        estimated_tokens: int | None = None,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> ResultT:
        """Submit one record and wait for its result. Its tokens are
        ``estimated_tokens``, else ``estimated_cost``, else priced as the class
        describes.

        If the caller is cancelled (``anyio.fail_after``, ``move_on_after``, a
        cancelled task group) before the record is dispatched, the record is
        withdrawn and never reaches the inference function. This is the
        per-request deadline: ``with anyio.fail_after(1): await batcher.call(x)``.
        Once dispatched, the record's batch runs to its end, and the caller's
        deadline only stops the waiting.

        :return: the record's result
        :raises Exception: the exception the inference function raised for the
            record's batch, or returned in the record's slot
        :raises BatcherClosedError: if the batcher closed abnormally before the
            record was processed
        :raises RuntimeError: if the batcher is not running, or is called from a
            thread other than its event loop's, or from inside its own inference
            function while every other worker waits for it too (a self-wait)
        """
        name, cost = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost, check_cost)
        future = self._new_future(record, cost, name, priority, max_queue_delay_s)
        self._queue_for_call(future, max_queue_delay_s)
        try:  # as DynamicBatcher.call, written out: a parked caller keeps one coroutine
            while (waiting := until_done(future)) is not None:
                await waiting
        except BaseException:
            future.cancel()
            raise
        if future._state == ERROR:  # a cancellation that came meanwhile wins (see until_done)
            await checkpoint_if_cancelled()
        return future.result()

    def stream(
        self,
        record: RecordT,
        *,
        estimated_tokens: int | None = None,
        estimated_cost: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> RecordStream[Any]:
        """Submit one record to a streaming batcher (its inference function is an
        async generator function) and return the async iterator of the record's
        items, as :meth:`DynamicBatcher.stream` does. Its tokens are
        ``estimated_tokens``, else ``estimated_cost``, else priced as the class
        describes.

        :raises TypeError: if the inference function does not stream, or the token
            count is not an integer
        :raises ValueError: if the token count is negative
        :raises BatcherOverloadedError: if the record would take the queued tokens
            past ``max_queued_cost``
        :raises RuntimeError: if the batcher is not running, or is called from a
            thread other than its event loop's
        """
        name, cost = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost, check_cost)
        return self._open_stream(self._new_future(record, cost, name, priority, max_queue_delay_s), max_queue_delay_s)
