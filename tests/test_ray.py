"""batcher.ray on a local Ray cluster (one per test session): routing, capacity,
failover, shutdown and errors, under asyncio and trio.

Tests synchronise with the actors through a Gate actor that counts the batches
that entered the model and holds them until it is opened; every wait on Ray is
bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

ray = pytest.importorskip("ray", reason="needs the 'ray' extra")

from batcher import BatchEnded, BatcherClosedError, DynamicBatcher, Event, NoLiveReplicaError, SyncBatcher  # noqa: E402
from batcher._ray_actors import Actors  # noqa: E402
from batcher.ray import RayReplicas  # noqa: E402

pytestmark = pytest.mark.usefixtures("cluster")


@ray.remote
class Gate:
    """Counts the batches that entered a model and holds them until opened."""

    def __init__(self) -> None:
        self.entered = 0
        self.opened = asyncio.Event()
        self.changed = asyncio.Condition()

    async def enter(self) -> None:
        async with self.changed:
            self.entered += 1
            self.changed.notify_all()
        await self.opened.wait()

    async def wait_entered(self, count: int) -> int:
        async with self.changed:
            await self.changed.wait_for(lambda: self.entered >= count)
        return self.entered

    def open(self) -> None:
        self.opened.set()


class Upper:
    """The model: answers ``(record.upper(), its process id)``; with a gate, each
    batch waits there first. A record ``"boom"`` fails the batch, ``"bad"`` only itself."""

    def __init__(self, gate: Any = None, *, prefix: str = "", delay_s: float = 0.0) -> None:
        self.gate = gate
        self.prefix = prefix
        self.delay_s = delay_s
        self.running = 0
        self.peak = 0

    async def __call__(self, records: list[str]) -> list[Any]:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.enter.remote()
            await asyncio.sleep(self.delay_s)
            if "boom" in records:
                raise ValueError("the model failed")
            if "crash" in records:
                os._exit(1)  # the actor's process dies
            pid = os.getpid()
            return [ValueError("bad record") if r == "bad" else (self.prefix + r.upper(), pid) for r in records]
        finally:
            self.running -= 1

    def get_peak(self) -> int:
        return self.peak


class Streaming:
    """A model whose batch method is a generator: Ray streams it as object refs."""

    def __call__(self, records: list[str]) -> Iterator[str]:
        yield from records


class RaisesActorError:
    """A model whose own exception is a RayActorError (as when an actor it calls died)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, records: list[str]) -> list[str]:
        self.calls += 1
        if "actor-error" in records:
            raise ray.exceptions.RayActorError()
        return records

    def get_calls(self) -> int:
        return self.calls


class Broken:
    def __init__(self) -> None:
        raise OSError("cannot load the model")

    def __call__(self, records: list[str]) -> list[str]:
        return records


async def get(ref: Any) -> Any:
    """``ray.get`` without blocking the event loop."""
    return await anyio.to_thread.run_sync(ray.get, ref)


async def kill(actor: Any) -> None:
    """Kill ``actor`` and return once it is gone (``ray.kill`` returns before the kill
    lands: a call right after it may still be answered)."""
    ray.kill(actor)
    while not await is_dead(actor):
        pass


async def is_dead(actor: Any) -> bool:
    try:
        await get(actor.__ray_ready__.remote())
    except ray.exceptions.RayActorError:
        return True
    return False


class TestRouting:
    async def test_results_in_order_and_batches_spread_over_replicas(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(max_batch_size=4) as batcher:
                results = [result async for result in batcher.map([f"r{n}" for n in range(40)])]
        assert [text for text, _ in results] == [f"R{n}" for n in range(40)]
        assert len({pid for _, pid in results}) == 2  # both replicas served
        stats = replicas.stats
        assert sum(s.records for s in stats) == 40
        assert all(s.batches > 0 and s.in_flight == 0 and s.state == "up" for s in stats)

    async def test_a_batch_goes_to_the_replica_with_least_in_flight(self) -> None:
        gate = Gate.remote()  # type: ignore[attr-defined]
        replicas = RayReplicas(Upper, gate, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(max_batch_size=1) as batcher:
                first = await batcher.submit("a", estimated_cost=1)
                await get(gate.wait_entered.remote(1))
                second = await batcher.submit("b", estimated_cost=1)
                await get(gate.wait_entered.remote(2))
                assert [s.in_flight for s in replicas.stats] == [1, 1]
                gate.open.remote()
                (_, pid_a), (_, pid_b) = await first, await second
        assert pid_a != pid_b

    async def test_never_more_than_batches_per_replica_at_once(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=1, batches_per_replica=2)
        assert replicas.capacity == 2
        with anyio.fail_after(60):
            # More workers than the replicas take: the extra batches wait for room.
            async with replicas.dynamic_batcher(max_batch_size=1, max_concurrent_batches=6) as batcher:
                results = [result async for result in batcher.map([f"r{n}" for n in range(30)])]
                peak = await get(replicas.actors[0].get_peak.remote())
        assert [text for text, _ in results] == [f"R{n}" for n in range(30)]
        assert 1 <= peak <= 2

    async def test_token_batcher_gets_the_capacity(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=2, batches_per_replica=3, prefix="x")
        batcher = replicas.token_batcher(target_batch_tokens=64)
        assert batcher._settings.max_concurrent_batches == 6
        with anyio.fail_after(60):
            async with batcher:
                assert (await batcher.call("a", estimated_tokens=1))[0] == "xA"


class TestErrors:
    async def test_the_models_exception_fails_the_batch_and_is_not_retried(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(max_batch_size=2, batch_timeout_s=1) as batcher:
                boom = await batcher.submit("boom", estimated_cost=1)
                other = await batcher.submit("x", estimated_cost=1)
                with pytest.raises(ValueError, match="the model failed"):
                    await boom
                with pytest.raises(ValueError, match="the model failed"):
                    await other
                bad, good = await batcher.submit("bad", estimated_cost=1), await batcher.submit("ok", estimated_cost=1)
                with pytest.raises(ValueError, match="bad record"):
                    await bad
                assert (await good)[0] == "OK"
        assert sum(s.failures for s in replicas.stats) == 0

    async def test_a_models_own_actor_error_is_not_taken_for_a_lost_replica(self) -> None:
        """Ray raises it as a RayTaskError that is also a RayActorError: it was retried
        on the other replica and both were counted as failed."""
        replicas = RayReplicas(RaisesActorError, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher() as batcher:
                with pytest.raises(ray.exceptions.RayTaskError):
                    await batcher.call("actor-error", estimated_cost=1)
                calls = [await get(actor.get_calls.remote()) for actor in replicas.actors]
        assert sorted(calls) == [0, 1]  # not retried
        assert [(s.failures, s.replacements) for s in replicas.stats] == [(0, 0), (0, 0)]

    async def test_a_generator_method_fails_start(self) -> None:
        """Ray runs it as a stream of object refs, which came back as the results."""
        batcher = RayReplicas(Streaming, num_replicas=1).dynamic_batcher()
        with anyio.fail_after(60), pytest.raises(TypeError, match="generator"):
            await batcher.start()
        assert not batcher.is_running

    async def test_given_actors_one_of_them_with_a_generator_method_are_refused(self) -> None:
        # Only the first was checked: the other replica took batches and failed each.
        actors = [ray.remote(Upper).remote(), ray.remote(Streaming).remote()]
        try:
            with pytest.raises(TypeError, match=r"^method: the replicas' '__call__' is a generator"):
                RayReplicas.from_actors(actors)
        finally:
            for actor in actors:
                ray.kill(actor)

    async def test_a_model_that_cannot_start_fails_start(self) -> None:
        batcher = RayReplicas(Broken, num_replicas=1).dynamic_batcher()
        with anyio.fail_after(60), pytest.raises(ray.exceptions.RayActorError, match="cannot load the model"):
            await batcher.start()
        assert not batcher.is_running

    async def test_a_replica_the_cluster_cannot_place_times_out(self) -> None:
        replicas = RayReplicas(Upper, actor_options={"num_gpus": 1}, ready_timeout_s=0.5)
        batcher = replicas.dynamic_batcher()
        with anyio.fail_after(60), pytest.raises(TimeoutError, match=r"ready_timeout_s=0\.5"):
            await batcher.start()

    async def test_called_outside_a_running_batcher(self) -> None:
        replicas = RayReplicas(Upper)
        with pytest.raises(RuntimeError, match="start the batcher"):
            await replicas(["a"])

    async def test_one_set_of_replicas_serves_one_batcher_at_a_time(self) -> None:
        replicas = RayReplicas(Upper)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher():
                other = replicas.dynamic_batcher()
                with pytest.raises(RuntimeError, match="already serves a running batcher"):
                    await other.start()
                assert not other.is_running

    async def test_two_batchers_starting_at_once_on_one_set_of_replicas(self) -> None:
        replicas = RayReplicas(Upper)
        outcomes: list[str] = []

        async def run(batcher: DynamicBatcher[str, Any]) -> None:
            try:
                async with batcher:
                    outcomes.append((await batcher.call("x"))[0])
            except RuntimeError as exc:
                outcomes.append(str(exc))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, replicas.dynamic_batcher())
                tg.start_soon(run, replicas.dynamic_batcher())  # while the first one's replica builds
        assert sorted(outcomes) == [
            "RayReplicas already serves a running batcher; stop that batcher first, or make another RayReplicas",
            "X",
        ]
        assert replicas.actors == []
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher() as batcher:  # free again
                assert (await batcher.call("y"))[0] == "Y"

    async def test_a_method_the_actor_class_lacks_fails_start(self) -> None:
        with pytest.raises(TypeError, match="method must be the name of the model's batch method, got None"):
            RayReplicas.from_actors([object()], method=None)  # type: ignore[arg-type]
        batcher = RayReplicas(ray.remote(Upper), method="embed").dynamic_batcher()
        with (
            anyio.fail_after(60),
            pytest.raises(TypeError, match="method: the replicas' actors have no method 'embed'"),
        ):
            await batcher.start()
        assert not batcher.is_running

    async def test_a_start_that_cannot_make_every_actor_kills_those_it_made(self) -> None:
        name = f"probe-{os.getpid()}"
        options = {"name": name, "lifetime": "detached"}  # the second replica's name is taken
        with anyio.fail_after(60), pytest.raises(ValueError, match="already taken"):
            await RayReplicas(Upper, num_replicas=2, actor_options=options).dynamic_batcher().start()
        assert name not in ray.util.list_named_actors()

    async def test_no_cluster_is_started_implicitly(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        with pytest.raises(RuntimeError, match=r"call ray\.init\(\)"):
            await RayReplicas(Upper).dynamic_batcher().start()


class TestFailover:
    async def test_a_replica_killed_while_it_holds_a_batch(self) -> None:
        gate = Gate.remote()  # type: ignore[attr-defined]
        replicas = RayReplicas(Upper, gate, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(max_batch_size=1) as batcher:
                held = await batcher.submit("held", estimated_cost=1)
                await get(gate.wait_entered.remote(1))
                holder = next(s.index for s in replicas.stats if s.in_flight)
                victim = replicas.actors[holder]
                ray.kill(victim)
                # The batch is retried on the other replica, where it waits at the gate again.
                await get(gate.wait_entered.remote(2))
                gate.open.remote()
                text, _ = await held
                results = [result async for result in batcher.map([f"r{n}" for n in range(20)])]
                await replicas.wait_ready()  # the replacement comes back
                assert replicas.stats[holder].state == "up"
                after = [result async for result in batcher.map([f"s{n}" for n in range(20)])]
            assert await is_dead(victim)
        assert text == "HELD"
        assert [t for t, _ in results] == [f"R{n}" for n in range(20)]
        assert [t for t, _ in after] == [f"S{n}" for n in range(20)]
        stats = replicas.stats[holder]
        assert (stats.failures, stats.replacements) == (1, 1)
        assert batcher.stats.total_completed == 41

    async def test_a_batch_that_crashes_every_replica_it_reaches_fails_after_one_retry(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(max_batch_size=1) as batcher:
                with pytest.raises(ray.exceptions.RayActorError):
                    await batcher.call("crash", estimated_cost=1)
                await replicas.wait_ready()
                assert [s.state for s in replicas.stats] == ["up", "up"]
                assert (await batcher.call("fine", estimated_cost=1))[0] == "FINE"
        assert [(s.failures, s.replacements) for s in replicas.stats] == [(1, 1), (1, 1)]

    async def test_replicas_that_died_while_idle_do_not_fail_the_next_batch(self) -> None:
        """Its retry goes to a replica that answers: one found dead is not the batch's doing."""
        replicas = RayReplicas(Upper, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(max_batch_size=1) as batcher:
                assert (await batcher.call("a", estimated_cost=1))[0] == "A"
                for actor in replicas.actors:
                    await kill(actor)  # a lost node, an OOM kill between batches
                assert (await batcher.call("b", estimated_cost=1))[0] == "B"
                await replicas.wait_ready()
        assert [(s.failures, s.replacements) for s in replicas.stats] == [(1, 1), (1, 1)]

    async def test_replicas_killed_again_and_again_lose_no_record(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=3, delay_s=0.01)
        kills: list[int] = []

        def kill_when_all_are_up(event: Event) -> None:
            # One kill at a time, each once the last killed replica is back: a batch is
            # retried once, so two replicas lost under one batch fail it (see the crash test).
            if isinstance(event, BatchEnded) and len(kills) < 3:
                if all(s.state == "up" and s.failures == 1 for s in replicas.stats[: len(kills)]):
                    kills.append(len(kills))
                    ray.kill(replicas.actors[kills[-1]])

        records: list[str] = []

        def until_three_kills_and_after() -> Iterator[str]:
            # Records for as long as the kills take (a loaded machine brings a replacement
            # up more slowly), then 100 more once the third killed replica is back.
            while not (len(kills) == 3 and replicas.stats[2].state == "up"):
                records.append(f"r{len(records)}")
                yield records[-1]
            for _ in range(100):
                records.append(f"r{len(records)}")
                yield records[-1]

        with anyio.fail_after(120):
            async with replicas.dynamic_batcher(max_batch_size=4, observers=[kill_when_all_are_up]) as batcher:
                results = [result async for result in batcher.map(until_three_kills_and_after())]
                await replicas.wait_ready()
        assert [text for text, _ in results] == [record.upper() for record in records]
        assert batcher.stats.total_completed == len(records)
        assert kills == [0, 1, 2]
        assert [s.failures for s in replicas.stats] == [1, 1, 1]

    async def test_every_replica_gone_fails_with_no_live_replica(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=1, max_restarts=0)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher() as batcher:
                assert (await batcher.call("a", estimated_cost=1))[0] == "A"
                await kill(replicas.actors[0])
                with pytest.raises(NoLiveReplicaError, match="every replica"):
                    await batcher.call("b", estimated_cost=1)
                with pytest.raises(NoLiveReplicaError):
                    await batcher.call("c", estimated_cost=1)
        assert replicas.stats[0].state == "dead"

    async def test_a_replacement_that_cannot_be_made_gives_the_replica_up(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Making the new actor raised (a detached actor's name still taken, the
        cluster in trouble): it ended the whole batcher, with an exception group."""
        replicas = RayReplicas(Upper, num_replicas=1)  # (max_restarts=3: it would be replaced)

        def cannot_make(self: Actors) -> Any:
            raise ValueError("the cluster refused the actor")

        with anyio.fail_after(60):
            async with replicas.dynamic_batcher() as batcher:
                await kill(replicas.actors[0])
                monkeypatch.setattr(Actors, "new", cannot_make)
                with pytest.raises(NoLiveReplicaError):
                    await batcher.call("b", estimated_cost=1)
                assert batcher.is_running
        assert replicas.stats[0].state == "dead"
        assert "replica 0 given up: ValueError('the cluster refused the actor')" in caplog.text

    async def test_a_retry_cancelled_while_it_checks_its_replica_gives_its_place_back(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The retry takes a place on the next replica, then asks whether it is alive;
        cancelled there (an abort, process_timeout_s), it kept the place for ever."""
        gate = Gate.remote()  # type: ignore[attr-defined]
        replicas = RayReplicas(Upper, gate, num_replicas=2)
        asked = anyio.Event()

        async def answers_never(self: Actors, handle: Any) -> bool:
            asked.set()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(max_batch_size=1) as batcher:
                held = await batcher.submit("held", estimated_cost=1)
                await get(gate.wait_entered.remote(1))
                monkeypatch.setattr(Actors, "answers", answers_never)
                ray.kill(replicas.actors[next(s.index for s in replicas.stats if s.in_flight)])
                await asked.wait()  # the retry has the other replica's place, and asks
                assert sum(s.in_flight for s in replicas.stats) == 1  # (the lost one gave its place back)
                await batcher.stop(abort_after_s=0)
        with pytest.raises(BatcherClosedError):
            await held
        assert [s.in_flight for s in replicas.stats] == [0, 0]

    async def test_a_cancelled_call_keeps_its_replica_busy_until_the_actor_ends_it(self) -> None:
        gate = Gate.remote()  # type: ignore[attr-defined]
        replicas = RayReplicas(Upper, gate, num_replicas=1)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher(process_timeout_s=0.5) as batcher:
                with pytest.raises(TimeoutError):
                    await batcher.call("slow", estimated_cost=1)
                assert replicas.stats[0].in_flight == 1  # the actor still runs it
                batcher.configure(process_timeout_s=None)  # "next" waits for "slow" to end: 0.5 s is short under load
                gate.open.remote()
                assert (await batcher.call("next", estimated_cost=1))[0] == "NEXT"
            assert replicas.stats[0].in_flight == 0


class TestLifecycle:
    async def test_owned_actors_are_killed_when_the_batcher_stops(self) -> None:
        replicas = RayReplicas(Upper, num_replicas=2)
        with anyio.fail_after(60):
            async with replicas.dynamic_batcher() as batcher:
                await batcher.call("a", estimated_cost=1)
                actors = replicas.actors
            assert replicas.actors == []
            assert [await is_dead(actor) for actor in actors] == [True, True]

    async def test_given_actors_are_left_alone(self) -> None:
        actors = [ray.remote(Upper).remote(prefix=f"{n}:") for n in range(2)]
        with pytest.raises(TypeError, match="method: the actors have no method 'embed'"):
            RayReplicas.from_actors(actors, method="embed")
        replicas = RayReplicas.from_actors(actors)
        with anyio.fail_after(60):
            async with DynamicBatcher(replicas, max_concurrent_batches=replicas.capacity, max_batch_size=1) as batcher:
                results = [result async for result in batcher.map(["a", "b", "c", "d"])]
            assert {text for text, _ in results} <= {"0:A", "0:B", "0:C", "0:D", "1:A", "1:B", "1:C", "1:D"}
            assert [await is_dead(actor) for actor in actors] == [False, False]
            async with DynamicBatcher(replicas) as batcher:  # served again
                assert (await batcher.call("e", estimated_cost=1))[0] in ("0:E", "1:E")
        for actor in actors:
            ray.kill(actor)


def test_sync_batcher(anyio_backend: str) -> None:
    replicas = RayReplicas(Upper, num_replicas=2)
    with SyncBatcher(replicas.dynamic_batcher(max_batch_size=4), backend=anyio_backend) as batcher:
        results = list(batcher.map([f"r{n}" for n in range(12)]))
    assert [text for text, _ in results] == [f"R{n}" for n in range(12)]


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "error", "name"),
        [
            ({"num_replicas": 0}, ValueError, "num_replicas"),
            ({"num_replicas": 1.5}, TypeError, "num_replicas"),
            ({"batches_per_replica": 0}, ValueError, "batches_per_replica"),
            ({"max_restarts": -1}, ValueError, "max_restarts"),
            ({"ready_timeout_s": 0}, ValueError, "ready_timeout_s"),
            ({"ready_timeout_s": "1"}, TypeError, "ready_timeout_s"),
            ({"actor_options": [1]}, TypeError, "actor_options"),
            ({"method": ""}, TypeError, "method"),
        ],
    )
    def test_bad_arguments_name_the_parameter(self, kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
        with pytest.raises(error, match=name):
            RayReplicas(Upper, **kwargs)

    def test_model_class_must_be_a_class(self) -> None:
        with pytest.raises(TypeError, match="model_class"):
            RayReplicas(Upper())

    def test_method_must_exist(self) -> None:
        with pytest.raises(TypeError, match="method: Upper has no method 'embed'"):
            RayReplicas(Upper, method="embed")

    def test_from_actors_needs_actor_handles(self) -> None:
        with pytest.raises(TypeError, match="actors"):
            RayReplicas.from_actors([])
        with pytest.raises(TypeError, match="actors"):
            RayReplicas.from_actors([Upper()])
