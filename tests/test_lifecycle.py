"""Starting, draining and stopping; plain asyncio.run and trio.run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest
import trio

from batcher import BatchStats, DynamicBatcher, TokenBatcher

from .helpers import blocked_batcher


async def double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


class TestAsyncWith:
    async def test_loops_run_before_body_and_drain_on_exit(self) -> None:
        batcher = DynamicBatcher(double)
        assert not batcher.is_running
        with anyio.fail_after(5):
            async with batcher:
                assert batcher.is_running
                futures = await batcher.submit_batch(range(1000))
        assert not batcher.is_running
        assert [f.result() for f in futures] == [x * 2 for x in range(1000)]
        stats = batcher.stats
        assert stats.total_submitted == stats.total_completed == 1000

    async def test_async_with_returns_the_batcher(self) -> None:
        batcher = TokenBatcher(double)
        with anyio.fail_after(5):
            async with batcher as entered:
                assert entered is batcher


class TestStartStop:
    async def test_start_stop_and_restart(self) -> None:
        batcher = DynamicBatcher(double)
        with anyio.fail_after(5):
            for _ in range(2):
                await batcher.start()
                assert await batcher.call(21) == 42
                await batcher.stop()
                assert not batcher.is_running
        assert batcher.stats.total_completed == 2

    async def test_start_while_running(self) -> None:
        with anyio.fail_after(5):
            async with DynamicBatcher(double) as batcher:
                with pytest.raises(RuntimeError, match="already running"):
                    await batcher.start()
                assert await batcher.call(1) == 2

    async def test_submit_before_start_and_after_stop(self) -> None:
        batcher = DynamicBatcher(double)
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(1)
        with pytest.raises(RuntimeError, match="not running"):
            batcher.submit_nowait(1)
        with anyio.fail_after(5):
            async with batcher:
                pass
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(1)
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit_batch([1, 2])
        assert batcher.stats.total_submitted == 0

    async def test_stop_when_not_running_is_a_no_op(self) -> None:
        batcher = DynamicBatcher(double)
        await batcher.stop()
        assert not batcher.is_running
        assert batcher.stats == BatchStats()

    async def test_serve_in_callers_task_group(self) -> None:
        batcher = DynamicBatcher(double)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                assert batcher.is_running
                future = await batcher.submit(5)
                await batcher.stop()
                assert not batcher.is_running
        assert future.result() == 10


class TestObservability:
    async def test_repr(self) -> None:
        assert repr(DynamicBatcher(double)) == "<DynamicBatcher stopped submitted=0 completed=0>"
        async with blocked_batcher() as (batcher, _, _):
            await batcher.submit(2)
            assert repr(batcher) == "<DynamicBatcher running queued=1 in_flight=1>"
        assert repr(batcher) == "<DynamicBatcher stopped submitted=2 completed=2>"

    async def test_stats_snapshot_does_not_change(self) -> None:
        with anyio.fail_after(5):
            async with DynamicBatcher(double, batch_timeout_s=0) as batcher:
                before = batcher.stats
                await batcher.call(1)
        assert before == BatchStats()
        after = batcher.stats
        assert after.total_batches == 1
        assert after.avg_batch_size == 1.0
        assert after.avg_batch_cost == 1.0
        assert after.busy_time_s > 0
        assert after.idle_time_s > 0
        assert after.utilization == after.busy_time_s / (after.busy_time_s + after.idle_time_s)
        with pytest.raises(AttributeError):
            after.total_batches = 5  # type: ignore[misc]

    async def test_utilization_is_the_busy_share_of_measured_time(self) -> None:
        async with blocked_batcher() as (batcher, model, _):
            held_from = time.perf_counter()  # the worker is busy from before this moment...
            await anyio.wait_all_tasks_blocked()
            held_for = time.perf_counter() - held_from
            model.release()  # ...until after this one
        stats = batcher.stats
        assert stats.busy_time_s >= held_for > 0
        assert stats.idle_time_s > 0  # the worker waited for the first batch
        assert stats.utilization == stats.busy_time_s / (stats.busy_time_s + stats.idle_time_s)
        assert 0 < stats.utilization < 1

    def test_utilization(self) -> None:
        assert BatchStats().utilization == 0.0
        assert BatchStats(busy_time_s=3.0, idle_time_s=1.0).utilization == 0.75


def run_under(runner: Any) -> list[int]:
    async def main() -> list[int]:
        with anyio.fail_after(5):
            async with TokenBatcher(double) as batcher:
                futures = [await batcher.submit(i) for i in range(10)]
                return [await f for f in futures]

    return list(runner(main))


def test_plain_asyncio_run() -> None:
    assert run_under(lambda main: asyncio.run(main())) == [x * 2 for x in range(10)]


def test_plain_trio_run() -> None:
    assert run_under(trio.run) == [x * 2 for x in range(10)]


def test_asyncio_gather_of_futures() -> None:
    async def main() -> list[int]:
        with anyio.fail_after(5):
            async with DynamicBatcher(double) as batcher:
                futures = await batcher.submit_batch(range(5))
                return await asyncio.gather(*futures)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
