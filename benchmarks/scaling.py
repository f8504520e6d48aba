"""How the cost per record grows with the work (issue 11, in progress).

* Grouping pool: ``group_by_cost=True``, ``cost_model="padded"``, an echo model,
  ``submit_batch`` of N records with random costs (1-512 tokens, 8,192-token
  budget) and ``max_queue_size=N``, so the whole input is one grouping pool;
  µs per record for N = 1,000, 10,000 and 100,000.
* Event-loop stall: the longest gap seen by a task that sleeps 1 ms in a loop
  while 100,000 grouped records go through (the consumer yields every 1,000
  results, so what is left is the library's, and the cyclic GC's: the same run
  with the GC disabled shows how much of it is collection pauses).

Both on asyncio and trio, best of ``--reps`` runs::

    python -m benchmarks.scaling
    python -m benchmarks.scaling --quick     # smaller sizes, 1 repetition
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Sequence

import anyio
from anyio.lowlevel import checkpoint

from batcher import DynamicBatcher

BACKENDS = ("asyncio", "trio")


async def _echo(batch: list[int]) -> list[int]:
    return batch


async def _grouped_run(records: int) -> float:
    """Seconds for ``records`` through one grouping pool, results checked."""
    rng = random.Random(0)
    costs = [rng.randint(1, 512) for _ in range(records)]
    batcher = DynamicBatcher(
        _echo,
        cost_model="padded",
        group_by_cost=True,
        target_batch_cost=8192,
        max_queue_size=records,
        max_batch_size=256,
    )
    async with batcher:
        started = time.perf_counter()
        futures = await batcher.submit_batch(range(records), estimated_cost=costs)
        for index, future in enumerate(futures):
            assert await future == index
            if index % 1000 == 0:
                await checkpoint()
        return time.perf_counter() - started


def pool_us_per_record(records: int, backend: str, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        best = min(best, anyio.run(_grouped_run, records, backend=backend) / records * 1e6)
    return best


async def _stall_run(records: int) -> float:
    """The longest gap, in ms, of a 1 ms ticker while ``records`` grouped records go through."""
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await _grouped_run(records)
        done.set()
    return max(gaps) * 1000


def longest_stall_ms(records: int, backend: str, reps: int, *, collect: bool) -> float:
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        if not collect:
            gc.disable()
        try:
            best = min(best, anyio.run(_stall_run, records, backend=backend))
        finally:
            gc.enable()
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 1 repetition: checks correctness")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, the best is shown (default 3)")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    pools = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    stall_records = 10_000 if args.quick else 100_000
    print(f"grouping pool (padded, grouped, echo model): µs per record, best of {reps}")
    print(f"{'pool':>9}" + "".join(f"{backend:>10}" for backend in BACKENDS))
    for records in pools:
        print(f"{records:>9,}" + "".join(f"{pool_us_per_record(records, b, reps):>10.2f}" for b in BACKENDS))
    print(f"\nlongest stall of a 1 ms ticker, {stall_records:,} grouped records: ms, best of {reps}")
    print(f"{'':>9}" + "".join(f"{backend:>10}" for backend in BACKENDS))
    for collect in (True, False):
        label = "GC on" if collect else "GC off"
        row = "".join(f"{longest_stall_ms(stall_records, b, reps, collect=collect):>10.1f}" for b in BACKENDS)
        print(f"{label:>9}{row}")


if __name__ == "__main__":
    main()
