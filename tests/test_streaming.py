"""Streaming: an async generator process function yields one item per record a
step; each record's items reach its own stream, in order, under asyncio and trio."""

from __future__ import annotations

import gc
import random
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import numpy
import pytest

from batcher import (
    END,
    BatcherOverloadedError,
    DynamicBatcher,
    QueueTimeoutError,
    RecordCancelledError,
    StreamLagError,
    TokenBatcher,
    current_batch,
)

from .helpers import Recorder, bounded


class Generator:
    """A simulated LLM: record ``(name, length)`` gets ``length`` tokens ``name:i``,
    then its stream ends. It notes each batch, what was wanted at each step, and
    whether it was closed before it finished."""

    def __init__(self, *, hold: anyio.Event | None = None) -> None:
        self.batches: list[list[Any]] = []
        self.closed_early = 0
        self.finished = 0
        self.hold = hold

    async def __call__(self, records: list[tuple[str, int]]) -> AsyncIterator[list[Any]]:
        self.batches.append([name for name, _ in records])
        if self.hold is not None:
            await self.hold.wait()
        done = False
        try:
            for step in range(max(length for _, length in records)):
                yield [f"{name}:{step}" if step < length else END for name, length in records]
                await anyio.lowlevel.checkpoint()
            done = True
        finally:
            if done:
                self.finished += 1
            else:
                self.closed_early += 1


def streaming(model: Any, **settings: Any) -> DynamicBatcher[Any, list[Any]]:
    """A batcher of a streaming model; a record's result is the list of its items."""
    return DynamicBatcher(model, **settings)


async def collect(batcher: DynamicBatcher[Any, Any], record: Any, **options: Any) -> list[Any]:
    async with batcher.stream(record, **options) as items:
        return [item async for item in items]


@bounded(30)
class TestItems:
    async def test_each_record_gets_its_own_items_in_order_and_ends_on_its_own(self) -> None:
        model = Generator(hold=anyio.Event())
        results: dict[str, list[Any]] = {}
        async with streaming(model, max_batch_size=8) as batcher:

            async def client(name: str, length: int) -> None:
                results[name] = await collect(batcher, (name, length))

            async with anyio.create_task_group() as tg:
                for name, length in [("a", 1), ("b", 4), ("c", 0), ("d", 2)]:
                    tg.start_soon(client, name, length)
                await anyio.wait_all_tasks_blocked()
                assert model.hold is not None
                model.hold.set()
        assert [sorted(batch) for batch in model.batches] == [["a", "b", "c", "d"]]
        assert results == {"a": ["a:0"], "b": [f"b:{i}" for i in range(4)], "c": [], "d": ["d:0", "d:1"]}
        assert model.finished == 1
        stats = batcher.stats
        assert (stats.total_completed, stats.total_failed) == (4, 0)

    async def test_call_submit_and_map_return_the_list_of_items(self) -> None:
        async with streaming(Generator()) as batcher:
            assert await batcher.call(("x", 3)) == ["x:0", "x:1", "x:2"]
            future = await batcher.submit(("y", 1))
            assert await future == ["y:0"]
            async with batcher.map([("m", 2), ("n", 0)]) as results:
                assert [result async for result in results] == [["m:0", "m:1"], []]

    async def test_many_concurrent_streams(self) -> None:
        rng = random.Random(7)
        lengths = {f"r{n}": rng.randint(0, 30) for n in range(300)}
        got: dict[str, list[Any]] = {}
        async with streaming(Generator(), max_batch_size=32, max_concurrent_batches=2) as batcher:

            async def client(name: str) -> None:
                got[name] = await collect(batcher, (name, lengths[name]))

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for name in lengths:
                        tg.start_soon(client, name)
        assert got == {name: [f"{name}:{i}" for i in range(length)] for name, length in lengths.items()}

    async def test_token_batcher_streams_with_token_names(self) -> None:
        async with TokenBatcher[Any, list[Any]](Generator(), target_batch_tokens=100) as batcher:
            async with batcher.stream(("t", 2), estimated_tokens=40, priority=1) as tokens:
                assert [token async for token in tokens] == ["t:0", "t:1"]


@bounded(30)
class TestFailures:
    async def test_an_exception_from_the_generator_fails_every_record_still_open(self) -> None:
        async def model(records: list[str]) -> AsyncIterator[list[Any]]:
            yield [END if record == "short" else f"{record}:0" for record in records]
            raise KeyError("the model broke")

        async with streaming(model, max_batch_size=4) as batcher:
            seen: list[Any] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: collect(batcher, "short"))  # ended before the failure: no error

                async def long() -> None:
                    async with batcher.stream("long") as items:
                        seen.append(await items.__anext__())
                        with pytest.raises(KeyError, match="the model broke"):
                            await items.__anext__()

                tg.start_soon(long)
        assert seen == ["long:0"]
        assert batcher.stats.total_failed == 1

    async def test_an_exception_in_a_slot_fails_that_record_alone(self) -> None:
        async def model(records: list[str]) -> AsyncIterator[list[Any]]:
            yield [ValueError(record) if record == "bad" else f"{record}:0" for record in records]
            yield [f"{record}:1" for record in records]

        async with streaming(model, max_batch_size=4) as batcher:
            async with anyio.create_task_group() as tg:

                async def bad() -> None:
                    with pytest.raises(ValueError, match="bad"):
                        await collect(batcher, "bad")

                async def good() -> None:
                    assert await collect(batcher, "good") == ["good:0", "good:1"]

                tg.start_soon(bad)
                tg.start_soon(good)

    async def test_a_step_of_the_wrong_length_fails_the_batch(self) -> None:
        async def model(records: list[str]) -> AsyncIterator[list[Any]]:
            yield ["only one"]

        async with streaming(model, max_batch_size=2) as batcher:
            futures = await batcher.submit_batch(["a", "b"])
            for future in futures:
                with pytest.raises(ValueError, match="yielded 1 items for a batch of 2 records"):
                    await future

    async def test_a_step_may_be_any_ordered_iterable_not_an_unordered_one(self) -> None:
        async def model(records: list[str]) -> AsyncIterator[Any]:
            yield tuple(f"{r}:tuple" for r in records)
            yield numpy.array([f"{r}:array" for r in records])
            yield (f"{r}:generator" for r in records)
            if "dict" in records:
                yield dict.fromkeys(records)

        async with streaming(model, max_batch_size=2) as batcher:
            futures = await batcher.submit_batch(["a", "b"])
            assert [await future for future in futures] == [
                ["a:tuple", "a:array", "a:generator"],
                ["b:tuple", "b:array", "b:generator"],
            ]
            for future in await batcher.submit_batch(["dict", "c"]):
                with pytest.raises(ValueError, match="yielded a dict for a batch of 2 records"):
                    await future

    async def test_process_timeout_bounds_the_whole_stream(self) -> None:
        async def model(records: list[str]) -> AsyncIterator[list[Any]]:
            yield ["first"]
            await anyio.sleep_forever()
            yield ["never"]

        async with streaming(model, process_timeout_s=0.05) as batcher:
            with anyio.fail_after(5):
                async with batcher.stream("x") as items:
                    assert await items.__anext__() == "first"
                    with pytest.raises(TimeoutError):
                        await items.__anext__()

    async def test_a_queue_deadline_and_shedding_reach_the_stream(self) -> None:
        hold = anyio.Event()
        async with streaming(Generator(hold=hold), max_batch_size=1, max_queued_cost=2) as batcher:
            first = batcher.stream(("first", 1))
            await anyio.wait_all_tasks_blocked()  # "first" is in the model, held
            with pytest.raises(QueueTimeoutError):
                await collect(batcher, ("late", 1), max_queue_delay_s=0.01)
            queued = batcher.stream(("queued", 1), estimated_cost=2)
            with pytest.raises(BatcherOverloadedError):
                batcher.stream(("refused", 1))
            hold.set()
            async with first, queued:
                assert [item async for item in first] == ["first:0"]
                assert [item async for item in queued] == ["queued:0"]


@bounded(30)
class TestConsumersLeaving:
    async def test_a_failed_stream_read_without_async_with_and_dropped_leaves_nothing_open(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The record's error holds the iterator's frame: a cycle, which the cyclic GC
        # broke in any order, its receive stream unclosed (a ResourceWarning).
        unraisable: list[Any] = []
        monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

        async def model(records: list[str]) -> AsyncIterator[list[Any]]:
            yield [f"{record}:0" for record in records]
            yield [ValueError(record) for record in records]

        async with streaming(model) as batcher:
            items = batcher.stream("a")
            with pytest.raises(ValueError, match="a"):
                async for _ in items:
                    pass
            del items
            gc.collect()
        assert unraisable == []

    async def test_a_consumer_that_breaks_out_drops_its_items_and_the_rest_go_on(self) -> None:
        wanted: list[dict[str, bool]] = []

        async def model(records: list[str]) -> AsyncIterator[list[Any]]:
            batch = current_batch()
            for step in range(5):
                wanted.append({record: batch.wanted(i) for i, record in enumerate(records)})
                yield [f"{record}:{step}" for record in records]
                await anyio.wait_all_tasks_blocked()  # let the consumers read

        async with streaming(model, max_batch_size=2) as batcher:
            async with anyio.create_task_group() as tg:

                async def leaver() -> None:
                    async with batcher.stream("leaver") as items:
                        async for item in items:
                            assert item == "leaver:0"
                            break

                async def stayer() -> None:
                    assert await collect(batcher, "stayer") == [f"stayer:{i}" for i in range(5)]

                tg.start_soon(leaver)
                tg.start_soon(stayer)
        assert wanted[0] == {"leaver": True, "stayer": True}
        assert wanted[-1] == {"leaver": False, "stayer": True}

    @pytest.mark.parametrize("leaving", ["leaves its async with", "is cancelled in async for"])
    async def test_a_consumer_that_stops_mid_stream_is_let_go_at_once(self, leaving: str) -> None:
        # stream_stall_s is a minute: a stream left open would hold the batch on its full buffer.
        gate = anyio.Event()

        async def generate(records: list[str]) -> AsyncIterator[list[str]]:
            yield [f"{record}:0" for record in records]
            await gate.wait()
            for step in range(1, 20):
                yield [f"{record}:{step}" for record in records]

        batcher: DynamicBatcher[str, list[str]]
        batcher = DynamicBatcher(generate, max_batch_size=2, stream_buffer=1, stream_stall_s=60)
        read: list[str] = []
        with anyio.fail_after(5):
            async with batcher, anyio.create_task_group() as tg:
                leaver, stayer = batcher.stream("a"), batcher.stream("b")

                async def stay() -> None:
                    read.extend([item async for item in stayer])

                tg.start_soon(stay)
                if leaving == "leaves its async with":
                    async with leaver:
                        async for _ in leaver:
                            break
                else:
                    scope = anyio.CancelScope()

                    async def consume() -> None:
                        with scope:
                            async for _ in leaver:  # no async with: the iterator closes it
                                pass

                    tg.start_soon(consume)
                    await anyio.wait_all_tasks_blocked()  # it took "a:0" and waits for "a:1"
                    scope.cancel()
                gate.set()
        assert read == [f"b:{step}" for step in range(20)]

    async def test_wanted_says_a_consumer_gone_before_any_item(self) -> None:
        gate, wanted = anyio.Event(), []

        async def generate(records: list[str]) -> AsyncIterator[list[str]]:
            batch = current_batch()
            await gate.wait()
            wanted.append([batch.wanted(index) for index in range(len(batch))])
            yield [f"{record}:0" for record in records]

        batcher: DynamicBatcher[str, list[str]] = DynamicBatcher(generate, max_batch_size=2)
        with anyio.fail_after(5):
            async with batcher:
                leaver, stayer = batcher.stream("a"), batcher.stream("b")
                await anyio.wait_all_tasks_blocked()  # both in the batch, which waits at the gate
                leaver.close()
                gate.set()
                async with stayer:
                    assert [item async for item in stayer] == ["b:0"]
        assert wanted == [[False, True]]

    async def test_the_generator_is_closed_once_every_consumer_has_gone(self) -> None:
        model = Generator()
        async with streaming(model, max_batch_size=4) as batcher:
            for name in ("a", "b"):
                async with batcher.stream((name, 1_000)) as items:
                    async for _ in items:
                        break
            await batcher.call(("c", 1))  # the batches before have ended
        assert model.closed_early == 2
        assert model.finished == 1

    async def test_an_abandoned_iterator_counts_as_gone(self) -> None:
        model = Generator()
        async with streaming(model) as batcher:
            async for _ in batcher.stream(("abandoned", 1_000)):
                break  # no async with: dropping the iterator closes it
            await batcher.call(("after", 1))
        assert model.closed_early == 1

    async def test_a_cancelled_consumer_has_gone(self) -> None:
        model = Generator()
        async with streaming(model) as batcher:
            items = batcher.stream(("cancelled", 1_000))
            with anyio.move_on_after(0.05):
                async for _ in items:
                    await anyio.sleep(0.01)
            await batcher.call(("after", 1))
        assert model.closed_early == 1

    @pytest.mark.parametrize("leaving", ["close", "drop"])
    async def test_leaving_before_dispatch_withdraws_the_record(self, leaving: str) -> None:
        hold = anyio.Event()
        model = Generator(hold=hold)
        async with streaming(model, max_batch_size=1) as batcher:
            first = batcher.stream(("first", 1))
            await anyio.wait_all_tasks_blocked()
            queued = batcher.stream(("withdrawn", 1))
            if leaving == "close":
                queued.close()
                assert [item async for item in queued] == []  # a closed stream raises nothing more
            else:
                del queued  # an iterator dropped, collected at once on the loop's thread
                gc.collect()
            assert batcher.stats.total_cancelled == 1
            hold.set()
            async with first:
                assert [item async for item in first] == ["first:0"]
        assert model.batches == [["first"]]

    async def test_a_stream_collected_in_another_thread_is_closed_on_the_loop(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The cyclic GC runs in whatever thread triggers it. There, closing the stream
        set the loop's event from the wrong thread (trio: "must be called from async
        context", unraisable), and the worker waited out ``stream_stall_s`` on its full
        buffer, then failed the record with StreamLagError."""
        unraisable: list[Any] = []
        monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
        closed = anyio.Event()

        async def model(records: list[str]) -> AsyncIterator[list[int]]:
            try:
                for step in range(50):
                    yield [step for _ in records]
            finally:
                closed.set()

        batcher: DynamicBatcher[str, int] = DynamicBatcher(model, stream_buffer=1, stream_stall_s=30)

        async def read_one_and_drop() -> None:
            holder: Any = Cycle()
            holder.stream = batcher.stream("x")
            assert await holder.stream.__anext__() == 0

        with anyio.fail_after(10):
            async with batcher:
                gc.disable()
                try:
                    await read_one_and_drop()
                    await anyio.wait_all_tasks_blocked()  # the worker waits on the full buffer
                    await anyio.to_thread.run_sync(gc.collect)
                finally:
                    gc.enable()
                await closed.wait()
        assert (unraisable, batcher.stats.total_failed) == ([], 0)


class Cycle:
    """An object that holds itself: only the cyclic GC frees it."""

    def __init__(self) -> None:
        self.cycle = self


@bounded(30)
class TestBackpressure:
    async def test_a_slow_consumer_within_the_stall_bound_gets_every_item(self) -> None:
        async with streaming(Generator(), stream_buffer=2, stream_stall_s=5) as batcher:
            got = []
            async with batcher.stream(("slow", 20)) as items:
                async for item in items:
                    got.append(item)
                    await anyio.sleep(0.001)
        assert got == [f"slow:{i}" for i in range(20)]

    async def test_a_stuck_consumer_is_cut_off_and_the_others_go_on(self) -> None:
        async with streaming(Generator(), max_batch_size=2, stream_buffer=2, stream_stall_s=0.05) as batcher:
            stuck = batcher.stream(("stuck", 50))
            with anyio.fail_after(5):
                assert await collect(batcher, ("reader", 50)) == [f"reader:{i}" for i in range(50)]
            async with stuck:
                assert [await stuck.__anext__() for _ in range(2)] == ["stuck:0", "stuck:1"]  # the buffer
                with pytest.raises(StreamLagError, match="stream_stall_s"):
                    await stuck.__anext__()


@bounded(30)
class TestMisuse:
    def test_measured_cost_is_refused_for_a_streaming_function(self) -> None:
        async def generate(batch: list[str]) -> AsyncIterator[list[str]]:
            yield batch

        with pytest.raises(ValueError, match="cost_model='measured' fits the time of each call of process_fn"):
            TokenBatcher(generate, cost_model="measured")

    async def test_a_stream_of_its_own_batcher_in_the_process_function_is_refused(self) -> None:
        batcher: DynamicBatcher[Any, Any]
        refused: list[str] = []

        async def generate(batch: list[str]) -> Any:
            if "outer" in batch:
                try:
                    async with batcher.stream("inner") as inner:
                        async for _ in inner:
                            pass
                except RuntimeError as exc:
                    refused.append(str(exc))
            yield [END] * len(batch)

        batcher = DynamicBatcher(generate)
        with anyio.fail_after(5):
            async with batcher:
                assert await batcher.call("outer") == []
                assert await batcher.call("after") == []
        assert len(refused) == 1
        assert refused[0].startswith("process_fn awaited a result of its own batcher")
        assert batcher.stats.total_cancelled == 1  # "inner" was withdrawn

    async def test_stream_needs_a_streaming_process_function(self) -> None:
        async with streaming(Recorder()) as plain:
            with pytest.raises(TypeError, match="stream\\(\\) needs a streaming process_fn"):
                plain.stream("x")
            assert plain.stats.total_submitted == 0

    def test_current_batch_outside_a_streaming_process_function(self) -> None:
        with pytest.raises(RuntimeError, match="must be called from a streaming process function"):
            current_batch()

    async def test_stream_settings_are_checked(self) -> None:
        with pytest.raises(ValueError, match="stream_buffer must be >= 1, got 0"):
            DynamicBatcher(Generator(), stream_buffer=0)
        with pytest.raises(ValueError, match=r"^stream_stall_s must be a finite number > 0, got 0$"):
            TokenBatcher(Generator(), stream_stall_s=0)
        with pytest.raises(TypeError, match=r"^stream_stall_s must be a number, got NoneType$"):
            TokenBatcher(Generator(), stream_stall_s=None)  # type: ignore[arg-type]

    @pytest.mark.parametrize("inside_async_with", [False, True])
    async def test_a_second_task_reading_a_stream_is_refused_and_the_first_reads_on(
        self, inside_async_with: bool
    ) -> None:
        # Two readers split the items between them, and one's cancellation ended the
        # other's stream early as if it had finished; refused inside its own `async
        # with`, the second reader's exit closed the stream under the first.
        hold = anyio.Event()
        async with streaming(Generator(hold=hold)) as batcher, batcher.stream(("x", 3)) as items:
            read: list[Any] = []

            async def first() -> None:
                read.extend([item async for item in items])

            async def second() -> None:
                if inside_async_with:
                    async with items:
                        await items.__anext__()
                else:
                    await items.__anext__()

            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(first)
                    await anyio.wait_all_tasks_blocked()  # it waits for an item
                    with pytest.raises(RuntimeError, match=r"^this stream is already being read by another task"):
                        await second()
                    hold.set()
            assert read == ["x:0", "x:1", "x:2"]
        assert batcher.stats.total_completed == 1

    async def test_an_ended_streams_items_are_read_from_any_thread(self) -> None:
        async with streaming(Generator()) as batcher:
            items = batcher.stream(("x", 3))
            with anyio.fail_after(5):
                await items._future

        async def read() -> list[Any]:
            return [item async for item in items]

        for backend in ("asyncio", "trio"):
            assert await anyio.to_thread.run_sync(partial(anyio.run, read, backend=backend)) == (
                ["x:0", "x:1", "x:2"] if backend == "asyncio" else []
            )
        items.close()  # from this thread too: the record has ended

    async def test_a_withdrawn_stream_raises_nothing_more(self) -> None:
        async with streaming(Generator()) as batcher:
            items = batcher.stream(("x", 3))
            items.close()
            assert [item async for item in items] == []
            with pytest.raises(RecordCancelledError):
                items._future.result()
