"""SyncBatcher at its edges: a ``BaseException`` from the caller's own code run on the
background loop, and results left open as Python exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest

from batcher import BatchEnded, BatcherClosedError, DynamicBatcher, RecordsDropped, SyncBatcher

from .test_sync import WAIT, Gate, _closing, double, held_batcher, in_thread, until


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Fatal(BaseException):
    """Neither an Exception nor a cancellation, as KeyboardInterrupt and SystemExit."""


def raise_fatal(*args: object) -> None:
    raise Fatal("from the caller's code")


def estimate(record: Any) -> int:
    if record == "bad":
        raise_fatal()
    return 1


def failing_input() -> Iterator[int]:
    yield 1
    raise_fatal()


#: Ways the caller's code runs on the loop: a map's input, its progress callback, and a
#: cost estimator called there (a map's, and a submit's with a time limit, which takes a task).
TRIGGERS: dict[str, Callable[[Any], object]] = {
    "map input": lambda batcher: list(batcher.map(failing_input())),
    "map progress": lambda batcher: list(batcher.map([1, 2], progress=raise_fatal)),
    "map estimator": lambda batcher: list(batcher.map(["bad"])),
    "submit estimator": lambda batcher: batcher.submit("bad", timeout=WAIT),
}


class TestTheCallersBaseException:
    @pytest.mark.parametrize("where", list(TRIGGERS))
    def test_it_reaches_the_caller_and_the_batcher_serves_on(self, backend: str, where: str) -> None:
        """Raised in a task on the portal, it cancelled every task there, the batcher's
        loops among them: the caller got AnyIO's "portal is not running", another
        thread's record failed, the exception was lost and stop() raised. As an async
        map's consumer gets its input's exception, the calling thread gets it now."""
        with held_batcher(backend, cost_estimator=estimate) as held:
            outcome = in_thread(partial(TRIGGERS[where], held.batcher))
            held.model.release()
            with pytest.raises(Fatal, match="from the caller's code"):
                outcome.result(WAIT)
            assert held.first.result(WAIT) == ("done", "first")
            assert held.batcher.call(2, timeout=WAIT) == ("done", 2)
        assert not held.batcher.is_running  # and its stop raised nothing


@pytest.mark.parametrize("method", ["call", "submit"])
def test_a_timeout_past_what_threads_can_wait_is_refused_naming_it(backend: str, method: str) -> None:
    """It was accepted, queued the record, then raised OverflowError from the wait."""
    with held_batcher(backend) as held:
        with pytest.raises(ValueError, match=r"^timeout must be at most threading.TIMEOUT_MAX \("):
            getattr(held.batcher, method)(1, timeout=1e10)
        assert held.batcher.stats.total_submitted == 1  # the held record alone


class Interrupted(BaseException):
    """What the test's SIGINT handler raises, as Python's raises KeyboardInterrupt."""


class TestAbort:
    """A Ctrl-C in a ``with SyncBatcher`` block stops it gracefully: every record queued
    is processed (a whole corpus, perhaps). A second Ctrl-C during that drain was taken,
    and the third left the loop's thread running with the batcher on it. Now an
    interrupted stop aborts."""

    def test_an_interrupted_stop_aborts(self, backend: str) -> None:
        model = Gate(hold_from=0)
        batcher = SyncBatcher(DynamicBatcher(model), backend=backend)
        futures = start_held(batcher, model)
        try:
            stop_interrupted(batcher)
            for future in futures:
                with pytest.raises(BatcherClosedError):
                    future.result(WAIT)
        finally:
            model.release()
        assert not batcher.is_running
        with batcher:
            assert batcher.call(1, timeout=WAIT) == ("done", 1)

    def test_it_ends_a_map_whose_reader_left_its_results_full(self, backend: str) -> None:
        """The abort cancelled the serving task but not the map, whose task waited to
        hand over its next results, and the loop waited for it: the stop hung."""
        model = Gate(hold_from=1)  # the map's records pass; the next batch is held
        batcher = SyncBatcher(DynamicBatcher(model, max_batch_size=1000), backend=backend)
        batcher.start()
        results = batcher.map(range(1000))
        try:
            assert next(results) == ("done", 0)  # then the reader stops reading, the map open
            until(lambda: batcher.stats.total_completed == 1000)  # a full hand-over buffer waits
            held = batcher.submit("held")
            assert model.entered.wait(WAIT)
            stop_interrupted(batcher)
            with pytest.raises(BatcherClosedError):
                held.result(WAIT)
        finally:
            model.release()
        assert not any("portal" in thread.name for thread in threading.enumerate())
        results.close()

    def test_an_observer_configuring_during_the_abort_is_refused(self, backend: str) -> None:
        """Records the abort fails reach observers on the loop's thread; one calling
        configure() there found the loop ending, and waited for the lock the stop holds."""
        refused: list[str] = []

        def tune(event: object) -> None:
            if isinstance(event, RecordsDropped):
                try:
                    batcher.configure(max_batch_size=2)
                except RuntimeError as exc:
                    refused.append(str(exc))

        model = Gate(hold_from=0)
        batcher = SyncBatcher(DynamicBatcher(model, max_batch_size=1), backend=backend)
        batcher.add_observer(tune)
        futures = start_held(batcher, model)
        try:
            stop_interrupted(batcher)
        finally:
            model.release()
        assert refused
        assert all(message.startswith("SyncBatcher was called from its own event loop's thread") for message in refused)
        assert {type(future.exception(WAIT)) for future in futures} == {BatcherClosedError}


def start_held(batcher: SyncBatcher[Any, Any], model: Gate) -> list[Future[Any]]:
    """Start ``batcher``; its model holds the record "first", and 3 more are queued
    behind it: their futures."""
    batcher.start()
    futures = [batcher.submit("first")]
    assert model.entered.wait(WAIT)
    return futures + [batcher.submit(n) for n in range(3)]


def stop_interrupted(batcher: SyncBatcher[Any, Any]) -> None:
    """``batcher.stop()``, interrupted (as by a Ctrl-C) once it waits for a held batch."""

    def interrupt(*args: object) -> None:
        raise Interrupted

    def interrupt_the_stop() -> None:
        until(lambda: _closing(batcher))  # the stop waits for the held batch
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        interrupter = in_thread(interrupt_the_stop)
        with pytest.raises(Interrupted):
            batcher.stop()
        interrupter.result(WAIT)
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def held_and_queued(backend: str) -> Iterator[tuple[SyncBatcher[str, Any], Gate, list[Future[Any]]]]:
    """A running SyncBatcher whose model holds the record "held" while "queued" waits;
    leaving the block releases the model and stops the batcher."""
    model = Gate(hold_from=0)
    batcher = SyncBatcher(DynamicBatcher(model, max_batch_size=1), backend=backend)
    batcher.start()
    try:
        futures = [batcher.submit("held"), batcher.submit("queued")]
        assert model.entered.wait(WAIT)
        yield batcher, model, futures
    finally:
        model.release()
        batcher.stop()


class TestBoundedStop:
    def test_past_the_limit_what_is_left_fails_and_stop_returns(self, backend: str) -> None:
        with held_and_queued(backend) as (batcher, model, futures):
            batcher.stop(abort_after_s=0.01)  # the held call is abandoned to its thread
            assert not batcher.is_running
            assert [type(future.exception(WAIT)) for future in futures] == [BatcherClosedError] * 2
        assert model.batches == [["held"]]

    def test_a_second_threads_limit_bounds_the_stop_under_way(self, backend: str) -> None:
        """It waited for the other thread's graceful stop, however long that took."""
        with held_and_queued(backend) as (batcher, _, futures):
            graceful = in_thread(batcher.stop)  # waits for the held call
            until(lambda: batcher._loop is not None and batcher._loop.closing)
            batcher.stop(abort_after_s=0.01)
            graceful.result(WAIT)
            assert [type(future.exception(WAIT)) for future in futures] == [BatcherClosedError] * 2

    def test_from_inside_the_process_function_the_limit_holds(self, backend: str) -> None:
        """SyncBatcher.stop(abort_after_s=0) there began a graceful stop: the limit was lost."""
        release = threading.Event()
        box: list[SyncBatcher[str, str]] = []

        def stopping(batch: list[str]) -> list[str]:
            if "stop" in batch:
                box[0].stop(abort_after_s=0)  # returns at once
                assert release.wait(WAIT)  # the abort leaves this call to its thread
            return batch

        batcher = SyncBatcher(DynamicBatcher(stopping, max_batch_size=1), backend=backend)
        box.append(batcher)
        batcher.start()
        try:
            futures = [batcher.submit("stop"), batcher.submit("queued")]
            assert [type(future.exception(WAIT)) for future in futures] == [BatcherClosedError] * 2
        finally:
            release.set()
            batcher.stop()

    @pytest.mark.parametrize(("value", "error"), [(-1, ValueError), ("5", TypeError)])
    def test_a_bad_limit_is_refused_and_changes_nothing(self, backend: str, value: Any, error: type[Exception]) -> None:
        with SyncBatcher(DynamicBatcher(double), backend=backend) as batcher:
            with pytest.raises(error, match="abort_after_s"):
                batcher.stop(abort_after_s=value)
            assert batcher.call(1) == 2


class TestObservers:
    """``SyncBatcher.add_observer``/``remove_observer``, from any thread (there were none:
    a thread had the wrapped batcher's, which refuses threads other than its loop's)."""

    def test_added_and_removed_from_threads_before_and_while_it_runs(self, backend: str) -> None:
        before: list[str] = []
        during: list[str] = []
        batcher = SyncBatcher(DynamicBatcher(echo), backend=backend)
        batcher.add_observer(lambda event: before.append(type(event).__name__))
        with batcher:
            assert in_thread(partial(batcher.call, 1, timeout=WAIT)).result(WAIT) == 1
            observer = partial(record_ended, during)
            in_thread(partial(batcher.add_observer, observer)).result(WAIT)
            assert batcher.call(2, timeout=WAIT) == 2
            batcher.remove_observer(observer)
            assert batcher.call(3, timeout=WAIT) == 3
        assert before == ["BatchDispatched", "BatchEnded"] * 3
        assert during == ["BatchEnded"]

    def test_an_observer_removes_itself_on_the_loop(self, backend: str) -> None:
        seen: list[int] = []

        def once(event: object) -> None:
            if isinstance(event, BatchEnded):
                seen.append(event.size)
                batcher.remove_observer(once)

        with SyncBatcher(DynamicBatcher(echo), backend=backend) as batcher:
            batcher.add_observer(once)
            assert [batcher.call(n, timeout=WAIT) for n in range(3)] == [0, 1, 2]
        assert seen == [1]

    def test_a_bad_observer_is_refused_and_changes_nothing(self, backend: str) -> None:
        with SyncBatcher(DynamicBatcher(echo), backend=backend) as batcher:
            with pytest.raises(TypeError, match="an observer must be callable, got int"):
                batcher.add_observer(5)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="remove_observer\\(\\) got an observer that was not added"):
                batcher.remove_observer(print)
            assert batcher.call(1, timeout=WAIT) == 1


def echo(batch: list[int]) -> list[int]:
    return batch


def record_ended(seen: list[str], event: object) -> None:
    if isinstance(event, BatchEnded):
        seen.append(type(event).__name__)


UNCLOSED_AT_EXIT = """
from batcher import DynamicBatcher, SyncBatcher

batcher = SyncBatcher(DynamicBatcher(lambda batch: batch), backend={backend!r})
batcher.start()
results = batcher.map(range(1000))  # never closed: collected as Python exits
print(next(results))
batcher.stop()
"""


def test_results_left_open_as_python_exits_are_collected_quietly(backend: str) -> None:
    """Their ``__del__`` ran as Python shut down and looked up an AnyIO name that AnyIO
    loads lazily (asyncio): "Exception ignored ... sys.meta_path is None"."""
    script = UNCLOSED_AT_EXIT.format(backend=backend)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0\n", "")


def test_its_type_hints_resolve() -> None:
    """Since its calls moved to a base class, they named a type imported for checkers only."""
    assert set(typing.get_type_hints(SyncBatcher)) >= {"_batcher", "_loop"}
