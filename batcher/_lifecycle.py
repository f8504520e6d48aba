"""A batcher's lifecycle: start, stop, serve, and ``configure()`` while it runs.

:class:`~batcher.DynamicBatcher` (``_dynamic.py``) adds its parameters and the ways
a record enters; everything here is about the batcher as a whole and its current
run (``_run.py``).
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Iterable
from threading import get_ident
from types import FrameType, TracebackType
from typing import Any, ClassVar, Self

import anyio
from anyio.abc import TaskStatus

from ._events import Observer, Observers
from ._exceptions import BatcherClosedError
from ._future import PARKED, BatchFuture
from ._host import Status
from ._model import Model
from ._model_call import in_model, resizing
from ._pricing import Pricing
from ._protocols import ProcessFn
from ._run import STOPPED, NotRunning, Run
from ._settings import Settings, check_optional_seconds
from ._stats import BatchStats, Counters, event_factory
from ._streaming import StreamFuture
from ._submission import ENDED

__all__ = ("LIVE_SETTINGS", "Lifecycle")

ORPHANED = (
    "batcher was started (start()) under an event loop that ended without stop(), and its loops "
    "did not finish; make a new batcher, and stop() what you start() (or use 'async with batcher:')"
)

STOPPED_FIRST = "the batcher was aborted (stop(abort_after_s=...)) before serve() had started it"

ELSEWHERE = (
    "batcher is already running, under another thread's event loop (or was left started there, with no "
    "stop(), when that loop ended); stop() it there, or make a new batcher"
)

OBSERVERS_ELSEWHERE = (
    "observers of a running batcher are added and removed on its event loop's thread; pass observers=[...] "
    "to the constructor, or call it there: anyio.from_thread.run_sync(batcher.add_observer, observer, token=...) "
    "(a SyncBatcher's own add_observer() works from any thread)"
)

#: The settings :meth:`Lifecycle.configure` may change while the batcher runs.
LIVE_SETTINGS = (
    "target_batch_cost",
    "max_batch_size",
    "min_batch_size",
    "batch_timeout_s",
    "max_concurrent_batches",
    "max_queue_delay_s",
    "max_queued_cost",
    "process_timeout_s",
    "priority_aging_s",
)


class Lifecycle:
    """Starting, stopping and reconfiguring a batcher (the base of :class:`DynamicBatcher`)."""

    #: Other names ``configure()`` takes for settings (``TokenBatcher``'s token words).
    _synonyms: ClassVar[dict[str, str]] = {}

    _model: Model
    _future_type: type[BatchFuture[Any]]
    _pricing: Pricing
    _settings: Settings
    _counters: Counters
    _observers: Observers
    _run: Run | NotRunning

    def _setup(
        self,
        process_fn: ProcessFn[Any, Any],
        pricing: Pricing,
        target: tuple[str, int],
        observers: Iterable[Observer],
        **settings: Any,
    ) -> None:
        """Build the parts of a batcher from its checked arguments; ``target`` is the
        target batch cost with its name (``("target_batch_tokens", 4096)``).

        :raises TypeError: for a setting of the wrong type, naming it
        :raises ValueError: for a setting out of range, naming it
        """
        checked = Settings.named(target, **settings)
        self._model = Model(process_fn, checked.process_timeout_s)
        if self._model.streaming and checked.cost_model == "measured":
            raise ValueError(
                "cost_model='measured' fits the time of each call of process_fn, and a streaming one's time "
                "is set by what it generates and how fast it is read; use 'padded' (with group_by_cost)"
            )
        #: What a record's future is: with a streaming process function, one with a sink for its items.
        self._future_type = StreamFuture if self._model.streaming else BatchFuture
        self._pricing = pricing
        self._settings = checked
        self._counters = Counters()
        self._observers = Observers(observers)
        self._watch()
        self._run: Run | NotRunning = STOPPED

    @property
    def is_running(self) -> bool:
        """Whether the batcher has started and not yet stopped (after a fatal
        exception, until :meth:`stop` re-raises it)."""
        return isinstance(self._run, Run)

    @property
    def stats(self) -> BatchStats:
        """A snapshot of the counters (see :class:`BatchStats`)."""
        return self._counters.snapshot()

    def __repr__(self) -> str:
        c, fatal = self._counters, self._run.fatal
        if not self.is_running or fatal is not None:
            state = "stopped" if not self.is_running else f"ended by {fatal!r}"
            return f"<{type(self).__name__} {state} submitted={c.submitted} completed={c.completed}>"
        return f"<{type(self).__name__} running queued={c.queued} in_flight={c.in_flight}>"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # On error the body's own exception propagates, not an exception group.
        await self._close(abort=exc is not None)

    async def start(self) -> None:
        """Start the loops; they run until :meth:`stop`.

        Call :meth:`start` and :meth:`stop` from the same task, at the same level
        of cancel scopes (as ``async with batcher:`` does for you). The batchers a
        task starts may stop in any order.

        :raises RuntimeError: if the batcher is already running
        """
        run = self._begin(started=True)
        try:
            await run.start(self._serve)
        except BaseException as exc:  # it could not start
            self._forget(run, raised=exc)
            raise

    async def stop(self, *, abort_after_s: float | None = None) -> None:
        """Stop accepting records, process every record already submitted, and
        stop the loops. Does nothing if the batcher is not running. From inside the
        process function it only begins the graceful stop and returns at once.

        :param abort_after_s: seconds to let the records already submitted finish; then
            abort: the batches running are cancelled and every record not yet
            processed fails with :exc:`BatcherClosedError` (``None``: no limit; from
            inside the process function too, which returns at once). Use it rather
            than a timeout scope around ``stop()``, which would enclose the task
            group ``start()`` entered (see ``_host.py``).

        :raises RuntimeError: if another task called :meth:`start` (only that task
            can stop it, or any task once it has ended; :meth:`serve` may be stopped
            from any task), or if called from a thread other than the batcher's
            event loop's
        :raises BaseException: the exception, other than cancellation, that a
            process function raised outside :exc:`Exception` (such as
            :exc:`KeyboardInterrupt`), which ended the batcher
        :raises TypeError, ValueError: for an ``abort_after_s`` that is not ``None`` or a
            finite number >= 0; nothing changes
        """
        limit = check_optional_seconds("abort_after_s", abort_after_s)
        await self._close(abort=False, abort_after_s=limit)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the loops inside a task group the caller owns, until :meth:`stop`::

            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                ...
                await batcher.stop()

        Cancelling its task fails every unfinished future with :exc:`BatcherClosedError`.
        """
        run, status = self._begin(started=False), Status(task_status)
        try:
            await self._serve(run, task_status=status)
        finally:
            if run.fatal is not None:  # even if the caller's task group was cancelled meanwhile: not lost
                raise run.fatal
        if not status.running and task_status is not anyio.TASK_STATUS_IGNORED:  # (tg.start() waits)
            raise BatcherClosedError(STOPPED_FIRST)

    def _begin(self, *, started: bool) -> Run:
        self._drop_orphan()
        run = self._run
        if isinstance(run, Run):
            elsewhere = run.thread != get_ident()
            already = ELSEWHERE if elsewhere else "batcher is already running; stop() it before starting it again"
            raise RuntimeError(already if run.fatal is None else ENDED.format(run.fatal)) from run.fatal
        counters, settings = self._counters, self._settings
        counters.new_event = event_factory()
        counters.parked = None  # an event of the last run's loop
        in_arrival_order = not settings.group_by_cost and settings.cost_model != "measured"
        counters.park_group = PARKED if in_arrival_order else 1  # see _future.park
        counters.priority_seen = False
        run = self._run = Run(self._settings, self._counters, started=started)
        return run

    def __del__(self) -> None:
        if isinstance(getattr(self, "_run", STOPPED), Run):
            message = f"{self!r} was garbage-collected without being stopped; use 'async with batcher:' or stop()"
            warnings.warn(message, ResourceWarning, source=self, stacklevel=1)

    def _in_own_worker(self) -> bool:  # called by this batcher's process function?
        return in_model(self._counters)

    def _awaited_by_run(self) -> bool:
        """Whether the caller is what a start or stop under way may wait for: the run's
        event loop thread (an observer, a callback) or its process function."""
        run = self._run
        return (isinstance(run, Run) and run.thread == get_ident()) or in_model(self._counters)

    def _forget(self, run: Run, raised: BaseException | None = None) -> None:
        # A run is over once its loops have ended and stop() has left start()'s task group;
        # what ended it is kept for stop() to raise, unless start() has ``raised`` it.
        if self._run is run and run.owner is None and run.stopped.is_set():
            self._run = STOPPED if run.fatal is None or run.fatal is raised else NotRunning(run.fatal)

    async def _serve(self, run: Run, *, task_status: TaskStatus[None]) -> None:
        try:
            await run.serve(self._model, task_status=task_status)
        finally:
            self._forget(run)

    def _drop_orphan(self) -> None:
        """Forget a run whose event loop ended without stopping it, if its loops
        finished as that loop ended (asyncio cancels them), with a warning.

        :raises RuntimeError: if they did not (trio ends such a run with an internal error)
        """
        run = self._run
        if not (isinstance(run, Run) and run.orphaned()):
            return
        if not run.stopped.is_set():
            raise RuntimeError(ORPHANED)
        self._run = STOPPED
        message = f"a {type(self).__name__} was left started (no stop()) when its event loop ended; use 'async with'"
        warnings.warn(message, ResourceWarning, stacklevel=_outside())

    async def _close(self, *, abort: bool, abort_after_s: float | None = None) -> None:
        self._drop_orphan()
        run = self._run
        if not isinstance(run, Run):
            self._run = STOPPED  # serve() (or SyncBatcher.stop()) raises what ended the last run, if anything
            return
        try:
            await run.close(abort=abort, in_worker=self._in_own_worker(), abort_after_s=abort_after_s)
        finally:
            self._forget(run)
            if run.stopped.is_set() and not isinstance(self._run, Run):
                self._run = STOPPED  # what ended it, if anything, is raised: by close() or serve()

    def add_observer(self, observer: Observer) -> None:
        """Call ``observer(event)`` with every event from now on (see :mod:`batcher.metrics`
        and ``BatchDispatched``, ``BatchEnded``, ``RecordsDropped``). It runs in the
        task that caused the event: it must be quick and must not block; an exception
        it raises is logged and ignored.

        :raises TypeError: if ``observer`` is not callable, or is an ``async def``
        :raises RuntimeError: if the batcher runs under another thread's event loop
        """
        self._check_observers_thread()
        self._observers.add(observer)
        self._watch()

    def remove_observer(self, observer: Observer) -> None:
        """Stop calling ``observer``.

        :raises ValueError: if it was not added
        :raises RuntimeError: if the batcher runs under another thread's event loop
        """
        self._check_observers_thread()
        self._observers.remove(observer)
        self._watch()

    def _check_observers_thread(self) -> None:
        if isinstance(self._run, Run) and self._run.thread != get_ident():
            raise RuntimeError(OBSERVERS_ELSEWHERE)

    def _watch(self) -> None:
        # With observers, every record is timed to dispatch; without, one at a time.
        counters, observers = self._counters, self._observers
        counters.observe = observers.frozen(counters) if observers else None
        counters.timed = None

    def configure(self, **settings: Any) -> None:
        """Change settings while the batcher runs (or before it starts): any of
        ``target_batch_cost``, ``max_batch_size``, ``min_batch_size``,
        ``batch_timeout_s``, ``max_concurrent_batches``, ``max_queue_delay_s``,
        ``max_queued_cost``, ``process_timeout_s`` and ``priority_aging_s``, checked as the constructor
        checks them. The next batch obeys them; a batch already closed keeps the
        budget it was closed under. ``max_concurrent_batches`` may grow (workers
        start at once) or shrink (busy workers finish their batch first). A new
        ``max_queue_delay_s`` applies to records submitted from then on.

        :raises TypeError: for a name that is not one of these, or a value of the
            wrong type; nothing changes
        :raises ValueError: for a value out of range, or a ``max_concurrent_batches``
            that would leave no worker free while calls of the process function wait
            for this batcher (see ``_model_call.py``); nothing changes
        """
        changes: dict[str, Any] = {}
        for name, value in settings.items():
            field = self._synonyms.get(name, name)
            if field not in LIVE_SETTINGS:
                raise TypeError(f"configure() cannot change {name!r}; it can change {', '.join(LIVE_SETTINGS)}")
            if any(self._synonyms.get(other) == name for other in settings):
                # also given by its token name, which takes precedence (as in the constructor): checked, not used
                if value is not None:  # (None: as not given)
                    dataclasses.replace(self._settings, **{field: value, "target_name": name})  # (the one synonym)
                continue
            if field == "target_batch_cost":
                changes["target_name"] = name
            changes[field] = value
        new = dataclasses.replace(self._settings, **changes)  # checked here, before anything changes
        self._run.check_thread()
        with resizing(self._counters, new.max_concurrent_batches):
            self._settings = new
            self._model.timeout_s = new.process_timeout_s
            if isinstance(self._run, Run):
                self._run.reconfigure(new)


def _outside() -> int:
    # The stacklevel of the first frame outside this package, for a warning its caller
    # gives: the user's line, whichever way in (start(), stop(), 'async with', serve()).
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("batcher."):
        frame, level = frame.f_back, level + 1
    return level
