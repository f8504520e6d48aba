"""How the cost per record grows with the work (issue 11, in progress).

* Producers: N closed-loop producers (10 to 10,000), each awaiting its result
  (``submit()``'s future, or ``call()``) before its next record, default
  settings, an echo model; µs per record, with the hand-written floor (asyncio)
  beside.
* Backlog: ``submit_batch`` of N records (10,000 to 1,000,000) with
  ``max_queue_size=N``, then every future awaited; µs per record, floor beside.
* ``max_batch_size`` (16 to 4,096): 100,000 records, open loop; µs per record.
* Bytes per waiting caller: traced memory per task parked in ``call()`` while
  the model holds a batch, beside a task parked on a bare ``anyio.Event``.
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
import tracemalloc
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

from batcher import DynamicBatcher
from benchmarks.floor import FloorBatcher

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


async def _closed_loop(open_batcher: Callable[[], Any], producers: int, records: int, call: bool = False) -> float:
    """Seconds for ``records`` through ``producers`` closed-loop callers, each awaiting
    ``submit()``'s future (or with ``call``, ``call()``) before its next record."""
    remaining = iter(range(records))
    async with open_batcher() as batcher:

        async def produce() -> None:
            for record in remaining:
                result = await batcher.call(record) if call else await (await batcher.submit(record))
                assert result == record

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(producers):
                tg.start_soon(produce)
        return time.perf_counter() - started


async def _open_loop(open_batcher: Callable[[], Any], records: int) -> float:
    """Seconds for ``submit_batch`` of ``records`` and awaiting every future."""
    async with open_batcher() as batcher:
        started = time.perf_counter()
        futures = await batcher.submit_batch(range(records))
        for index, future in enumerate(futures):
            assert await future == index
        return time.perf_counter() - started


def _best_us(run: Callable[[], Any], backend: str, records: int, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        best = min(best, anyio.run(run, backend=backend) / records * 1e6)
    return best


def _row(label: str, figures: Sequence[float], width: int = 10) -> str:
    return f"{label:>11}" + "".join(f"{figure:>{width}.2f}" for figure in figures)


def producers_table(counts: Sequence[int], records: int, reps: int) -> list[str]:
    names = (*BACKENDS, *(f"{backend} call" for backend in BACKENDS), "floor")
    lines = [f"{'producers':>11}" + "".join(f"{name:>13}" for name in names)]
    for count in counts:
        opener = partial(DynamicBatcher, _echo)
        ours = [
            _best_us(partial(_closed_loop, opener, count, records, call), backend, records, reps)
            for call in (False, True)
            for backend in BACKENDS
        ]
        floor = _best_us(partial(_closed_loop, partial(FloorBatcher, _echo), count, records), "asyncio", records, reps)
        lines.append(_row(f"{count:,}", [*ours, floor], width=13))
    return lines


def backlog_table(sizes: Sequence[int], reps: int) -> list[str]:
    lines = [f"{'backlog':>11}" + "".join(f"{name:>10}" for name in (*BACKENDS, "floor"))]
    for size in sizes:
        ours = [
            _best_us(partial(_open_loop, partial(DynamicBatcher, _echo, max_queue_size=size), size), b, size, reps)
            for b in BACKENDS
        ]
        floor = _best_us(partial(_open_loop, partial(FloorBatcher, _echo), size), "asyncio", size, reps)
        lines.append(_row(f"{size:,}", [*ours, floor]))
    return lines


def batch_size_table(sizes: Sequence[int], records: int, reps: int) -> list[str]:
    lines = [f"{'batch size':>11}" + "".join(f"{name:>10}" for name in BACKENDS)]
    for size in sizes:
        opener = partial(DynamicBatcher, _echo, max_batch_size=size, target_batch_cost=10**9)
        lines.append(
            _row(f"{size:,}", [_best_us(partial(_open_loop, opener, records), b, records, reps) for b in BACKENDS])
        )
    return lines


async def _bytes_per_waiter(callers: int, through_batcher: bool) -> float:
    """Traced bytes per task parked awaiting ``call()`` (model blocked), or awaiting a
    bare event (the baseline: a task that waits for anything at all)."""
    release = anyio.Event()

    async def blocked(batch: list[int]) -> list[int]:
        await release.wait()
        return batch

    async with DynamicBatcher(blocked, max_queue_size=callers + 1) as batcher, anyio.create_task_group() as tg:
        await batcher.submit(-1)  # the model holds this one: everything after it waits
        await anyio.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for record in range(callers):
            if through_batcher:
                tg.start_soon(batcher.call, record)
            else:
                tg.start_soon(_wait_for, release)
        await anyio.wait_all_tasks_blocked()
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        release.set()
    return used / callers


async def _wait_for(event: anyio.Event) -> None:
    await event.wait()


def waiter_table(callers: int) -> list[str]:
    lines = [f"{'':>11}" + "".join(f"{name:>10}" for name in BACKENDS)]
    for label, through in (("call()", True), ("bare wait", False)):
        row = [anyio.run(_bytes_per_waiter, callers, through, backend=backend) for backend in BACKENDS]
        lines.append(f"{label:>11}" + "".join(f"{figure:>10,.0f}" for figure in row))
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 1 repetition: checks correctness")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, the best is shown (default 3)")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    pools = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    stall_records = 10_000 if args.quick else 100_000
    quick = args.quick
    print(f"closed loop, default settings: µs per record, best of {reps}")
    print(
        "\n".join(producers_table((10, 100) if quick else (10, 100, 1_000, 10_000), 2_000 if quick else 50_000, reps))
    )
    print(f"\nbacklog (open loop, max_queue_size = backlog): µs per record, best of {reps}")
    print("\n".join(backlog_table((1_000,) if quick else (10_000, 100_000, 1_000_000), reps)))
    print(f"\nmax_batch_size (open loop, 100,000 records): µs per record, best of {reps}")
    print("\n".join(batch_size_table((16, 256) if quick else (16, 256, 4_096), 2_000 if quick else 100_000, reps)))
    waiters = 1_000 if quick else 10_000
    print(f"\nbytes per waiting caller ({waiters:,} tasks parked, model blocked; tracemalloc)")
    print("\n".join(waiter_table(waiters)))
    print(f"\ngrouping pool (padded, grouped, echo model): µs per record, best of {reps}")
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
