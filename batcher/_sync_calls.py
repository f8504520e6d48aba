"""What threads call on a :class:`~batcher.SyncBatcher`: ``call``, ``submit``, ``map``
and ``stream``, each handed to the batcher on its background loop (``_from_thread.py``,
``_sync_results.py``). The loop, and starting and stopping it, are in ``_sync.py``."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from functools import partial
from typing import Any, Generic, Literal, overload

from ._dynamic import DynamicBatcher
from ._from_thread import call_from_thread, call_on_loop, relayed, submit_from_thread, thread_options
from ._loop import NOT_RUNNING, Loop
from ._map import Progress
from ._model_call import SelfWait
from ._protocols import RecordT, ResultT
from ._settings import check_options
from ._sync_results import SyncResults

__all__ = ("SyncCalls",)


class SyncCalls(Generic[RecordT, ResultT]):
    """The calls of :class:`~batcher.SyncBatcher` (its base): what a thread submits
    and waits for, on the batcher that ``_loop`` runs while it runs."""

    __slots__ = ()

    _batcher: DynamicBatcher[RecordT, ResultT]
    _loop: Loop | None

    def _running(self) -> Loop:
        loop = self._loop
        if loop is None:
            raise RuntimeError(NOT_RUNNING)
        return loop

    def call(
        self,
        record: RecordT,
        *,
        estimated_cost: int | None = None,
        estimated_tokens: int | None = None,
        timeout: float | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> ResultT:
        """Submit one record, block until its result is ready and return it.

        Waits while the batcher's queue is full. The record's cost is priced as
        the batcher's own ``call`` prices it; ``estimated_tokens`` needs a
        :class:`TokenBatcher`.

        :param timeout: seconds to wait, from the call, for the result; if they
            pass, the record is withdrawn unless a worker has already taken it,
            and :exc:`TimeoutError` is raised. ``None`` waits as long as it takes.
        :param priority: see :class:`DynamicBatcher`: a higher one is dispatched first
        :param max_queue_delay_s: the record's queue deadline (see :class:`DynamicBatcher`)
        :return: the record's result
        :raises Exception: the exception the process function raised for the
            record's batch, or returned in the record's slot
        :raises TimeoutError: if ``timeout`` passed first
        :raises TypeError: for a cost that is not an integer
        :raises ValueError: for a negative cost or timeout
        :raises RuntimeError: if it is not running, when called from the loop's own
            thread, or from the process function while every other worker's call waits
            for this batcher too (it would wait for itself)
        """
        options = thread_options(self._batcher, estimated_cost, estimated_tokens, timeout, priority, max_queue_delay_s)
        loop = self._running()
        if loop.on_loop_thread():  # there, the refusal names the loop's thread
            return call_from_thread(loop, self._batcher, record, options, timeout)
        with SelfWait(self._batcher._counters):
            return call_from_thread(loop, self._batcher, record, options, timeout)

    def submit(
        self,
        record: RecordT,
        *,
        estimated_cost: int | None = None,
        estimated_tokens: int | None = None,
        timeout: float | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> Future[ResultT]:
        """Queue one record and return a :class:`concurrent.futures.Future` of its result.

        Blocks only while the batcher's queue is full (backpressure), as the
        async ``submit`` waits. Cancelling the future withdraws the record unless
        a worker has already taken it (the future is cancelled either way). In the
        batcher's own process function, with one worker, the future's ``result()``
        raises :exc:`RuntimeError` rather than wait for itself.

        :param timeout: seconds, from the call, until the future fails with
            :exc:`TimeoutError` and the record is withdrawn (unless a worker has
            taken it); if they pass while ``submit`` waits for room, ``submit``
            itself raises :exc:`TimeoutError`.
        :param priority: as for :meth:`call`
        :param max_queue_delay_s: as for :meth:`call`
        :raises TypeError: for a cost that is not an integer
        :raises ValueError: for a negative cost or timeout
        :raises RuntimeError: if it is not running, or when called from the loop's own thread
        """
        options = thread_options(self._batcher, estimated_cost, estimated_tokens, timeout, priority, max_queue_delay_s)
        loop = self._running()
        if timeout is None and (handed := submit_from_thread(loop, self._batcher, record, options)) is not None:
            return handed
        task, queued = loop.start(partial(call_on_loop, self._batcher, record, options, timeout))
        return relayed(loop, task, queued, self._batcher._counters)

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
    ) -> SyncResults[ResultT]: ...
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
    ) -> SyncResults[ResultT | Exception]: ...
    def map(
        self,
        records: Iterable[RecordT],
        *,
        ordered: bool = True,
        return_exceptions: bool = False,
        progress: bool | Progress | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> SyncResults[ResultT] | SyncResults[ResultT | Exception]:
        """Run every record of ``records`` through the batcher, one result per
        record, as :meth:`DynamicBatcher.map` does, and iterate over the results
        here: ``with batcher.map(texts) as results: for vector in results: ...``
        (see :class:`SyncResults`).

        The arguments mean what they mean there: results in input order unless
        ``ordered=False``; with ``return_exceptions=True`` a failed record's
        exception in its place, else the first failure raised and the rest
        withdrawn; ``priority`` and ``max_queue_delay_s`` for every record;
        ``progress=True`` for a tqdm bar, or ``progress(done, total)``
        after each result. ``records`` is read on the batcher's loop as the map
        needs more (a lazy input should not block), and progress is reported
        from there.

        :raises RuntimeError: if it is not running, or when called from the loop's own thread
        """
        check_options(priority, max_queue_delay_s)
        start_map = partial(
            self._batcher.map,
            records,
            ordered=ordered,
            return_exceptions=return_exceptions,
            progress=progress,
            priority=priority,
            max_queue_delay_s=max_queue_delay_s,
        )
        return SyncResults(self._running(), start_map, self._batcher._counters)

    def stream(
        self,
        record: RecordT,
        *,
        estimated_cost: int | None = None,
        estimated_tokens: int | None = None,
        priority: int = 0,
        max_queue_delay_s: float | None = None,
    ) -> SyncResults[Any]:
        """Submit one record to a streaming batcher and iterate over its items here,
        as they come: ``with batcher.stream(prompt) as tokens: for token in tokens: ...``
        (see :meth:`DynamicBatcher.stream`). Leaving the ``with`` early withdraws the
        record if no worker has taken it, and drops its later items.

        :raises TypeError: if the process function does not stream, and as :meth:`call`
        :raises ValueError, BatcherOverloadedError: as :meth:`call`
        :raises RuntimeError: if it is not running, or when called from the loop's own thread
        """
        options = thread_options(self._batcher, estimated_cost, estimated_tokens, None, priority, max_queue_delay_s)
        start = partial(self._batcher.stream, record, **options)
        return SyncResults(self._running(), start, self._batcher._counters, self._batcher._settings.stream_buffer)
