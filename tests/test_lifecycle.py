"""Starting, draining and stopping; plain asyncio.run and trio.run."""

from __future__ import annotations

import ast
import asyncio
import gc
import itertools
import math
import subprocess
import sys
import time
import warnings
from functools import partial
from typing import Any, cast

import anyio
import pytest
import trio

from batcher import BatcherClosedError, BatchStats, CostModel, DynamicBatcher, TokenBatcher, _worker

from .helpers import Recorder, blocked_batcher


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

    async def test_a_start_cancelled_while_the_model_is_entered_leaves_it_stopped(self) -> None:
        """A process function that is an async context manager may take long to enter
        (RayReplicas builds its replicas there); a caller's time limit cancels start()."""
        entering, enter = anyio.Event(), [anyio.Event()]

        class Session:
            async def __aenter__(self) -> Session:
                entering.set()
                await enter[0].wait()
                return self

            async def __aexit__(self, *exc: object) -> None:
                pass

            async def __call__(self, batch: list[int]) -> list[int]:
                return [x * 2 for x in batch]

        batcher = DynamicBatcher(Session())
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as limit:
                    tg.start_soon(lambda: _cancel_when(entering, limit))
                    async with batcher:
                        pytest.fail("the batcher started")
        assert not scope.cancelled_caught
        assert not batcher.is_running
        enter[0].set()
        with anyio.fail_after(5):
            async with batcher:  # it starts again
                assert await batcher.call(21) == 42

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


class TestBoundedStop:
    """stop(abort_after_s=...) drains for at most that long, then aborts; a timeout
    scope around stop() would enclose the task group start() entered."""

    async def test_past_the_limit_what_is_left_fails_and_stop_returns(self) -> None:
        model = Recorder(hold=True)  # never released while the batcher runs
        batcher = DynamicBatcher(model, max_batch_size=1)
        with anyio.fail_after(5):
            await batcher.start()
            futures = await batcher.submit_batch(["held", "queued"])
            await model.entered.wait()
            await batcher.stop(abort_after_s=0.01)
        assert not batcher.is_running
        assert [type(future.exception()) for future in futures] == [BatcherClosedError] * 2
        assert model.batches == [["held"]]

    async def test_within_the_limit_it_is_a_graceful_stop(self) -> None:
        batcher = DynamicBatcher(double, max_batch_size=1)
        with anyio.fail_after(5):
            await batcher.start()
            futures = await batcher.submit_batch(range(5))
            await batcher.stop(abort_after_s=60)  # returns as soon as they are done
        assert [future.result() for future in futures] == [0, 2, 4, 6, 8]

    async def test_under_serve_from_another_task(self) -> None:
        model = Recorder(hold=True)
        batcher = DynamicBatcher(model)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                future = await batcher.submit("held")
                await model.entered.wait()
                tg.start_soon(partial(batcher.stop, abort_after_s=0))
        assert isinstance(future.exception(), BatcherClosedError)

    async def test_from_inside_the_process_function_it_returns_and_the_abort_comes_later(self) -> None:
        release = anyio.Event()
        returned: list[bool] = []

        async def stopping(batch: list[str]) -> list[str]:
            if "stop" in batch:
                await batcher.stop(abort_after_s=0.01)  # begins the stop, returns at once
                returned.append(True)
                await release.wait()  # never set: the abort ends this call
            return batch

        batcher = DynamicBatcher(stopping, max_batch_size=1)
        with anyio.fail_after(5):
            await batcher.start()
            futures = await batcher.submit_batch(["stop", "queued"])
            await batcher.stop()  # waits for the abort the process function asked for
        assert returned == [True]
        assert [type(future.exception()) for future in futures] == [BatcherClosedError] * 2

    async def test_an_abort_before_serve_has_started_is_named(self) -> None:
        """tg.start(batcher.serve) raised AnyIO's "child exited without calling
        task_status.started()" when a stop aborted it while the model was entered."""

        class Entering:
            def __init__(self) -> None:
                self.entering = anyio.Event()

            async def __aenter__(self) -> Entering:
                self.entering.set()
                await anyio.sleep_forever()
                return self

            async def __aexit__(self, *exc_info: object) -> None:
                pass

            async def __call__(self, batch: list[int]) -> list[int]:
                return batch

        model = Entering()
        batcher = DynamicBatcher(model)

        async def abort_it() -> None:
            await model.entering.wait()
            await batcher.stop(abort_after_s=0)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(abort_it)
                with pytest.raises(BatcherClosedError, match="before serve"):
                    await tg.start(batcher.serve)
        assert not batcher.is_running

    @pytest.mark.parametrize(
        ("value", "error"), [(-1, ValueError), (math.inf, ValueError), ("5", TypeError), (True, TypeError)]
    )
    async def test_a_bad_limit_is_refused_and_changes_nothing(self, value: Any, error: type[Exception]) -> None:
        with anyio.fail_after(5):
            async with DynamicBatcher(double) as batcher:
                future = await batcher.submit(1)
                with pytest.raises(error, match="abort_after_s"):
                    await batcher.stop(abort_after_s=value)
                assert batcher.is_running
            assert future.result() == 2


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

    async def test_the_wait_before_the_stop_is_idle_time(self) -> None:
        """The wait for a batch that never came (the batcher stopped) was not counted."""
        with anyio.fail_after(5):
            async with DynamicBatcher(double) as batcher:
                await batcher.call(1)
                await anyio.wait_all_tasks_blocked()  # the worker waits for its next batch from here
                before, idle_from = batcher.stats, time.perf_counter()
                await anyio.wait_all_tasks_blocked()
                idle_for = time.perf_counter() - idle_from
        assert batcher.stats.idle_time_s - before.idle_time_s >= idle_for > 0

    def test_utilization(self) -> None:
        assert BatchStats().utilization == 0.0
        assert BatchStats(busy_time_s=3.0, idle_time_s=1.0).utilization == 0.75


class FakeClock:
    """The workers' clock, moved on only by the model: a batch's time is what the
    model says it costs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestFittedCost:
    FIXED, PER_RECORD, PER_TOKEN = 3e-3, 2e-4, 1e-6

    def batcher(self, monkeypatch: pytest.MonkeyPatch, cost_model: CostModel = "measured") -> DynamicBatcher[int, int]:
        clock = FakeClock()
        monkeypatch.setattr(_worker, "perf_counter", clock)

        async def model(batch: list[int]) -> list[int]:
            clock.now += self.FIXED + self.PER_RECORD * len(batch) + self.PER_TOKEN * len(batch) * max(batch)
            return batch

        return DynamicBatcher(model, target_batch_cost=1_000, cost_model=cost_model)

    @staticmethod
    async def run_batches(batcher: DynamicBatcher[int, int], rounds: int) -> None:
        # Batches of 1 to 6 records of costs 10, 50 and 90: times that tell the terms apart.
        for size, cost in list(itertools.product(range(1, 7), (10, 50, 90)))[:rounds]:
            futures = await batcher.submit_batch([cost] * size, estimated_cost=[cost] * size)
            for future in futures:
                await future

    async def test_the_fit_finds_the_models_terms(self, monkeypatch: pytest.MonkeyPatch) -> None:
        batcher = self.batcher(monkeypatch)
        with anyio.fail_after(10):
            async with batcher:
                assert batcher.stats.fitted_cost is None
                await self.run_batches(batcher, 18)
                fitted = batcher.stats.fitted_cost
        assert fitted is not None
        assert fitted.batches == batcher.stats.total_batches >= 18
        assert fitted.fixed_s == pytest.approx(self.FIXED)
        assert fitted.per_record_s == pytest.approx(self.PER_RECORD)
        assert fitted.per_padded_token_s == pytest.approx(self.PER_TOKEN)
        assert fitted.new_shape_s == pytest.approx(0.0, abs=1e-9)  # no shape ran slower the first time
        assert fitted.predict(4, 400) == pytest.approx(self.FIXED + 4 * self.PER_RECORD + 400 * self.PER_TOKEN)
        assert fitted.predict(4, 400, new_shape=True) == pytest.approx(fitted.predict(4, 400) + fitted.new_shape_s)
        # A stopped batcher keeps its last run's fit; a restart fits anew.
        assert batcher.stats.fitted_cost == fitted
        before = batcher.stats.total_batches
        with anyio.fail_after(10):
            async with batcher:
                for rounds in range(1, 10):
                    ran = batcher.stats.total_batches - before
                    assert (batcher.stats.fitted_cost is None) == (ran < 8), ran  # none before 8 batches
                    await self.run_batches(batcher, rounds)

    async def test_no_fit_with_the_other_cost_models(self, monkeypatch: pytest.MonkeyPatch) -> None:
        cost_models: tuple[CostModel, ...] = ("sum", "padded")
        for cost_model in cost_models:
            batcher = self.batcher(monkeypatch, cost_model)
            with anyio.fail_after(10):
                async with batcher:
                    await self.run_batches(batcher, 18)
            assert batcher.stats.total_batches >= 18
            assert batcher.stats.fitted_cost is None


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


def test_asyncio_wait_on_futures() -> None:
    # asyncio.wait() adds a done-callback to each future and removes it as it returns.
    async def main() -> tuple[int, int, int, list[int]]:
        release = asyncio.Event()

        async def held(batch: list[int]) -> list[int]:
            if 9 in batch:
                await release.wait()
            return batch

        with anyio.fail_after(5):
            async with DynamicBatcher(held, max_batch_size=1) as batcher:
                # (typeshed wants asyncio's own futures: a BatchFuture is not one, but duck-types it)
                futures = cast("list[asyncio.Future[int]]", await batcher.submit_batch([1, 9]))
                done, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
                waited_out = await asyncio.wait(pending, timeout=0.01)
                release.set()
                everything, _ = await asyncio.wait(futures)
                arrived = [await future for future in asyncio.as_completed(futures)]
        return len(done), len(waited_out[1]), len(everything), sorted(arrived)

    assert asyncio.run(main()) == (1, 1, 2, [1, 9])


def test_a_batcher_whose_starting_task_ended_is_stopped_from_another() -> None:
    """asyncio lets a task end inside the task group start() entered (asyncio.wait_for()
    on Python 3.11 runs its argument in a task of its own; so does a test fixture's
    setup, at times): every stop() was refused, "must be called by the task that
    called start()", and the batcher could never be stopped."""

    async def main() -> tuple[int, bool, list[int]]:
        release = asyncio.Event()

        async def held(batch: list[int]) -> list[int]:
            await release.wait()
            return [x * 2 for x in batch]

        batcher = DynamicBatcher(held)
        with anyio.fail_after(5):
            await asyncio.create_task(batcher.start())  # that task has ended
            futures = await batcher.submit_batch([1, 2, 3])
            release.set()
            await batcher.stop()  # drains
            running = batcher.is_running
            async with batcher:  # and it starts again, here
                again = await batcher.call(5)
        return again, running, [future.result() for future in futures]

    assert asyncio.run(main()) == (10, False, [2, 4, 6])


class TestStopFromInsideTheModel:
    """stop() called by the process function begins the graceful stop and returns."""

    @staticmethod
    def stopping_model(batcher_of: list[DynamicBatcher[int, int]], returned: list[bool]) -> Any:
        async def fn(batch: list[int]) -> list[int]:
            if 0 in batch:
                await batcher_of[0].stop()
                returned.append(True)
            return [x * 2 for x in batch]

        return fn

    async def test_under_async_with(self) -> None:
        box: list[DynamicBatcher[int, int]] = []
        returned: list[bool] = []
        batcher = DynamicBatcher(self.stopping_model(box, returned), max_batch_size=1)
        box.append(batcher)
        with anyio.fail_after(5):
            async with batcher:
                futures = await batcher.submit_batch([0, 1, 2])
                assert [await f for f in futures] == [0, 2, 4]  # what was submitted is processed
                with pytest.raises(RuntimeError, match="not running"):
                    await batcher.submit(3)  # input has ended
        assert returned == [True]
        assert not batcher.is_running

    async def test_under_serve(self) -> None:
        box: list[DynamicBatcher[int, int]] = []
        returned: list[bool] = []
        batcher = DynamicBatcher(self.stopping_model(box, returned), max_batch_size=1)
        box.append(batcher)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(batcher.serve)
                futures = await batcher.submit_batch([0, 1])
            # serve() returned by itself: the model's stop() ended the input
        assert [f.result() for f in futures] == [0, 2]
        assert returned == [True]
        assert not batcher.is_running

    async def test_a_task_the_model_left_running_stops_it_like_any_task(self) -> None:
        # Once the call that started it has returned, its stop() is a whole graceful stop.
        batcher: DynamicBatcher[int, int]
        first_done, stopped = anyio.Event(), []

        async def stopper() -> None:
            await first_done.wait()
            future = await batcher.submit(1)
            await batcher.stop()
            stopped.append(future.done())

        async def fn(batch: list[int]) -> list[int]:
            if 0 in batch:
                background.start_soon(stopper)
            return [x * 2 for x in batch]

        batcher = DynamicBatcher(fn)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as background:
                await background.start(batcher.serve)
                assert await batcher.call(0) == 0
                first_done.set()
        assert stopped == [True]  # stop() returned once the queued record was processed
        assert not batcher.is_running


class TestWhoMayStartAndStop:
    async def test_two_tasks_starting_at_once_one_wins_one_is_refused(self) -> None:
        batcher = DynamicBatcher(double)
        outcomes: list[str] = []
        checked: list[bool] = []
        both_checked, both_tried, finish = anyio.Event(), anyio.Event(), anyio.Event()

        async def lazy_start() -> None:
            # The lazy-start pattern, with both tasks past the check before either starts.
            checked.append(not batcher.is_running)
            if len(checked) == 2:
                both_checked.set()
            await both_checked.wait()
            try:
                await batcher.start()
            except RuntimeError as exc:
                outcomes.append(str(exc))
            else:
                outcomes.append("started")
            if len(outcomes) == 2:
                both_tried.set()
            if outcomes[-1] == "started":
                await finish.wait()
                assert await batcher.call(2) == 4
                await batcher.stop()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lazy_start)
                tg.start_soon(lazy_start)
                await both_tried.wait()
                finish.set()
        assert checked == [True, True]
        assert sorted(outcomes) == [
            "batcher is already running; stop() it before starting it again",
            "started",
        ]
        assert not batcher.is_running

    async def test_stop_from_another_task_names_the_rule(self) -> None:
        batcher = DynamicBatcher(double)
        errors: list[str] = []

        async def stop_it() -> None:
            try:
                await batcher.stop()
            except RuntimeError as exc:
                errors.append(str(exc))

        with anyio.fail_after(5):
            async with batcher:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_it)
                assert batcher.is_running  # nothing changed
                assert await batcher.call(1) == 2
        assert errors == [
            "stop() must be called by the task that called start() (as 'async with batcher:' does); "
            "to stop a batcher from any task, run it with serve() in a task group"
        ]
        assert not batcher.is_running


LEFT_STARTED = """
import gc, warnings, anyio
from batcher import DynamicBatcher

async def echo(batch):
    return batch

batcher = DynamicBatcher(echo)

async def first():
    await batcher.start()  # and never stopped
    assert await batcher.call(1) == 1

first_run = "returned"
try:
    anyio.run(first, backend={backend!r})
except BaseException as exc:
    first_run = type(exc).__name__  # trio refuses a task group left open; the batcher still runs
"""

NEVER_STOPPED = (
    LEFT_STARTED
    + """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    del batcher
    gc.collect()
print([(w.category.__name__, str(w.message)) for w in caught])
"""
)


def test_a_batcher_collected_while_running_warns(anyio_backend: str) -> None:
    script = NEVER_STOPPED.format(backend=anyio_backend)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    caught = ast.literal_eval(done.stdout)
    assert caught[0] == (
        "ResourceWarning",
        "<DynamicBatcher running queued=0 in_flight=0> was garbage-collected "
        "without being stopped; use 'async with batcher:' or stop()",
    )
    # The abandoned loops' streams may be collected before the loops, now and then
    # under trio, and anyio warns of those too.
    assert all(message.startswith("Unclosed <MemoryObject") for _, message in caught[1:]), caught


LEFT_BY_ITS_LOOP = (
    LEFT_STARTED
    + """
async def again():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            await batcher.__aenter__()  # as 'async with' enters: the deepest way in
        except RuntimeError as exc:
            print("refused:", exc)
            return
    print("warned:", [(w.category.__name__, str(w.message), w.filename) for w in caught])
    assert await batcher.call(2) == 2
    await batcher.stop()
    print("restarted:", batcher)

print("first run:", first_run)
anyio.run(again, backend={backend!r})
"""
)


def test_a_batcher_whose_loop_ended_without_stopping_it_restarts_or_says_why(anyio_backend: str) -> None:
    # asyncio cancels the loops as its run ends: the run is over, and a start in
    # the next loop forgets it with a warning. trio ends its run with an internal
    # error, at times before the loops have finished: then the next start says so.
    script = LEFT_BY_ITS_LOOP.format(backend=anyio_backend)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    restarted = [
        # the warning points at the caller's start() (a script run with -c is "<string>")
        "warned: [('ResourceWarning', \"a DynamicBatcher was left started (no stop()) when its event loop ended; "
        "use 'async with'\", '<string>')]",
        "restarted: <DynamicBatcher stopped submitted=2 completed=2>",
    ]
    refused = [
        "refused: batcher was started (start()) under an event loop that ended without stop(), and its loops "
        "did not finish; make a new batcher, and stop() what you start() (or use 'async with batcher:')"
    ]
    first, *rest = done.stdout.splitlines()
    if anyio_backend == "asyncio":
        assert (first, rest) == ("first run: returned", restarted)
    else:
        assert first == "first run: TrioInternalError"
        assert rest in (restarted, refused)


async def test_a_stopped_batcher_does_not_warn() -> None:
    batcher = DynamicBatcher(double)
    with anyio.fail_after(5):
        async with batcher:
            assert await batcher.call(1) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del batcher
        gc.collect()
    assert caught == []


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
