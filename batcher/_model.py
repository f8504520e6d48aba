"""Calling the process function: an ``async def`` on the event loop, a plain
function on its worker's own long-lived thread; within the time limit; its
results checked."""

from __future__ import annotations

import contextvars
import inspect
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Set
from contextlib import AbstractAsyncContextManager, nullcontext
from queue import SimpleQueue
from typing import Any, cast

import anyio
from anyio import RunFinishedError  # (see _loop.py)
from anyio.lowlevel import EventLoopToken, current_token

from ._protocols import ProcessFn

__all__ = ("Model", "ModelThread", "is_async")


def is_async(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine: an ``async def`` function, or an
    object whose ``__call__`` is one."""
    call = type(fn).__call__ if not inspect.isroutine(fn) else None  # an object with async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _is_async_generator(fn: object) -> bool:
    call = type(fn).__call__ if not inspect.isroutine(fn) else None
    return inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(call)


def as_results(results: Any) -> list[Any]:
    """Return the results as a list, read in full (a generator or ``map`` is run here).

    :raises TypeError: for a result that cannot be matched to records in order:
        not iterable, a ``str``/``bytes``, or unordered (a mapping, a set)
    """
    if type(results) is list:
        return results
    if isinstance(results, (Mapping, Set)):
        kind = "mapping" if isinstance(results, Mapping) else "set"
        raise TypeError(
            f"process_fn must return a list, got {type(results).__name__} (a {kind} has no order to match records)"
        )
    if isinstance(results, (str, bytes)) or not isinstance(results, Iterable):
        raise TypeError(f"process_fn must return a list, got {type(results).__name__}")
    return list(results)


_NO_SESSION: AbstractAsyncContextManager[object] = nullcontext()


class _Pending:
    """An awaitable a plain process function returned, carried back from its thread
    unopened (trio refuses a coroutine as a thread's result)."""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Any) -> None:
        self.awaitable = awaitable


class Model:
    """The process function, called the way its kind needs, within the time limit.

    A plain function runs on the worker's own :class:`ModelThread`, where its
    results are also read in full; if it returns an awaitable (a lambda around
    an ``async def``, say), that is awaited on the event loop.
    """

    __slots__ = ("_fn", "_is_async", "streaming", "timeout_s")

    def __init__(self, process_fn: ProcessFn[Any, Any], timeout_s: float | None) -> None:
        self._fn = process_fn
        self._is_async = is_async(process_fn)
        #: Whether the process function is an async generator function (``_streaming.py``).
        self.streaming = _is_async_generator(process_fn)
        self.timeout_s = timeout_s

    async def __call__(self, records: list[Any], thread: ModelThread) -> list[Any]:
        """Return one result per record, in order.

        :raises TimeoutError: if the call outlasts the time limit
        :raises TypeError: if the results are not a list or an ordered iterable
        :raises ValueError: if there are not as many results as records
        """
        expected = len(records)  # counted now: the process function may change its list
        if self.timeout_s is None:
            results = await self._invoke(records, thread)
        else:
            with anyio.fail_after(self.timeout_s):
                results = await self._invoke(records, thread)
        if len(results) != expected:
            raise ValueError(f"process_fn returned {len(results)} results for a batch of {expected} records")
        return results

    async def _invoke(self, records: list[Any], thread: ModelThread) -> list[Any]:
        if self._is_async:
            return as_results(await self._fn(records))  # type: ignore[misc]
        results: list[Any] | _Pending = await thread.run(self._call_in_thread, records)
        if isinstance(results, _Pending):
            return as_results(await results.awaitable)
        return results

    def session(self) -> AbstractAsyncContextManager[object]:
        """What the run enters before its loops start and exits after they end: the
        process function itself if it is an async context manager (it starts and
        stops what it needs, such as model replicas), else nothing."""
        kind = type(self._fn)
        if hasattr(kind, "__aenter__") and hasattr(kind, "__aexit__"):
            return cast(AbstractAsyncContextManager[object], self._fn)
        return _NO_SESSION

    def generate(self, records: list[Any]) -> AsyncIterator[Any]:
        """Start a streaming process function on ``records``: its steps.

        :raises TypeError: if it did not return an async iterator
        """
        steps = self._fn(records)
        if not isinstance(steps, AsyncIterator):
            raise TypeError(f"a streaming process_fn must return an async iterator, got {type(steps).__name__}")
        return steps

    def _call_in_thread(self, records: list[Any]) -> list[Any] | _Pending:
        results = self._fn(records)
        if inspect.isawaitable(results):
            return _Pending(results)
        return as_results(results)


def _thread_context() -> contextvars.Context:
    """The caller's context for a call in a plain thread, in which no event loop runs:
    as in AnyIO's worker threads, sniffio (if loaded) says so, so that the process
    function can run one of its own (``anyio.run``, ``asyncio.run``)."""
    context = contextvars.copy_context()
    sniffio = sys.modules.get("sniffio")  # imported by AnyIO or trio if installed; not a dependency
    if sniffio is not None:
        context.run(sniffio.current_async_library_cvar.set, None)
    return context


#: How long a worker that ends waits for its idle thread to exit (it takes a moment).
END_S = 5.0


class ModelThread:
    """A worker's own daemon thread for a plain process function, started on first
    use and kept until the worker ends, so that every batch of the worker runs on
    the same thread.

    Why one thread: GPU frameworks keep state per thread (PyTorch's cuBLAS
    handles and their choices per shape, for one). Measured on an H200
    (``benchmarks/bench_gpu.py``), a batch shape that a thread had not run yet
    took 48-85 ms against 4-29 ms once that thread had run it, while a warmed
    thread ran as fast as the main thread. A pool hands each call to whichever
    thread is free (and AnyIO's ends a thread idle for 10 s), so every new thread
    pays the warm-up again.

    Calls run one at a time. A call that is cancelled (at its time limit, or as the
    batcher stops) is abandoned: its thread finishes it and exits, and the next
    call gets a new thread. Daemon threads let the program exit even while an
    abandoned call is stuck (in a C extension, say). As the worker ends, its idle
    thread exits before the batcher's stop returns (:meth:`end`).
    """

    __slots__ = ("_jobs", "_thread")

    def __init__(self) -> None:
        self._jobs: SimpleQueue[Callable[[], object] | None] | None = None
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[[list[Any]], Any], records: list[Any]) -> Any:
        """Run ``fn(records)`` in the thread, in a copy of the caller's context.

        It is not an AnyIO worker thread: ``anyio.from_thread`` calls in it need
        their ``token``."""
        done = anyio.Event()
        outcome: list[Any] = []
        token = current_token()
        context = _thread_context()

        def job() -> None:
            try:
                outcome.append((True, context.run(fn, records)))
            except BaseException as exc:  # handed to the event loop, which raises it
                outcome.append((False, exc))
            try:
                call_soon(token, done.set)
            except RunFinishedError:
                pass  # the event loop has ended: nobody waits for this result

        self._queue().put(job)
        try:
            await done.wait()
        except BaseException:
            self.close()  # abandoned: the thread exits once the call returns
            raise
        succeeded, value = outcome[0]
        if isinstance(value, StopIteration):  # raised in this coroutine, Python would blame it (PEP 479)
            raise RuntimeError("the process function raised StopIteration") from value
        if not succeeded:
            raise value
        return value

    def close(self) -> None:
        """Let the thread exit after the call it is running, if any."""
        jobs, self._jobs, self._thread = self._jobs, None, None
        if jobs is not None:
            jobs.put(None)

    def end(self) -> None:
        """As the worker ends, with no call running: let the thread exit, and wait the
        moment it takes (at most ``END_S``), so that no thread of the batcher outlives
        its stop."""
        thread = self._thread
        self.close()
        if thread is not None:
            thread.join(END_S)

    def _queue(self) -> SimpleQueue[Callable[[], object] | None]:
        if self._jobs is None:
            self._jobs = SimpleQueue()
            self._thread = threading.Thread(target=_serve, args=(self._jobs,), name="batcher process_fn", daemon=True)
            self._thread.start()
        return self._jobs


def call_soon(token: EventLoopToken, func: Callable[[], object]) -> None:
    """Have ``token``'s event loop call ``func`` soon, from another thread, without
    waiting for it (with AnyIO 4.16's ``run_sync_soon``; before it, by waiting).

    Waiting cost the model's thread a second wake-up, in the very turns the loop
    spends on the batch's results: a lone call through a plain function took about
    165 µs against 110 without the wait, on asyncio and trio alike
    (``python -m benchmarks.bench_hop``).

    :raises anyio.RunFinishedError: if the event loop has ended
    """
    backend = token.backend_class
    if hasattr(backend, "run_sync_soon"):
        backend.run_sync_soon(func, (), token.native_token)
    else:  # a backend without it (AnyIO before 4.16, below this package's floor)
        anyio.from_thread.run_sync(func, token=token)


def _serve(jobs: SimpleQueue[Callable[[], object] | None]) -> None:
    while (job := jobs.get()) is not None:
        job()
