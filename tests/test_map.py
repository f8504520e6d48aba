"""DynamicBatcher.map: a whole input through the batcher, one result per record."""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from batcher import BatcherOverloadedError, DynamicBatcher, TokenBatcher

from .helpers import NOT_RUNNING, Recorder, blocked_batcher


async def double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


class TestOrdered:
    async def test_results_in_input_order_with_a_bounded_window(self) -> None:
        seen_in_flight: list[int] = []
        batcher = DynamicBatcher(double, max_queue_size=100, max_batch_size=32)
        results: list[int] = []
        with anyio.fail_after(10):
            async with batcher, batcher.map(range(10_000)) as mapped:
                async for result in mapped:
                    seen_in_flight.append(batcher.stats.total_submitted - len(results))  # this one counted
                    results.append(result)
        assert results == [x * 2 for x in range(10_000)]
        assert max(seen_in_flight) <= 100
        assert batcher.stats.total_completed == 10_000

    async def test_input_order_when_batches_finish_out_of_order(self) -> None:
        gates = [anyio.Event() for _ in range(4)]
        entered: list[int] = []

        async def model(batch: list[int]) -> list[int]:
            entered.extend(batch)
            await gates[batch[0]].wait()
            return batch

        batcher = DynamicBatcher(model, max_batch_size=1, max_concurrent_batches=4)
        results: list[int] = []
        with anyio.fail_after(10):
            async with batcher, batcher.map(range(4)) as mapped, anyio.create_task_group() as tg:

                async def read() -> None:
                    async for result in mapped:
                        results.append(result)

                tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                assert sorted(entered) == [0, 1, 2, 3]  # all four run at once
                # The last record's batch finishes first, then the first's, then the third's.
                for record, expected in ((3, []), (0, [0]), (2, [0]), (1, [0, 1, 2, 3])):
                    gates[record].set()
                    await anyio.wait_all_tasks_blocked()
                    assert results == expected
        assert results == [0, 1, 2, 3]

    @pytest.mark.parametrize("ordered", [True, False])
    async def test_a_large_window_lets_the_loop_run_while_it_fills(self, ordered: bool) -> None:
        """Half a window was submitted in one go: 100,000 records held the loop 0.3-0.8 s."""
        batcher = DynamicBatcher(double, max_queue_size=10_000)
        seen: list[int] = []

        async def look() -> None:
            await anyio.lowlevel.checkpoint()  # (its first turn)
            seen.append(batcher.stats.total_submitted)

        with anyio.fail_after(10):
            async with batcher, anyio.create_task_group() as tg:
                tg.start_soon(look)
                async with batcher.map(range(20_000), ordered=ordered) as mapped:
                    assert await mapped.__anext__() == 0  # its first top-up: 5,000 records
        assert len(seen) == 1
        assert 0 < seen[0] < 5_000  # the other task ran on the way

    async def test_a_lazy_unbounded_input_and_an_early_break_withdraw_the_rest(self) -> None:
        model = Recorder()
        batcher = DynamicBatcher(model, max_queue_size=50, max_batch_size=8)
        taken: list[Any] = []
        with anyio.fail_after(10):
            async with batcher:
                async with batcher.map(itertools.count()) as mapped:
                    async for result in mapped:
                        taken.append(result)
                        if len(taken) == 100:
                            break
                withdrawn = batcher.stats.total_cancelled
        stats = batcher.stats
        assert taken == [("done", x) for x in range(100)]
        assert withdrawn > 0
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled
        assert len(model.records) == stats.total_completed  # withdrawn records never reached the model

    async def test_a_cancelled_consumer_withdraws_the_rest(self) -> None:
        model = Recorder(hold=True)
        batcher = DynamicBatcher(model, max_batch_size=4)
        with anyio.fail_after(10):
            async with batcher:
                with anyio.move_on_after(0.2):
                    async with batcher.map(range(40)) as mapped:
                        async for _ in mapped:
                            pass  # the model holds the first batch: nothing comes
                model.release()
        stats = batcher.stats
        assert stats.total_completed == 4  # only the batch the model held
        assert stats.total_cancelled == 36
        assert model.records == [0, 1, 2, 3]


class TestFailures:
    @staticmethod
    async def fails_on_three(batch: list[int]) -> list[object]:
        return [ValueError(f"bad {x}") if x == 3 else x for x in batch]

    async def test_first_failure_is_raised_and_the_rest_withdrawn(self) -> None:
        batcher = DynamicBatcher(self.fails_on_three, max_batch_size=2, max_queue_size=4)
        got: list[Any] = []
        with anyio.fail_after(10):
            async with batcher:

                async def consume() -> None:
                    async for result in batcher.map(range(1000)):
                        got.append(result)

                with pytest.raises(ValueError, match="bad 3"):
                    await consume()
        assert got == [0, 1, 2]
        stats = batcher.stats
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled < 1000

    async def test_return_exceptions_yields_them_in_place(self) -> None:
        with anyio.fail_after(10):
            async with DynamicBatcher(self.fails_on_three, max_batch_size=2) as batcher:
                got = [result async for result in batcher.map(range(6), return_exceptions=True)]
        assert [str(r) if isinstance(r, ValueError) else r for r in got] == [0, 1, 2, "bad 3", 4, 5]

    @pytest.mark.parametrize("ordered", [True, False])
    async def test_an_input_that_raises_does_so_after_the_results_read_before_it(self, ordered: bool) -> None:
        def records() -> Any:
            yield from range(300)
            raise KeyError("the input broke")

        got: list[int] = []

        async def consume(batcher: DynamicBatcher[int, int]) -> None:
            async for result in batcher.map(records(), ordered=ordered):
                got.append(result)

        with anyio.fail_after(10):
            async with DynamicBatcher(double, max_queue_size=64) as batcher:
                with pytest.raises(KeyError, match="the input broke"):
                    await consume(batcher)
        assert (got if ordered else sorted(got)) == [2 * n for n in range(300)]

    @pytest.mark.parametrize("ordered", [True, False])
    async def test_a_record_refused_at_submit_ends_the_map_at_once(self, ordered: bool) -> None:
        # As a failure does: raised, and the rest withdrawn. Iterating on finds the map
        # ended, not the records behind the refused one skipped.
        async with blocked_batcher(max_queued_cost=3, max_batch_size=1) as (batcher, model, _):
            results = batcher.map(range(6), ordered=ordered)
            with pytest.raises(BatcherOverloadedError, match="max_queued_cost=3"):
                await results.__anext__()  # 0, 1 and 2 queued, 3 refused
            assert batcher.stats.queued == 0  # withdrawn
            assert [result async for result in results] == []
            model.release()
        assert model.records == ["first"]
        assert batcher.stats.total_shed == 1

    async def test_a_wait_for_room_cancelled_loses_no_record(self) -> None:
        async def cancel_once_blocked(scope: anyio.CancelScope) -> None:
            await anyio.wait_all_tasks_blocked()
            scope.cancel()

        async with blocked_batcher(max_queue_size=1, max_batch_size=1) as (batcher, model, _):
            fillers = [await batcher.submit(name) for name in ("taken", "in the stream")]  # it is full
            results = batcher.map([7, 8])
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:
                    tg.start_soon(cancel_once_blocked, scope)
                    await results.__anext__()  # waits for room for 7
            assert scope.cancelled_caught
            model.release()
            assert [result async for result in results] == [("done", 7), ("done", 8)]
            assert [await filler for filler in fillers] == [("done", "taken"), ("done", "in the stream")]

    async def test_on_a_stopped_batcher(self) -> None:
        batcher = DynamicBatcher(double)
        with pytest.raises(RuntimeError, match=NOT_RUNNING.replace("(", r"\(").replace(")", r"\)")):
            async for _ in batcher.map([1]):
                pass


class TestUnordered:
    async def test_results_come_as_they_arrive(self) -> None:
        first_batch_may_finish = anyio.Event()

        async def model(batch: list[int]) -> list[int]:
            if 0 in batch:
                await first_batch_may_finish.wait()
            return [x * 2 for x in batch]

        got: list[Any] = []
        batcher = DynamicBatcher(model, max_batch_size=2, max_concurrent_batches=2)
        with anyio.fail_after(10):
            async with batcher, batcher.map(range(4), ordered=False) as mapped:
                async for result in mapped:
                    got.append(result)
                    if len(got) == 2:
                        first_batch_may_finish.set()
        assert got[:2] == [4, 6]  # the second batch, before the held first one
        assert sorted(got) == [0, 2, 4, 6]

    async def test_every_result_once(self) -> None:
        with anyio.fail_after(10):
            async with DynamicBatcher(double, max_batch_size=7, max_queue_size=30) as batcher:
                got = [r async for r in batcher.map(range(500), ordered=False)]
        assert sorted(got) == [x * 2 for x in range(500)]


class TestMisuse:
    @pytest.mark.parametrize("ordered", [True, False])
    async def test_two_tasks_iterating_one_map_are_refused(self, ordered: bool) -> None:
        gate = anyio.Event()

        async def held(batch: list[int]) -> list[int]:
            await gate.wait()
            return batch

        refused: list[str] = []
        got: list[int] = []
        with anyio.fail_after(5):
            async with DynamicBatcher(held) as batcher, batcher.map(range(20), ordered=ordered) as results:

                async def consume(task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                    task_status.started()
                    try:
                        async for result in results:
                            got.append(result)
                    except RuntimeError as exc:
                        refused.append(str(exc))

                async with anyio.create_task_group() as tg:
                    await tg.start(consume)
                    await anyio.lowlevel.checkpoint()  # the first consumer waits for a result
                    await consume()
                    gate.set()
        assert refused == ["these map results are already being iterated by another task; iterate them in one task"]
        assert sorted(got) == list(range(20))

    @pytest.mark.parametrize("ordered", [True, False])
    async def test_a_map_in_its_own_process_function_is_refused(self, ordered: bool) -> None:
        batcher: DynamicBatcher[str, str]

        async def drain() -> None:
            async with batcher.map(["inner"], ordered=ordered) as results:
                async for _ in results:
                    pass

        async def process(batch: list[str]) -> list[str]:
            if "outer" in batch:
                with pytest.raises(RuntimeError, match="process_fn awaited a result of its own batcher"):
                    await drain()
            return batch

        batcher = DynamicBatcher(process)
        with anyio.fail_after(5):
            async with batcher:
                assert await batcher.call("outer") == "outer"
                assert await batcher.call("after") == "after"

    async def test_an_input_that_is_not_iterable_is_refused_naming_it(self) -> None:
        async def source() -> AsyncIterator[int]:
            yield 1

        async with DynamicBatcher(double) as batcher:
            with pytest.raises(TypeError, match=r"^records must be an iterable, got int$"):
                batcher.map(5)  # type: ignore[call-overload]
            with pytest.raises(TypeError, match=r"got async_generator \(an async iterable: map\(\) reads its input"):
                batcher.map(source())  # type: ignore[call-overload]
            assert await batcher.call(1) == 2
        assert batcher.stats.total_submitted == 1

    async def test_an_input_whose_own_iter_raises_type_error_raises_it(self) -> None:
        class Shards:
            def __iter__(self) -> Iterator[int]:
                raise TypeError("cannot read shard 3")

        async with DynamicBatcher(double) as batcher:
            with pytest.raises(TypeError, match=r"^cannot read shard 3$"):
                batcher.map(Shards())

    async def test_a_map_from_another_thread_is_refused_at_once(self) -> None:
        """As every other entry point is, not at its first result."""
        async with DynamicBatcher(double) as batcher:
            with pytest.raises(RuntimeError, match="called from a thread other than its event loop's"):
                await anyio.to_thread.run_sync(batcher.map, [1, 2])
            assert await batcher.call(1) == 2


class TestProgress:
    async def test_a_callable_sees_each_result(self) -> None:
        calls: list[tuple[int, int | None]] = []
        with anyio.fail_after(10):
            async with DynamicBatcher(double) as batcher:
                assert len([r async for r in batcher.map(range(5), progress=lambda *a: calls.append(a))]) == 5
                [r async for r in batcher.map(iter(range(3)), progress=lambda *a: calls.append(a))]
        assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5), (1, None), (2, None), (3, None)]

    async def test_a_tqdm_bar(self, capsys: pytest.CaptureFixture[str]) -> None:
        pytest.importorskip("tqdm")
        with anyio.fail_after(10):
            async with DynamicBatcher(double) as batcher:
                assert [r async for r in batcher.map(range(3), progress=True)] == [0, 2, 4]
        assert "3/3" in capsys.readouterr().err

    async def test_without_tqdm_the_error_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
        batcher = DynamicBatcher(double)
        with pytest.raises(ImportError, match=r"needs tqdm: install batcher's 'progress' extra \(pip install -e "):
            batcher.map([1], progress=True)


async def test_token_batcher_prices_the_texts() -> None:
    async def lengths(batch: list[str]) -> list[int]:
        return [len(text) for text in batch]

    batcher = TokenBatcher(lengths, target_batch_tokens=12)
    with anyio.fail_after(10):
        async with batcher:
            got = [r async for r in batcher.map(["x" * 40] * 4)]  # 11 tokens each: one a batch
    assert got == [40] * 4
    assert batcher.stats.total_batches == 4


async def test_a_consumer_that_awaits_between_results_still_gets_full_batches() -> None:
    batcher = DynamicBatcher(double, max_batch_size=32, max_queue_size=200)
    with anyio.fail_after(10):
        async with batcher, batcher.map(range(2_000)) as mapped:
            async for _ in mapped:
                await anyio.lowlevel.checkpoint()  # what a consumer that does any I/O does
    stats = batcher.stats
    assert stats.total_completed == 2_000
    assert stats.avg_batch_size >= 24  # refilled half a window at a time, not a record per result
