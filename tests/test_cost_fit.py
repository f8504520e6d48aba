"""cost_model="measured": the fit of batch times and the rule that picks a batch,
without an event loop."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest

from batcher._cost_fit import WARMUP, CostFit, choose, fit_batch_time
from batcher._measured import MeasuredAssembly


def timed(fixed: float, per_record: float, per_token: float, batches: int = 40, seed: int = 0) -> CostFit:
    """A fit fed ``batches`` batches of random shapes timed by this cost function, with 1 % noise."""
    rng = random.Random(seed)
    fit = CostFit()
    for _ in range(batches):
        records, longest = rng.randint(1, 64), rng.randint(4, 256)
        padded = records * longest
        seconds = (fixed + per_record * records + per_token * padded) * rng.uniform(0.99, 1.01)
        fit.add(records, padded, seconds)
    return fit


class TestFit:
    def test_recovers_the_terms_of_a_linear_cost(self) -> None:
        fixed, per_record, per_token = timed(2e-3, 1e-5, 2e-7).coefficients or (0, 0, 0)
        assert fixed == pytest.approx(2e-3, rel=0.05)
        assert per_record == pytest.approx(1e-5, rel=0.3)
        assert per_token == pytest.approx(2e-7, rel=0.05)

    def test_no_term_is_negative(self) -> None:
        # Time that falls with size: the unconstrained fit would give a negative slope.
        samples = [(n, n * 10, 0.01 - 1e-5 * n) for n in range(1, 50)]
        assert min(fit_batch_time(samples)) >= 0

    def test_no_prediction_before_warm_up(self) -> None:
        fit = CostFit()
        for _ in range(WARMUP - 1):
            fit.add(4, 40, 0.01)
        assert fit.coefficients is None
        assert fit.predict(4, 40) == 0.0
        fit.add(4, 40, 0.01)
        assert fit.predict(4, 40) == pytest.approx(0.01)

    def test_identical_batches_fit_as_a_fixed_cost(self) -> None:
        samples = [(8, 800, 0.004)] * 10  # one shape only: the terms cannot be told apart
        assert fit_batch_time(samples)[0] + 8 * fit_batch_time(samples)[1] + 800 * fit_batch_time(samples)[
            2
        ] == pytest.approx(0.004)


class TestChoose:
    # Candidates as (records, padded tokens, real tokens): the whole queue in one
    # padded batch, or its short records alone.
    CANDIDATES: ClassVar[list[tuple[int, int, int]]] = [(64, 64 * 256, 40 * 30 + 24 * 250), (40, 40 * 32, 40 * 30)]

    def test_fixed_cost_dominates_one_large_batch_wins(self) -> None:
        assert choose(self.CANDIDATES, timed(5e-3, 0, 1e-9)) == 0

    def test_padding_dominates_the_grouped_batch_wins(self) -> None:
        assert choose(self.CANDIDATES, timed(1e-4, 0, 1e-6)) == 1

    def test_without_a_per_record_or_token_cost_the_larger_batch_wins(self) -> None:
        fit = CostFit()
        for records in range(1, 20):
            fit.add(records, records * 10, 0.003)
        assert fit.coefficients == pytest.approx((0.003, 0, 0))
        assert choose([(3, 30, 30), (9, 90, 90), (5, 50, 50)], fit) == 1

    def test_the_first_candidate_during_warm_up(self) -> None:
        assert choose(self.CANDIDATES[::-1], CostFit()) == 0


def measured(fit: CostFit, target: int = 1000, window: int = 1000) -> MeasuredAssembly[int]:
    return MeasuredAssembly(target_cost=target, max_batch_size=100, window=window, fit=fit)


class TestMeasuredAssembly:
    COSTS: ClassVar[list[int]] = [40, 5, 6, 40, 5, 7, 39, 6, 5, 41]

    def test_padding_dominated_hardware_gets_batches_of_one_length(self) -> None:
        assembly = measured(timed(1e-5, 0, 1e-6))
        for item, cost in enumerate(self.COSTS):
            assembly.add(item, cost)
        batch, cost = assembly.take()
        assert sorted(batch) == [0, 3, 6, 9]  # the oldest (40) with its kind
        assert cost == 4 * 41

    def test_fixed_cost_dominated_hardware_gets_the_whole_queue(self) -> None:
        assembly = measured(timed(1e-2, 0, 1e-9))
        for item, cost in enumerate(self.COSTS):
            assembly.add(item, cost)
        batch, cost = assembly.take()
        assert sorted(batch) == list(range(10))  # within the padded budget: 10 x 41 = 410
        assert cost == 410
        assert not assembly

    def test_a_cost_per_record_prefers_the_batch_with_more_records(self) -> None:
        # Budget 200: grouped around the oldest (40) takes the four 40s (164); the arrival
        # prefix takes five records (5 x 40 = 200). Where a record costs the same whatever
        # its length, the five go.
        assembly = measured(timed(1e-2, 1e-4, 1e-9), target=200)
        for item, cost in enumerate(self.COSTS):
            assembly.add(item, cost)
        assert assembly.take() == ([0, 1, 2, 3, 4], 200)

    def test_withdrawn_records_take_no_slot_and_leave_the_pool(self) -> None:
        dead = {0, 2}
        assembly: MeasuredAssembly[int] = MeasuredAssembly(
            target_cost=100, max_batch_size=3, window=1000, fit=timed(1e-2, 0, 1e-9), live=lambda i: i not in dead
        )
        for item in range(6):
            assembly.add(item, 10)
        assert assembly.take()[0] == [1, 3, 4]
        assert assembly.take()[0] == [5]
        assert not assembly
