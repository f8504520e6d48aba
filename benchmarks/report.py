"""The printed report: one table of medians, then the project's targets.

The targets (issue 4) compare ``batcher/asyncio`` with flyte and the floor
on the same backend, check the lone-request latency on both backends, and
compare trio with asyncio. Each line reads PASS or FAIL, or n/a when a
column it needs did not run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.runner import Results
from benchmarks.systems import FLOOR, FLYTE, OURS_ASYNCIO, OURS_TRIO, System
from benchmarks.workloads import Workload

D_THROUGHPUT_TOLERANCE = 0.98
"""D's "at >= throughput" allows 2 % for noise: both run near the offered rate."""


@dataclass(frozen=True)
class Verdict:
    label: str
    value: str
    passed: bool | None
    """``None`` when a needed column is missing."""

    def line(self) -> str:
        status = "n/a " if self.passed is None else ("PASS" if self.passed else "FAIL")
        return f"  {status}  {self.label:<48} {self.value}"


def table(results: Results, workloads: Sequence[Workload], systems: Sequence[System]) -> str:
    names = [system.name for system in systems]
    width = max(16, *(len(name) + 2 for name in names))
    lines = [f"{'workload / metric':<24}" + "".join(f"{name:>{width}}" for name in names)]
    for workload in workloads:
        lines.append(f"{workload.key}  {workload.title}")
        for metric in workload.metrics:
            cells = [_cell(results, workload.key, name, metric) for name in names]
            lines.append(f"    {metric:<20}" + "".join(f"{cell:>{width}}" for cell in cells))
    return "\n".join(lines)


def targets(results: Results, workload_keys: Sequence[str]) -> list[Verdict]:
    checks: list[Callable[[Results], Verdict]] = []
    if "A" in workload_keys:
        checks += [
            _ratio(
                "A throughput batcher / flyte >= 20x",
                "A",
                OURS_ASYNCIO,
                FLYTE,
                minimum=20,
            ),
            _ratio(
                "A throughput batcher / floor >= 0.35",
                "A",
                OURS_ASYNCIO,
                FLOOR,
                minimum=0.35,
            ),
            _ratio(
                "A throughput trio / asyncio >= 0.8",
                "A",
                OURS_TRIO,
                OURS_ASYNCIO,
                minimum=0.8,
            ),
        ]
    if "B" in workload_keys:
        checks += [
            _ratio(
                "B throughput batcher / flyte >= 10x",
                "B",
                OURS_ASYNCIO,
                FLYTE,
                minimum=10,
            ),
            _ratio(
                "B throughput batcher / floor >= 0.5",
                "B",
                OURS_ASYNCIO,
                FLOOR,
                minimum=0.5,
            ),
            _ratio(
                "B throughput trio / asyncio >= 0.8",
                "B",
                OURS_TRIO,
                OURS_ASYNCIO,
                minimum=0.8,
            ),
        ]
    if "C" in workload_keys:
        checks += [_lone_p50(OURS_ASYNCIO), _lone_p50(OURS_TRIO)]
    if "D" in workload_keys:
        checks.append(_llm_tail)
    if "E" in workload_keys:
        checks.append(_memory)
    return [check(results) for check in checks]


def _ratio(label: str, workload: str, top: str, bottom: str, *, minimum: float) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        ratio = _divide(
            results.median(workload, top, "records/s"),
            results.median(workload, bottom, "records/s"),
        )
        if ratio is None:
            return Verdict(label, f"needs {top} and {bottom}", None)
        return Verdict(label, f"{ratio:.2f}x", ratio >= minimum)

    return check


def _lone_p50(system: str) -> Callable[[Results], Verdict]:
    def check(results: Results) -> Verdict:
        label = f"C p50 latency {system} < 1 ms"
        p50 = results.median("C", system, "p50 ms")
        if p50 is None:
            return Verdict(label, f"needs {system}", None)
        return Verdict(label, f"{p50:.3f} ms", p50 < 1.0)

    return check


def _llm_tail(results: Results) -> Verdict:
    label = "D p99 batcher <= 0.5x flyte at >= throughput"
    p99 = _divide(
        results.median("D", OURS_ASYNCIO, "p99 ms"),
        results.median("D", FLYTE, "p99 ms"),
    )
    rate = _divide(
        results.median("D", OURS_ASYNCIO, "throughput rec/s"),
        results.median("D", FLYTE, "throughput rec/s"),
    )
    if p99 is None or rate is None:
        return Verdict(label, f"needs {OURS_ASYNCIO} and {FLYTE}", None)
    value = f"p99 {p99:.2f}x, throughput {rate:.3f}x (>= {D_THROUGHPUT_TOLERANCE})"
    return Verdict(label, value, p99 <= 0.5 and rate >= D_THROUGHPUT_TOLERANCE)


def _memory(results: Results) -> Verdict:
    label = "E bytes per queued record batcher <= flyte"
    ours = results.median("E", OURS_ASYNCIO, "bytes/record")
    flyte = results.median("E", FLYTE, "bytes/record")
    if ours is None or flyte is None:
        return Verdict(label, f"needs {OURS_ASYNCIO} and {FLYTE}", None)
    return Verdict(label, f"{ours:.0f} vs {flyte:.0f} B", ours <= flyte)


def _divide(top: float | None, bottom: float | None) -> float | None:
    if top is None or bottom is None or bottom == 0:
        return None
    return top / bottom


def _cell(results: Results, workload: str, system: str, metric: str) -> str:
    cell = results.cells.get((workload, system))
    if cell is None:
        return "-"
    value = cell.median(metric)
    if value is None:
        return "error" if cell.errors else "-"
    return _format(metric, value)


def _format(metric: str, value: float) -> str:
    if math.isnan(value):
        return "nan"
    if metric.endswith("ms"):
        return f"{value:.3f}"
    if value >= 100 or metric.endswith(" run"):
        return f"{value:,.0f}"
    return f"{value:.1f}"
