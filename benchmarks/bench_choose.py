"""What ``cost_model="measured"`` costs per batch in a closed loop, on asyncio and trio.

The batcher forms a batch when a worker is free, so in a closed loop (each producer
awaits its result before its next record) the time it spends choosing a batch and
refitting the batch times is time the model waits. Here 64 producers send a corpus of
token counts (``bench_gpu.corpus_lengths``) through a plain function that sleeps
``MODEL_S`` a batch (a small model on a GPU: the fixed cost dominates): FIFO with a sum
budget of 16,384, which every waiting record fits, and padded grouping and ``measured``
with a padded budget every waiting record fits (64 x 512, as ``bench_gpu --parts
unbound``) and with one that splits them (16,384). Every batcher is open at once;
each runs a warm pass, then ``PASSES`` rounds of one pass each, taking turns. Each line
gives the median µs of a take (``take()`` of the system's assembly) and of a refit
(``CostFit.add``), the median ms a batch with its range, throughput against FIFO's, and
how often ``measured`` planned the first candidate alone.

Run it in a git worktree of another revision to compare::

    python -m benchmarks.bench_choose
    python -m benchmarks.bench_choose --quick     # a check that it runs (CI)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio

from batcher import TokenBatcher, _assembly, _cost_fit, _measured
from benchmarks.bench_gpu import PRODUCERS, corpus_lengths, one_pass

MODEL_S = 4e-3
PASSES = 5
#: (policy, padded or sum budget): FIFO with a sum budget, and the padded policies with a
#: budget every waiting record fits (as FIFO's batches reach) and with one that splits them.
SYSTEMS = (
    ("FIFO sum", 16_384),
    ("padded grouped", PRODUCERS * 512),
    ("measured", PRODUCERS * 512),
    ("padded grouped", 16_384),
    ("measured", 16_384),
)
POLICIES: dict[str, dict[str, Any]] = {
    "FIFO sum": {},
    "padded grouped": {"cost_model": "padded", "group_by_cost": True},
    "measured": {"cost_model": "measured"},
}


@dataclass
class Tally:
    """One system's timed passes: seconds of each and a batch of each, and its calls' seconds."""

    seconds: list[float] = field(default_factory=list)
    per_batch: list[float] = field(default_factory=list)
    takes: list[float] = field(default_factory=list)
    refits: list[float] = field(default_factory=list)
    batches: int = 0
    unplanned: int = 0


def _model(batch: list[int]) -> list[int]:
    time.sleep(MODEL_S)
    return batch


@contextmanager
def _timed(owner: Any, name: str, into: Callable[[], list[float]]) -> Iterator[None]:
    """Add the seconds of each call of ``owner.name`` to ``into()`` while inside."""
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            into().append(time.perf_counter() - started)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def _instrumented(now: list[Tally]) -> Iterator[None]:
    """Time every take and refit, and count the takes that planned the first candidate
    alone, into the tally ``now[0]`` (the system whose pass is running)."""
    first_is_chosen = getattr(_measured, "first_is_chosen", None)  # None: a revision without it

    def counted(*args: Any) -> bool:
        assert first_is_chosen is not None
        now[0].unplanned += (sure := first_is_chosen(*args))
        return sure

    with (
        _timed(_assembly.FifoAssembly, "take", lambda: now[0].takes),
        _timed(_assembly.GroupedAssembly, "take", lambda: now[0].takes),
        _timed(_measured.MeasuredAssembly, "take", lambda: now[0].takes),
        _timed(_cost_fit.CostFit, "add", lambda: now[0].refits),
    ):
        if first_is_chosen is not None:
            _measured.first_is_chosen = counted  # type: ignore[attr-defined]
        try:
            yield
        finally:
            if first_is_chosen is not None:
                _measured.first_is_chosen = first_is_chosen  # type: ignore[attr-defined]


def _tallies(backend: str, lengths: list[int], passes: int) -> list[Tally]:
    """Every system's batcher open at once, each warmed by a pass, then ``passes``
    rounds of one pass each, taking turns."""
    tallies = [Tally() for _ in SYSTEMS]
    now = [tallies[0]]

    def model(batch: list[int]) -> list[int]:
        now[0].batches += 1
        return _model(batch)

    async def run() -> None:
        async with AsyncExitStack() as stack:
            batchers = [
                await stack.enter_async_context(
                    TokenBatcher(model, target_batch_tokens=budget, max_queue_size=5_000, **POLICIES[policy])
                )
                for policy, budget in SYSTEMS
            ]
            for batcher in batchers:
                await one_pass(batcher, lengths, closed=True)  # warm: the fit has its window
            for tally in tallies:
                tally.batches = 0
            with _instrumented(now):
                for _ in range(passes):
                    for tally, batcher in zip(tallies, batchers, strict=True):
                        now[0], before, started = tally, tally.batches, time.perf_counter()
                        await one_pass(batcher, lengths, closed=True)
                        tally.seconds.append(time.perf_counter() - started)
                        tally.per_batch.append(tally.seconds[-1] / (tally.batches - before))

    anyio.run(run, backend=backend)
    return tallies


def _line(backend: str, system: tuple[str, int], tally: Tally, fifo: float) -> str:
    policy, budget = system
    per_batch = statistics.median(tally.per_batch)
    refit = f"{statistics.median(tally.refits) * 1e6:5.0f}" if tally.refits else "    -"
    unplanned = f"  first alone {tally.unplanned}/{len(tally.takes)}" if policy == "measured" else ""
    return (
        f"{backend:<8} {policy:<15} budget {budget:6d}  choose {statistics.median(tally.takes) * 1e6:5.0f} µs  "
        f"refit {refit} µs  {per_batch * 1e3:5.2f} ms/batch ({min(tally.per_batch) * 1e3:.2f}-"
        f"{max(tally.per_batch) * 1e3:.2f}; {fifo / statistics.median(tally.seconds):4.2f}x FIFO sum's "
        f"texts/s){unplanned}"
    )


def run(quick: bool = False) -> str:
    lengths = corpus_lengths(512 if quick else 4096)
    passes = 1 if quick else PASSES
    lines = [
        f"closed loop of {PRODUCERS}, a model of {MODEL_S * 1e3:g} ms a batch, {len(lengths)} texts, "
        f"{passes} timed passes each, in turns (median µs a call, median ms a batch and its range)"
    ]
    for backend in ("asyncio", "trio"):
        tallies = _tallies(backend, lengths, passes)
        fifo = statistics.median(tallies[0].seconds)
        lines += [_line(backend, system, tally, fifo) for system, tally in zip(SYSTEMS, tallies, strict=True)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_choose", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 texts, one pass: checks the code")
    print(run(quick=parser.parse_args(argv).quick))


if __name__ == "__main__":
    main()
