"""The doors for whole-corpus jobs and synchronous callers, against the async path
they wrap, side by side in one run, on an echo model (so what is measured is the
library's own cost per record).

* ``map()``: 100,000 records through ``DynamicBatcher.map`` (in order) against
  ``submit_batch`` of every record and awaiting each future, on asyncio and trio.

Each figure is the median of ``--reps`` alternating repetitions, in microseconds
per record, and the overhead is the difference to the async path::

    python -m benchmarks.bench_sync
    python -m benchmarks.bench_sync --quick     # 5,000 records, 1 repetition
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable, Sequence

import anyio

from batcher import DynamicBatcher

Measure = Callable[[int, str], float]


async def _echo(batch: list[int]) -> list[int]:
    return batch


def map_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``map()``, results checked."""

    async def run() -> float:
        async with DynamicBatcher(_echo) as batcher:
            started = time.perf_counter()
            index = 0
            async with batcher.map(range(records)) as results:
                async for result in results:
                    assert result == index
                    index += 1
            elapsed = time.perf_counter() - started
        assert index == records
        return elapsed

    return anyio.run(run, backend=backend)


def submit_batch_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``submit_batch`` and awaiting each future."""

    async def run() -> float:
        async with DynamicBatcher(_echo) as batcher:
            started = time.perf_counter()
            futures = await batcher.submit_batch(range(records))
            for index, future in enumerate(futures):
                assert await future == index
            return time.perf_counter() - started

    return anyio.run(run, backend=backend)


PAIRS: dict[str, tuple[tuple[str, Measure], tuple[str, Measure]]] = {
    "map": (("map()", map_path), ("submit_batch + await", submit_batch_path)),
}


def measure(pair: str, records: int, backend: str, reps: int) -> tuple[float, float]:
    """Median µs per record of the door and of the async path it wraps."""
    (_, door), (_, path) = PAIRS[pair]
    door_us: list[float] = []
    path_us: list[float] = []
    for rep in range(reps):
        order: Sequence[tuple[list[float], Measure]] = ((door_us, door), (path_us, path))
        for times, run in order if rep % 2 == 0 else reversed(order):
            gc.collect()
            times.append(run(records, backend) / records * 1e6)
    return statistics.median(door_us), statistics.median(path_us)


def report(records: int, reps: int, backends: Sequence[str]) -> str:
    lines = [f"{'door':<24}{'backend':<9}{'door µs/rec':>13}{'async µs/rec':>14}{'overhead':>10}"]
    for pair, ((door_name, _), _) in PAIRS.items():
        for backend in backends:
            door, path = measure(pair, records, backend, reps)
            lines.append(f"{door_name:<24}{backend:<9}{door:>13.2f}{path:>14.2f}{door - path:>+10.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 records, 1 repetition: checks correctness")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    args = parser.parse_args(argv)
    records, reps = (5_000, 1) if args.quick else (100_000, args.reps)
    print(f"{records:,} records, median of {reps}, echo model")
    print(report(records, reps, ("asyncio", "trio")))


if __name__ == "__main__":
    main()
