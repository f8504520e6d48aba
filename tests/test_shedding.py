"""Load shedding: with ``max_queued_cost``, a call that would queue records past it
raises ``BatcherOverloadedError`` at once, queues nothing, and is counted."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from batcher import BatcherOverloadedError, DynamicBatcher, TokenBatcher
from batcher._map import MapResults

from .helpers import blocked_batcher, bounded


def assert_refused_nothing_queued(batcher: DynamicBatcher[Any, Any], submitted: int, shed: int) -> None:
    stats = batcher.stats
    assert stats.total_submitted == submitted, "a refused record was queued"
    assert stats.total_shed == shed


@bounded(60)
class TestShedding:
    async def test_every_entry_point_refuses_past_the_limit_at_once(self) -> None:
        # "first" (cost 1) is in the model, not queued; 10 of the 12 allowed are queued.
        async with blocked_batcher(max_queued_cost=12) as (batcher, model, _):
            await batcher.submit("a", estimated_cost=10)
            overloaded = "10 of max_queued_cost=12 is queued or on its way, and 3 more"
            with pytest.raises(BatcherOverloadedError, match=overloaded):
                await batcher.submit("b", estimated_cost=3)
            with pytest.raises(BatcherOverloadedError):
                batcher.submit_nowait("c", estimated_cost=3)
            with anyio.fail_after(1), pytest.raises(BatcherOverloadedError):
                await batcher.call("d", estimated_cost=3)  # raises, does not wait for room
            with pytest.raises(BatcherOverloadedError):
                await batcher.submit_batch(["e", "f"], estimated_cost=[1, 2])  # all or none
            assert_refused_nothing_queued(batcher, submitted=2, shed=5)
            fits = await batcher.submit_batch(["g", "h"], estimated_cost=[1, 1])  # 12: exactly the limit
            model.release()
            assert [await future for future in fits] == [("done", "g"), ("done", "h")]
        assert model.records == ["first", "a", "g", "h"]

    async def test_room_comes_back_as_records_leave_the_queue(self) -> None:
        async with blocked_batcher(max_queued_cost=5, max_batch_size=1, prefetch_batches=0) as (batcher, model, _):
            withdrawn = await batcher.submit("withdrawn", estimated_cost=5)
            with pytest.raises(BatcherOverloadedError):
                batcher.submit_nowait("x", estimated_cost=1)
            assert withdrawn.cancel()  # a withdrawn record gives its cost back
            dispatched = await batcher.submit("dispatched", estimated_cost=5)
            model.release()
            assert await dispatched == ("done", "dispatched")  # so does a dispatched one
            assert await batcher.call("after", estimated_cost=5) == ("done", "after")
        assert batcher._counters.queued_cost == 0

    async def test_map_raises_when_its_next_record_is_refused(self) -> None:
        async with blocked_batcher(max_queued_cost=3) as (batcher, model, _):
            with pytest.raises(BatcherOverloadedError):
                await _drain(batcher.map(range(10)))  # the model holds "first": the map queues up to the limit
            model.release()
        assert batcher.stats.total_shed == 1
        assert batcher._counters.queued_cost == 0  # the map's queued records were withdrawn

    async def test_a_record_over_the_limit_alone_is_always_refused(self) -> None:
        async with DynamicBatcher(_echo, max_queued_cost=4) as batcher:
            with pytest.raises(BatcherOverloadedError, match="costing 5 can never be queued under max_queued_cost=4"):
                await batcher.call(1, estimated_cost=5)  # on an idle batcher: it says a retry fails too
            with pytest.raises(BatcherOverloadedError, match="can never be queued"):
                await batcher.submit_batch([1, 2, 3], estimated_cost=[2, 2, 1])
            assert await batcher.call(2, estimated_cost=4) == 2

    async def test_token_batcher_sheds_by_tokens(self) -> None:
        async with TokenBatcher(_echo, max_queued_cost=100) as batcher:
            assert await batcher.call("x", estimated_tokens=100) == "x"
            with pytest.raises(BatcherOverloadedError):
                await batcher.call("y", estimated_tokens=101)
        assert batcher.stats.total_shed == 1

    async def test_failed_queued_records_give_their_cost_back(self) -> None:
        batcher = DynamicBatcher(_echo, max_queued_cost=10)
        with anyio.CancelScope() as scope:
            async with batcher:
                await batcher.submit_batch(range(5), estimated_cost=[2] * 5)
                scope.cancel()  # the batcher closes abnormally: queued futures fail
        assert batcher._counters.queued_cost == 0

    def test_bad_limit_is_refused(self) -> None:
        with pytest.raises(ValueError, match="max_queued_cost must be >= 1, got 0"):
            DynamicBatcher(_echo, max_queued_cost=0)
        with pytest.raises(TypeError, match="max_queued_cost must be an int, got float"):
            TokenBatcher(_echo, max_queued_cost=1.5)  # type: ignore[arg-type]


async def _echo(batch: list[Any]) -> list[Any]:
    return batch


async def _drain(results: MapResults[Any]) -> None:
    async with results:
        async for _ in results:
            pass
