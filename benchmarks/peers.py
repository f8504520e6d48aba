"""Two more asyncio batchers from PyPI, the peers, behind the harness's ``Batcher`` shape.

* ``batched`` 0.1.5, its asyncio processor ``batched.aio.AsyncBatchProcessor``;
* ``async-batcher`` 0.2.2, ``async_batcher.batcher.AsyncBatcher``.

Both are asyncio-only, so they run on the asyncio backend, as flyte does. Each
is imported only when its column is wanted; a missing one is skipped with a
message, as flyte is (see :func:`benchmarks.systems.discover`).

Both are called only as ``await peer(record)``: neither hands out a future
for a record before its result. So :meth:`submit` returns the peer's own
call, unstarted, and the record is queued when the workload awaits it, in the
workload's task, which is how the peers are meant to be called. A, C and D
await each submit at once, so this is exact for them. E queues records and
awaits them later; with the peers that would need one task per record, and
the bytes would be the harness's tasks, not the peers' queues, so E is
skipped for both. B's :meth:`submit_batch` makes one task for the whole call.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.systems import Opener, Options, ProcessFn

BATCHED = "batched"
ASYNC_BATCHER = "async-batcher"
MAX_BATCH_SIZE = 256
"""The peers' batch size: the default of this library and of flyte."""


class BatchedPeer:
    """``batched.aio.AsyncBatchProcessor(process_fn, batch_size=256)``, its ``timeout_ms=5`` default kept.

    What it does: a polling loop that sleeps ``timeout_ms`` whenever fewer
    than ``batch_size`` records are queued, then takes what is queued and
    runs it in batches of ``batch_size``, one batch at a time. A lone record
    waits out the sleep.

    Token budget: ``max_batch_length`` caps the summed ``len()`` of a batch's
    records. It is set to the workload's ``target_batch_cost`` (D), and each
    record then travels as a :class:`_Priced`, whose ``len()`` is its cost
    (the peer expects sized records such as token lists); the model gets the
    bare records back.

    Cannot: bound its queue (``max_queue_size`` is ignored); hand out a future
    before the result (see the module docstring); stop (it has no close; on
    exit the adapter cancels its loop task, as the processor's ``__del__``
    does); run on trio.
    """

    def __init__(self, module: ModuleType, process_fn: ProcessFn, options: Options) -> None:
        self._module = module
        self._process_fn = process_fn
        self._budget = options.target_batch_cost
        self._processor: Any = None

    async def __aenter__(self) -> BatchedPeer:
        if self._budget is None:
            self._processor = self._module.AsyncBatchProcessor(self._process_fn, batch_size=MAX_BATCH_SIZE)
        else:
            self._processor = self._module.AsyncBatchProcessor(
                self._process_priced, batch_size=MAX_BATCH_SIZE, max_batch_length=self._budget
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task: asyncio.Task[None] | None = self._processor._task
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def submit(self, record: int, *, estimated_cost: int | None = None) -> Awaitable[Any]:
        """The peer's call for ``record``, unstarted."""
        result: Awaitable[Any] = self._processor(self._item(record, estimated_cost))
        return result

    async def submit_batch(
        self, records: Sequence[int], *, estimated_cost: Sequence[int] | None = None
    ) -> list[Awaitable[Any]]:
        """One call of the peer with the whole list, as a task; an awaitable per record."""
        costs: Sequence[int | None] = [None] * len(records) if estimated_cost is None else estimated_cost
        items = [self._item(record, cost) for record, cost in zip(records, costs, strict=True)]
        return _each(asyncio.ensure_future(self._processor(items)), len(items))

    def _item(self, record: int, cost: int | None) -> int | _Priced:
        if self._budget is None:
            return record
        return _Priced(record, 1 if cost is None else cost)

    async def _process_priced(self, batch: list[_Priced]) -> list[Any]:
        return await self._process_fn([item.record for item in batch])


@dataclass(frozen=True, slots=True)
class _Priced:
    """A record whose ``len()`` is its cost, for batched's ``max_batch_length``."""

    record: int
    cost: int

    def __len__(self) -> int:
        return self.cost


class AsyncBatcherPeer:
    """A subclass of ``async_batcher``'s ``AsyncBatcher`` whose ``process_batch`` awaits ``process_fn``.

    Settings: ``max_batch_size=256`` (its default is no limit); its defaults
    ``max_queue_time=0.01`` and ``concurrency=1`` are kept.

    What it does: a loop that takes the first queued record, then keeps
    taking more, each with a ``max_queue_time`` timeout, until the batch is
    full or a wait times out. So a batch that does not fill ends with a
    10 ms wait, and a lone record waits 10 ms.

    Cannot: budget tokens (D's batches are bounded by the 256 records only);
    wait while its queue is full (``max_queue_size`` makes ``process`` raise
    instead, so it is not set); take a list in one call (``submit_batch``
    gathers one call per record, as a caller of the peer would); hand out a
    future before the result (see the module docstring); run on trio.
    ``stop()`` can take up to a second (its loop polls for it), outside the
    timed part.
    """

    def __init__(self, module: ModuleType, process_fn: ProcessFn, options: Options) -> None:
        del options  # no token budget; max_queue_size raises rather than waits
        self._peer = _async_batcher_class(module)(process_fn, max_batch_size=MAX_BATCH_SIZE)

    async def __aenter__(self) -> AsyncBatcherPeer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._peer.stop()

    async def submit(self, record: int, *, estimated_cost: int | None = None) -> Awaitable[Any]:
        """The peer's call for ``record``, unstarted."""
        result: Awaitable[Any] = self._peer.process(record)
        return result

    async def submit_batch(
        self, records: Sequence[int], *, estimated_cost: Sequence[int] | None = None
    ) -> list[Awaitable[Any]]:
        """``asyncio.gather`` of one call per record, as a task; an awaitable per record."""
        return _each(asyncio.gather(*(self._peer.process(record) for record in records)), len(records))


def _async_batcher_class(module: ModuleType) -> Callable[..., Any]:
    base: Any = module.AsyncBatcher

    class Peer(base):  # type: ignore[misc]
        def __init__(self, process_fn: ProcessFn, **settings: Any) -> None:
            super().__init__(**settings)
            self._process_fn = process_fn

        async def process_batch(self, batch: list[int]) -> list[Any]:
            return await self._process_fn(batch)

    return Peer


def _each(whole: asyncio.Future[list[Any]], count: int) -> list[Awaitable[Any]]:
    return [_nth(whole, index) for index in range(count)]


async def _nth(whole: asyncio.Future[list[Any]], index: int) -> Any:
    return (await whole)[index]


@dataclass(frozen=True)
class Peer:
    """How to load one peer and open it for a run."""

    name: str
    distribution: str
    version: str
    module: str
    adapter: Callable[[ModuleType, ProcessFn, Options], BatchedPeer | AsyncBatcherPeer]
    skips: frozenset[str]
    """Workloads the peer does not run (see the module docstring)."""

    def load(self) -> tuple[Opener | None, str]:
        """An opener for the harness (``None`` when not installed), and a line saying why or which."""
        hint = f"pip install {self.distribution}=={self.version}"
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            return None, f"{self.name} cannot be imported ({exc}); skipping its column ({hint})"
        version = importlib.metadata.version(self.distribution)
        skipped = f"; skips {', '.join(sorted(self.skips))}" if self.skips else ""
        return self._opener(module), f"{self.name} {version}: {module.__file__}{skipped}"

    def _opener(self, module: ModuleType) -> Opener:
        def open_peer(process_fn: ProcessFn, options: Options) -> BatchedPeer | AsyncBatcherPeer:
            return self.adapter(module, process_fn, options)

        return open_peer


PEERS = (
    Peer(BATCHED, "batched", "0.1.5", "batched.aio", BatchedPeer, frozenset({"E"})),
    Peer(ASYNC_BATCHER, "async-batcher", "0.2.2", "async_batcher.batcher", AsyncBatcherPeer, frozenset({"E"})),
)
