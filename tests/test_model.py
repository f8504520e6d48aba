"""Calling the process function (``_model.py``) and reading what it returns:
stray cancellation, lazy results, awaitables from plain functions, unordered
results, results that fail while read, a plain function's thread (``StopIteration``,
an event loop of its own), and exiting after a stuck sync call."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from batcher import DynamicBatcher
from batcher._model import call_soon

from .helpers import Recorder


async def double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


async def stray_cancellation() -> BaseException:
    """A cancellation exception caught inside a cancelled scope, to be raised
    again outside it: what a model gets from awaiting a task someone else
    cancelled."""
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        except anyio.get_cancelled_exc_class() as exc:
            caught.append(exc)
    return caught[0]


class TestStrayCancellation:
    async def test_fails_only_its_batch_logged_and_the_batcher_goes_on(self, caplog: pytest.LogCaptureFixture) -> None:
        async def fn(batch: list[int]) -> list[int]:
            if 0 in batch:
                raise await stray_cancellation()
            return [x * 2 for x in batch]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                with pytest.raises(RuntimeError, match="although the batcher was not cancelled") as info:
                    await batcher.call(0)
                assert isinstance(info.value.__cause__, anyio.get_cancelled_exc_class())
                assert await batcher.call(21) == 42  # still running
                assert batcher.is_running
        stats = batcher.stats
        assert (stats.total_completed, stats.total_failed) == (2, 1)
        messages = [r.getMessage() for r in caplog.records if r.name == "batcher"]
        assert len(messages) == 1
        assert messages[0].startswith("process_fn failed on a batch of 1 records: RuntimeError('process_fn raised")

    async def test_cancelling_the_batcher_is_still_cancellation(self) -> None:
        model = Recorder(hold=True)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                batcher = DynamicBatcher(model)
                await tg.start(batcher.serve)
                future = await batcher.submit(1)
                await model.entered.wait()
                tg.cancel_scope.cancel()
        assert not batcher.is_running
        assert type(future.exception()).__name__ == "BatcherClosedError"


class TestLazyResults:
    async def test_sync_generator_is_read_in_the_worker_thread(self) -> None:
        read_in: list[int] = []

        def fn(batch: list[int]) -> Iterator[int]:
            for x in batch:
                read_in.append(threading.get_ident())
                yield x * 2

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                assert await batcher.call(4) == 8
                assert await batcher.call(5) == 10
        assert read_in
        assert threading.get_ident() not in read_in

    async def test_sync_map_result_is_read_within_the_time_limit(self) -> None:
        release = threading.Event()

        def slow(x: int) -> int:
            release.wait(5)  # a model that computes lazily, as results are read
            return x

        def fn(batch: list[int]) -> Any:
            return map(slow, batch)

        try:
            with anyio.fail_after(5):
                async with DynamicBatcher(fn, process_timeout_s=0.2) as batcher:
                    with pytest.raises(TimeoutError):
                        await batcher.call(1)
        finally:
            release.set()


class TestAwaitableFromPlainFunction:
    @pytest.mark.parametrize(
        "make",
        [
            pytest.param(lambda: lambda batch: double(batch), id="lambda"),
            pytest.param(lambda: _hides_async(double), id="decorator"),
        ],
    )
    async def test_awaited_on_the_loop_under_both_backends(self, make: Any) -> None:
        with anyio.fail_after(5):
            async with DynamicBatcher(make()) as batcher:
                futures = await batcher.submit_batch([1, 2, 3])
                assert [await f for f in futures] == [2, 4, 6]
        assert batcher.stats.total_failed == 0


def _hides_async(fn: Any) -> Any:
    def wrapper(batch: list[int]) -> Any:  # a plain function that returns a coroutine
        return fn(batch)

    return wrapper


class TestResultShapes:
    @pytest.mark.parametrize(
        ("result", "kind"),
        [
            pytest.param(lambda batch: {x: x for x in batch}, "dict (a mapping", id="dict"),
            pytest.param(lambda batch: set(batch), "set (a set", id="set"),
            pytest.param(lambda batch: frozenset(batch), "frozenset (a set", id="frozenset"),
        ],
    )
    async def test_unordered_result_fails_the_batch_naming_the_type(self, result: Any, kind: str) -> None:
        async def fn(batch: list[int]) -> Any:
            return result(batch)

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                futures = await batcher.submit_batch([1, 2, 3])
                for future in futures:
                    with pytest.raises(TypeError) as info:
                        await future
                    assert (
                        str(info.value) == f"process_fn must return a list, got {kind} has no order to match records)"
                    )
        assert batcher.stats.total_failed == 3

    async def test_ordered_shapes_stay_accepted(self) -> None:
        numpy = pytest.importorskip("numpy")
        shapes = [tuple, iter, lambda xs: (x for x in xs), numpy.array]
        for shape in shapes:

            async def fn(batch: list[int], shape: Any = shape) -> Any:
                return shape([x * 2 for x in batch])

            with anyio.fail_after(5):
                async with DynamicBatcher(fn) as batcher:
                    futures = await batcher.submit_batch([1, 2, 3])
                    assert [int(await f) for f in futures] == [2, 4, 6]

    async def test_list_subclass_that_fails_while_read_fails_its_batch(self) -> None:
        error = OSError("the results could not be read")

        class Broken(list[int]):
            def __iter__(self) -> Iterator[int]:
                raise error

        async def fn(batch: list[int]) -> list[int]:
            return Broken(x * 2 for x in batch) if 0 in batch else [x * 2 for x in batch]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn, max_batch_size=3) as batcher:
                futures = await batcher.submit_batch([0, 1, 2])
                for future in futures:
                    with pytest.raises(OSError, match="could not be read") as info:
                        await future
                    assert info.value is error
                assert await batcher.call(4) == 8  # the worker lives on
        stats = batcher.stats
        assert stats.total_submitted == stats.total_completed == 4


class TestPlainFunctionThread:
    async def test_a_plain_function_raising_stop_iteration_fails_its_batch_naming_it(self) -> None:
        def fn(batch: list[int]) -> list[int]:
            if 0 in batch:
                raise StopIteration("out of items")
            return [x * 2 for x in batch]

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                with pytest.raises(RuntimeError, match=r"^the process function raised StopIteration$") as info:
                    await batcher.call(0)
                assert repr(info.value.__cause__) == "StopIteration('out of items')"
                assert await batcher.call(4) == 8  # the worker lives on

    async def test_a_plain_function_can_run_an_event_loop_of_its_own(self, anyio_backend: str) -> None:
        # As in AnyIO's worker threads: no event loop runs in the thread, whichever
        # backend the batcher's loop runs.
        async def double_all(batch: list[int]) -> list[int]:
            await anyio.lowlevel.checkpoint()
            return [x * 2 for x in batch]

        def fn(batch: list[int]) -> list[int]:
            return anyio.run(double_all, batch, backend=anyio_backend)

        with anyio.fail_after(5):
            async with DynamicBatcher(fn) as batcher:
                assert await batcher.call(4) == 8


EXIT_AFTER_STUCK_CALL = """
import threading, anyio
from batcher import DynamicBatcher
from batcher._model import call_soon

stuck = threading.Event()  # never set: a model stuck in a C call

def model(batch):
    stuck.wait()
    return batch

async def main():
    async with DynamicBatcher(model, process_timeout_s=0.2) as batcher:
        try:
            await batcher.call(1)
        except TimeoutError:
            print("timed out")

anyio.run(main, backend={backend!r})
print("stopped")
"""


def test_program_exits_after_a_timed_out_stuck_sync_call(anyio_backend: str) -> None:
    script = textwrap.dedent(EXIT_AFTER_STUCK_CALL.format(backend=anyio_backend))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "timed out\nstopped\n", "")


class _BackendBefore416:
    """An AnyIO backend as before 4.16: a blocking call from a thread, no ``run_sync_soon``."""

    def __init__(self, backend: Any) -> None:
        self.run_sync_from_thread = backend.run_sync_from_thread


class TestCallSoon:
    """How the model's thread hands its outcome to the event loop (``call_soon``)."""

    async def test_the_thread_goes_on_before_the_loop_runs_the_call(self) -> None:
        # The loop's thread is held while the model's thread hands over: a hand-over
        # that waited for the loop would not return until the hold times out.
        token = anyio.lowlevel.current_token()
        if not hasattr(token.backend_class, "run_sync_soon"):
            pytest.skip("AnyIO before 4.16 has no call from a thread that does not wait")
        called, returned = anyio.Event(), threading.Event()

        def hand_over() -> None:
            call_soon(token, called.set)
            returned.set()

        thread = threading.Thread(target=hand_over)
        thread.start()
        assert returned.wait(timeout=5)  # blocks the loop's thread: nothing runs on it meanwhile
        assert not called.is_set()
        with anyio.fail_after(5):
            await called.wait()
        thread.join(5)

    async def test_before_anyio_4_16_it_waits_for_the_loop_and_still_delivers(self) -> None:
        real = anyio.lowlevel.current_token()
        token = anyio.lowlevel.EventLoopToken(_BackendBefore416(real.backend_class), real.native_token)  # type: ignore[arg-type]
        called = anyio.Event()
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(call_soon, token, called.set)
            assert called.is_set()  # it returned once the loop had run the call

    @pytest.mark.parametrize("before_416", [False, True])
    def test_once_the_loop_has_ended_it_raises_run_finished(self, anyio_backend: str, before_416: bool) -> None:
        async def token_of_a_run() -> anyio.lowlevel.EventLoopToken:
            token = anyio.lowlevel.current_token()
            if before_416:
                return anyio.lowlevel.EventLoopToken(_BackendBefore416(token.backend_class), token.native_token)  # type: ignore[arg-type]
            return token

        token = anyio.run(token_of_a_run, backend=anyio_backend)
        with pytest.raises(anyio.RunFinishedError):
            call_soon(token, lambda: None)
