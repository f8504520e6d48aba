"""Metrics at their edges: gauges after records leave without a batch, the buckets
OpenTelemetry gets, batches whose records all left before they ran, percentiles,
a registry that already holds a name, and observers changed from another thread."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Gauge

from batcher import DynamicBatcher, Observer, QueueTimeoutError, RecordsDropped, SyncBatcher
from batcher._stats import _percentiles
from batcher.metrics import SECONDS_BUCKETS, SIZE_BUCKETS, OpenTelemetryObserver, PrometheusObserver

from .helpers import Recorder
from .test_observers import Log, otel_points


def gauges(registry: CollectorRegistry) -> tuple[float | None, float | None]:
    return registry.get_sample_value("batcher_queue_depth"), registry.get_sample_value("batcher_queued_cost")


class TestGaugesWhenRecordsLeaveWithoutABatch:
    async def test_an_abnormal_stop_brings_the_queue_gauges_to_zero(self) -> None:
        registry, reader = CollectorRegistry(), InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        log, held = Log(), Recorder(hold=True)
        observers: list[Observer] = [log, PrometheusObserver(registry), OpenTelemetryObserver(provider)]
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(held, max_batch_size=1, observers=observers)

        async def abort() -> None:
            async with batcher:
                for n in range(6):
                    await batcher.submit(n, estimated_cost=2)
                await held.entered.wait()  # one record in the model, five queued
                assert gauges(registry) == (5, 10)  # as the first batch was dispatched
                raise KeyError("the application failed")

        with anyio.fail_after(5), pytest.raises(KeyError):
            await abort()
        assert gauges(registry) == (0, 0)
        points = otel_points(reader)
        assert (points["batcher.queue.depth"][0].value, points["batcher.queue.cost"][0].value) == (0, 0)
        dropped = log.of(RecordsDropped)  # the batches closed ahead for the busy worker, then the rest
        assert {event.reason for event in dropped} == {"closed"}
        assert sum(event.records for event in dropped) == 5
        assert (dropped[-1].queued, dropped[-1].queued_cost) == (0, 0)
        provider.shutdown()

    @pytest.mark.parametrize("leave", ["withdrawn", "expired"])
    async def test_a_record_that_leaves_a_queue_waiting_for_min_batch_size(self, leave: str) -> None:
        registry, held = CollectorRegistry(), Recorder(hold=True)
        observer = PrometheusObserver(registry)
        batcher = DynamicBatcher(held, min_batch_size=3, batch_timeout_s=60, observers=[observer])
        with anyio.fail_after(5):
            async with batcher:
                await batcher.submit_batch(["a", "b", "c"], estimated_cost=[1, 1, 1])
                await held.entered.wait()
                delay = 0.2 if leave == "expired" else None  # past the checks before it
                alone = await batcher.submit("alone", estimated_cost=7, max_queue_delay_s=delay)
                held.release()
                await anyio.wait_all_tasks_blocked()  # the batch has ended; "alone" waits for two more
                assert gauges(registry) == (1, 7)
                if leave == "withdrawn":
                    assert alone.cancel()
                else:
                    with pytest.raises(QueueTimeoutError):
                        await alone
                assert gauges(registry) == (0, 0)


async def test_open_telemetry_histograms_have_the_prometheus_buckets() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    with anyio.fail_after(5):
        async with DynamicBatcher(Recorder(), observers=[OpenTelemetryObserver(provider)]) as batcher:
            await batcher.submit_batch(range(3))
            await batcher.call(3)
    points = otel_points(reader)
    assert tuple(points["batcher.queue.wait"][0].explicit_bounds) == SECONDS_BUCKETS
    assert tuple(points["batcher.batch.duration"][0].explicit_bounds) == SECONDS_BUCKETS
    assert tuple(points["batcher.batch.size"][0].explicit_bounds) == SIZE_BUCKETS
    provider.shutdown()


async def test_a_batch_whose_records_all_left_is_not_timed() -> None:
    held = Recorder(hold=True)
    with anyio.fail_after(5):
        async with DynamicBatcher(held, max_batch_size=1) as batcher:
            await batcher.submit("first")
            await held.entered.wait()
            ahead = await batcher.submit("closed ahead")
            await anyio.wait_all_tasks_blocked()  # closed (a full batch) for the busy worker
            assert ahead.cancel()
            held.release()
            assert await batcher.call("last") == ("done", "last")
    durations: deque[float] = batcher._counters.durations
    assert len(durations) == batcher.stats.total_batches == 2  # "first" and "last", not the empty one


def test_percentiles_are_by_nearest_rank() -> None:
    assert _percentiles("x", deque([2.0, 1.0])) == {"x_p50_s": 1.0, "x_p90_s": 2.0, "x_p99_s": 2.0}
    hundred = _percentiles("x", deque(float(n) for n in range(1, 101)))
    assert hundred == {"x_p50_s": 50.0, "x_p90_s": 90.0, "x_p99_s": 99.0}
    assert _percentiles("x", deque([5.0])) == {"x_p50_s": 5.0, "x_p90_s": 5.0, "x_p99_s": 5.0}
    assert _percentiles("x", deque()) == {"x_p50_s": None, "x_p90_s": None, "x_p99_s": None}


def test_a_name_the_registry_holds_leaves_none_of_the_families_registered() -> None:
    registry = CollectorRegistry()
    taken = Gauge("batcher_batches_in_flight", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="batcher_batches_in_flight"):
        PrometheusObserver(registry)
    names = {metric.name for metric in registry.collect()}
    assert names == {"batcher_batches_in_flight"}  # the other batcher_* families were taken back
    registry.unregister(taken)
    PrometheusObserver(registry)  # once the name is free, it registers
    assert registry.get_sample_value("batcher_batches_in_flight") == 0


def test_observers_are_changed_on_the_batcher_loops_thread(anyio_backend: str) -> None:
    log = Log()
    batcher: DynamicBatcher[Any, Any] = DynamicBatcher(Recorder(), observers=[log])
    with SyncBatcher(batcher, backend=anyio_backend) as sync:
        errors: list[BaseException] = []

        def from_another_thread() -> None:
            for change in (batcher.add_observer, batcher.remove_observer):
                try:
                    change(log)
                except RuntimeError as exc:
                    errors.append(exc)

        thread = threading.Thread(target=from_another_thread)
        thread.start()
        thread.join(5)
        assert len(errors) == 2
        assert all("pass observers=[...] to the constructor, or call it there" in str(exc) for exc in errors)
        sync.call("after")
    assert len(log.events) == 2  # still observed once, as before the refused calls
