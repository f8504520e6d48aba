"""Calls from other threads into a :class:`SyncBatcher`'s loop: ``call()`` and
``submit()`` queue their record from a plain callback on the loop and are handed its
end back (AnyIO 4.16's ``run_sync_soon``: no wait, no task); behind a full queue, with
a time limit on ``submit()``, or with an older AnyIO, a task on the loop
(:func:`call_on_loop`) waits for room instead."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
from anyio.abc import TaskStatus

from ._callbacks import raised_past_exception
from ._future import BatchFuture
from ._loop import Loop, exception_of, refused_as_not_running, result_of
from ._model_call import MODEL_CALL, SelfWait
from ._settings import check_options, check_seconds
from ._token import TokenBatcher

if TYPE_CHECKING:
    from ._dynamic import DynamicBatcher
    from ._stats import Counters

__all__ = (
    "call_from_thread",
    "call_on_loop",
    "relayed",
    "submit_from_thread",
    "thread_options",
    "withdraw_if_cancelled",
)

T = TypeVar("T")

NO_TOKENS = "estimated_tokens needs a TokenBatcher; use estimated_cost"


def thread_options(
    batcher: DynamicBatcher[Any, Any],
    estimated_cost: int | None,
    estimated_tokens: int | None,
    timeout: float | None,
    priority: int,
    max_queue_delay_s: float | None,
) -> dict[str, Any]:
    """Check, in the calling thread, what the loop cannot check for ``batcher``, and
    build the batcher's arguments for a record from a ``SyncBatcher`` method."""
    if timeout is not None and check_seconds("timeout", timeout) > threading.TIMEOUT_MAX:
        raise ValueError(f"timeout must be at most threading.TIMEOUT_MAX ({threading.TIMEOUT_MAX:g} s), got {timeout}")
    check_options(priority, max_queue_delay_s)
    options: dict[str, Any] = {
        "estimated_cost": estimated_cost,
        "priority": priority,
        "max_queue_delay_s": max_queue_delay_s,
    }
    if estimated_tokens is not None:
        if not isinstance(batcher, TokenBatcher):
            raise TypeError(NO_TOKENS)
        options["estimated_tokens"] = estimated_tokens
    return options


async def call_on_loop(
    batcher: DynamicBatcher[Any, T],
    record: Any,
    options: dict[str, Any],
    limit_s: float | None,
    *,
    task_status: TaskStatus[BatchFuture[T]] = anyio.TASK_STATUS_IGNORED,
) -> T:
    """The loop's side of ``SyncBatcher.call()`` and ``submit()`` when they take a
    task: behind a full queue, ``submit()`` with a time limit, AnyIO before 4.16. The
    caller's timeout is a deadline here, on the loop, where it withdraws the record
    before the caller hears of it."""
    with anyio.fail_after(limit_s):
        with refused_as_not_running():
            future = await batcher.submit(record, **options)
        task_status.started(future)
        # From the process function's thread this task has its context, but only relays the
        # result: a wait for it that could never end is refused in that thread (result()).
        MODEL_CALL.set(None)
        try:
            return await future
        except BaseException:
            future.cancel()  # withdraws the record unless it was dispatched
            raise


def withdraw_if_cancelled(loop: Loop, queued: BatchFuture[Any], future: Future[Any]) -> None:
    """Withdraw the record of a cancelled ``submit`` future on the loop before
    ``cancel()`` returns (the portal's own cancellation of the task comes later):
    from another thread through the portal, and at once when ``cancel()`` is called
    on the loop (in a callback of another future, say)."""
    if not future.cancelled():
        return
    if loop.on_loop_thread():
        queued.cancel()
        return
    with suppress(RuntimeError):  # the loop has closed: the record was processed
        loop.portal.call(queued.cancel)


#: What the loop hands back to ``call_from_thread`` when the queue is full.
_FULL: Any = object()


class _Handoff:
    """A call from a thread on its way through the loop: the outcome its thread waits
    for, where the record's end goes (``result``: the outcome itself for ``call()``;
    for ``submit()`` the caller's future, the outcome being the record's future once
    queued), and the record's future once queued."""

    __slots__ = ("abandoned", "future", "outcome", "result")

    def __init__(self, result: Future[Any] | None = None) -> None:
        self.outcome: Future[Any] = Future()
        self.result = self.outcome if result is None else result
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
    value = _through_loop(loop, batcher, record, options, _Handoff(), limit_s)
    if value is not _FULL:
        return cast(T, value)
    limit_s = None if limit_s is None else max(0.0, limit_s - (time.monotonic() - started))
    return _call_in_task(loop, batcher, record, options, limit_s)


def submit_from_thread(
    loop: Loop, batcher: DynamicBatcher[Any, T], record: Any, options: dict[str, Any]
) -> Future[T] | None:
    """``SyncBatcher.submit()`` without a time limit, as :func:`call_from_thread`
    calls: the record queued from a callback on the loop, its end handed to the
    returned future. ``None`` when the queue is full or AnyIO is older than 4.16: the
    caller then takes the task's way, which waits for room."""
    if not loop.calls_soon:
        return None
    result: Future[T] = _Result(batcher._counters)
    queued = _through_loop(loop, batcher, record, options, _Handoff(result), None)
    if queued is _FULL:
        return None
    result.add_done_callback(partial(withdraw_if_cancelled, loop, queued))
    return result


class _Result(Future[T]):
    """The future ``SyncBatcher.submit()`` returns: its ``result()`` and
    ``exception()`` refuse to wait, rather than wait for ever, in the process
    function of a batcher whose every other worker waits for it too (or that has one
    worker): no worker would be left to run the record (``ModelCall.begin_wait``)."""

    def __init__(self, counters: Counters) -> None:
        super().__init__()
        self._counters = counters
        self._telling = threading.Lock()
        self._told = False  # that it was cancelled, to concurrent.futures' waiters

    def result(self, timeout: float | None = None) -> T:
        if self.done():
            return super().result()
        with SelfWait(self._counters):
            return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self.done():
            return super().exception()
        with SelfWait(self._counters):
            return super().exception(timeout)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        with self._telling:  # once, whichever thread cancels (again)
            tell, self._told = not self._told, True
        if tell:
            self.set_running_or_notify_cancel()  # as an executor does: concurrent.futures.wait() learns of it
        return True


def relayed(loop: Loop, task: Future[T], queued: BatchFuture[Any], counters: Counters) -> Future[T]:
    """The future ``submit()`` returns when a task on the loop waits for the record's
    end: a :class:`_Result` that takes the task's outcome; cancelling it withdraws the
    record (and cancels the task)."""
    result: _Result[T] = _Result(counters)
    task.add_done_callback(partial(_take_outcome, result))
    result.add_done_callback(partial(withdraw_if_cancelled, loop, queued))
    result.add_done_callback(partial(_cancel_with, task))
    return result


def _take_outcome(result: _Result[T], task: Future[T]) -> None:
    # On the loop, as the task ends. The result's own callbacks run here: one raising past
    # Exception (concurrent.futures logs the others) ends the batcher, as on the way without a task.
    try:
        with suppress(InvalidStateError):  # cancelled meanwhile
            if task.cancelled():
                result.cancel()
            elif (error := exception_of(task)) is not None:
                result.set_exception(error)
            else:
                result.set_result(task.result())
    except BaseException as exc:
        raised_past_exception(result._counters, exc, "a done callback of a SyncBatcher future")


def _cancel_with(task: Future[Any], result: Future[Any]) -> None:
    if result.cancelled():
        task.cancel()


def _through_loop(
    loop: Loop,
    batcher: DynamicBatcher[Any, Any],
    record: Any,
    options: dict[str, Any],
    handoff: _Handoff,
    limit_s: float | None,
) -> Any:
    # Hand the record to the loop and wait for the handoff's outcome (or _FULL).
    outcome = handoff.outcome
    loop.handed.add(outcome)  # before the loop can end with it unanswered: close() answers it
    try:
        loop.soon(partial(_queue_now, batcher, record, options, handoff))
        try:
            return outcome.result(limit_s)
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


def _call_in_task(
    loop: Loop, batcher: DynamicBatcher[Any, T], record: Any, options: dict[str, Any], limit_s: float | None
) -> T:
    # A task on the loop submits (waiting for room) and awaits the record's future.
    future = loop.spawn(partial(call_on_loop, batcher, record, options, limit_s))
    try:
        return result_of(future)
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
        future.add_done_callback(partial(_hand_back, handoff.result))
        if handoff.result is not outcome:  # a submit: its thread waits only for this
            outcome.set_result(future)


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
