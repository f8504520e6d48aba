"""``SyncBatcher.map`` and ``SyncBatcher.stream``: the results of
:meth:`DynamicBatcher.map`, or the items of :meth:`DynamicBatcher.stream`, read by a
task on the background loop and handed to the calling thread in chunks."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import wait
from functools import partial
from types import TracebackType
from typing import Generic, Self, TypeVar

import anyio
from anyio import RunFinishedError  # (see _loop.py)
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._loop import IN_LOOP, NOT_RUNNING, Loop, check_caller, refused_as_not_running, result_of
from ._map import MapResults
from ._model import call_soon
from ._model_call import MODEL_CALL, SelfWait
from ._stats import Counters
from ._streaming import RecordStream

__all__ = ("SyncResults",)

T = TypeVar("T")

#: The most results one round trip to the loop brings back, and how many finished
#: results may wait for the consumer (on top of the map's own window, whose records
#: are in flight): a batch's worth at the default ``max_batch_size``.
CHUNK = 256


class SyncResults(Generic[T]):
    """The results of :meth:`SyncBatcher.map`, or the items of :meth:`SyncBatcher.stream`:
    an iterator, and a context manager whose exit withdraws every record of the map
    (or the streamed record) that no worker has taken yet, and drops the rest::

        with batcher.map(records) as results:
            for result in results:
                ...

    A task on the batcher's loop reads the async map (or stream) and hands what it
    yields over in chunks: one round trip to the loop brings back everything that is
    ready, up to 256. Leaving the ``with`` early (a ``break``, an exception), or
    :meth:`close`, withdraws the rest before it returns. Iterating without
    ``with`` works too: dropped after an early ``break``, the results object is
    closed as a generator would be; one kept without being closed leaves the map
    waiting, with its records in flight, until the ``SyncBatcher`` stops.

    If the ``SyncBatcher`` stops during the map, the results already handed over
    are yielded, then :exc:`RuntimeError` is raised.

    Threads may share the results: each result goes to one of them. :meth:`close`
    from another thread ends the iteration of a thread waiting for the next result.
    """

    def __init__(
        self,
        loop: Loop,
        start_map: Callable[[], MapResults[T] | RecordStream[T]],
        counters: Counters,
        buffer: int = CHUNK,
    ) -> None:
        self._loop = loop
        self._counters = counters
        self._ready: deque[T] = deque()
        send, self._receive = anyio.create_memory_object_stream[T](buffer)  # finished, not yet fetched
        try:
            self._pump, self._scope = loop.start(partial(pump, start_map, send, loop.maps))
        except BaseException:
            send.close()  # (the pump, if it ran, closed it already)
            self._receive.close()
            raise
        self._open = True
        self._next_lock = threading.Lock()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        with self._next_lock:  # threads that share the results take one result each
            if not self._ready:
                check_caller(self._loop.backend)  # before _fetch(), which closes the map on an error
                with self._self_wait():
                    self._fetch()
            if not self._open:  # closed by another thread meanwhile: what was not read is dropped
                raise StopIteration
            try:
                return self._ready.popleft()
            except IndexError:  # (closed just now)
                raise StopIteration from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the map and withdraw every record of it that no worker has taken
        yet; returns once they are withdrawn. Results not yet read are dropped.

        :raises RuntimeError: when called from the loop's own thread
        """
        if not self._open:
            return
        if self._loop.on_loop_thread():
            raise RuntimeError(IN_LOOP)
        self._open = False
        self._ready.clear()
        try:
            self._loop.run(partial(shut, self._scope, self._receive))
        except RuntimeError:  # the loop has stopped, and the map ended with it: nothing on it uses the stream
            self._receive.close()
        wait((self._pump,))  # what the map raised after the consumer left is dropped

    def __del__(self) -> None:
        # Dropped without close(), as a for loop left early drops it: close it, as a
        # generator is closed, so that the rest is withdrawn.
        if not getattr(self, "_open", False):
            return
        if not (self._loop.closing or self._loop.on_loop_thread()):
            self.close()
            return
        # Stopping, or collected on the loop (perhaps outside a task): not waited for, and
        # done by the loop (a sender it wakes must be woken there), or here once it has ended.
        self._open = False
        try:
            call_soon(self._loop.token, partial(stop_now, self._scope, self._receive))
        except (RunFinishedError, RuntimeError):
            self._receive.close()

    def _self_wait(self) -> SelfWait:
        # From the batcher's own process function, a wait that would leave no worker
        # free to run the records waited for: the map cannot go on.
        try:
            return SelfWait(self._counters)
        except RuntimeError:
            self.close()
            raise

    def _fetch(self) -> None:
        # Wait for the next chunk of results; at the end, raise what ended the map.
        if not self._open:
            raise StopIteration
        try:
            chunk = self._loop.run(partial(take, self._receive))
        except anyio.ClosedResourceError:
            if self._open:
                raise
            raise StopIteration from None  # closed by another thread while this one waited
        except RuntimeError as exc:
            if str(exc) != NOT_RUNNING:
                self.close()
                raise
            wait((self._pump,))  # a stop ends the loop: once the pump has too, what it sent still counts
            chunk = self._handed_over()
        except BaseException:
            self.close()
            raise
        if chunk:
            self._ready.extend(chunk)
            return
        self._open = False
        if not result_of(self._pump):  # raises the map's own exception
            raise RuntimeError(NOT_RUNNING)
        raise StopIteration

    def _handed_over(self) -> list[T]:
        # Once the loop has ended (its tasks, the pump among them, are done): what is left in the stream.
        chunk = ready(self._receive, [])
        if not chunk:
            self._receive.close()
        return chunk


# ------------------------------------------------------------ on the loop


async def pump(
    start_map: Callable[[], MapResults[T] | RecordStream[T]],
    send: MemoryObjectSendStream[T],
    maps: set[anyio.CancelScope],
    *,
    task_status: TaskStatus[anyio.CancelScope],
) -> bool:
    """Run the map (or stream) and send its results to the consumer, until its end, or until
    its scope is cancelled (by the consumer's ``close()``, or by the stop of the
    ``SyncBatcher``), which withdraws the rest. Return whether it ran to its end."""
    MODEL_CALL.set(None)  # its waits are not the process function's, which waits only as it reads
    with send, anyio.CancelScope() as scope, refused_as_not_running():
        results = start_map()
        maps.add(scope)
        try:
            task_status.started(scope)
            async with results:
                async for result in results:
                    try:
                        # No checkpoint while there is room: a checkpoint per result would
                        # let the workers take the map's records one or two at a time.
                        send.send_nowait(result)
                    except anyio.WouldBlock:
                        await send.send(result)
        finally:
            maps.discard(scope)
    return not scope.cancelled_caught


async def take(receive: MemoryObjectReceiveStream[T]) -> list[T]:
    """Wait for the next result, then take every one that is ready, up to
    :data:`CHUNK`; at the end of the stream, close it and return ``[]``."""
    try:
        chunk = [await receive.receive()]
    except anyio.EndOfStream:
        receive.close()
        return []
    return ready(receive, chunk)


def ready(receive: MemoryObjectReceiveStream[T], chunk: list[T]) -> list[T]:
    """``chunk`` with every result the stream holds now added, up to :data:`CHUNK`."""
    while len(chunk) < CHUNK:
        try:
            chunk.append(receive.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            break
    return chunk


async def shut(scope: anyio.CancelScope, receive: MemoryObjectReceiveStream[T]) -> None:
    stop_now(scope, receive)


def stop_now(scope: anyio.CancelScope, receive: MemoryObjectReceiveStream[T]) -> None:
    """Cancel the pump (which withdraws the rest as it ends) and close the consumer's end."""
    scope.cancel()
    receive.close()
