"""Workloads A to E: what each one measures and how.

Each workload is an ``async`` function ``(system, setup) -> Outcome``
run once per repetition inside ``anyio.run`` on the system's backend. Only the
work under test is timed (``time.perf_counter``); opening and closing the
batcher is not. Every result is checked against the record it belongs to, and
mistakes are counted in :attr:`Outcome.wrong`.

* A, closed loop: 100 producers each submit one record, await its result and
  repeat, until the records run out or a time budget ends (flyte, waiting out
  its 50 ms batch timeout on every batch of 100, would take about a minute
  for 100,000 records). Default settings. Records per second.
* B, open loop: ``submit_batch`` of all records in one call (it waits while
  the queue is full), then await every future. Default settings. Records per
  second, from the call to the last result.
* C, lone request: sequential submit-and-await on an idle batcher, until the
  count or the time budget runs out. p50 and p99 latency.
* D, simulated LLM (see :mod:`benchmarks.llm_sim`): Poisson arrivals at 80 %
  of the model's measured saturated throughput, each one a task that submits its record with
  its token cost and awaits the result; ``target_batch_cost=8192``.
  Throughput (records over the time from the first arrival to the last
  result), p50 and p99 latency measured from each request's scheduled
  arrival (so a late arrival loop counts against the system), average batch
  tokens seen by the model.
* E, memory: bytes per queued record. The model blocks on its first batch,
  ``max_queue_size=200_000``, the records are submitted one by one, and the
  growth of tracemalloc's traced memory from just after the batcher started
  to 0.1 s after the last submit is divided by the count. The records (ints)
  and the list holding the futures are allocated before tracing starts, so
  the records' own memory is not counted.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from benchmarks import llm_sim
from benchmarks.process_fns import Blocked, Echo, SimulatedLLM
from benchmarks.systems import Batcher, Options, System


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; see :data:`FULL` and :data:`QUICK`."""

    closed_records: int
    closed_producers: int
    closed_budget_s: float
    open_records: int
    lone_requests: int
    lone_budget_s: float
    llm_duration_s: float
    llm_calibration_batches: int
    memory_records: int
    memory_queue_size: int
    run_limit_s: float
    """A run still going after this long fails (so CI cannot hang)."""


FULL = Sizes(
    closed_records=100_000,
    closed_producers=100,
    closed_budget_s=10.0,
    open_records=100_000,
    lone_requests=1_000,
    lone_budget_s=5.0,
    llm_duration_s=3.0,
    llm_calibration_batches=100,
    memory_records=100_000,
    memory_queue_size=200_000,
    run_limit_s=120.0,
)
QUICK = Sizes(
    closed_records=2_000,
    closed_producers=100,
    closed_budget_s=5.0,
    open_records=2_000,
    lone_requests=50,
    lone_budget_s=1.0,
    llm_duration_s=0.3,
    llm_calibration_batches=20,
    memory_records=5_000,
    memory_queue_size=200_000,
    run_limit_s=60.0,
)


@dataclass
class Outcome:
    """What one run of one workload on one system produced."""

    metrics: dict[str, float] = field(default_factory=dict)
    wrong: int = 0
    """Results that did not match their record."""


@dataclass(frozen=True)
class Setup:
    """What every run of a harness invocation shares."""

    sizes: Sizes
    double: bool
    """Quick mode: the model doubles each record, so a misplaced result shows."""
    llm_plan: llm_sim.Schedule | None
    """D's arrivals, made once (its calibration needs its own event loop)."""


Run = Callable[[System, Setup], Awaitable[Outcome]]


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    metrics: tuple[str, ...]
    run: Run


async def closed_loop(system: System, setup: Setup) -> Outcome:
    sizes, double = setup.sizes, setup.double
    model = Echo(double=double)
    records = iter(range(sizes.closed_records))
    outcome = Outcome()
    async with system.open(model.process, Options()) as batcher:
        deadline = time.perf_counter() + sizes.closed_budget_s

        async def produce() -> None:
            for record in records:
                result = await (await batcher.submit(record))
                outcome.wrong += result != model.expected(record)
                if time.perf_counter() > deadline:
                    return

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(sizes.closed_producers):
                tg.start_soon(produce)
        elapsed = time.perf_counter() - start
    outcome.metrics = {
        "records/s": model.records / elapsed,
        "records run": model.records,
        "avg batch size": model.avg_batch_size,
    }
    return outcome


async def open_loop(system: System, setup: Setup) -> Outcome:
    sizes, double = setup.sizes, setup.double
    model = Echo(double=double)
    records = list(range(sizes.open_records))
    async with system.open(model.process, Options()) as batcher:
        start = time.perf_counter()
        futures = await batcher.submit_batch(records)
        results = [await future for future in futures]
        elapsed = time.perf_counter() - start
    wrong = sum(result != model.expected(record) for record, result in zip(records, results, strict=True))
    metrics = {
        "records/s": len(records) / elapsed,
        "avg batch size": model.avg_batch_size,
    }
    return Outcome(metrics, wrong)


async def lone_request(system: System, setup: Setup) -> Outcome:
    sizes, double = setup.sizes, setup.double
    model = Echo(double=double)
    latencies: list[float] = []
    outcome = Outcome()
    async with system.open(model.process, Options()) as batcher:
        deadline = time.perf_counter() + sizes.lone_budget_s
        for record in range(sizes.lone_requests):
            start = time.perf_counter()
            result = await (await batcher.submit(record))
            latencies.append(time.perf_counter() - start)
            outcome.wrong += result != model.expected(record)
            if start > deadline:
                break
    outcome.metrics = {
        "p50 ms": percentile(latencies, 0.50) * 1e3,
        "p99 ms": percentile(latencies, 0.99) * 1e3,
        "requests run": len(latencies),
    }
    return outcome


async def simulated_llm(system: System, setup: Setup) -> Outcome:
    plan = setup.llm_plan
    if plan is None:
        raise RuntimeError("workload D needs setup.llm_plan")
    model = SimulatedLLM(
        double=setup.double,
        costs=plan.costs,
        fixed_s=llm_sim.FIXED_S,
        per_token_s=llm_sim.PER_TOKEN_S,
        sleep=system.sleep,
    )
    latencies: list[float] = []
    outcome = Outcome()
    options = Options(target_batch_cost=llm_sim.TARGET_BATCH_COST)
    async with system.open(model.process, options) as batcher:

        async def request(record: int, arrival: float) -> None:
            future = await batcher.submit(record, estimated_cost=plan.costs[record])
            result = await future
            latencies.append(time.perf_counter() - arrival)
            outcome.wrong += result != model.expected(record)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for record, offset in enumerate(plan.offsets_s):
                arrival = start + offset
                delay = arrival - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                tg.start_soon(request, record, arrival)
        elapsed = time.perf_counter() - start
    outcome.metrics = {
        "offered rec/s": plan.rate_per_s,
        "throughput rec/s": len(latencies) / elapsed,
        "p50 ms": percentile(latencies, 0.50) * 1e3,
        "p99 ms": percentile(latencies, 0.99) * 1e3,
        "avg batch tokens": model.avg_batch_tokens,
        "avg batch size": model.avg_batch_size,
    }
    return outcome


async def memory(system: System, setup: Setup) -> Outcome:
    sizes, double = setup.sizes, setup.double
    model = Blocked(double=double)
    count = sizes.memory_records
    # Ints above the small-int cache, made before tracing so they are not counted.
    records = list(range(1_000, 1_000 + count))
    futures: list[Any] = [None] * count
    options = Options(max_queue_size=sizes.memory_queue_size)
    async with system.open(model.process, options) as batcher:
        tracemalloc.start()
        try:
            per_record = await _queued_bytes(batcher, records, futures)
        finally:
            tracemalloc.stop()
        model.gate.set()
        results = [await future for future in futures]
    wrong = sum(result != model.expected(record) for record, result in zip(records, results, strict=True))
    return Outcome({"bytes/record": per_record}, wrong)


async def _queued_bytes(batcher: Batcher, records: list[int], futures: list[Any]) -> float:
    await anyio.sleep(0.01)
    baseline, _ = tracemalloc.get_traced_memory()
    for index, record in enumerate(records):
        futures[index] = await batcher.submit(record)
    await anyio.sleep(0.1)
    queued, _ = tracemalloc.get_traced_memory()
    return (queued - baseline) / len(records)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (``q`` in 0..1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


WORKLOADS = {
    workload.key: workload
    for workload in (
        Workload(
            "A",
            "closed loop: 100 producers, submit and await one record at a time",
            ("records/s", "records run", "avg batch size"),
            closed_loop,
        ),
        Workload(
            "B",
            "open loop: submit_batch of every record, then await all",
            ("records/s", "avg batch size"),
            open_loop,
        ),
        Workload(
            "C",
            "lone request: sequential submit-and-await, idle batcher",
            ("p50 ms", "p99 ms", "requests run"),
            lone_request,
        ),
        Workload(
            "D",
            "simulated LLM: Poisson arrivals (80 % of saturation unless --load), 8,192-token target",
            (
                "offered rec/s",
                "throughput rec/s",
                "p50 ms",
                "p99 ms",
                "avg batch tokens",
                "avg batch size",
            ),
            simulated_llm,
        ),
        Workload(
            "E",
            "memory: tracemalloc bytes per queued record, model blocked",
            ("bytes/record",),
            memory,
        ),
    )
}
DEFAULT_KEYS = tuple(WORKLOADS)
