"""Batches served by model replicas on a local Ray cluster (``batcher.ray``).

A simulated GPU model (a fixed time per batch plus a time per padded token, slept
in the actor) runs as 1, 2 and 4 Ray actor replicas behind one ``TokenBatcher``,
which keeps forming token-budgeted, length-grouped batches and sends each to the
least busy replica. It prints the throughput and each replica's batch count. A
last run kills one replica midway: its batch is retried on another replica, a new
actor takes its place, and every request is still answered, once and rightly.

This starts a local Ray cluster (``ray.init(num_cpus=2)``) and shuts it down at the
end. Needs the ``ray`` extra: ``pip install -e '.[ray]'``, then
``python examples/ray_replicas.py`` (or ``... trio``).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass

import anyio
import ray

from batcher import BatchEnded, Event, Prompt
from batcher.ray import RayReplicas, ReplicaStats

WORDS = "the quick brown fox jumps over a lazy dog while models answer prompts in batches".split()


class SimulatedGPU:
    """One replica's model: ``per_batch_s`` per call plus ``per_token_s`` per padded
    token (``len(batch) * longest record``), as a padded transformer on a GPU costs.
    Answers each prompt's length in characters."""

    def __init__(self, per_batch_s: float = 0.02, per_token_s: float = 2e-6) -> None:
        self.per_batch_s = per_batch_s
        self.per_token_s = per_token_s

    def __call__(self, batch: list[Prompt]) -> list[int]:
        padded = len(batch) * max(prompt.estimate_tokens() for prompt in batch)
        time.sleep(self.per_batch_s + self.per_token_s * padded)
        return [len(prompt.text) for prompt in batch]


def make_prompts(count: int, seed: int = 0) -> list[Prompt]:
    rng = random.Random(seed)
    return [Prompt(" ".join(rng.choices(WORDS, k=rng.randint(8, 400)))) for _ in range(count)]


@dataclass
class Run:
    replicas: int
    records: int
    seconds: float
    per_replica: tuple[ReplicaStats, ...]

    @property
    def throughput(self) -> float:
        return self.records / self.seconds


async def serve_corpus(
    prompts: list[Prompt], replicas: int, *, kill_at: int | None = None, per_batch_s: float = 0.02
) -> Run:
    """Push ``prompts`` through ``replicas`` replicas and check every answer; with
    ``kill_at``, kill replica 0's actor once that many records have been answered."""
    pool = RayReplicas(SimulatedGPU, per_batch_s, num_replicas=replicas)
    batcher = pool.token_batcher(target_batch_tokens=4_096, cost_model="padded", group_by_cost=True)
    if kill_at is not None:
        batcher.add_observer(KillOnce(pool, kill_at))
    async with batcher:  # the actors start here (not timed) and are killed on the way out
        started = time.perf_counter()
        async with batcher.map(prompts) as results:
            answers = [answer async for answer in results]
        seconds = time.perf_counter() - started
    assert answers == [len(prompt.text) for prompt in prompts], "an answer is missing, wrong or out of place"
    assert batcher.stats.total_completed == len(prompts), "a future ended twice or not at all"
    return Run(replicas, len(prompts), seconds, pool.stats)


class KillOnce:
    """An observer that kills replica 0's actor once ``at`` records have been answered."""

    def __init__(self, pool: RayReplicas, at: int) -> None:
        self.pool, self.at, self.answered = pool, at, 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchEnded) and self.answered < self.at:
            self.answered += event.size
            if self.answered >= self.at:
                ray.kill(self.pool.actors[0])


def report(run: Run, baseline: Run | None) -> None:
    speedup = f", {run.throughput / baseline.throughput:.2f}x one replica" if baseline else ""
    batches = ", ".join(f"{s.batches}" for s in run.per_replica)
    print(f"{run.replicas} replica(s): {run.throughput:,.0f} records/s{speedup}; batches per replica: {batches}")


async def demo(records: int, replica_counts: tuple[int, ...]) -> list[Run]:
    prompts = make_prompts(records)
    runs: list[Run] = []
    for count in replica_counts:
        runs.append(await serve_corpus(prompts, count))
        report(runs[-1], runs[0] if count != replica_counts[0] else None)
    failover = await serve_corpus(prompts, 2, kill_at=records // 2)
    lost = failover.per_replica[0]
    print(
        f"2 replicas, one killed midway: all {failover.records} answers right; "
        f"replica 0 failed {lost.failures} time(s), replaced {lost.replacements} time(s), now {lost.state}"
    )
    return [*runs, failover]


def main(records: int = 2_000, replica_counts: tuple[int, ...] = (1, 2, 4), backend: str = "asyncio") -> list[Run]:
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        return anyio.run(demo, records, replica_counts, backend=backend)
    finally:
        if started_here:
            ray.shutdown()


if __name__ == "__main__":
    main(backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
