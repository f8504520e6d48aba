"""The routing state behind batcher.ray (``_replicas.Pool``), without Ray."""

from __future__ import annotations

import anyio
import pytest

from batcher import NoLiveReplicaError
from batcher._replicas import Pool, Replica


def make_pool(count: int, per_replica: int = 1) -> Pool:
    return Pool([Replica(i, f"actor{i}", owned=True) for i in range(count)], per_replica)


class TestPick:
    def test_least_in_flight_then_least_records_then_least_answered(self) -> None:
        pool = make_pool(3, per_replica=4)
        a, b, c = pool.replicas
        a.in_flight, b.in_flight, c.in_flight = 2, 1, 1
        b.in_flight_records, c.in_flight_records = 8, 3
        assert pool.pick() is c
        c.in_flight_records = 8
        b.batches, c.batches = 5, 2
        assert pool.pick() is c

    def test_full_and_down_replicas_are_skipped(self) -> None:
        pool = make_pool(3, per_replica=1)
        a, b, c = pool.replicas
        a.in_flight = 1
        b.state = "down"
        assert pool.pick() is c
        c.state = "dead"
        assert pool.pick() is None

    def test_an_excluded_generation_is_skipped_until_it_comes_back(self) -> None:
        pool = make_pool(1)
        (only,) = pool.replicas
        assert pool.pick(excluded=(only, 0)) is None
        only.state = "down"
        pool.back(only)
        assert pool.pick(excluded=(only, 0)) is only


class TestFailures:
    def test_a_late_failure_of_an_old_actor_is_ignored(self) -> None:
        pool = make_pool(1)
        (only,) = pool.replicas
        assert pool.fail(only, 0)
        assert not pool.fail(only, 0)  # already down
        pool.replace(only, "actor0b")
        pool.back(only)
        assert not pool.fail(only, 0)  # a batch the old actor held
        assert (only.state, only.failures, only.replacements, only.generation) == ("up", 1, 1, 1)

    def test_an_answered_batch_resets_the_replacements_in_a_row(self) -> None:
        pool = make_pool(1)
        (only,) = pool.replicas
        pool.replace(only, "b")
        pool.replace(only, "c")
        assert only.replacements_in_a_row == 2
        only.in_flight, only.in_flight_records = 1, 3
        pool.release(only, 3, answered=True)
        assert (only.replacements_in_a_row, only.batches, only.records, only.in_flight) == (0, 1, 3, 0)


class TestAcquire:
    async def test_waits_for_room_then_takes_the_freed_replica(self) -> None:
        pool = make_pool(1)
        first = await pool.acquire(2)
        got: list[Replica] = []

        async def second() -> None:
            got.append(await pool.acquire(1))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(second)
                await anyio.wait_all_tasks_blocked()
                assert got == []
                pool.release(first, 2, answered=True)
        assert got == [first]
        assert first.in_flight == 1

    async def test_every_replica_dead_fails_waiting_batches(self) -> None:
        pool = make_pool(2)
        a, b = pool.replicas
        await pool.acquire(1)
        await pool.acquire(1)
        a.state = "down"
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def waiting() -> None:
                    with pytest.raises(NoLiveReplicaError, match=r"every replica \(2\)"):
                        await pool.acquire(1)

                tg.start_soon(waiting)
                await anyio.wait_all_tasks_blocked()
                pool.bury(a)
                pool.bury(b)

    async def test_settled_waits_while_a_replica_is_down(self) -> None:
        pool = make_pool(2)
        a, _ = pool.replicas
        assert pool.fail(a, 0)
        settled = anyio.Event()

        async def wait() -> None:
            await pool.settled()
            settled.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.wait_all_tasks_blocked()
                assert not settled.is_set()
                pool.back(a)
        assert settled.is_set()
