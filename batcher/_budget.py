"""The budget rule of one growing batch: can a record of this cost join it?

Every batch obeys the budget: its cost (by the cost model) never exceeds the
target, except a batch of one record whose own cost is over the target, which runs
alone; and no batch holds more than ``max_size`` records.
"""

from __future__ import annotations

from ._protocols import CostModel

__all__ = ("Budget", "PaddedBudget", "batch_cost", "new_budget")


def batch_cost(costs: list[int], cost_model: CostModel) -> int:
    """Return what a batch of records with these costs costs under ``cost_model``."""
    if not costs:
        return 0
    if cost_model == "sum":
        return sum(costs)
    return len(costs) * max(costs)  # "padded", and "measured", whose budget is padded


class Budget:
    """The budget rule for one growing batch under the sum cost model: can a record
    of this cost join it?"""

    __slots__ = ("count", "exhausted", "max_size", "peak", "target", "total")

    def __init__(self, target: int, max_size: int) -> None:
        self.target = target
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.count = self.total = self.peak = 0
        #: Whether no record of positive cost could join any more.
        self.exhausted = False

    def try_add(self, cost: int) -> bool:
        """Add a record of this cost if it fits; return whether it did (a record
        always fits an empty batch, even an oversized one)."""
        count = self.count
        if count and (count >= self.max_size or self.total + cost > self.target):
            return False
        count = self.count = count + 1
        total = self.total = self.total + cost
        if cost > self.peak:
            self.peak = cost
        self.exhausted = count >= self.max_size or total >= self.target
        return True

    def cost(self) -> int:
        return self.total

    def holds(self, count: int, peak: int) -> bool:
        """Whether ``count`` records of costs up to ``peak`` surely fit one batch, added
        in any order (one record always does). Under the sum model it is enough, not
        needed: their sum may fit where ``count * peak`` does not."""
        return count <= 1 or (count <= self.max_size and count * peak <= self.target)

    def price(self, count: int, total: int, peak: int) -> int:
        """What a batch of ``count`` records of these ``total`` and ``peak`` costs costs."""
        return total


class PaddedBudget(Budget):
    """The budget rule under the padded cost model: a batch costs ``len * max(cost)``.

    With ``min_efficiency``, a record also stays out if the batch's real cost over its
    padded cost, ``sum(costs) / (len * max(costs))``, would fall below it. Both rules
    only get stricter for costs further from the batch's, so a batch grown outward
    from one cost can stop at the first misfit.
    """

    __slots__ = ("min_efficiency",)

    def __init__(self, target: int, max_size: int, min_efficiency: float | None) -> None:
        self.min_efficiency = min_efficiency
        super().__init__(target, max_size)

    def try_add(self, cost: int) -> bool:
        count = self.count
        if count:
            if count >= self.max_size:
                return False
            padded = (count + 1) * max(self.peak, cost)
            if padded > self.target:
                return False
            floor = self.min_efficiency
            if floor is not None and self.total + cost < floor * padded:
                return False
        count = self.count = count + 1
        self.total += cost
        if cost > self.peak:
            self.peak = cost
        self.exhausted = count >= self.max_size or (count + 1) * max(self.peak, 1) > self.target
        return True

    def room(self, cost: int) -> int:
        """How many more records of this cost the size limit and the padded budget
        allow (at least one in an empty batch); the floor may allow fewer."""
        peak = cost if cost > self.peak else self.peak
        most = self.target // peak if peak and self.target // peak < self.max_size else self.max_size
        count = self.count
        return most - count if most > count else 0 if count else 1

    def add_many(self, cost: int, count: int) -> int:
        """Add up to ``count`` records of one cost, as that many :meth:`try_add` calls
        would until the first refusal; return how many it added."""
        added = 0
        if count > 0 and not self.count:
            self.try_add(cost)  # a record always fits an empty batch
            added, count = 1, count - 1
        peak = max(self.peak, cost)
        room = min(count, self.room(cost))
        if room > 0 and self.min_efficiency is not None:
            room = self._room_at_floor(cost, peak, room)
        if room <= 0:
            return added
        self.count += room
        self.total += room * cost
        self.peak = peak
        self.exhausted = self.count >= self.max_size or (self.count + 1) * max(peak, 1) > self.target
        return added + room

    def _room_at_floor(self, cost: int, peak: int, room: int) -> int:
        """How many of ``room`` records of ``cost`` keep the batch at its padding floor,
        added one by one; the test is :meth:`try_add`'s."""
        floor, count, total = self.min_efficiency, self.count, self.total
        assert floor is not None

        def fits(more: int) -> bool:
            return not total + more * cost < floor * ((count + more) * peak)

        if cost >= floor * peak:  # each record lifts the efficiency: the first decides
            return room if fits(1) else 0
        # Each lowers it: solve for the last that fits, then step off rounding.
        more = min(room, max(0, int((total - floor * count * peak) / (floor * peak - cost))))
        while more and not fits(more):
            more -= 1
        while more < room and fits(more + 1):
            more += 1
        return more

    def cost(self) -> int:
        return self.count * self.peak

    def holds(self, count: int, peak: int) -> bool:
        # With a floor, the order matters: a record may misfit on the way to a batch
        # that would end above the floor.
        return super().holds(count, peak) and (count <= 1 or self.min_efficiency is None)

    def price(self, count: int, total: int, peak: int) -> int:
        return count * peak


def new_budget(target: int, max_size: int, cost_model: CostModel, min_efficiency: float | None) -> Budget:
    if cost_model == "sum":
        return Budget(target, max_size)
    return PaddedBudget(target, max_size, min_efficiency)
