"""What ``cost_model="measured"`` costs per batch in a closed loop, on asyncio and trio.

The batcher forms a batch when a worker is free, so in a closed loop (each producer
awaits its result before its next record) the time it spends choosing a batch and
refitting the batch times is time the model waits. Here 64 producers send a corpus of
token counts (``bench_gpu.corpus_lengths``) through a plain function that sleeps
``MODEL_S`` a batch (a small model on a GPU: the fixed cost dominates), with a padded
budget that every waiting record fits (64 x 512, as ``bench_gpu --parts unbound``) and
with one that splits them (16,384). Each line gives, per batch, the median µs of the
choosing (``MeasuredAssembly.take``; ``GroupedAssembly.take`` for ``group_by_cost=True``,
for reference), of the refit (``CostFit.add``), and the pass's ms per batch; and how
often the first candidate was taken without planning the others.

Run it in a git worktree of another revision to compare::

    python -m benchmarks.bench_choose
    python -m benchmarks.bench_choose --quick     # a check that it runs (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio

from batcher import TokenBatcher, _assembly, _cost_fit, _measured
from benchmarks.bench_gpu import PRODUCERS, corpus_lengths, one_pass

MODEL_S = 4e-3
PASSES = 3
BUDGETS = (PRODUCERS * 512, 16_384)
POLICIES: dict[str, dict[str, Any]] = {
    "padded grouped": {"cost_model": "padded", "group_by_cost": True},
    "measured": {"cost_model": "measured"},
}


def _model(batch: list[int]) -> list[int]:
    time.sleep(MODEL_S)
    return batch


@contextmanager
def _timed(owner: Any, name: str, into: list[float]) -> Iterator[None]:
    """Add the seconds of each call of ``owner.name`` to ``into`` while inside."""
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _line(backend: str, policy: str, budget: int, lengths: list[int], passes: int) -> str:
    takes: list[float] = []
    refits: list[float] = []
    took = _measured.MeasuredAssembly if policy == "measured" else _assembly.GroupedAssembly
    counts = {"batches": 0, "sure": 0}
    first_is_chosen = getattr(_measured, "first_is_chosen", None)  # None: a revision without the shortcut

    def model(batch: list[int]) -> list[int]:
        counts["batches"] += 1
        return _model(batch)

    def counted(*args: Any) -> bool:
        assert first_is_chosen is not None
        counts["sure"] += (sure := first_is_chosen(*args))
        return sure

    async def run() -> float:
        async with TokenBatcher(model, target_batch_tokens=budget, max_queue_size=5_000, **POLICIES[policy]) as b:
            await one_pass(b, lengths, closed=True)  # warm: the fit has its window
            counts["batches"] = 0
            started = time.perf_counter()
            with _timed(took, "take", takes), _timed(_cost_fit.CostFit, "add", refits):
                if first_is_chosen is not None:
                    _measured.first_is_chosen = counted  # type: ignore[attr-defined]
                try:
                    for _ in range(passes):
                        await one_pass(b, lengths, closed=True)
                finally:
                    if first_is_chosen is not None:
                        _measured.first_is_chosen = first_is_chosen  # type: ignore[attr-defined]
            return time.perf_counter() - started

    seconds = anyio.run(run, backend=backend)
    refit = f"{statistics.median(refits) * 1e6:5.0f}" if refits else "    -"
    shortcut = (
        f"  first taken unplanned {counts['sure']}/{len(takes)}" if policy == "measured" and first_is_chosen else ""
    )
    return (
        f"{backend:<8} {policy:<15} budget {budget:6d}  choose {statistics.median(takes) * 1e6:5.0f} µs  "
        f"refit {refit} µs  {seconds / counts['batches'] * 1e3:5.2f} ms/batch{shortcut}"
    )


def run(quick: bool = False) -> str:
    lengths = corpus_lengths(512 if quick else 4096)
    passes = 1 if quick else PASSES
    lines = [
        f"closed loop of {PRODUCERS}, a model of {MODEL_S * 1e3:g} ms a batch, {len(lengths)} texts, {passes} passes"
    ]
    for backend in ("asyncio", "trio"):
        for budget in BUDGETS:
            lines += [_line(backend, policy, budget, lengths, passes) for policy in POLICIES]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_choose", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 texts, one pass: checks the code")
    print(run(quick=parser.parse_args(argv).quick))


if __name__ == "__main__":
    main()
