"""The batching rules, end to end through the loops, under asyncio and trio."""

from __future__ import annotations

import random
import threading
from typing import Any

import anyio
import pytest

from batcher import BatchFuture, DynamicBatcher
from batcher._aggregator import Aggregator
from batcher._submission import COHORT
from batcher._worker import CROWD

from .helpers import Recorder, blocked_batcher


class TestBudget:
    async def test_strict_budget_and_fifo(self) -> None:
        costs = [4, 4, 4, 9, 1, 20, 3]
        async with blocked_batcher(target_batch_cost=10) as (batcher, model, _):
            futures = [await batcher.submit(i, estimated_cost=c) for i, c in enumerate(costs)]
            model.release()
            results = [await future for future in futures]
        assert results == [("done", i) for i in range(len(costs))]
        assert model.batches[1:] == [[0, 1], [2], [3, 4], [5], [6]]
        for batch in model.batches[1:]:
            assert len(batch) == 1 or sum(costs[i] for i in batch) <= 10

    async def test_max_batch_size(self) -> None:
        async with blocked_batcher(max_batch_size=3) as (batcher, model, _):
            await batcher.submit_batch(range(7))
        assert model.batches[1:] == [[0, 1, 2], [3, 4, 5], [6]]

    async def test_padded_cost_model_in_batcher(self) -> None:
        async with blocked_batcher(target_batch_cost=20, cost_model="padded") as (batcher, model, _):
            await batcher.submit_batch(range(4), estimated_cost=[2, 2, 9, 3])
        assert model.batches[1:] == [[0, 1], [2, 3]]
        assert batcher.stats.total_batch_cost == 1 + 4 + 18
        assert (batcher.stats.avg_batch_size, batcher.stats.avg_batch_cost) == (5 / 3, 23 / 3)

    async def test_group_by_cost_in_batcher(self) -> None:
        costs = [10, 100, 11, 99, 12, 101]
        async with blocked_batcher(
            target_batch_cost=310, max_batch_size=3, cost_model="padded", group_by_cost=True
        ) as (batcher, model, _):
            await batcher.submit_batch(range(6), estimated_cost=costs)
        assert sorted(map(sorted, model.batches[1:])) == [[0, 2, 4], [1, 3, 5]]

    @pytest.mark.parametrize("group_by_cost", [False, True])
    async def test_padding_efficiency_floor_in_batcher(self, group_by_cost: bool) -> None:
        rng = random.Random(3)
        costs = [rng.randint(1, 100) for _ in range(300)]
        async with blocked_batcher(
            target_batch_cost=2000, cost_model="padded", group_by_cost=group_by_cost, min_padding_efficiency=0.85
        ) as (batcher, model, _):
            futures = await batcher.submit_batch(range(len(costs)), estimated_cost=costs)
            model.release()
            assert [await future for future in futures] == [("done", i) for i in range(len(costs))]
        batches = [[costs[i] for i in batch] for batch in model.batches[1:]]
        assert sorted(i for batch in model.batches[1:] for i in batch) == list(range(len(costs)))
        for batch in batches:
            assert len(batch) == 1 or sum(batch) >= 0.85 * len(batch) * max(batch)
            assert len(batch) == 1 or len(batch) * max(batch) <= 2000

    async def test_measured_cost_model_in_batcher(self) -> None:
        rng = random.Random(4)
        costs = [rng.randint(1, 100) for _ in range(400)]
        async with blocked_batcher(target_batch_cost=1500, max_batch_size=32, cost_model="measured") as (
            batcher,
            model,
            _,
        ):
            futures = await batcher.submit_batch(range(len(costs)), estimated_cost=costs)
            model.release()
            assert [await future for future in futures] == [("done", i) for i in range(len(costs))]
            fit = batcher._run.cost_fit  # type: ignore[union-attr]
            assert fit is not None
            assert fit.coefficients is not None, "the workers fed the fit"
        batches = [[costs[i] for i in batch] for batch in model.batches[1:]]
        assert sorted(i for batch in model.batches[1:] for i in batch) == list(range(len(costs)))
        for batch in batches:
            assert len(batch) <= 32
            assert len(batch) == 1 or len(batch) * max(batch) <= 1500
        assert batcher.stats.total_batch_cost == 1 + sum(len(b) * max(b) for b in batches)


class TestWhenBatchesClose:
    async def test_batch_grows_while_worker_busy(self) -> None:
        async with blocked_batcher() as (batcher, model, _):
            for i in range(5):
                await batcher.submit(i)
                await anyio.wait_all_tasks_blocked()
        assert model.batches[1:] == [[0, 1, 2, 3, 4]]

    async def test_lone_request_does_not_wait_for_timeout(self) -> None:
        recorder = Recorder()
        async with DynamicBatcher(recorder, batch_timeout_s=60) as batcher:
            with anyio.fail_after(5):
                assert await batcher.call("x") == ("done", "x")

    async def test_runnable_producers_join_the_eager_batch(self) -> None:
        recorder = Recorder()
        async with DynamicBatcher(recorder, batch_timeout_s=60) as batcher:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    for i in range(10):
                        tg.start_soon(batcher.call, i)
        assert [sorted(batch) for batch in recorder.batches] == [list(range(10))]  # trio may reorder tasks

    async def test_without_eager_dispatch_window_applies(self) -> None:
        recorder = Recorder()
        async with DynamicBatcher(recorder, eager_dispatch=False, batch_timeout_s=0.2) as batcher:
            with anyio.fail_after(5):
                started = anyio.current_time()
                await batcher.call("x")
                assert 0.15 <= anyio.current_time() - started <= 0.2 + 0.5

    async def test_without_eager_dispatch_full_batch_goes_at_once(self) -> None:
        recorder = Recorder()
        async with DynamicBatcher(recorder, eager_dispatch=False, batch_timeout_s=60, max_batch_size=4) as batcher:
            with anyio.fail_after(5):
                futures = await batcher.submit_batch(range(4))
                assert [await future for future in futures] == [("done", i) for i in range(4)]
        assert recorder.batches == [[0, 1, 2, 3]]

    async def test_min_batch_size_waits_at_most_the_timeout(self) -> None:
        recorder = Recorder()
        async with DynamicBatcher(recorder, min_batch_size=3, batch_timeout_s=0.1) as batcher:
            with anyio.fail_after(5):
                started = anyio.current_time()
                await batcher.call("alone")
                assert 0.05 <= anyio.current_time() - started <= 0.1 + 0.5
                futures = await batcher.submit_batch(range(3))
                assert [await future for future in futures] == [("done", i) for i in range(3)]
        assert recorder.batches == [["alone"], [0, 1, 2]]

    async def test_min_batch_size_flushed_at_shutdown(self) -> None:
        recorder = Recorder()
        with anyio.fail_after(5):
            async with DynamicBatcher(recorder, min_batch_size=5, batch_timeout_s=3600) as batcher:
                future = await batcher.submit("x")
        assert future.result() == ("done", "x")


class TestConcurrency:
    async def test_max_concurrent_batches_run_together(self) -> None:
        both_running = anyio.Event()
        running = 0

        async def fn(batch: list[int]) -> list[int]:
            nonlocal running
            running += 1
            if running == 2:
                both_running.set()
            await both_running.wait()
            return batch

        with anyio.fail_after(5):
            async with DynamicBatcher(fn, max_batch_size=1, max_concurrent_batches=2) as batcher:
                futures = await batcher.submit_batch([1, 2])
                assert [await f for f in futures] == [1, 2]

    @pytest.mark.parametrize("prefetch", [0, 1])
    async def test_closed_batch_waiting_for_worker_can_be_withdrawn(self, prefetch: int) -> None:
        async with blocked_batcher(max_batch_size=1, prefetch_batches=prefetch) as (batcher, model, first):
            second = await batcher.submit("second")
            third = await batcher.submit("third")
            await anyio.wait_all_tasks_blocked()
            assert second.cancel()
            assert third.cancel()
        assert first.result() == ("done", "first")
        assert model.records == ["first"]
        assert batcher.stats.total_cancelled == 2

    async def test_sync_process_fn_runs_in_a_thread(self) -> None:
        release = threading.Event()
        entered = anyio.Event()
        threads: list[threading.Thread] = []
        token = anyio.lowlevel.current_token()

        def fn(batch: list[int]) -> list[int]:
            threads.append(threading.current_thread())
            anyio.from_thread.run_sync(entered.set, token=token)
            assert release.wait(5)
            return [x + 1 for x in batch]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                future = await batcher.submit(1)
                await entered.wait()  # the loop keeps running while the model call blocks
                release.set()
                assert await future == 2
        [thread] = threads
        assert thread is not threading.main_thread()

    @pytest.mark.parametrize("workers", [1, 2])
    async def test_each_worker_keeps_one_thread(self, workers: int) -> None:
        # GPU frameworks keep per-thread state (warmed-up shapes): every batch of a
        # worker runs on the worker's own thread, a daemon that ends with the batcher,
        # before its stop returns.
        threads: list[threading.Thread] = []

        def fn(batch: list[int]) -> list[int]:
            threads.append(threading.current_thread())
            return batch

        with anyio.fail_after(10):
            async with DynamicBatcher(fn, max_batch_size=1, max_concurrent_batches=workers) as batcher:
                for _ in range(5):  # one at a time, idle in between
                    await batcher.call(0)
                async for _ in batcher.map(range(20)):
                    pass
        owned = set(threads)
        assert len(threads) == 25
        assert len(owned) <= workers
        assert all(thread.daemon and thread.name == "batcher process_fn" for thread in owned)
        assert not any(thread.is_alive() for thread in owned)  # each has exited by the end of stop

    async def test_callers_of_a_crowded_batch_run_before_the_next_batch_is_settled(self) -> None:
        # Each wake-up allocates, and trio runs a turn's tasks in either order: a
        # worker that settled the next batch before the last crowd ran would push the
        # cyclic GC past its threshold (Worker._handover). The model is called for
        # batch n + 2 just after batch n + 1 settles: by then every caller of batch n
        # has returned whenever batch n woke CROWD callers or more.
        returned: set[int] = set()
        batches: list[list[int]] = []
        late: list[int] = []

        async def fn(batch: list[int]) -> list[int]:
            if len(batches) >= 2 and len(batches[-2]) >= CROWD:
                late.extend(record for record in batches[-2] if record not in returned)
            batches.append(batch)
            return batch

        async def caller(record: int) -> None:
            assert await batcher.call(record) == record
            returned.add(record)

        with anyio.fail_after(10):
            async with DynamicBatcher(fn, max_batch_size=CROWD, max_queue_size=20 * CROWD) as batcher:
                async with anyio.create_task_group() as tg:
                    for record in range(12 * CROWD):
                        tg.start_soon(caller, record)
        assert sum(len(batch) >= CROWD for batch in batches) >= 8
        assert late == []

    async def test_a_batch_that_ends_with_nothing_queued_wakes_no_loop(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # With nothing queued, the worker neither wakes the aggregator nor takes its
        # hand-over turn: a lone request's result comes back a turn sooner.
        passes = 0
        pull = Aggregator._pull_queued

        def counted(self: Aggregator, *args: Any) -> None:
            nonlocal passes
            passes += 1
            pull(self, *args)

        monkeypatch.setattr(Aggregator, "_pull_queued", counted)
        after_model: list[int] = []

        async def fn(batch: list[int]) -> list[int]:
            nonlocal passes
            passes = 0
            return batch

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                for record in range(5):
                    assert await batcher.call(record) == record
                    await anyio.wait_all_tasks_blocked()
                    after_model.append(passes)
        assert after_model == [0] * 5


class TestResults:
    async def test_wrong_length_fails_the_batch(self) -> None:
        async def fn(batch: list[int]) -> list[int]:
            return batch[:-1]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                futures = await batcher.submit_batch([1, 2, 3])
        for future in futures:
            with pytest.raises(ValueError, match="returned 2 results for a batch of 3"):
                await future

    @pytest.mark.parametrize("plain", [False, True])
    async def test_a_process_function_that_changes_its_list_is_held_to_the_batch_it_got(self, plain: bool) -> None:
        def shrink(batch: list[int]) -> list[int]:
            batch.pop(0)  # the list is the function's to change; the count was taken before
            return [x * 10 for x in batch]

        async def shrink_async(batch: list[int]) -> list[int]:
            return shrink(batch)

        with anyio.fail_after(5):
            async with DynamicBatcher(shrink if plain else shrink_async) as batcher:
                for records in ([1, 2, 3], [4, 5, 6]):  # the batcher goes on
                    for future in await batcher.submit_batch(records):
                        with pytest.raises(ValueError, match="returned 2 results for a batch of 3"):
                            await future
        assert (batcher.stats.total_completed, batcher.stats.total_failed) == (6, 6)

    async def test_exception_fails_batch_and_batcher_goes_on(self) -> None:
        error = RuntimeError("model exploded")
        calls = 0

        async def fn(batch: list[int]) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise error
            return batch

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                failing = await batcher.submit(1)
                with pytest.raises(RuntimeError) as info:
                    await failing
                assert info.value is error  # the very exception, not a wrapper
                assert await batcher.call(2) == 2
        assert batcher.stats.total_failed == 1

    async def test_exception_in_slot_fails_only_that_record(self) -> None:
        async def fn(batch: list[int]) -> list[Any]:
            return [ValueError(f"bad {x}") if x == 2 else x for x in batch]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                futures = await batcher.submit_batch([1, 2, 3])
        assert futures[0].result() == 1
        with pytest.raises(ValueError, match="bad 2"):
            futures[1].result()
        assert futures[2].result() == 3
        assert (batcher.stats.total_completed, batcher.stats.total_failed) == (3, 1)  # failed: one of the three

    async def test_process_fn_returning_non_list(self) -> None:
        async def fn(batch: list[int]) -> Any:
            return 42

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                future = await batcher.submit(1)
        with pytest.raises(TypeError, match="must return a list, got int"):
            future.result()


class TestBackpressure:
    async def test_submit_waits_while_queue_full(self) -> None:
        async with blocked_batcher(max_queue_size=2, max_batch_size=1, prefetch_batches=0) as (batcher, model, _):
            accepted = 0
            while True:
                try:
                    batcher.submit_nowait(accepted)
                except anyio.WouldBlock:
                    break
                accepted += 1
                await anyio.wait_all_tasks_blocked()
            # The stream holds max_queue_size; the aggregator holds one more batch.
            assert accepted == 2 + 1
            waiter_done = anyio.Event()

            async def blocked_submit() -> None:
                await batcher.submit("late")
                waiter_done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked_submit)
                await anyio.wait_all_tasks_blocked()
                assert not waiter_done.is_set()
                model.release()
                await waiter_done.wait()
        assert model.records == ["first", 0, 1, 2, "late"]


class TestGroupedPool:
    async def test_withdrawn_records_take_no_batch_slot(self) -> None:
        async with blocked_batcher(max_batch_size=4, group_by_cost=True) as (batcher, model, _):
            futures = [await batcher.submit(x, estimated_cost=1 + x % 3) for x in range(40)]
            await anyio.wait_all_tasks_blocked()  # all 40 are in the aggregator's pool
            for future in futures[::2]:
                assert future.cancel()
            model.release()
            assert [await f for f in futures[1::2]] == [("done", x) for x in range(1, 40, 2)]
        assert [len(batch) for batch in model.batches[1:]] == [4, 4, 4, 4, 4]
        assert sorted(model.records[1:]) == list(range(1, 40, 2))


class TestQueueBehind:
    """Callers blocked by a full submission stream queue behind it, in order."""

    @staticmethod
    async def _fill(batcher: DynamicBatcher[Any, Any]) -> None:
        # The model holds its batch, the aggregator the next: fill the stream behind them.
        while True:
            try:
                batcher.submit_nowait("queued")
            except anyio.WouldBlock:
                return
            await anyio.wait_all_tasks_blocked()

    async def test_callers_behind_a_full_stream_keep_their_order_and_nowait_is_refused(self) -> None:
        async with blocked_batcher(max_queue_size=2, max_batch_size=1, prefetch_batches=0) as (batcher, model, _):
            await self._fill(batcher)
            results: list[Any] = []
            async with anyio.create_task_group() as tg:
                for name in ("call 1", "call 2", "call 3"):
                    tg.start_soon(lambda n: self._call(batcher, n, results), name)
                    await anyio.wait_all_tasks_blocked()
                with pytest.raises(anyio.WouldBlock):
                    batcher.submit_nowait("must not pass the callers")
                model.release()
        # Their records reach the model in the callers' order. The order in which the
        # callers then resume is the scheduler's: trio reverses a batch of runnable
        # tasks at random, so two results that end in one loop pass may swap.
        assert model.records[-3:] == ["call 1", "call 2", "call 3"]
        assert sorted(results) == [("done", "call 1"), ("done", "call 2"), ("done", "call 3")]

    @staticmethod
    async def _call(batcher: DynamicBatcher[Any, Any], name: str, results: list[Any]) -> None:
        results.append(await batcher.call(name))

    async def test_submitters_behind_a_full_stream_return_though_the_newest_of_a_cohort_gave_up(self) -> None:
        # More submitters than share one event (COHORT); the event is keyed by the
        # newest's record, so cancelling that caller must not strand the others.
        count, gave_up = 2 * COHORT + 3, {COHORT - 1, 2 * COHORT + 2}
        futures: dict[int, BatchFuture[Any]] = {}
        async with blocked_batcher(max_queue_size=1, max_batch_size=1, prefetch_batches=0) as (batcher, model, _):
            await self._fill(batcher)
            async with anyio.create_task_group() as tg:
                scopes = []
                for index in range(count):
                    scopes.append(anyio.CancelScope())
                    tg.start_soon(self._submit, batcher, index, scopes[-1], futures)
                    await anyio.wait_all_tasks_blocked()
                assert not futures, "every submitter waits for room"
                for index in gave_up:
                    scopes[index].cancel()
                await anyio.wait_all_tasks_blocked()
                model.release()
            kept = [index for index in range(count) if index not in gave_up]
            assert sorted(futures) == kept
            assert [await futures[index] for index in kept] == [("done", index) for index in kept]
        assert not gave_up & set(model.records)
        assert batcher.stats.total_cancelled == len(gave_up)

    @staticmethod
    async def _submit(
        batcher: DynamicBatcher[Any, Any], index: int, scope: anyio.CancelScope, futures: dict[int, BatchFuture[Any]]
    ) -> None:
        with scope:
            futures[index] = await batcher.submit(index)

    async def test_a_submitter_behind_the_stream_returns_while_the_model_still_runs(self) -> None:
        # Callers whose records leave the overflow are woken at the worker's next
        # hand-over, or as soon as the aggregator has nothing else to do: here the model
        # holds its batch and will not hand over, so the aggregator must wake them.
        async with blocked_batcher(max_queue_size=1, max_batch_size=4, prefetch_batches=0) as (batcher, model, _):
            batcher.submit_nowait("queued")  # handed to the waiting aggregator
            batcher.submit_nowait("queued too")  # fills the stream
            future = await batcher.submit("behind")  # the aggregator takes it, then waits for a worker
            assert not model.records[1:], "the model still holds its first batch"
            model.release()
            assert await future == ("done", "behind")

    async def test_a_process_function_that_submits_behind_the_stream_is_not_held_up(self) -> None:
        # The model's own submit() waits for room; once the aggregator has taken its
        # record into a full batch (and waits to hand it over), the model must go on:
        # no hand-over comes while it holds the only worker.
        followed: list[BatchFuture[str]] = []

        async def model(records: list[str]) -> list[str]:
            if "parent" in records:
                await anyio.wait_all_tasks_blocked()  # the aggregator waits for a record
                batcher.submit_nowait("handed over")
                batcher.submit_nowait("fills the stream")
                followed.append(await batcher.submit("follow-up"))  # behind the stream
            return [record.upper() for record in records]

        batcher = DynamicBatcher(model, max_queue_size=1, max_batch_size=3, prefetch_batches=0)
        with anyio.fail_after(5):
            async with batcher:
                assert await batcher.call("parent") == "PARENT"
                assert await followed[0] == "FOLLOW-UP"

    async def test_the_only_workers_process_function_does_not_wait_for_room(self) -> None:
        # Room comes only as batches go, and none goes before it returns: its records
        # wait behind the full queue instead (a wait would never end).
        followed: list[BatchFuture[str]] = []

        async def model(records: list[str]) -> list[str]:
            if records == ["parent"]:
                followed.extend([await batcher.submit(f"child {n}") for n in range(6)])
            return [record.upper() for record in records]

        batcher = DynamicBatcher(model, max_queue_size=2, max_batch_size=1, prefetch_batches=1)
        with anyio.fail_after(5):
            async with batcher:
                assert await batcher.call("parent") == "PARENT"
                assert [await future for future in followed] == [f"CHILD {n}" for n in range(6)]

    async def test_a_cancelled_caller_behind_the_stream_is_withdrawn(self) -> None:
        async with blocked_batcher(max_queue_size=1, max_batch_size=1, prefetch_batches=0) as (batcher, model, _):
            batcher.submit_nowait("queued")
            await anyio.wait_all_tasks_blocked()
            batcher.submit_nowait("queued too")
            with anyio.move_on_after(0.05):
                await batcher.call("gave up")  # behind the full stream until the deadline
            model.release()
            assert await batcher.call("after") == ("done", "after")
        assert "gave up" not in model.records
        stats = batcher.stats
        assert stats.total_cancelled == 1
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled
