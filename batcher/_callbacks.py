"""The done-callbacks of a future (:meth:`BatchFuture.add_done_callback`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ._future import BatchFuture

__all__ = ("Callbacks", "call_back")

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
        raised: BaseException | None = None
        for function in self.functions:
            try:
                call_back(function, self.future)
            except BaseException as exc:  # past Exception (KeyboardInterrupt): the other callbacks run first
                raised = raised or exc
        if raised is not None:
            raise raised


def call_back(function: Callable[[BatchFuture[Any]], object], future: BatchFuture[Any]) -> None:
    try:
        function(future)
    except Exception:
        logger.exception("a done callback of a BatchFuture raised")
