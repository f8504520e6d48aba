"""SyncBatcher: a batcher for synchronous code. It runs a :class:`DynamicBatcher`
on an event loop in a background thread, and any number of threads call it."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from types import TracebackType
from typing import Any, Self

from ._dynamic import DynamicBatcher
from ._events import Observer
from ._loop import ALREADY_RUNNING, IN_LOOP, RUNNING_ELSEWHERE, Loop, check_backend, check_caller
from ._protocols import RecordT, ResultT
from ._run import Run
from ._settings import check_optional_seconds
from ._stats import BatchStats
from ._sync_calls import SyncCalls

__all__ = ("SyncBatcher",)


class SyncBatcher(SyncCalls[RecordT, ResultT]):
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
        self.stop()  # graceful even on an error: other threads' records are processed (a second Ctrl-C aborts)

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

    def stop(self, *, abort_after_s: float | None = None) -> None:
        """Stop accepting records, process every record already submitted, then
        stop the batcher and the loop. Does nothing if it is not running; a
        stopped ``SyncBatcher`` can be started again. With ``abort_after_s``, abort once
        that many seconds have passed, as :meth:`DynamicBatcher.stop` does.

        From inside the process function it only begins the stop and returns at
        once; the thread that started it still calls :meth:`stop` (or ``with`` does).

        Interrupted (a ``KeyboardInterrupt`` while it waits: a second Ctrl-C), it aborts
        instead: every record not yet processed fails with :exc:`BatcherClosedError`.

        :raises RuntimeError: if called from the loop's own thread
        :raises TypeError, ValueError: for an ``abort_after_s`` that is not ``None`` or a
            finite number >= 0; nothing changes
        :raises BaseException: what a process function raised outside
            :exc:`Exception` (such as :exc:`KeyboardInterrupt`), which ended the batcher
        """
        limit = check_optional_seconds("abort_after_s", abort_after_s)
        loop = self._loop
        if self._batcher._awaited_by_run():  # the loop's thread or the process function: a start or stop waits for it
            if loop is None:  # on the loop's thread as it starts, or a call abandoned at a time limit after the stop
                if self._batcher.is_running:
                    raise RuntimeError(IN_LOOP)
                return
            loop.run(partial(self._batcher.stop, abort_after_s=limit))  # from the process function: returns at once
            loop.closing = True  # (on the loop's thread, run() refuses: IN_LOOP)
            return
        if limit is not None and loop is not None:  # a stop under way in another thread is bounded too
            with suppress(RuntimeError):  # (the loop has just ended)
                loop.soon(partial(_abort_after, self._batcher, limit))
        with self._lock:  # another thread's stop() ends first
            loop = self._loop
            if loop is None:
                return
            if loop.on_loop_thread():
                raise RuntimeError(IN_LOOP)
            check_caller(self._backend)
            try:
                loop.close(self._batcher, limit)  # a process function's stop() meanwhile finds the loop, and returns
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
        self._apply(partial(self._batcher.configure, **settings))

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` with every event from now on, as
        :meth:`DynamicBatcher.add_observer` does, from any thread. It runs on the
        batcher's loop thread: quick, and not blocking.

        :raises TypeError: if ``observer`` is not callable, or is an ``async def``
        """
        self._apply(partial(self._batcher.add_observer, observer), on_loop_too=True)

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``, from any thread (an observer may remove itself).

        :raises ValueError: if it was not added
        """
        self._apply(partial(self._batcher.remove_observer, observer), on_loop_too=True)

    def _apply(self, change: Callable[[], object], on_loop_too: bool = False) -> None:
        # Change the batcher on its loop while it runs, else here; on the loop's own
        # thread (``on_loop_too``) at once, else refused there (IN_LOOP).
        loop = self._loop
        if loop is not None and loop.on_loop_thread():  # (an observer, say; never the lock a stop holds)
            if not on_loop_too:
                raise RuntimeError(IN_LOOP)
            change()
            return
        if loop is not None and loop.apply(change):
            return  # (while a stop waits for the batch the caller is part of, the loop is there: no wait)
        if loop is None and self._batcher._awaited_by_run():  # the loop's thread, as start() waits for it
            change()
            return
        with self._lock:  # no start or stop under way meanwhile
            if self._loop is None or not self._loop.apply(change):
                change()


def _abort_after(batcher: DynamicBatcher[Any, Any], seconds: float) -> None:
    # On the loop: the stop under way (another thread's) aborts by then at the latest.
    if isinstance(run := batcher._run, Run):
        run.abort_after(seconds)
