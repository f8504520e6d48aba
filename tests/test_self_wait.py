"""A process function that waits for its own batcher's records holds its worker: the
wait that would leave no worker free to run them is refused (``_model_call.py``),
with any number of workers, whichever way it waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from batcher import DynamicBatcher, SyncBatcher

SELF_WAIT = "process_fn awaited a result of its own batcher"
WAIT = 5.0


async def by_call(batcher: DynamicBatcher[str, str], record: str) -> str:
    return await batcher.call(record)


async def by_future(batcher: DynamicBatcher[str, str], record: str) -> str:
    return await (await batcher.submit(record))


async def by_map(batcher: DynamicBatcher[str, str], record: str) -> str:
    async with batcher.map([record], ordered=False) as results:
        return "".join([result async for result in results])


class TestEveryWorkerWaiting:
    @pytest.mark.parametrize("workers", [2, 3])
    @pytest.mark.parametrize("way", [by_call, by_future, by_map])
    async def test_the_last_worker_to_wait_is_refused_and_the_others_finish(
        self, workers: int, way: Callable[[DynamicBatcher[str, str], str], Awaitable[str]]
    ) -> None:
        batcher: DynamicBatcher[str, str]
        inside = 0
        all_inside = anyio.Event()
        refused: list[str] = []

        async def fn(batch: list[str]) -> list[str]:
            nonlocal inside
            (record,) = batch
            if not record.startswith("outer"):
                return batch
            inside += 1
            if inside == workers:
                all_inside.set()
            await all_inside.wait()  # every worker is in the process function
            try:
                return [record + "+" + await way(batcher, "inner " + record)]
            except RuntimeError as exc:
                refused.append(str(exc))
                return [record + " alone"]

        batcher = DynamicBatcher(fn, max_batch_size=1, max_concurrent_batches=workers)
        with anyio.fail_after(5):
            async with batcher:
                futures = [await batcher.submit(f"outer {n}") for n in range(workers)]
                results = [await future for future in futures]
        assert len(refused) == 1
        assert SELF_WAIT in refused[0]
        assert sum(result.endswith(" alone") for result in results) == 1
        assert all(result.endswith(" alone") or "+inner outer" in result for result in results)

    async def test_a_wait_that_ended_frees_the_count(self) -> None:
        # One call waits and gets its result; a later call of the other worker may then wait too.
        batcher: DynamicBatcher[str, str]

        async def fn(batch: list[str]) -> list[str]:
            (record,) = batch
            if record.startswith("outer"):
                return [record + "+" + await batcher.call("inner")]
            return batch

        batcher = DynamicBatcher(fn, max_batch_size=1, max_concurrent_batches=2)
        with anyio.fail_after(5):
            async with batcher:
                for n in range(4):
                    assert await batcher.call(f"outer {n}") == f"outer {n}+inner"
        assert batcher.stats.total_failed == 0

    async def test_a_stream_waiting_for_itself_is_refused_when_no_worker_is_left(self) -> None:
        batcher: DynamicBatcher[str, str]
        inside = 0
        all_inside = anyio.Event()
        refused: list[str] = []

        async def fn(batch: list[str]) -> Any:
            nonlocal inside
            (record,) = batch
            if record.startswith("outer"):
                inside += 1
                if inside == 2:
                    all_inside.set()
                await all_inside.wait()
                try:
                    async with batcher.stream("inner") as items:
                        tail = "".join([item async for item in items])
                except RuntimeError as exc:
                    refused.append(str(exc))
                    tail = "alone"
                yield [record + "+" + tail]
            else:
                yield ["i"]

        batcher = DynamicBatcher(fn, max_batch_size=1, max_concurrent_batches=2)
        with anyio.fail_after(5):
            async with batcher:
                async with anyio.create_task_group() as tg:
                    for n in range(2):
                        tg.start_soon(batcher.call, f"outer {n}")
        assert len(refused) == 1
        assert SELF_WAIT in refused[0]


def test_sync_batcher_threads_of_every_worker_waiting(anyio_backend: str) -> None:
    """Plain process functions (each worker's own thread) waiting through a SyncBatcher."""
    barrier = threading.Barrier(2, timeout=WAIT)
    refused: list[str] = []

    def process(batch: list[str]) -> list[str]:
        (record,) = batch
        if not record.startswith("outer"):
            return batch
        barrier.wait()
        try:
            return [record + "+" + sync.submit("inner " + record).result(WAIT)]
        except RuntimeError as exc:
            refused.append(str(exc))
            return [record + " alone"]

    batcher = DynamicBatcher(process, max_batch_size=1, max_concurrent_batches=2)
    with SyncBatcher(batcher, backend=anyio_backend) as sync:
        futures = [sync.submit(f"outer {n}") for n in range(2)]
        results = sorted(future.result(WAIT) for future in futures)
    assert len(refused) == 1
    assert SELF_WAIT in refused[0]
    assert sum(result.endswith(" alone") for result in results) == 1


async def test_the_pool_cannot_shrink_under_the_calls_that_wait_for_it() -> None:
    """A call that waits already cannot be refused: the pool may not shrink to it."""
    batcher: DynamicBatcher[str, str]
    waiting, release = anyio.Event(), anyio.Event()

    async def fn(batch: list[str]) -> list[str]:
        if batch == ["outer"]:
            waiting.set()
            return ["outer+" + await batcher.call("inner")]
        if batch == ["inner"]:
            await release.wait()
        return batch

    batcher = DynamicBatcher(fn, max_batch_size=1, max_concurrent_batches=2)
    with anyio.fail_after(5):
        async with batcher, anyio.create_task_group() as tg:
            outer = await batcher.submit("outer")
            await waiting.wait()
            await anyio.wait_all_tasks_blocked()  # "inner" runs on the other worker
            with pytest.raises(ValueError, match="max_concurrent_batches=1 would leave no worker"):
                batcher.configure(max_concurrent_batches=1)
            assert batcher._settings.max_concurrent_batches == 2  # nothing changed
            release.set()
            assert await outer == "outer+inner"
            batcher.configure(max_concurrent_batches=1)  # nothing waits now
            tg.cancel_scope.cancel()
    assert batcher._counters.self_waiting == 0


def test_a_sync_map_it_does_not_read_is_no_wait_of_its_call(anyio_backend: str) -> None:
    """The task that runs a SyncBatcher.map on the loop is not the process function: only
    the thread's reading counts, so another worker's call may still wait."""
    opened = threading.Event()
    answers: dict[str, str] = {}

    def process(batch: list[str]) -> list[str]:
        (record,) = batch
        if record == "maps":
            results = sync.map(["mapped"])  # not read
            opened.set()
            deadline = time.monotonic() + WAIT
            while batcher._counters.self_waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.001)  # until the other call waits (counted): then free this worker
            results.close()
        elif record == "calls":
            assert opened.wait(WAIT)
            answers["calls"] = sync.call("called", timeout=WAIT)
        return batch

    batcher = DynamicBatcher(process, max_batch_size=1, max_concurrent_batches=2)
    with SyncBatcher(batcher, backend=anyio_backend) as sync:
        futures = [sync.submit("maps"), sync.submit("calls")]
        assert [future.result(WAIT) for future in futures] == ["maps", "calls"]
    assert answers == {"calls": "called"}
