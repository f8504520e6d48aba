"""Runs the workloads on the systems, alternating systems within each repetition.

For each workload, repetition ``r`` runs every system once in turn (asyncio,
trio, flyte, the peers, floor; a system skips the workloads in its
``skips``), then repetition ``r + 1`` does the same, so slow drift
on a noisy machine hits every column alike. Each run gets a fresh event loop
(``anyio.run``) after a ``gc.collect()``. The report shows the median of the
repetitions for every metric.
"""

from __future__ import annotations

import gc
import statistics
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from benchmarks.systems import System
from benchmarks.workloads import Outcome, Setup, Workload


async def _wait_blocked() -> None:
    await anyio.wait_all_tasks_blocked()


def freeze_imports() -> int:
    """Import what the runs would import lazily, then freeze every object so far out
    of the cyclic GC (``gc.freeze()``); return how many. On trio, the harness's first
    ``anyio.wait_all_tasks_blocked()`` imports ``trio.testing``, and with it pytest:
    about 9,000 objects that, imported mid-run, made every later full collection
    longer (the stall of section S: 15-22 ms after them, 8-9 ms without)."""
    for backend in ("asyncio", "trio"):
        anyio.run(_wait_blocked, backend=backend)
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass
class Cell:
    """Every repetition of one workload on one system."""

    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def wrong(self) -> int:
        return sum(outcome.wrong for outcome in self.outcomes)

    def median(self, metric: str) -> float | None:
        values = [outcome.metrics[metric] for outcome in self.outcomes if metric in outcome.metrics]
        return statistics.median(values) if values else None


@dataclass
class Results:
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def cell(self, workload: str, system: str) -> Cell:
        return self.cells.setdefault((workload, system), Cell())

    def median(self, workload: str, system: str, metric: str) -> float | None:
        cell = self.cells.get((workload, system))
        return cell.median(metric) if cell else None

    @property
    def failures(self) -> list[str]:
        lines = []
        for (workload, system), cell in self.cells.items():
            if cell.wrong:
                lines.append(f"{workload} on {system}: {cell.wrong} wrong results")
            lines += [f"{workload} on {system}: {error}" for error in cell.errors]
        return lines


def run_all(workloads: Sequence[Workload], systems: Sequence[System], setup: Setup, reps: int) -> Results:
    results = Results()
    for workload in workloads:
        for rep in range(1, reps + 1):
            for system in systems:
                if workload.key in system.skips:
                    continue
                _progress(f"{workload.key} rep {rep}/{reps} {system.name} ...")
                cell = results.cell(workload.key, system.name)
                try:
                    outcome = run_once(workload, system, setup)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    cell.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                cell.outcomes.append(outcome)
                _progress(f"    {_summary(outcome)}")
    return results


def run_once(workload: Workload, system: System, setup: Setup) -> Outcome:
    """One run in a fresh event loop, failed if it outlasts ``run_limit_s``."""

    async def limited() -> Outcome:
        with anyio.fail_after(setup.sizes.run_limit_s):
            return await workload.run(system, setup)

    gc.collect()
    return anyio.run(limited, backend=system.backend)


def _summary(outcome: Outcome) -> str:
    parts = [f"{name}={value:,.3f}" for name, value in outcome.metrics.items()]
    if outcome.wrong:
        parts.append(f"WRONG={outcome.wrong}")
    return " ".join(parts)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
