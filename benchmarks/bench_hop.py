"""The hop to the model's thread: what a plain (blocking) process function costs per
batch over an ``async def`` one, on asyncio and trio.

A plain process function runs on its worker's own thread (``_model.ModelThread``):
the loop hands it the batch, and the thread hands the results back. Three
measurements, each the median of ``REPS`` runs:

* lone call: sequential ``call()`` on an idle batcher, µs per call, with a plain
  function and with an ``async def`` one (both return their batch at once); the
  difference is the round trip to the thread;
* closed loop: 64 producers, each awaiting its result before its next record, µs
  per batch of 64 (a plain function that returns its batch);
* for reference, ``await anyio.to_thread.run_sync(f)`` alone, µs per call.

Run it in a git worktree of another revision to compare::

    python -m benchmarks.bench_hop
    python -m benchmarks.bench_hop --quick     # a check that it runs (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from batcher import DynamicBatcher

REPS = 5
PRODUCERS = 64


def _plain(batch: list[int]) -> list[int]:
    return batch


async def _async(batch: list[int]) -> list[int]:
    return batch


def _nothing() -> None:
    pass


async def _lone_us(fn: Callable[[list[int]], Any], calls: int) -> float:
    async with DynamicBatcher(fn, max_batch_size=1) as batcher:
        for _ in range(calls // 10):  # the thread started, the paths warm
            await batcher.call(1)
        started = time.perf_counter()
        for _ in range(calls):
            await batcher.call(1)
        return (time.perf_counter() - started) / calls * 1e6


async def _closed_us_per_batch(rounds: int) -> float:
    async with DynamicBatcher(_plain, max_batch_size=PRODUCERS) as batcher:

        async def produce(count: int) -> None:
            for record in range(count):
                await batcher.call(record)

        async with anyio.create_task_group() as tg:  # warm-up
            for _ in range(PRODUCERS):
                tg.start_soon(produce, rounds // 10)
        batches = batcher.stats.total_batches
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(PRODUCERS):
                tg.start_soon(produce, rounds)
        elapsed = time.perf_counter() - started
        return elapsed / (batcher.stats.total_batches - batches) * 1e6


async def _to_thread_us(calls: int) -> float:
    for _ in range(calls // 10):
        await anyio.to_thread.run_sync(_nothing)
    started = time.perf_counter()
    for _ in range(calls):
        await anyio.to_thread.run_sync(_nothing)
    return (time.perf_counter() - started) / calls * 1e6


def run(quick: bool = False) -> str:
    """The report: one line per backend, medians of ``REPS`` runs (each in its own
    event loop)."""
    calls, rounds, reps = (200, 20, 1) if quick else (5_000, 300, REPS)
    lines = ["hop  µs; medians of runs: lone call (plain / async def), closed loop of 64 (plain, per batch), to_thread"]
    for backend in ("asyncio", "trio"):
        cells = {"plain": [], "async": [], "closed": [], "to_thread": []}
        for _ in range(reps):
            cells["plain"].append(anyio.run(_lone_us, _plain, calls, backend=backend))
            cells["async"].append(anyio.run(_lone_us, _async, calls, backend=backend))
            cells["closed"].append(anyio.run(_closed_us_per_batch, rounds, backend=backend))
            cells["to_thread"].append(anyio.run(_to_thread_us, calls, backend=backend))
        plain, coro, closed, hop = (statistics.median(values) for values in cells.values())
        lines.append(
            f"   {backend:<8} lone call {plain:6.1f} / {coro:5.1f}  (thread +{plain - coro:5.1f})   "
            f"closed loop {closed:6.1f} a batch   to_thread {hop:5.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_hop", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few calls: checks the code")
    print(run(quick=parser.parse_args(argv).quick))


if __name__ == "__main__":
    main()
