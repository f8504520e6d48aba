"""BatchFuture behaves like asyncio.Future where callers notice."""

from __future__ import annotations

import gc
import traceback
import weakref
from typing import Any

import anyio
import pytest

from batcher import BatchFuture, DynamicBatcher, RecordCancelledError

from .helpers import blocked_batcher


async def test_state_before_and_after() -> None:
    async with blocked_batcher() as (_, model, future):
        assert isinstance(future, BatchFuture)
        assert not future.done()
        assert not future.cancelled()
        with pytest.raises(RuntimeError, match="not ready"):
            future.result()
        with pytest.raises(RuntimeError, match="not ready"):
            future.exception()
        model.release()
        assert await future == ("done", "first")
    assert future.done()
    assert not future.cancelled()
    assert future.exception() is None
    assert future.result() == ("done", "first")
    assert await future == ("done", "first")  # awaiting again gives the same
    assert await future.wait() == ("done", "first")


async def test_many_waiters() -> None:
    results: list[object] = []
    async with blocked_batcher() as (_, model, future):

        async def wait() -> None:
            results.append(await future)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            assert results == []
            model.release()
    assert results == [("done", "first")] * 3


async def test_exception_is_the_same_object() -> None:
    error = KeyError("k")

    async def fn(batch: list[str]) -> list[str]:
        raise error

    with anyio.fail_after(5):
        async with DynamicBatcher(fn) as batcher:
            future = await batcher.submit("x")
            with pytest.raises(KeyError) as info:
                await future
    assert info.value is error
    assert future.exception() is error


async def test_cancel_queued_record() -> None:
    async with blocked_batcher() as (batcher, model, first):
        queued = await batcher.submit("queued")
        assert not first.cancel()  # dispatched: too late
        assert queued.cancel()
        assert not queued.cancel()  # already ended
        assert queued.cancelled()
        assert queued.done()
        with pytest.raises(RecordCancelledError):
            await queued
        with pytest.raises(RecordCancelledError):
            queued.result()
        with pytest.raises(RecordCancelledError):
            queued.exception()
        model.release()
        assert await first == ("done", "first")
    assert model.records == ["first"]
    stats = batcher.stats
    assert stats.total_cancelled == 1
    assert stats.total_submitted == stats.total_completed + stats.total_cancelled


def test_record_cancelled_error_is_not_a_cancellation() -> None:
    assert issubclass(RecordCancelledError, Exception)


class Marker:
    """A local of a caller's frame, to see whether the frame is still alive."""


class TestReRaising:
    CALLERS = 300

    async def test_re_raising_a_shared_exception_is_bounded_and_keeps_no_caller_frames(self) -> None:
        error = ValueError("one exception for the whole batch")

        async def fn(batch: list[int]) -> list[int]:
            raise error

        depths: list[int] = []
        same: list[bool] = []
        markers: list[weakref.ref[Marker]] = []

        async def caller(future: BatchFuture[int]) -> None:
            marker = Marker()
            markers.append(weakref.ref(marker))
            try:
                await future
            except ValueError as exc:
                same.append(exc is error)  # the very object the model raised
                depths.append(len(traceback.extract_tb(exc.__traceback__)))

        with anyio.fail_after(5):
            async with DynamicBatcher(fn, max_batch_size=self.CALLERS) as batcher:
                futures = await batcher.submit_batch(range(self.CALLERS))
                for future in futures:
                    await caller(future)
        assert same == [True] * self.CALLERS
        assert max(depths) == min(depths)  # every re-raise starts from the saved traceback
        gc.collect()
        assert sum(marker() is not None for marker in markers) <= 1  # at most the last caller's frame

    async def test_returned_exception_is_raised_without_a_traceback_of_its_own(self) -> None:
        error = KeyError("returned, not raised")

        async def fn(batch: list[int]) -> list[object]:
            return [error for _ in batch]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                futures = await batcher.submit_batch(range(3))
                for future in futures:
                    with pytest.raises(KeyError) as info:
                        await future
                    assert info.value is error
                    assert future.exception() is error


class TestAwaitingItsOwnBatcher:
    async def test_with_one_worker_the_model_gets_a_clear_error(self) -> None:
        batcher: DynamicBatcher[str, str]

        async def fn(batch: list[str]) -> list[str]:
            if "outer" in batch:
                return [await batcher.call("inner")]
            return batch

        batcher = DynamicBatcher(fn)
        with anyio.fail_after(5):
            async with batcher:
                with pytest.raises(RuntimeError, match="process_fn awaited a result of its own batcher"):
                    await batcher.call("outer")
                assert await batcher.call("after") == "after"
        stats = batcher.stats
        assert (stats.total_failed, stats.total_cancelled) == (1, 1)  # "inner" was withdrawn

    async def test_with_more_workers_it_may_proceed(self) -> None:
        batcher: DynamicBatcher[str, str]

        async def fn(batch: list[str]) -> list[str]:
            if "outer" in batch:
                return [await batcher.call("inner") + "+outer"]
            return batch

        batcher = DynamicBatcher(fn, max_concurrent_batches=2)
        with anyio.fail_after(5):
            async with batcher:
                assert await batcher.call("outer") == "inner+outer"

    async def test_after_configure_leaves_one_worker_it_is_refused_again(self) -> None:
        batcher: DynamicBatcher[str, str]
        inside, shrunk = anyio.Event(), anyio.Event()

        async def fn(batch: list[str]) -> list[str]:
            if "outer" in batch:
                inside.set()
                await shrunk.wait()
                with pytest.raises(RuntimeError, match="process_fn awaited a result of its own batcher"):
                    await batcher.call("inner")
            return batch

        batcher = DynamicBatcher(fn, max_concurrent_batches=2)
        with anyio.fail_after(5):
            async with batcher, anyio.create_task_group() as tg:
                tg.start_soon(batcher.call, "outer")
                await inside.wait()
                batcher.configure(max_concurrent_batches=1)  # the idle worker leaves
                shrunk.set()

    async def test_after_configure_shrinks_two_busy_workers_to_one_the_one_left_is_refused(self) -> None:
        # The first call to return must not lift the refusal for the other, still inside.
        batcher: DynamicBatcher[str, str]
        both_in, release_first, first_out = anyio.Event(), anyio.Event(), anyio.Event()
        inside = 0

        async def fn(batch: list[str]) -> list[str]:
            nonlocal inside
            inside += 1
            if inside == 2:
                both_in.set()
            if batch == ["first"]:
                await release_first.wait()
                return batch
            await first_out.wait()
            with pytest.raises(RuntimeError, match="process_fn awaited a result of its own batcher"):
                await batcher.call("inner")
            return batch

        batcher = DynamicBatcher(fn, max_batch_size=1, max_concurrent_batches=2)
        with anyio.fail_after(5):
            async with batcher:
                second, first = await batcher.submit("second"), await batcher.submit("first")
                await both_in.wait()
                batcher.configure(max_concurrent_batches=1)  # both busy: the first to finish leaves
                release_first.set()
                assert await first == "first"
                first_out.set()
                assert await second == "second"

    async def test_a_task_it_left_running_is_not_taken_for_it_once_its_call_returned(self) -> None:
        # Tasks copy the context they start from: one the process function started in
        # a task group of the caller's counts as the function only while its call runs.
        batcher: DynamicBatcher[str, str]
        in_second, answers = anyio.Event(), []
        release = anyio.Event()

        async def follow_up() -> None:
            await in_second.wait()  # the first call has returned; the worker runs another batch
            release.set()
            answers.append(await batcher.call("follow-up"))

        async def fn(batch: list[str]) -> list[str]:
            if "first" in batch:
                background.start_soon(follow_up)
            if "second" in batch:
                in_second.set()
                await release.wait()
            return batch

        batcher = DynamicBatcher(fn)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as background, batcher:
                assert await batcher.call("first") == "first"
                assert await batcher.call("second") == "second"
        assert answers == ["follow-up"]


class TestDoneCallbacks:
    async def test_called_once_when_the_future_ends_and_at_once_if_it_has(self) -> None:
        calls: list[tuple[str, Any]] = []
        async with blocked_batcher() as (_, model, first):
            first.add_done_callback(lambda f: calls.append(("a", f.result())))
            first.add_done_callback(lambda f: calls.append(("b", f.result())))
            waiter_done = anyio.Event()

            async def waiter() -> None:
                assert await first == ("done", "first")
                waiter_done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                assert calls == []
                model.release()
                await waiter_done.wait()
            assert calls == [("a", ("done", "first")), ("b", ("done", "first"))]
            first.add_done_callback(lambda f: calls.append(("late", f.done())))
            assert calls[-1] == ("late", True)

    async def test_a_raising_callback_is_logged_and_loses_no_future(self, caplog: pytest.LogCaptureFixture) -> None:
        def broken(future: BatchFuture[Any]) -> None:
            raise LookupError("callback bug")

        with anyio.fail_after(5):
            async with DynamicBatcher(double_all) as batcher:
                futures = [batcher.submit_nowait(x) for x in range(3)]
                futures[0].add_done_callback(broken)
                assert [await f for f in futures] == [0, 2, 4]
        assert [r.getMessage() for r in caplog.records if r.name == "batcher"] == [
            "a done callback of a BatchFuture raised"
        ]

    async def test_a_removed_callback_is_not_called(self) -> None:
        calls: list[str] = []

        def gone(future: BatchFuture[Any]) -> None:
            calls.append("gone")

        async with blocked_batcher() as (_, model, first):
            first.add_done_callback(gone)
            first.add_done_callback(lambda f: calls.append("kept"))
            first.add_done_callback(gone)
            assert first.remove_done_callback(gone) == 2  # every instance, as asyncio's
            assert first.remove_done_callback(gone) == 0
            model.release()
            await first
        assert calls == ["kept"]
        assert first.remove_done_callback(gone) == 0  # ended: nothing left to remove

    async def test_cancel_calls_back(self) -> None:
        seen: list[bool] = []
        async with blocked_batcher() as (batcher, _, _first):
            queued = await batcher.submit("queued")
            queued.add_done_callback(lambda f: seen.append(f.cancelled()))
            assert queued.cancel()
        assert seen == [True]


async def double_all(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


class TestSharedEvents:
    """Callers that wait share events (``_future.park``) while batches follow arrival
    order: one event per 16 callers that park one after another, set when the first
    of their futures ends; the others park again, each on an event of its own. Every
    caller still gets its own record's outcome, and a cancelled caller raises the
    cancellation as it would have with an event of its own."""

    async def test_waiting_callers_share_events_and_get_their_own_results(self) -> None:
        async with blocked_batcher(max_batch_size=7) as (batcher, model, _):
            futures = [await batcher.submit(n, estimated_cost=1) for n in range(200)]
            results: dict[int, Any] = {}

            async def wait(n: int) -> None:
                results[n] = await futures[n]

            async with anyio.create_task_group() as tg:
                for n in range(200):
                    tg.start_soon(wait, n)
                await anyio.wait_all_tasks_blocked()
                assert len({id(future._event) for future in futures}) == 13  # ceil(200 / PARKED=16)
                model.release()  # batches of 7 end futures of each event at different times
        assert results == {n: ("done", n) for n in range(200)}

    @pytest.mark.parametrize(
        "settings",
        [{"group_by_cost": True, "cost_model": "padded"}, {"cost_model": "measured"}],
        ids=["grouped", "measured"],
    )
    async def test_no_sharing_when_batches_do_not_follow_arrival_order(self, settings: dict[str, Any]) -> None:
        async with blocked_batcher(**settings) as (batcher, model, _):
            futures = [await batcher.submit(n, estimated_cost=1) for n in range(40)]
            async with anyio.create_task_group() as tg:
                for future in futures:
                    tg.start_soon(future.wait)
                await anyio.wait_all_tasks_blocked()
                assert len({id(future._event) for future in futures}) == 40
                model.release()

    async def test_no_sharing_once_priorities_are_in_use(self) -> None:
        batcher = DynamicBatcher(double_all)
        with anyio.fail_after(5):
            async with batcher:
                assert batcher._counters.park_group == 16
                assert await batcher.call(1, priority=1) == 2  # the aggregator took it in
                assert batcher._counters.park_group == 1

    async def test_a_caller_woken_early_parks_again_alone(self) -> None:
        async with blocked_batcher() as (batcher, model, _):
            first, second = [await batcher.submit(n, estimated_cost=1) for n in range(2)]

            async def wait_for_first() -> None:
                with pytest.raises(RecordCancelledError):
                    await first

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_first)
                tg.start_soon(second.wait)
                await anyio.wait_all_tasks_blocked()
                shared = second._event
                assert first._event is shared
                assert first.cancel()  # ends first: second's waiter wakes early
                await anyio.wait_all_tasks_blocked()
                assert not second.done()
                assert second._event is not shared  # parked again, on an event of its own
                assert second._event is not batcher._counters.parked
                model.release()

    @pytest.mark.parametrize("own_end", ["still queued", "failed as closed"])
    async def test_a_caller_woken_by_another_future_then_cancelled_raises_the_cancellation(self, own_end: str) -> None:
        from batcher._exceptions import closed_error
        from batcher._transitions import fail

        async with blocked_batcher(max_batch_size=1) as (batcher, _, _):
            other = await batcher.submit("other", estimated_cost=1)
            mine = await batcher.submit("mine", estimated_cost=1)
            waiter = anyio.CancelScope()
            seen: list[str] = []

            async def wait_for_mine() -> None:
                with waiter:
                    await mine
                    seen.append("returned")
                seen.append("cancelled" if waiter.cancelled_caught else "left")

            async def wait_for_other() -> None:
                with pytest.raises(RecordCancelledError):
                    await other

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_other)
                tg.start_soon(wait_for_mine)
                await anyio.wait_all_tasks_blocked()
                assert other._event is mine._event
                # In one step, before the waiter runs: another future ends (which wakes
                # it), its own may fail as closed, and its scope is cancelled.
                assert other.cancel()
                if own_end == "failed as closed":
                    fail([mine], closed_error(), batcher._counters)
                waiter.cancel()
            assert seen == ["cancelled"]
