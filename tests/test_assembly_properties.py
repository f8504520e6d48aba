"""Properties of the pure batch-assembly rule, for any costs and any settings.

Records are added and batches taken in a random interleaving, then the rest is
drained. Whatever the order, every batch obeys the budget and the size limit,
every record lands in exactly one batch, FIFO keeps arrival order, grouping never
starves the oldest record, and ``take()`` reports the batch's true cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher._assembly import FifoAssembly, GroupedAssembly, make_assembly
from batcher._budget import PaddedBudget, batch_cost
from batcher._cost_fit import CostFit
from batcher._measured import MeasuredAssembly
from batcher._protocols import CostModel

MAX_TARGET = 50


@dataclass
class Config:
    target_cost: int
    max_batch_size: int
    cost_model: CostModel
    group_by_cost: bool
    window: int
    min_efficiency: float | None = None  # used with cost_model="padded" only
    measured: str | None = None  # with group_by_cost: cost_model="measured" under this regime (FITS)

    @property
    def floor(self) -> float | None:
        return self.min_efficiency if self.cost_model == "padded" else None


def efficiency(costs: list[int]) -> float:
    """Real over padded cost (1 for a batch whose padded cost is 0)."""
    padded = len(costs) * max(costs)
    return sum(costs) / padded if padded else 1.0


configs = st.builds(
    Config,
    target_cost=st.integers(1, MAX_TARGET),
    max_batch_size=st.integers(1, 12),
    cost_model=st.sampled_from(["sum", "padded"]),
    group_by_cost=st.booleans(),
    window=st.integers(1, 30),
    min_efficiency=st.one_of(st.none(), st.floats(0.05, 1.0)),
    measured=st.sampled_from([None, None, "fixed", "padding", "warm-up"]),
)


def fitted(regime: str) -> CostFit:
    """A fit of batch times where the fixed cost dominates, or padding does, or none yet."""
    fit = CostFit()
    if regime != "warm-up":
        fixed, per_token = (1e-2, 1e-9) if regime == "fixed" else (1e-5, 1e-6)
        for records in range(1, 20):
            padded = records * (records % 7 + 1) * 5
            fit.add(records, padded, fixed + per_token * padded)
    return fit


# Mostly within the target, some far over it, plenty of zeros and ties.
costs = st.lists(st.one_of(st.integers(0, MAX_TARGET), st.integers(MAX_TARGET + 1, 3 * MAX_TARGET)), max_size=80)
# True: add the next record; False: take a batch (when something is queued).
schedules = st.lists(st.booleans(), max_size=200)


@dataclass
class Taken:
    batch: list[int]
    cost: int
    queued_before: list[int]  # what was queued, in arrival order, just before the take


def measured_assembly(config: Config, live: Callable[[int], bool] | None = None) -> MeasuredAssembly[int]:
    """The assembly of ``cost_model="measured"`` for ``config``, its fit in ``config.measured``'s regime."""
    assert config.measured is not None
    return MeasuredAssembly(
        target_cost=config.target_cost,
        max_batch_size=config.max_batch_size,
        window=config.window,
        fit=fitted(config.measured),
        live=live,
    )


def run(config: Config, record_costs: list[int], schedule: list[bool]) -> list[Taken]:
    """Interleave adds and takes as ``schedule`` says, then drain; record every take."""
    assembly: FifoAssembly[int] | GroupedAssembly[int]
    if config.measured and config.group_by_cost:
        config.cost_model, config.min_efficiency = "padded", None  # its budget, and its own floors
        assembly = measured_assembly(config)
    else:
        assembly = make_assembly(
            target_cost=config.target_cost,
            max_batch_size=config.max_batch_size,
            cost_model=config.cost_model,
            group_by_cost=config.group_by_cost,
            window=config.window,
            min_efficiency=config.floor,
        )
    queued: list[int] = []  # arrival order
    taken: list[Taken] = []
    arrivals = iter(enumerate(record_costs))

    def take() -> None:
        batch, cost = assembly.take()
        taken.append(Taken(batch, cost, list(queued)))
        for item in batch:
            queued.remove(item)

    def check_len() -> None:
        assert len(assembly) == len(queued)
        assert bool(assembly) == bool(queued)

    for add in schedule:
        if add:
            arrival = next(arrivals, None)
            if arrival is None:
                continue
            assembly.add(*arrival)
            queued.append(arrival[0])
        elif queued:
            take()
        check_len()
    for item, cost in arrivals:
        assembly.add(item, cost)
        queued.append(item)
    check_len()
    while queued:
        take()
        check_len()
    assert assembly.take() == ([], 0)  # an empty assembly gives an empty batch
    return taken


class TestEveryAssembly:
    """Promise 4, for both rules: budget, size, exactly once, honest cost."""

    @settings(max_examples=400, deadline=None)
    @given(config=configs, record_costs=costs, schedule=schedules)
    def test_batches_obey_the_budget_and_size(
        self, config: Config, record_costs: list[int], schedule: list[bool]
    ) -> None:
        for taken in run(config, record_costs, schedule):
            assert 1 <= len(taken.batch) <= config.max_batch_size
            cost = batch_cost([record_costs[i] for i in taken.batch], config.cost_model)
            assert taken.cost == cost
            if len(taken.batch) > 1:
                assert cost <= config.target_cost
                if config.floor is not None:
                    assert efficiency([record_costs[i] for i in taken.batch]) >= config.floor

    @settings(max_examples=400, deadline=None)
    @given(config=configs, record_costs=costs, schedule=schedules)
    def test_every_record_lands_in_exactly_one_batch(
        self, config: Config, record_costs: list[int], schedule: list[bool]
    ) -> None:
        placed = [item for taken in run(config, record_costs, schedule) for item in taken.batch]
        assert sorted(placed) == list(range(len(record_costs)))


class TestPaddedBudget:
    @settings(max_examples=600, deadline=None)
    @given(
        target=st.integers(1, 200),
        max_size=st.integers(1, 12),
        floor=st.sampled_from([None, 0.3, 0.5, 0.75, 0.9, 1.0]),
        before=st.lists(st.integers(0, 80), max_size=5),
        cost=st.integers(0, 80),
        count=st.integers(0, 15),
    )
    def test_add_many_adds_as_try_add_one_by_one_would(
        self, target: int, max_size: int, floor: float | None, before: list[int], cost: int, count: int
    ) -> None:
        one_by_one, at_once = PaddedBudget(target, max_size, floor), PaddedBudget(target, max_size, floor)
        for earlier in before:
            assert one_by_one.try_add(earlier) == at_once.try_add(earlier)
        added = 0
        while added < count and one_by_one.try_add(cost):
            added += 1
        assert at_once.add_many(cost, count) == added
        state = ("count", "total", "peak", "exhausted")
        assert [getattr(at_once, name) for name in state] == [getattr(one_by_one, name) for name in state]


class TestFifoAssembly:
    """Promise 4 for FifoAssembly: batches are the queue, cut in arrival order."""

    @settings(max_examples=400, deadline=None)
    @given(config=configs, record_costs=costs, schedule=schedules)
    def test_batches_concatenate_to_arrival_order(
        self, config: Config, record_costs: list[int], schedule: list[bool]
    ) -> None:
        config.group_by_cost = False
        taken = run(config, record_costs, schedule)
        assert [item for t in taken for item in t.batch] == list(range(len(record_costs)))
        for t in taken:
            assert t.batch == t.queued_before[: len(t.batch)]

    @settings(max_examples=400, deadline=None)
    @given(config=configs, record_costs=costs, schedule=schedules)
    def test_each_batch_is_the_longest_prefix_that_fits(
        self, config: Config, record_costs: list[int], schedule: list[bool]
    ) -> None:
        """The record after the batch would break the budget, the size limit or the
        padding-efficiency floor (checked for records of positive cost: a free record
        may wait a batch)."""
        config.group_by_cost = False
        for t in run(config, record_costs, schedule):
            rest = t.queued_before[len(t.batch) :]
            if not rest or record_costs[rest[0]] == 0:
                continue
            grown = [record_costs[i] for i in [*t.batch, rest[0]]]
            too_big = len(grown) > config.max_batch_size or batch_cost(grown, config.cost_model) > config.target_cost
            assert too_big or (config.floor is not None and efficiency(grown) < config.floor)

    @settings(max_examples=200, deadline=None)
    @given(config=configs, record_costs=costs)
    def test_not_full_means_the_whole_queue_is_the_next_batch(self, config: Config, record_costs: list[int]) -> None:
        """``full()`` stays false only while every queued record fits one batch, and
        adding a record never makes a full assembly not full."""
        for n in range(len(record_costs) + 1):
            assembly: FifoAssembly[int] = FifoAssembly(
                target_cost=config.target_cost,
                max_batch_size=config.max_batch_size,
                cost_model=config.cost_model,
                min_efficiency=config.floor,
            )
            was_full = False
            for item in range(n):
                assembly.add(item, record_costs[item])
                assert assembly.full() or not was_full
                was_full = assembly.full()
            if not assembly.full():
                assert assembly.take()[0] == list(range(n))


class TestGroupedAssembly:
    """Promise 4 for GroupedAssembly: the oldest queued record never starves."""

    @settings(max_examples=400, deadline=None)
    @given(config=configs, record_costs=costs, schedule=schedules)
    def test_oldest_queued_record_is_in_the_next_batch(
        self, config: Config, record_costs: list[int], schedule: list[bool]
    ) -> None:
        config.group_by_cost = True
        for t in run(config, record_costs, schedule):
            assert t.queued_before[0] in t.batch

    @settings(max_examples=200, deadline=None)
    @given(window=st.integers(1, 30), record_costs=costs)
    def test_full_when_the_pool_is_as_deep_as_the_window(self, window: int, record_costs: list[int]) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(target_cost=10, max_batch_size=4, window=window)
        for item, cost in enumerate(record_costs):
            assembly.add(item, cost)
            assert assembly.full() == (len(assembly) >= window)

    @settings(max_examples=300, deadline=None)
    @given(  # small pools, so that many fit whole
        config=configs,
        record_costs=st.lists(st.integers(0, 12), max_size=12),
        dead_marks=st.lists(st.booleans(), max_size=12),
    )
    def test_a_pool_that_fits_whole_is_taken_as_growing_the_batch_takes_it(
        self, config: Config, record_costs: list[int], dead_marks: list[bool]
    ) -> None:
        dead = {item for item, is_dead in enumerate(dead_marks[: len(record_costs)]) if is_dead}
        batches = []
        for whole in (True, False):
            assembly: GroupedAssembly[int] = GroupedAssembly(
                target_cost=config.target_cost,
                max_batch_size=config.max_batch_size,
                cost_model=config.cost_model,
                window=config.window,
                live=lambda item: item not in dead,
                min_efficiency=config.floor,
            )
            for item, cost in enumerate(record_costs):
                assembly.add(item, cost)
            with pytest.MonkeyPatch.context() as patch:
                if not whole:
                    patch.setattr(GroupedAssembly, "fits_whole", lambda self: False)
                batches.append([assembly.take() for _ in range(len(record_costs) + 1) if assembly])
        # The same records in the same batches, at the same cost (a whole pool in arrival order).
        assert [(set(batch), cost) for batch, cost in batches[0]] == [(set(b), c) for b, c in batches[1]]

    @settings(max_examples=300, deadline=None)
    @given(config=configs, record_costs=costs, dead_marks=st.lists(st.booleans(), max_size=80))
    def test_withdrawn_records_take_no_slot(
        self, config: Config, record_costs: list[int], dead_marks: list[bool]
    ) -> None:
        dead = {item for item, is_dead in enumerate(dead_marks[: len(record_costs)]) if is_dead}
        assembly: GroupedAssembly[int]
        if config.measured:
            config.cost_model = "padded"
            assembly = measured_assembly(config, live=lambda item: item not in dead)
        else:
            assembly = GroupedAssembly(
                target_cost=config.target_cost,
                max_batch_size=config.max_batch_size,
                cost_model=config.cost_model,
                window=config.window,
                live=lambda item: item not in dead,
            )
        for item, cost in enumerate(record_costs):
            assembly.add(item, cost)
        batches: list[list[int]] = []
        done: set[int] = set()
        while assembly:
            live_queued = [item for item in range(len(record_costs)) if item not in dead and item not in done]
            batch, cost = assembly.take()
            done.update(batch)
            if live_queued:
                assert min(live_queued) in batch  # the oldest live record
            assert cost == batch_cost([record_costs[item] for item in batch], config.cost_model)
            batches.append(batch)
        taken = sorted(item for batch in batches for item in batch)
        assert taken == [item for item in range(len(record_costs)) if item not in dead]
        assert assembly.take() == ([], 0)
