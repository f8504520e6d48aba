"""Which queued records form the next batch.

Plain synchronous code, tested without an event loop. The aggregator adds records as
they arrive, asks :func:`~batcher._decide.next_step` (given ``full()``, among others)
what to do next, and calls ``take()`` to close a batch.

Every batch obeys the budget: its cost (by the cost model) never exceeds ``target_cost``,
except a batch of one record over the target, which runs alone; and it holds at most
``max_batch_size`` records.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable, Hashable
from typing import ClassVar, Generic, TypeVar

from ._budget import Budget, new_budget
from ._protocols import CostModel

__all__ = ("Assembly", "FifoAssembly", "GroupedAssembly", "make_assembly")

T = TypeVar("T", bound=Hashable)


class FifoAssembly(Generic[T]):
    """Batches in arrival order: the longest prefix of the queue that fits (once its cost
    reaches the target, even a record of zero cost waits); one that does not fit waits at
    the head. The open batch is kept as records arrive: :meth:`full` O(1), :meth:`take` O(batch)."""

    __slots__ = ("_budget", "_costs", "_full", "_items")

    #: Batches keep arrival order (``PriorityAssembly`` keeps it within a priority).
    in_arrival_order: ClassVar[bool] = True

    def __init__(
        self,
        *,
        target_cost: int,
        max_batch_size: int,
        cost_model: CostModel = "sum",
        min_efficiency: float | None = None,
    ) -> None:
        self._items, self._costs = deque[T](), deque[int]()
        self._budget = new_budget(target_cost, max_batch_size, cost_model, min_efficiency)
        self._full = False

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, cost: int) -> bool:
        """Queue ``item``, whose cost is ``cost``; return :meth:`full`."""
        self._items.append(item)
        self._costs.append(cost)
        if not self._full:
            budget = self._budget
            if not budget.try_add(cost) or budget.exhausted:
                self._full = True
        return self._full

    def queued(self) -> list[T]:
        """The queued records, oldest first."""
        return list(self._items)

    def full(self) -> bool:
        """Whether no record of positive cost could join the next batch."""
        return self._full

    def take(self) -> tuple[list[T], int]:
        """Remove and return the next batch (possibly not full) and its cost."""
        budget = self._budget
        count, cost = budget.count, budget.cost()
        items, costs = self._items, self._costs
        batch = [items.popleft() for _ in range(count)]
        for _ in range(count):
            costs.popleft()
        self._reopen()
        return batch, cost

    def oldest(self) -> tuple[T, int] | None:
        """The oldest record and its cost, left in place."""
        return (self._items[0], self._costs[0]) if self._items else None

    def pop_while(self, aged: Callable[[T], bool]) -> list[tuple[T, int]]:
        """Remove and return the oldest records and their costs, oldest first, while ``aged(record)``."""
        items, costs, popped = self._items, self._costs, []
        while items and aged(items[0]):
            popped.append((items.popleft(), costs.popleft()))
        self._reopen()  # (once: a reopen scans up to a batch)
        return popped

    def fill(self, budget: Budget, batch: list[T], near: int) -> None:
        """Move records from the front of the queue into ``batch``, a batch of
        another assembly that ``budget`` prices, while they fit (``near`` is unused)."""
        items, costs = self._items, self._costs
        while items and not budget.exhausted and budget.try_add(costs[0]):
            batch.append(items.popleft())
            costs.popleft()
        self._reopen()

    def _reopen(self) -> None:  # the open batch again: the longest prefix of the queue that fits
        budget = self._budget
        budget.reset()
        self._full = False
        for queued_cost in self._costs:
            if not budget.try_add(queued_cost) or budget.exhausted:
                self._full = True
                break


class GroupedAssembly(Generic[T]):
    """Batches of records of similar cost, built around the oldest queued record.

    The next batch always holds the oldest queued record, so none starves: a record
    waits at most for the batches of the records queued before it. Around it, the
    batch takes the queued records whose costs are closest to its cost, while the
    budget allows; of equal costs, the oldest first.

    Queued records sit in one FIFO per distinct cost, the costs in a sorted list: adding
    a record is O(1) (O(log k) for a new cost of k), and a batch O(batch + the costs it
    looks at), whatever the pool's depth. A pool that fits one batch whole is taken in
    arrival order in one pass (64 records: 15-17 µs against 97-114 cost by cost,
    ``bench_choose.py``). :meth:`full`: whether ``window`` records are queued (grouping
    chooses better from a deeper pool). With ``live``, a record for which it returns
    false (withdrawn) is dropped when a batch would take it, and never takes a slot.
    """

    __slots__ = ("_arrival_costs", "_arrivals", "_buckets", "_budget", "_costs", "_count", "_live", "_taken", "_window")

    in_arrival_order: ClassVar[bool] = False

    def __init__(
        self,
        *,
        target_cost: int,
        max_batch_size: int,
        cost_model: CostModel = "sum",
        window: int,
        live: Callable[[T], bool] | None = None,
        min_efficiency: float | None = None,
    ) -> None:
        self._buckets: dict[int, deque[T]] = {}  # cost -> its records, oldest first
        self._costs: list[int] = []  # the keys of _buckets, sorted
        self._count = 0
        # Arrival order, taken ones skipped lazily; costs beside, not in tuples (a GC object each).
        self._arrivals: deque[T] = deque()
        self._arrival_costs: deque[int] = deque()
        self._taken: set[T] = set()  # out of their bucket, still in _arrivals
        self._budget = new_budget(target_cost, max_batch_size, cost_model, min_efficiency)
        self._window = window
        self._live = live

    def __len__(self) -> int:
        return self._count

    def add(self, item: T, cost: int) -> bool:
        """Queue ``item``, whose cost is ``cost``; return :meth:`full`."""
        bucket = self._buckets.get(cost)
        if bucket is None:
            bucket = self._buckets[cost] = deque()
            insort(self._costs, cost)
        bucket.append(item)
        self._arrivals.append(item)
        self._arrival_costs.append(cost)
        self._count += 1
        return self._count >= self._window

    def queued(self) -> list[T]:
        """The queued records, oldest first."""
        taken = self._taken
        return [item for item in self._arrivals if item not in taken]

    def full(self) -> bool:
        """Whether the pool is as deep as the grouping window."""
        return self._count >= self._window

    def take(self) -> tuple[list[T], int]:
        """Remove and return the next batch (possibly not full) and its cost."""
        budget = self._budget
        if self.fits_whole():
            items, total, peak = self._live_arrivals()
            self._clear()
            return items, budget.price(len(items), total, peak)
        budget.reset()
        oldest = self.pop_oldest()
        if oldest is None:
            return [], 0
        item, cost = oldest
        batch = [item]
        budget.try_add(cost)
        self._grow_around(cost, batch, budget)
        return batch, budget.cost()

    def fits_whole(self) -> bool:
        """Whether every queued record fits one batch: then it is the batch grown around any."""
        costs = self._costs
        return bool(costs) and self._budget.holds(self._count, costs[-1])  # withdrawn ones counted

    def _live_arrivals(self) -> tuple[list[T], int, int]:
        """Every live record, oldest first, with their total and highest cost."""
        taken, live = self._taken, self._live
        items: list[T] = []
        total = peak = 0
        for item, cost in zip(self._arrivals, self._arrival_costs, strict=True):
            if item not in taken and (live is None or live(item)):
                items.append(item)
                total += cost
                if cost > peak:
                    peak = cost
        return items, total, peak

    def _clear(self) -> None:
        """Forget every queued record."""
        self._buckets.clear()
        self._costs.clear()
        self._arrivals.clear()
        self._arrival_costs.clear()
        self._taken.clear()
        self._count = 0

    def fill(self, budget: Budget, batch: list[T], near: int) -> None:
        """Move the records nearest in cost to ``near`` into ``batch``, a batch of
        another assembly that ``budget`` prices, while they fit."""
        self._grow_around(near, batch, budget)
        if len(self._taken) > 2 * self._count + 64:
            self._compact()  # a level that only fills may never take its oldest, which holds the rest back

    def _compact(self) -> None:
        """Drop the taken records from the arrival order at once, not as they reach its front."""
        taken = self._taken
        kept = [
            (item, cost) for item, cost in zip(self._arrivals, self._arrival_costs, strict=True) if item not in taken
        ]
        self._arrivals, self._arrival_costs = deque(item for item, _ in kept), deque(cost for _, cost in kept)
        taken.clear()

    def oldest(self) -> tuple[T, int] | None:
        """The oldest live record and its cost, left in place: taken and withdrawn
        ones at the front of the arrival order are dropped on the way."""
        arrivals, costs, taken, live = self._arrivals, self._arrival_costs, self._taken, self._live
        while arrivals:
            item, cost = arrivals[0], costs[0]
            if item in taken:
                taken.discard(item)
            elif live is not None and not live(item):
                self._pop_first(cost)  # withdrawn: the oldest of its cost as well
            else:
                return item, cost
            arrivals.popleft()
            costs.popleft()
        return None

    def pop_while(self, aged: Callable[[T], bool]) -> list[tuple[T, int]]:
        """Remove and return the oldest live records and their costs, oldest first, while ``aged(record)``."""
        popped: list[tuple[T, int]] = []
        while (oldest := self.oldest()) is not None and aged(oldest[0]):
            popped.append(oldest)
            self.pop_oldest()
        return popped

    def pop_oldest(self) -> tuple[T, int] | None:
        """Remove and return the oldest live record and its cost (the first of its cost's FIFO)."""
        oldest = self.oldest()
        if oldest is not None:
            self._arrivals.popleft()
            self._arrival_costs.popleft()
            self._pop_first(oldest[1])
        return oldest

    def _grow_around(self, cost: int, batch: list[T], budget: Budget) -> None:
        """Fill the budget from the records nearest in cost to ``cost``: its own
        bucket first, then outward, one cost at a time, the nearer side first."""
        costs = self._costs
        high = bisect_left(costs, cost)
        low = high - 1
        while low >= 0 or high < len(costs):
            go_left = high >= len(costs) or (low >= 0 and cost - costs[low] <= costs[high] - cost)
            at = low if go_left else high
            if self._fill_from(costs[at], batch, budget):  # the budget is spent on this side
                if go_left:
                    low = -1
                else:
                    high = len(costs)
            elif go_left:
                low -= 1
            else:
                high += 1
            high -= self._drop_empty(costs, at, high)

    def _fill_from(self, cost: int, batch: list[T], budget: Budget) -> bool:
        """Take the records of one cost, oldest first, while they fit; return
        whether one did not (further out on this side, none will)."""
        bucket, live, taken = self._buckets[cost], self._live, self._taken
        while bucket:
            item = bucket[0]
            if live is not None and not live(item):
                self._pop_first(cost, keep_bucket=True)
                taken.add(item)
                continue
            if not budget.try_add(cost):
                return True
            self._pop_first(cost, keep_bucket=True)
            taken.add(item)
            batch.append(item)
        return False

    def _pop_first(self, cost: int, *, keep_bucket: bool = False) -> None:
        bucket = self._buckets[cost]
        bucket.popleft()
        self._count -= 1
        if not bucket and not keep_bucket:
            del self._buckets[cost]
            del self._costs[bisect_left(self._costs, cost)]

    def _drop_empty(self, costs: list[int], at: int, high: int) -> int:
        # Forget a cost whose bucket the batch emptied; return how far ``high`` shifts.
        if at < len(costs) and not self._buckets[costs[at]]:
            del self._buckets[costs[at]]
            del costs[at]
            return 1 if at < high else 0
        return 0


Assembly = FifoAssembly[T] | GroupedAssembly[T]


def make_assembly(
    *,
    target_cost: int,
    max_batch_size: int,
    cost_model: CostModel,
    group_by_cost: bool,
    window: int,
    live: Callable[[T], bool] | None = None,
    min_efficiency: float | None = None,
) -> Assembly[T]:
    """The assembly for these settings (``live``: :class:`GroupedAssembly`; ``min_efficiency``: ``PaddedBudget``)."""
    if group_by_cost:
        return GroupedAssembly(
            target_cost=target_cost,
            max_batch_size=max_batch_size,
            cost_model=cost_model,
            window=window,
            live=live,
            min_efficiency=min_efficiency,
        )
    return FifoAssembly(
        target_cost=target_cost, max_batch_size=max_batch_size, cost_model=cost_model, min_efficiency=min_efficiency
    )
