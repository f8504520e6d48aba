"""No future is ever lost: cancellation, abnormal exits, process-function failures.

Every test here ends each future it got exactly once, on asyncio and on trio, and
is bounded by ``anyio.fail_after`` so a lost future fails the test instead of
hanging it. Ordering is synchronised on ``anyio.Event`` and
``anyio.wait_all_tasks_blocked``, never on sleeps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import suppress
from typing import Any, ClassVar

import anyio
import pytest

from batcher import (
    BatchDispatched,
    BatchEnded,
    BatcherClosedError,
    BatchFuture,
    DynamicBatcher,
    RecordCancelledError,
    RecordsDropped,
)

from .helpers import NOT_RUNNING, Recorder, blocked_batcher


class Spinner:
    """An async process function that never returns, yet passes a checkpoint on
    every turn, so it stays ahead of woken tasks in the ready queue."""

    def __init__(self) -> None:
        self.entered = anyio.Event()

    async def __call__(self, batch: list[Any]) -> list[Any]:
        self.entered.set()
        while True:
            await anyio.lowlevel.checkpoint()


class Fatal(BaseException):
    """A BaseException that is neither cancellation nor KeyboardInterrupt."""


def assert_closed(futures: list[BatchFuture[Any]]) -> None:
    for future in futures:
        assert future.done()
        assert isinstance(future.exception(), BatcherClosedError)


def assert_balanced(batcher: DynamicBatcher[Any, Any]) -> None:
    stats = batcher.stats
    assert stats.total_submitted == stats.total_completed + stats.total_cancelled


async def _echo_slowly(batch: list[int]) -> list[int]:
    await anyio.lowlevel.checkpoint()
    return batch


async def _call_quietly(batcher: DynamicBatcher[Any, Any], record: Any) -> None:
    with suppress(BatcherClosedError):
        await batcher.call(record)


class TestCancelQueued:
    """Promise 1: a record withdrawn before dispatch never reaches the process function."""

    async def test_cancel_withdraws_a_queued_record(self) -> None:
        async with blocked_batcher(max_batch_size=1) as (batcher, model, first):
            queued = await batcher.submit("queued")
            assert queued.cancel()
            assert queued.cancelled()
            assert queued.done()
            model.release()
            assert await first == ("done", "first")
            with pytest.raises(RecordCancelledError):
                await queued
        assert model.records == ["first"]
        assert issubclass(RecordCancelledError, Exception)
        assert batcher.stats.total_cancelled == 1
        assert_balanced(batcher)

    async def test_cancel_after_dispatch_returns_false_and_delivers(self) -> None:
        async with blocked_batcher() as (batcher, model, first):
            assert not first.cancel()
            assert not first.cancelled()
            model.release()
            assert await first == ("done", "first")
        assert batcher.stats.total_cancelled == 0

    async def test_cancel_withdraws_a_record_of_a_prefetched_batch(self) -> None:
        """A batch waiting in the batch stream for a busy worker is not dispatched
        yet: its records can still be withdrawn, and the rest of it still runs."""
        async with blocked_batcher(max_batch_size=2, prefetch_batches=1) as (batcher, model, first):
            kept, withdrawn = await batcher.submit_batch(["kept", "withdrawn"])
            await anyio.wait_all_tasks_blocked()  # the aggregator has sent the batch on
            assert withdrawn.cancel()
            model.release()
            assert await first == ("done", "first")
            assert await kept == ("done", "kept")
            with pytest.raises(RecordCancelledError):
                await withdrawn
        assert model.batches == [["first"], ["kept"]]
        stats = batcher.stats
        assert (stats.total_batches, stats.total_cancelled) == (2, 1)
        assert_balanced(batcher)

    @pytest.mark.parametrize("how", ["move_on_after", "fail_after", "task_group"])
    async def test_cancelled_call_withdraws_the_record(self, how: str) -> None:
        async with blocked_batcher(max_batch_size=1) as (batcher, model, first):
            if how == "move_on_after":
                with anyio.move_on_after(0.01) as scope:
                    await batcher.call("withdrawn")
                assert scope.cancelled_caught
            elif how == "fail_after":
                with pytest.raises(TimeoutError), anyio.fail_after(0.01):
                    await batcher.call("withdrawn")
            else:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(batcher.call, "withdrawn")
                    await anyio.wait_all_tasks_blocked()
                    tg.cancel_scope.cancel()
            model.release()
            assert await first == ("done", "first")
        assert model.records == ["first"]
        assert batcher.stats.total_cancelled == 1
        assert_balanced(batcher)

    async def test_cancelled_call_after_dispatch_is_still_processed(self) -> None:
        model = Recorder(hold=True)
        with anyio.fail_after(5):
            async with DynamicBatcher(model) as batcher:
                with anyio.CancelScope() as scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(batcher.call, "x")
                        await model.entered.wait()
                        scope.cancel()
                model.release()
        assert model.records == ["x"]
        stats = batcher.stats
        assert (stats.total_completed, stats.total_cancelled) == (1, 0)

    async def test_submit_cancelled_while_waiting_for_room_is_withdrawn(self) -> None:
        """Backpressure: a producer cancelled while ``submit`` waits has its record withdrawn."""
        async with blocked_batcher(max_batch_size=1, prefetch_batches=0, max_queue_size=1) as (batcher, model, first):
            held = await batcher.submit("held")  # in the aggregator's hands
            await anyio.wait_all_tasks_blocked()
            queued = await batcher.submit("queued")  # fills the submission stream
            with anyio.move_on_after(0.01) as scope:
                await batcher.submit("withdrawn")
            assert scope.cancelled_caught
            model.release()
            assert [await f for f in (first, held, queued)] == [("done", r) for r in ("first", "held", "queued")]
        assert model.records == ["first", "held", "queued"]
        assert batcher.stats.total_cancelled == 1
        assert_balanced(batcher)

    async def test_submit_batch_cancelled_while_waiting_withdraws_what_it_queued(self) -> None:
        """The caller of a cancelled ``submit_batch`` gets no futures back, so the
        records it had already queued are withdrawn too."""
        async with blocked_batcher(max_batch_size=1, prefetch_batches=0, max_queue_size=2) as (batcher, model, first):
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(batcher.submit_batch, [f"r{i}" for i in range(10)])
                    await anyio.wait_all_tasks_blocked()  # submit_batch waits for room
                    scope.cancel()
            model.release()
            assert await first == ("done", "first")
        assert model.records == ["first"]
        stats = batcher.stats
        # r0 in the aggregator's hands, r1 and r2 in the stream, r3 waiting for room
        assert (stats.total_submitted, stats.total_cancelled) == (1 + 4, 4)
        assert_balanced(batcher)


class TestAbnormalExit:
    """Promise 2: however the batcher ends, every unresolved future fails promptly."""

    # Little room everywhere a record can wait, so that a test can fill it all.
    SETTINGS: ClassVar[dict[str, Any]] = {"max_batch_size": 2, "prefetch_batches": 1, "max_queue_size": 4}

    async def _fill(self, batcher: DynamicBatcher[Any, Any]) -> list[BatchFuture[Any]]:
        """Submit records until every place a record can wait beside the blocked model
        is full: prefetched, in the aggregator's hands and in the submission stream."""
        futures: list[BatchFuture[Any]] = []
        while True:
            try:
                futures.append(batcher.submit_nowait(len(futures)))
            except anyio.WouldBlock:
                await anyio.wait_all_tasks_blocked()  # let the aggregator take what it can
                try:
                    futures.append(batcher.submit_nowait(len(futures)))
                except anyio.WouldBlock:
                    return futures

    @pytest.mark.parametrize("group_by_cost", [False, True])
    async def test_body_exception_propagates_unwrapped(self, group_by_cost: bool) -> None:
        error = ValueError("from the body")
        futures: list[BatchFuture[Any]] = []
        opened: list[DynamicBatcher[Any, Any]] = []

        async def body() -> None:
            async with blocked_batcher(**self.SETTINGS, group_by_cost=group_by_cost) as (batcher, _, first):
                opened.append(batcher)
                futures.extend([first, *await self._fill(batcher)])
                raise error

        with pytest.raises(ValueError, match="from the body") as info:
            await body()
        assert info.value is error  # the very exception, not an ExceptionGroup
        # "first" in flight, a prefetched batch of 2, the aggregator's batch of 2 (when
        # grouping, a pool of max(max_queue_size, max_batch_size)), the stream's 4.
        assert len(futures) == 1 + 2 + (4 if group_by_cost else 2) + 4
        assert_closed(futures)
        [batcher] = opened
        assert not batcher.is_running
        assert_balanced(batcher)

    async def test_enclosing_cancel_scope_fails_pending_futures(self) -> None:
        with anyio.CancelScope() as scope:
            async with blocked_batcher(**self.SETTINGS) as (batcher, _, first):
                futures = [first, *await self._fill(batcher)]
                scope.cancel()
                await futures[-1]
        assert scope.cancelled_caught
        assert_closed(futures)
        assert_balanced(batcher)

    async def test_deadline_while_awaiting_a_future(self) -> None:
        with anyio.CancelScope() as scope:
            async with blocked_batcher(**self.SETTINGS, max_concurrent_batches=2) as (batcher, _, first):
                futures = [first, *await self._fill(batcher)]
                # The deadline starts once everything is queued, however slow the machine.
                scope.deadline = anyio.current_time() + 0.05
                await first
        assert scope.cancelled_caught
        assert_closed(futures)
        assert_balanced(batcher)

    async def test_cancel_while_a_producer_waits_for_room(self) -> None:
        """A producer blocked in ``submit`` gets a failed future or a RuntimeError."""
        futures: list[BatchFuture[Any]] = []
        refused: list[RuntimeError] = []

        async def produce(batcher: DynamicBatcher[Any, Any]) -> None:
            try:
                futures.append(await batcher.submit("late"))
            except RuntimeError as exc:
                refused.append(exc)

        with anyio.fail_after(5):  # the producer outlives the batcher
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as scope:
                    async with blocked_batcher(**self.SETTINGS) as (batcher, _, first):
                        futures.extend([first, *await self._fill(batcher)])
                        filled = len(futures)
                        tg.start_soon(produce, batcher)
                        await anyio.wait_all_tasks_blocked()
                        scope.cancel()
        assert len(futures) + len(refused) == filled + 1
        assert [str(exc) for exc in refused] == [NOT_RUNNING] * len(refused)
        assert_closed(futures)
        assert_balanced(batcher)

    async def test_batch_handed_over_while_the_workers_exit_is_failed(self) -> None:
        """Cancelled just as the aggregator, already woken with a record, closes a
        full batch: if the workers have drained the batch stream and left first, that
        batch must still fail, not sit unread in the prefetch buffer.

        Under asyncio the order is deterministic (the spinning worker is ahead of the
        aggregator in the ready queue); trio picks it half the time, hence the rounds.
        """
        for _ in range(20):
            spin = Spinner()
            batcher = DynamicBatcher(spin, max_batch_size=1, prefetch_batches=1)
            with anyio.fail_after(5), anyio.CancelScope() as scope:
                async with batcher:
                    running = await batcher.submit("running")
                    await spin.entered.wait()
                    for _ in range(3):  # the aggregator settles into waiting for input
                        await anyio.lowlevel.checkpoint()
                    late = batcher.submit_nowait("late")  # handed straight to the aggregator
                    scope.cancel()
                    await anyio.lowlevel.checkpoint()
            assert_closed([running])
            assert late.done(), "a future was lost"
            assert_closed([late])
            assert_balanced(batcher)

    @pytest.mark.parametrize("workers", [1, 3])
    @pytest.mark.parametrize("exc_type", [SystemExit, Fatal])
    async def test_process_fn_base_exception_closes_the_batcher(
        self, exc_type: type[BaseException], workers: int
    ) -> None:
        """The batch that raised, the batches running beside it and every queued
        record fail with BatcherClosedError; the exception leaves ``async with``."""
        fatal = exc_type("fatal")
        model = Recorder(hold=True)
        never = anyio.Event()

        async def fn(batch: list[Any]) -> list[Any]:
            await model(batch)
            if 0 in batch:
                raise fatal
            await never.wait()
            raise AssertionError("a batch outlived the fatal one")  # pragma: no cover

        batcher = DynamicBatcher(fn, max_batch_size=2, prefetch_batches=1, max_concurrent_batches=workers)
        futures: list[BatchFuture[Any]] = []

        async def body() -> None:
            async with batcher:
                futures.extend([await batcher.submit(i) for i in range(12)])
                await model.entered.wait()
                await anyio.wait_all_tasks_blocked()  # every worker holds a batch
                model.release()
                for future in futures:
                    with pytest.raises(BatcherClosedError):
                        await future

        with anyio.fail_after(5), pytest.raises(exc_type) as info:
            await body()
        assert info.value is fatal
        assert_closed(futures)
        closed = futures[0].exception()
        assert isinstance(closed, BatcherClosedError)
        assert closed.__cause__ is fatal
        assert sorted(model.records) == list(range(2 * workers))  # nothing ran after the fatal batch
        assert_balanced(batcher)

    async def test_sync_process_fn_base_exception_raises_from_stop(self) -> None:
        fatal = Fatal("from a worker thread")

        def fn(batch: list[int]) -> list[int]:
            if 3 in batch:
                raise fatal
            return batch

        batcher = DynamicBatcher(fn, max_batch_size=1)
        with anyio.fail_after(5):
            await batcher.start()
            futures = await batcher.submit_batch(range(6))
            with pytest.raises(BatcherClosedError):
                await futures[3]
            # Until stop(), the batcher says what ended it, and refuses records naming it.
            ended = r"the batcher was ended by Fatal\('from a worker thread'\) from its process function \(or an"
            assert repr(batcher).startswith("<DynamicBatcher ended by Fatal('from a worker thread') submitted=6")
            for attempt in (batcher.submit(9), batcher.call(9), batcher.start()):
                with pytest.raises(RuntimeError, match=ended) as refused:
                    await attempt
                assert refused.value.__cause__ is fatal
            with pytest.raises(Fatal) as info:
                await batcher.stop()
        assert info.value is fatal
        assert [f.result() for f in futures[:3]] == [0, 1, 2]
        assert_closed(futures[3:])
        assert all(future.exception().__cause__ is fatal for future in futures[3:])  # type: ignore[union-attr]
        assert not batcher.is_running
        assert_balanced(batcher)
        # stop() raised it: the batcher lets go of it (and of the frames and records it holds).
        assert batcher._run.fatal is None
        with pytest.raises(RuntimeError, match=NOT_RUNNING) as refused:
            await batcher.submit(9)
        assert refused.value.__cause__ is None

    async def test_after_serve_raised_it_stop_lets_go_of_the_fatal_exception(self) -> None:
        fatal = Fatal("under serve()")

        async def fn(batch: list[int]) -> list[int]:
            raise fatal

        batcher = DynamicBatcher(fn)
        futures: list[BatchFuture[int]] = []

        async def served() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                futures.append(await batcher.submit(1))

        with anyio.fail_after(5):
            with pytest.raises(BaseExceptionGroup) as group:
                await served()
            assert group.value.exceptions == (fatal,)
            assert isinstance(futures[0].exception(), BatcherClosedError)
            with pytest.raises(RuntimeError, match=NOT_RUNNING) as refused:
                await batcher.submit(2)
            assert refused.value.__cause__ is fatal  # until stop()
            await batcher.stop()  # serve() raised it already: not again
        assert batcher._run.fatal is None
        with pytest.raises(RuntimeError, match=NOT_RUNNING) as refused:
            await batcher.submit(3)
        assert refused.value.__cause__ is None

    async def test_serve_raises_the_fatal_exception_though_a_caller_cancelled_its_task_group(self) -> None:
        # A caller's BatcherClosedError cancels the group before serve() gets to raise it.
        fatal = Fatal("under serve()")

        async def fn(batch: list[int]) -> list[int]:
            raise fatal

        batcher = DynamicBatcher(fn)

        async def served() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                tg.start_soon(batcher.call, 1)  # its BatcherClosedError is raised into the group

        with anyio.fail_after(5), pytest.raises(BaseExceptionGroup) as group:
            await served()
        errors = group.value.exceptions
        assert fatal in errors
        assert any(isinstance(error, BatcherClosedError) for error in errors)

    async def test_a_done_callback_raising_past_exception_ends_the_batcher_as_the_model_would(self) -> None:
        # Its batch is handed out whole (each callback runs once); the rest are closed,
        # and stop() raises it.
        fatal = Fatal("from a done-callback")
        called: list[int] = []

        def callback(future: BatchFuture[int]) -> None:
            called.append(future.result())
            if future.result() == 1:
                raise fatal

        batcher = DynamicBatcher(_echo_slowly, max_batch_size=4)
        futures: list[BatchFuture[int]] = []

        async def body() -> None:
            async with batcher:
                futures.extend(batcher.submit_nowait(n) for n in range(4))
                for future in futures:
                    future.add_done_callback(callback)
                await futures[0]
                futures.extend(batcher.submit_nowait(n) for n in range(4, 6))
                with pytest.raises(RuntimeError, match="ended by Fatal"):
                    batcher.submit_nowait(9)

        with anyio.fail_after(5), pytest.raises(Fatal) as raised:
            await body()
        assert raised.value is fatal
        assert sorted(called) == [0, 1, 2, 3]
        assert [future.result() for future in futures[:4]] == [0, 1, 2, 3]
        assert_closed(futures[4:])
        assert_balanced(batcher)

    async def test_a_callback_added_from_another_thread_raises_there_and_the_batcher_goes_on(self) -> None:
        # Added to a future that has ended, it runs in that thread: off the loop, it cannot end the run.
        fatal = Fatal("in a thread")

        def callback(future: BatchFuture[int]) -> None:
            raise fatal

        with anyio.fail_after(5):
            async with DynamicBatcher(_echo_slowly) as batcher:
                future = await batcher.submit(1)
                await future

                def add() -> None:
                    future.add_done_callback(callback)

                with pytest.raises(Fatal):
                    await anyio.to_thread.run_sync(add)
                assert await batcher.call(2) == 2

    @pytest.mark.parametrize("on", [BatchDispatched, BatchEnded, RecordsDropped])
    async def test_an_observer_raising_past_exception_ends_the_batcher_as_the_model_would(self, on: type) -> None:
        fatal = Fatal("from an observer")

        def observe(event: object) -> None:
            if isinstance(event, on):
                raise fatal

        batcher = DynamicBatcher(_echo_slowly, max_batch_size=2, observers=[observe])
        futures: list[BatchFuture[int]] = []

        async def body() -> None:
            async with batcher:
                futures.extend(batcher.submit_nowait(n) for n in range(6))
                futures[5].cancel()  # RecordsDropped("withdrawn")
                for future in futures[:5]:
                    with suppress(BatcherClosedError):
                        await future

        with anyio.fail_after(5), pytest.raises(Fatal) as raised:
            await body()
        assert raised.value is fatal
        assert all(future.done() for future in futures)
        if on is BatchEnded:  # the first batch ran: its results were handed out
            assert [future.result() for future in futures[:2]] == [0, 1]
        assert batcher.stats.batches_in_flight == 0
        assert_balanced(batcher)

    async def test_process_timeout_fails_the_batch_and_goes_on(self) -> None:
        calls = 0
        never = anyio.Event()

        async def fn(batch: list[int]) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                await never.wait()
            return batch

        with anyio.fail_after(5):
            async with DynamicBatcher(fn, max_batch_size=1, process_timeout_s=0.05) as batcher:
                slow = await batcher.submit(0)
                fast = await batcher.submit(1)
                with pytest.raises(TimeoutError):
                    await slow
                assert await fast == 1
                assert await batcher.call(2) == 2
        stats = batcher.stats
        assert (stats.total_completed, stats.total_failed) == (3, 1)

    async def test_process_timeout_with_a_sync_process_fn(self) -> None:
        """A timed-out sync batch fails with TimeoutError; the next batch runs while
        the abandoned thread still blocks (under trio it keeps its limiter token until
        it returns), and the thread's late return does not end its futures again."""
        unblock = threading.Event()
        returned = threading.Event()

        def fn(batch: list[int]) -> list[int]:
            if 0 in batch:
                unblock.wait(5)
                returned.set()
            return batch

        try:
            with anyio.fail_after(5):
                async with DynamicBatcher(fn, max_batch_size=1, process_timeout_s=0.05) as batcher:
                    slow = await batcher.submit(0)
                    with pytest.raises(TimeoutError):
                        await slow
                    # The next batches start a thread of their own: 50 ms was short for that under load.
                    batcher.configure(process_timeout_s=5)
                    assert await batcher.call(1) == 1  # the abandoned thread still blocks
                    unblock.set()
                    assert await anyio.to_thread.run_sync(returned.wait, 5)
                    assert await batcher.call(2) == 2
        finally:
            unblock.set()
        assert isinstance(slow.exception(), TimeoutError)
        stats = batcher.stats
        assert (stats.total_submitted, stats.total_completed, stats.total_failed) == (3, 3, 1)

    @pytest.mark.parametrize("method", ["submit", "submit_nowait", "submit_batch", "call"])
    async def test_submit_racing_stop_is_processed_or_refused(self, method: str) -> None:
        """Producers keep submitting while ``stop()`` runs: each record is processed
        or its submit raises RuntimeError; no future is left unresolved."""
        seen: list[int] = []

        async def fn(batch: list[int]) -> list[tuple[str, int]]:
            seen.extend(batch)
            await anyio.lowlevel.checkpoint()
            return [("ok", r) for r in batch]

        batcher = DynamicBatcher(fn, max_batch_size=4, max_queue_size=8)
        futures: dict[int, BatchFuture[Any]] = {}
        called: dict[int, Any] = {}
        refused: list[RuntimeError] = []
        running = anyio.Event()

        async def produce(worker: int) -> None:
            for i in range(worker * 1000, worker * 1000 + 1000):
                try:
                    if method == "submit":
                        futures[i] = await batcher.submit(i)
                    elif method == "submit_nowait":
                        try:
                            futures[i] = batcher.submit_nowait(i)
                        except anyio.WouldBlock:
                            futures[i] = await batcher.submit(i)
                    elif method == "submit_batch":
                        [futures[i]] = await batcher.submit_batch([i])
                    else:
                        called[i] = await batcher.call(i)
                except RuntimeError as exc:
                    refused.append(exc)
                    return
                running.set()
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await batcher.start()
                for worker in range(10):
                    tg.start_soon(produce, worker)
                await running.wait()
                await batcher.stop()
        assert refused
        assert [str(exc) for exc in refused] == [NOT_RUNNING] * len(refused)
        for i, future in futures.items():
            assert future.result() == ("ok", i)
        for i, result in called.items():
            assert result == ("ok", i)
        assert sorted(seen) == sorted([*futures, *called])
        assert_balanced(batcher)


class TestServe:
    """Promise 2 under ``serve()``: the caller's task group owns the loops."""

    @pytest.mark.parametrize("priority", [0, 1])
    async def test_a_cancelled_serve_refuses_what_its_failures_callbacks_submit(self, priority: int) -> None:
        # "Retry what failed": each failure's done-callback submits again. Accepted, such a
        # record stayed queued for ever (a first priority also took back the batches closed
        # ahead, which nobody failed), or was failed and retried without end.
        model = Recorder(hold=True)
        batcher = DynamicBatcher(model, max_batch_size=2, prefetch_batches=4)
        refused: list[str] = []

        def retry(future: BatchFuture[Any]) -> None:
            try:
                batcher.submit_nowait("again", priority=priority).add_done_callback(retry)
            except RuntimeError as exc:
                refused.append(str(exc))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                futures = [batcher.submit_nowait(n) for n in range(20)]
                for future in futures:
                    future.add_done_callback(retry)
                await model.entered.wait()
                await anyio.wait_all_tasks_blocked()  # batches closed ahead for the busy worker
                tg.cancel_scope.cancel()
        assert_closed(futures)
        assert refused == [NOT_RUNNING] * 20
        assert batcher.stats.queued == 0
        assert_balanced(batcher)

    async def test_a_cancelled_serve_refuses_what_an_observer_submits_as_it_drops_records(self) -> None:
        # Records behind the full stream are dropped last: one submitted as the last left
        # it found room in a stream nobody drained.
        model = Recorder(hold=True)
        refused: list[str] = []

        def observe(event: object) -> None:
            if isinstance(event, RecordsDropped) and event.reason == "closed":
                try:
                    batcher.submit_nowait("retry")
                except RuntimeError as exc:
                    refused.append(str(exc))

        batcher = DynamicBatcher(model, max_queue_size=1, max_batch_size=1, prefetch_batches=0, observers=[observe])
        with anyio.fail_after(5):
            async with anyio.create_task_group() as callers:
                async with anyio.create_task_group() as tg:
                    await tg.start(batcher.serve)
                    for n in range(6):
                        callers.start_soon(_call_quietly, batcher, n)
                    await anyio.wait_all_tasks_blocked()  # one in the model, one queued, the rest behind
                    tg.cancel_scope.cancel()
        assert refused
        assert set(refused) == {NOT_RUNNING}
        assert batcher.stats.queued == 0
        assert_balanced(batcher)

    async def test_cancelling_the_task_group_fails_pending_futures(self) -> None:
        model = Recorder(hold=True)
        batcher = DynamicBatcher(model, max_batch_size=2, prefetch_batches=1)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                futures = [await batcher.submit(i) for i in range(8)]
                await model.entered.wait()
                tg.cancel_scope.cancel()
        assert_closed(futures)
        assert not batcher.is_running
        assert_balanced(batcher)

    async def test_stop_drains_under_serve(self) -> None:
        batcher = DynamicBatcher(Recorder(), max_batch_size=2)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                futures = await batcher.submit_batch(range(8))
                await batcher.stop()
                assert not batcher.is_running
        assert [f.result() for f in futures] == [("done", i) for i in range(8)]


class TestLogging:
    """Promise 3: failures are logged on the "batcher" logger with the batch size
    and the exception."""

    @pytest.fixture(autouse=True)
    def _capture(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.ERROR, logger="batcher")

    def _only_record(self, caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
        records = [r for r in caplog.records if r.name == "batcher"]
        assert len(records) == 1
        assert records[0].levelno == logging.ERROR
        return records[0]

    async def test_exception_is_logged_with_size_and_traceback(self, caplog: pytest.LogCaptureFixture) -> None:
        error = KeyError("model exploded")

        async def fn(batch: list[int]) -> list[int]:
            raise error

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                futures = await batcher.submit_batch(range(3))
        assert all(f.exception() is error for f in futures)
        record = self._only_record(caplog)
        assert record.getMessage() == "process_fn failed on a batch of 3 records: KeyError('model exploded')"
        assert record.exc_info is not None
        assert record.exc_info[1] is error

    async def test_timeout_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        async def fn(batch: list[int]) -> list[int]:
            await anyio.sleep_forever()
            raise AssertionError  # pragma: no cover

        with anyio.fail_after(5):
            async with DynamicBatcher(fn, process_timeout_s=0.05) as batcher:
                futures = await batcher.submit_batch(range(3))
        assert all(isinstance(f.exception(), TimeoutError) for f in futures)
        record = self._only_record(caplog)
        assert record.getMessage() == "process_fn failed on a batch of 3 records: TimeoutError()"
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], TimeoutError)

    async def test_wrong_length_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        async def fn(batch: list[int]) -> list[int]:
            return batch[:-1]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                futures = await batcher.submit_batch(range(3))
        assert all(isinstance(f.exception(), ValueError) for f in futures)
        assert self._only_record(caplog).getMessage() == (
            "process_fn failed on a batch of 3 records: "
            "ValueError('process_fn returned 2 results for a batch of 3 records')"
        )

    async def test_not_a_list_is_logged_with_the_batch_size(self, caplog: pytest.LogCaptureFixture) -> None:
        async def fn(batch: list[int]) -> int:
            return 42

        batcher: DynamicBatcher[int, int] = DynamicBatcher(fn)  # type: ignore[arg-type]
        with anyio.fail_after(5):
            async with batcher:
                futures = await batcher.submit_batch(range(3))
        assert all(isinstance(f.exception(), TypeError) for f in futures)
        assert self._only_record(caplog).getMessage() == (
            "process_fn failed on a batch of 3 records: TypeError('process_fn must return a list, got int')"
        )

    async def test_base_exception_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        fatal = Fatal("fatal")

        async def fn(batch: list[int]) -> list[int]:
            raise fatal

        with anyio.fail_after(5), pytest.raises(Fatal):
            async with DynamicBatcher(fn) as batcher:
                await batcher.submit_batch(range(3))
        message = self._only_record(caplog).getMessage()
        assert message == "process_fn raised Fatal('fatal') on a batch of 3 records; closing"


class TestResultIterables:
    """A process function may return any iterable; if reading it fails, the batch
    fails like any other process-function error and the batcher goes on."""

    async def test_iterable_that_raises_while_read_fails_only_its_batch(self) -> None:
        error = ValueError("broken result stream")

        def results(batch: list[int]) -> Iterator[int]:
            yield batch[0]
            raise error

        async def fn(batch: list[int]) -> Iterator[int]:
            if 0 in batch:
                return results(batch)
            return iter(batch)

        batcher: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch_size=2)
        with anyio.fail_after(5):
            async with batcher:
                futures = await batcher.submit_batch(range(4))
                with pytest.raises(ValueError, match="broken result stream"):
                    await futures[0]
                assert await futures[2] == 2
                assert await batcher.call(7) == 7
        assert futures[1].exception() is error
        assert [f.result() for f in futures[2:]] == [2, 3]
        assert_balanced(batcher)


async def read_into(got: list[Any], results: Any) -> None:
    """Append each of ``results`` (a map's, or a stream's) to ``got``, in its ``async with``."""
    async with results:
        async for result in results:
            got.append(result)


class TestStopIterationInASlot:
    """A record that fails with ``StopIteration`` or ``StopAsyncIteration`` cannot raise
    it as itself: Python turns the first into "coroutine raised StopIteration" in an
    await, and the second, out of a map's or a stream's ``__anext__``, ended the
    iteration as if it were done (the failure unraised, a map's later records dropped).
    Each raises a ``RuntimeError`` that names it, with it as the cause."""

    STOPS: ClassVar = [StopIteration("slot"), StopAsyncIteration("slot")]

    @pytest.mark.parametrize("stop", STOPS, ids=type)
    async def test_awaiting_the_future_or_calling(self, stop: Exception) -> None:
        async def model(batch: list[int]) -> list[Any]:
            return [stop if record == 1 else record for record in batch]

        with anyio.fail_after(5):
            async with DynamicBatcher(model) as batcher:
                failed, fine = await batcher.submit_batch([1, 2])
                for way in (lambda: failed, lambda: batcher.call(1)):
                    with pytest.raises(RuntimeError, match=r"^the record failed with Stop") as raised:
                        await way()
                    assert raised.value.__cause__ is stop
                assert await fine == 2
                assert failed.exception() is stop

    @pytest.mark.parametrize("stop", STOPS, ids=type)
    async def test_a_map_raises_it_and_withdraws_the_rest(self, stop: Exception) -> None:
        async def model(batch: list[int]) -> list[Any]:
            return [stop if record == 1 else record for record in batch]

        got: list[int] = []
        with anyio.fail_after(5):
            async with DynamicBatcher(model, max_batch_size=1) as batcher:
                with pytest.raises(RuntimeError, match=r"^the record failed with Stop") as raised:
                    await read_into(got, batcher.map([0, 1, 2, 3]))
        assert (got, raised.value.__cause__) == ([0], stop)

    async def test_a_stream_raises_it(self) -> None:
        stop = StopAsyncIteration("slot")

        async def generate(batch: list[str]) -> Any:
            yield [stop for _ in batch]

        items: list[str] = []
        with anyio.fail_after(5):
            async with DynamicBatcher(generate) as batcher:
                with pytest.raises(RuntimeError, match=r"^the record failed with Stop") as raised:
                    await read_into(items, batcher.stream("x"))
        assert (items, raised.value.__cause__, batcher.stats.total_failed) == ([], stop, 1)
