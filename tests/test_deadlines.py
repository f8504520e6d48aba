"""Queue deadlines: a record still queued ``max_queue_delay_s`` after it was
submitted fails with ``QueueTimeoutError``, never reaches the model, and counts
in ``total_expired``; a dispatched record is never expired."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from batcher import DynamicBatcher, QueueTimeoutError, SyncBatcher, TokenBatcher

from .helpers import Recorder, blocked_batcher, bounded


def assert_accounted(batcher: DynamicBatcher[Any, Any]) -> None:
    stats = batcher.stats
    assert stats.total_submitted == stats.total_completed + stats.total_cancelled + stats.total_expired


@bounded(60)
class TestDeadlines:
    async def test_records_queued_past_the_deadline_fail_and_never_reach_the_model(self) -> None:
        async with blocked_batcher(max_queue_delay_s=0.05) as (batcher, model, first):
            a = await batcher.submit("a")
            b = await batcher.submit_batch(["b", "c"])
            for future in (a, *b):
                with pytest.raises(QueueTimeoutError, match="still queued at its deadline"):
                    await future
            assert batcher.stats.total_expired == 3
            late = await batcher.submit("late", max_queue_delay_s=60)
            model.release()
            assert await late == ("done", "late")
            assert await first == ("done", "first")  # dispatched before its deadline passed: kept
        assert model.records == ["first", "late"]
        assert batcher.stats.total_failed == 0
        assert_accounted(batcher)

    async def test_a_record_may_set_its_own_deadline(self) -> None:
        async with blocked_batcher() as (batcher, model, _):
            short = await batcher.submit("short", max_queue_delay_s=0.01)
            kept = await batcher.submit("kept")
            with pytest.raises(QueueTimeoutError):
                await short
            model.release()
            assert await kept == ("done", "kept")
        assert model.records == ["first", "kept"]

    async def test_call_raises_a_timeout_error(self) -> None:
        async with blocked_batcher() as (batcher, model, _):
            with pytest.raises(TimeoutError) as caught:
                await batcher.call("x", max_queue_delay_s=0.01)
            assert isinstance(caught.value, QueueTimeoutError)
            model.release()
        assert model.records == ["first"]

    async def test_records_waiting_behind_a_full_stream_expire_too(self) -> None:
        async with blocked_batcher(max_queue_size=1, max_batch_size=1, prefetch_batches=0) as (batcher, model, _):
            async with anyio.create_task_group() as tg:
                results: list[BaseException] = []

                async def call(record: str) -> None:
                    try:
                        await batcher.call(record, max_queue_delay_s=0.05)
                    except QueueTimeoutError as exc:
                        results.append(exc)

                for n in range(5):
                    tg.start_soon(call, f"r{n}")
            assert len(results) == 5
            assert batcher.stats.total_expired == 5
            model.release()
        assert model.records == ["first"]
        assert_accounted(batcher)

    async def test_an_expired_record_frees_its_queued_cost(self) -> None:
        async with blocked_batcher(max_queued_cost=10) as (batcher, model, _):
            doomed = await batcher.submit("doomed", estimated_cost=10, max_queue_delay_s=0.01)
            with pytest.raises(QueueTimeoutError):
                await doomed
            fits = await batcher.submit("fits", estimated_cost=10)  # not refused: the queue is empty again
            model.release()
            assert await fits == ("done", "fits")

    async def test_deadlines_are_checked(self) -> None:
        with pytest.raises(ValueError, match="max_queue_delay_s must be a finite number > 0, or None, got 0"):
            DynamicBatcher(Recorder(), max_queue_delay_s=0)
        with pytest.raises(ValueError, match="max_queue_delay_s must be a finite number > 0, or None, got -"):
            TokenBatcher(Recorder(), max_queue_delay_s=-1)
        async with DynamicBatcher(Recorder()) as batcher:
            with pytest.raises(TypeError, match="max_queue_delay_s must be a number, got str"):
                await batcher.submit("a", max_queue_delay_s="1")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="max_queue_delay_s must be a finite number > 0"):
                await batcher.call("a", max_queue_delay_s=0)
            with pytest.raises(ValueError, match="max_queue_delay_s must be a finite number > 0, or None, got inf"):
                await batcher.submit_batch(["a"], max_queue_delay_s=float("inf"))
            assert batcher.stats.total_submitted == 0

    async def test_many_deadlines_in_any_order(self) -> None:
        # Deadlines out of submission order: each record expires on its own, and a
        # record dispatched before its deadline is never touched.
        model = Recorder(hold=True)
        async with DynamicBatcher(model, max_batch_size=1, prefetch_batches=0) as batcher:
            first = await batcher.submit("first", max_queue_delay_s=0.01)
            await model.entered.wait()
            futures = [await batcher.submit(n, max_queue_delay_s=0.01 * (1 + n % 7)) for n in range(50)]
            keep = await batcher.submit("keep", max_queue_delay_s=60)
            with anyio.fail_after(5):
                for future in futures:
                    with pytest.raises(QueueTimeoutError):
                        await future
            model.release()
            assert await keep == ("done", "keep")
            assert await first == ("done", "first")
        assert model.records == ["first", "keep"]
        assert batcher.stats.total_expired == 50
        assert_accounted(batcher)


@bounded(60)
async def test_records_that_left_the_queue_are_not_kept_until_their_deadlines() -> None:
    async with DynamicBatcher(Recorder(), max_queue_delay_s=3600) as batcher:
        for _ in range(20):
            for future in await batcher.submit_batch(range(500)):
                await future
        entries = len(batcher._run.deadlines._heap)  # type: ignore[union-attr]
    assert entries <= 1_100, f"{entries} deadlines kept for 10,000 records processed"


def test_sync_batcher_takes_deadlines() -> None:
    entered, gate = threading.Event(), threading.Event()

    def model(batch: list[str]) -> list[str]:
        entered.set()
        gate.wait(5)
        return batch

    with SyncBatcher(DynamicBatcher(model, max_batch_size=1)) as batcher:
        first = batcher.submit("first")
        assert entered.wait(5)
        with pytest.raises(QueueTimeoutError):
            batcher.call("late", max_queue_delay_s=0.01, timeout=5)
        with pytest.raises(ValueError, match="max_queue_delay_s must be a finite number > 0"):
            batcher.submit("bad", max_queue_delay_s=0)
        gate.set()
        assert first.result(timeout=5) == "first"
