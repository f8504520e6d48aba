"""The background event loop a :class:`SyncBatcher` runs its batcher on: an
anyio blocking portal in a thread of its own, the task serving the batcher, and
the ways into the loop from other threads (the calls that use them are in
``_from_thread.py``)."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio import RunFinishedError  # bound at import: AnyIO loads it lazily, which fails as Python shuts down
from anyio.abc import TaskStatus
from anyio.from_thread import start_blocking_portal
from anyio.lowlevel import EventLoopToken, current_token

from ._model import call_soon
from ._run import NOT_RUNNING as BATCHER_NOT_RUNNING
from ._submission import ENDED

if TYPE_CHECKING:
    from ._dynamic import DynamicBatcher

__all__ = (
    "ALREADY_RUNNING",
    "IN_LOOP",
    "IN_TRIO",
    "NOT_RUNNING",
    "RUNNING_ELSEWHERE",
    "Loop",
    "check_backend",
    "check_caller",
    "exception_of",
    "refused_as_not_running",
    "result_of",
)

T = TypeVar("T")

NOT_RUNNING = "SyncBatcher is not running; use 'with SyncBatcher(batcher):' or start()"
IN_LOOP = (
    "SyncBatcher was called from its own event loop's thread, where it would wait for itself; "
    "in async code on that loop, await the batcher's own methods (a done-callback of a SyncBatcher "
    "future runs there too: hand the call to another thread)"
)
ALREADY_RUNNING = "SyncBatcher is already running; stop() it before starting it again"
RUNNING_ELSEWHERE = (
    "batcher is already running (or was left started, with no stop(), when its event loop ended); "
    "give SyncBatcher a stopped batcher, it starts the batcher itself"
)
STOPPING = (
    "SyncBatcher is stopping; once stop() has returned, start() starts it again (if its process "
    "function began the stop, the thread that started it still calls stop())"
)
IN_TRIO = (
    "SyncBatcher(backend='trio') cannot be used from a thread that runs trio, which refuses to wait "
    "there for another trio run; in trio code, await the batcher's own methods (or use backend='asyncio')"
)


def check_backend(backend: object, options: object) -> None:
    """:raises ValueError: if ``backend`` is not ``"asyncio"`` or ``"trio"``
    :raises TypeError: if ``options`` is not ``None`` or a mapping of option names"""
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
    if options is not None and (not isinstance(options, Mapping) or not all(isinstance(key, str) for key in options)):
        raise TypeError(f"backend_options must be a mapping of option names to values or None, got {options!r}")


def check_caller(backend: str) -> None:
    """:raises RuntimeError: if ``backend`` is trio and the calling thread runs trio"""
    if backend != "trio":
        return
    try:
        caller = current_token().backend_class
    except RuntimeError:  # no event loop runs in this thread
        return
    if caller.__module__.rpartition(".")[2] == "_trio":
        raise RuntimeError(IN_TRIO)


class Loop:
    """One run of the background event loop: the portal into it, the task that
    serves the batcher, and the loop's thread."""

    __slots__ = (
        "_gate",
        "_inside",
        "backend",
        "calls_soon",
        "closing",
        "ending",
        "handed",
        "maps",
        "portal",
        "serving",
        "stack",
        "thread",
        "token",
    )

    def __init__(self, batcher: DynamicBatcher[Any, Any], backend: str, options: Mapping[str, Any] | None) -> None:
        check_caller(backend)
        self.backend = backend
        #: Set once close() has begun: a call that fails from then on failed because of it.
        self.closing = False
        #: Set as close() ends the loop itself: no call is let in any more, and those let in
        #: before are waited for (one racing the portal's shutdown would leave AnyIO's
        #: coroutine for it unawaited, on trio).
        self.ending = False
        self._gate = threading.Condition()
        self._inside = 0
        #: The cancel scopes of the maps running on the loop (touched only there).
        self.maps: set[anyio.CancelScope] = set()
        #: The outcomes that calls from threads wait for (``call_from_thread``), until they end.
        self.handed: set[Future[Any]] = set()
        self.stack = ExitStack()
        self.portal = self.stack.enter_context(start_blocking_portal(backend, dict(options or {})))
        try:
            self.thread: int
            self.token: EventLoopToken
            self.thread, self.token = self.portal.call(_identify)
            #: Whether a thread can have the loop call a function without waiting (AnyIO 4.16).
            self.calls_soon = hasattr(self.token.backend_class, "run_sync_soon")
            self.serving: Future[BaseException | None] = self.portal.start_task(serve, batcher)[0]
        except BaseException:
            self.stack.close()
            raise

    def refusal(self, batcher: DynamicBatcher[Any, Any]) -> str:
        """Why ``start()`` is refused while this loop serves ``batcher``."""
        fatal = batcher._run.fatal  # the exception from the process function that ended it, if any
        return STOPPING if self.closing else ALREADY_RUNNING if fatal is None else ENDED.format(fatal)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread

    def spawn(self, func: Callable[[], Awaitable[T]]) -> Future[T]:
        """Run ``func()`` in a new task on the loop; return its future (read it with
        :func:`result_of` or :func:`exception_of`)."""
        with self.entry():
            return self.portal.start_task_soon(_carrying, func)

    def start(self, func: Callable[..., Awaitable[T]]) -> tuple[Future[T], Any]:
        """Run ``func(task_status=...)`` in a new task on the loop; once it has
        called ``task_status.started(value)``, return its future (as :meth:`spawn`
        does) and ``value`` (or raise what it raised before)."""
        with self.entry():
            try:
                return self.portal.start_task(partial(_carrying, func))
            except _Carried as carried:
                error = carried.error
        raise error

    def run(self, func: Callable[[], Awaitable[T]]) -> T:
        """Await ``func()`` on the loop and return its result."""
        with self.entry():
            try:
                return self.portal.call(partial(_carrying, func))
            except _Carried as carried:
                error = carried.error
        raise error

    def apply(self, change: Callable[[], object]) -> bool:
        """Call ``change()`` (a change to the batcher: ``configure``, an observer) on the
        loop; ``False`` if a stop has just ended the loop."""
        try:
            with self.entry():
                self.portal.call(change)
        except RuntimeError as exc:
            if not (self.closing and str(exc) == NOT_RUNNING):
                raise
            return False
        return True

    def call(self, func: Callable[[], T]) -> T:
        """Call ``func()`` on the loop and return its result."""
        with self.entry():
            return self.portal.call(func)

    def soon(self, func: Callable[[], object]) -> None:
        """Have the loop call ``func()`` soon, without waiting for it (with AnyIO
        4.16 or later: see ``calls_soon``)."""
        with self.entry():
            try:
                call_soon(self.token, func)
            except RunFinishedError:
                raise RuntimeError(NOT_RUNNING) from None

    @contextmanager
    def entry(self) -> Iterator[None]:
        # The way into the loop from a thread. A call that raced stop() and lost
        # (the portal, or the batcher's input, closed under it) says so plainly.
        with self._gate:
            if self.ending:  # (first: as the loop's thread ends, a new thread may be given its id)
                raise RuntimeError(NOT_RUNNING)
            if self.on_loop_thread():
                raise RuntimeError(IN_LOOP)
            self._inside += 1
        try:
            yield
        except RuntimeError:
            if self.closing:
                raise RuntimeError(NOT_RUNNING) from None
            check_caller(self.backend)  # trio's own refusal, in words that name the fix
            raise
        finally:
            with self._gate:
                self._inside -= 1
                self._gate.notify_all()

    def close(self, batcher: DynamicBatcher[Any, Any], abort_after_s: float | None = None) -> None:
        """Stop the batcher gracefully, then the loop; re-raise what ended the batcher,
        if anything. Interrupted (a Ctrl-C while it drains), abort: cancel the task
        serving the batcher, which fails every record not yet processed with
        BatcherClosedError (a call in a worker thread is left to finish there).

        :raises RuntimeError: if it cannot be stopped from this thread (see :func:`check_caller`); nothing changes
        """
        check_caller(self.backend)
        self.closing = True
        try:
            try:
                self.portal.call(partial(batcher.stop, abort_after_s=abort_after_s))
                self.portal.call(self.end_maps)
            except BaseException:
                self._abort()
                raise
            fatal = None if self.serving.cancelled() else self.serving.result()
        finally:
            with self._gate:
                self.ending = True
                self._gate.wait_for(lambda: not self._inside)  # the calls let in end on the loop
            self.stack.close()
            self.thread = 0  # it has ended, and a new thread may be given its id
            for outcome in list(self.handed):  # handed to the loop as it ended: never queued
                with suppress(InvalidStateError):
                    outcome.set_exception(RuntimeError(NOT_RUNNING))
        if fatal is not None:
            raise fatal

    def _abort(self) -> None:
        # Cancel the task serving the batcher, and the maps: one whose consumer has
        # stopped reading waits to hand over its next results, and the portal for it.
        self.serving.cancel()
        with suppress(RuntimeError):  # (the loop has ended)
            call_soon(self.token, self.end_maps)

    def end_maps(self) -> None:
        # A map whose consumer stopped reading without closing it waits forever
        # to hand over its next results; its consumer, if any, learns it was stopped.
        for scope in self.maps:
            scope.cancel()


def _identify() -> tuple[int, EventLoopToken]:
    return threading.get_ident(), current_token()


async def serve(batcher: DynamicBatcher[Any, Any], *, task_status: TaskStatus[None]) -> BaseException | None:
    """Run ``batcher.serve`` and return what ended it, if anything but a stop.

    Such an exception (a ``BaseException`` from the process function) is handed to
    :meth:`SyncBatcher.stop` to raise: raised here, it would cancel every task of
    the portal, callers waiting on their futures included.
    """
    status = _Status(task_status)
    try:
        await batcher.serve(task_status=status)
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:
        if not status.started_:
            raise  # it could not start (its process function failed to enter): start() raises it
        return exc
    return None


class _Status:
    """A task status that notes whether the batcher has started."""

    __slots__ = ("_status", "started_")

    def __init__(self, status: TaskStatus[None]) -> None:
        self._status = status
        self.started_ = False

    def started(self, value: None = None) -> None:
        self.started_ = True
        self._status.started(value)


class _Carried(Exception):
    """A ``BaseException`` other than a cancellation (``KeyboardInterrupt``,
    ``SystemExit``) that the caller's own code raised in a task on the loop (a map's
    input or progress callback, a cost estimator), on its way to the thread that waits
    for the task. Raised there as itself, it would cancel every task of the portal,
    the batcher's loops among them, and be lost."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


async def _carrying(func: Callable[..., Awaitable[T]], **kwargs: Any) -> T:
    try:
        return await func(**kwargs)
    except (anyio.get_cancelled_exc_class(), Exception):
        raise
    except BaseException as exc:
        raise _Carried(exc) from None


def result_of(future: Future[T]) -> T:
    """The result of a task on the loop (:meth:`Loop.spawn`, :meth:`Loop.start`), or
    what it raised, as it raised it."""
    try:
        return future.result()
    except _Carried as carried:
        error = carried.error
    raise error


def exception_of(future: Future[Any]) -> BaseException | None:
    """What a task on the loop raised, as it raised it (``None`` if it returned)."""
    error = future.exception()
    return error.error if isinstance(error, _Carried) else error


@contextmanager
def refused_as_not_running() -> Iterator[None]:
    """On the loop: turn the batcher's own "not running" refusal (it stopped since
    the caller looked) into the one that names the fix for a ``SyncBatcher``."""
    try:
        yield
    except RuntimeError as exc:
        if str(exc) != BATCHER_NOT_RUNNING:
            raise
        fatal = exc.__cause__  # what ended its run: SyncBatcher.stop() raises it
        raise RuntimeError(NOT_RUNNING if fatal is None else ENDED.format(fatal)) from fatal
