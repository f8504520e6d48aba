"""Synchronous code: 16 threads share one simulated model through a SyncBatcher.

Each thread calls ``batcher.call(prompt)`` and blocks for its answer, as code in a
thread pool or a WSGI worker does. The batcher runs on an event loop in a
background thread and batches the threads' calls together. The model is a plain
function (it runs in a worker thread) that takes 2 ms per call plus 2 µs per
token, so one call for many prompts is what makes it fast.
Run it under asyncio (default) or trio: ``python examples/sync_threads.py trio``.
"""

from __future__ import annotations

import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from batcher import BatchStats, Prompt, SyncBatcher, TokenBatcher

WORDS = "the quick brown fox jumps over a lazy dog while models answer prompts in batches".split()


def simulated_model(batch: list[Prompt]) -> list[str]:
    tokens = sum(prompt.estimate_tokens() for prompt in batch)
    time.sleep(0.002 + 2e-6 * tokens)  # the model's work
    return [f"answer to {len(prompt.text)} characters" for prompt in batch]


def client(batcher: SyncBatcher[Prompt, str], calls: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(calls):
        text = " ".join(rng.choices(WORDS, k=rng.randint(3, 300)))
        answer = batcher.call(Prompt(text), timeout=10)
        assert answer == f"answer to {len(text)} characters"


def main(threads: int = 16, calls_per_thread: int = 200, backend: str = "asyncio") -> BatchStats:
    batcher = SyncBatcher(TokenBatcher(simulated_model, target_batch_tokens=4_096), backend=backend)
    with batcher, ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        for done in [pool.submit(client, batcher, calls_per_thread, seed) for seed in range(threads)]:
            done.result()
        elapsed = time.perf_counter() - started
    stats = batcher.stats
    print(f"{stats.total_completed} calls from {threads} threads in {elapsed:.2f} s ({backend})")
    print(f"throughput {stats.total_completed / elapsed:,.0f} calls/s")
    print(f"{stats.total_batches} batches, avg {stats.avg_batch_size:.1f} calls, {stats.avg_batch_cost:,.0f} tokens")
    print(f"model utilization {stats.utilization:.0%}")
    return stats


if __name__ == "__main__":
    main(backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
