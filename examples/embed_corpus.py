"""Embed a whole corpus with ``map()``: results in input order, with a progress bar.

The offline-job shape: one call pushes every text through a padding-aware
:class:`~batcher.TokenBatcher` with backpressure (at most ``max_queue_size`` texts in
flight, so a corpus of any length takes bounded memory), and yields the embeddings
in the order of the texts. The progress bar moves from the first batch on. Uses the
all-MiniLM-L6-v2 model of ``embed_minilm.py``; needs the ``examples`` extra::

    python examples/embed_corpus.py            # 2,000 sentences
    python examples/embed_corpus.py 200        # fewer
"""

from __future__ import annotations

import sys
import time
from typing import Any

import anyio

from batcher import BatchStats

try:  # run as a script from examples/, or imported as examples.embed_corpus
    from embed_minilm import MiniLM, make_corpus, padded_batcher  # type: ignore[import-not-found, no-redef, unused-ignore]
except ImportError:
    from examples.embed_minilm import MiniLM, make_corpus, padded_batcher


async def embed_all(
    minilm: MiniLM, texts: list[str], *, target_batch_tokens: int, progress: bool
) -> tuple[list[Any], BatchStats]:
    """Return the embedding of every text, in order, and the batcher's statistics."""
    batcher = padded_batcher(minilm, target_batch_tokens)  # priced by the model's tokenizer, grouped
    async with batcher, batcher.map(texts, progress=progress) as embeddings:
        vectors = [vector async for vector in embeddings]
    return vectors, batcher.stats


def main(n_texts: int = 2000, *, target_batch_tokens: int = 4096, progress: bool = True) -> list[Any]:
    """Embed ``n_texts`` generated sentences; print throughput and padding efficiency;
    return the embeddings in the order of the sentences."""
    texts = make_corpus(n_texts, seed=1)
    minilm = MiniLM()
    started = time.perf_counter()
    vectors, stats = anyio.run(
        lambda: embed_all(minilm, texts, target_batch_tokens=target_batch_tokens, progress=progress)
    )
    elapsed = time.perf_counter() - started
    print(f"{n_texts} texts in {elapsed:.2f} s: {n_texts / elapsed:.1f} texts/s, {stats.total_batches} batches")
    print(f"padding efficiency {minilm.padding_efficiency:.1%}")
    return vectors


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:2]))
