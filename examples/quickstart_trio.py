"""Quickstart under trio: the same TokenBatcher, unchanged, in a trio nursery."""

from __future__ import annotations

import trio

from batcher import Prompt, TokenBatcher


async def embed(batch: list[Prompt]) -> list[list[float]]:
    """Stands in for a model: one call for the whole batch."""
    await trio.sleep(0.01)
    return [[float(len(p.text)), float(p.text.count(" "))] for p in batch]


async def run() -> dict[int, list[float]]:
    texts = [f"document number {i} " * (1 + i % 7) for i in range(100)]
    vectors: dict[int, list[float]] = {}

    async with TokenBatcher(embed, target_batch_tokens=2_000) as batcher:

        async def one(i: int) -> None:
            vectors[i] = await batcher.call(Prompt(texts[i]))

        async with trio.open_nursery() as nursery:
            for i in range(len(texts)):
                nursery.start_soon(one, i)
        print(batcher.stats)
    return vectors


def main() -> dict[int, list[float]]:
    vectors = trio.run(run)
    print(f"embedded {len(vectors)} texts; first: {vectors[0]}")
    return vectors


if __name__ == "__main__":
    main()
