"""BatchFuture behaves like asyncio.Future where callers notice."""

from __future__ import annotations

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
