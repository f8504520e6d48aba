"""The workers: each takes closed batches from the batch stream, one at a time,
runs them through the model and ends their futures."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import anyio
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint

from ._assembly import batch_cost
from ._exceptions import closed_error
from ._future import Batch, BatchFuture, dispatch, fail, fail_queued, settle
from ._protocols import ProcessFn
from ._stats import Counters

if TYPE_CHECKING:
    from ._run import Run

__all__ = ("Model", "Worker")

logger = logging.getLogger("batcher")

#: A batch whose results are in, and the results.
_Finished = tuple[list[BatchFuture[Any]], list[Any]]


def _is_async(fn: object) -> bool:
    call = type(fn).__call__ if not inspect.isroutine(fn) else None  # an object with async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


class Model:
    """The process function, called the way its kind needs: ``async def`` on the
    event loop, a plain function in a worker thread; within the time limit."""

    __slots__ = ("_fn", "_is_async", "_timeout")

    def __init__(self, process_fn: ProcessFn[Any, Any], timeout_s: float | None) -> None:
        self._fn = process_fn
        self._is_async = _is_async(process_fn)
        self._timeout = timeout_s

    async def __call__(self, records: list[Any], limiter: anyio.CapacityLimiter) -> list[Any]:
        """Return one result per record, in order.

        :raises TimeoutError: if the call outlasts the time limit
        :raises TypeError: if the results are not a list or iterable of them
        :raises ValueError: if there are not as many results as records
        """
        if self._timeout is None:
            results = await self._invoke(records, limiter)
        else:
            with anyio.fail_after(self._timeout):
                results = await self._invoke(records, limiter)
        if not isinstance(results, list):
            if isinstance(results, (str, bytes)) or not isinstance(results, Iterable):
                raise TypeError(f"process_fn must return a list, got {type(results).__name__}")
            results = list(results)
        if len(results) != len(records):
            raise ValueError(f"process_fn returned {len(results)} results for a batch of {len(records)} records")
        return results

    async def _invoke(self, records: list[Any], limiter: anyio.CapacityLimiter) -> Any:
        if self._is_async:
            return await cast(Awaitable[Any], self._fn(records))
        try:
            result = await anyio.to_thread.run_sync(self._fn, records, limiter=limiter, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # The abandoned thread runs on, and under trio it keeps its limiter token
            # until it returns: add one so the next batch is not stuck behind it.
            limiter.total_tokens += 1
            raise
        if inspect.isawaitable(result):
            result = await result
        return result


class Worker:
    """One of a run's workers; :meth:`run` is its loop."""

    __slots__ = ("_batches", "_cost_model", "_counters", "_model", "_run")

    def __init__(self, run: Run, model: Model, counters: Counters) -> None:
        self._run = run
        self._model = model
        self._counters = counters
        self._cost_model = run.settings.cost_model
        self._batches = run.batch_receive.clone()

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Take batches until the batch stream ends. If cancelled, end the futures
        of the batch it finished and fail those of the batches still queued."""
        counters, batches = self._counters, self._batches
        finished: _Finished | None = None  # results in, not yet handed to the futures
        with batches:
            task_status.started()
            try:
                while True:
                    self._run.worker_ready()
                    batch = None
                    if finished is not None:
                        batch = await self._handover()
                        settle(*finished, counters)
                        finished = None
                    if batch is None:
                        idle_from = perf_counter()
                        try:
                            batch = await batches.receive()
                        except anyio.EndOfStream:
                            return
                        counters.idle += perf_counter() - idle_from
                    busy_from = perf_counter()
                    finished = await self._process(batch)
                    counters.busy += perf_counter() - busy_from
            except BaseException:
                if finished is not None:
                    settle(*finished, counters)
                fail_queued(batches, closed_error(), counters)
                raise

    async def _handover(self) -> Batch | None:
        """Give the aggregator, just woken, a turn to hand over the batch that grew
        while the model ran, and take it if it is there. The model starts on it
        before the callers of the finished batch resume and compete for the loop."""
        await checkpoint()
        try:
            return self._batches.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return None

    async def _process(self, closed_batch: Batch) -> _Finished | None:
        """Run one batch through the model. Return it with its results, or ``None``
        if it failed (its futures have ended) or had no record left."""
        batch = dispatch(closed_batch)
        if not batch:
            return None
        counters = self._counters
        counters.batches += 1
        counters.dispatched += len(batch)
        counters.batch_cost += batch_cost([future._cost for future in batch], self._cost_model)
        try:
            results = await self._model([future._record for future in batch], self._run.limiter)
        except Exception as exc:
            logger.error("process_fn failed on a batch of %d records: %r", len(batch), exc, exc_info=exc)
            fail(batch, exc, counters)
            return None
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                fail(batch, closed_error(), counters)
                raise
            self._end_run(batch, exc)
            return None
        return batch, results

    def _end_run(self, batch: Batch, exc: BaseException) -> None:
        """A ``BaseException`` other than cancellation (``KeyboardInterrupt``,
        ``SystemExit``...) ends the run: fail the batch with a closed error that
        names it as the cause, and cancel the loops; ``stop()`` (or ``serve()``)
        re-raises it."""
        logger.error("process_fn raised %r on a batch of %d records; closing", exc, len(batch))
        closed = closed_error()
        closed.__cause__ = exc
        fail(batch, closed, self._counters)
        self._run.end_fatally(exc)
