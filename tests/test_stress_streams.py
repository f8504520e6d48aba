"""Randomised fault injection through a streaming batcher.

Hundreds of consumers stream records of random lengths through a generator that
fails whole batches or single records at random steps, while consumers read
slowly, leave early, are cancelled, or let their stream fill up; records carry
random priorities and queue deadlines, and load is shed. Whatever happens, every
consumer sees its own record's items in order and then exactly one ending, no
record is generated twice, and the statistics balance.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from batcher import (
    END,
    BatcherOverloadedError,
    DynamicBatcher,
    QueueTimeoutError,
    RecordCancelledError,
    StreamLagError,
)

from .helpers import bounded

CONSUMERS = 150


class BatchFailure(Exception):
    """Raised by the generator for its whole batch."""


class SlotFailure(Exception):
    """Yielded in one record's slot."""


@dataclass(frozen=True)
class Record:
    id: int
    length: int
    fails_at: int | None  # the step at which its slot holds a SlotFailure


@dataclass
class Ledger:
    generated: Counter[int] = field(default_factory=Counter)  # batches each record was in
    endings: dict[int, str] = field(default_factory=dict)  # how each consumer's stream ended


class FaultyGenerator:
    def __init__(self, rng: random.Random, ledger: Ledger, p_batch_failure: float) -> None:
        self.rng, self.ledger, self.p_batch_failure = rng, ledger, p_batch_failure

    async def __call__(self, records: list[Record]) -> AsyncIterator[list[Any]]:
        self.ledger.generated.update(record.id for record in records)
        fail_at = self.rng.randint(0, 20) if self.rng.random() < self.p_batch_failure else None
        for step in range(max(record.length for record in records) + 1):
            if step == fail_at:
                raise BatchFailure(step)
            yield [self.item(record, step) for record in records]
            if self.rng.random() < 0.3:
                await anyio.sleep(self.rng.choice([0, 0.0005]))

    @staticmethod
    def item(record: Record, step: int) -> Any:
        if step == record.fails_at:
            return SlotFailure(record.id)
        return f"{record.id}:{step}" if step < record.length else END


async def consume(
    batcher: DynamicBatcher[Record, list[Any]], record: Record, rng: random.Random, ledger: Ledger
) -> None:
    style = rng.choice(["read", "read", "leave", "slow", "stuck", "cancel"])
    leave_after = rng.randint(0, 5)
    options: dict[str, Any] = {"priority": rng.randint(-1, 1)}
    if rng.random() < 0.2:
        options["max_queue_delay_s"] = rng.choice([0.001, 0.05])
    seen: list[Any] = []
    ending = "?"
    try:
        stream = batcher.stream(record, estimated_cost=record.length + 1, **options)
    except BatcherOverloadedError:
        ledger.endings[record.id] = "shed"
        return
    with anyio.move_on_after(rng.choice([0.002, 0.02]) if style == "cancel" else 30) as scope:
        async with stream:
            if style == "stuck":
                await anyio.sleep(0.05)  # its buffer fills while it does not read
            try:
                async for item in stream:
                    seen.append(item)
                    if style == "leave" and len(seen) >= leave_after:
                        ending = "left"
                        break
                    if style == "slow":
                        await anyio.sleep(0.0005)
                else:
                    ending = "complete"
            except (SlotFailure, BatchFailure, StreamLagError, QueueTimeoutError) as exc:
                ending = type(exc).__name__
    if scope.cancelled_caught:
        ending = "cancelled"
    assert seen == [f"{record.id}:{step}" for step in range(len(seen))], "items out of order or not its own"
    if ending == "complete":
        assert len(seen) == record.length
    if ending == "SlotFailure":
        assert record.fails_at is not None
        assert len(seen) == record.fails_at
    ledger.endings[record.id] = ending


@pytest.mark.parametrize("seed", range(12))
async def test_every_stream_ends_once_with_its_own_items(seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger()
    settings: dict[str, Any] = {
        "max_batch_size": rng.randint(1, 16),
        "max_concurrent_batches": rng.randint(1, 3),
        "stream_buffer": rng.randint(1, 8),
        "stream_stall_s": rng.choice([0.005, 1.0]),
        "group_by_cost": rng.random() < 0.5,
        "priority_aging_s": rng.choice([None, 0.0, 0.01]),
    }
    if rng.random() < 0.5:
        settings["max_queued_cost"] = rng.randint(50, 500)
    batcher: DynamicBatcher[Record, list[Any]] = DynamicBatcher(
        FaultyGenerator(random.Random(seed + 1), ledger, rng.choice([0.0, 0.1])), **settings
    )
    records = [
        Record(n, rng.randint(0, 12), rng.randint(0, 6) if rng.random() < 0.1 else None) for n in range(CONSUMERS)
    ]
    with anyio.fail_after(30):
        async with batcher, anyio.create_task_group() as tg:
            for record in records:
                tg.start_soon(consume, batcher, record, random.Random(seed * 1000 + record.id), ledger)
                if rng.random() < 0.3:
                    await anyio.lowlevel.checkpoint()

    assert len(ledger.endings) == CONSUMERS
    assert "?" not in ledger.endings.values()
    assert max(ledger.generated.values(), default=1) == 1, "a record was generated twice"
    stats = batcher.stats
    assert stats.total_submitted == stats.total_completed + stats.total_cancelled + stats.total_expired
    assert stats.total_shed == list(ledger.endings.values()).count("shed")
    assert batcher._counters.queued_cost == 0, "queued cost not given back"
    for record in records:
        if ledger.endings[record.id] in ("shed", "QueueTimeoutError"):
            assert record.id not in ledger.generated


@bounded(60)
async def test_a_withdrawn_stream_record_is_never_generated() -> None:
    ledger = Ledger()
    hold = anyio.Event()

    async def held(records: list[Record]) -> AsyncIterator[list[Any]]:
        ledger.generated.update(record.id for record in records)
        await hold.wait()
        yield [END] * len(records)

    batcher: DynamicBatcher[Record, list[Any]] = DynamicBatcher(held, max_batch_size=1)
    async with batcher:
        first = batcher.stream(Record(0, 1, None))
        await anyio.wait_all_tasks_blocked()
        withdrawn = batcher.stream(Record(1, 1, None))
        withdrawn.close()
        hold.set()
        async with first:
            assert [item async for item in first] == []
        with pytest.raises(RecordCancelledError):
            withdrawn._future.result()
    assert ledger.generated == Counter({0: 1})
