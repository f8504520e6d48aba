"""Workload D's simulated LLM: cost model, token costs and Poisson arrivals.

A batch of ``T`` tokens takes ``2 ms + 0.5 µs x T``. Token costs follow a
log-normal with median 60 and sigma 1 (mean about 99), capped at 2,000
tokens, drawn from a fixed seed so that every system sees the same requests.

The offered load is 80 % of the saturated throughput, which is *measured*
once per run of the harness: the simulated model alone (no batcher) is
called back to back on batches filled to the 8,192-token target from the
cost sample, under asyncio, and records per second are counted. The
analytic figure, ``(8192 / mean_cost) / (2 ms + 0.5 µs x 8192)``, is printed
beside it; the measured one is lower because an event loop's timers wake
late (epoll waits in whole milliseconds), and using the analytic one would
offer nearly 90 % of what the model can really do. Arrivals are a Poisson
process at the offered rate (exponential gaps, fixed seed).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import time
from dataclasses import dataclass
from itertools import accumulate

import anyio

from benchmarks.process_fns import SimulatedLLM

FIXED_S = 0.002
PER_TOKEN_S = 0.5e-6
TARGET_BATCH_COST = 8192
MAX_BATCH_SIZE = 256
"""The default of every system under test; D does not override it."""
MEDIAN_TOKENS = 60
SIGMA = 1.0
MAX_TOKENS = 2000
LOAD = 0.8
SEED = 20240604
_COST_SAMPLE = 100_000


@dataclass(frozen=True)
class Schedule:
    """What every system is offered: when each request arrives and what it costs."""

    offsets_s: list[float]
    """Arrival time of request ``i``, in seconds from the start."""
    costs: list[int]
    """Tokens of request ``i``; the record of request ``i`` is the int ``i``."""
    mean_cost: float
    analytic_per_s: float
    saturated_per_s: float
    """Measured; see the module docstring."""
    rate_per_s: float


def batch_seconds(tokens: float) -> float:
    """How long the simulated model takes for a batch of ``tokens`` tokens."""
    return FIXED_S + PER_TOKEN_S * tokens


def analytic_throughput(mean_cost: float) -> float:
    """Records per second if every batch is filled to the target cost."""
    records_per_batch = min(MAX_BATCH_SIZE, TARGET_BATCH_COST / mean_cost)
    return records_per_batch / batch_seconds(records_per_batch * mean_cost)


def plan(duration_s: float, *, calibration_batches: int, load: float = LOAD) -> Schedule:
    """The arrivals of one D run lasting ``duration_s`` at ``load`` (a fraction of the
    measured saturation); every system gets the same."""
    costs = cost_sample()
    mean_cost = sum(costs) / len(costs)
    saturated = measure_throughput(calibration_batches)
    rate = load * saturated
    offsets = _poisson_offsets(random.Random(SEED + 1), rate, duration_s)
    if len(offsets) > len(costs):
        raise ValueError(f"duration_s too long for {_COST_SAMPLE} drawn costs")
    analytic = analytic_throughput(mean_cost)
    return Schedule(offsets, costs[: len(offsets)], mean_cost, analytic, saturated, rate)


@functools.cache
def cost_sample() -> list[int]:
    """Token costs in request order (log-normal, capped, fixed seed)."""
    rng = random.Random(SEED)
    mu = math.log(MEDIAN_TOKENS)
    draws = (rng.lognormvariate(mu, SIGMA) for _ in range(_COST_SAMPLE))
    return [min(MAX_TOKENS, max(1, round(draw))) for draw in draws]


def measure_throughput(batches: int) -> float:
    """Records per second of the model alone, fed back to back on full batches."""
    costs = cost_sample()
    model = SimulatedLLM(
        double=False,
        costs=costs,
        fixed_s=FIXED_S,
        per_token_s=PER_TOKEN_S,
        sleep=asyncio.sleep,
    )

    async def feed() -> float:
        start = time.perf_counter()
        for batch in _full_batches(costs, batches):
            await model.process(batch)
        return time.perf_counter() - start

    elapsed = anyio.run(feed, backend="asyncio")
    return model.records / elapsed


def _full_batches(costs: list[int], count: int) -> list[list[int]]:
    """``count`` batches of consecutive records, each filled up to the target cost."""
    batches: list[list[int]] = []
    batch: list[int] = []
    tokens = 0
    for record, cost in enumerate(costs):
        if batch and (tokens + cost > TARGET_BATCH_COST or len(batch) == MAX_BATCH_SIZE):
            batches.append(batch)
            if len(batches) == count:
                break
            batch, tokens = [], 0
        batch.append(record)
        tokens += cost
    return batches


def _poisson_offsets(rng: random.Random, rate: float, duration_s: float) -> list[float]:
    expected = int(rate * duration_s * 1.2) + 100
    offsets = list(accumulate(rng.expovariate(rate) for _ in range(expected)))
    return [offset for offset in offsets if offset < duration_s]
