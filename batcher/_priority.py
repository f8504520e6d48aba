"""Batches by priority: the assembly once records of more than one priority are queued.

Each priority has an assembly of its own (``_assembly.py``, as the settings ask:
arrival order, grouped by cost, or measured), and so do the aged records: those
queued ``aging_s`` or longer, whatever their priority, moved there oldest first as
they age. A batch starts with the batch the first level in line would take, then
fills what budget is left from the levels after it, in line: a lower priority never
displaces a higher one, it only takes room the higher one could not use.

The line is the aged records first, then the priorities, highest first. So the
record that must go next is the oldest aged record if there is one, else the oldest
(or, grouped, the anchor) of the highest priority; and no record waits much longer
than ``aging_s`` plus the batches of the records queued before it. In arrival order
(not grouped), a priority with an aged record left out of the batch adds none of
its younger ones: records of one priority keep their order.

Plain synchronous code with no awaits, like the other assemblies.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Hashable, Iterable
from heapq import heappop, heappush
from itertools import chain
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
    :param aging_s: after how long a queued record counts as aged (``None``: never)
    """

    __slots__ = (
        "_aged",
        "_aged_counts",
        "_aging_s",
        "_arrived",
        "_clock",
        "_cost_of",
        "_count",
        "_levels",
        "_make_budget",
        "_make_level",
        "_oldest",
        "_order",
        "_priority_of",
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
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self._make_level, self._make_budget, self.window = make_level, make_budget, window
        self._priority_of, self._cost_of, self._clock = priority_of, cost_of, clock
        self._levels: dict[int, Assembly[T]] = {}
        self._order: list[int] = []  # the priorities queued, lowest first
        self._aged = make_level()
        #: The aged records by priority, while the levels keep arrival order: a
        #: priority's younger records join no batch before its aged ones have.
        self._aged_counts: dict[int, int] = {}
        self._arrived: dict[T, float] = {}  # when each record queued arrived
        #: With aging, a heap of (arrival of a level's oldest record, its priority): what
        #: ages next, without a look at every level. A level's entry is pushed as its oldest
        #: record changes; older entries stay behind until popped (or a rebuild drops them).
        self._oldest: list[tuple[float, int]] = []
        self._count = 0  # records queued, over all levels
        self._aging_s: float | None = None
        self.aging_s = aging_s

    @property
    def aging_s(self) -> float | None:
        """After how long a queued record counts as aged (``None``: never)."""
        return self._aging_s

    @aging_s.setter
    def aging_s(self, aging_s: float | None) -> None:
        self._aging_s = aging_s
        self._heap_levels()

    def _heap_levels(self) -> None:
        # The heap of the levels' oldest records anew (empty without aging), and the count
        # (a grouped level drops withdrawn records at its front as it is asked its oldest).
        self._oldest = []
        if self._aging_s is not None:
            for priority in list(self._levels):
                self._note_oldest(priority)
                self._drop_if_empty(priority)
        self._count = len(self._aged) + sum(len(level) for level in self._levels.values())

    def _note_oldest(self, priority: int) -> None:
        # The level's oldest record has changed (or the level is new): its entry in the heap.
        if (oldest := self._levels[priority].oldest()) is not None:
            heappush(self._oldest, (self._arrived[oldest[0]], priority))

    def __len__(self) -> int:
        return self._count

    def add(self, item: T, cost: int, arrived: float | None = None) -> bool:
        """Queue ``item`` (at its priority), whose cost is ``cost``; return :meth:`full`."""
        priority = self._priority_of(item)
        level = self._levels.get(priority)
        if level is None:
            level = self._levels[priority] = self._make_level()
            insort(self._order, priority)
        level.add(item, cost)
        self._arrived[item] = self._clock() if arrived is None else arrived
        if self._aging_s is not None and len(level) == 1:  # its oldest record
            self._note_oldest(priority)
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
        return sorted(self._queued(), key=self._arrived.__getitem__)

    def _queued(self) -> list[T]:
        return [item for level in (self._aged, *self._levels.values()) for item in level.queued()]

    def rebuild(self, make_level: Callable[[], Assembly[T]], make_budget: Callable[[], Budget], window: int) -> None:
        """Move the queued records into new levels (new settings), keeping their arrival times."""
        self._make_level, self._make_budget, self.window = make_level, make_budget, window
        self._aged = self._moved(self._aged)
        self._aged_counts = {}
        self._count_aged(self._aged.queued(), 1)
        for priority, level in self._levels.items():
            self._levels[priority] = self._moved(level)
        self._heap_levels()  # (and the count)

    def _moved(self, level: Assembly[T]) -> Assembly[T]:
        fresh = self._make_level()
        for item in level.queued():
            fresh.add(item, self._cost_of(item))
        return fresh

    def take(self) -> tuple[list[T], int]:
        """Remove and return the next batch (possibly not full) and its cost."""
        self._promote(self._clock())
        batch: list[T] = []
        budget = self._make_budget()
        lengths: dict[int | None, int] = {}  # of the levels the batch takes from, before
        for priority in chain((None,), reversed(self._order)):
            if priority in self._aged_counts:  # in arrival order, its younger records wait for its aged ones
                continue
            level = self._aged if priority is None else self._levels[priority]
            lengths[priority] = len(level)
            if not batch:
                batch, _ = level.take()
                for item in batch:
                    budget.try_add(self._cost_of(item))
                if priority is None:
                    self._count_aged(batch, -1)
            else:
                level.fill(budget, batch, self._cost_of(batch[0]))
            if budget.exhausted:
                break
        self._forget(batch, lengths)
        return batch, budget.cost()

    def _count_aged(self, items: list[T], step: int) -> None:
        """Count ``items`` into (``step`` 1) or out of (-1) the aged level, by priority,
        if its batches keep arrival order (else nothing is counted)."""
        if not self._aged.in_arrival_order:
            return
        counts, priority_of = self._aged_counts, self._priority_of
        for item in items:
            priority = priority_of(item)
            if count := counts.get(priority, 0) + step:
                counts[priority] = count
            else:
                del counts[priority]

    def _promote(self, now: float) -> None:
        """Move the records queued ``aging_s`` or longer to the aged level, oldest first:
        only from the levels the heap says have one, each level's in one move."""
        if self._aging_s is None:
            return
        born_by, arrived, heap = now - self._aging_s, self._arrived, self._oldest
        aged: list[tuple[float, int, T, int]] = []
        while heap and heap[0][0] <= born_by:
            priority = heappop(heap)[1]
            level = self._levels.get(priority)
            if level is None:
                continue  # (an entry left behind by a level emptied since)
            length = len(level)
            moved = level.pop_while(lambda item: arrived[item] <= born_by)
            self._count += len(level) + len(moved) - length  # (withdrawn records dropped on the way)
            aged.extend((arrived[item], -priority, item, cost) for item, cost in moved)
            if not self._drop_if_empty(priority):
                self._note_oldest(priority)
        aged.sort(key=lambda entry: entry[:2])  # of equal age, the higher priority first
        for *_, item, cost in aged:
            self._aged.add(item, cost)
        self._count_aged([item for *_, item, _ in aged], 1)

    def _forget(self, batch: list[T], lengths: dict[int | None, int]) -> None:
        """Drop the batch's records, and the levels it emptied (of those it took from,
        whose ``lengths`` before it are given)."""
        arrived = self._arrived
        for item in batch:
            del arrived[item]
        for priority, length in lengths.items():
            if priority is not None and self._aging_s is not None:
                self._note_oldest(priority)  # (first: it may drop withdrawn records)
            self._count += len(self._aged if priority is None else self._levels[priority]) - length
            if priority is not None:
                self._drop_if_empty(priority)
        if len(arrived) > 2 * self._count + 64:  # withdrawn records the levels dropped
            self._arrived = {item: arrived[item] for item in self._queued()}
        if len(self._oldest) > 2 * len(self._levels) + 64:  # entries left behind
            self._heap_levels()

    def _drop_if_empty(self, priority: int) -> bool:
        # Forget an empty level; return whether it was.
        if len(self._levels[priority]):
            return False
        del self._levels[priority]
        del self._order[bisect_left(self._order, priority)]
        return True
