"""Where ``start()`` runs a batcher's loops: a task group in the caller's task, shared
by every batcher that task starts.

``start()`` returns with the loops still running, so it enters a task group and
leaves it open; only the task that entered it can exit it, and only in the reverse
order of the cancel scopes it entered. With a task group per batcher, a task that
started two batchers had to stop them in the reverse order (stopping the first one
first raised AnyIO's "cancel scope" error or trio's "Nursery misnesting"), which is
not how a web framework's startup and shutdown hooks are usually written. So the
first ``start()`` in a task enters a :class:`Host` at its level of scopes, the others
join it, and the ``stop()`` that leaves it empty exits it: a task may stop the
batchers it started in any order, as long as it stops them at the level it started
them. Each batcher's loops run in a task of their own there, under their own cancel
scope (``Run.scope``), so stopping or aborting one leaves the others running.
``serve()`` runs in a task group its caller owns and needs none of this.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

import anyio
from anyio.abc import TaskStatus

__all__ = ("Host",)

#: The host of the batchers the current task started (a child task inherits it, and
#: makes its own: a host belongs to the task that entered it).
_CURRENT: ContextVar[Host | None] = ContextVar("batcher_host", default=None)

Serve = Callable[..., Coroutine[Any, Any, None]]


class Host:
    """A task group that runs the loops of every batcher one task started."""

    __slots__ = ("_group", "_runs", "_task")

    def __init__(self) -> None:
        self._group = anyio.create_task_group()
        self._task = anyio.get_current_task().id
        self._runs = 0  # batchers started here and not yet stopped

    @classmethod
    async def join(cls) -> Host:
        """The current task's host, entered here (at the caller's level of cancel
        scopes) if the task has none open; count one more batcher in it."""
        host = _CURRENT.get()
        if host is None or host._runs == 0 or host._task != anyio.get_current_task().id:
            host = cls()
            await host._group.__aenter__()
            _CURRENT.set(host)
        host._runs += 1
        return host

    async def start(self, serve: Serve, run: Any) -> None:
        """Run ``serve(run, task_status=...)`` in a task of its own here, once it has
        started. If it fails (or is cancelled) before then, leave the host and raise."""
        try:
            await self._group.start(_hosted, serve, run)
        except BaseException:
            await self.leave()
            raise

    async def leave(self) -> None:
        """A batcher started here has stopped: exit the host if it was the last one."""
        self._runs -= 1
        if self._runs == 0:
            if _CURRENT.get() is self:
                _CURRENT.set(None)
            await self._group.__aexit__(None, None, None)


async def _hosted(serve: Serve, run: Any, *, task_status: TaskStatus[None]) -> None:
    """``serve(run)``; what it raises once it has started, other than a cancellation
    (a model's ``__aexit__`` failing, even with a ``KeyboardInterrupt``), ends that
    batcher alone, and its ``stop()`` raises it, instead of cancelling every batcher
    in the host and the task's own code."""
    status = _Status(task_status, run)
    try:
        await serve(run, task_status=status)
    except BaseException as exc:
        if not status.done or isinstance(exc, anyio.get_cancelled_exc_class()):
            raise  # start() raises it; or the host, or this run, is cancelled
        run.end_fatally(exc)


class _Status(TaskStatus[None]):
    """``task_status``, noting whether ``started()`` took: AnyIO and trio ignore it
    (quietly) once the caller of ``start()`` is cancelled, and then what the task
    raises must reach that caller, not the host."""

    __slots__ = ("_run", "_status", "done")

    def __init__(self, status: TaskStatus[None], run: Any) -> None:
        self._status = status
        self._run = run
        self.done = False

    def started(self, value: None = None) -> None:
        # Ignored, the task stays in the caller's scopes, cancelled before and after;
        # taken, it leaves them for the host's (cancelled or not).
        before = anyio.current_effective_deadline()
        self._status.started(value)
        after = anyio.current_effective_deadline()
        self.done = self._run.scope.cancel_called or max(before, after) != -math.inf
