"""The assembly of ``cost_model="measured"``: the grouping pool of
:class:`~batcher._assembly.GroupedAssembly`, and at each ``take()`` a choice among
candidate batches by what they are predicted to cost (``_cost_fit.py``).

The candidates all hold the oldest queued record and stay within the padded budget
(``len(batch) * max(cost) <= target_cost``, or one record alone): the batch grouped
around the oldest record at each padding-efficiency floor of ``FLOORS`` (with none
first: the choice while the fit warms up), and the arrival-order prefix. Planning a
candidate reads the pool without changing it; only the chosen one is taken out.
Within one cost, every candidate takes the oldest records first, so each takes a
front part of each cost's FIFO.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from ._assembly import GroupedAssembly
from ._budget import PaddedBudget
from ._cost_fit import CostFit, choose

__all__ = ("FLOORS", "MeasuredAssembly")

T = TypeVar("T", bound=Hashable)

#: The padding-efficiency floors of the grouped candidates (``None``: none).
FLOORS = (None, 0.5, 0.75, 0.9)


class _Plan:
    """A candidate batch: its records in order, and how many it takes of each cost."""

    __slots__ = ("budget", "items", "per_cost")

    def __init__(self, budget: PaddedBudget) -> None:
        self.budget = budget
        self.items: list[Any] = []
        self.per_cost: dict[int, int] = {}

    def add(self, item: Any, cost: int) -> None:
        self.items.append(item)
        self.per_cost[cost] = self.per_cost.get(cost, 0) + 1


class MeasuredAssembly(GroupedAssembly[T]):
    """Batches chosen among candidates by the records per predicted second of ``fit``."""

    __slots__ = ("_fit", "_max_size", "_target")

    def __init__(
        self,
        *,
        target_cost: int,
        max_batch_size: int,
        window: int,
        fit: CostFit,
        live: Callable[[T], bool] | None = None,
    ) -> None:
        super().__init__(
            target_cost=target_cost, max_batch_size=max_batch_size, cost_model="padded", window=window, live=live
        )
        self._target, self._max_size = target_cost, max_batch_size
        self._fit = fit

    def take(self) -> tuple[list[T], int]:
        """Remove and return the chosen candidate batch and its padded cost."""
        oldest = self.oldest()
        if oldest is None:
            return [], 0
        # Grouped with no floor first: the choice during warm-up, as with group_by_cost.
        plans = [*(self._grouped_plan(*oldest, floor) for floor in FLOORS), self._fifo_plan()]
        shapes = [(len(p.items), p.budget.cost(), p.budget.total) for p in plans]
        plan = plans[choose(shapes, self._fit)]
        self._take_out(plan)
        return plan.items, plan.budget.cost()

    def _fifo_plan(self) -> _Plan:
        """The longest prefix of the arrival order within the padded budget."""
        plan = _Plan(PaddedBudget(self._target, self._max_size, None))
        taken, live = self._taken, self._live
        for item, cost in zip(self._arrivals, self._arrival_costs, strict=True):
            if item in taken or (live is not None and not live(item)):
                continue
            if not plan.budget.try_add(cost):
                break
            plan.add(item, cost)
        return plan

    def _grouped_plan(self, oldest: T, cost: int, floor: float | None) -> _Plan:
        """The oldest record and, outward from its cost, the nearest costs' oldest
        records while the budget and ``floor`` allow (as ``GroupedAssembly`` does)."""
        plan = _Plan(PaddedBudget(self._target, self._max_size, floor))
        plan.budget.try_add(cost)
        plan.add(oldest, cost)
        costs = self._costs
        high = bisect_left(costs, cost)
        low = high - 1
        while low >= 0 or high < len(costs):
            go_left = high >= len(costs) or (low >= 0 and cost - costs[low] <= costs[high] - cost)
            if self._plan_cost(costs[low if go_left else high], oldest, plan):  # misfit: this side is done
                low, high = (-1, high) if go_left else (low, len(costs))
            elif go_left:
                low -= 1
            else:
                high += 1
        return plan

    def _plan_cost(self, cost: int, oldest: T, plan: _Plan) -> bool:
        """Add the live records of one cost, oldest first, while they fit; return
        whether one did not."""
        live = self._live
        for item in self._buckets[cost]:
            if item is oldest or (live is not None and not live(item)):
                continue
            if not plan.budget.try_add(cost):
                return True
            plan.add(item, cost)
        return False

    def _take_out(self, plan: _Plan) -> None:
        """Remove the plan's records from their costs' FIFOs (each a front part of
        its FIFO, with any withdrawn record among them); arrivals skip them later."""
        planned = set(plan.items)
        for cost, count in plan.per_cost.items():
            bucket = self._buckets[cost]
            while count:
                item = bucket[0]
                self._pop_first(cost, keep_bucket=True)
                self._taken.add(item)
                if item in planned:
                    count -= 1
            if not bucket:
                del self._buckets[cost]
                del self._costs[bisect_left(self._costs, cost)]
