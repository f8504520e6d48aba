"""``configure()``: settings change while the batcher runs, checked as the
constructor checks them; the next batch obeys them; bad values change nothing."""

from __future__ import annotations

from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from batcher import (
    BatchDispatched,
    BatchEnded,
    BatcherOverloadedError,
    BatchFuture,
    DynamicBatcher,
    QueueTimeoutError,
    SyncBatcher,
    TokenBatcher,
)
from batcher._run import Run

from .helpers import EntryHeld, Recorder, blocked_batcher, bounded


def _note_worker(seen: set[int], event: object) -> None:
    if isinstance(event, BatchDispatched):
        seen.add(event.worker)


class Gauge:
    """An async model that counts how many batches are inside it at once and holds
    each until :meth:`release`; ``inside`` is set whenever ``wanted`` are inside."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self.wanted = 1
        self.inside = anyio.Event()
        self.gate = anyio.Event()

    async def __call__(self, batch: list[Any]) -> list[Any]:
        self.now += 1
        self.peak = max(self.peak, self.now)
        if self.now >= self.wanted:
            self.inside.set()
        try:
            await self.gate.wait()
        finally:
            self.now -= 1
        return batch

    def expect(self, wanted: int) -> anyio.Event:
        self.wanted, self.inside = wanted, anyio.Event()
        if self.now >= wanted:
            self.inside.set()
        return self.inside

    def release(self) -> None:
        self.gate.set()
        self.gate = anyio.Event()


class StartingGauge(EntryHeld, Gauge):
    """A :class:`Gauge` entered as the batcher starts, which waits there until ``enter`` is set."""

    async def __aexit__(self, *exc_info: object) -> None:
        pass


async def release_all(gauge: Gauge, futures: list[BatchFuture[Any]]) -> None:
    """Release the gauge's batches until every future has ended."""
    while not all(future.done() for future in futures):
        gauge.release()
        await anyio.wait_all_tasks_blocked()


@bounded(60)
class TestConfigure:
    async def test_a_new_budget_takes_effect_on_the_next_batch(self) -> None:
        async with blocked_batcher(max_batch_size=4, prefetch_batches=0) as (batcher, model, _):
            for n in range(6):
                await batcher.submit(n)
            batcher.configure(max_batch_size=2)
            model.release()
        assert [len(batch) for batch in model.batches[2:]] == [2, 2]  # the first 4 were closed already

    async def test_target_cost_and_min_batch_size(self) -> None:
        async with blocked_batcher(max_batch_size=100, prefetch_batches=0) as (batcher, model, _):
            batcher.configure(target_batch_cost=3)
            for n in range(6):
                await batcher.submit(n)
            model.release()
            await anyio.wait_all_tasks_blocked()
            batcher.configure(min_batch_size=3, batch_timeout_s=60)
            await batcher.submit("x")
            await batcher.submit("y")
            await anyio.wait_all_tasks_blocked()
            assert model.records[-1] == 5  # x and y wait for a third record
            await batcher.submit("z")
        assert model.batches[1:] == [[0, 1, 2], [3, 4, 5], ["x", "y", "z"]]

    async def test_bad_values_are_refused_and_change_nothing(self) -> None:
        async with blocked_batcher(max_batch_size=2, prefetch_batches=0) as (batcher, model, _):
            with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
                batcher.configure(min_batch_size=1, max_batch_size=0)
            with pytest.raises(ValueError, match="min_batch_size must be <= max_batch_size"):
                batcher.configure(min_batch_size=3)
            with pytest.raises(TypeError, match="batch_timeout_s must be a number, got str"):
                batcher.configure(batch_timeout_s="1")
            with pytest.raises(TypeError, match="configure\\(\\) cannot change 'max_queue_size'"):
                batcher.configure(max_queue_size=10)
            with pytest.raises(TypeError, match="cannot change 'target_batch_tokens'"):
                batcher.configure(target_batch_tokens=10)  # a TokenBatcher name
            for n in range(4):
                await batcher.submit(n)
            model.release()
        assert [len(batch) for batch in model.batches[1:]] == [2, 2]

    async def test_the_pool_of_workers_grows_at_once(self) -> None:
        gauge = Gauge()
        async with DynamicBatcher(gauge, max_batch_size=1) as batcher:
            for n in range(3):
                await batcher.submit(n)
            await gauge.expect(1).wait()
            batcher.configure(max_concurrent_batches=3)
            with anyio.fail_after(5):
                await gauge.expect(3).wait()
            gauge.release()
        assert gauge.peak == 3

    async def test_the_pool_shrinks_as_batches_finish(self) -> None:
        gauge = Gauge()
        async with DynamicBatcher(gauge, max_batch_size=1, max_concurrent_batches=3) as batcher:
            futures = [await batcher.submit(n) for n in range(3)]
            await gauge.expect(3).wait()
            batcher.configure(max_concurrent_batches=1)  # the three running batches finish
            futures += [await batcher.submit(n) for n in range(3, 6)]
            gauge.release()
            with anyio.fail_after(5):
                for future in futures[:3]:
                    await future
                for _ in range(3):
                    await gauge.expect(1).wait()
                    await anyio.wait_all_tasks_blocked()  # any other free worker would be inside now
                    assert gauge.now == 1
                    gauge.release()
                    await anyio.wait_all_tasks_blocked()  # the batch released has left the model
        assert [await future for future in futures] == list(range(6))

    @pytest.mark.parametrize("asked", ["by a done-callback", "as it hands over"])
    async def test_a_worker_asked_to_leave_between_two_batches_takes_no_other(
        self, asked: str, anyio_backend: str
    ) -> None:
        # The pool shrank while a worker was between two batches (a done-callback as it
        # settled one; a task while it gave the aggregator a turn): counted busy, it ran
        # "b" beside "hold".
        if asked == "as it hands over" and anyio_backend == "trio":
            pytest.skip("trio runs a turn's tasks in either order: the worker may take 'b' before configure()")
        hold, ended, inside = anyio.Event(), anyio.Event(), []

        async def model(batch: list[str]) -> list[str]:
            inside.append(batch[0])
            try:
                await (hold.wait() if batch == ["hold"] else anyio.lowlevel.checkpoint())
            finally:
                inside.remove(batch[0])
            return batch

        def on_event(event: object) -> None:
            if isinstance(event, BatchEnded):
                ended.set()

        batcher = DynamicBatcher(
            model, max_batch_size=1, max_concurrent_batches=2, prefetch_batches=0, observers=[on_event]
        )
        async with batcher:
            with anyio.fail_after(5):
                held = await batcher.submit("hold")
                await anyio.wait_all_tasks_blocked()
                first = await batcher.submit("a")
                if asked == "by a done-callback":
                    first.add_done_callback(lambda _: batcher.configure(max_concurrent_batches=1))
                    assert await first == "a"
                    last = await batcher.submit("b")
                else:
                    last = await batcher.submit("b")  # queued: the worker of "a" hands it over
                    await ended.wait()
                    batcher.configure(max_concurrent_batches=1)
                await anyio.wait_all_tasks_blocked()
                assert (inside, last.done()) == (["hold"], False)  # "b" waits for the one worker left
                hold.set()
                assert (await held, await first, await last) == ("hold", "a", "b")

    @pytest.mark.parametrize(("before", "after"), [(1, 3), (3, 1)])
    async def test_the_pool_is_resized_during_a_graceful_stop(self, before: int, after: int) -> None:
        # The drain kept the old size: no new worker started, none left.
        gauge = Gauge()
        batcher = DynamicBatcher(gauge, max_batch_size=1, max_concurrent_batches=before)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                futures = [await batcher.submit(n) for n in range(6)]
                await gauge.expect(before).wait()
                tg.start_soon(batcher.stop)  # drains the six
                await anyio.wait_all_tasks_blocked()
                batcher.configure(max_concurrent_batches=after)
                await anyio.wait_all_tasks_blocked()
                assert gauge.now == max(before, after)  # new workers start at once, busy ones finish
                gauge.release()
                await anyio.wait_all_tasks_blocked()
                assert gauge.now == min(after, 6 - max(before, after))
                await release_all(gauge, futures)
        assert [future.result() for future in futures] == list(range(6))

    async def test_idle_workers_leave_and_come_back(self) -> None:
        model = Recorder()
        async with DynamicBatcher(model, max_concurrent_batches=4) as batcher:
            await anyio.wait_all_tasks_blocked()
            batcher.configure(max_concurrent_batches=1)
            assert await batcher.call("a") == ("done", "a")
            batcher.configure(max_concurrent_batches=2)
            batcher.configure(max_concurrent_batches=1)
            batcher.configure(max_concurrent_batches=3)
            assert [await future for future in await batcher.submit_batch(range(10))] == [
                ("done", n) for n in range(10)
            ]

    @pytest.mark.parametrize(("before", "during"), [(3, 1), (1, 3)])
    async def test_a_pool_resized_while_the_batcher_starts_has_the_new_size(self, before: int, during: int) -> None:
        gauge = StartingGauge()
        batcher = DynamicBatcher(gauge, max_batch_size=1, max_concurrent_batches=before)

        async def admin() -> None:
            await gauge.entering.wait()  # serve() waits for the model to enter: no worker runs yet
            batcher.configure(max_concurrent_batches=during)
            gauge.enter.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(admin)
                await tg.start(batcher.serve)
                futures = [await batcher.submit(n) for n in range(4)]
                await gauge.expect(during).wait()
                await anyio.wait_all_tasks_blocked()
                assert gauge.now == during  # and no more
                await release_all(gauge, futures)
                assert gauge.peak == during
                batcher.configure(max_concurrent_batches=1)  # counted from the pool there is
                gauge.peak = 0
                futures += [await batcher.submit(n) for n in range(4, 7)]
                await release_all(gauge, futures)
                await batcher.stop()
        assert [future.result() for future in futures] == list(range(7))
        assert gauge.peak == 1

    async def test_a_worker_it_starts_takes_the_lowest_index_one_left(self) -> None:
        # Indices stay below the most workers at once, and so do the measured fit's masks.
        seen: set[int] = set()
        gauge = Gauge()
        observe = partial(_note_worker, seen)
        batcher = DynamicBatcher(gauge, max_batch_size=1, cost_model="measured", observers=[observe])
        async with batcher:
            run = batcher._run
            assert isinstance(run, Run)
            assert run.cost_fit is not None
            for _ in range(10):
                batcher.configure(max_concurrent_batches=3)
                futures = [await batcher.submit(n) for n in range(3)]
                with anyio.fail_after(5):
                    await gauge.expect(3).wait()
                    gauge.release()
                    assert [await future for future in futures] == [0, 1, 2]
                batcher.configure(max_concurrent_batches=1)
                await anyio.wait_all_tasks_blocked()  # the two idle workers have left
            assert max(run.cost_fit._shapes.values()) < 1 << 3
        assert seen == {0, 1, 2}

    async def test_process_timeout_queue_delay_and_queued_cost(self) -> None:
        async with blocked_batcher() as (batcher, model, _):
            batcher.configure(max_queued_cost=5, max_queue_delay_s=0.01)
            with pytest.raises(BatcherOverloadedError):
                await batcher.submit("big", estimated_cost=6)
            with pytest.raises(QueueTimeoutError):
                await batcher.call("late")
            batcher.configure(max_queued_cost=None, max_queue_delay_s=None)
            assert await batcher.submit("big", estimated_cost=6)
            model.release()
        gauge = Gauge()
        async with DynamicBatcher(gauge) as batcher:
            batcher.configure(process_timeout_s=0.05)
            with anyio.fail_after(5), pytest.raises(TimeoutError):
                await batcher.call("hangs")  # the model holds it: the new time limit ends the batch
            gauge.release()

    async def test_token_batcher_takes_its_token_names(self) -> None:
        model = Recorder(hold=True)
        async with TokenBatcher(model, target_batch_tokens=1000, prefetch_batches=0) as batcher:
            await batcher.submit("first")
            await model.entered.wait()
            with pytest.raises(ValueError, match="target_batch_tokens must be >= 1"):
                batcher.configure(target_batch_tokens=0)
            batcher.configure(target_batch_tokens=10)
            for n in range(4):
                await batcher.submit(f"r{n}", estimated_tokens=5)
            model.release()
        assert model.batches[1:] == [["r0", "r1"], ["r2", "r3"]]

    def test_its_token_name_takes_precedence_as_in_the_constructor(self) -> None:
        for given in (
            {"target_batch_tokens": 10, "target_batch_cost": 20},
            {"target_batch_cost": 20, "target_batch_tokens": 10},
        ):
            batcher = TokenBatcher(Recorder(), target_batch_tokens=1000)
            batcher.configure(**given)
            assert batcher._settings.target_batch_cost == 10

    async def test_before_start_it_sets_up_the_next_run(self) -> None:
        model = Recorder()
        batcher = DynamicBatcher(model, target_batch_cost=100)
        batcher.configure(target_batch_cost=2)
        async with batcher:
            await batcher.submit_batch(range(4))
        assert model.batches == [[0, 1], [2, 3]]


def test_sync_batcher_configures_from_its_thread() -> None:
    model = Recorder()
    with SyncBatcher(DynamicBatcher(model, max_batch_size=8)) as batcher:
        batcher.configure(max_batch_size=1)
        assert batcher.call("a") == ("done", "a")
        with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
            batcher.configure(max_batch_size=0)
    with pytest.raises(TypeError, match="cannot change 'cost_model'"):
        batcher.configure(cost_model="padded")
