"""``DynamicBatcher.map``: a whole corpus through the batcher, one result per
record, in input order or as results arrive, with backpressure and progress."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sized
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, cast

import anyio
from anyio.lowlevel import checkpoint

from ._exceptions import raisable
from ._future import BatchFuture
from ._model_call import SelfWait

if TYPE_CHECKING:
    from ._dynamic import DynamicBatcher

__all__ = ("MapResults", "Progress")

T = TypeVar("T")

#: ``(done, total)``: called after each result; ``total`` is ``None`` for an input
#: without a length.
Progress = Callable[[int, "int | None"], object]


class MapResults(Generic[T]):
    """The results of :meth:`DynamicBatcher.map` (each a result, or with
    ``return_exceptions`` a result or an exception): an async iterator, and an async
    context manager whose exit withdraws every record of the map that no worker
    has taken yet::

        async with batcher.map(records) as results:
            async for result in results:
                ...

    It is a plain object, not an async generator, so leaving the ``async with``
    (a ``break``, an exception, a cancellation) withdraws the rest at once, under
    asyncio and trio alike. Iterating without ``async with`` works too; then an
    early ``break`` leaves the records in flight to be processed.

    At most ``window`` records of the map are in flight at a time (submitted and
    not yet yielded), so an unbounded input takes bounded memory. An exception
    raised by the input itself comes after the results of the records read
    before it, as a generator's would. A record refused at submit (a
    :exc:`BatcherOverloadedError`, a bad cost, a stop) ends the map at once: its error
    is raised and the rest withdrawn. One task at a time iterates it (a second one
    waiting at once gets :exc:`RuntimeError`, as with an async generator).
    """

    def __init__(
        self,
        batcher: DynamicBatcher[Any, Any],
        records: Iterable[Any],
        *,
        ordered: bool,
        return_exceptions: bool,
        progress: bool | Progress | None,
        window: int,
        options: dict[str, Any] | None = None,
    ) -> None:
        batcher._run.check_thread()  # under another thread's loop: refused now, not at the first result
        self._batcher = batcher
        self._options = options or {}  # priority and max_queue_delay_s, for every record
        self._records: Iterator[Any] | None = _iterate(records)
        self._held: Any = _NONE  # a record taken from the input, not yet submitted
        self._total = len(records) if isinstance(records, Sized) else None
        self._ordered = ordered
        self._return_exceptions = return_exceptions
        self._window = window
        # Submitted and not yet yielded: in input order, and (unordered) those ended.
        self._in_flight: deque[BatchFuture[Any]] = deque()
        self._unyielded: dict[BatchFuture[Any], None] = {}
        self._arrived: deque[BatchFuture[Any]] = deque()
        self._wake = anyio.Event()
        self._done = 0
        self._report = _reporter(progress, self._total)
        self._iterating = False  # a task waits in __anext__
        self._input_error: Exception | None = None  # what reading the input raised

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop: take no more records and withdraw those no worker has taken yet."""
        self._records, self._held = None, _NONE
        for future in (*self._in_flight, *self._unyielded):
            future.cancel()
        self._in_flight.clear()
        self._unyielded.clear()
        self._arrived.clear()
        self._report(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._iterating:
            raise RuntimeError(ITERATED)
        self._iterating = True
        try:
            if self._pending() <= self._window // 2:
                # Refill half a window at once, not a record per result: a consumer that
                # awaits between results would otherwise feed the workers one at a time.
                await self._top_up()
            future = await (self._next_in_order() if self._ordered else self._next_to_arrive())
        finally:
            self._iterating = False
        if future is None:
            self.close()
            if (broken := self._input_error) is not None:
                self._input_error = None
                raise broken
            raise StopAsyncIteration
        self._done += 1
        self._report(self._done)
        error = future.exception()
        if error is None:
            return cast(T, future.result())
        if not self._return_exceptions:
            self.close()
            raise raisable(error)
        return cast(T, error)

    async def _top_up(self) -> None:
        """Submit records until ``window`` are in flight or the submission stream
        is full; wait for room only when none of the map's records is in flight.
        Every ``TURN`` records it lets the loop run (half a window of 100,000 records
        held it 0.3-0.8 s)."""
        submitted = 0
        while self._records is not None and self._pending() < self._window:
            submitted += 1
            if not submitted % TURN:
                await checkpoint()
            record = self._take()
            if record is _NONE:
                return
            try:
                try:
                    future = self._batcher.submit_nowait(record, **self._options)
                except anyio.WouldBlock:
                    if self._pending():
                        self._held = record  # for the next turn: results are on their way
                        return
                    future = await self._batcher.submit(record, **self._options)
            except Exception:  # refused (shed, a bad cost, a stop): raised at once, as a failure is
                self.close()
                raise
            except BaseException:
                self._held = record  # cancelled while it waited for room: it is not lost
                raise
            if self._ordered:
                self._in_flight.append(future)
            else:
                self._unyielded[future] = None
                future.add_done_callback(self._on_arrival)

    def _pending(self) -> int:
        return len(self._in_flight) + len(self._unyielded)

    def _take(self) -> Any:
        record, self._held = self._held, _NONE
        if record is _NONE and self._records is not None:
            try:
                record = next(self._records, _NONE)
            except Exception as exc:  # raised once the records read before it have their results
                self._records, self._input_error = None, exc
                return _NONE
            if record is _NONE:
                self._records = None
        return record

    async def _next_in_order(self) -> BatchFuture[Any] | None:
        if not self._in_flight:
            return None
        future = self._in_flight[0]
        if not future.done():
            try:
                await future
            except Exception:
                if not future.done():
                    raise  # not the record's error: the wait itself was refused
                # the record's error: read below, once it is taken off the queue
        return self._in_flight.popleft()

    async def _next_to_arrive(self) -> BatchFuture[Any] | None:
        while not self._arrived:
            if not self._unyielded:
                return None
            self._wake = anyio.Event()
            with SelfWait(self._batcher._counters):
                await self._wake.wait()
        future = self._arrived.popleft()
        del self._unyielded[future]
        return future

    def _on_arrival(self, future: BatchFuture[Any]) -> None:
        if future in self._unyielded:  # not withdrawn by close()
            self._arrived.append(future)
            self._wake.set()


#: Records a map submits between two turns of the event loop.
TURN = 1024

ITERATED = "these map results are already being iterated by another task; iterate them in one task"


class _Nothing:
    pass


_NONE: Any = _Nothing()


def _reporter(progress: bool | Progress | None, total: int | None) -> Callable[[int | None], object]:
    """A function that reports ``done`` results (``None``: the map ended)."""
    if not progress:
        return lambda done: None
    if callable(progress):
        report = progress
        return lambda done: None if done is None else report(done, total)
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise ImportError(
            "map(progress=True) needs tqdm: install batcher's 'progress' extra "
            "(pip install -e '.[progress]' in its checkout)"
        ) from None
    bar: list[Any] = []

    def show(done: int | None) -> None:
        if done is None:
            if bar:
                bar.pop().close()
            return
        if not bar:
            bar.append(tqdm(total=total, unit="record"))
        bar[0].update(1)

    return show


def _iterate(records: Iterable[Any]) -> Iterator[Any]:
    if isinstance(records, Iterable) or hasattr(type(records), "__getitem__"):
        return iter(records)  # (a TypeError its own __iter__ raises is its own)
    message = f"records must be an iterable, got {type(records).__name__}"
    if isinstance(records, AsyncIterable):
        message += " (an async iterable: map() reads its input with next(); submit its records as they come instead)"
    raise TypeError(message)
