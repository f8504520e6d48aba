"""Streaming: a process function that is an async generator function yields, at
each step, one item per record of its batch, and each record's items go to that
record's own stream as they come.

The consumer side is :class:`RecordStream` (what ``stream()`` returns), over an
anyio memory object stream of ``stream_buffer`` items. The worker side is
:func:`run_streaming`: it runs the generator, routes each step's items, ends each
record as its stream ends, and closes the generator once no record's items are
wanted any more. A record submitted with ``call()``, ``submit()`` or ``map()``
collects its items in a list, which is its result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Set
from contextvars import ContextVar
from functools import partial
from threading import get_ident
from types import TracebackType
from typing import Any, Final, Generic, Self, TypeVar

import anyio
from anyio import RunFinishedError  # (see _loop.py)
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._exceptions import StreamLagError
from ._future import BatchFuture
from ._model import Model, call_soon
from ._model_call import SelfWait
from ._stats import Counters
from ._transitions import end, fail

__all__ = ("END", "RecordStream", "StreamFuture", "StreamingBatch", "current_batch", "open_stream", "run_streaming")

T = TypeVar("T")


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "batcher.END"


#: Yielded in a record's slot, ends that record's stream while the others go on;
#: the generator's later items for that record are ignored.
END: Final = _End()

Sink = list[Any] | MemoryObjectSendStream[Any]


FOREIGN_STREAM = (
    "a batcher's stream was read or closed from a thread other than its event loop's; "
    "read it on that loop (from other threads use SyncBatcher.stream)"
)
READ_TWICE = "this stream is already being read by another task; read each record's stream in one task"


class StreamFuture(BatchFuture[T]):
    """The future of a record of a streaming batcher: its items go to its sink, a
    list (its result) until :func:`open_stream` gives it a stream instead."""

    __slots__ = ("_sink", "_source")

    def __init__(self, record: Any, cost: int, counters: Counters, priority: int = 0) -> None:
        super().__init__(record, cost, counters, priority)
        self._sink: Sink = []
        #: The consumer's end of the stream, held here too: a consumer that the cyclic
        #: GC frees in another thread leaves it to the loop to close (RecordStream.__del__).
        self._source: MemoryObjectReceiveStream[Any] | None = None


class RecordStream(Generic[T]):
    """The items of one record, as the process function yields them::

        async with batcher.stream(prompt) as tokens:
            async for token in tokens:
                ...

    Iteration ends when the record's stream ends (:data:`END` in its slot, or the
    generator finished). It raises what failed the record: the generator's
    exception, an ``Exception`` yielded in the record's slot, ``QueueTimeoutError``,
    :exc:`StreamLagError`. Leaving the ``async with`` (a ``break``, an exception, a
    cancellation), or a cancellation of the iterating task, closes the stream: a
    record not dispatched yet is withdrawn, and later items are dropped.

    One task at a time reads it, on the batcher's event loop: a second task that
    would wait while one waits gets :exc:`RuntimeError`, and so does another thread
    (for :meth:`close` too) until the record has ended; then only buffered items are
    left, which any thread may read.
    """

    __slots__ = ("_future", "_reading", "_receive", "_thread")

    def __init__(self, future: StreamFuture[Any], receive: MemoryObjectReceiveStream[T]) -> None:
        self._future = future
        self._receive = receive
        self._thread = future._counters.thread  # the loop's
        self._reading = False  # a task waits in __anext__

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._reading:  # (else another task reads it: this one was refused)
            self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        receive = self._receive
        if self._reading or (get_ident() != self._thread and not self._future.done()):
            raise RuntimeError(READ_TWICE if self._reading else FOREIGN_STREAM)  # and changes nothing
        try:
            try:
                # Items already buffered (stream_buffer at most) are taken without a
                # turn of the event loop each; with none, it waits as receive() does.
                return receive.receive_nowait()
            except anyio.WouldBlock:
                if get_ident() != self._thread:  # its record has ended: no item comes now
                    raise anyio.EndOfStream from None
                return await self._wait()
        except anyio.EndOfStream:
            # Closed now: a failed record's error holds this frame, and so the stream,
            # which the cyclic GC may then find before it is closed.
            receive.close()
        except anyio.ClosedResourceError:  # closed by its consumer
            raise StopAsyncIteration from None
        except BaseException:
            self.close()  # a cancelled consumer has gone
            raise
        self._future.result()  # raises the record's exception, if it failed
        raise StopAsyncIteration

    async def _wait(self) -> T:
        self._reading = True
        try:
            with SelfWait(self._future._counters):
                return await self._receive.receive()
        finally:
            self._reading = False

    def close(self) -> None:
        """Stop the stream: withdraw the record if no worker has taken it, and drop
        its later items.

        :raises RuntimeError: if called from a thread other than the batcher's event loop's
        """
        if get_ident() != self._thread and not self._future.done():
            raise RuntimeError(FOREIGN_STREAM)
        self._receive.close()
        self._future.cancel()

    def __del__(self) -> None:
        # An abandoned iterator: its consumer has gone. Close it on the loop (the cyclic
        # GC may collect it in any thread): the worker waiting to hand it items wakes up,
        # and a record still queued is withdrawn.
        receive = getattr(self, "_receive", None)
        if receive is None:
            return
        counters = self._future._counters
        if get_ident() == counters.thread:
            _abandon(receive, self._future)
            return
        # Not here: the close wakes a worker waiting to send, whose event is the loop's.
        # The future holds the stream open (``_source``) until the loop closes it.
        try:
            if counters.token is not None:  # (set as the run that made the stream began)
                call_soon(counters.token, partial(_abandon, receive, self._future))
                return
        except (RunFinishedError, RuntimeError):
            pass  # the loop has ended: nobody waits to be woken
        receive.close()


def _abandon(receive: MemoryObjectReceiveStream[Any], future: BatchFuture[Any]) -> None:
    receive.close()
    future.cancel()


def open_stream(future: StreamFuture[Any], buffer: int) -> RecordStream[Any]:
    """Give ``future`` (queued just now) a stream of ``buffer`` items, closed when it ends."""
    send, receive = anyio.create_memory_object_stream[Any](buffer)
    future._sink, future._source = send, receive
    future.add_done_callback(_close_sink)
    return RecordStream(future, receive)


def _close_sink(future: BatchFuture[Any]) -> None:
    sink = getattr(future, "_sink", None)
    if isinstance(sink, MemoryObjectSendStream):
        sink.close()


class StreamingBatch:
    """The batch a streaming process function runs, as it may see it with
    :func:`current_batch`: ``len(batch)``, and ``batch.wanted(i)``, whether record
    ``i``'s items are still wanted (its stream has not ended and its consumer has
    not gone), so a model can stop generating for it."""

    __slots__ = ("_counters", "_futures", "_stall_s")

    def __init__(self, futures: list[StreamFuture[Any]], counters: Counters, stall_s: float) -> None:
        self._futures = futures
        self._counters = counters
        self._stall_s = stall_s

    def __len__(self) -> int:
        return len(self._futures)

    def wanted(self, index: int) -> bool:
        """Whether record ``index``'s items are still wanted."""
        future = self._futures[index]
        if future.done():
            return False
        sink = future._sink
        return isinstance(sink, list) or sink.statistics().open_receive_streams > 0

    def any_wanted(self) -> bool:
        """Whether any record's items are still wanted."""
        return any(self.wanted(index) for index in range(len(self._futures)))

    async def deliver(self, step: Any) -> None:
        """Route one step's items (any ordered iterable: a list, a tuple, an array)
        to their records' sinks, waiting for room in a full stream at most
        ``stall_s`` in all for the step."""
        futures = self._futures
        if type(step) is not list:
            if isinstance(step, (str, bytes, Mapping, Set)) or not isinstance(step, Iterable):
                shape = f"a {type(step).__name__}"
                raise ValueError(
                    f"process_fn yielded {shape} for a batch of {len(futures)} records; yield one per record"
                )
            step = list(step)
        if len(step) != len(futures):
            raise ValueError(
                f"process_fn yielded {len(step)} items for a batch of {len(futures)} records; yield one per record"
            )
        deadline = None
        for future, item in zip(futures, step, strict=True):
            if future.done():
                continue
            if item is END:
                self._end(future)
            elif isinstance(item, Exception):
                fail((future,), item, self._counters)
            elif isinstance(future._sink, list):
                future._sink.append(item)
            else:
                deadline = await self._send(future, future._sink, item, deadline)

    async def _send(
        self, future: StreamFuture[Any], sink: MemoryObjectSendStream[Any], item: Any, deadline: float | None
    ) -> float | None:
        try:
            sink.send_nowait(item)
            return deadline
        except anyio.WouldBlock:
            pass
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._end(future)  # its consumer has gone
            return deadline
        if deadline is None:
            deadline = anyio.current_time() + self._stall_s
        with anyio.move_on_after(deadline - anyio.current_time()):
            try:
                await sink.send(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._end(future)
            return deadline
        lag = StreamLagError(
            f"the record's consumer let its stream fill up (stream_buffer items) and took none for "
            f"{self._stall_s} s (stream_stall_s); the batch went on without it"
        )
        fail((future,), lag, self._counters)
        return deadline

    def end_all(self) -> None:
        """The generator has finished: every record still open ends."""
        for future in self._futures:
            self._end(future)

    def _end(self, future: StreamFuture[Any]) -> None:
        sink = future._sink
        end(future, sink if isinstance(sink, list) else None, self._counters)


#: In a streaming process function's task: the batch it runs.
CURRENT_BATCH: ContextVar[StreamingBatch | None] = ContextVar("batcher_current_batch", default=None)


def current_batch() -> StreamingBatch:
    """The batch the streaming process function calling this runs (see :class:`StreamingBatch`).

    :raises RuntimeError: if not called from a streaming process function
    """
    batch = CURRENT_BATCH.get()
    if batch is None:
        raise RuntimeError("current_batch() must be called from a streaming process function (an async generator)")
    return batch


async def run_streaming(model: Model, futures: list[StreamFuture[Any]], counters: Counters, stall_s: float) -> None:
    """Run a dispatched batch through a streaming process function, within the
    model's time limit, ending each record's future as its stream ends. An
    exception from the generator propagates (the caller fails the records still open)."""
    batch = StreamingBatch(futures, counters, stall_s)
    reset = CURRENT_BATCH.set(batch)
    try:
        with anyio.fail_after(model.timeout_s):
            steps = model.generate([future._record for future in futures])
            try:
                async for step in steps:
                    await batch.deliver(step)
                    if not batch.any_wanted():
                        break  # every record has ended or lost its consumer: stop generating
            finally:
                await _aclose(steps)
        batch.end_all()
    finally:
        CURRENT_BATCH.reset(reset)


async def _aclose(steps: AsyncIterator[Any]) -> None:
    aclose = getattr(steps, "aclose", None)
    if aclose is not None:
        await aclose()
