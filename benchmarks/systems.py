"""The systems under test and how the harness opens each of them.

* ``batcher/asyncio`` and ``batcher/trio``: this library, run by
  ``anyio.run(..., backend=...)``;
* ``flyte``: flyte's ``DynamicBatcher`` (see :mod:`benchmarks.flyte_ref`);
* ``batched`` and ``async-batcher``: two more asyncio batchers from PyPI
  (see :mod:`benchmarks.peers`);
* ``floor``: the hand-written minimum (see :mod:`benchmarks.floor`).

The harness drives all of them with the same anyio code (task groups,
events), so what differs between columns is the batcher alone. flyte, the
peers and the floor run on the asyncio backend, since they are asyncio-only.
This library, flyte and the floor share the shape ``submit(record,
estimated_cost=...)`` returning an awaitable future, and
``submit_batch(records, estimated_cost=...)`` returning a list of them, so
the workloads call them without adapters; the peers have adapters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import anyio

from benchmarks import flyte_ref, peers
from benchmarks.floor import FloorBatcher

ProcessFn = Callable[[list[int]], Awaitable[list[Any]]]
Sleep = Callable[[float], Awaitable[None]]

OURS_ASYNCIO = "batcher/asyncio"
OURS_TRIO = "batcher/trio"
FLYTE = "flyte"
FLOOR = "floor"
BATCHED = peers.BATCHED
ASYNC_BATCHER = peers.ASYNC_BATCHER


class Batcher(Protocol):
    """What the workloads use of a batcher."""

    async def submit(self, record: int, *, estimated_cost: int | None = None) -> Awaitable[Any]:
        """Queue one record; the result is an awaitable future."""

    async def submit_batch(
        self, records: Sequence[int], *, estimated_cost: Sequence[int] | None = None
    ) -> Sequence[Awaitable[Any]]:
        """Queue many records; one awaitable future each, in order."""


@dataclass(frozen=True)
class Options:
    """Settings a workload overrides; ``None`` keeps the system's default."""

    target_batch_cost: int | None = None
    max_queue_size: int | None = None

    def kwargs(self) -> dict[str, int]:
        return {name: value for name, value in asdict(self).items() if value is not None}


Opener = Callable[[ProcessFn, Options], AbstractAsyncContextManager[Batcher]]


@dataclass(frozen=True)
class System:
    """One column of the report."""

    name: str
    backend: str
    open: Opener
    sleep: Sleep
    """What the simulated model sleeps with: anyio's for ours, asyncio's otherwise."""
    skips: frozenset[str] = frozenset()
    """Workloads this system does not run; the table shows ``-``."""


def discover(wanted: Sequence[str]) -> tuple[list[System], list[str]]:
    """Return the wanted systems that can run here, and a message per decision."""
    messages: list[str] = []
    systems: list[System] = []
    if OURS_ASYNCIO in wanted or OURS_TRIO in wanted:
        systems += _ours(wanted, messages)
    if FLYTE in wanted:
        ref = flyte_ref.load()
        messages.append(ref.message)
        if ref.module is not None:
            systems.append(System(FLYTE, "asyncio", _opener(ref.module.DynamicBatcher), asyncio.sleep))
    for peer in peers.PEERS:
        if peer.name in wanted:
            opener, message = peer.load()
            messages.append(message)
            if opener is not None:
                systems.append(System(peer.name, "asyncio", opener, asyncio.sleep, peer.skips))
    if FLOOR in wanted:
        systems.append(System(FLOOR, "asyncio", _open_floor, asyncio.sleep))
    return systems, messages


def _ours(wanted: Sequence[str], messages: list[str]) -> list[System]:
    try:
        import batcher
    except ImportError as exc:
        messages.append(f"batcher cannot be imported ({exc}); skipping its columns")
        return []
    messages.append(f"batcher: {batcher.__file__}")
    open_ours = _opener(batcher.DynamicBatcher)
    systems = []
    for name, backend in ((OURS_ASYNCIO, "asyncio"), (OURS_TRIO, "trio")):
        if name in wanted:
            systems.append(System(name, backend, open_ours, anyio.sleep))
    return systems


def _opener(batcher_class: Callable[..., Any]) -> Opener:
    def open_batcher(process_fn: ProcessFn, options: Options) -> Any:
        return batcher_class(process_fn, **options.kwargs())

    return open_batcher


def _open_floor(process_fn: ProcessFn, options: Options) -> Any:
    # The floor has no queue bound, so max_queue_size does not apply.
    return FloorBatcher(process_fn, target_batch_cost=options.target_batch_cost)


ALL_SYSTEMS = (OURS_ASYNCIO, OURS_TRIO, FLYTE, BATCHED, ASYNC_BATCHER, FLOOR)
