"""The done-callbacks of a future (:meth:`BatchFuture.add_done_callback`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._future import BatchFuture
    from ._stats import Counters

__all__ = ("Callbacks", "call_back", "raised_past_exception")

logger = logging.getLogger("batcher")


class Callbacks:
    """What a future's event slot holds once someone asked to be called back: it
    is set as the event is, and keeps the event of those awaiting the future
    (``until_done`` gives it one)."""

    __slots__ = ("event", "functions", "future")

    def __init__(self, future: BatchFuture[Any], event: anyio.Event | None) -> None:
        self.future = future
        self.event = event
        self.functions: list[Callable[[BatchFuture[Any]], object]] = []

    def set(self) -> None:
        if self.event is not None:
            self.event.set()
        functions, self.functions = self.functions, []  # each called once; none kept alive
        for function in functions:
            call_back(function, self.future)


def call_back(function: Callable[[BatchFuture[Any]], object], future: BatchFuture[Any]) -> None:
    try:
        function(future)
    except Exception:
        logger.exception("a done callback of a BatchFuture raised")
    except BaseException as exc:
        raised_past_exception(future._counters, exc, "a done callback of a BatchFuture")


def raised_past_exception(counters: Counters, exc: BaseException, where: str) -> None:
    """User code the batcher called (a done-callback, an observer) raised ``exc``, a
    ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``): it ends the batcher's run as the process function's would, without
    breaking off the loops' own work where it was raised (every future still ends
    once), and ``stop()`` raises it. With no run to end, or off its loop's thread (a
    callback added there to a future that had ended), it is raised where it was.
    """
    if counters.end_fatally is None or counters.thread != get_ident():  # no run, or not on its loop's thread
        raise exc
    logger.error("%s raised %r; closing", where, exc)
    counters.end_fatally(exc)
