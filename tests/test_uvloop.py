"""uvloop: the asyncio event loop most ASGI servers run (uvicorn picks it when it is
installed, as ``uvicorn[standard]`` installs it). The batcher's paths that touch the
loop itself: plain functions on the worker's thread and their results handed back,
timeouts of blocking calls, cancellation while queued, streams, and a
``SyncBatcher`` whose background loop is uvloop, called from plain threads.

Each test runs under asyncio, trio and asyncio on uvloop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from batcher import DynamicBatcher, SyncBatcher

pytest.importorskip("uvloop", reason="uvloop is not installed (it does not run on Windows)")

UVLOOP = ("asyncio", {"use_uvloop": True})
WAIT = 10  # seconds: the bound on every wait that should end at once


@pytest.fixture(params=["asyncio", "trio", UVLOOP], ids=["asyncio", "trio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def double(records: list[int]) -> list[int]:
    return [record * 2 for record in records]


async def test_the_test_runs_on_the_loop_it_names(anyio_backend: Any) -> None:
    if anyio_backend == UVLOOP:
        import asyncio

        import uvloop

        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_concurrent_calls_to_a_plain_function_are_batched() -> None:
    async with DynamicBatcher(double, max_batch_size=64) as batcher:
        results: dict[int, int] = {}

        async def one(record: int) -> None:
            results[record] = await batcher.call(record)

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for record in range(1_000):
                    tg.start_soon(one, record)
    assert results == {record: record * 2 for record in range(1_000)}
    assert batcher.stats.total_batches < 500


async def test_a_blocking_call_past_its_limit_fails_its_batch_and_the_next_runs() -> None:
    release = threading.Event()

    def stuck_once(records: list[int]) -> list[int]:
        if records == [0]:
            release.wait(WAIT)
        return double(records)

    try:
        async with DynamicBatcher(stuck_once, process_timeout_s=0.2) as batcher:
            with anyio.fail_after(WAIT):
                with pytest.raises(TimeoutError):
                    await batcher.call(0)
                assert await batcher.call(1) == 2
    finally:
        release.set()
    assert batcher.stats.total_failed == 1


async def test_a_caller_cancelled_while_queued_withdraws_its_record() -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def hold(records: list[int]) -> list[int]:
        seen.extend(records)
        entered.set()
        release.wait(WAIT)
        return double(records)

    async with DynamicBatcher(hold, max_concurrent_batches=1, prefetch_batches=0) as batcher:
        with anyio.fail_after(WAIT):
            first = await batcher.submit(0)
            await anyio.to_thread.run_sync(entered.wait)
            with anyio.move_on_after(0.05):
                await batcher.call(1)  # queued behind the held batch, then cancelled
            release.set()
            assert await first == 0
    assert seen == [0]
    assert batcher.stats.total_cancelled == 1


async def pieces(records: list[int]) -> AsyncIterator[list[int]]:
    for step in range(3):
        await anyio.lowlevel.checkpoint()
        yield [record * 10 + step for record in records]


async def test_streams_deliver_every_piece_then_end() -> None:
    batcher: DynamicBatcher[int, list[int]] = DynamicBatcher(pieces)
    async with batcher:
        got: dict[int, list[int]] = {}

        async def read(record: int) -> None:
            async with batcher.stream(record) as stream:
                got[record] = [piece async for piece in stream]

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tg:
                for record in range(20):
                    tg.start_soon(read, record)
    assert got == {record: [record * 10, record * 10 + 1, record * 10 + 2] for record in range(20)}


def test_a_sync_batcher_on_uvloop_serves_many_threads() -> None:
    with SyncBatcher(DynamicBatcher(double, max_batch_size=64), backend_options={"use_uvloop": True}) as sync:
        sync.call(0)  # the loop runs
        answers: list[list[int]] = [[] for _ in range(8)]

        def caller(index: int) -> None:
            answers[index] = [sync.call(index * 100 + n, timeout=WAIT) for n in range(100)]

        threads = [threading.Thread(target=caller, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in threads)
        assert answers == [[(index * 100 + n) * 2 for n in range(100)] for index in range(8)]
        assert list(sync.map(range(50))) == double(list(range(50)))
        assert sync.submit(21).result(WAIT) == 42
        assert sync._running().portal.call(running_loop_module).startswith("uvloop")


def running_loop_module() -> str:
    import asyncio

    return type(asyncio.get_running_loop()).__module__
