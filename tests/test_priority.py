"""Priorities: a higher ``priority`` is dispatched first, arrival order within one,
the budget unchanged, and ``priority_aging_s`` keeps low priorities from starving.
The rule itself (``PriorityAssembly``) is tested with a fake clock; the batcher
end to end under both backends."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher import DynamicBatcher, SyncBatcher, TokenBatcher
from batcher._assembly import make_assembly
from batcher._budget import batch_cost, new_budget
from batcher._priority import PriorityAssembly

from .helpers import Recorder, blocked_batcher, bounded

_ids = count()


@dataclass(frozen=True)
class Rec:
    name: str
    cost: int
    priority: int = 0
    serial: int = field(default_factory=lambda: next(_ids))  # records of equal fields stay distinct


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def assembly(
    *,
    target: int = 100,
    size: int = 3,
    cost_model: Any = "sum",
    grouped: bool = False,
    aging_s: float | None = None,
    clock: Clock | None = None,
) -> PriorityAssembly[Rec]:
    make_level, make_budget = levels(target, size, cost_model, grouped)
    return PriorityAssembly(
        make_level=make_level,
        make_budget=make_budget,
        window=1000,
        aging_s=aging_s,
        priority_of=lambda rec: rec.priority,
        cost_of=lambda rec: rec.cost,
        clock=clock or Clock(),
    )


def levels(target: int, size: int, cost_model: Any, grouped: bool) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """A priority's new assembly, and a new budget, for these settings."""

    def level() -> Any:
        return make_assembly(
            target_cost=target, max_batch_size=size, cost_model=cost_model, group_by_cost=grouped, window=1000
        )

    return level, lambda: new_budget(target, size, cost_model, None)


def names(batch: list[Rec]) -> list[str]:
    return [rec.name for rec in batch]


def add(queue: PriorityAssembly[Rec], *recs: Rec) -> None:
    for rec in recs:
        queue.add(rec, rec.cost)


class TestRule:
    def test_highest_first_then_arrival_order_and_lower_ones_fill_the_rest(self) -> None:
        queue = assembly(size=3)
        add(queue, Rec("a", 1), Rec("b", 1), Rec("x", 1, 5), Rec("m", 1, 1), Rec("y", 1, 5), Rec("c", 1))
        assert names(queue.take()[0]) == ["x", "y", "m"]
        assert names(queue.take()[0]) == ["a", "b", "c"]
        assert len(queue) == 0

    def test_the_budget_holds_across_priorities(self) -> None:
        queue = assembly(target=10, size=8)
        add(queue, Rec("low", 3), Rec("high", 8, 2), Rec("small", 2))
        batch, cost = queue.take()
        assert (names(batch), cost) == (["high"], 8)  # "low" does not fit; arrival order stops there
        assert names(queue.take()[0]) == ["low", "small"]

    def test_grouping_happens_within_what_priority_allows(self) -> None:
        queue = assembly(target=35, size=8, grouped=True)
        add(queue, Rec("h10", 10, 1), Rec("h50", 50, 1), Rec("l49", 49), Rec("l11", 11), Rec("l12", 12))
        batch, cost = queue.take()
        assert (names(batch), cost) == (["h10", "l11", "l12"], 33)  # around the record that must go next
        assert names(queue.take()[0]) == ["h50"]  # alone: over the target
        assert names(queue.take()[0]) == ["l49"]

    def test_an_aged_record_goes_next_oldest_first(self) -> None:
        clock = Clock()
        queue = assembly(size=1, aging_s=1.0, clock=clock)
        add(queue, Rec("old-low", 1))
        clock.now = 0.5
        add(queue, Rec("low2", 1, -1))
        clock.now = 0.7
        for n in range(3):
            add(queue, Rec(f"h{n}", 1, 9))
        assert names(queue.take()[0]) == ["h0"]
        clock.now = 1.2  # "old-low" has waited 1.2 s, "low2" 0.7 s
        assert names(queue.take()[0]) == ["old-low"]
        assert names(queue.take()[0]) == ["h1"]
        clock.now = 1.6  # "low2" too (the high ones have waited 0.9 s)
        assert names(queue.take()[0]) == ["low2"]
        assert names(queue.take()[0]) == ["h2"]

    def test_only_the_aged_records_go_ahead_not_their_younger_peers(self) -> None:
        clock = Clock()
        queue = assembly(size=2, aging_s=1.0, clock=clock)
        add(queue, Rec("old-low", 1))
        clock.now = 1.5
        add(queue, Rec("young-low", 1))
        add(queue, Rec("high", 1, 1))
        clock.now = 1.7
        assert names(queue.take()[0]) == ["old-low", "high"]
        assert names(queue.take()[0]) == ["young-low"]

    def test_a_younger_record_does_not_pass_an_aged_one_of_its_priority_that_did_not_fit(self) -> None:
        clock = Clock()
        queue = assembly(target=10, size=8, aging_s=0.2, clock=clock)
        add(queue, Rec("a", 5), Rec("b", 8))
        clock.now = 0.4
        add(queue, Rec("c", 3), Rec("h", 1, 1))
        assert names(queue.take()[0]) == ["a", "h"]  # "c" waits for the aged "b"; "h" is of another priority
        assert names(queue.take()[0]) == ["b"]
        assert names(queue.take()[0]) == ["c"]

    def test_a_level_that_only_fills_batches_lets_go_of_what_it_gave(self) -> None:
        # Strict priorities, grouped: the low level's oldest record never fits beside
        # the high ones, so that level only fills; the records it gave must not be kept.
        queue = assembly(target=100, size=8, grouped=True)
        add(queue, Rec("never-fits", 95))
        given: list[weakref.ref[Rec]] = []
        for round_ in range(500):
            lows = [Rec(f"low{round_}-{n}", 10) for n in range(4)]
            given += [weakref.ref(rec) for rec in lows]
            add(queue, Rec(f"high{round_}", 60, 1), *lows)
            batch, _ = queue.take()
            assert names(batch) == [f"high{round_}", *names(lows)]
            del batch, lows
        gc.collect()
        assert sum(ref() is not None for ref in given) <= 2 * 4 + 64  # bounded, not one per record
        assert names(queue.queued()) == ["never-fits"]

    @pytest.mark.parametrize("drained", [True, False])
    def test_aging_lets_go_of_the_records_taken(self, drained: bool) -> None:
        """The arrival-order queue aging reads held every record taken until it had
        aged: with aging_s=3600 and the batcher idle after a burst, every result."""
        clock = Clock()
        queue = assembly(target=1000, size=8, aging_s=3600.0, clock=clock)
        if not drained:
            add(queue, Rec("stays", 1, -1))  # a low priority the others pass
        given: list[weakref.ref[Rec]] = []
        for n in range(1000):
            rec = Rec(f"r{n}", 1, n % 3)
            given.append(weakref.ref(rec))
            add(queue, rec)
            clock.now += 0.001
            del rec
        for _ in range(125):
            queue.take()
        gc.collect()
        assert sum(ref() is not None for ref in given) <= 64  # bounded, not one per record
        assert len(queue) == (0 if drained else 1)

    def test_without_aging_a_low_priority_waits_for_every_higher_one(self) -> None:
        clock = Clock()
        queue = assembly(size=1, aging_s=None, clock=clock)
        add(queue, Rec("low", 1), Rec("h0", 1, 1), Rec("h1", 1, 1))
        clock.now = 1e6
        assert [names(queue.take()[0]) for _ in range(3)] == [["h0"], ["h1"], ["low"]]

    def test_queued_lists_every_record_in_arrival_order(self) -> None:
        clock = Clock()
        queue = assembly(size=2, clock=clock)
        recs = [Rec("a", 1), Rec("x", 1, 3), Rec("b", 1), Rec("y", 1, 3)]
        for rec in recs:
            clock.now += 1
            add(queue, rec)
        assert queue.queued() == recs
        queue.take()
        assert names(queue.queued()) == ["a", "b"]


@bounded(60)
class TestBatcher:
    async def test_higher_priority_is_dispatched_first_fifo_within_one(self) -> None:
        async with blocked_batcher(max_batch_size=2) as (batcher, model, _):
            await batcher.submit("a")
            await batcher.submit("b")
            await batcher.submit("x", priority=5)
            await batcher.submit("m", priority=1)
            await batcher.submit("y", priority=5)
            futures = await batcher.submit_batch(["c", "d"], priority=-1)
            model.release()
            await futures[-1]
        assert model.batches[1:] == [["x", "y"], ["m", "a"], ["b", "c"], ["d"]]

    async def test_a_first_priority_refused_as_the_batcher_stops_leaves_the_batches_closed_ahead(self) -> None:
        # Refused once input has ended, it must not take back batches that no
        # aggregator will take in again: the stop runs them.
        model = Recorder(hold=True)
        batcher = DynamicBatcher(model, max_batch_size=1, prefetch_batches=2)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                await batcher.submit("first")
                await model.entered.wait()
                queued = await batcher.submit_batch(["r1", "r2"])
                await anyio.wait_all_tasks_blocked()  # both closed ahead for the busy worker
                tg.start_soon(batcher.stop)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(RuntimeError, match="not running"):
                    await batcher.submit("late", priority=1)
                model.release()
        assert [future.result() for future in queued] == [("done", "r1"), ("done", "r2")]
        assert model.batches == [["first"], ["r1"], ["r2"]]
        assert batcher.stats.queued == 0

    async def test_a_first_priority_behind_a_long_backlog_is_not_kept_behind_it(self) -> None:
        """The aggregator reads a FIFO queue only as far as the next batch needs; it
        switches to priority order as the record is submitted, not once it reads it."""
        async with blocked_batcher(max_batch_size=4) as (batcher, model, _):
            for n in range(40):
                await batcher.submit(f"p0-{n}")
            await anyio.wait_all_tasks_blocked()  # batches closed ahead fill the prefetch slots
            await batcher.submit("urgent", priority=5)
            await anyio.wait_all_tasks_blocked()
            model.release()
        assert model.batches[1][0] == "urgent"
        assert [r for b in model.batches[1:] for r in b if r != "urgent"] == [f"p0-{n}" for n in range(40)]

    async def test_every_entry_point_takes_a_priority(self) -> None:
        async with blocked_batcher(max_batch_size=10) as (batcher, model, _):

            async def release_once_all_are_queued() -> None:
                await anyio.wait_all_tasks_blocked()
                model.release()

            await batcher.submit("submit")
            batcher.submit_nowait("nowait", priority=1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: batcher.call("call", priority=2))
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(release_once_all_are_queued)
                async with batcher.map(["map"], priority=3) as results:
                    assert [result async for result in results] == [("done", "map")]
        assert model.batches[1] == ["map", "call", "nowait", "submit"]

    @pytest.mark.parametrize("aging_s", [0.0, None])
    async def test_aging_bounds_the_wait_of_a_low_priority_under_sustained_high_load(
        self, aging_s: float | None
    ) -> None:
        # 20 closed-loop producers of priority 1 keep 19 records queued at all times.
        # Aged at once (0 s), "low" waits only for the records queued before it;
        # never aged (None), it waits until the producers stop.
        model = Recorder()
        async with DynamicBatcher(model, max_batch_size=1, priority_aging_s=aging_s) as batcher:

            async def produce() -> None:
                for _ in range(60):
                    await batcher.call("high", priority=1)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(produce)
                    while len(model.records) < 100:
                        await anyio.lowlevel.checkpoint()
                    queued_at = len(model.records)
                    await batcher.call("low")
        position = model.records.index("low")
        if aging_s is None:
            assert position >= len(model.records) - 21
        else:
            assert position - queued_at <= 25

    async def test_aging_switched_on_while_records_wait_applies_to_them(self) -> None:
        async with blocked_batcher(max_batch_size=1, priority_aging_s=None) as (batcher, model, _):
            await batcher.submit("old")
            for name in ("new", "newer"):
                await batcher.submit(name, priority=1)
            batcher.configure(priority_aging_s=0.001)
            await anyio.sleep(0.01)  # (the time it takes them all to age: the behaviour under test)
        assert model.records == ["first", "old", "new", "newer"]  # aged: oldest first

    async def test_priority_must_be_an_int(self) -> None:
        async with DynamicBatcher(Recorder()) as batcher:
            with pytest.raises(TypeError, match="priority must be an int, got str"):
                await batcher.submit("a", priority="high")  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="priority must be an int, got bool"):
                await batcher.call("a", priority=True)
            with pytest.raises(TypeError, match="priority must be an int, got float"):
                await batcher.submit_batch(["a"], priority=1.0)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="priority must be an int"):
                batcher.map(["a"], priority=None)  # type: ignore[call-overload]
            assert batcher.stats.total_submitted == 0

    async def test_token_batcher_takes_priorities(self) -> None:
        model = Recorder(hold=True)
        async with TokenBatcher(model, max_batch_size=1) as batcher:
            await batcher.submit("first")
            await model.entered.wait()
            low = await batcher.submit("low", estimated_tokens=3)
            high = await batcher.submit("high", estimated_tokens=3, priority=1)
            model.release()
            await low
            assert high.done()
        assert model.records == ["first", "high", "low"]


def test_sync_batcher_takes_priorities() -> None:
    model = Recorder()
    with SyncBatcher(DynamicBatcher(model, max_batch_size=4)) as batcher:
        assert batcher.call("a", priority=2) == ("done", "a")
        assert batcher.submit("b", priority=-3).result(timeout=5) == ("done", "b")
        with batcher.map(["c", "d"], priority=1) as results:
            assert list(results) == [("done", "c"), ("done", "d")]
        with pytest.raises(TypeError, match="priority must be an int"):
            batcher.call("e", priority="x")  # type: ignore[arg-type]


class TestRuleProperties:
    """For any records and settings, drained in one go."""

    @staticmethod
    def drain(queue: PriorityAssembly[Rec]) -> list[tuple[list[Rec], int]]:
        batches = []
        while len(queue):
            batches.append(queue.take())
        return batches

    @given(
        records=st.lists(st.tuples(st.integers(0, 30), st.integers(-2, 2)), min_size=1, max_size=60),
        target=st.integers(1, 40),
        size=st.integers(1, 8),
        cost_model=st.sampled_from(["sum", "padded"]),
        grouped=st.booleans(),
        aging_s=st.sampled_from([None, 0.0, 1.0]),
    )
    @settings(max_examples=300, deadline=None)
    def test_budget_holds_and_every_record_lands_once(
        self,
        records: list[tuple[int, int]],
        target: int,
        size: int,
        cost_model: str,
        grouped: bool,
        aging_s: float | None,
    ) -> None:
        clock = Clock()
        queue = assembly(target=target, size=size, cost_model=cost_model, grouped=grouped, aging_s=aging_s, clock=clock)
        recs = [Rec(f"r{n}", cost, priority) for n, (cost, priority) in enumerate(records)]
        for rec in recs:
            clock.now += 0.3
            queue.add(rec, rec.cost)
        batches = self.drain(queue)
        taken = [rec for batch, _ in batches for rec in batch]
        assert sorted(taken, key=recs.index) == recs
        for batch, cost in batches:
            assert cost == batch_cost([rec.cost for rec in batch], cost_model)  # type: ignore[arg-type]
            assert len(batch) <= size
            assert len(batch) == 1 or cost <= target

    @given(
        steps=st.lists(
            st.one_of(st.tuples(st.integers(0, 30), st.integers(-2, 2)), st.sampled_from(["take", "rebuild"])),
            min_size=1,
            max_size=80,
        ),
        target=st.integers(1, 40),
        size=st.integers(1, 8),
        cost_model=st.sampled_from(["sum", "padded"]),
        aging_s=st.sampled_from([None, 0.0, 0.5, 1.0, 2.0]),
    )
    @settings(max_examples=500, deadline=None)
    def test_in_arrival_order_records_of_one_priority_keep_it_whatever_ages(
        self, steps: list[tuple[int, int] | str], target: int, size: int, cost_model: str, aging_s: float | None
    ) -> None:
        # Aging moves a priority's oldest records ahead of the rest; a younger one
        # of the same priority must not pass an aged one that did not fit.
        clock = Clock()
        queue = assembly(target=target, size=size, cost_model=cost_model, aging_s=aging_s, clock=clock)
        recs: list[Rec] = []
        taken: list[Rec] = []
        for n, step in enumerate(steps):
            clock.now += 0.3
            if isinstance(step, tuple):
                recs.append(Rec(f"r{n}", *step))
                add(queue, recs[-1])
            elif step == "rebuild":  # as configure() does: the aged records are counted again
                queue.rebuild(*levels(target, size, cost_model, grouped=False), 1000)
            elif len(queue):
                taken += queue.take()[0]
        taken += [rec for batch, _ in self.drain(queue) for rec in batch]
        for priority in {rec.priority for rec in recs}:
            assert [rec for rec in taken if rec.priority == priority] == [
                rec for rec in recs if rec.priority == priority
            ]

    @given(
        priorities=st.lists(st.integers(-3, 3), min_size=1, max_size=60),
        size=st.integers(1, 8),
        grouped=st.booleans(),
        aging_s=st.sampled_from([None, 0.0]),
    )
    @settings(max_examples=300, deadline=None)
    def test_with_equal_costs_records_go_by_priority_then_arrival(
        self, priorities: list[int], size: int, grouped: bool, aging_s: float | None
    ) -> None:
        # Strict priorities (no aging) take the records highest first, in arrival
        # order within one; aged at once (0 s), every record counts as the highest,
        # which is arrival order.
        clock = Clock()
        queue = assembly(target=1000, size=size, grouped=grouped, aging_s=aging_s, clock=clock)
        recs = [Rec(f"r{n}", 5, priority) for n, priority in enumerate(priorities)]
        for rec in recs:
            clock.now += 0.1
            add(queue, rec)
        taken = [rec for batch, _ in self.drain(queue) for rec in batch]
        if aging_s is None:
            assert taken == sorted(recs, key=lambda rec: -rec.priority)  # a stable sort keeps arrival order
        else:
            assert taken == recs

    @given(
        steps=st.lists(
            st.one_of(
                st.tuples(st.integers(0, 30), st.integers(-30, 30)),
                st.sampled_from(["take", "take", "aging on", "aging off", "rebuild"]),
            ),
            min_size=1,
            max_size=120,
        ),
        grouped=st.booleans(),
    )
    @settings(max_examples=400, deadline=None)
    def test_the_count_holds_and_the_oldest_aged_record_goes_next(self, steps: list[Any], grouped: bool) -> None:
        """Aging looks only at the levels with aged records, and the count is kept
        from the levels a batch or a promotion touched: checked against a plain
        account of what is queued, with aging switched on and off meanwhile."""
        clock = Clock()
        queue = assembly(target=40, size=4, grouped=grouped, aging_s=1.0, clock=clock)
        queued: dict[Rec, float] = {}  # what is queued, and when it arrived
        for n, step in enumerate(steps):
            clock.now += 0.3
            if isinstance(step, tuple):
                rec = Rec(f"r{n}", *step)
                add(queue, rec)
                queued[rec] = clock.now
            elif step == "take":
                aging_s = queue.aging_s
                aged = [] if aging_s is None else [rec for rec in queued if queued[rec] <= clock.now - aging_s]
                batch, _ = queue.take()
                for rec in batch:
                    del queued[rec]  # (a KeyError: taken twice)
                if aged:
                    assert min(aged, key=lambda rec: rec.serial) in batch  # (serials grow with arrival)
            elif step == "rebuild":
                queue.rebuild(*levels(40, 4, "sum", grouped), 1000)
            else:
                queue.aging_s = 1.0 if step == "aging on" else None
            assert len(queue) == len(queued)
        taken = [rec for batch, _ in self.drain(queue) for rec in batch]
        assert sorted(taken, key=lambda rec: rec.serial) == sorted(queued, key=lambda rec: rec.serial)
