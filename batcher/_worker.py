"""The workers: each takes closed batches from the batch stream, one at a time,
runs them through the model (``_model.py``) and ends their futures."""

from __future__ import annotations

import logging
import math
from time import perf_counter
from typing import TYPE_CHECKING, Any, Final

import anyio
from anyio.abc import TaskStatus
from anyio.lowlevel import checkpoint

from ._budget import batch_cost
from ._events import Outcome, batch_dispatched, batch_ended
from ._exceptions import closed_error
from ._future import Batch, BatchFuture
from ._model import Model, ModelThread
from ._model_call import ModelCall
from ._stats import Counters
from ._streaming import run_streaming
from ._transitions import dispatch, fail, fail_queued, settle

if TYPE_CHECKING:
    from ._run import Run

__all__ = ("RETIRE", "Worker")

logger = logging.getLogger("batcher")

#: Handed to an idle worker (one waiting in ``receive()``, never through the
#: stream's buffer) to make it leave when ``configure()`` shrinks the pool; never
#: filled, so it is dropped wherever a batch would be failed.
RETIRE: Final[Batch] = []

#: A settled batch that woke at least this many waiting callers makes the worker
#: wait one more turn of the event loop before it settles the next (see
#: ``Worker._handover``).
CROWD: Final = 128

#: A batch whose results are in, and the results.
_Finished = tuple[list[BatchFuture[Any]], list[Any]]


class Worker:
    """One of a run's workers; :meth:`run` is its loop."""

    __slots__ = ("_batches", "_cost_model", "_counters", "_index", "_model", "_run", "_thread")

    def __init__(self, run: Run, model: Model, counters: Counters, index: int) -> None:
        self._run = run
        self._index = index  # which of the run's workers (for observers)
        self._model = model
        self._counters = counters
        self._cost_model = run.settings.cost_model
        self._batches = run.batch_receive.clone()
        self._thread = ModelThread()  # for a plain process function; started on first use

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take batches until the batch stream ends. If cancelled, end the futures
        of the batch it finished and fail those of the batches still queued."""
        with self._batches:
            task_status.started()
            try:
                await self._take_batches()
            finally:
                self._thread.end()
                self._run.worker_left(self._index)

    async def _take_batches(self) -> None:
        counters, run = self._counters, self._run
        finished: _Finished | None = None  # results in, not yet handed to the futures
        crowd = False  # the last batch settled woke a crowd of waiting callers
        try:
            while not run.retiring:
                run.worker_ready()
                batch = None
                if finished is not None:
                    batch = await self._handover(crowd)
                    crowd = settle(*finished, counters) >= CROWD
                    finished = None
                if batch is None:
                    if run.retiring:  # asked to leave between batches (by a done-callback, say): idle, so now
                        run.batch_sent()  # its readiness is taken, as a RETIRE takes it
                        break
                    batch = await self._next_batch()
                if batch is None or batch is RETIRE:
                    return
                finished = await self._process(batch)
            run.retiring -= 1  # configure() shrank the pool while no worker waited for a batch
        except BaseException:
            run.end_input()  # cancelled: a callback the failures call may not queue records
            fail_queued(self._batches, closed_error(run.fatal), counters)
            raise
        finally:
            if finished is not None:
                settle(*finished, counters)

    async def _next_batch(self) -> Batch | None:
        """Wait for the next batch (``None`` at the end of the stream), timing the wait."""
        self._run.wake_rooms()  # no hand-over comes while this worker waits
        idle_from = perf_counter()
        try:
            return await self._batches.receive()
        except anyio.EndOfStream:
            return None
        finally:  # (the last wait too, until the batcher stops)
            self._counters.idle += perf_counter() - idle_from

    async def _handover(self, crowd: bool) -> Batch | None:
        """Give the aggregator, just woken, a turn to hand over the batch that grew
        while the model ran, and take it if it is there. The model starts on it
        before the callers of the finished batch resume and compete for the loop.
        With nothing queued there is nothing to hand over, and no turn is taken.

        After waking a ``crowd`` (``CROWD`` waiting callers or more), wait a second turn,
        so that its callers have run before the next batch's are woken (trio runs
        a turn's tasks in either order). Each wake-up allocates, and what they free
        is counted only once they run: two crowds woken back to back pass the cyclic
        GC's threshold, and each collection then scans every caller still parked (on
        trio with 10,000 closed-loop callers: 11.5 µs a record, 7.4 with the turn).
        For the same reason the ``submit()`` callers whose records have left the
        overflow are woken here, between the two crowds of results, with two turns
        of their own when they are a crowd (trio, 10,000 ``submit()`` producers:
        12.9 µs a record, 21.2 when the aggregator woke them as it took their records)."""
        if not self._counters.queued:
            return None  # no batch grew; the finished batch's callers run before any can (_next_batch wakes the rooms)
        await checkpoint()
        if crowd:
            await checkpoint()
        if self._run.wake_rooms() >= CROWD:
            await checkpoint()
            await checkpoint()
        if self._run.retiring:
            return None  # configure() shrank the pool meanwhile: this worker, idle, leaves
        try:
            return self._batches.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return None

    async def _process(self, closed_batch: Batch) -> _Finished | None:
        """Run one batch through the model. Return it with its results, or ``None``
        if it failed or streamed (its futures have ended) or had no record left."""
        batch, waits = dispatch(closed_batch, self._counters)
        if not batch:
            return None
        counters = self._counters
        number, cost = self._count(batch, waits)
        observe = counters.observe  # those there are now see both of the batch's events
        if observe is not None:
            target = self._run.settings.target_batch_cost
            batch_dispatched(observe, counters, number, self._index, batch, cost, target, waits)
        started = perf_counter()
        results: list[Any] | None = None
        outcome: Outcome = "ok"
        try:
            if self._model.streaming:
                await self._stream(batch)  # ends each future as its stream ends
            else:
                results = await self._call_model(batch, cost)
        except BaseException as exc:
            failed = self._failed(batch, exc)
            if failed is None:
                outcome = "closed"
                raise  # the batcher is being cancelled; the batch's futures have failed
            outcome = failed
        finally:
            counters.running -= 1
            duration = perf_counter() - started
            counters.busy += duration  # a batch that ran (none of one whose records had all left)
            counters.durations.append(duration)
            if observe is not None:
                batch_ended(observe, counters, number, self._index, batch, cost, duration, outcome, results)
        return None if results is None else (batch, results)

    def _count(self, batch: Batch, waits: list[float]) -> tuple[int, int]:
        """Count a dispatched batch in; return its number and its cost."""
        counters = self._counters
        counters.batches += 1
        counters.dispatched += len(batch)
        cost = batch_cost([future._cost for future in batch], self._cost_model)
        counters.batch_cost += cost
        if waits:
            counters.waits.extend(waits)
        counters.running += 1
        return counters.batches, cost

    def _failed(self, batch: Batch, exc: BaseException) -> Outcome | None:
        """End the futures of a batch whose model call raised ``exc``; return the
        outcome, or ``None`` if the batcher is being cancelled (then re-raise)."""
        if isinstance(exc, Exception):
            self._fail_batch(batch, exc)
            return "timed_out" if isinstance(exc, TimeoutError) and self._model.timeout_s is not None else "failed"
        if not isinstance(exc, anyio.get_cancelled_exc_class()):
            self._end_run(batch, exc)
            return "closed"
        if anyio.current_effective_deadline() == -math.inf:  # the batcher is being cancelled
            self._run.end_input()
            fail(batch, closed_error(self._run.fatal), self._counters)
            return None
        self._fail_batch(batch, _stray(exc))
        return "failed"

    def _model_call(self) -> ModelCall:
        # The process function, and any task it starts, can tell it runs in this
        # batcher's worker (see DynamicBatcher.stop), and must not wait for its own
        # records where that would leave no worker to run them (ModelCall.begin_wait).
        return ModelCall(self._counters)

    async def _call_model(self, batch: Batch, cost: int) -> list[Any]:
        started = perf_counter()
        with self._model_call():
            results = await self._model([future._record for future in batch], self._thread)
        fit = self._run.cost_fit
        if fit is not None:  # cost_model="measured": what this batch cost, for the next ones
            fit.add(len(batch), cost, perf_counter() - started, self._index)
        return results

    async def _stream(self, batch: Batch) -> None:
        with self._model_call():
            await run_streaming(self._model, batch, self._counters, self._run.settings.stream_stall_s)  # type: ignore[arg-type]

    def _fail_batch(self, batch: Batch, exc: Exception) -> None:
        logger.error("process_fn failed on a batch of %d records: %r", len(batch), exc, exc_info=exc)
        fail(batch, exc, self._counters)

    def _end_run(self, batch: Batch, exc: BaseException) -> None:
        """A ``BaseException`` other than cancellation (``KeyboardInterrupt``,
        ``SystemExit``...) ends the run: fail the batch with a closed error that
        names it as the cause, and cancel the loops; ``stop()`` (or ``serve()``)
        re-raises it."""
        logger.error("process_fn raised %r on a batch of %d records; closing", exc, len(batch))
        self._run.end_fatally(exc)
        fail(batch, closed_error(exc), self._counters)


def _stray(exc: BaseException) -> RuntimeError:
    # A cancellation exception that no cancellation of the batcher caused: say so
    # and keep the original as the cause.
    error = RuntimeError(
        f"process_fn raised {type(exc).__name__} although the batcher was not cancelled "
        "(did it await a task that someone else cancelled, or did the event loop end with the batcher "
        "started and not stopped?)"
    )
    error.__cause__ = exc
    return error
