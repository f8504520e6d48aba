"""The doors for whole-corpus jobs and synchronous callers, against the async path
they wrap, side by side in one run, on an echo model (so what is measured is the
library's own cost per record).

* ``map()``: 100,000 records through ``DynamicBatcher.map`` (in order) against
  ``submit_batch`` of every record and awaiting each future;
* ``SyncBatcher.map()``: the same records from a plain thread, against ``map()``;
* ``SyncBatcher.call``: 16 threads each calling in a loop, against 16 tasks
  calling ``call()`` (a tenth of the records: each call is a round trip);
* ``SyncBatcher.submit``: the same with ``submit(record).result()``;
* ``SyncBatcher.stream``: 16 threads each streaming records of 100 items one after
  another, against 16 tasks doing so with ``stream()`` (as many items as records
  above; the figures are per item),

on asyncio and trio (for ``SyncBatcher``, its ``backend=``).

Each figure is the median of ``--reps`` alternating repetitions, in microseconds
per record, and the overhead is the difference to the async path::

    python -m benchmarks.bench_sync
    python -m benchmarks.bench_sync --quick     # 5,000 records, 1 repetition
    python -m benchmarks.bench_sync --only "sync call" "sync submit"
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import anyio

from batcher import DynamicBatcher, SyncBatcher

Measure = Callable[[int, str], float]


async def _echo(batch: list[int]) -> list[int]:
    return batch


def map_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``map()``, results checked."""

    async def run() -> float:
        async with DynamicBatcher(_echo) as batcher:
            started = time.perf_counter()
            index = 0
            async with batcher.map(range(records)) as results:
                async for result in results:
                    assert result == index
                    index += 1
            elapsed = time.perf_counter() - started
        assert index == records
        return elapsed

    return anyio.run(run, backend=backend)


def submit_batch_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``submit_batch`` and awaiting each future."""

    async def run() -> float:
        async with DynamicBatcher(_echo) as batcher:
            started = time.perf_counter()
            futures = await batcher.submit_batch(range(records))
            for index, future in enumerate(futures):
                assert await future == index
            return time.perf_counter() - started

    return anyio.run(run, backend=backend)


THREADS = 16


def _in_threads(work: Callable[[int], None], share: int) -> float:
    """Seconds for ``THREADS`` threads, each running ``work(first)`` on its share of records."""
    threads = [threading.Thread(target=work, args=(index * share,)) for index in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


async def _in_tasks(work: Callable[[int], Coroutine[Any, Any, None]], share: int) -> float:
    """Seconds for ``THREADS`` tasks, each running ``work(first)`` on its share of records."""
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(THREADS):
            tg.start_soon(work, index * share)
    return time.perf_counter() - started


def sync_call_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``SyncBatcher.call`` from 16 threads."""
    share = records // THREADS
    with SyncBatcher(DynamicBatcher(_echo), backend=backend) as batcher:

        def caller(first: int) -> None:
            for record in range(first, first + share):
                assert batcher.call(record) == record

        return _in_threads(caller, share)


def sync_submit_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``SyncBatcher.submit(record).result()`` from 16 threads."""
    share = records // THREADS
    with SyncBatcher(DynamicBatcher(_echo), backend=backend) as batcher:

        def caller(first: int) -> None:
            for record in range(first, first + share):
                assert batcher.submit(record).result() == record

        return _in_threads(caller, share)


def async_call_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``call`` from 16 tasks."""
    share = records // THREADS

    async def run() -> float:
        async with DynamicBatcher(_echo) as batcher:

            async def caller(first: int) -> None:
                for record in range(first, first + share):
                    assert await batcher.call(record) == record

            return await _in_tasks(caller, share)

    return anyio.run(run, backend=backend)


def sync_map_path(records: int, backend: str) -> float:
    """Seconds for ``records`` through ``SyncBatcher.map``, results checked."""
    with SyncBatcher(DynamicBatcher(_echo), backend=backend) as batcher:
        started = time.perf_counter()
        with batcher.map(range(records)) as results:
            for index, result in enumerate(results):
                assert result == index
        return time.perf_counter() - started


ITEMS = 100  # a streamed record's items


async def _generate(records: list[int]) -> AsyncIterator[list[int]]:
    for step in range(ITEMS):
        yield [step] * len(records)


def _streaming() -> DynamicBatcher[int, list[int]]:
    return DynamicBatcher(_generate, max_batch_size=64, stream_buffer=ITEMS)


def sync_stream_path(items: int, backend: str) -> float:
    """Seconds for ``items`` streamed to 16 threads through ``SyncBatcher.stream``
    (records of ``ITEMS`` items, each thread reading one record after another)."""
    share = items // ITEMS // THREADS
    with SyncBatcher(_streaming(), backend=backend) as batcher:

        def reader(first: int) -> None:
            for record in range(first, first + share):
                with batcher.stream(record) as stream:
                    assert sum(1 for _ in stream) == ITEMS

        return _in_threads(reader, share)


def async_stream_path(items: int, backend: str) -> float:
    """Seconds for ``items`` streamed to 16 tasks through ``stream()``."""
    share = items // ITEMS // THREADS

    async def run() -> float:
        async with _streaming() as batcher:

            async def reader(first: int) -> None:
                for record in range(first, first + share):
                    async with batcher.stream(record) as stream:
                        assert len([item async for item in stream]) == ITEMS

            return await _in_tasks(reader, share)

    return anyio.run(run, backend=backend)


PAIRS: dict[str, tuple[tuple[str, Measure], tuple[str, Measure]]] = {
    "map": (("map()", map_path), ("submit_batch + await", submit_batch_path)),
    "sync map": (("SyncBatcher.map()", sync_map_path), ("map()", map_path)),
    "sync call": (("SyncBatcher.call, 16 thr.", sync_call_path), ("call(), 16 tasks", async_call_path)),
    "sync submit": (("SyncBatcher.submit, 16 thr.", sync_submit_path), ("call(), 16 tasks", async_call_path)),
    "sync stream": (("SyncBatcher.stream, 16 thr.", sync_stream_path), ("stream(), 16 tasks", async_stream_path)),
}


def measure(pair: str, records: int, backend: str, reps: int) -> tuple[float, float]:
    """Median µs per record of the door and of the async path it wraps."""
    (_, door), (_, path) = PAIRS[pair]
    door_us: list[float] = []
    path_us: list[float] = []
    for rep in range(reps):
        order: Sequence[tuple[list[float], Measure]] = ((door_us, door), (path_us, path))
        for times, run in order if rep % 2 == 0 else reversed(order):
            gc.collect()
            times.append(run(records, backend) / records * 1e6)
    return statistics.median(door_us), statistics.median(path_us)


def report(records: int, reps: int, backends: Sequence[str], pairs: Sequence[str] = tuple(PAIRS)) -> str:
    lines = [f"{'door':<28}{'backend':<9}{'door µs/rec':>13}{'async µs/rec':>14}{'overhead':>10}  (stream: µs/item)"]
    for pair, ((door_name, _), _) in PAIRS.items():
        if pair not in pairs:
            continue
        count = records // 10 if pair in ("sync call", "sync submit") else records
        for backend in backends:
            door, path = measure(pair, count, backend, reps)
            lines.append(f"{door_name:<28}{backend:<9}{door:>13.2f}{path:>14.2f}{door - path:>+10.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sync", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 records, 1 repetition: checks correctness")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    parser.add_argument("--only", nargs="+", choices=tuple(PAIRS), default=tuple(PAIRS), help="which doors (all)")
    args = parser.parse_args(argv)
    records, reps = (5_000, 1) if args.quick else (100_000, args.reps)
    print(f"{records:,} records, median of {reps}, echo model")
    print(report(records, reps, ("asyncio", "trio"), args.only))


if __name__ == "__main__":
    main()
