"""The background event loop a :class:`SyncBatcher` runs its batcher on: an
anyio blocking portal in a thread of its own, the task serving the batcher, and
the way into the loop from other threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import start_blocking_portal
from anyio.lowlevel import EventLoopToken, current_token

from ._future import BatchFuture
from ._model import call_soon
from ._run import NOT_RUNNING as BATCHER_NOT_RUNNING

if TYPE_CHECKING:
    from ._dynamic import DynamicBatcher

__all__ = (
    "IN_LOOP",
    "NOT_RUNNING",
    "Loop",
    "call_from_thread",
    "call_on_loop",
    "refused_as_not_running",
    "withdraw_if_cancelled",
)

T = TypeVar("T")

NOT_RUNNING = "SyncBatcher is not running; use 'with SyncBatcher(batcher):' or start()"
IN_LOOP = (
    "SyncBatcher was called from its own event loop's thread, where it would wait for itself; "
    "in async code on that loop, await the batcher's own methods"
)


class Loop:
    """One run of the background event loop: the portal into it, the task that
    serves the batcher, and the loop's thread."""

    __slots__ = ("calls_soon", "closing", "handed", "maps", "portal", "serving", "stack", "thread", "token")

    def __init__(self, batcher: DynamicBatcher[Any, Any], backend: str, options: Mapping[str, Any] | None) -> None:
        #: Set once close() has begun: a call that fails from then on failed because of it.
        self.closing = False
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

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread

    def spawn(self, func: Callable[[], Awaitable[T]]) -> Future[T]:
        """Run ``func()`` in a new task on the loop; return its future."""
        with self.entry():
            return self.portal.start_task_soon(func)

    def start(self, func: Callable[..., Awaitable[T]]) -> tuple[Future[T], Any]:
        """Run ``func(task_status=...)`` in a new task on the loop; once it has
        called ``task_status.started(value)``, return its future and ``value``
        (or raise what it raised before)."""
        with self.entry():
            return self.portal.start_task(func)

    def run(self, func: Callable[[], Awaitable[T]]) -> T:
        """Await ``func()`` on the loop and return its result."""
        with self.entry():
            return self.portal.call(func)

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
            except anyio.RunFinishedError:
                raise RuntimeError(NOT_RUNNING) from None

    @contextmanager
    def entry(self) -> Iterator[None]:
        # The way into the loop from a thread. A call that raced stop() and lost
        # (the portal, or the batcher's input, closed under it) says so plainly.
        if self.on_loop_thread():
            raise RuntimeError(IN_LOOP)
        try:
            yield
        except RuntimeError:
            if self.closing:
                raise RuntimeError(NOT_RUNNING) from None
            raise

    def close(self, batcher: DynamicBatcher[Any, Any]) -> None:
        """Stop the batcher gracefully, then the loop; re-raise what ended the batcher, if anything."""
        self.closing = True
        try:
            self.portal.call(batcher.stop)
            self.portal.call(self.end_maps)
            fatal = self.serving.result()
        finally:
            self.stack.close()
            for outcome in list(self.handed):  # handed to the loop as it ended: never queued
                with suppress(InvalidStateError):
                    outcome.set_exception(RuntimeError(NOT_RUNNING))
        if fatal is not None:
            raise fatal

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


@contextmanager
def refused_as_not_running() -> Iterator[None]:
    """On the loop: turn the batcher's own "not running" refusal (it stopped since
    the caller looked) into the one that names the fix for a ``SyncBatcher``."""
    try:
        yield
    except RuntimeError as exc:
        if str(exc) == BATCHER_NOT_RUNNING:
            raise RuntimeError(NOT_RUNNING) from None
        raise


async def call_on_loop(
    batcher: DynamicBatcher[Any, T],
    record: Any,
    options: dict[str, Any],
    limit_s: float | None,
    *,
    task_status: TaskStatus[BatchFuture[T]] = anyio.TASK_STATUS_IGNORED,
) -> T:
    """The loop's side of ``SyncBatcher.call()`` and ``submit()``. The caller's
    timeout is a deadline here, on the loop, where it withdraws the record before
    the caller hears of it."""
    with anyio.fail_after(limit_s):
        with refused_as_not_running():
            future = await batcher.submit(record, **options)
        task_status.started(future)
        try:
            return await future
        except BaseException:
            future.cancel()  # withdraws the record unless it was dispatched
            raise


def withdraw_if_cancelled(loop: Loop, queued: BatchFuture[Any], future: Future[Any]) -> None:
    """Withdraw the record of a cancelled ``submit`` future on the loop before
    ``cancel()`` returns (the portal's own cancellation of the task comes later)."""
    if future.cancelled() and not loop.on_loop_thread():
        with suppress(RuntimeError):  # the loop has closed: the record was processed
            loop.portal.call(queued.cancel)


#: What the loop hands back to ``call_from_thread`` when the queue is full.
_FULL: Any = object()


class _Handoff:
    """A ``SyncBatcher.call()`` on its way through the loop: the outcome its thread
    waits for, and the record's future once queued."""

    __slots__ = ("abandoned", "future", "outcome")

    def __init__(self) -> None:
        self.outcome: Future[Any] = Future()
        self.future: BatchFuture[Any] | None = None
        self.abandoned = False


def call_from_thread(
    loop: Loop, batcher: DynamicBatcher[Any, T], record: Any, options: dict[str, Any], limit_s: float | None
) -> T:
    """``SyncBatcher.call()``: queue the record from a callback on the loop, and wait
    here for the end of its future, which the loop hands back without a task; only
    when the queue is full does a task (:func:`call_on_loop`) wait for room.

    A task per call on the portal cost 88-93 µs a record from 16 threads on asyncio and
    141-170 on trio; without it, 44-48 and 71-72 (``python -m benchmarks.bench_sync``).
    A call that times out, or is interrupted, withdraws its record (unless a worker
    has taken it); a timed-out one before it raises. With AnyIO before 4.16, whose
    calls from a thread wait for the loop (and would wait forever for a loop that
    ends first), every call takes the task's way.
    """
    if not loop.calls_soon:
        return _call_in_task(loop, batcher, record, options, limit_s)
    started = time.monotonic()
    handoff = _Handoff()
    outcome = handoff.outcome
    loop.handed.add(outcome)  # before the loop can end with it unanswered: close() answers it
    try:
        loop.soon(partial(_queue_now, batcher, record, options, handoff))
        try:
            value = outcome.result(limit_s)
        except BaseException as exc:
            if not outcome.done():  # timed out or interrupted while waiting
                withdraw = partial(_abandon, handoff)
                with suppress(RuntimeError):  # the loop has ended: nothing is left to withdraw
                    if isinstance(exc, TimeoutError):
                        loop.call(withdraw)  # withdrawn before the caller hears of it
                    else:
                        loop.soon(withdraw)  # an interrupted caller does not wait for the loop
            raise
    finally:
        loop.handed.discard(outcome)
    if value is not _FULL:
        return cast(T, value)
    limit_s = None if limit_s is None else max(0.0, limit_s - (time.monotonic() - started))
    return _call_in_task(loop, batcher, record, options, limit_s)


def _call_in_task(
    loop: Loop, batcher: DynamicBatcher[Any, T], record: Any, options: dict[str, Any], limit_s: float | None
) -> T:
    # A task on the loop submits (waiting for room) and awaits the record's future.
    future = loop.spawn(partial(call_on_loop, batcher, record, options, limit_s))
    try:
        return future.result()
    except BaseException:
        future.cancel()  # the caller was interrupted: withdraw the record if it can be
        raise


def _queue_now(batcher: DynamicBatcher[Any, Any], record: Any, options: dict[str, Any], handoff: _Handoff) -> None:
    # On the loop: queue the record without waiting, and hand its future's end back.
    outcome = handoff.outcome
    if handoff.abandoned:
        return
    try:
        with refused_as_not_running():
            future = batcher.submit_nowait(record, **options)
    except anyio.WouldBlock:
        outcome.set_result(_FULL)
    except BaseException as exc:  # a bad cost, an overload, a stopped batcher: the caller's
        outcome.set_exception(exc)
    else:
        handoff.future = future
        future.add_done_callback(partial(_hand_back, outcome))


def _hand_back(outcome: Future[Any], future: BatchFuture[Any]) -> None:
    # On the loop, as the record's future ends: its result or exception to the thread.
    try:
        value = future.result()
    except BaseException as exc:
        with suppress(InvalidStateError):
            outcome.set_exception(exc)
    else:
        with suppress(InvalidStateError):
            outcome.set_result(value)


def _abandon(handoff: _Handoff) -> None:
    # On the loop: the caller stopped waiting; withdraw its record if it is queued.
    handoff.abandoned = True
    if handoff.future is not None:
        handoff.future.cancel()
