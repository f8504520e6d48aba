"""The printed report: one table of medians, then the project's targets.

The targets (issue 4) compare ``batcher/asyncio`` with flyte and the floor
on the same backend, check the lone-request latency on both backends, and
compare trio with asyncio; those of issue 11 ask whether ``batcher/asyncio``
is ahead of each peer (:mod:`benchmarks.peers`) on A and B throughput, C's
p50 and D's p99. Each line reads PASS or FAIL, or n/a when a column it needs
did not run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.runner import Results
from benchmarks.systems import ASYNC_BATCHER, BATCHED, FLOOR, FLYTE, OURS_ASYNCIO, OURS_TRIO, System
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


@dataclass(frozen=True)
class Median:
    """The median of ``metric`` for ``system`` on ``workload``."""

    workload: str
    system: str
    metric: str

    @property
    def systems(self) -> tuple[str, ...]:
        return (self.system,)

    def read(self, results: Results) -> float | None:
        return results.median(self.workload, self.system, self.metric)


@dataclass(frozen=True)
class Ratio:
    """``metric`` of ``top`` over that of ``bottom`` on ``workload``; ``None`` when ``bottom``'s is 0."""

    workload: str
    metric: str
    top: str
    bottom: str

    @property
    def systems(self) -> tuple[str, ...]:
        return (self.top, self.bottom)

    def read(self, results: Results) -> float | None:
        top = results.median(self.workload, self.top, self.metric)
        bottom = results.median(self.workload, self.bottom, self.metric)
        if top is None or bottom is None or bottom == 0:
            return None
        return top / bottom


@dataclass(frozen=True)
class Figure:
    """Numbers read from the results, and ``text``, the ``str.format`` template that prints them."""

    text: str
    readings: tuple[Median | Ratio, ...]


@dataclass(frozen=True)
class Target:
    """One line of the targets: ``passes`` gets the figure's numbers in order."""

    label: str
    figure: Figure
    passes: Callable[..., bool]

    def verdict(self, results: Results) -> Verdict:
        readings = self.figure.readings
        numbers = [number for reading in readings if (number := reading.read(results)) is not None]
        if len(numbers) < len(readings):
            needs = dict.fromkeys(system for reading in readings for system in reading.systems)
            return Verdict(self.label, f"needs {' and '.join(needs)}", None)
        return Verdict(self.label, self.figure.text.format(*numbers), self.passes(*numbers))


def _throughput(workload: str, top: str, bottom: str) -> Figure:
    return Figure("{:.2f}x", (Ratio(workload, "records/s", top, bottom),))


def _lone_p50(system: str) -> Figure:
    return Figure("{:.3f} ms", (Median("C", system, "p50 ms"),))


def _llm_tail(other: str) -> Figure:
    return Figure(
        f"p99 {{:.2f}}x, throughput {{:.3f}}x (>= {D_THROUGHPUT_TOLERANCE})",
        (Ratio("D", "p99 ms", OURS_ASYNCIO, other), Ratio("D", "throughput rec/s", OURS_ASYNCIO, other)),
    )


_MEMORY = Figure(
    "{:.0f} vs {:.0f} B",
    (Median("E", OURS_ASYNCIO, "bytes/record"), Median("E", FLYTE, "bytes/record")),
)


def _ahead_of(peer: str) -> tuple[Target, ...]:
    """Issue 11: ``batcher/asyncio`` ahead of ``peer`` on A, B, C and D."""
    lone_p50 = Figure("{:.3f} vs {:.3f} ms", (Median("C", OURS_ASYNCIO, "p50 ms"), Median("C", peer, "p50 ms")))
    return (
        Target(f"A throughput batcher / {peer} > 1x", _throughput("A", OURS_ASYNCIO, peer), lambda ratio: ratio > 1),
        Target(f"B throughput batcher / {peer} > 1x", _throughput("B", OURS_ASYNCIO, peer), lambda ratio: ratio > 1),
        Target(f"C p50 latency batcher < {peer}", lone_p50, lambda ours, theirs: ours < theirs),
        Target(
            f"D p99 batcher < {peer} at >= throughput",
            _llm_tail(peer),
            lambda p99, rate: p99 < 1 and rate >= D_THROUGHPUT_TOLERANCE,
        ),
    )


TARGETS: tuple[Target, ...] = (
    Target("A throughput batcher / flyte >= 20x", _throughput("A", OURS_ASYNCIO, FLYTE), lambda ratio: ratio >= 20),
    Target("A throughput batcher / floor >= 0.35", _throughput("A", OURS_ASYNCIO, FLOOR), lambda ratio: ratio >= 0.35),
    Target("A throughput trio / asyncio >= 0.8", _throughput("A", OURS_TRIO, OURS_ASYNCIO), lambda ratio: ratio >= 0.8),
    Target("B throughput batcher / flyte >= 10x", _throughput("B", OURS_ASYNCIO, FLYTE), lambda ratio: ratio >= 10),
    Target("B throughput batcher / floor >= 0.5", _throughput("B", OURS_ASYNCIO, FLOOR), lambda ratio: ratio >= 0.5),
    Target("B throughput trio / asyncio >= 0.8", _throughput("B", OURS_TRIO, OURS_ASYNCIO), lambda ratio: ratio >= 0.8),
    Target("C p50 latency batcher/asyncio < 1 ms", _lone_p50(OURS_ASYNCIO), lambda p50: p50 < 1.0),
    Target("C p50 latency batcher/trio < 1 ms", _lone_p50(OURS_TRIO), lambda p50: p50 < 1.0),
    Target(
        "D p99 batcher <= 0.5x flyte at >= throughput",
        _llm_tail(FLYTE),
        lambda p99, rate: p99 <= 0.5 and rate >= D_THROUGHPUT_TOLERANCE,
    ),
    Target("E bytes per queued record batcher <= flyte", _MEMORY, lambda ours, flyte: ours <= flyte),
    *_ahead_of(BATCHED),
    *_ahead_of(ASYNC_BATCHER),
)
"""The project's targets, in the order the report prints them."""


def targets(results: Results, workload_keys: Sequence[str]) -> list[Verdict]:
    """The verdict of each of :data:`TARGETS` whose workloads all ran."""
    return [
        target.verdict(results)
        for target in TARGETS
        if all(reading.workload in workload_keys for reading in target.figure.readings)
    ]


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
