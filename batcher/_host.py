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

from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._exceptions import BatcherClosedError

__all__ = ("Host", "Status")

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
        """Run ``serve(run, task_status=...)`` in a task of its own here; return once it
        has started. If it ends first, leave the host and raise what it raised.

        If the caller is cancelled first, stop the run (its input ends and its scope is
        cancelled), wait until it has ended, leave the host and raise the run's own
        error, if it had one, else the cancellation. The wait is the caller's, not
        AnyIO's or trio's ``start()``: theirs waits for a task whose ``started()`` came
        too late, which never ends if a model's session runs shielded."""
        status = Status()
        self._group.start_soon(_hosted, serve, run, status)
        try:
            await status.settled.wait()
        except BaseException:
            run.end_input()
            run.scope.cancel()
            try:
                with anyio.CancelScope(shield=True):
                    await status.ended.wait()
                if (error := status.error or run.fatal) is not None:
                    raise error from None  # not lost to the cancellation (its scope stays cancelled)
                raise
            finally:
                await self.leave()  # (not in the shielded scope: the host was entered outside it)
        if not status.running:  # it ended first: its error, or what ended it (a process function's, say)
            await self.leave()
            raise status.error or run.fatal or BatcherClosedError(NOT_STARTED)

    async def leave(self) -> None:
        """A batcher started here has stopped: exit the host if it was the last one."""
        self._runs -= 1
        if self._runs == 0:
            if _CURRENT.get() is self:
                _CURRENT.set(None)
            await self._group.__aexit__(None, None, None)


async def _hosted(serve: Serve, run: Any, status: Status) -> None:
    """``serve(run)``. Before it has started, what it raises goes to the caller of
    ``start()`` (a cancellation ends this task: the caller, cancelled too or shielded,
    sees it end). After, what it raises other than a cancellation (a model's
    ``__aexit__`` failing, even with a ``KeyboardInterrupt``) ends that batcher alone,
    and its ``stop()`` raises it, instead of cancelling every batcher in the host and
    the task's own code."""
    cancelled = anyio.get_cancelled_exc_class()
    try:
        await serve(run, task_status=status)
    except cancelled:
        if status.running:
            raise  # the host is cancelled
    except BaseException as exc:
        if status.running:
            run.end_fatally(exc)
        else:
            status.error = exc
    finally:
        status.settled.set()
        status.ended.set()


class Status(TaskStatus[None]):
    """What ``start()`` waits for: ``settled`` when the run has started (``running``)
    or has ended first (with ``error``, if it raised one); ``ended`` when it has ended.
    Under ``serve()``, it tells ``started()`` on to the caller's ``task_status``."""

    __slots__ = ("_caller", "ended", "error", "running", "settled")

    def __init__(self, caller: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.settled, self.ended = anyio.Event(), anyio.Event()
        self.running = False
        self.error: BaseException | None = None
        self._caller = caller

    def started(self, value: None = None) -> None:
        self.running = True
        self.settled.set()
        self._caller.started()


NOT_STARTED = (
    "the batcher's loops were cancelled before they started: the task group that this "
    "task's first start() entered, where they run, is cancelled"
)
