"""Workload D's simulated LLM: cost model, token costs and Poisson arrivals.

A batch of ``T`` tokens takes ``2 ms + 0.5 µs x T``. Token costs follow a
log-normal with median 60 and sigma 1 (mean about 99), capped at 2,000
tokens, drawn from a fixed seed so that every system sees the same requests.

The offered load is 80 % of the saturated throughput, computed analytically
from the cost model at the target batch size: a batch of ``8192 / mean_cost``
records (at most ``max_batch_size``) takes ``2 ms + 0.5 µs x 8192``, and the
saturated throughput is the first divided by the second. Arrivals are a
Poisson process at that rate (exponential gaps, fixed seed).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from itertools import accumulate

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
    saturated_per_s: float
    rate_per_s: float


def batch_seconds(tokens: float) -> float:
    """How long the simulated model takes for a batch of ``tokens`` tokens."""
    return FIXED_S + PER_TOKEN_S * tokens


def saturated_throughput(mean_cost: float) -> float:
    """Records per second when every batch is filled to the target cost."""
    records_per_batch = min(MAX_BATCH_SIZE, TARGET_BATCH_COST / mean_cost)
    return records_per_batch / batch_seconds(records_per_batch * mean_cost)


@functools.cache
def schedule(duration_s: float) -> Schedule:
    """Arrivals for a run of ``duration_s`` seconds (cached: every system shares it)."""
    costs = _draw_costs(random.Random(SEED), _COST_SAMPLE)
    mean_cost = sum(costs) / len(costs)
    saturated = saturated_throughput(mean_cost)
    rate = LOAD * saturated
    offsets = _poisson_offsets(random.Random(SEED + 1), rate, duration_s)
    if len(offsets) > len(costs):
        raise ValueError(f"duration_s too long for {_COST_SAMPLE} drawn costs")
    return Schedule(offsets, costs[: len(offsets)], mean_cost, saturated, rate)


def _draw_costs(rng: random.Random, count: int) -> list[int]:
    mu = math.log(MEDIAN_TOKENS)
    return [
        min(MAX_TOKENS, max(1, round(rng.lognormvariate(mu, SIGMA))))
        for _ in range(count)
    ]


def _poisson_offsets(rng: random.Random, rate: float, duration_s: float) -> list[float]:
    expected = int(rate * duration_s * 1.2) + 100
    offsets = list(accumulate(rng.expovariate(rate) for _ in range(expected)))
    return [offset for offset in offsets if offset < duration_s]
