"""Batches by priority: the assembly once records of more than one priority are queued.

Each priority has an assembly of its own (``_assembly.py``, as the settings ask:
arrival order, grouped by cost, or measured). A batch starts with the batch the
first level in line would take, then fills what budget is left from the levels
after it, in line: a lower priority never displaces a higher one, it only takes
room the higher one could not use.

The line is: first the levels whose oldest record has waited ``aging_s`` or more,
oldest first (so no record waits much longer than ``aging_s`` plus the batches of
what aged before it), then the others, highest priority first. The record that
must go next is thus the oldest aged record if there is one, else the oldest (or,
grouped, the anchor) of the highest priority.

Plain synchronous code with no awaits, like the other assemblies.
"""

from __future__ import annotations

from bisect import insort
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from time import monotonic
from typing import Generic, TypeVar

from ._assembly import Assembly
from ._budget import Budget

__all__ = ("PriorityAssembly",)

T = TypeVar("T", bound=Hashable)


class PriorityAssembly(Generic[T]):
    """The assembly of prioritized records; see the module for the rule.

    :param make_level: a new, empty assembly for one priority
    :param make_budget: a new, empty budget (as the levels' own) for a batch
    :param window: :meth:`full` once this many records are queued, so that the
        batch a free worker takes is chosen among all of them
    :param aging_s: after how long a queued record counts as the highest priority
        (``None``: never)
    """

    __slots__ = (
        "_arrivals",
        "_clock",
        "_cost_of",
        "_count",
        "_levels",
        "_live",
        "_make_budget",
        "_make_level",
        "_order",
        "_priority_of",
        "_taken",
        "aging_s",
        "window",
    )

    def __init__(
        self,
        *,
        make_level: Callable[[], Assembly[T]],
        make_budget: Callable[[], Budget],
        window: int,
        aging_s: float | None,
        priority_of: Callable[[T], int],
        cost_of: Callable[[T], int],
        live: Callable[[T], bool] | None = None,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._make_level, self._make_budget = make_level, make_budget
        self.window, self.aging_s = window, aging_s
        self._priority_of, self._cost_of, self._live, self._clock = priority_of, cost_of, live, clock
        self._levels: dict[int, Assembly[T]] = {}
        self._order: list[int] = []  # the priorities queued, lowest first
        # Per priority, when each record arrived, oldest first; records already
        # taken (or withdrawn) leave lazily, when they come first.
        self._arrivals: dict[int, deque[tuple[float, T]]] = {}
        self._taken: set[T] = set()
        self._count = 0  # records queued, over all levels

    def __len__(self) -> int:
        return self._count

    def add(self, item: T, cost: int, arrived: float | None = None) -> bool:
        """Queue ``item`` (at its priority), whose cost is ``cost``; return :meth:`full`."""
        priority = self._priority_of(item)
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = self._make_level()
            self._arrivals[priority] = deque()
            insort(self._order, priority)
        level.add(item, cost)
        self._arrivals[priority].append((self._clock() if arrived is None else arrived, item))
        self._count += 1
        return self._count >= self.window

    def adopt(self, items: Iterable[T], arrived: float) -> None:
        """Queue records that arrived no later than ``arrived``, oldest first."""
        for item in items:
            self.add(item, self._cost_of(item), arrived)

    def full(self) -> bool:
        """Whether ``window`` records are queued."""
        return self._count >= self.window

    def queued(self) -> list[T]:
        """The queued records, oldest first."""
        arrivals = sorted(
            ((arrived, n, item) for queue in self._arrivals.values() for n, (arrived, item) in enumerate(queue)),
            key=lambda entry: entry[:2],
        )
        queued = {item for level in self._levels.values() for item in level.queued()}
        return [item for _, _, item in arrivals if item in queued]

    def rebuild(self, make_level: Callable[[], Assembly[T]], make_budget: Callable[[], Budget], window: int) -> None:
        """Move the queued records into new levels (new settings), keeping their arrival times."""
        self._make_level, self._make_budget, self.window = make_level, make_budget, window
        for priority, level in self._levels.items():
            self._levels[priority] = fresh = make_level()
            for item in level.queued():
                fresh.add(item, self._cost_of(item))
        self._count = sum(len(level) for level in self._levels.values())

    def take(self) -> tuple[list[T], int]:
        """Remove and return the next batch (possibly not full) and its cost."""
        batch: list[T] = []
        budget = self._make_budget()
        for priority in self._line(self._clock()):
            level = self._levels[priority]
            if not batch:
                batch, _ = level.take()
                for item in batch:
                    budget.try_add(self._cost_of(item))
            else:
                level.fill(budget, batch, self._cost_of(batch[0]))
            if budget.exhausted:
                break
        self._taken.update(batch)
        self._drop_empty()
        self._count = sum(len(level) for level in self._levels.values())
        return batch, budget.cost()

    def _line(self, now: float) -> list[int]:
        """The priorities in the order their records go: aged first, oldest first,
        then the rest, highest first."""
        by_rank = self._order[::-1]
        if self.aging_s is None:
            return by_rank
        aged = []
        for priority in by_rank:
            oldest = self._oldest(priority)
            if oldest is not None and now - oldest >= self.aging_s:
                aged.append((oldest, -priority))
        if not aged:
            return by_rank
        first = [-negated for _, negated in sorted(aged)]
        return first + [priority for priority in by_rank if priority not in first]

    def _oldest(self, priority: int) -> float | None:
        """When the oldest record still queued at ``priority`` arrived."""
        arrivals, taken, live = self._arrivals[priority], self._taken, self._live
        while arrivals:
            arrived, item = arrivals[0]
            if item in taken:
                taken.discard(item)
            elif live is None or live(item):
                return arrived
            arrivals.popleft()
        return None

    def _drop_empty(self) -> None:
        for priority in [p for p in self._order if not len(self._levels[p])]:
            del self._levels[priority]
            self._order.remove(priority)
            for _, item in self._arrivals.pop(priority):
                self._taken.discard(item)
