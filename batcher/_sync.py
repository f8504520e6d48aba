"""SyncBatcher: a batcher for synchronous code. It runs a :class:`DynamicBatcher`
on an event loop in a background thread, and any number of threads call it."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from functools import partial
from types import TracebackType
from typing import Any, Generic, Literal, Self, overload

from ._dynamic import DynamicBatcher
from ._from_thread import call_from_thread, call_on_loop, relayed, submit_from_thread, thread_options
from ._loop import ALREADY_RUNNING, IN_LOOP, NOT_RUNNING, RUNNING_ELSEWHERE, Loop, check_backend, check_caller
from ._map import Progress
from ._model_call import SelfWait
from ._protocols import RecordT, ResultT
from ._settings import check_options
from ._stats import BatchStats
from ._sync_results import SyncResults

__all__ = ("SyncBatcher",)


class SyncBatcher(Generic[RecordT, ResultT]):
    """Runs a :class:`DynamicBatcher` or :class:`TokenBatcher` on an event loop in
    a background thread, for synchronous code. Any number of threads may call it
    at once::

        with SyncBatcher(TokenBatcher(embed, target_batch_tokens=8_192)) as batcher:
            vector = batcher.call(Prompt("hello"), timeout=2)

    Calls from many threads are batched together as calls from many tasks are.
    The process function runs as it would under ``async with batcher:`` (an
    ``async def`` on the background loop, a plain function in a worker thread).

    :param batcher: the batcher to run; it must not be running (``SyncBatcher``
        starts and stops it). Use it only through this object while it runs.
    :param backend: ``"asyncio"`` or ``"trio"``: the event loop the background
        thread runs.
    :param backend_options: keyword arguments for the backend's ``run`` (as
        :func:`anyio.run` takes them).
    :raises TypeError: if ``batcher`` is not a batcher, or ``backend_options`` not a mapping
    :raises ValueError: if ``backend`` is not ``"asyncio"`` or ``"trio"``
    :raises RuntimeError: if ``batcher`` is already running
    """

    def __init__(
        self,
        batcher: DynamicBatcher[RecordT, ResultT],
        *,
        backend: str = "asyncio",
        backend_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(batcher, DynamicBatcher):
            raise TypeError(f"batcher must be a DynamicBatcher or TokenBatcher, got {type(batcher).__name__}")
        check_backend(backend, backend_options)
        if batcher.is_running:
            raise RuntimeError(RUNNING_ELSEWHERE)
        self._batcher = batcher
        self._backend = backend
        self._backend_options = backend_options
        self._lock = threading.Lock()  # held while starting or stopping
        self._loop: Loop | None = None

    # ------------------------------------------------------------------ state

    @property
    def is_running(self) -> bool:
        """Whether the background loop runs the batcher (from :meth:`start` until :meth:`stop`)."""
        return self._loop is not None

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the batcher's counters (see :class:`BatchStats`), taken on its loop while it runs."""
        loop = self._loop
        if loop is None or loop.on_loop_thread():
            return self._batcher.stats
        try:
            return loop.run(self._snapshot)
        except RuntimeError:  # stopped meanwhile: the counters are still
            return self._batcher.stats

    async def _snapshot(self) -> BatchStats:
        return self._batcher.stats

    def __repr__(self) -> str:
        c = self._batcher._counters  # read without a round trip: a repr never waits for the loop
        fatal = None if self._loop is None else self._batcher._run.fatal
        if fatal is not None or self._loop is None:
            state = "stopped" if fatal is None else f"ended by {fatal!r}"
            return f"<SyncBatcher {state} backend={self._backend} submitted={c.submitted} completed={c.completed}>"
        return f"<SyncBatcher running backend={self._backend} queued={c.queued} in_flight={c.in_flight}>"

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the background loop and run the batcher on it; returns once the
        batcher accepts records.

        :raises RuntimeError: if it is already running, or the batcher was started elsewhere
        :raises Exception: what kept the batcher from starting (entering its process function)
        """
        if self._batcher._awaited_by_run():  # the loop's thread or the process function: a start or stop waits for it
            refusal = ALREADY_RUNNING if self._loop is None else self._loop.refusal(self._batcher)
            raise RuntimeError(refusal) from self._batcher._run.fatal
        with self._lock:
            if self._loop is not None:
                raise RuntimeError(self._loop.refusal(self._batcher)) from self._batcher._run.fatal
            if self._batcher.is_running:
                raise RuntimeError(RUNNING_ELSEWHERE)
            self._loop = Loop(self._batcher, self._backend, self._backend_options)

    def stop(self) -> None:
        """Stop accepting records, process every record already submitted, then
        stop the batcher and the loop. Does nothing if it is not running; a
        stopped ``SyncBatcher`` can be started again.

        From inside the process function it only begins the stop and returns at
        once; the thread that started it still calls :meth:`stop` (or ``with`` does).

        :raises RuntimeError: if called from the loop's own thread
        :raises BaseException: what a process function raised outside
            :exc:`Exception` (such as :exc:`KeyboardInterrupt`), which ended the batcher
        """
        loop = self._loop
        if self._batcher._awaited_by_run():  # the loop's thread or the process function: a start or stop waits for it
            if loop is None:  # on the loop's thread as it starts, or a call abandoned at a time limit after the stop
                if self._batcher.is_running:
                    raise RuntimeError(IN_LOOP)
                return
            loop.run(self._batcher.stop)  # from the process function: begins the stop, returns at once
            loop.closing = True  # (on the loop's thread, run() refuses: IN_LOOP)
            return
        with self._lock:  # another thread's stop() ends first
            loop = self._loop
            if loop is None:
                return
            if loop.on_loop_thread():
                raise RuntimeError(IN_LOOP)
            check_caller(self._backend)
            try:
                loop.close(self._batcher)  # a process function's stop() meanwhile finds the loop, and returns
            finally:
                self._loop = None

    def close(self) -> None:
        """The same as :meth:`stop`."""
        self.stop()

    def __del__(self) -> None:
        if getattr(self, "_loop", None) is not None:
            message = f"{self!r} was garbage-collected without being stopped; "
            message += "use 'with SyncBatcher(batcher):' or stop()"
            warnings.warn(message, ResourceWarning, source=self, stacklevel=1)

    def configure(self, **settings: Any) -> None:
        """Change settings as :meth:`DynamicBatcher.configure` does, from any thread
        but the loop's; before :meth:`start`, for the run to come. While another
        thread starts it, it waits for that; during a stop it applies at once.

        :raises TypeError: for a setting it cannot change, or of the wrong type
        :raises ValueError: for a value out of range
        """
        loop = self._loop
        if loop is not None and loop.configure(self._batcher, settings):
            return  # (while a stop waits for the batch the caller is part of, the loop is there: no wait)
        if loop is None and self._batcher._awaited_by_run():  # the loop's thread, as start() waits for it
            self._batcher.configure(**settings)
            return
        with self._lock:  # no start or stop under way meanwhile
            if self._loop is None or not self._loop.configure(self._batcher, settings):
                self._batcher.configure(**settings)

    def _running(self) -> Loop:
        loop = self._loop
        if loop is None:
            raise RuntimeError(NOT_RUNNING)
        return loop

    # ----------------------------------------------------------------- calls

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
