"""The main demo: many concurrent clients share a simulated LLM through a TokenBatcher.

The simulated model takes 2 ms per call plus 2 µs per token in the batch, so
batching many requests into one call is what makes it fast. Clients send prompts of
random length; the batcher forms token-budgeted batches whenever the model is free.
Run it under asyncio (default) or trio: ``python examples/simulated_llm.py trio``.
"""

from __future__ import annotations

import random
import sys
import time

import anyio

from batcher import BatchStats, Prompt, TokenBatcher

WORDS = "the quick brown fox jumps over a lazy dog while models answer prompts in batches".split()


async def simulated_llm(batch: list[Prompt]) -> list[str]:
    tokens = sum(p.estimate_tokens() for p in batch)
    await anyio.sleep(0.002 + 2e-6 * tokens)
    return [f"answer to {len(p.text)} characters" for p in batch]


async def run(clients: int, requests_per_client: int, seed: int) -> BatchStats:
    rng = random.Random(seed)
    latencies: list[float] = []
    async with TokenBatcher(simulated_llm, target_batch_tokens=4_096) as batcher:

        async def client(n: int) -> None:
            for _ in range(requests_per_client):
                text = " ".join(rng.choices(WORDS, k=rng.randint(3, 300)))
                started = time.perf_counter()
                answer = await batcher.call(Prompt(text))
                latencies.append(time.perf_counter() - started)
                assert answer == f"answer to {len(text)} characters"

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(client, n)
        elapsed = time.perf_counter() - started
    stats = batcher.stats
    latencies.sort()
    print(f"{stats.total_completed} requests from {clients} clients in {elapsed:.2f} s")
    print(f"throughput {stats.total_completed / elapsed:,.0f} requests/s")
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    print(f"latency p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms")
    print(f"{stats.total_batches} batches, avg {stats.avg_batch_size:.1f} requests, {stats.avg_batch_cost:,.0f} tokens")
    print(f"model utilization {stats.utilization:.0%}")
    print(stats)
    return stats


def main(clients: int = 200, requests_per_client: int = 20, backend: str = "asyncio", seed: int = 0) -> BatchStats:
    return anyio.run(run, clients, requests_per_client, seed, backend=backend)


if __name__ == "__main__":
    main(backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
