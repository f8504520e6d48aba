"""Cold batch shapes, simulated on the CPU: what a GPU's per-thread warm-up does to
the batching policies, without a GPU (issue 15).

On an H200 (workload G, ``benchmarks/bench_gpu.py``), PyTorch ran a batch shape
(records x padded length) that its thread had not run before in 48-85 ms, against
4-29 ms once it had. The model here sleeps ``FIXED_S + PER_TOKEN_S x padded tokens``,
plus ``COLD_S`` the first time its thread runs a shape: a small encoder on a GPU,
where the fixed cost dominates. Each policy runs ``PASSES`` passes over one corpus
in one batcher, in an open loop (every text submitted at once) and in a closed loop
(64 producers, each awaiting its result before its next text); each pass prints its
throughput, its batches and how many of them were of a shape new to their thread.

A policy that keeps forming new shapes pays the cold cost again and again; one
whose shapes repeat runs warm from its second pass. Run it in a git worktree of
another revision to compare that revision's policies with this tree's::

    python -m benchmarks.bench_cold_shapes
    python -m benchmarks.bench_cold_shapes --quick     # a check that it runs (CI)
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import anyio

from batcher import TokenBatcher
from benchmarks.bench_gpu import corpus_lengths, one_pass

FIXED_S = 2e-3
PER_TOKEN_S = 1e-7
COLD_S = 50e-3
BUDGET = 16_384
PASSES = 3
#: How much longer an outlier batch takes (a stall of the machine, a collection).
OUTLIER = 3.0
POLICIES: dict[str, dict[str, Any]] = {
    "FIFO sum": {},
    "FIFO padded": {"cost_model": "padded"},
    "padded grouped": {"cost_model": "padded", "group_by_cost": True},
    "measured": {"cost_model": "measured"},
}


class ColdShapeModel:
    """Sleeps for a batch as a small GPU model runs it, a cold shape included."""

    def __init__(
        self,
        lengths: list[int],
        cold_s: float,
        noise: float = 0.0,
        outliers: float = 0.0,
        per_record_s: float = 0.0,
        *,
        fixed_s: float = FIXED_S,
        per_token_s: float = PER_TOKEN_S,
    ) -> None:
        self.lengths, self.cold_s, self.noise, self.outliers = lengths, cold_s, noise, outliers
        self.per_record_s, self.fixed_s, self.per_token_s = per_record_s, fixed_s, per_token_s
        self._rng = random.Random(11)
        self.shapes: set[tuple[int, int, int]] = set()  # (thread, records, longest)
        self.batches = self.new = 0

    def __call__(self, batch: list[int]) -> list[int]:
        longest = max(self.lengths[i] for i in batch)
        seconds = self.fixed_s + self.per_record_s * len(batch) + self.per_token_s * len(batch) * longest
        shape = (threading.get_ident(), len(batch), longest)
        if shape not in self.shapes:
            self.shapes.add(shape)
            self.new += 1
            seconds += self.cold_s
        self.batches += 1
        seconds *= self._rng.uniform(1 - self.noise, 1 + self.noise)
        if self._rng.random() < self.outliers:
            seconds *= OUTLIER
        time.sleep(seconds)
        return batch


async def _passes(
    options: dict[str, Any], lengths: list[int], closed: bool, cold_s: float, passes: int, noise: tuple[float, ...]
) -> list[str]:
    model = ColdShapeModel(lengths, cold_s, *noise)
    cells = []
    async with TokenBatcher(model, target_batch_tokens=BUDGET, max_queue_size=len(lengths), **options) as batcher:
        for _ in range(passes):
            model.batches = model.new = 0
            started = time.perf_counter()
            await one_pass(batcher, lengths, closed)
            rate = len(lengths) / (time.perf_counter() - started)
            cells.append(f"{rate:7.0f}/s {model.batches:4d} b {model.new:4d} new")
    return cells


def run(
    quick: bool = False,
    passes: int = PASSES,
    noise: float = 0.0,
    outliers: float = 0.0,
    policies: Sequence[str] = (),
    per_record_s: float = 0.0,
) -> str:
    """The report: one line per loop and policy, one cell per pass; each batch's time
    (``per_record_s`` more per record) scaled by a factor drawn uniformly within
    ``1 +- noise``, and by ``OUTLIER`` with probability ``outliers``."""
    texts, cold_s = (512, 5e-3) if quick else (4096, COLD_S)
    lengths = corpus_lengths(texts)
    lines = [
        f"cold shapes (simulated): {texts} texts, batch = {FIXED_S * 1e3:g} ms + {per_record_s * 1e6:g} µs per record "
        f"+ {PER_TOKEN_S * 1e9:g} ns per padded "
        f"token, + {cold_s * 1e3:g} ms for a shape new to its thread, +-{noise:.0%} noise, "
        f"{outliers:.0%} of batches x{OUTLIER:g}; budget {BUDGET}; "
        f"passes 1..{passes}",
    ]
    for closed in (False, True):
        for name, options in POLICIES.items():
            if policies and name not in policies:
                continue
            cells = anyio.run(_passes, options, lengths, closed, cold_s, passes, (noise, outliers, per_record_s))
            lines.append(f"{'closed 64' if closed else 'open     '} {name:<15} " + " | ".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cold_shapes", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 texts, a 5 ms cold cost: checks the code")
    parser.add_argument("--passes", type=int, default=PASSES, help=f"passes per policy ({PASSES})")
    parser.add_argument("--noise", type=float, default=0.0, help="each batch's time within 1 +- this (0)")
    parser.add_argument("--outliers", type=float, default=0.0, help=f"the share of batches that take x{OUTLIER:g} (0)")
    parser.add_argument("--per-record-us", type=float, default=0.0, help="µs more a batch per record (0)")
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=(), help="which policies (all)")
    args = parser.parse_args(argv)
    print(run(args.quick, args.passes, args.noise, args.outliers, args.policies, args.per_record_us * 1e-6))


if __name__ == "__main__":
    main()
