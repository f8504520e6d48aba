"""The assembly of ``cost_model="measured"``: the grouping pool of
:class:`~batcher._assembly.GroupedAssembly`, and at each ``take()`` a choice among
candidate batches by what they are predicted to cost (``_cost_fit.py``).

The candidates all hold the oldest queued record and stay within the padded budget
(``len(batch) * max(cost) <= target_cost``, or one record alone): the batch grouped
around the oldest record at each padding-efficiency floor of ``FLOORS`` (with none
first: the choice while the fit warms up), and the arrival-order prefix. Planning a
candidate reads the pool without changing it; only the chosen one is taken out.
Within one cost, every candidate takes the oldest records first, so each takes a
front part of each cost's FIFO: a grouped plan counts how many it takes of each
cost (``PaddedBudget.add_many``), from fronts read once a take and shared by the
plans, and only the chosen plan's records are listed. A take from a pool of 4,096
records costs about 190 µs (490 µs record by record). The others are planned only
where one of them could be chosen over the first (:func:`~batcher._cost_fit.first_is_chosen`):
not where every queued record fits the first, as in a closed loop on a small GPU model.
There the first is every queued record, read in one pass without planning (17-23 µs
a take of 64 against 145-170, ``benchmarks/bench_choose.py``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterator
from itertools import islice
from typing import Any, TypeVar

from ._assembly import GroupedAssembly
from ._budget import PaddedBudget
from ._cost_fit import CostFit, choose, first_is_chosen

__all__ = ("FLOORS", "MeasuredAssembly")

T = TypeVar("T", bound=Hashable)

_NOTHING: Iterator[Any] = iter(())

#: The padding-efficiency floors of the grouped candidates (``None``: none).
FLOORS = (None, 0.5, 0.75, 0.9)


class _Plan:
    """A candidate batch: how many it takes of each cost, in the order it took them
    (or, for the arrival-order one, its records in order)."""

    __slots__ = ("budget", "items", "per_cost")

    def __init__(self, budget: PaddedBudget) -> None:
        self.budget = budget
        self.items: list[Any] | None = None
        self.per_cost: dict[int, int] = {}


class MeasuredAssembly(GroupedAssembly[T]):
    """Batches chosen among candidates by the records per predicted second of ``fit``."""

    __slots__ = ("_fit", "_fronts", "_max_size", "_target")

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
        #: Within one take: the live records read so far from the front of each cost's
        #: FIFO, and the rest of it.
        self._fronts: dict[int, tuple[list[T], Iterator[T]]] = {}

    def take(self) -> tuple[list[T], int]:
        """Remove and return the chosen candidate batch and its padded cost."""
        oldest = self.oldest()
        if oldest is None:
            return [], 0
        if self.fits_whole():  # every candidate but those with a floor is every record
            items, total, peak = self._live_arrivals()
            first = (len(items), len(items) * peak, total)
            if first_is_chosen(first, len(items), total, self._fit):
                self._clear()
                return items, first[1]
        try:
            # Grouped with no floor first: the choice during warm-up, as with group_by_cost.
            plan = self._grouped_plan(oldest[1], FLOORS[0])
            first = (plan.budget.count, plan.budget.cost(), plan.budget.total)
            # No candidate holds more records than are queued, nor more real tokens than
            # the budget (but for a record over it, which runs alone in every candidate).
            most = (min(self._count, self._max_size), max(self._target, first[2]))
            if not first_is_chosen(first, *most, self._fit):
                plans = [plan, *(self._grouped_plan(oldest[1], floor) for floor in FLOORS[1:]), self._fifo_plan()]
                shapes = [(p.budget.count, p.budget.cost(), p.budget.total) for p in plans]
                plan = plans[choose(shapes, self._fit)]
            items = self._items(plan)
        finally:
            self._fronts.clear()  # the fronts read the FIFOs that the take-out changes
        self._take_out(plan, items)
        return items, plan.budget.cost()

    def _front(self, cost: int, need: int) -> list[T]:
        """At least ``need`` of the live records at the front of this cost's FIFO,
        oldest first (fewer if it has fewer), read once a take and shared by the plans."""
        entry = self._fronts.get(cost)
        if entry is None:
            bucket, live = self._buckets[cost], self._live
            if len(bucket) <= need:  # all of it, at once (most are short)
                front = list(bucket) if live is None else [item for item in bucket if live(item)]
                entry = self._fronts[cost] = (front, _NOTHING)
                return front
            entry = self._fronts[cost] = ([], iter(bucket) if live is None else filter(live, bucket))
        front, rest = entry
        if len(front) < need:
            front += islice(rest, need - len(front))
        return front

    def _fifo_plan(self) -> _Plan:
        """The longest prefix of the arrival order within the padded budget."""
        plan = _Plan(PaddedBudget(self._target, self._max_size, None))
        items: list[T] = []
        taken, live, budget, per_cost = self._taken, self._live, plan.budget, plan.per_cost
        for item, cost in zip(self._arrivals, self._arrival_costs, strict=True):
            if item in taken or (live is not None and not live(item)):
                continue
            if not budget.try_add(cost):
                break
            items.append(item)
            per_cost[cost] = per_cost.get(cost, 0) + 1
        plan.items = items
        return plan

    def _grouped_plan(self, cost: int, floor: float | None) -> _Plan:
        """The oldest record (the first of its cost) and its cost's next ones, then,
        outward from its cost, the nearest costs' oldest records while the budget and
        ``floor`` allow (as ``GroupedAssembly`` does)."""
        plan = _Plan(PaddedBudget(self._target, self._max_size, floor))
        costs = self._costs
        high = bisect_left(costs, cost)
        low = high - 1
        high = len(costs) if self._plan_cost(cost, plan) else high + 1
        while low >= 0 or high < len(costs):
            go_left = high >= len(costs) or (low >= 0 and cost - costs[low] <= costs[high] - cost)
            if self._plan_cost(costs[low if go_left else high], plan):  # misfit: this side is done
                low, high = (-1, high) if go_left else (low, len(costs))
            elif go_left:
                low -= 1
            else:
                high += 1
        return plan

    def _plan_cost(self, cost: int, plan: _Plan) -> bool:
        """Add the front records of one cost while they fit; return whether one did not."""
        budget = plan.budget
        most = budget.room(cost)
        front = self._front(cost, most + 1)  # one more than fits tells a misfit
        if not front:  # every record of this cost was withdrawn
            return False
        if most == 1 or len(front) == 1:  # one record to try, as most costs hold
            added = int(budget.try_add(cost))
        else:
            added = budget.add_many(cost, min(most, len(front)))
        if added:
            plan.per_cost[cost] = added
        return added < len(front)

    def _items(self, plan: _Plan) -> list[T]:
        if plan.items is not None:
            return plan.items
        items: list[T] = []
        for cost, count in plan.per_cost.items():  # in the order the plan took them
            items += self._fronts[cost][0][:count]
        return items

    def _take_out(self, plan: _Plan, items: list[T]) -> None:
        """Remove the plan's records from their costs' FIFOs (each a front part of
        its FIFO, with any withdrawn record among them); arrivals skip them later."""
        planned, taken = set(items), self._taken
        taken |= planned
        for cost, count in plan.per_cost.items():
            bucket = self._buckets[cost]
            popped = 0
            while count:
                item = bucket.popleft()
                popped += 1
                if item in planned:
                    count -= 1
                else:  # withdrawn
                    taken.add(item)
            self._count -= popped
            if not bucket:
                del self._buckets[cost]
                del self._costs[bisect_left(self._costs, cost)]
