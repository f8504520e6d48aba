"""A process function that is an async context manager is entered as the batcher
starts and exited after its last batch as it stops (how batcher.ray's replicas
start and stop with the batcher)."""

from __future__ import annotations

from types import TracebackType

import anyio
import anyio.lowlevel
import pytest

from batcher import BatcherClosedError, DynamicBatcher, SyncBatcher


class Session:
    """A model that must be entered before it answers, and logs its lifecycle."""

    def __init__(self, *, fail_on_enter: bool = False) -> None:
        self.log: list[str] = []
        self.open = False
        self.fail_on_enter = fail_on_enter

    async def __aenter__(self) -> Session:
        self.log.append("enter")
        if self.fail_on_enter:
            raise OSError("no model here")
        self.open = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.log.append("exit")
        self.open = False

    async def __call__(self, records: list[int]) -> list[int]:
        assert self.open, "called outside its session"
        self.log.append(f"batch {len(records)}")
        await anyio.lowlevel.checkpoint()
        return [record * 2 for record in records]


class TestSession:
    async def test_entered_before_the_first_batch_and_exited_after_the_last(self) -> None:
        model = Session()
        with anyio.fail_after(5):
            async with DynamicBatcher(model, max_batch_size=4) as batcher:
                assert model.log == ["enter"]
                futures = [await batcher.submit(n, estimated_cost=1) for n in range(10)]
            assert [await future for future in futures] == [n * 2 for n in range(10)]
        assert model.log[0] == "enter"
        assert model.log[-1] == "exit"
        assert sum(int(entry.split()[1]) for entry in model.log[1:-1]) == 10

    async def test_each_run_enters_again(self) -> None:
        model = Session()
        batcher = DynamicBatcher(model)
        with anyio.fail_after(5):
            for _ in range(2):
                async with batcher:
                    assert await batcher.call(1, estimated_cost=1) == 2
        assert model.log == ["enter", "batch 1", "exit", "enter", "batch 1", "exit"]

    async def test_an_error_entering_fails_start_and_leaves_the_batcher_stopped(self) -> None:
        model = Session(fail_on_enter=True)
        batcher = DynamicBatcher(model)
        with pytest.raises(OSError, match="no model here"):
            await batcher.start()
        assert not batcher.is_running
        assert model.log == ["enter"]
        model.fail_on_enter = False
        with anyio.fail_after(5):
            async with batcher:
                assert await batcher.call(3, estimated_cost=1) == 6

    async def test_exited_under_serve_and_when_cancelled(self) -> None:
        model = Session()
        batcher = DynamicBatcher(model)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                assert model.open
                queued = await batcher.submit(1, estimated_cost=1)
                tg.cancel_scope.cancel()
        assert model.log[-1] == "exit"
        assert not model.open
        if queued.done() and queued.exception() is not None:
            assert isinstance(queued.exception(), BatcherClosedError)

    async def test_a_plain_callable_has_no_session(self) -> None:
        async def double(records: list[int]) -> list[int]:
            return [record * 2 for record in records]

        with anyio.fail_after(5):
            async with DynamicBatcher(double) as batcher:
                assert await batcher.call(4, estimated_cost=1) == 8


def test_sync_batcher_enters_it_on_its_loop(anyio_backend: str) -> None:
    model = Session()
    with SyncBatcher(DynamicBatcher(model), backend=anyio_backend) as batcher:
        assert model.open
        assert batcher.call(5, estimated_cost=1, timeout=5) == 10
    assert model.log == ["enter", "batch 1", "exit"]


def test_sync_batcher_start_raises_the_error_entering_it(anyio_backend: str) -> None:
    model = Session(fail_on_enter=True)
    batcher = SyncBatcher(DynamicBatcher(model), backend=anyio_backend)
    with pytest.raises(OSError, match="no model here"):
        batcher.start()
    assert not batcher.is_running
    model.fail_on_enter = False
    with batcher:
        assert batcher.call(1, estimated_cost=1, timeout=5) == 2
