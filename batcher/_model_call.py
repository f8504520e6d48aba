"""A call of the process function, as the code it runs can tell (``MODEL_CALL``), and
the rule that keeps that code from waiting for its own batcher where no worker would
be left to run what it waits for.

A process function may call its own batcher (a request that needs sub-requests): the
worker running it is then busy until those results come. If every worker's call
waited so, none would return, and nothing could run the batches they wait for. Each
wait for a record of the caller's own batcher (``until_done``, ``SelfWait`` around
the other ways to wait) is counted per call; the wait that would leave no worker
free raises instead (with ``max_concurrent_batches=1``, every such wait).
"""

from __future__ import annotations

import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import anyio

from ._stats import Counters

__all__ = (
    "MODEL_CALL",
    "SELF_WAIT",
    "ModelCall",
    "SelfWait",
    "in_model",
    "model_wait",
    "own_call",
    "resizing",
    "self_wait",
)

SELF_WAIT = (
    "process_fn awaited a result of its own batcher, which would wait for itself: every worker "
    "(max_concurrent_batches) would then be in process_fn waiting for this batcher, and none left to run "
    "the batch it waits for; raise max_concurrent_batches, or send the inner calls to a second batcher"
)

#: Self-waits are counted from the event loop and from the process function's threads.
_WAITS = threading.Lock()


class ModelCall:
    """One call of the process function by a worker, while it runs (``with``): the
    function, and the tasks and threads it starts (they copy its context), find it in
    :data:`MODEL_CALL`. Once the call has returned, a task it left running (in a task
    group of its own) is no longer taken for the process function.

    While the call, or a task or thread of it, waits for a record of its own batcher
    (:meth:`begin_wait`), its worker cannot take the batch that record is in; if every
    worker's call waited so, none would ever return."""

    __slots__ = ("_reset", "counters", "running", "waits")

    def __init__(self, counters: Counters) -> None:
        self.counters = counters  # they identify the batcher to its futures
        self.running = False
        self.waits = 0  # its tasks and threads waiting for records of its own batcher

    def __enter__(self) -> None:
        self.running = True
        self._reset = MODEL_CALL.set(self)

    def __exit__(self, *exc_info: object) -> None:
        with _WAITS:
            self.running = False
            if self.waits:  # a task it left running still waits; the worker is free again
                self.counters.self_waiting -= 1
        MODEL_CALL.reset(self._reset)

    def begin_wait(self, *, refuse: bool = True) -> bool:
        """A task or thread of this call begins to wait for a record of its own
        batcher: count the call as waiting, unless every other worker's call waits
        already. Then the wait would never end: raise (``refuse=False``: return
        ``False``, and count nothing).

        :raises RuntimeError: as said
        """
        counters = self.counters
        with _WAITS:
            if not self.waits and self.running:
                if counters.self_waiting + 1 >= counters.workers:
                    if refuse:
                        raise RuntimeError(SELF_WAIT)
                    return False
                counters.self_waiting += 1
            self.waits += 1
        return True

    def end_wait(self) -> None:
        """A wait :meth:`begin_wait` counted has ended."""
        with _WAITS:
            self.waits -= 1
            if not self.waits and self.running:
                self.counters.self_waiting -= 1


#: In the process function, while a worker calls it.
MODEL_CALL: ContextVar[ModelCall | None] = ContextVar("batcher_model_call", default=None)


def own_call(counters: Counters) -> ModelCall | None:
    """The call of the process function the caller is in (its task, or a task or
    thread it started), if it is a call by the batcher whose counters these are and
    has not returned yet."""
    call = MODEL_CALL.get()
    return call if call is not None and call.running and call.counters is counters else None


def in_model(counters: Counters) -> bool:
    """Whether the caller is a process function of the batcher whose counters these are,
    in a call that has not returned yet."""
    return own_call(counters) is not None


@contextmanager
def resizing(counters: Counters, workers: int) -> Iterator[None]:
    """Around a change of the pool to ``workers`` (``configure()``), during which no
    wait begins or ends: refuse a pool that would leave no worker to run what calls of
    the process function already wait for (a wait under way cannot be refused).

    :raises ValueError: as said
    """
    with _WAITS:
        if (waiting := counters.self_waiting) and workers <= waiting:
            raise ValueError(
                f"max_concurrent_batches={workers} would leave no worker to run the records that {waiting} "
                f"calls of process_fn wait for (they await their own batcher): keep it above {waiting} until "
                "they return"
            )
        yield


class SelfWait:
    """Around a wait for a record of the caller's batcher (``with SelfWait(counters):``):
    in that batcher's process function, the wait counts as the call's
    (:meth:`ModelCall.begin_wait`), and is refused if every other worker's call waits
    already; elsewhere it does nothing.

    :raises RuntimeError: as said, on entry
    """

    __slots__ = ("_call",)

    def __init__(self, counters: Counters) -> None:
        call = self._call = own_call(counters)
        if call is not None:
            call.begin_wait()

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        if self._call is not None:
            self._call.end_wait()


def model_wait(counters: Counters, event: anyio.Event) -> Coroutine[Any, Any, Any]:
    """``until_done``'s wait for ``event`` in a process function: if it is the one of
    the batcher whose counters these are, counted or refused (:func:`self_wait`)."""
    call = own_call(counters)
    return event.wait() if call is None else self_wait(call, event)


async def self_wait(call: ModelCall, event: anyio.Event) -> None:
    """``until_done``'s wait in the process function: counted, or refused (:meth:`ModelCall.begin_wait`)."""
    call.begin_wait()
    try:
        await event.wait()
    finally:
        call.end_wait()
