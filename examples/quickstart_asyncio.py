"""Quickstart under asyncio: many tasks each embed one text; the batcher batches them."""

from __future__ import annotations

import asyncio

from batcher import Prompt, TokenBatcher


async def embed(batch: list[Prompt]) -> list[list[float]]:
    """Stands in for a model: one call for the whole batch."""
    await asyncio.sleep(0.01)
    return [[float(len(p.text)), float(p.text.count(" "))] for p in batch]


async def run() -> list[list[float]]:
    texts = [f"document number {i} " * (1 + i % 7) for i in range(100)]
    async with TokenBatcher(embed, target_batch_tokens=2_000) as batcher:
        vectors = await asyncio.gather(*(batcher.call(Prompt(text)) for text in texts))
        print(batcher.stats)
    return vectors


def main() -> list[list[float]]:
    vectors = asyncio.run(run())
    print(f"embedded {len(vectors)} texts; first: {vectors[0]}")
    return vectors


if __name__ == "__main__":
    main()
