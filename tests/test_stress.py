"""Randomised fault injection through the whole batcher, and a memory soak.

Thousands of records from many concurrent producers meet random costs, delays,
priorities, queue deadlines, batch failures, wrong-length results, per-record
errors, withdrawals, load shedding, ``configure()`` calls and a ``stop()`` at a
random moment. Whatever happens, every future ends exactly once
with its own record's outcome, nothing is processed twice, and the statistics
balance. Every run is bounded by ``anyio.fail_after``.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.lowlevel import checkpoint

from batcher import (
    BatcherClosedError,
    BatcherOverloadedError,
    BatchFuture,
    DynamicBatcher,
    QueueTimeoutError,
    RecordCancelledError,
)
from batcher._budget import batch_cost

from .helpers import NOT_RUNNING

PRODUCERS = 50
RECORDS_PER_PRODUCER = 60  # 3,000 records a run


class BatchFailure(Exception):
    """Raised by the process function for a whole batch."""


class SlotFailure(Exception):
    """Returned by the process function in one record's slot."""


@dataclass(frozen=True)
class Record:
    id: int
    cost: int


@dataclass
class Settings:
    """One random configuration of the batcher and of the faults injected into it."""

    kwargs: dict[str, Any]
    sync_fn: bool
    p_batch_failure: float
    p_wrong_length: float
    p_slot_failure: float
    p_priority: float  # how often a record gets a priority other than 0
    p_configure: float  # how often a producer changes the settings
    stop_after: int  # end the run once this many records were submitted (may never happen)
    abort: bool  # end it by cancelling everything, instead of stop()

    @classmethod
    def draw(cls, rng: random.Random) -> Settings:
        total = PRODUCERS * RECORDS_PER_PRODUCER
        abort = rng.random() < 0.4
        max_batch_size = rng.randint(1, 32)
        kwargs = {
            "target_batch_cost": rng.randint(1, 300),
            "max_batch_size": max_batch_size,
            "min_batch_size": rng.randint(1, min(4, max_batch_size)),
            "batch_timeout_s": rng.choice([0.0, 0.001, 0.003]),
            "max_queue_size": rng.choice([1, 8, 64, 1000]),
            "prefetch_batches": rng.randint(0, 2),
            "max_concurrent_batches": rng.randint(1, 3),
            "cost_model": rng.choice(["sum", "padded", "measured"]),
            "group_by_cost": rng.random() < 0.5,
            "eager_dispatch": rng.random() < 0.7,
        }
        if kwargs["cost_model"] == "padded" and rng.random() < 0.5:
            kwargs["min_padding_efficiency"] = rng.choice([0.5, 0.9])
        if rng.random() < 0.3:
            kwargs["max_queued_cost"] = rng.randint(1, 2000)
        if rng.random() < 0.3:
            kwargs["max_queue_delay_s"] = rng.choice([0.001, 0.005, 0.02])
        kwargs["priority_aging_s"] = rng.choice([None, 0.0, 0.001, 0.01, 1.0])
        return cls(
            kwargs=kwargs,
            sync_fn=rng.random() < 0.25,
            p_batch_failure=rng.choice([0.0, 0.05, 0.2]),
            p_wrong_length=rng.choice([0.0, 0.03]),
            p_slot_failure=rng.choice([0.0, 0.05]),
            p_priority=rng.choice([0.0, 0.0, 0.3, 0.9]),
            p_configure=rng.choice([0.0, 0.0, 0.01]),
            # A normal stop may come after the producers are done; an abort comes amid them.
            stop_after=rng.randint(PRODUCERS, total if abort else 2 * total),
            abort=abort,
        )


@dataclass
class Ledger:
    """What the test saw: every future it got, and everything processed."""

    processed: Counter[int] = field(default_factory=Counter)
    futures: dict[int, BatchFuture[Any]] = field(default_factory=dict)
    withdrawn: set[int] = field(default_factory=set)  # cancel() returned True
    call_results: dict[int, Any] = field(default_factory=dict)
    closed_calls: dict[int, BaseException] = field(default_factory=dict)  # call() failed by an abort
    expired_calls: set[int] = field(default_factory=set)  # call() raised QueueTimeoutError
    shed: int = 0  # records refused with BatcherOverloadedError
    refused: list[str] = field(default_factory=list)  # messages of submits refused at stop
    submitted: int = 0
    budget_violations: list[str] = field(default_factory=list)


class FaultyModel:
    """A process function that misbehaves at random, and checks each batch it gets."""

    def __init__(self, settings: Settings, ledger: Ledger, seed: int) -> None:
        self.settings = settings
        self.ledger = ledger
        self.rng = random.Random(seed)
        self.target = settings.kwargs["target_batch_cost"]
        self.max_size = settings.kwargs["max_batch_size"]
        self.cost_model = settings.kwargs["cost_model"]

    def loosen(self, target: int, max_size: int) -> None:
        """``configure()`` set this budget: a batch closed under either one is within budget."""
        self.target, self.max_size = max(self.target, target), max(self.max_size, max_size)

    def check_and_decide(self, batch: list[Record]) -> tuple[float, str]:
        ledger = self.ledger
        ledger.processed.update(record.id for record in batch)
        cost = batch_cost([record.cost for record in batch], self.cost_model)
        if len(batch) > self.max_size or (cost > self.target and len(batch) > 1):
            ledger.budget_violations.append(f"{len(batch)} records costing {cost}")
        roll = self.rng.random()
        if roll < self.settings.p_batch_failure:
            fate = "raise"
        elif roll < self.settings.p_batch_failure + self.settings.p_wrong_length:
            fate = "wrong_length"
        else:
            fate = "ok"
        return self.rng.uniform(0, 0.002), fate

    def results(self, batch: list[Record], fate: str) -> list[Any]:
        if fate == "raise":
            raise BatchFailure(f"batch of {len(batch)}")
        results: list[Any] = [
            SlotFailure(record.id) if self.rng.random() < self.settings.p_slot_failure else ("ok", record.id)
            for record in batch
        ]
        if fate == "wrong_length":
            results.append(("extra", -1))
        return results

    async def async_fn(self, batch: list[Record]) -> list[Any]:
        delay, fate = self.check_and_decide(batch)
        await anyio.sleep(delay)
        return self.results(batch, fate)

    def sync_fn(self, batch: list[Record]) -> list[Any]:
        delay, fate = self.check_and_decide(batch)
        time.sleep(delay)
        return self.results(batch, fate)


async def run_scenario(seed: int) -> tuple[Settings, Ledger, DynamicBatcher[Record, Any]]:
    rng = random.Random(seed)
    settings = Settings.draw(rng)
    ledger = Ledger()
    model = FaultyModel(settings, ledger, seed)
    process_fn = model.sync_fn if settings.sync_fn else model.async_fn
    batcher: DynamicBatcher[Record, Any] = DynamicBatcher(process_fn, **settings.kwargs)
    target = settings.kwargs["target_batch_cost"]
    stop_now = anyio.Event()
    producers_left = PRODUCERS

    def submitted(n: int = 1) -> None:
        ledger.submitted += n
        if ledger.submitted >= settings.stop_after:
            stop_now.set()

    async def produce(producer: int) -> None:
        nonlocal producers_left
        prng = random.Random(seed * 1000 + producer)
        ids = iter(range(producer * RECORDS_PER_PRODUCER, (producer + 1) * RECORDS_PER_PRODUCER))
        mine: list[tuple[int, BatchFuture[Any]]] = []

        def options() -> dict[str, Any]:
            chosen: dict[str, Any] = {}
            if prng.random() < settings.p_priority:
                chosen["priority"] = prng.randint(-2, 2)
            if prng.random() < 0.1:
                chosen["max_queue_delay_s"] = prng.choice([0.001, 0.01, 1.0])
            return chosen

        def reconfigure() -> None:
            max_size = prng.randint(1, 32)
            target_cost = prng.randint(1, 300)
            model.loosen(target_cost, max_size)
            batcher.configure(
                target_batch_cost=target_cost,
                max_batch_size=max_size,
                min_batch_size=prng.randint(1, min(4, max_size)),
                max_concurrent_batches=prng.randint(1, 3),
                max_queue_delay_s=prng.choice([None, 0.005]),
                priority_aging_s=prng.choice([None, 0.0, 0.01]),
            )

        def record(rid: int) -> Record:
            cost = prng.randint(0, target) if prng.random() < 0.9 else prng.randint(target + 1, 2 * target)
            return Record(rid, cost)

        async def submit_one(rid: int, nowait: bool) -> None:
            rec = record(rid)
            try:
                future = batcher.submit_nowait(rec, estimated_cost=rec.cost, **options()) if nowait else None
            except anyio.WouldBlock:
                future = None
            if future is None:
                future = await batcher.submit(rec, estimated_cost=rec.cost, **options())
            ledger.futures[rid] = future
            mine.append((rid, future))
            submitted()

        async def submit_some(rid: int) -> None:
            records = [record(rid), *(record(next(ids, -1)) for _ in range(prng.randint(0, 3)))]
            records = [r for r in records if r.id >= 0]
            try:
                futures = await batcher.submit_batch(records, estimated_cost=[r.cost for r in records], **options())
            except BatcherOverloadedError:
                ledger.shed += len(records)
                return
            for rec, future in zip(records, futures, strict=True):
                ledger.futures[rec.id] = future
                mine.append((rec.id, future))
            submitted(len(records))

        async def call_one(rid: int) -> None:
            rec = record(rid)
            with anyio.move_on_after(prng.choice([0, 0.001, 0.01, 0.1, 1.0])):
                try:
                    ledger.call_results[rid] = await batcher.call(rec, estimated_cost=rec.cost, **options())
                except (BatchFailure, SlotFailure, ValueError) as exc:  # the record's own failure
                    ledger.call_results[rid] = exc
                except QueueTimeoutError:
                    ledger.expired_calls.add(rid)
                except BatcherClosedError as exc:  # aborted before this caller's own cancellation landed
                    ledger.closed_calls[rid] = exc
            submitted()

        try:
            for rid in ids:
                action = prng.random()
                try:
                    if action < 0.6:
                        await submit_one(rid, nowait=action >= 0.5)
                    elif action < 0.7:
                        await submit_some(rid)
                    else:
                        await call_one(rid)
                except BatcherOverloadedError:  # load shedding: nothing was queued
                    ledger.shed += 1
                if prng.random() < settings.p_configure:
                    reconfigure()
                if mine and prng.random() < 0.15:
                    victim_id, victim = prng.choice(mine)
                    if victim.cancel():
                        ledger.withdrawn.add(victim_id)
                if prng.random() < 0.5:
                    await checkpoint()
        except RuntimeError as exc:  # the batcher stopped under this producer
            ledger.refused.append(str(exc))
        finally:
            producers_left -= 1
            if producers_left == 0:
                stop_now.set()

    with anyio.fail_after(20):
        with anyio.CancelScope() as everything:
            async with anyio.create_task_group() as tg:
                await batcher.start()
                for producer in range(PRODUCERS):
                    tg.start_soon(produce, producer)
                await stop_now.wait()
                if settings.abort:
                    everything.cancel()  # producers and loops alike
                await batcher.stop()
    return settings, ledger, batcher


class TestRandomFaults:
    """Promises 1 and 2 under load: no future is ever lost, whatever goes wrong."""

    @pytest.mark.parametrize("seed", range(10))
    async def test_every_future_ends_with_its_own_outcome(self, seed: int) -> None:
        settings, ledger, batcher = await run_scenario(seed)

        assert not ledger.budget_violations
        assert ledger.refused == [NOT_RUNNING] * len(ledger.refused)
        assert max(ledger.processed.values(), default=1) == 1, "a record was processed twice"
        assert ledger.futures, "the run submitted nothing"
        for rid, future in ledger.futures.items():
            assert future.done(), f"record {rid} was never ended"
            if future.cancelled():
                assert rid not in ledger.processed
                with pytest.raises(RecordCancelledError):
                    future.result()
                continue
            assert rid not in ledger.withdrawn
            error = future.exception()
            if isinstance(error, QueueTimeoutError):
                assert rid not in ledger.processed, "an expired record reached the model"
                continue
            if isinstance(error, BatcherClosedError):
                assert settings.abort, "the batcher closed although it was stopped normally"
                continue
            assert rid in ledger.processed
            if error is None:
                assert future.result() == ("ok", rid)
            elif isinstance(error, SlotFailure):
                assert error.args == (rid,)
            else:
                assert isinstance(error, (BatchFailure, ValueError)), repr(error)
        assert settings.abort or not ledger.closed_calls, "call() saw a closed batcher although it stopped normally"
        assert not set(ledger.closed_calls) & set(ledger.processed), "a record failed as closed was processed"
        assert not ledger.expired_calls & set(ledger.processed), "an expired call's record reached the model"
        for rid, outcome in ledger.call_results.items():
            assert rid in ledger.processed
            assert outcome == ("ok", rid) or isinstance(outcome, (BatchFailure, SlotFailure, ValueError))
            assert not isinstance(outcome, SlotFailure) or outcome.args == (rid,)
        stats = batcher.stats
        assert stats.total_submitted == stats.total_completed + stats.total_cancelled + stats.total_expired
        assert stats.total_shed == ledger.shed
        assert batcher._counters.queued_cost == 0, "queued cost not given back"
        if not settings.abort:
            assert stats.total_completed == len(ledger.processed)
        assert not batcher.is_running


class TestSoak:
    """Nothing accumulates: 200,000 records leave the traced memory where it was."""

    RECORDS = 200_000
    CHUNK = 2_000
    PRODUCERS = 4

    async def _pump(self, batcher: DynamicBatcher[int, int], start: int, count: int) -> None:
        async def produce(offset: int) -> None:
            for first in range(start + offset * self.CHUNK, start + count, self.PRODUCERS * self.CHUNK):
                futures = await batcher.submit_batch(range(first, min(first + self.CHUNK, start + count)))
                for future in futures:
                    await future

        async with anyio.create_task_group() as tg:
            for offset in range(self.PRODUCERS):
                tg.start_soon(produce, offset)

    @pytest.mark.parametrize("group_by_cost", [False, True])
    async def test_memory_returns_to_baseline(self, group_by_cost: bool) -> None:
        async def noop(batch: list[int]) -> list[int]:
            return batch

        batcher = DynamicBatcher(
            noop, max_batch_size=256, max_queue_size=4096, group_by_cost=group_by_cost, cost_estimator=lambda r: r % 7
        )
        tracemalloc.start()
        try:
            with anyio.fail_after(30):
                async with batcher:
                    await self._pump(batcher, 0, 20_000)  # warm up caches and free lists
                    gc.collect()
                    before = tracemalloc.get_traced_memory()[0]
                    await self._pump(batcher, 20_000, self.RECORDS)
                    gc.collect()
                    after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        stats = batcher.stats
        assert stats.total_completed == 20_000 + self.RECORDS
        assert stats.total_failed == 0
        assert after - before < 1_000_000, f"traced memory grew by {after - before} bytes"
