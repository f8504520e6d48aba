"""Work that grows with the queue: this tree against a git revision, side by side.

Each figure is the median of ``--reps`` repetitions, the trees taking turns:

* Aging burst: ``AGED`` records queued over 4 priorities, ``max_batch_size=256``,
  then the clock moves past ``priority_aging_s``: the time of the next ``take()`` of
  the priority assembly, which moves every aged record to the aged level (ms).
* Distinct priorities: ``DISTINCT`` records, each of a priority of its own (a
  timestamp or a score used as the priority), ``max_batch_size=64``, drained by
  ``take()``; µs per record. Beside it, the same records over 4 priorities.
* Loop stall with priorities: a ``DynamicBatcher`` with 4 priorities and
  ``priority_aging_s=0.05``, a 2 ms model, ``max_batch_size=64``, ``STALL`` records
  submitted at once; the longest gap of a 1 ms ticker task while they go through
  (ms), asyncio and trio.
* Loop stall of a map: ``map()`` of ``MAPPED`` records with ``max_queue_size`` a
  quarter of them (it submits half of that at a time), an echo model,
  ``max_batch_size=256``; the ticker's longest gap (ms), asyncio and trio.

The assembly figures call the priority assembly directly, with a fake clock: no event
loop, so what they show is the rule's own work::

    python -m benchmarks.bench_stalls --ref 8ff5a7a
    python -m benchmarks.bench_stalls --quick      # a check that it runs (CI)
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType
from typing import Any

import anyio

from benchmarks.compare import tree_beside_args, trees_beside
from benchmarks.scaling import longest_gap_ms

AGED, DISTINCT, STALL, MAPPED = 20_000, 20_000, 10_000, 400_000


class _Record:
    __slots__ = ("_cost", "_priority")

    def __init__(self, priority: int) -> None:
        self._priority, self._cost = priority, 1


def _queue(package: ModuleType, records: int, priorities: int, batch_size: int, clock: list[float]) -> Any:
    """The priority assembly of ``package`` (a batcher tree) with ``records`` queued."""
    assembly = importlib.import_module(f"{package.__name__}._assembly")
    budget = importlib.import_module(f"{package.__name__}._budget")
    target = 10**9  # the size caps every batch
    queue = importlib.import_module(f"{package.__name__}._priority").PriorityAssembly(
        make_level=partial(
            assembly.make_assembly,
            target_cost=target,
            max_batch_size=batch_size,
            cost_model="sum",
            group_by_cost=False,
            window=10**9,
        ),
        make_budget=partial(budget.new_budget, target, batch_size, "sum", None),
        window=10**9,
        aging_s=1.0,
        priority_of=lambda record: record._priority,
        cost_of=lambda record: record._cost,
        clock=lambda: clock[0],
    )
    for n in range(records):
        queue.add(_Record(n % priorities), 1)
    return queue


def aging_burst_ms(package: ModuleType, records: int) -> float:
    clock = [0.0]
    queue = _queue(package, records, 4, 256, clock)
    clock[0] = 2.0  # every record has aged
    started = time.perf_counter()
    queue.take()
    return (time.perf_counter() - started) * 1e3


def drain_us_per_record(package: ModuleType, records: int, priorities: int) -> float:
    queue = _queue(package, records, priorities, 64, [0.0])
    started = time.perf_counter()
    while len(queue):
        queue.take()
    return (time.perf_counter() - started) / records * 1e6


async def _through(package: ModuleType, records: int) -> None:
    async def model(batch: list[int]) -> list[int]:
        await anyio.sleep(0.002)
        return batch

    async with package.DynamicBatcher(
        model, max_batch_size=64, max_queue_size=records, priority_aging_s=0.05
    ) as through:
        futures = [through.submit_nowait(n, priority=n % 4) for n in range(records)]
        for future in futures:
            await future


def stall_ms(package: ModuleType, records: int, backend: str) -> float:
    return anyio.run(longest_gap_ms, partial(_through, package, records), backend=backend)


async def _mapped(package: ModuleType, records: int) -> None:
    async def echo(batch: list[int]) -> list[int]:
        return batch

    async with (
        package.DynamicBatcher(echo, max_batch_size=256, max_queue_size=records // 4) as through,
        through.map(range(records)) as results,
    ):
        async for _ in results:
            pass


def map_stall_ms(package: ModuleType, records: int, backend: str) -> float:
    return anyio.run(longest_gap_ms, partial(_mapped, package, records), backend=backend)


def _figures(records: tuple[int, int, int, int]) -> dict[str, Callable[[ModuleType], float]]:
    aged, distinct, stall, mapped = records
    return {
        f"aging burst, {aged:,} records (ms)": partial(aging_burst_ms, records=aged),
        f"{distinct:,} distinct priorities (µs/record)": partial(
            drain_us_per_record, records=distinct, priorities=distinct
        ),
        f"{distinct:,} over 4 priorities (µs/record)": partial(drain_us_per_record, records=distinct, priorities=4),
        f"priorities, loop stall, {stall:,} records, asyncio (ms)": partial(stall_ms, records=stall, backend="asyncio"),
        f"priorities, loop stall, {stall:,} records, trio (ms)": partial(stall_ms, records=stall, backend="trio"),
        f"map of {mapped:,}: loop stall, asyncio (ms)": partial(map_stall_ms, records=mapped, backend="asyncio"),
        f"map of {mapped:,}: loop stall, trio (ms)": partial(map_stall_ms, records=mapped, backend="trio"),
    }


def run(trees: dict[str, ModuleType], records: tuple[int, int, int, int], reps: int) -> list[str]:
    figures = _figures(records)
    samples: dict[tuple[str, str], list[float]] = {(figure, tree): [] for figure in figures for tree in trees}
    for rep in range(reps):
        order = list(trees.items())
        order = order[rep % len(order) :] + order[: rep % len(order)]  # the trees take turns going first
        for figure, measure in figures.items():
            for name, package in order:
                samples[figure, name].append(measure(package))
    lines = [f"{'':52}" + "".join(f"{name:>16}" for name in trees)]
    for figure in figures:
        medians = [statistics.median(samples[figure, name]) for name in trees]
        line = f"{figure:52}" + "".join(f"{value:16.2f}" for value in medians)
        if len(medians) == 2:
            line += f"   tree/ref {medians[1] / medians[0]:.3f}"
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    quick = "small sizes, one repetition: a check that it runs"
    args = tree_beside_args("python -m benchmarks.bench_stalls", __doc__ or "", quick, argv)
    records = (500, 500, 300, 4_000) if args.quick else (AGED, DISTINCT, STALL, MAPPED)
    with trees_beside(args.ref) as trees:
        print("\n".join(run(trees, records, 1 if args.quick else args.reps)))


if __name__ == "__main__":
    main()
