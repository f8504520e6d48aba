"""The library's own cost per streamed item, side by side in one run, on a
generator model that does no work (so what is measured is the batcher's routing).

* ``stream()``: ``--streams`` consumers each iterate a record of ``ITEMS`` items
  (``stream_buffer`` large enough that no step waits);
* ``call()``: the same records through ``call()`` of the same streaming batcher,
  each collecting its items in a list (no per-item hand-over to a consumer task);
* ``call()``, not streaming: an ``async def`` model that returns each record's
  items as one list at once: what the items cost when nothing streams,

on asyncio and trio. Each figure is the median of ``--reps`` alternating
repetitions, in microseconds per item, all three with the same batcher start and
the same tasks spawned::

    python -m benchmarks.bench_stream
    python -m benchmarks.bench_stream --quick     # small sizes, 1 repetition
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio

from batcher import DynamicBatcher

ITEMS = 100


async def _generate(records: list[int]) -> AsyncIterator[list[int]]:
    for step in range(ITEMS):
        yield [step] * len(records)


async def _one_shot(records: list[int]) -> list[list[int]]:
    return [list(range(ITEMS)) for _ in records]


async def _streams(streams: int) -> float:
    batcher: DynamicBatcher[int, list[int]] = DynamicBatcher(_generate, max_batch_size=64, stream_buffer=ITEMS)
    received = 0

    async def consume(record: int) -> None:
        nonlocal received
        async with batcher.stream(record) as items:
            async for _ in items:
                received += 1

    started = time.perf_counter()
    async with batcher, anyio.create_task_group() as tg:
        for record in range(streams):
            tg.start_soon(consume, record)
    assert received == streams * ITEMS
    return (time.perf_counter() - started) / received * 1e6


async def _calls(streams: int, streaming: bool) -> float:
    model: Any = _generate if streaming else _one_shot
    batcher: DynamicBatcher[int, Any] = DynamicBatcher(model, max_batch_size=64)

    async def call(record: int) -> None:
        await batcher.call(record)

    started = time.perf_counter()
    async with batcher, anyio.create_task_group() as tg:
        for record in range(streams):
            tg.start_soon(call, record)
    return (time.perf_counter() - started) / (streams * ITEMS) * 1e6


PATHS: dict[str, Callable[[int], Any]] = {
    "stream(), µs per item": _streams,
    "call() of a streaming batcher, µs per item": lambda n: _calls(n, True),
    "call(), not streaming, µs per item": lambda n: _calls(n, False),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=2_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 streams, 1 repetition (CI)")
    args = parser.parse_args(argv)
    streams, reps = (200, 1) if args.quick else (args.streams, args.reps)
    print(f"{streams} records of {ITEMS} items each; median of {reps} alternating repetitions")
    for backend in ("asyncio", "trio"):
        figures: dict[str, list[float]] = {name: [] for name in PATHS}
        for _ in range(reps):
            for name, path in PATHS.items():
                figures[name].append(anyio.run(path, streams, backend=backend))
        for name, values in figures.items():
            print(f"  {backend:8} {name:45} {statistics.median(values):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
