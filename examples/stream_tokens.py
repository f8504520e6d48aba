"""Streaming tokens: many clients share a simulated LLM that generates a different
number of tokens for each prompt, and each client prints its tokens as they arrive.

The model is an async generator: every step (1 ms plus 1 µs per sequence still
generating) yields one token per prompt of the batch, or ``END`` for a prompt that
is done. It asks ``current_batch().wanted(i)`` before generating for a prompt, so
a client that leaves early (every fifth one here, after a few tokens) costs
nothing more. Run it under asyncio (default) or trio:
``python examples/stream_tokens.py trio``.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio

from batcher import END, BatchStats, TokenBatcher, current_batch

WORDS = "the quick brown fox jumps over a lazy dog while models answer prompts in batches".split()


@dataclass(frozen=True)
class Request:
    prompt: str
    max_tokens: int  # how long this prompt's answer turns out to be

    def estimate_tokens(self) -> int:
        return len(self.prompt) // 4 + self.max_tokens


async def simulated_llm(batch: list[Request]) -> AsyncIterator[list[object]]:
    """Yield one token per request a step until every answer is complete."""
    rng = random.Random(len(batch))
    generated = [0] * len(batch)
    wanted = current_batch().wanted
    while True:
        live = [i for i, request in enumerate(batch) if generated[i] < request.max_tokens and wanted(i)]
        if not live:
            return
        await anyio.sleep(0.001 + 1e-6 * len(live))  # one decoding step for the sequences still generating
        step: list[object] = []
        for i in range(len(batch)):
            if i in live:
                step.append(rng.choice(WORDS))
                generated[i] += 1
            else:
                step.append(END)  # done (or nobody listens any more): its stream ends now
        yield step


async def run(clients: int, seed: int, quiet: bool) -> BatchStats:
    rng = random.Random(seed)
    received: dict[int, int] = {}
    async with TokenBatcher(simulated_llm, target_batch_tokens=2_048, max_batch_size=32) as batcher:

        async def client(n: int) -> None:
            request = Request(" ".join(rng.choices(WORDS, k=rng.randint(3, 40))), rng.randint(1, 60))
            leave_after = rng.randint(1, 5) if n % 5 == 0 else None
            tokens: list[str] = []
            async with batcher.stream(request) as stream:
                async for token in stream:
                    tokens.append(token)
                    if not quiet:
                        print(f"client {n:3}: {token}")
                    if leave_after is not None and len(tokens) == leave_after:
                        break  # this client has seen enough: the model stops generating for it
            expected = leave_after if leave_after is not None else request.max_tokens
            assert len(tokens) == min(expected, request.max_tokens)
            received[n] = len(tokens)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(client, n)
        elapsed = time.perf_counter() - started
    stats = batcher.stats
    print(f"{clients} clients received {sum(received.values())} tokens in {elapsed:.2f} s")
    print(f"{stats.total_batches} batches, avg {stats.avg_batch_size:.1f} requests")
    print(stats)
    return stats


def main(clients: int = 50, backend: str = "asyncio", seed: int = 0, quiet: bool = False) -> BatchStats:
    return anyio.run(run, clients, seed, quiet, backend=backend)


if __name__ == "__main__":
    main(backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
