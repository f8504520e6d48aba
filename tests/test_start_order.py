"""Batchers one task started with ``start()`` stop in any order (``_host.py``): the
shape of a web framework's startup and shutdown hooks, which start two batchers and
stop them in the same order."""

from __future__ import annotations

import contextlib
import itertools

import anyio
import pytest

from batcher import BatcherClosedError, DynamicBatcher

from .helpers import EntryHeld, Recorder


async def double(batch: list[int]) -> list[int]:
    return [x * 2 for x in batch]


def echo(batch: list[int]) -> list[int]:  # a plain function: its worker ends its thread as it leaves
    return batch


class Fatal(BaseException):
    """Neither an Exception nor a cancellation, as KeyboardInterrupt and SystemExit."""


class Session:
    """A model that is an async context manager; ``fail_on`` says which step raises,
    ``exit_error`` what its exit raises; ``slow``: its entry takes a checkpoint."""

    def __init__(self, fail_on: str = "", exit_error: BaseException | None = None, slow: bool = False) -> None:
        self.fail_on = fail_on
        self.exit_error = exit_error or OSError("cannot exit")
        self.slow = slow

    async def __aenter__(self) -> Session:
        if self.slow:
            await anyio.lowlevel.checkpoint()
        if self.fail_on == "enter":
            raise OSError("cannot enter")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.fail_on == "exit":
            raise self.exit_error

    async def __call__(self, batch: list[int]) -> list[int]:
        return [x + 1 for x in batch]


async def start_cancelled_after(batcher: DynamicBatcher[int, int], checkpoints: int) -> str:
    """Start ``batcher`` with its caller cancelled after ``checkpoints`` checkpoints:
    ``"returned"``, ``"exit error"`` (start() raised the model's exit error) or
    ``"cancelled"``."""
    outcome = "returned"
    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as scope:

            async def cancel() -> None:
                for _ in range(checkpoints):
                    await anyio.lowlevel.checkpoint()
                scope.cancel()

            tg.start_soon(cancel)
            try:
                await batcher.start()
            except OSError:
                outcome = "exit error"
            except anyio.get_cancelled_exc_class():
                outcome = "cancelled"
                raise
    return outcome


class TestStopOrder:
    @pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
    async def test_three_batchers_stop_in_any_order_and_the_others_keep_serving(self, order: tuple[int, ...]) -> None:
        batchers = [DynamicBatcher(double) for _ in range(3)]
        with anyio.fail_after(5):
            for batcher in batchers:
                await batcher.start()
            for stopped, index in enumerate(order):
                futures = [await batcher.submit(index) for batcher in batchers if batcher.is_running]
                await batchers[index].stop()
                assert [await future for future in futures] == [index * 2] * (3 - stopped)
                assert not batchers[index].is_running
                running = [batcher for batcher in batchers if batcher.is_running]
                assert [await batcher.call(5) for batcher in running] == [10] * len(running)
            await batchers[order[0]].start()  # the task starts anew once all have stopped
            assert await batchers[order[0]].call(1) == 2
            await batchers[order[0]].stop()

    async def test_async_with_blocks_that_overlap_the_other_way(self) -> None:
        first, second = DynamicBatcher(double), DynamicBatcher(double)
        with anyio.fail_after(5):
            await first.start()
            async with second:
                await first.stop()  # inside the block the second batcher opened
                assert await second.call(2) == 4
            assert not second.is_running

    async def test_a_child_task_hosts_its_own(self) -> None:
        outer, inner = DynamicBatcher(double), DynamicBatcher(double)
        with anyio.fail_after(5):
            await outer.start()

            async def child() -> None:
                async with inner:
                    assert await inner.call(3) == 6

            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
            assert await outer.call(4) == 8
            await outer.stop()


class TestOneBatcherAlone:
    """What ends one batcher leaves the others the task started running."""

    async def test_a_failed_start_leaves_the_running_one_running(self) -> None:
        running, failing = DynamicBatcher(double), DynamicBatcher(Session(fail_on="enter"))
        with anyio.fail_after(5):
            await running.start()
            with pytest.raises(OSError, match="cannot enter"):
                await failing.start()
            assert not failing.is_running
            assert await running.call(1) == 2
            await running.stop()
            async with DynamicBatcher(double) as later:
                assert await later.call(2) == 4

    @pytest.mark.parametrize("error", [OSError("cannot exit"), Fatal("from __aexit__")], ids=repr)
    async def test_a_model_failing_to_exit_is_raised_by_its_stop_alone(self, error: BaseException) -> None:
        session = Session(fail_on="exit", exit_error=error)
        running, failing = DynamicBatcher(double), DynamicBatcher(session)
        with anyio.fail_after(5):
            await running.start()
            await failing.start()
            assert await failing.call(1) == 2
            with pytest.raises(type(error), match=str(error)):
                await failing.stop()
            assert not failing.is_running
            assert await running.call(1) == 2  # neither the other batcher nor this task was cancelled
            await running.stop()
            session.fail_on = ""
            async with failing:  # the error is not kept: it starts again
                assert await failing.call(2) == 3

    async def test_leaving_a_block_with_an_error_aborts_that_batcher_only(self) -> None:
        model = Recorder(hold=True)
        held, other = DynamicBatcher(model, max_batch_size=1), DynamicBatcher(double)
        with anyio.fail_after(5):
            await other.start()
            raised = False
            try:
                async with held:
                    first = await held.submit("first", estimated_cost=1)
                    queued = await held.submit("queued", estimated_cost=1)
                    await model.entered.wait()
                    raise LookupError
            except LookupError:
                raised = True
            assert raised
            with pytest.raises(BatcherClosedError):
                await queued
            assert first.done()
            assert await other.call(3) == 6
            await other.stop()

    async def test_a_cancelled_stop_aborts_that_batcher_only(self) -> None:
        model = Recorder(hold=True)
        held, other = DynamicBatcher(model, max_batch_size=1), DynamicBatcher(double)
        with anyio.fail_after(5):
            await held.start()
            await other.start()
            await held.submit("first", estimated_cost=1)
            queued = await held.submit("queued", estimated_cost=1)
            await model.entered.wait()
            with anyio.CancelScope() as scope:
                scope.cancel()
                await held.stop()  # the model holds its batch: the stop waits, and is cancelled
            assert not held.is_running
            with pytest.raises(BatcherClosedError):
                await queued
            assert await other.call(3) == 6
            await other.stop()


class TestCancelledStart:
    async def test_a_start_cancelled_as_its_loops_start_never_returns_a_dead_batcher(self) -> None:
        """A cancelled caller of start() is not moved into the task group by the
        task's started() (AnyIO and trio ignore it), so what the run raises as it
        unwinds goes to that caller: start() must raise, not return a batcher whose
        run is already over. Swept over the checkpoints of a start."""

        other = DynamicBatcher(double)
        with anyio.fail_after(10):
            await other.start()  # the task's task group lives outside the cancelled scope
            for checkpoints in range(30):
                batcher = DynamicBatcher(Session(fail_on="exit", slow=True))
                outcome = await start_cancelled_after(batcher, checkpoints)  # raising: the run's own error
                assert batcher.is_running == (outcome == "returned")
                if batcher.is_running:  # it did start: it serves, and stops with its model's error
                    assert await batcher.call(1) == 2
                    with pytest.raises(OSError, match="cannot exit"):
                        await batcher.stop()
            await other.stop()

    async def test_a_base_exception_from_exit_is_raised_by_a_cancelled_stop(self) -> None:
        """The common shape: a time limit around ``async with batcher:``, whose stop is
        then cancelled: the model's exit error is raised, not lost to the cancellation."""

        batcher = DynamicBatcher(Session(fail_on="exit", exit_error=Fatal("from __aexit__")))

        async def leave_late() -> None:
            with anyio.move_on_after(0.05):
                async with batcher:
                    assert await batcher.call(1) == 2
                    await anyio.sleep_forever()

        with anyio.fail_after(5), pytest.raises(Fatal, match="from __aexit__"):
            await leave_late()
        assert not batcher.is_running

    @pytest.mark.parametrize(("exit_fails", "error"), [(True, OSError), (False, BatcherClosedError)])
    async def test_a_shielded_start_under_a_cancelled_task_group(
        self, exit_fails: bool, error: type[BaseException]
    ) -> None:
        """The loops would run in a cancelled task group: even to a shielded caller,
        start() raises what the run raised as it unwound (the model's exit error, else
        BatcherClosedError), and the batcher is not running; the other is unharmed."""

        other, batcher = DynamicBatcher(double), DynamicBatcher(Session(fail_on="exit" if exit_fails else ""))
        with anyio.fail_after(5):
            with anyio.CancelScope() as outer:
                await other.start()  # the task group is entered here, inside outer
                outer.cancel()
                with anyio.CancelScope(shield=True):
                    with pytest.raises(error):
                        await batcher.start()
                    assert not batcher.is_running
                await other.stop()  # cancelled with outer, which absorbs it
            assert outer.cancelled_caught


class ShieldedSession(Session):
    """A model whose whole session runs shielded: its entry opens a shielded cancel
    scope that its exit closes, so cancelling start() cannot cancel its loops."""

    async def __aenter__(self) -> ShieldedSession:
        self._shield = anyio.CancelScope(shield=True)
        self._shield.__enter__()
        await anyio.lowlevel.checkpoint()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._shield.__exit__(None, None, None)
        self.exited = True
        await super().__aexit__(*exc_info)


class TestErrorsNotLost:
    async def test_a_cancelled_stop_of_the_last_raises_its_exit_error(self) -> None:
        """On trio, stopping the first of two batchers in a cancelled scope left its
        cancellation in the task group they share; the stop of the last one, which exits
        it, raised that Cancelled instead of its model's exit error."""
        first, last = DynamicBatcher(echo), DynamicBatcher(Session(fail_on="exit"))
        with anyio.fail_after(5), anyio.CancelScope() as scope:
            await first.start()
            await last.start()
            scope.cancel()
            with contextlib.suppress(anyio.get_cancelled_exc_class()):
                await first.stop()
            raised: BaseException | None = None
            try:
                await last.stop()
            except BaseException as exc:  # (a Cancelled, so raised, would be absorbed by scope)
                raised = exc
        assert repr(raised) == "OSError('cannot exit')"
        assert (first.is_running, last.is_running) == (False, False)

    async def test_a_process_function_ending_the_run_as_it_starts_is_raised_by_start(self) -> None:
        """A record submitted while start() is under way (the model's entry waits) whose
        batch raises past Exception before every worker has started: start() raised
        BatcherClosedError, and nothing raised the process function's exception."""

        class Raising(EntryHeld, Session):
            async def __call__(self, batch: list[int]) -> list[int]:
                raise Fatal("from the process function")

        model = Raising()
        batcher = DynamicBatcher(model, max_concurrent_batches=64)
        futures = []

        async def submit() -> None:
            await model.entering.wait()
            futures.append(await batcher.submit(1))
            model.enter.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(submit)
                with pytest.raises(Fatal, match="from the process function"):
                    await batcher.start()
        assert isinstance(futures[0].exception(), BatcherClosedError)
        assert not batcher.is_running
        await batcher.stop()  # nothing left to raise: start() raised it
        async with batcher:  # nor does the batcher hold it: it starts again
            assert batcher.is_running


class TestCancelledStartOfAShieldedSession:
    @pytest.mark.parametrize("exit_fails", [True, False])
    async def test_start_ends_whenever_its_caller_is_cancelled(self, exit_fails: bool) -> None:
        """AnyIO's and trio's start() wait for a task whose started() came after their
        caller was cancelled; this one never ended (its loops run shielded), and
        start() hung. Now start() ends the run and raises, swept over the checkpoints
        of a start; the model's exit error, when it has one, is not lost."""

        other = DynamicBatcher(double)
        with anyio.fail_after(10):
            await other.start()
            for checkpoints in range(12):
                model = ShieldedSession(fail_on="exit" if exit_fails else "")
                model.exited = False
                batcher = DynamicBatcher(model)
                outcome = await start_cancelled_after(batcher, checkpoints)
                if outcome == "returned":
                    assert await batcher.call(1) == 2
                    with pytest.raises(OSError, match="cannot exit") if exit_fails else contextlib.nullcontext():
                        await batcher.stop()
                else:
                    assert not batcher.is_running
                    assert outcome == ("exit error" if exit_fails and model.exited else "cancelled")
                assert await other.call(1) == 2
            await other.stop()
