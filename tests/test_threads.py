"""Use from other threads and other event loops: refused at once with a clear
error, and the batcher keeps working for its own loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio

from batcher import DynamicBatcher, TokenBatcher

from .helpers import Recorder

OTHER_THREAD = (
    "batcher was called from a thread other than its event loop's; from other threads use SyncBatcher, "
    "or anyio.from_thread.run(batcher.call, record, token=...) with the token of the loop that started it"
)


async def double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


def refusal(attempt: Callable[[], Any]) -> str:
    """Run ``attempt`` (in the calling thread) and return the RuntimeError it raised."""
    with pytest.raises(RuntimeError) as info:
        attempt()
    return str(info.value)


def in_asyncio(coroutine_function: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: asyncio.run(coroutine_function())


def in_trio(coroutine_function: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: trio.run(coroutine_function)


@pytest.mark.parametrize("kind", [DynamicBatcher, TokenBatcher])
class TestFromAnotherThread:
    async def test_every_entry_point_is_refused_at_once(self, kind: Any) -> None:
        batcher = kind(double)
        with anyio.fail_after(10):
            async with batcher:
                entry_points: list[Callable[[], Any]] = [
                    lambda: batcher.submit_nowait(1),
                    lambda: batcher.configure(max_batch_size=2),
                    in_asyncio(lambda: batcher.submit(1)),
                    in_trio(lambda: batcher.submit(1)),
                    in_asyncio(lambda: batcher.submit(1, priority=3)),  # the first priority changes nothing
                    in_asyncio(lambda: batcher.call(1)),
                    in_trio(lambda: batcher.call(1)),
                    in_asyncio(lambda: batcher.submit_batch([1, 2])),
                    in_trio(lambda: batcher.submit_batch([1, 2])),
                    in_asyncio(batcher.stop),
                    in_trio(batcher.stop),
                ]
                for attempt in entry_points:
                    assert await anyio.to_thread.run_sync(refusal, attempt) == OTHER_THREAD
                started_elsewhere = await anyio.to_thread.run_sync(refusal, in_asyncio(batcher.start))
                assert started_elsewhere.startswith("batcher is already running, under another thread's event loop")
                # Nothing reached the batcher, and it works for its own loop.
                assert batcher.stats.total_submitted == 0
                assert batcher._settings.max_batch_size == 256
                assert await batcher.call(21) == 42
        assert batcher.stats.total_completed == 1

    async def test_the_thread_safe_way_in_works(self, kind: Any) -> None:
        batcher = kind(double)
        token = anyio.lowlevel.current_token()
        with anyio.fail_after(10):
            async with batcher:
                result = await anyio.to_thread.run_sync(lambda: anyio.from_thread.run(batcher.call, 5, token=token))
        assert result == 10


async def test_a_plain_thread_cannot_steal_the_wake_up() -> None:
    """A worker's wake-up stays in the stream for the aggregator: a foreign
    submit_nowait is refused before it touches the stream."""
    model = Recorder()
    with anyio.fail_after(10):
        async with DynamicBatcher(model) as batcher:
            assert await batcher.call(1) == ("done", 1)
            assert await anyio.to_thread.run_sync(refusal, lambda: batcher.submit_nowait(2)) == OTHER_THREAD
            assert await batcher.call(3) == ("done", 3)
    assert model.records == [1, 3]


FOREIGN_THREAD = (
    "a batcher's future was awaited or cancelled from a thread other than its event loop's; "
    "await it on that loop (from other threads use SyncBatcher, whose futures are concurrent.futures ones)"
)


async def test_a_future_awaited_or_cancelled_from_another_thread_is_refused() -> None:
    """Neither touches the future: the batcher's own caller still gets its result."""
    model = Recorder(hold=True)
    with anyio.fail_after(10):
        async with DynamicBatcher(model, max_batch_size=1) as batcher:
            first = await batcher.submit(1)
            await model.entered.wait()
            queued = await batcher.submit(2)

            async def await_it() -> Any:
                return await queued

            for attempt in (in_asyncio(await_it), in_trio(await_it), queued.cancel):
                assert await anyio.to_thread.run_sync(refusal, attempt) == FOREIGN_THREAD
            assert not queued.done()
            model.release()
            assert (await first, await queued) == (("done", 1), ("done", 2))
            assert await batcher.call(3) == ("done", 3)
    assert batcher.stats.total_cancelled == 0


class Steps:
    """A streaming model: three items a record, once :attr:`go` is set."""

    def __init__(self) -> None:
        self.go = anyio.Event()

    async def __call__(self, records: list[int]) -> AsyncIterator[list[int]]:
        await self.go.wait()
        for step in range(3):
            await anyio.lowlevel.checkpoint()
            yield [record * 10 + step for record in records]


async def test_a_stream_read_or_closed_from_another_thread_is_refused() -> None:
    """Neither touches the stream while its record runs: its own consumer, and the
    consumer of the record batched with it, still get every item."""
    model = Steps()
    streamed: DynamicBatcher[int, list[int]] = DynamicBatcher(model, max_batch_size=2)
    with anyio.fail_after(10):
        async with streamed, streamed.stream(1) as stream, streamed.stream(2) as mate:

            async def read_it() -> Any:
                with anyio.fail_after(5):  # (in the other thread's loop)
                    return [item async for item in stream]

            for attempt in (in_asyncio(read_it), in_trio(read_it), stream.close):
                assert await anyio.to_thread.run_sync(refusal, attempt) == FOREIGN_STREAM
            model.go.set()
            assert [item async for item in stream] == [10, 11, 12]
            assert [item async for item in mate] == [20, 21, 22]
    assert streamed.stats.total_completed == 2
    assert streamed.stats.total_cancelled == 0


FOREIGN_STREAM = (
    "a batcher's stream was read or closed from a thread other than its event loop's; "
    "read it on that loop (from other threads use SyncBatcher.stream)"
)
