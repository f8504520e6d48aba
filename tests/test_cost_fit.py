"""cost_model="measured": the fit of batch times and the rule that picks a batch,
without an event loop."""

from __future__ import annotations

import random
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher import _measured
from batcher._cost_fit import (
    _TERMS,
    MARGIN,
    WARMUP,
    WINDOW,
    CostFit,
    _Sums,
    choose,
    first_is_chosen,
    fit_batch_time,
)
from batcher._measured import MeasuredAssembly


def timed(
    fixed: float, per_record: float, per_token: float, batches: int = 40, seed: int = 0, per_new: float = 0.0
) -> CostFit:
    """A fit fed ``batches`` batches of random shapes (a few of them again) timed by
    this cost function, with 1 % noise; ``per_new`` more the first time a shape runs."""
    rng = random.Random(seed)
    fit = CostFit()
    shapes: list[tuple[int, int]] = []
    for _ in range(batches):
        if shapes and rng.random() < 0.3:
            records, padded = rng.choice(shapes)
        else:
            records = rng.randint(1, 64)
            padded = records * rng.randint(4, 256)
        seconds = (fixed + per_record * records + per_token * padded) * rng.uniform(0.99, 1.01)
        if (records, padded) not in shapes:
            shapes.append((records, padded))
            seconds += per_new
        fit.add(records, padded, seconds)
    return fit


class TestFit:
    def test_recovers_the_terms_of_a_linear_cost(self) -> None:
        fixed, per_record, per_token, per_new = timed(2e-3, 1e-5, 2e-7).coefficients or (0, 0, 0, 0)
        assert fixed == pytest.approx(2e-3, rel=0.05)
        assert per_record == pytest.approx(1e-5, rel=0.3)
        assert per_token == pytest.approx(2e-7, rel=0.05)
        assert per_new < 1e-4

    def test_recovers_the_cost_of_a_new_shape_apart(self) -> None:
        # A GPU's first run of a shape (H200: about 50 ms against 4 ms warm): fitted as
        # its own term, it leaves the fixed cost where it is.
        fixed, _, per_token, per_new = timed(2e-3, 0, 2e-7, batches=64, per_new=5e-2).coefficients or (0, 0, 0, 0)
        assert per_new == pytest.approx(5e-2, rel=0.05)
        assert fixed == pytest.approx(2e-3, rel=0.3)
        assert per_token == pytest.approx(2e-7, rel=0.1)

    def test_all_new_shapes_fit_as_a_fixed_cost(self) -> None:
        # Every batch of a new shape: the two costs cannot be told apart, and a shape
        # already run must not be predicted free.
        fit = CostFit()
        for records in range(1, 20):
            fit.add(records, records * 10, 0.003)
        assert fit.coefficients == pytest.approx((0.003, 0, 0, 0))
        assert fit.predict(5, 50) == pytest.approx(0.003)

    def test_keeps_the_cost_of_a_new_shape_once_the_window_is_warm(self) -> None:
        # A GPU's steady state: a window of warm runs only cannot tell what a cold one
        # costs, and must not predict a new shape free (it would then be chosen).
        fit = timed(2e-3, 0, 2e-7, batches=64, per_new=5e-2)
        assert fit.predict(8, 800, new=True) - fit.predict(8, 800) == pytest.approx(5e-2, rel=0.05)
        fit.add(8, 800, 5e-2 + 2e-3 + 2e-7 * 800)  # its first run, cold
        for _ in range(WINDOW):
            fit.add(8, 800, 2e-3 + 2e-7 * 800)
        assert not any(new for _, _, new, _ in fit._samples)
        assert fit.predict(8, 800) == pytest.approx(2e-3 + 2e-7 * 800, rel=0.01)
        assert fit.predict(8, 800, new=True) - fit.predict(8, 800) == pytest.approx(5e-2, rel=0.05)

    def test_a_shape_is_new_to_each_worker(self) -> None:
        fit = CostFit()
        fit.add(4, 40, 0.05, worker=0)
        fit.add(4, 40, 0.05, worker=1)
        fit.add(4, 40, 0.001, worker=0)
        assert [new for _, _, new, _ in fit._samples] == [1, 1, 0]
        assert fit.known(4, 40)
        assert not fit.known(4, 41)

    def test_a_worker_taking_the_index_of_one_that_left_meets_every_shape_new(self) -> None:
        fit = CostFit()
        fit.add(4, 40, 0.05, worker=0)
        fit.add(4, 40, 0.05, worker=1)
        fit.add(8, 80, 0.05, worker=1)
        fit.forget(1)
        assert fit.known(4, 40)  # worker 0 ran it
        assert not fit.known(8, 80)  # only the worker that left did
        fit.add(4, 40, 0.05, worker=1)
        fit.add(4, 40, 0.001, worker=0)
        assert [new for _, _, new, _ in fit._samples][3:] == [1, 0]

    def test_forgets_every_shape_past_its_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("batcher._cost_fit.SHAPES", 3)
        fit = CostFit()
        for records in (1, 2, 3, 4):
            fit.add(records, records, 0.001)
        assert fit.known(4, 4)
        assert not fit.known(1, 1)

    def test_no_term_is_negative(self) -> None:
        # Time that falls with size: the unconstrained fit would give a negative slope.
        samples = [(n, n * 10, n % 2, 0.01 - 1e-5 * n) for n in range(1, 50)]
        assert min(fit_batch_time(samples)) >= 0

    def test_no_prediction_before_warm_up(self) -> None:
        fit = CostFit()
        for _ in range(WARMUP - 1):
            fit.add(4, 40, 0.01)
        assert fit.coefficients is None
        assert fit.predict(4, 40) == 0.0
        fit.add(4, 40, 0.01)
        assert fit.predict(4, 40) == pytest.approx(0.01)

    @pytest.mark.parametrize("giant", [False, True])
    def test_the_sliding_sums_fit_as_the_window_does(self, giant: bool) -> None:
        # The sums are kept up to date as samples come and go, and now and then redone;
        # a sample that dwarfs the others is not subtracted out, which would leave
        # them as rounding error, but the sums redone without it.
        rng = random.Random(3)
        fit = CostFit()
        for count in range(1, 3 * WINDOW + 10):
            records = rng.randint(1, 64)
            if giant and count == 10:
                fit.add(1, 10**12, 1e3)
                continue
            fit.add(records, records * rng.choice((32, 64, 128)), rng.uniform(1e-3, 5e-3), rng.randint(0, 1))
            if count >= WARMUP:
                window = list(fit._samples)
                assert len(window) == min(count, WINDOW)
                assert fit.coefficients == pytest.approx(fit_batch_time(window), rel=1e-6, abs=1e-12)

    @settings(max_examples=300, deadline=None)
    @given(
        terms=st.tuples(*[st.sampled_from([0.0, 1e-8, 1e-6, 1e-4, 3e-3])] * 4),
        seed=st.integers(0, 1000),
        count=st.integers(WARMUP, WINDOW),
        noise=st.sampled_from([0.0, 0.01, 0.3]),
    )
    def test_the_last_fits_terms_tried_first_fit_as_well_as_every_subset(
        self, terms: tuple[float, float, float, float], seed: int, count: int, noise: float
    ) -> None:
        rng = random.Random(seed)
        samples = []
        for _ in range(count):
            records = rng.choice((64, rng.randint(1, 64)))
            padded, new = records * rng.randint(8, 512), rng.random() < 0.2
            seconds = terms[0] + terms[1] * records + terms[2] * padded + terms[3] * new
            samples.append((records, padded, int(new), seconds * rng.uniform(1 - noise, 1 + noise) + 1e-6))
        sums = _Sums(samples)

        def error(c: tuple[float, float, float, float]) -> float:
            return sum((s - c[0] - c[1] * r - c[2] * p - c[3] * n) ** 2 for r, p, n, s in samples)

        best = error(sums.fit()[0])
        for hint in (None, *_TERMS):
            coefficients, _ = sums.fit(hint)
            assert min(coefficients) >= 0
            assert error(coefficients) <= best * (1 + 1e-6) + 1e-18

    def test_identical_batches_fit_as_a_fixed_cost(self) -> None:
        samples = [(8, 800, 0, 0.004)] * 10  # one shape only: the terms cannot be told apart
        fixed, per_record, per_token, per_new = fit_batch_time(samples)
        assert fixed + 8 * per_record + 800 * per_token == pytest.approx(0.004)
        assert per_new == 0


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
        for records in (*range(1, 20), 1):  # one shape again: the fit is not blind
            fit.add(records, records * 10, 0.003)
        assert fit.coefficients == pytest.approx((0.003, 0, 0, 0))
        assert choose([(3, 30, 30), (9, 90, 90), (5, 50, 50)], fit) == 1

    def test_a_shape_run_before_wins_where_a_new_one_costs_more_than_it_saves(self) -> None:
        # Fixed cost 2 ms, a new shape 50 ms: the whole queue in a shape never run would
        # cost far more than the grouped batch of a shape the workers know.
        fit = timed(2e-3, 0, 2e-7, batches=64, per_new=5e-2)
        fit.add(40, 40 * 32, 2e-3 + 2e-7 * 40 * 32)
        assert choose(self.CANDIDATES, fit) == 1
        assert choose(self.CANDIDATES, timed(2e-3, 0, 2e-7, batches=64)) == 0  # no such cost: the larger

    @pytest.mark.parametrize(("gain", "chosen"), [(MARGIN / 2, 0), (MARGIN * 2, 1)])
    def test_the_first_candidate_goes_unless_another_gains_more_than_the_margin(self, gain: float, chosen: int) -> None:
        # Time is per padded token only, so a batch's share is its real over padded tokens.
        fit = timed(0, 0, 1e-6)
        first = (10, 1000, 500)
        other = (10, 1000, round(500 * (1 + gain)))
        assert choose([first, other], fit) == chosen

    def test_the_first_candidate_while_every_batch_was_of_a_new_shape(self) -> None:
        # As in a GPU's first pass, no shape has run twice: the fit cannot tell a cold
        # run's cost from the fixed cost, so its choice is not taken (here it is right).
        fit = CostFit()
        shapes = [(records, records * (40 + 30 * (records % 5))) for records in range(1, 20)]
        for records, padded in shapes:
            fit.add(records, padded, 1e-4 + 1e-6 * padded)
        assert fit.blind
        assert choose(self.CANDIDATES, fit) == 0
        fit.add(*shapes[-1], 1e-4 + 1e-6 * shapes[-1][1])  # a shape again
        assert not fit.blind
        assert choose(self.CANDIDATES, fit) == 1

    def test_the_first_candidate_during_warm_up(self) -> None:
        assert choose(self.CANDIDATES[::-1], CostFit()) == 0


class TestFirstIsChosen:
    """The shortcut that spares planning the other candidates: it may say "the first"
    only where :func:`choose` would take the first whatever they are."""

    @settings(max_examples=300, deadline=None)
    @given(
        terms=st.tuples(*[st.sampled_from([0.0, 1e-9, 1e-7, 1e-6, 1e-5, 1e-4, 2e-3, 1e-2])] * 3),
        seed=st.integers(0, 3),
        candidates=st.lists(
            st.tuples(st.integers(1, 64), st.integers(1, 256), st.floats(0.05, 1.0)), min_size=1, max_size=5
        ),
    )
    def test_only_where_choose_takes_the_first(
        self, terms: tuple[float, float, float], seed: int, candidates: list[tuple[int, int, float]]
    ) -> None:
        fit = timed(*terms, seed=seed)
        shapes = [
            (records, records * width, max(1, round(records * width * used))) for records, width, used in candidates
        ]
        if first_is_chosen(shapes[0], max(c[0] for c in shapes), max(c[2] for c in shapes), fit):
            assert choose(shapes, fit) == 0

    def test_says_so_where_every_waiting_record_fits_the_first(self) -> None:
        # A closed loop of 64 on a small GPU model: every batch holds all 64 waiting
        # records, so no other candidate can hold more of them.
        fit = CostFit()
        for padded in range(64 * 40, 64 * 40 + 64 * 20, 64):
            fit.add(64, padded, 4e-3 + 1e-8 * padded)
        first = (64, 64 * 300, 64 * 45)
        assert first_is_chosen(first, 64, first[2], fit)

    def test_with_only_a_fixed_cost_where_no_candidate_can_hold_more_records(self) -> None:
        # A model that sleeps: every share is 0, and choose() takes the most records.
        fit = CostFit()
        for records in [*range(1, 20), *range(1, 20)]:  # each shape warm once too
            fit.add(records, records * 40, 4e-3)
        assert fit.coefficients is not None
        assert not fit.blind
        assert fit.coefficients[1:3] == (0.0, 0.0)
        assert first_is_chosen((17, 17 * 300, 17 * 45), 17, 17 * 45, fit)
        assert choose([(17, 17 * 300, 17 * 45), (9, 9 * 50, 9 * 45)], fit) == 0
        assert not first_is_chosen((17, 17 * 300, 17 * 45), 30, 30 * 45, fit)
        assert choose([(17, 17 * 300, 17 * 45), (30, 30 * 50, 30 * 45)], fit) == 1

    def test_not_where_another_candidate_could_gain_more_than_the_margin(self) -> None:
        fit = timed(5e-3, 0, 1e-9)
        assert not first_is_chosen((8, 800, 400), 64, 16_000, fit)  # 64 records may share the fixed cost
        assert not first_is_chosen((40, 40 * 256, 40 * 30), 40, 40 * 256, timed(1e-4, 0, 1e-6))  # padding

    def test_during_warm_up_and_while_blind(self) -> None:
        assert first_is_chosen((1, 10, 10), 100, 1000, CostFit())


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

    @settings(max_examples=200, deadline=None)
    @given(
        costs=st.lists(st.integers(0, 60), min_size=1, max_size=40),
        regime=st.sampled_from([(1e-2, 0, 1e-9), (1e-5, 0, 1e-6), (1e-3, 1e-5, 1e-7), (0, 1e-4, 0)]),
        target=st.integers(1, 600),
    )
    def test_takes_what_planning_every_candidate_takes(
        self, costs: list[int], regime: tuple[float, float, float], target: int
    ) -> None:
        batches = []
        for shortcut in (True, False):
            assembly = measured(timed(*regime), target=target)
            for item, cost in enumerate(costs):
                assembly.add(item, cost)
            with pytest.MonkeyPatch.context() as patch:
                if not shortcut:
                    patch.setattr(_measured, "first_is_chosen", lambda *args: False)
                batches.append([assembly.take() for _ in range(len(costs)) if assembly])
        # The same records in the same batches (a whole pool comes in arrival order).
        assert [(set(batch), cost) for batch, cost in batches[0]] == [(set(b), c) for b, c in batches[1]]

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
