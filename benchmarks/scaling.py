"""How the cost per record grows with the work (issue 11): a section of
``python -m benchmarks``, or on its own.

* Producers: N closed-loop producers (10 to 10,000), each awaiting its result
  (``submit()``'s future, or ``call()``) before its next record, default
  settings, an echo model, at least 20 records per producer, timed from when all
  are spawned; µs per record, with the hand-written floors (asyncio and trio)
  beside.
* Backlog: ``submit_batch`` of N records (10,000 to 1,000,000) with
  ``max_queue_size=N``, then every future awaited; µs per record, floor beside.
* ``max_batch_size`` (16 to 4,096): 100,000 records, open loop; µs per record.
* Burst: N concurrent ``call()``s (10,000) released at once, each task making one
  call and ending, default settings; FIFO and grouped (padded costs 1-512,
  8,192-token budget), the floors beside (their ``submit()``); µs per record, from
  the release until every task has ended.
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

Both on asyncio and trio. Each figure is the median of ``--reps`` repetitions;
each repetition runs every cell of a table once, in the same order, so the cells
alternate. As in ``python -m benchmarks``, what the imports made is frozen out of
the cyclic GC first (``gc.freeze()``), so that collections scan what the runs
make::

    python -m benchmarks.scaling
    python -m benchmarks.scaling --quick     # smaller sizes, 1 repetition
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

from batcher import DynamicBatcher
from benchmarks.floor import FloorBatcher
from benchmarks.floor_trio import TrioFloorBatcher
from benchmarks.runner import freeze_imports

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


async def longest_gap_ms(work: Callable[[], Awaitable[Any]]) -> float:
    """Run ``work()`` beside a task that sleeps 1 ms in a loop; the longest gap that
    task saw between two of its turns, in ms (how long the event loop stalled)."""
    gaps = [0.0]
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
        await work()
        done.set()
    return max(gaps) * 1000


async def _stall_run(records: int) -> float:
    """The longest gap, in ms, of a 1 ms ticker while ``records`` grouped records go through."""
    return await longest_gap_ms(partial(_grouped_run, records))


async def _closed_loop(open_batcher: Callable[[], Any], producers: int, records: int, call: bool = False) -> float:
    """Seconds for ``records`` through ``producers`` closed-loop callers, each awaiting
    ``submit()``'s future (or with ``call``, ``call()``) before its next record.

    The clock starts once every producer has been spawned and waits for the start
    signal: what is timed is the steady state, not the spawning of the tasks (which
    at 10,000 producers and 50,000 records cost more than the records did)."""
    remaining = iter(range(records))
    go = anyio.Event()
    async with open_batcher() as batcher:

        async def produce() -> None:
            await go.wait()
            for record in remaining:
                result = await batcher.call(record) if call else await (await batcher.submit(record))
                assert result == record

        async with anyio.create_task_group() as tg:
            for _ in range(producers):
                tg.start_soon(produce)
            await anyio.wait_all_tasks_blocked()
            started = time.perf_counter()
            go.set()
        return time.perf_counter() - started


async def _open_loop(open_batcher: Callable[[], Any], records: int) -> float:
    """Seconds for ``submit_batch`` of ``records`` and awaiting every future."""
    async with open_batcher() as batcher:
        started = time.perf_counter()
        futures = await batcher.submit_batch(range(records))
        for index, future in enumerate(futures):
            assert await future == index
        return time.perf_counter() - started


def _us_per_record(run: Callable[[], Any], backend: str, records: int) -> Callable[[], float]:
    return lambda: anyio.run(run, backend=backend) / records * 1e6


def medians(cells: dict[Hashable, Callable[[], float]], reps: int) -> dict[Hashable, float]:
    """Run every cell once per repetition, in the same order each time (so that the
    cells alternate and drift on a noisy machine hits them alike); each one's median."""
    samples: dict[Hashable, list[float]] = {key: [] for key in cells}
    for _ in range(reps):
        for key, run in cells.items():
            gc.collect()
            samples[key].append(run())
    return {key: statistics.median(values) for key, values in samples.items()}


def _burst_cost(record: int) -> int:
    """A padded cost of 1-512 tokens that looks random and is the same in every run."""
    return 1 + record * 2_654_435_761 % 512


BURST_ROWS = ("FIFO", "grouped", "floor")


def burst_figures(callers: int, reps: int) -> dict[Hashable, float]:
    """µs per record by (row, backend) for ``callers`` concurrent callers released at
    once: a closed loop with one record per producer."""
    grouped = partial(
        DynamicBatcher,
        _echo,
        cost_estimator=_burst_cost,
        cost_model="padded",
        group_by_cost=True,
        target_batch_cost=8192,
    )
    cells: dict[Hashable, Callable[[], float]] = {}
    for backend in BACKENDS:
        floor = FloorBatcher if backend == "asyncio" else TrioFloorBatcher
        openers: dict[str, Callable[[], Any]] = {
            "FIFO": partial(DynamicBatcher, _echo),
            "grouped": grouped,
            "floor": partial(floor, _echo),
        }
        for row, opener in openers.items():
            run = partial(_closed_loop, opener, callers, callers, row != "floor")
            cells[row, backend] = _us_per_record(run, backend, callers)
    return medians(cells, reps)


@dataclass(frozen=True)
class Sizes:
    producers: Sequence[int]
    producer_records: int
    backlogs: Sequence[int]
    batch_sizes: Sequence[int]
    batch_records: int
    waiters: int
    pools: Sequence[int]
    stall_records: int
    burst: int


FULL = Sizes(
    (10, 100, 1_000, 10_000),
    50_000,
    (10_000, 100_000, 1_000_000),
    (16, 256, 4_096),
    100_000,
    10_000,
    (1_000, 10_000, 100_000),
    100_000,
    10_000,
)
QUICK = Sizes((10, 100, 1_000), 2_000, (1_000,), (16, 256), 2_000, 1_000, (1_000, 10_000), 10_000, 1_000)

PRODUCER_COLUMNS = ("asyncio", "trio", "asyncio call", "trio call", "asyncio floor", "trio floor")


def _producer_cell(column: str, producers: int, records: int) -> Callable[[], float]:
    backend, _, kind = column.partition(" ")
    if kind == "floor":
        opener: Callable[[], Any] = partial(FloorBatcher if backend == "asyncio" else TrioFloorBatcher, _echo)
    else:
        opener = partial(DynamicBatcher, _echo)
    run = partial(_closed_loop, opener, producers, records, kind == "call")
    return _us_per_record(run, backend, records)


def producer_figures(counts: Sequence[int], records: int, reps: int) -> dict[Hashable, float]:
    """µs per record by (producers, column); at least 20 records per producer, so
    that each producer's first wait is a small share."""
    cells: dict[Hashable, Callable[[], float]] = {}
    for count in counts:
        total = max(records, 20 * count)
        for column in PRODUCER_COLUMNS:
            cells[count, column] = _producer_cell(column, count, total)
    return medians(cells, reps)


def _table(
    label: str, rows: Sequence[Hashable], columns: Sequence[str], figures: dict[Hashable, float], form: str = ".2f"
) -> list[str]:
    width = max(10, *(len(column) + 2 for column in columns))
    lines = [f"{label:>11}" + "".join(f"{column:>{width}}" for column in columns)]
    for row in rows:
        name = f"{row:,}" if isinstance(row, int) else str(row)
        lines.append(f"{name:>11}" + "".join(f"{figures[row, column]:>{width}{form}}" for column in columns))
    return lines


def backlog_figures(sizes: Sequence[int], reps: int) -> dict[Hashable, float]:
    cells: dict[Hashable, Callable[[], float]] = {}
    for size in sizes:
        for backend in BACKENDS:
            opener = partial(DynamicBatcher, _echo, max_queue_size=size)
            cells[size, backend] = _us_per_record(partial(_open_loop, opener, size), backend, size)
        cells[size, "floor"] = _us_per_record(partial(_open_loop, partial(FloorBatcher, _echo), size), "asyncio", size)
    return medians(cells, reps)


def batch_size_figures(sizes: Sequence[int], records: int, reps: int) -> dict[Hashable, float]:
    cells: dict[Hashable, Callable[[], float]] = {}
    for size in sizes:
        opener = partial(DynamicBatcher, _echo, max_batch_size=size, target_batch_cost=10**9)
        for backend in BACKENDS:
            cells[size, backend] = _us_per_record(partial(_open_loop, opener, records), backend, records)
    return medians(cells, reps)


def pool_figures(pools: Sequence[int], reps: int) -> dict[Hashable, float]:
    cells: dict[Hashable, Callable[[], float]] = {}
    for records in pools:
        for backend in BACKENDS:
            cells[records, backend] = partial(_pool_us_per_record, records, backend)
    return medians(cells, reps)


def _pool_us_per_record(records: int, backend: str) -> float:
    return anyio.run(_grouped_run, records, backend=backend) / records * 1e6


def stall_figures(records: int, reps: int) -> dict[Hashable, float]:
    cells: dict[Hashable, Callable[[], float]] = {}
    for collect in (True, False):
        for backend in BACKENDS:
            cells["GC on" if collect else "GC off", backend] = partial(_stall_ms, records, backend, collect)
    return medians(cells, reps)


def _stall_ms(records: int, backend: str, collect: bool) -> float:
    if not collect:
        gc.disable()
    try:
        return anyio.run(_stall_run, records, backend=backend)
    finally:
        gc.enable()


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


def waiter_figures(callers: int) -> dict[Hashable, float]:
    """Traced bytes per parked task, by (``"call()"`` or ``"bare wait"``, backend)."""
    return {
        (label, backend): anyio.run(_bytes_per_waiter, callers, through, backend=backend)
        for label, through in (("call()", True), ("bare wait", False))
        for backend in BACKENDS
    }


@dataclass(frozen=True)
class Check:
    """One target line: ``figure`` against ``limit`` (at most)."""

    label: str
    figure: float
    limit: float
    unit: str

    def line(self) -> str:
        status = "PASS" if self.figure <= self.limit else "FAIL"
        return f"  {status}  {self.label:<52} {self.figure:,.2f}{self.unit} (at most {self.limit:g}{self.unit})"


def run(quick: bool, reps: int) -> tuple[list[str], list[Check]]:
    """Every table of the scaling section, and the checks of issue 11's targets."""
    sizes = QUICK if quick else FULL
    lines: list[str] = []
    producers = producer_figures(sizes.producers, sizes.producer_records, reps)
    lines += [f"closed loop, default settings: µs per record, median of {reps}"]
    lines += _table("producers", sizes.producers, PRODUCER_COLUMNS, producers)
    backlog = backlog_figures(sizes.backlogs, reps)
    lines += ["", f"backlog (open loop, max_queue_size = backlog): µs per record, median of {reps}"]
    lines += _table("backlog", sizes.backlogs, (*BACKENDS, "floor"), backlog)
    batch = batch_size_figures(sizes.batch_sizes, sizes.batch_records, reps)
    lines += ["", f"max_batch_size (open loop, {sizes.batch_records:,} records): µs per record, median of {reps}"]
    lines += _table("batch size", sizes.batch_sizes, BACKENDS, batch)
    burst = burst_figures(sizes.burst, reps)
    lines += ["", f"burst ({sizes.burst:,} concurrent call()s released at once): µs per record, median of {reps}"]
    lines += _table("", BURST_ROWS, BACKENDS, burst)
    waiters = waiter_figures(sizes.waiters)
    lines += ["", f"bytes per waiting caller ({sizes.waiters:,} tasks parked, model blocked; tracemalloc)"]
    lines += _table("", ("call()", "bare wait"), BACKENDS, waiters, ",.0f")
    pools = pool_figures(sizes.pools, reps)
    lines += ["", f"grouping pool (padded, grouped, echo model): µs per record, median of {reps}"]
    lines += _table("pool", sizes.pools, BACKENDS, pools)
    stalls = stall_figures(sizes.stall_records, reps)
    lines += ["", f"longest stall of a 1 ms ticker, {sizes.stall_records:,} grouped records: ms, median of {reps}"]
    lines += _table("", ("GC on", "GC off"), BACKENDS, stalls)
    return lines, _checks(sizes, producers, waiters, pools, stalls)


def _checks(
    sizes: Sizes,
    producers: dict[Hashable, float],
    waiters: dict[Hashable, float],
    pools: dict[Hashable, float],
    stalls: dict[Hashable, float],
) -> list[Check]:
    most, least = sizes.producers[-1], 100
    checks = [
        Check(f"{most:,} producers / {least}, {column}", producers[most, column] / producers[least, column], 2, "x")
        for column in PRODUCER_COLUMNS[:4]
    ]
    big, small = sizes.pools[-1], sizes.pools[0]
    checks += [
        Check(f"grouping pool {big:,} / {small:,}, {backend}", pools[big, backend] / pools[small, backend], 1.5, "x")
        for backend in BACKENDS
    ]
    checks += [
        Check(f"longest stall, {sizes.stall_records:,} grouped, {backend}", stalls["GC on", backend], 20, " ms")
        for backend in BACKENDS
    ]
    checks += [
        Check(f"bytes per caller over a bare wait, {b}", waiters["call()", b] - waiters["bare wait", b], 1000, " B")
        for b in BACKENDS
    ]
    return checks


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 1 repetition: checks correctness")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, the median is shown (default 3)")
    args = parser.parse_args(argv)
    freeze_imports()
    lines, checks = run(args.quick, 1 if args.quick else args.reps)
    print("\n".join(lines))
    print("\nTargets (issue 11)")
    print("\n".join(check.line() for check in checks))


if __name__ == "__main__":
    main()
