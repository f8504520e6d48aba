"""SyncBatcher: a batcher on a background event loop, called from plain threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import itertools
import random
import re
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import anyio
import pytest

from batcher import (
    END,
    BatchEnded,
    BatcherClosedError,
    BatcherOverloadedError,
    DynamicBatcher,
    Prompt,
    StreamLagError,
    SyncBatcher,
    TokenBatcher,
)
from batcher._loop import Loop

from .helpers import Seen

NOT_RUNNING_MESSAGE = "SyncBatcher is not running; use 'with SyncBatcher(batcher):' or start()"
NOT_RUNNING = re.escape(NOT_RUNNING_MESSAGE)
IN_LOOP_MESSAGE = (
    "SyncBatcher was called from its own event loop's thread, where it would wait for itself; "
    "in async code on that loop, await the batcher's own methods (a done-callback of a SyncBatcher "
    "future runs there too: hand the call to another thread)"
)
IN_LOOP = re.escape(IN_LOOP_MESSAGE)
WAIT = 10  # seconds: the bound on every wait that should end at once


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    """The event loop a SyncBatcher runs on: each test runs on both."""
    return str(request.param)


class Gate(Seen):
    """A plain process function (it runs in a worker thread) that records each batch
    and answers ``("done", record)``. From its batch number ``hold_from`` on (``0``:
    the first), it parks in each batch until :meth:`release`, so a test can keep the
    only worker busy; ``None`` never holds."""

    def __init__(self, *, hold_from: int | None = None) -> None:
        super().__init__()
        self.hold_from = hold_from
        self.entered = threading.Event()  # set when a batch parks
        self._released = threading.Event()

    def __call__(self, batch: list[Any]) -> list[Any]:
        self.batches.append(list(batch))
        if self.hold_from is not None and len(self.batches) > self.hold_from:
            self.entered.set()
            assert self._released.wait(WAIT)
        return [("done", record) for record in batch]

    def release(self) -> None:
        self._released.set()


class Held(NamedTuple):
    batcher: SyncBatcher[Any, Any]
    model: Gate
    first: Future[Any]  # the record "first", which the model holds


@contextmanager
def held_batcher(backend: str, **settings: Any) -> Iterator[Held]:
    """A running SyncBatcher whose model is parked in its first batch (the record
    ``"first"``); leaving the block releases the model and stops the batcher."""
    model = Gate(hold_from=0)
    with SyncBatcher(DynamicBatcher(model, **settings), backend=backend) as batcher:
        try:
            first = batcher.submit("first")
            assert model.entered.wait(WAIT)
            yield Held(batcher, model, first)
        finally:
            model.release()


async def double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


def until(condition: Any) -> None:
    """Wait (bounded by ``WAIT``) for a state another thread reaches without an event to wait on."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the other thread did not get there"
        time.sleep(0.001)


def _closing(batcher: SyncBatcher[Any, Any]) -> bool:
    loop = batcher._loop
    return loop is not None and loop.closing


def in_thread(func: Any) -> Future[Any]:
    """Run ``func()`` in a new thread; its outcome in a future."""
    outcome: Future[Any] = Future()

    def run() -> None:
        try:
            outcome.set_result(func())
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run).start()
    return outcome


class TestLifecycle:
    def test_with_starts_and_stops(self, backend: str) -> None:
        inner = DynamicBatcher(double)
        batcher = SyncBatcher(inner, backend=backend)
        assert not batcher.is_running
        with batcher as entered:
            assert entered is batcher
            assert batcher.is_running
            assert inner.is_running
            assert batcher.call(21) == 42
        assert not batcher.is_running
        assert not inner.is_running
        assert batcher.stats.total_completed == 1

    def test_start_stop_close_and_restart(self, backend: str) -> None:
        batcher = SyncBatcher(DynamicBatcher(double), backend=backend)
        for x in range(2):
            batcher.start()
            assert batcher.call(x) == 2 * x
            batcher.stop()
            batcher.close()  # idempotent
        assert batcher.stats.total_completed == 2

    def test_stop_processes_every_submitted_record(self, backend: str) -> None:
        async def slow(batch: list[int]) -> list[int]:
            await anyio.sleep(0.005)  # the model's work: records queue behind it
            return [x * 2 for x in batch]

        with SyncBatcher(DynamicBatcher(slow, max_batch_size=10), backend=backend) as batcher:
            futures = [batcher.submit(x) for x in range(200)]
        assert [future.result(0) for future in futures] == [x * 2 for x in range(200)]
        stats = batcher.stats
        assert (stats.total_completed, stats.total_cancelled) == (200, 0)

    def test_an_error_in_the_body_still_stops_gracefully(self, backend: str) -> None:
        batcher = SyncBatcher(DynamicBatcher(double), backend=backend)
        futures = []

        def body() -> None:
            with batcher:
                futures.append(batcher.submit(1))
                raise KeyError("body")

        with pytest.raises(KeyError):
            body()
        assert futures[0].result(0) == 2
        assert not batcher.is_running

    def test_stop_from_inside_the_process_function_begins_the_stop(self, backend: str) -> None:
        def stopping(batch: list[int]) -> list[int]:
            batcher.stop()  # returns at once; the with block ends the batcher
            return batch

        batcher: SyncBatcher[int, int] = SyncBatcher(DynamicBatcher(stopping), backend=backend)
        with batcher:
            assert batcher.call(7) == 7
            with pytest.raises(RuntimeError, match=NOT_RUNNING):
                batcher.call(8)
            with pytest.raises(RuntimeError, match=r"SyncBatcher is stopping; once stop\(\) has returned"):
                batcher.start()
        assert batcher.stats.total_completed == 1
        with batcher:  # stopped by the with block: it starts again
            assert batcher.call(9) == 9

    def test_a_process_function_stopping_while_another_thread_stops_returns_at_once(self, backend: str) -> None:
        # The stop under way waits for this very batch: a stop() that waited for it would hang both.
        go, returned = threading.Event(), threading.Event()

        def stopping(batch: list[int]) -> list[int]:
            assert go.wait(WAIT)
            batcher.stop()
            returned.set()
            return batch

        batcher: SyncBatcher[int, int] = SyncBatcher(DynamicBatcher(stopping), backend=backend)
        batcher.start()
        future = batcher.submit(5)
        stopper = threading.Thread(target=batcher.stop)
        stopper.start()
        until(lambda: _closing(batcher))  # the other thread's stop() waits for the batch
        go.set()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert returned.is_set()
        assert future.result(0) == 5
        assert not batcher.is_running

    def test_configure_while_another_thread_starts_or_stops_waits_and_applies(self, backend: str) -> None:
        model = Gate(hold_from=0)
        batcher = SyncBatcher(DynamicBatcher(model), backend=backend)
        batcher.start()
        batcher.submit("first")
        assert model.entered.wait(WAIT)
        stopper = threading.Thread(target=batcher.stop)
        stopper.start()
        until(lambda: _closing(batcher))
        configured = in_thread(partial(batcher.configure, max_batch_size=8))
        model.release()
        stopper.join(WAIT)
        assert configured.result(WAIT) is None  # for the run to come
        assert batcher._batcher._settings.max_batch_size == 8

        entering, enter = threading.Event(), threading.Event()

        class SlowToEnter:
            async def __aenter__(self) -> None:
                entering.set()
                await anyio.to_thread.run_sync(enter.wait, WAIT)

            async def __aexit__(self, *exc_info: object) -> None:
                pass

            async def __call__(self, batch: list[int]) -> list[int]:
                return batch

        batcher = SyncBatcher(DynamicBatcher(SlowToEnter()), backend=backend)
        starting = in_thread(batcher.start)
        assert entering.wait(WAIT)
        configured = in_thread(partial(batcher.configure, max_batch_size=4))
        enter.set()
        assert starting.result(WAIT) is None
        assert configured.result(WAIT) is None
        assert batcher._batcher._settings.max_batch_size == 4
        batcher.stop()

    def test_the_loop_thread_is_refused_not_blocked_during_another_threads_stop(self, backend: str) -> None:
        # An observer (or a done-callback) runs on the loop, which the stop under way waits for.
        outcomes: list[str] = []

        def observe(event: object) -> None:
            if isinstance(event, BatchEnded):
                for attempt in (batcher.stop, batcher.start, partial(batcher.configure, max_batch_size=2)):
                    try:
                        attempt()
                        outcomes.append("returned")
                    except RuntimeError as exc:
                        outcomes.append(str(exc))

        model = Gate(hold_from=0)
        batcher = SyncBatcher(DynamicBatcher(model, observers=[observe]), backend=backend)
        batcher.start()
        batcher.submit("x")
        assert model.entered.wait(WAIT)
        stopper = in_thread(batcher.stop)
        until(lambda: _closing(batcher))
        model.release()
        assert stopper.result(WAIT) is None
        stopping = "SyncBatcher is stopping; once stop() has returned, start() starts it again"
        assert [outcome[: len(stopping)] for outcome in outcomes] == [
            IN_LOOP_MESSAGE[: len(stopping)],
            stopping,
            IN_LOOP_MESSAGE[: len(stopping)],
        ]

    @pytest.mark.parametrize("attempt", ["start", "stop", "configure"])
    def test_the_loop_thread_is_refused_not_blocked_as_the_batcher_starts(self, backend: str, attempt: str) -> None:
        # A model entered as the batcher starts runs on the loop, which start() waits for.
        outcome: list[str] = []

        class Entering:
            async def __aenter__(self) -> None:
                try:
                    getattr(sync, attempt)(**({"max_batch_size": 3} if attempt == "configure" else {}))
                    outcome.append("returned")
                except RuntimeError as exc:
                    outcome.append(str(exc))

            async def __aexit__(self, *exc_info: object) -> None:
                pass

            async def __call__(self, batch: list[int]) -> list[int]:
                return batch

        sync = SyncBatcher(DynamicBatcher(Entering()), backend=backend)
        starting = in_thread(sync.start)
        assert starting.result(WAIT) is None
        assert sync.call(1, timeout=WAIT) == 1
        sync.stop()
        expected = {
            "start": "SyncBatcher is already running; stop() it before starting it again",
            "stop": IN_LOOP_MESSAGE,
            "configure": "returned",
        }
        assert outcome == [expected[attempt]]
        assert attempt != "configure" or sync._batcher._settings.max_batch_size == 3

    def test_configure_racing_a_stop_applies_to_the_stopped_batcher(
        self, backend: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # It found the loop running, then the stop ended it before the call got there.
        batcher = SyncBatcher(DynamicBatcher(double), backend=backend)
        batcher.start()
        configuring, stopped = threading.local(), threading.Event()
        reached = threading.Event()
        entry = Loop.entry

        def late_entry(loop: Loop) -> Any:
            if getattr(configuring, "now", False):
                reached.set()
                assert stopped.wait(WAIT)
            return entry(loop)

        def configure() -> None:
            configuring.now = True
            batcher.configure(max_batch_size=7)

        monkeypatch.setattr(Loop, "entry", late_entry)
        configured = in_thread(configure)
        assert reached.wait(WAIT)
        batcher.stop()
        stopped.set()
        assert configured.result(WAIT) is None
        assert batcher._batcher._settings.max_batch_size == 7

    @pytest.mark.parametrize("limit", [None, WAIT])
    def test_a_future_callback_raising_past_exception_is_raised_by_stop(self, backend: str, limit: Any) -> None:
        # With a time limit, a task on the loop keeps it and hands the outcome over.
        class Fatal(BaseException):
            pass

        def callback(future: Future[int]) -> None:
            raise Fatal

        model = Gate(hold_from=0)
        batcher = SyncBatcher(DynamicBatcher(model), backend=backend)
        batcher.start()
        future = batcher.submit(1, timeout=limit)
        assert model.entered.wait(WAIT)
        future.add_done_callback(callback)  # before it ends: it runs where the future ends
        model.release()
        assert future.result(WAIT) == ("done", 1)
        until(lambda: "ended by Fatal" in repr(batcher))
        with pytest.raises(Fatal):
            batcher.stop()
        assert not batcher.is_running
        with batcher:  # and it starts again
            assert batcher.call(3) == ("done", 3)

    def test_a_fatal_process_function_exception_is_raised_by_stop(self, backend: str) -> None:
        class Fatal(BaseException):
            pass

        async def fatal(batch: list[int]) -> list[int]:
            raise Fatal

        batcher = SyncBatcher(DynamicBatcher(fatal), backend=backend)
        batcher.start()
        with pytest.raises(BatcherClosedError) as closed:
            batcher.call(1)
        assert isinstance(closed.value.__cause__, Fatal)
        # Until stop(), it says what ended it, and refuses records and start() naming it.
        assert repr(batcher) == f"<SyncBatcher ended by Fatal() backend={backend} submitted=1 completed=1>"
        for attempt in (partial(batcher.call, 2), batcher.start):
            with pytest.raises(RuntimeError, match=r"^the batcher was ended by Fatal\(\) from its process function"):
                attempt()
        with pytest.raises(Fatal):
            batcher.stop()
        assert not batcher.is_running
        assert batcher._batcher._run.fatal is None  # stop() raised it: let go
        with pytest.raises(RuntimeError, match="SyncBatcher is not running") as refused:
            batcher.call(3)
        assert refused.value.__cause__ is None

    def test_a_sync_batcher_collected_while_running_warns(self, backend: str) -> None:
        inner = DynamicBatcher(double)
        batcher = SyncBatcher(inner, backend=backend)
        batcher.start()
        loop = batcher._loop
        assert loop is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del batcher
            gc.collect()
        loop.close(inner)  # the loop outlived it: stop it here
        assert not inner.is_running
        assert [(w.category, str(w.message)) for w in caught] == [
            (
                ResourceWarning,
                f"<SyncBatcher running backend={backend} queued=0 in_flight=0> was garbage-collected without "
                "being stopped; use 'with SyncBatcher(batcher):' or stop()",
            )
        ]

    def test_backend_options_reach_the_loop(self) -> None:
        async def debug_flags(batch: list[int]) -> list[bool]:
            return [asyncio.get_running_loop().get_debug() for _ in batch]

        with SyncBatcher(DynamicBatcher(debug_flags), backend_options={"debug": True}) as batcher:
            assert batcher.call(1) is True

    def test_repr(self, backend: str) -> None:
        with held_batcher(backend) as (batcher, _, _):
            batcher.submit("queued")
            assert repr(batcher) == f"<SyncBatcher running backend={backend} queued=1 in_flight=1>"
        assert repr(batcher) == f"<SyncBatcher stopped backend={backend} submitted=2 completed=2>"


class TestCalls:
    def test_call_raises_the_models_own_exception(self, backend: str) -> None:
        def picky(batch: list[int]) -> list[Any]:
            return [KeyError(x) if x % 2 else x for x in batch]

        with SyncBatcher(DynamicBatcher(picky), backend=backend) as batcher:
            assert batcher.call(2) == 2
            with pytest.raises(KeyError, match="3"):
                batcher.call(3)
            assert isinstance(batcher.submit(5).exception(WAIT), KeyError)

    def test_token_batcher_takes_estimated_tokens(self, backend: str) -> None:
        def lengths(batch: list[Prompt]) -> list[int]:
            return [len(prompt.text) for prompt in batch]

        with SyncBatcher(TokenBatcher(lengths), backend=backend) as batcher:
            assert batcher.call(Prompt("abc"), estimated_tokens=40) == 3
            assert batcher.submit(Prompt("hello"), estimated_tokens=2).result(WAIT) == 5
            assert batcher.call(Prompt("x"), estimated_cost=7) == 1
        assert batcher.stats.total_batch_cost == 49

    def test_many_threads_are_batched_together(self, backend: str) -> None:
        model = Gate()
        with SyncBatcher(DynamicBatcher(model), backend=backend) as batcher:
            threads = [threading.Thread(target=lambda n=n: [batcher.call((n, i)) for i in range(50)]) for n in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
        assert sorted(model.records) == sorted((n, i) for n in range(8) for i in range(50))
        assert batcher.stats.total_batches < 400


class TestCallWithoutATask:
    """``call()`` and ``submit()`` queue their record from a callback on the loop and
    are handed its end back (``_from_thread.py``); a task waits for room only when the
    queue is full."""

    @pytest.mark.parametrize("door", ["call", "submit"])
    def test_a_call_behind_a_full_queue_waits_for_room(self, backend: str, door: str) -> None:
        with held_batcher(backend, max_queue_size=1, max_batch_size=1) as (batcher, model, _):
            queued = batcher.submit("queued")  # fills the queue while the model holds "first"
            called: Future[Any] = Future()

            def behind() -> None:
                called.set_result(batcher.call("behind") if door == "call" else batcher.submit("behind").result())

            thread = threading.Thread(target=behind)
            thread.start()
            with pytest.raises(TimeoutError):
                called.result(0.1)  # no room: it waits
            model.release()
            assert called.result(WAIT) == ("done", "behind")
            assert queued.result(WAIT) == ("done", "queued")
            thread.join(WAIT)
        assert model.records == ["first", "queued", "behind"]

    def test_its_timeout_counts_the_wait_for_room(self, backend: str) -> None:
        with held_batcher(backend, max_queue_size=1, max_batch_size=1) as (batcher, model, _):
            batcher.submit("queued")
            with pytest.raises(TimeoutError):
                batcher.call("behind", timeout=0.1)
            assert batcher.stats.total_cancelled == 1  # withdrawn as it waited for room
        assert model.records == ["first", "queued"]

    def test_before_anyio_4_16_each_call_takes_a_task(self, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
        # There a call from a thread waits for the loop, and would wait forever for a
        # loop that ended first: the portal's task, which the loop's end does answer.
        def refuse(token: object, func: object) -> None:
            raise AssertionError("a call from a thread that waits")

        monkeypatch.setattr("batcher._loop.call_soon", refuse)
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            loop = batcher._loop
            assert loop is not None
            loop.calls_soon = False
            assert batcher.call(4) == 8
            assert batcher.submit(6).result(WAIT) == 12
            with pytest.raises(TimeoutError):
                batcher.call(5, timeout=0)

    @pytest.mark.parametrize("door", ["call", "submit"])
    def test_a_call_the_loop_never_took_up_is_refused_when_it_stops(
        self, backend: str, door: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # As if the loop ended between the hand-over and its callback: stop() answers
        # the waiting call instead of leaving it to wait forever.
        lost: list[Any] = []
        monkeypatch.setattr("batcher._loop.call_soon", lambda token, func: lost.append(func))
        batcher = SyncBatcher(DynamicBatcher(double), backend=backend)
        batcher.start()
        refused: Future[Any] = Future()

        def call() -> None:
            try:
                batcher.call(1) if door == "call" else batcher.submit(1)
            except RuntimeError as exc:
                refused.set_result(str(exc))

        thread = threading.Thread(target=call)
        thread.start()
        while not lost:
            assert thread.is_alive()
            time.sleep(0.001)
        batcher.stop()
        assert refused.result(WAIT) == NOT_RUNNING_MESSAGE
        thread.join(WAIT)
        assert batcher.stats.total_submitted == 0


class TestWithdrawal:
    def test_a_timed_out_call_withdraws_its_record(self, backend: str) -> None:
        with held_batcher(backend) as (batcher, model, first):
            with pytest.raises(TimeoutError):
                batcher.call("late", timeout=0.05)
            assert batcher.stats.total_cancelled == 1
            model.release()
            assert first.result(WAIT) == ("done", "first")
            assert batcher.call("after") == ("done", "after")
        assert model.records == ["first", "after"]

    def test_cancelling_a_submitted_future_withdraws_its_record(self, backend: str) -> None:
        with held_batcher(backend) as (batcher, model, _):
            future = batcher.submit("cancelled")
            assert future.cancel()
            assert batcher.stats.total_cancelled == 1  # withdrawn before cancel() returned
            with pytest.raises(CancelledError):
                future.result(0)
            timed = batcher.submit("cancelled too", timeout=WAIT)  # a task on the loop keeps its deadline
            assert timed.cancel()
            # As an executor's: concurrent.futures.wait() and as_completed() learn of the cancellation.
            assert concurrent.futures.wait([future, timed], timeout=WAIT).not_done == set()
            assert set(concurrent.futures.as_completed([future, timed], timeout=WAIT)) == {future, timed}
        assert model.records == ["first"]
        assert batcher.stats.total_cancelled == 2

    def test_cancelling_a_future_again_is_quiet_as_an_executors_is(
        self, backend: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        with held_batcher(backend) as (batcher, _, _):
            twice = batcher.submit("twice")
            assert twice.cancel()
            assert twice.cancel()
            again = batcher.submit("in its own callback")
            again.add_done_callback(lambda future: future.cancel())
            assert again.cancel()
            shared = [batcher.submit(n) for n in range(20)]
            cancellers = [in_thread(lambda: [future.cancel() for future in shared]) for _ in range(4)]
            for canceller in cancellers:
                canceller.result(WAIT)
            assert concurrent.futures.wait([twice, again, *shared], timeout=WAIT).not_done == set()
        assert [record for record in caplog.records if record.name == "concurrent.futures"] == []
        assert batcher.stats.total_cancelled == 22

    def test_a_future_cancelled_in_another_futures_callback_withdraws_its_record(self, backend: str) -> None:
        """Such a callback runs on the loop's thread ("when one fails, cancel the rest")."""
        with held_batcher(backend) as (batcher, model, first):
            sibling = batcher.submit("sibling")
            cancelled: list[bool] = []
            first.add_done_callback(lambda _: cancelled.append(sibling.cancel()))
            model.release()
            with pytest.raises(CancelledError):
                sibling.result(WAIT)
        assert cancelled == [True]
        assert model.records == ["first"]
        assert batcher.stats.total_cancelled == 1

    def test_a_submitted_future_times_out_and_withdraws_its_record(self, backend: str) -> None:
        with held_batcher(backend) as (batcher, model, _):
            future = batcher.submit("late", timeout=0.05)
            with pytest.raises(TimeoutError):
                future.result(WAIT)
        assert model.records == ["first"]
        assert batcher.stats.total_cancelled == 1

    def test_a_dispatched_record_is_processed_after_its_future_is_cancelled(self, backend: str) -> None:
        with held_batcher(backend) as (batcher, model, first):
            assert first.cancel()  # it is in the model: cancel() ends only the waiting
        assert model.records == ["first"]
        stats = batcher.stats
        assert (stats.total_completed, stats.total_cancelled) == (1, 0)


class TestHammer:
    def test_threads_lose_no_future(self, backend: str) -> None:
        """16 threads x 200 records: calls, calls with short random timeouts,
        submits, cancelled submits. Each ends once, as its own record's result or
        as TimeoutError/CancelledError."""

        async def model(batch: list[tuple[int, int]]) -> list[tuple[str, tuple[int, int]]]:
            await anyio.sleep(random.random() / 1000)
            seen.extend(batch)
            return [("done", record) for record in batch]

        seen: list[tuple[int, int]] = []
        outcomes: dict[str, int] = {"result": 0, "timeout": 0, "cancelled": 0}
        lock = threading.Lock()

        def one(batcher: SyncBatcher[tuple[int, int], Any], rng: random.Random, record: tuple[int, int]) -> str:
            kind = rng.random()
            try:
                if kind < 0.25:
                    result = batcher.call(record, timeout=rng.random() / 500)
                elif kind < 0.5:
                    future = batcher.submit(record)
                    if rng.random() < 0.5:
                        future.cancel()
                    result = future.result(WAIT)
                else:
                    result = batcher.call(record)
            except TimeoutError:
                return "timeout"
            except CancelledError:
                return "cancelled"
            assert result == ("done", record)
            return "result"

        def client(batcher: SyncBatcher[tuple[int, int], Any], n: int) -> None:
            rng = random.Random(n)
            for i in range(200):
                outcome = one(batcher, rng, (n, i))
                with lock:
                    outcomes[outcome] += 1

        with SyncBatcher(DynamicBatcher(model, max_batch_size=32), backend=backend) as batcher:
            threads = [threading.Thread(target=client, args=(batcher, n)) for n in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
                assert not thread.is_alive()
        stats = batcher.stats
        assert sum(outcomes.values()) == stats.total_submitted == 3200
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled
        assert len(seen) == len(set(seen)) == stats.total_completed  # nothing processed twice
        assert outcomes["result"] <= stats.total_completed
        assert min(outcomes.values()) > 0

    def test_calls_racing_stop_are_processed_or_refused(self, backend: str) -> None:
        refusals: list[str] = []
        ready = threading.Barrier(9, timeout=WAIT)

        def client(batcher: SyncBatcher[int, int], n: int) -> None:
            assert batcher.call(n) == 2 * n
            ready.wait()
            while True:
                try:
                    result = batcher.call(n)
                except RuntimeError as exc:
                    refusals.append(str(exc))
                    return
                assert result == 2 * n

        batcher = SyncBatcher(DynamicBatcher(double), backend=backend)
        with batcher:
            threads = [threading.Thread(target=client, args=(batcher, n)) for n in range(8)]
            for thread in threads:
                thread.start()
            ready.wait()
        for thread in threads:
            thread.join(WAIT)
        assert refusals == [NOT_RUNNING_MESSAGE] * 8
        stats = batcher.stats
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled


class TestMap:
    def test_ordered_results_for_10_000_records(self, backend: str) -> None:
        model = Gate()
        with SyncBatcher(DynamicBatcher(model, max_queue_size=500), backend=backend) as batcher:
            with batcher.map(range(10_000)) as results:
                assert list(results) == [("done", x) for x in range(10_000)]
            assert sorted(batcher.map(range(100), ordered=False)) == [("done", x) for x in range(100)]
        assert model.records[:10_000] == list(range(10_000))
        assert batcher.stats.total_completed == 10_100

    def test_the_maps_records_form_full_batches(self, backend: str) -> None:
        # Handing results over must not give the workers the map's records one or two at a time.
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            assert sum(1 for _ in batcher.map(range(10_240))) == 10_240
        assert batcher.stats.avg_batch_size > 128

    def test_an_early_break_withdraws_the_rest(self, backend: str) -> None:
        model = Gate(hold_from=2)  # two batches of 8 come back, the third parks in the model
        inner = DynamicBatcher(model, max_batch_size=8, max_queue_size=100)
        with SyncBatcher(inner, backend=backend) as batcher:
            taken = []
            with batcher.map(itertools.count()) as results:
                for result in results:
                    taken.append(result)
                    if len(taken) == 10:
                        assert model.entered.wait(WAIT)  # the third batch is in the model
                        break
            withdrawn = batcher.stats.total_cancelled
            model.release()
        assert taken == [("done", x) for x in range(10)]
        assert withdrawn > 0
        stats = batcher.stats
        assert stats.total_cancelled == withdrawn
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled
        assert model.records == list(range(24))  # the withdrawn records never reached the model

    def test_a_for_loop_left_early_without_with_withdraws_the_rest(self, backend: str) -> None:
        model = Gate(hold_from=2)
        with SyncBatcher(DynamicBatcher(model, max_batch_size=8), backend=backend) as batcher:
            for result in batcher.map(range(1_000)):
                if result == ("done", 3):
                    assert model.entered.wait(WAIT)  # the third batch is in the model
                    break
            # The results object was dropped with the loop: closed as a generator is.
            withdrawn = batcher.stats.total_cancelled
            model.release()
        assert withdrawn > 0
        assert model.records == list(range(24))

    def test_a_failure_ends_the_map_after_the_results_before_it(self, backend: str) -> None:
        def picky(batch: list[int]) -> list[Any]:
            return [KeyError(x) if x == 5 else x for x in batch]

        with SyncBatcher(DynamicBatcher(picky, max_batch_size=4), backend=backend) as batcher:
            taken: list[int] = []
            with pytest.raises(KeyError, match="5"), batcher.map(range(1_000)) as results:
                taken.extend(results)
            assert taken == [0, 1, 2, 3, 4]
            mixed = list(batcher.map(range(8), return_exceptions=True))
        assert [type(x) for x in mixed] == [int] * 5 + [KeyError] + [int] * 2
        stats = batcher.stats
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled

    def test_an_input_that_raises_does_so_after_the_results_read_before_it(self, backend: str) -> None:
        def records() -> Iterator[int]:
            yield from range(300)
            raise KeyError("the input broke")

        got: list[int] = []
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            with pytest.raises(KeyError, match="the input broke"), batcher.map(records()) as results:
                got.extend(results)
            assert batcher.call(1, timeout=WAIT) == 2
        assert got == [2 * n for n in range(300)]

    def test_progress_is_reported(self, backend: str) -> None:
        reports: list[tuple[int, int | None]] = []
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            assert list(batcher.map(range(20), progress=lambda done, total: reports.append((done, total)))) == [
                x * 2 for x in range(20)
            ]
        assert reports == [(done, 20) for done in range(1, 21)]

    def test_threads_may_share_the_results_and_close_them_from_another_thread(self, backend: str) -> None:
        with SyncBatcher(DynamicBatcher(double, max_batch_size=8), backend=backend) as batcher:
            got: list[int] = []
            with batcher.map(range(5_000)) as results:
                sharing = [threading.Thread(target=lambda: got.extend(results)) for _ in range(3)]
                for thread in sharing:
                    thread.start()
                for thread in sharing:
                    thread.join(WAIT)
            assert sorted(got) == [2 * n for n in range(5_000)]

            endless = batcher.map(itertools.count())
            ended: list[str] = []

            def consume() -> None:
                for _ in endless:
                    pass
                ended.append("ended")

            consumer = threading.Thread(target=consume)
            assert next(endless) == 0
            consumer.start()
            endless.close()  # from this thread, while the consumer waits for more or reads
            consumer.join(WAIT)
            assert ended == ["ended"]

    def test_a_stop_during_the_map_ends_it_with_not_running(self, backend: str) -> None:
        model = Gate(hold_from=2)
        batcher = SyncBatcher(DynamicBatcher(model, max_batch_size=8), backend=backend)
        batcher.start()
        results = batcher.map(itertools.count())
        assert next(results) == ("done", 0)
        model.release()
        batcher.stop()
        with pytest.raises(RuntimeError, match=NOT_RUNNING):
            for _ in results:
                pass
        stats = batcher.stats
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled

    def test_map_when_not_running_and_from_the_loops_own_thread(self, backend: str) -> None:
        async def reentrant(batch: list[int]) -> list[str]:
            with pytest.raises(RuntimeError, match=IN_LOOP) as info:
                batcher.map([1])
            return [str(info.value)]

        batcher: SyncBatcher[int, str] = SyncBatcher(DynamicBatcher(reentrant), backend=backend)
        with pytest.raises(RuntimeError, match=NOT_RUNNING):
            batcher.map([1])
        with batcher:
            assert batcher.call(0) == IN_LOOP_MESSAGE


async def words(texts: list[str]) -> Any:
    """A streaming process function: each text's words, one a step, then END."""
    split = [text.split() for text in texts]
    for step in range(max(map(len, split)) + 1):
        await anyio.lowlevel.checkpoint()
        items: list[Any] = []
        for parts in split:
            if step < len(parts) and parts[step] == "fail":
                items.append(ValueError(f"no word at step {step}"))
            else:
                items.append(parts[step] if step < len(parts) else END)
        yield items


class TestStream:
    def test_items_come_in_order_to_each_threads_own_stream(self, backend: str) -> None:
        texts = [" ".join(f"w{n}.{i}" for i in range(n % 7 + 1)) for n in range(24)]
        got: dict[int, list[str]] = {}

        def consume(batcher: SyncBatcher[str, list[str]], n: int) -> None:
            with batcher.stream(texts[n]) as items:
                got[n] = list(items)

        with SyncBatcher(TokenBatcher(words, max_batch_size=8), backend=backend) as batcher:
            threads = [threading.Thread(target=consume, args=(batcher, n)) for n in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
            assert batcher.call("the same through call") == ["the", "same", "through", "call"]
        assert got == {n: texts[n].split() for n in range(24)}

    def test_a_failed_record_raises_after_its_items_and_leaving_early_drops_the_rest(self, backend: str) -> None:
        with SyncBatcher(DynamicBatcher(words), backend=backend) as batcher:
            seen: list[str] = []
            with pytest.raises(ValueError, match="no word at step 2"), batcher.stream("one two fail four") as items:
                seen.extend(items)
            assert seen == ["one", "two"]
            with batcher.stream("a b c d e f") as items:
                assert next(items) == "a"  # then leaves: the rest is dropped
            assert list(batcher.stream("still works")) == ["still", "works"]
            stats = batcher.stats
        assert (stats.total_submitted, stats.total_failed) == (3, 1)
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled

    def test_a_graceful_stop_leaves_a_finished_stream_or_map_to_its_thread(self, backend: str) -> None:
        # The stop ends the loop; what was handed over before is still read, then the end.
        sync: SyncBatcher[str, list[str]] = SyncBatcher(DynamicBatcher(words), backend=backend)
        sync.start()
        stream = sync.stream("one two three four")
        results = sync.map(["a b", "c"])
        assert next(stream) == "one"
        until(lambda: sync.stats.total_completed == 3)  # every item and result is made
        sync.stop()
        assert list(stream) == ["two", "three", "four"]
        assert list(results) == [["a", "b"], ["c"]]

    def test_a_thread_that_stops_reading_lags_as_a_task_would(self, backend: str) -> None:
        # Its items wait in the record's buffer and a hand-over buffer of the same size, no more.
        async def counting(records: list[str]) -> Any:
            for step in range(200):
                await anyio.lowlevel.checkpoint()
                yield [step] * len(records)

        settings: dict[str, Any] = {"max_batch_size": 1, "stream_buffer": 2, "stream_stall_s": 0.05}
        with SyncBatcher(DynamicBatcher(counting, **settings), backend=backend) as sync:
            slow = sync.stream("slow")
            assert next(slow) == 0
            until(lambda: sync.stats.total_failed == 1)  # it lagged; the model went on without it
            read: list[int] = []
            with pytest.raises(StreamLagError):
                read.extend(slow)
            assert len(read) < 20  # a few buffers' worth, not the 199 the model made
            assert list(sync.stream("next")) == list(range(200))

    def test_close_from_another_thread_drops_what_was_not_read(self, backend: str) -> None:
        with SyncBatcher(DynamicBatcher(words), backend=backend) as sync:
            stream = sync.stream("a b c d e f")
            until(lambda: sync.stats.total_completed == 1)  # every item is ready
            assert next(stream) == "a"  # the others came with it
            in_thread(stream.close).result(WAIT)
            assert list(stream) == []

    def test_misuse_is_refused_clearly(self, backend: str) -> None:
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            with pytest.raises(TypeError, match="stream\\(\\) needs a streaming process_fn"):
                batcher.stream(1)
            with pytest.raises(TypeError, match="estimated_tokens needs a TokenBatcher"):
                batcher.stream(1, estimated_tokens=3)
        with pytest.raises(RuntimeError, match=NOT_RUNNING):
            batcher.stream(1)
        with SyncBatcher(DynamicBatcher(words, max_queued_cost=2), backend=backend) as streaming:
            with pytest.raises(BatcherOverloadedError, match="can never be queued"):
                streaming.stream("too dear", estimated_cost=3)
            assert streaming.stats.total_submitted == 0


class TestWaitingForItself:
    """A plain process function that waits for a result of its own SyncBatcher, whose
    only worker runs that very function, is refused as the async way in is."""

    SELF_WAIT = "process_fn awaited a result of its own batcher, which would wait for itself"

    @pytest.mark.parametrize("door", ["call", "submit", "map"])
    def test_it_is_refused_not_left_waiting(self, backend: str, door: str) -> None:
        errors: list[BaseException] = []

        def process(batch: list[str]) -> list[str]:
            if "outer" in batch:
                try:
                    if door == "call":
                        sync.call("inner")
                    elif door == "submit":
                        sync.submit("inner").result()
                    else:
                        list(sync.map(["inner"]))
                except RuntimeError as exc:
                    errors.append(exc)
            return batch

        with SyncBatcher(DynamicBatcher(process), backend=backend) as sync:
            assert sync.call("outer", timeout=WAIT) == "outer"
            assert sync.call("after", timeout=WAIT) == "after"
        assert len(errors) == 1
        assert self.SELF_WAIT in str(errors[0])

    @pytest.mark.parametrize("way", ["behind a full queue", "with a time limit"])
    def test_a_future_it_submitted_by_a_task_refuses_to_wait_too(self, backend: str, way: str) -> None:
        # Those futures come from a task on the loop (the queue was full, or it keeps a deadline).
        errors: list[str] = []

        def process(batch: list[str]) -> list[str]:
            if batch == ["parent"]:
                futures = [
                    sync.submit(f"child {n}", timeout=WAIT if way == "with a time limit" else None) for n in range(4)
                ]
                try:
                    futures[-1].result(WAIT)
                except RuntimeError as exc:
                    errors.append(str(exc))
            return batch

        settings: dict[str, Any] = {"max_queue_size": 1, "max_batch_size": 1, "prefetch_batches": 0}
        with SyncBatcher(DynamicBatcher(process, **settings), backend=backend) as sync:
            started = time.monotonic()
            assert sync.call("parent", timeout=WAIT) == "parent"
            assert time.monotonic() - started < WAIT / 2  # refused at once, not after waiting
        assert len(errors) == 1
        assert self.SELF_WAIT in errors[0]

    def test_its_submit_behind_a_full_queue_does_not_wait_for_room(self, backend: str) -> None:
        # Room comes only as batches go, and none goes before the only worker returns.
        followed: list[Future[str]] = []

        def process(batch: list[str]) -> list[str]:
            if batch == ["parent"]:
                followed.extend(sync.submit(f"child {n}") for n in range(6))
            return [record.upper() for record in batch]

        settings: dict[str, Any] = {"max_queue_size": 2, "max_batch_size": 1, "prefetch_batches": 1}
        with SyncBatcher(DynamicBatcher(process, **settings), backend=backend) as sync:
            assert sync.call("parent", timeout=WAIT) == "PARENT"
            assert [future.result(WAIT) for future in followed] == [f"CHILD {n}" for n in range(6)]

    def test_with_two_workers_it_may_wait(self, backend: str) -> None:
        def process(batch: list[str]) -> list[str]:
            return [sync.call("inner", timeout=WAIT) + "+outer" if record == "outer" else record for record in batch]

        with SyncBatcher(DynamicBatcher(process, max_concurrent_batches=2), backend=backend) as sync:
            assert sync.call("outer", timeout=WAIT) == "inner+outer"


class TestInsideTrio:
    """trio refuses, in a thread that runs trio, to wait for another trio run."""

    def test_a_trio_sync_batcher_is_refused_there_and_changes_nothing(self) -> None:
        import trio

        from batcher._loop import IN_TRIO

        batcher = SyncBatcher(DynamicBatcher(double), backend="trio")

        async def inside() -> None:
            with pytest.raises(RuntimeError, match=re.escape(IN_TRIO)):
                batcher.start()
            assert not batcher.is_running

        trio.run(inside)
        with batcher:  # from a plain thread: fine
            results = batcher.map([1, 2, 3])

            async def inside_running() -> None:
                refusing: list[Any] = [
                    partial(list, results),
                    batcher.stop,
                    partial(batcher.configure, max_batch_size=2),
                ]
                for refused in refusing:
                    with pytest.raises(RuntimeError, match=re.escape(IN_TRIO)):
                        refused()
                assert batcher.is_running

            trio.run(inside_running)
            assert list(results) == [2, 4, 6]

    def test_an_asyncio_sync_batcher_works_there(self) -> None:
        import trio

        async def inside() -> None:
            with SyncBatcher(DynamicBatcher(double), backend="asyncio") as batcher:
                assert batcher.call(2, timeout=WAIT) == 4

        trio.run(inside)


class TestErrors:
    def test_a_backend_other_than_asyncio_or_trio(self) -> None:
        with pytest.raises(ValueError, match="backend must be 'asyncio' or 'trio', got 'curio'"):
            SyncBatcher(DynamicBatcher(double), backend="curio")

    def test_backend_options_that_are_not_a_mapping_of_names(self) -> None:
        for options in (5, ["debug"], "debug", {1: True}):
            with pytest.raises(TypeError, match="backend_options must be a mapping of option names"):
                SyncBatcher(DynamicBatcher(double), backend_options=options)  # type: ignore[arg-type]

    def test_something_other_than_a_batcher(self) -> None:
        with pytest.raises(TypeError, match="batcher must be a DynamicBatcher or TokenBatcher, got function"):
            SyncBatcher(double)  # type: ignore[arg-type]

    def test_use_before_start_and_after_stop(self, backend: str) -> None:
        batcher = SyncBatcher(DynamicBatcher(double), backend=backend)
        for _ in range(2):
            with pytest.raises(RuntimeError, match=NOT_RUNNING):
                batcher.call(1)
            with pytest.raises(RuntimeError, match=NOT_RUNNING):
                batcher.submit(1)
            batcher.start()
            batcher.stop()
        assert batcher.stats.total_submitted == 0

    def test_start_while_running(self, backend: str) -> None:
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            with pytest.raises(RuntimeError, match=re.escape("SyncBatcher is already running; stop() it before")):
                batcher.start()
            assert batcher.call(1) == 2

    def test_a_batcher_running_elsewhere(self, backend: str) -> None:
        inner = DynamicBatcher(double)
        idle = SyncBatcher(inner, backend=backend)
        running_elsewhere = (
            re.escape("batcher is already running (or was left started")
            + ".*"
            + re.escape("give SyncBatcher a stopped batcher")
        )
        with SyncBatcher(inner, backend=backend) as batcher:
            with pytest.raises(RuntimeError, match=running_elsewhere):
                SyncBatcher(inner, backend=backend)
            with pytest.raises(RuntimeError, match=running_elsewhere):
                idle.start()
            assert not idle.is_running
            assert batcher.call(1) == 2

    def test_calls_from_the_loops_own_thread(self, backend: str) -> None:
        async def reentrant(batch: list[int]) -> list[list[str]]:
            errors = []
            for attempt in (lambda: batcher.call(1), lambda: batcher.submit(1), batcher.stop):
                with pytest.raises(RuntimeError, match=IN_LOOP) as info:
                    attempt()
                errors.append(str(info.value))
            return [errors]

        batcher: SyncBatcher[int, list[str]] = SyncBatcher(DynamicBatcher(reentrant), backend=backend)
        with batcher:
            assert len(batcher.call(0)) == 3
            assert batcher.is_running
        assert batcher.stats.total_submitted == 1

    def test_bad_costs_and_timeouts_change_nothing(self, backend: str) -> None:
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            with pytest.raises(TypeError, match="estimated_cost must be an int, got str"):
                batcher.call(1, estimated_cost="3")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="estimated_cost must be >= 0, got -1"):
                batcher.submit(1, estimated_cost=-1)
            with pytest.raises(TypeError, match="estimated_tokens needs a TokenBatcher; use estimated_cost"):
                batcher.call(1, estimated_tokens=3)
            with pytest.raises(ValueError, match="timeout must be finite and >= 0, got -1"):
                batcher.call(1, timeout=-1)
            with pytest.raises(TypeError, match="timeout must be a number, got str"):
                batcher.submit(1, timeout="1")  # type: ignore[arg-type]
            assert batcher.stats.total_submitted == 0
            assert batcher.call(1) == 2
