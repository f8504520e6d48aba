"""The record cap against a padded budget, simulated on the CPU (issue 15).

Workload G's open loop (``benchmarks/bench_gpu.py``): its corpus (median 37 tokens,
8 to 512) submitted at once under a padded budget of 16,384 tokens, through a model
that sleeps as a small encoder on a GPU runs: ``--fixed-ms`` a batch (5) plus
``--per-token-ns`` a padded token (100), every shape warm. The budget holds short
texts by the hundreds (857 of 19 tokens), but ``max_batch_size``, 256 by default,
closes a batch first. Each policy runs with the default cap and with one the budget
reaches first (``budget // shortest text``), all batchers open at once and taking
turns, against the offline sorted bound that G reports: the corpus sorted by length
and cut into budget-full batches, with no cap.

    python -m benchmarks.bench_cap
    python -m benchmarks.bench_cap --fixed-ms 2 --per-token-ns 1000   # padding dominates
    python -m benchmarks.bench_cap --quick                            # checks the code (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import anyio

from batcher import TokenBatcher
from benchmarks.bench_cold_shapes import ColdShapeModel
from benchmarks.bench_gpu import corpus_lengths, one_pass, sorted_batches

BUDGET = 16_384
PASSES = 3
POLICIES: dict[str, dict[str, Any]] = {
    "FIFO sum": {},
    "padded grouped": {"cost_model": "padded", "group_by_cost": True},
    "measured": {"cost_model": "measured"},
}


def offline_rate(model: ColdShapeModel) -> tuple[float, int]:
    """Texts per second of the offline bound's batches (G's), run back to back."""
    batches = sorted_batches(model.lengths, BUDGET)
    started = time.perf_counter()
    for batch in batches:
        model(batch)
    return len(model.lengths) / (time.perf_counter() - started), len(batches)


async def _turns(
    model: ColdShapeModel, systems: dict[str, dict[str, Any]], passes: int
) -> dict[str, tuple[list[float], int]]:
    """Each system's texts/s in each of ``passes`` passes, taken in turns, and its batches a pass."""
    rates: dict[str, list[float]] = {name: [] for name in systems}
    counts: dict[str, int] = {}
    queue = len(model.lengths)
    async with AsyncExitStack() as stack:
        batchers = {
            name: await stack.enter_async_context(
                TokenBatcher(model, target_batch_tokens=BUDGET, max_queue_size=queue, **options)
            )
            for name, options in systems.items()
        }
        for batcher in batchers.values():  # the first pass: a measured fit forms
            await one_pass(batcher, model.lengths, False)
        for _ in range(passes):
            for name, batcher in batchers.items():
                model.batches = 0
                started = time.perf_counter()
                await one_pass(batcher, model.lengths, False)
                rates[name].append(len(model.lengths) / (time.perf_counter() - started))
                counts[name] = model.batches
    return {name: (rates[name], counts[name]) for name in systems}


def run(quick: bool = False, fixed_ms: float = 5.0, per_token_ns: float = 100.0, passes: int = PASSES) -> str:
    """The report: the bound, then each policy with each cap."""
    texts = 512 if quick else 4096
    lengths = corpus_lengths(texts)
    model = ColdShapeModel(lengths, 0.0, fixed_s=fixed_ms / 1e3, per_token_s=per_token_ns / 1e9)  # every shape warm
    bound, bound_batches = offline_rate(model)
    uncapped = BUDGET // min(lengths)
    systems = {
        f"{name}, max_batch_size {cap}": {**options, "max_batch_size": cap}
        for name, options in POLICIES.items()
        for cap in (256, uncapped)
    }
    results = anyio.run(_turns, model, systems, 1 if quick else passes)
    lines = [
        f"cap  {texts} texts, open loop, padded budget {BUDGET}; a batch sleeps {fixed_ms:g} ms + "
        f"{per_token_ns:g} ns a padded token; {1 if quick else passes} timed passes in turns, medians",
        f"   offline sorted bound (no cap)                {bound:8.0f} texts/s  batches {bound_batches:4d}",
    ]
    for name, (rates, batches) in results.items():
        rate = statistics.median(rates)
        lines.append(
            f"   {name:<44} {rate:8.0f} texts/s  batches {batches:4d}  x bound {rate / bound:4.2f}"
            f"  ({min(rates):.0f}-{max(rates):.0f})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cap", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 texts, one pass: checks the code")
    parser.add_argument("--fixed-ms", type=float, default=5.0, help="ms a batch costs whatever its size (5)")
    parser.add_argument("--per-token-ns", type=float, default=100.0, help="ns a padded token costs (100)")
    parser.add_argument("--passes", type=int, default=PASSES, help=f"timed passes of each system ({PASSES})")
    args = parser.parse_args(argv)
    print(run(args.quick, args.fixed_ms, args.per_token_ns, args.passes))


if __name__ == "__main__":
    main()
