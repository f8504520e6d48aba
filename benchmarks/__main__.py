"""``python -m benchmarks``: run the workloads and print the report.

    python -m benchmarks                 # A-E, full sizes, 3 repetitions
    python -m benchmarks --quick         # tiny sizes, 1 repetition, for CI
    python -m benchmarks --only A,C --reps 5
    python -m benchmarks --with-model    # A-E and F (real embedding model)
    python -m benchmarks --only S        # the scaling section alone (issue 11)
    python -m benchmarks --gpu           # also G, batching on a CUDA device, brief (skipped without one)
    python -m benchmarks --with-ray      # also R, batches served by Ray actor replicas

After A-E comes S, the scaling section (:mod:`benchmarks.scaling`): the cost per
record against producers, backlog, batch size and grouping pool, the bytes per
waiting caller, the longest event-loop stall, and issue 11's targets.

Progress goes to stderr, the report to stdout. The exit status is 1 if any
result was wrong or any run failed, 2 on bad arguments, else 0; the
PASS/FAIL lines of the targets do not change it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from benchmarks import llm_sim, report, scaling
from benchmarks.runner import Results, freeze_imports, run_all
from benchmarks.systems import ALL_SYSTEMS, discover
from benchmarks.workloads import DEFAULT_KEYS, FULL, QUICK, WORKLOADS, Setup, Sizes

MODEL_KEY = "F"
SCALING_KEY = "S"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    keys = _selected(args)
    sizes = QUICK if args.quick else FULL
    setup = Setup(sizes, double=args.quick, llm_plan=_llm_plan(sizes, keys, args.load))
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    systems, messages = discover(args.systems.split(","))
    # A peer's import can bring a large library (batched imports torch): freeze what the
    # imports made out of the cyclic GC, so its full collections do not slow every column.
    frozen = freeze_imports()
    messages.append(f"gc.freeze(): {frozen:,} objects from the imports left out of collections")
    workloads = [WORKLOADS[key] for key in keys if key in WORKLOADS]

    _print_header(args.quick, reps, setup, keys, messages)
    results = run_all(workloads, systems, setup, reps)
    if workloads:
        print(report.table(results, workloads, systems))
    verdicts = report.targets(results, keys)
    if verdicts:
        print("\nTargets (batcher = batcher/asyncio unless named)")
        print("\n".join(verdict.line() for verdict in verdicts))
    failures = results.failures
    if SCALING_KEY in keys:
        failures += _run_scaling(args.quick, reps)
    if MODEL_KEY in keys:
        failures += _run_model_workload(args.quick)
    if args.gpu:
        failures += _run_gpu_workload(args.quick)
    if args.with_ray:
        failures += _run_ray_workload(args.quick)
    return _finish(results, failures)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, 1 repetition: checks correctness",
    )
    parser.add_argument("--only", help="comma-separated workloads, e.g. A,B (F is the real-model one)")
    parser.add_argument("--reps", type=int, help="repetitions per system (default 3, quick 1)")
    parser.add_argument("--with-model", action="store_true", help="also run F, the real embedding model")
    parser.add_argument("--gpu", action="store_true", help="also run G, batching on a CUDA device (skipped without)")
    parser.add_argument("--with-ray", action="store_true", help="also run R, batches served by Ray actor replicas")
    parser.add_argument(
        "--load",
        type=float,
        default=llm_sim.LOAD,
        help=f"D's offered load as a fraction of saturation (default {llm_sim.LOAD})",
    )
    parser.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help=f"comma-separated columns to run (default {','.join(ALL_SYSTEMS)})",
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be >= 1")
    if not 0 < args.load <= 1:
        parser.error("--load must be in (0, 1]")
    unknown = set(args.systems.split(",")) - set(ALL_SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if args.only:
        unknown = {key.strip().upper() for key in args.only.split(",")} - {
            *WORKLOADS,
            SCALING_KEY,
            MODEL_KEY,
        }
        if unknown:
            parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def _selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        wanted = {key.strip().upper() for key in args.only.split(",")}
        return [key for key in (*DEFAULT_KEYS, SCALING_KEY, MODEL_KEY) if key in wanted]
    return [*DEFAULT_KEYS, SCALING_KEY, *([MODEL_KEY] if args.with_model else [])]


def _print_header(quick: bool, reps: int, setup: Setup, keys: Sequence[str], messages: Sequence[str]) -> None:
    mode = "quick (checks correctness; too small to judge speed)" if quick else "full"
    print(f"batcher benchmarks: {mode}, {reps} repetition(s), medians")
    print(f"python {platform.python_version()}, {_versions()}, {os.cpu_count()} cpus")
    print(f"platform {platform.platform()}")
    for line in [*messages, *_size_lines(setup, keys)]:
        print(f"  {line}")
    print()


def _size_lines(setup: Setup, keys: Sequence[str]) -> list[str]:
    sizes, plan = setup.sizes, setup.llm_plan
    lines = []
    if "A" in keys:
        budget = f"{sizes.closed_budget_s:g} s"
        lines.append(f"A: {sizes.closed_records:,} records or {budget}, whichever first")
    if "B" in keys:
        lines.append(f"B: {sizes.open_records:,} records")
    if "C" in keys:
        budget = f"{sizes.lone_budget_s:g} s"
        lines.append(f"C: {sizes.lone_requests:,} requests or {budget}, whichever first")
    if plan is not None:
        lines += [
            f"D: {len(plan.offsets_s):,} arrivals in {sizes.llm_duration_s:g} s"
            f" at {plan.rate_per_s:,.0f}/s = {plan.rate_per_s / plan.saturated_per_s:.0%} of saturation;",
            f"   saturation {plan.saturated_per_s:,.0f}/s measured (model alone,"
            f" full batches), {plan.analytic_per_s:,.0f}/s analytic;",
            f"   mean cost {plan.mean_cost:.1f} tokens",
        ]
    if "E" in keys:
        queue = f"max_queue_size={sizes.memory_queue_size:,}"
        lines.append(f"E: {sizes.memory_records:,} records queued, {queue}")
    return lines


def _llm_plan(sizes: Sizes, keys: Sequence[str], load: float) -> llm_sim.Schedule | None:
    if "D" not in keys:
        return None
    batches = sizes.llm_calibration_batches
    return llm_sim.plan(sizes.llm_duration_s, calibration_batches=batches, load=load)


def _versions() -> str:
    parts = []
    for package in ("anyio", "trio"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} missing")
    return ", ".join(parts)


def _run_scaling(quick: bool, reps: int) -> list[str]:
    """Section S: the scaling tables and issue 11's targets (a failed run is a failure)."""
    print(f"\n{SCALING_KEY}  scaling: cost per record as the work grows")
    try:
        lines, checks = scaling.run(quick, reps)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return [f"{SCALING_KEY}: {type(exc).__name__}: {exc}"]
    print("\n".join(f"    {line}" if line else "" for line in lines))
    print("\nTargets of the scaling section")
    print("\n".join(check.line() for check in checks))
    return []


def _run_model_workload(quick: bool) -> list[str]:
    """Hook for workload F, a real embedding model, which lives in benchmarks/bench_embed.py.

    Its ``run(quick)`` returns the report text (or ``(label, value)`` rows). A
    missing model dependency, at import or at run time, skips F with a hint.
    """
    print()
    try:
        report_text = importlib.import_module("benchmarks.bench_embed").run(quick=quick)
    except ImportError as exc:
        print(f"{MODEL_KEY}  skipped: it needs the examples extra (pip install -e '.[examples]'): {exc}")
        return []
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return [f"{MODEL_KEY}: {type(exc).__name__}: {exc}"]
    if isinstance(report_text, str):
        print(report_text)
    else:
        print(f"{MODEL_KEY}  real embedding model")
        for label, value in report_text:
            print(f"    {label:<28} {value}")
    return []


def _run_gpu_workload(quick: bool) -> list[str]:
    """Workload G (``benchmarks/bench_gpu.py``), brief: it says why it skipped when there is no CUDA device."""
    return _run_optional("G", "benchmarks.bench_gpu", "examples", quick)


def _run_ray_workload(quick: bool) -> list[str]:
    """Workload R (``benchmarks/bench_ray.py``): throughput against Ray replicas, the Ray hop, failover."""
    return _run_optional("R", "benchmarks.bench_ray", "ray", quick)


def _run_optional(key: str, module: str, extra: str, quick: bool) -> list[str]:
    """Print the report of ``module.run(quick=...)``; skip it, saying so, if ``extra`` is not installed."""
    print()
    try:
        print(importlib.import_module(module).run(quick=quick))
    except ImportError as exc:
        print(f"{key}  skipped: it needs the {extra} extra (pip install -e '.[{extra}]'): {exc}")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return [f"{key}: {type(exc).__name__}: {exc}"]
    return []


def _finish(results: Results, failures: Sequence[str]) -> int:
    if not failures:
        return 0
    print("\nFAILED")
    print("\n".join(f"  {failure}" for failure in failures))
    return 1


if __name__ == "__main__":
    sys.exit(main())
