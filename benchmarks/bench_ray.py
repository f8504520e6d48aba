"""Benchmark R: batches served by Ray actor replicas (``batcher.ray``).

    python -m benchmarks --with-ray          # after A-E and S
    python -m benchmarks.bench_ray [--quick] [--reps N]

Three measurements, on a local Ray cluster (``ray.init(num_cpus=2)``, started here
unless one is running):

- **Throughput against replicas**: the corpus of ``examples/ray_replicas.py`` (token-
  budgeted, length-grouped batches of 4,096 padded tokens) through 1, 2 and 4 replicas
  of its simulated GPU model (20 ms per batch plus 2 µs per padded token, slept in the
  actor). Repetitions alternate the replica counts; medians. Targets: 2 replicas at
  least 1.8x one replica, 4 at least 3.4x.
- **The Ray hop**: the same model with no work (0 s per batch) in process (a plain
  function: a worker thread) and on one replica, 16 records per batch: the time per
  batch of each and their difference, the cost of sending a batch to an actor and
  getting its results back.
- **Failover**: 2 replicas, one killed once half the records are answered: every
  result must be there, right, in place and delivered once.

Actors are started before the clock starts and killed after it stops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import anyio
import ray

from batcher import DynamicBatcher
from batcher.ray import RayReplicas
from examples.ray_replicas import SimulatedGPU, make_prompts, serve_corpus

#: Replica counts and the speed-up each must reach over one replica.
TARGETS = {2: 1.8, 4: 3.4}
HOP_BATCH = 16


async def _throughput(records: int, counts: Sequence[int], reps: int) -> dict[int, list[float]]:
    prompts = make_prompts(records)
    measured: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(reps):
        for count in counts:
            run = await serve_corpus(prompts, count)
            measured[count].append(run.throughput)
    return measured


async def _per_batch(process_fn: object, batches: int) -> float:
    """Seconds per batch of ``HOP_BATCH`` records through ``process_fn`` (a model or replicas)."""
    batcher = DynamicBatcher(process_fn, max_batch_size=HOP_BATCH, max_concurrent_batches=1)  # type: ignore[arg-type]
    async with batcher:
        started = time.perf_counter()
        async with batcher.map(make_prompts(batches * HOP_BATCH, seed=1)) as results:
            async for _ in results:
                pass
        elapsed = time.perf_counter() - started
    return elapsed / batcher.stats.total_batches


async def _hop(batches: int, reps: int) -> tuple[float, float]:
    local: list[float] = []
    remote: list[float] = []
    for _ in range(reps):
        local.append(await _per_batch(SimulatedGPU(0.0, 0.0), batches))
        remote.append(await _per_batch(RayReplicas(SimulatedGPU, 0.0, 0.0), batches))
    return statistics.median(local), statistics.median(remote)


async def _measure(quick: bool, reps: int) -> list[str]:
    records = 300 if quick else 2_000
    counts = (1, 2, 4)
    measured = await _throughput(records, counts, reps)
    base = statistics.median(measured[1])
    lines = [f"R  Ray replicas: {records:,} records, simulated GPU model, {reps} repetition(s), medians"]
    for count in counts:
        values = measured[count]
        spread = f"{min(values) / base:.2f}-{max(values) / base:.2f}x" if len(values) > 1 else ""
        median = statistics.median(values)
        lines.append(f"    {count} replica(s): {median:8,.0f} records/s  {median / base:5.2f}x one replica  {spread}")
    local, remote = await _hop(40 if quick else 300, reps)
    lines.append(
        f"    Ray hop, {HOP_BATCH} records per batch, no model work: in process {local * 1e3:.3f} ms per batch, "
        f"one replica {remote * 1e3:.3f} ms, overhead {(remote - local) * 1e3:.3f} ms"
    )
    failover = await serve_corpus(make_prompts(records), 2, kill_at=records // 2)  # checks every answer
    lost = failover.per_replica[0]
    lines.append(
        f"    failover: 2 replicas, one killed midway: {failover.records:,} of {records:,} answers right and in place; "
        f"replica 0 failed {lost.failures}x, replaced {lost.replacements}x"
    )
    lines.append("")
    for count, least in TARGETS.items():
        ratio = statistics.median(measured[count]) / base
        verdict = "PASS" if ratio >= least else "FAIL"
        lines.append(f"    {verdict}  R: {count} replicas at least {least}x one replica: {ratio:.2f}x")
    verdict = "PASS" if lost.failures == 1 and failover.records == records else "FAIL"
    lines.append(f"    {verdict}  R: no lost or duplicated result across a replica killed mid-run")
    return lines


def run(quick: bool = False, reps: int | None = None) -> str:
    """Run benchmark R and return its report (starts a local Ray cluster if none runs)."""
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        return "\n".join(anyio.run(_measure, quick, reps or (1 if quick else 3)))
    finally:
        if started_here:
            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ray", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition: checks correctness")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    args = parser.parse_args(argv)
    print(run(args.quick, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
