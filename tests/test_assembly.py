"""The pure batch-assembly rule, without an event loop."""

import pytest

from batcher._assembly import FifoAssembly, GroupedAssembly
from batcher._budget import batch_cost
from batcher._protocols import CostModel


def drain(assembly: FifoAssembly[int] | GroupedAssembly[int]) -> list[list[int]]:
    batches = []
    while assembly:
        batches.append(assembly.take()[0])
    return batches


class TestFifo:
    def test_budget_closes_batch_and_keeps_order(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=10, max_batch_size=100)
        for item, cost in enumerate([4, 4, 4, 4]):
            assembly.add(item, cost)
        assert assembly.full()
        assert assembly.take() == ([0, 1], 8)
        assert not assembly.full()  # 2 and 3 cost 8: a record of 2 could still join
        assert assembly.take() == ([2, 3], 8)
        assert not assembly

    def test_record_that_does_not_fit_waits_at_head(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=10, max_batch_size=100)
        assembly.add(0, 6)
        assembly.add(1, 6)
        assembly.add(2, 1)  # would fit after 0, but FIFO: 1 blocks the batch
        assert assembly.take() == ([0], 6)
        assert assembly.take() == ([1, 2], 7)

    def test_oversized_record_runs_alone(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=10, max_batch_size=100)
        assembly.add(0, 50)
        assert assembly.full()
        assembly.add(1, 1)
        assert drain(assembly) == [[0], [1]]

    def test_max_batch_size(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=1000, max_batch_size=3)
        for item in range(7):
            assembly.add(item, 1)
        assert drain(assembly) == [[0, 1, 2], [3, 4, 5], [6]]

    def test_a_batch_at_exactly_the_target_is_full(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=10, max_batch_size=100)
        assembly.add(0, 6)
        assert not assembly.full()
        assembly.add(1, 4)
        assert assembly.full()  # no record of positive cost could join: it goes at once
        assert assembly.take() == ([0, 1], 10)

    def test_partial_batch_is_not_full(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=10, max_batch_size=5)
        assembly.add(0, 3)
        assert not assembly.full()
        assert assembly.take() == ([0], 3)

    def test_padded_cost_model(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=20, max_batch_size=100, cost_model="padded")
        for item, cost in enumerate([2, 2, 9, 3]):
            assembly.add(item, cost)
        # [2, 2, 9] pads to 3 * 9 = 27 > 20, so 9 starts the next batch.
        assert assembly.take() == ([0, 1], 4)
        assert assembly.take() == ([2, 3], 18)

    def test_zero_cost_records(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=1, max_batch_size=4)
        for item in range(6):
            assembly.add(item, 0)
        assert drain(assembly) == [[0, 1, 2, 3], [4, 5]]


class TestPaddingEfficiencyFloor:
    """``min_efficiency``: a record stays out if real / padded cost would fall below it."""

    def test_fifo_closes_before_a_record_that_would_pad_too_much(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(
            target_cost=1000, max_batch_size=100, cost_model="padded", min_efficiency=0.8
        )
        for item, cost in enumerate([10, 10, 30, 30, 4]):
            assembly.add(item, cost)
        # [10, 10, 30] would be 50 real tokens in 90 padded (56 %): 30 starts the next
        # batch, and so does 4 after [30, 30] (64 of 90, 71 %).
        assert assembly.full()
        assert drain(assembly) == [[0, 1], [2, 3], [4]]

    def test_without_the_floor_the_same_records_pad(self) -> None:
        assembly: FifoAssembly[int] = FifoAssembly(target_cost=1000, max_batch_size=100, cost_model="padded")
        for item, cost in enumerate([10, 10, 30, 30, 4]):
            assembly.add(item, cost)
        assert drain(assembly) == [[0, 1, 2, 3, 4]]

    def test_grouped_batch_stops_where_padding_would_fall_below_the_floor(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(
            target_cost=1000, max_batch_size=100, cost_model="padded", window=100, min_efficiency=0.9
        )
        for item, cost in enumerate([20, 21, 40, 19, 10]):
            assembly.add(item, cost)
        # Around the oldest (20): 21 and 19 keep 60 / 63 = 95 %; 10 would make 70 / 84,
        # 40 would make 100 / 160: both wait.
        assert [sorted(batch) for batch in drain(assembly)] == [[0, 1, 3], [2], [4]]

    def test_the_oldest_record_goes_even_alone(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(
            target_cost=1000, max_batch_size=100, cost_model="padded", window=100, min_efficiency=1.0
        )
        for item, cost in enumerate([5, 6, 7]):
            assembly.add(item, cost)
        assert drain(assembly) == [[0], [1], [2]]


class TestGrouped:
    def test_groups_similar_costs_around_oldest(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(
            target_cost=310, max_batch_size=3, cost_model="padded", window=100
        )
        costs = [10, 100, 11, 99, 12, 101]
        for item, cost in enumerate(costs):
            assembly.add(item, cost)
        first, cost = assembly.take()
        assert sorted(first) == [0, 2, 4]
        assert cost == 3 * 12
        second, cost = assembly.take()
        assert sorted(second) == [1, 3, 5]
        assert cost == 3 * 101

    def test_oldest_always_in_next_batch(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(target_cost=10, max_batch_size=2, window=100)
        assembly.add(0, 10)
        for item in range(1, 10):
            assembly.add(item, 1)
        assert assembly.take()[0] == [0]  # nothing fits beside it, but it goes first

    def test_full_means_window_reached(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(target_cost=10, max_batch_size=2, window=3)
        for item in range(3):
            assert not assembly.full()
            assembly.add(item, 1)
        assert assembly.full()

    def test_equal_costs_keep_arrival_order(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(target_cost=100, max_batch_size=2, window=100)
        for item in range(6):
            assembly.add(item, 5)
        assert [sorted(batch) for batch in drain(assembly)] == [[0, 1], [2, 3], [4, 5]]

    def test_sum_budget(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(target_cost=10, max_batch_size=10, window=100)
        for item, cost in enumerate([5, 5, 5, 1]):
            assembly.add(item, cost)
        # Around the oldest record, the closest cost (another 5) fills the budget.
        batch, cost = assembly.take()
        assert (sorted(batch), cost) == ([0, 1], 10)
        batch, cost = assembly.take()
        assert (sorted(batch), cost) == ([2, 3], 6)
        assert not assembly

    @pytest.mark.parametrize(
        ("costs", "model", "target", "size", "floor", "whole"),
        [
            ([5, 6], "padded", 12, 2, None, True),  # 2 x 6 is the budget
            ([5, 6], "padded", 11, 2, None, False),
            ([5, 6], "padded", 12, 1, None, False),  # over the size limit
            ([5, 6], "padded", 12, 2, 0.5, False),  # a floor makes the order matter
            ([5, 6], "sum", 12, 2, None, True),
            ([5, 6], "sum", 11, 2, None, False),  # the sum fits, but the test is 2 x the highest
            ([5, 6], "sum", 10, 2, None, False),
            ([30], "sum", 10, 2, None, True),  # one record always fits
        ],
    )
    def test_a_pool_that_fits_one_batch_is_taken_whole_in_arrival_order(
        self, costs: list[int], model: CostModel, target: int, size: int, floor: float | None, whole: bool
    ) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(
            target_cost=target, max_batch_size=size, cost_model=model, window=100, min_efficiency=floor
        )
        for item, cost in enumerate(costs):
            assembly.add(item, cost)
        assert assembly.fits_whole() == whole
        if whole:
            assert assembly.take() == (list(range(len(costs))), batch_cost(costs, model))
            assert not assembly
            assert assembly.take() == ([], 0)

    def test_a_whole_pool_leaves_its_withdrawn_records_out(self) -> None:
        assembly: GroupedAssembly[int] = GroupedAssembly(
            target_cost=120, max_batch_size=3, cost_model="padded", window=100, live=lambda item: item != 1
        )
        for item, cost in enumerate([5, 40, 6]):
            assembly.add(item, cost)
        assert assembly.fits_whole()  # counting the withdrawn record, which may never be
        assert assembly.take() == ([0, 2], 12)  # priced without the withdrawn 40
        assert not assembly


@pytest.mark.parametrize(
    ("costs", "model", "expected"),
    [([], "sum", 0), ([1, 2, 3], "sum", 6), ([1, 2, 3], "padded", 9), ([7], "padded", 7)],
)
def test_batch_cost(costs: list[int], model: str, expected: int) -> None:
    assert batch_cost(costs, model) == expected  # type: ignore[arg-type]
