"""``python -m benchmarks.compare REF``: this tree's batcher against the one at a
git revision, side by side in one run.

    python -m benchmarks.compare HEAD~3                  # A and B, 7 reps, asyncio and trio
    python -m benchmarks.compare main --only A --reps 11 --backends asyncio

The batcher package at ``REF`` is extracted with ``git archive`` into a
temporary directory and imported under another name, so both versions run in
the same process, on the same workloads, interleaved rep by rep (the order
rotates). The floor runs beside them. For each workload it prints the median
records/s of every column, each one's ratio to the floor, and the median (and
range) of the per-rep ratio of this tree to ``REF``: the figure to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from types import ModuleType

import anyio

import batcher
from benchmarks.runner import run_once
from benchmarks.systems import FLOOR, System, _open_floor, _opener
from benchmarks.workloads import FULL, WORKLOADS, Setup

THROUGHPUT_KEYS = ("A", "B")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    with tempfile.TemporaryDirectory() as folder:
        base = _load_revision(args.ref, Path(folder))
        systems = [System(FLOOR, "asyncio", _open_floor, asyncio.sleep)]
        for backend in args.backends.split(","):
            systems.append(System(f"{args.ref}/{backend}", backend, _opener(base.DynamicBatcher), anyio.sleep))
            systems.append(System(f"tree/{backend}", backend, _opener(batcher.DynamicBatcher), anyio.sleep))
        setup = Setup(FULL, double=False, llm_plan=None)
        for key in args.only.split(","):
            rates = _measure(key.strip().upper(), systems, setup, args.reps)
            print(_report(key, rates, args.ref, args.backends.split(",")))
    return 0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the git revision to compare with (e.g. HEAD~1, main)")
    parser.add_argument("--only", default=",".join(THROUGHPUT_KEYS), help="comma-separated: A, B (default both)")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per column (default 7)")
    parser.add_argument("--backends", default="asyncio,trio", help="comma-separated (default asyncio,trio)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    if {key.strip().upper() for key in args.only.split(",")} - set(THROUGHPUT_KEYS):
        parser.error("--only takes A and/or B, the throughput workloads")
    if set(args.backends.split(",")) - {"asyncio", "trio"}:
        parser.error("--backends takes asyncio and/or trio")
    return args


def tree_beside_args(prog: str, doc: str, quick: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments of a benchmark that runs this tree beside a revision: ``--ref``,
    ``--reps`` and ``--quick`` (``quick`` says what it does)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--ref", help="a git revision to run beside this tree (e.g. HEAD~1)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser.parse_args(argv)


@contextmanager
def trees_beside(ref: str | None) -> Iterator[dict[str, ModuleType]]:
    """``{ref: the batcher at ref, "tree": this one}`` (only this one without ``ref``)."""
    with tempfile.TemporaryDirectory() as folder:
        trees = {ref: _load_revision(ref, Path(folder))} if ref else {}
        trees["tree"] = batcher
        yield trees


def _load_revision(ref: str, folder: Path) -> ModuleType:
    """Import the ``batcher`` package as it is at ``ref`` under the name ``batcher_base``."""
    archive = subprocess.run(["git", "archive", ref, "batcher"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    init = folder / "batcher" / "__init__.py"
    spec = importlib.util.spec_from_file_location("batcher_base", init, submodule_search_locations=[str(init.parent)])
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["batcher_base"] = module
    spec.loader.exec_module(module)
    return module


def _measure(key: str, systems: list[System], setup: Setup, reps: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {system.name: [] for system in systems}
    for rep in range(reps):
        shift = rep % len(systems)
        for system in systems[shift:] + systems[:shift]:
            outcome = run_once(WORKLOADS[key], system, setup)
            if outcome.wrong:
                raise SystemExit(f"{key} {system.name}: {outcome.wrong} wrong results")
            rates[system.name].append(outcome.metrics["records/s"])
            print(f"{key} rep {rep + 1}/{reps} {system.name} ...", file=sys.stderr, flush=True)
    return rates


def _report(key: str, rates: dict[str, list[float]], ref: str, backends: list[str]) -> str:
    median = {name: statistics.median(values) for name, values in rates.items()}
    lines = [f"{key}  records/s, median of {len(rates[FLOOR])}: floor {median[FLOOR]:,.0f}"]
    for backend in backends:
        theirs, ours = f"{ref}/{backend}", f"tree/{backend}"
        paired = [mine / base for mine, base in zip(rates[ours], rates[theirs], strict=True)]
        lines.append(
            f"   {backend:<8} {ref} {median[theirs]:,.0f} ({median[theirs] / median[FLOOR]:.3f} of floor)"
            f"   tree {median[ours]:,.0f} ({median[ours] / median[FLOOR]:.3f} of floor)"
            f"   tree/{ref} per rep: median {statistics.median(paired):.3f}, range {min(paired):.3f}-{max(paired):.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
