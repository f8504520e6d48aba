"""Observers, the statistics' distributions, and the Prometheus and OpenTelemetry
exporters, checked by value: known batches give known events, counts, sums and
bucket placements, under asyncio and trio."""

from __future__ import annotations

import importlib
import logging
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from batcher import (
    END,
    BatchDispatched,
    BatchEnded,
    BatcherClosedError,
    BatcherOverloadedError,
    DynamicBatcher,
    Event,
    QueueTimeoutError,
    RecordsDropped,
)
from batcher.metrics import OpenTelemetryObserver, PrometheusObserver

from .helpers import Recorder, blocked_batcher, bounded


class Log:
    """An observer that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


async def model(batch: list[Any]) -> list[Any]:
    """Fails a batch holding "boom"; answers a ValueError in the slot of "bad"."""
    if "boom" in batch:
        raise RuntimeError("boom")
    return [ValueError("bad") if record == "bad" else record for record in batch]


class Held(Recorder):
    """A held recorder that answers as :func:`model` does once released."""

    async def __call__(self, batch: list[Any]) -> list[Any]:
        await super().__call__(batch)
        return await model(batch)


async def run_known_batches(*observers: Any) -> DynamicBatcher[Any, Any]:
    """Three batches: ["first"] (cost 1, held in the model while the observers are
    added), ["a", "bad"] (costs 3 and 5), ["boom"] (cost 2); one record withdrawn,
    one expired, one refused."""
    held = Held(hold=True)
    with anyio.fail_after(5):
        async with DynamicBatcher(held, max_batch_size=2, target_batch_cost=10, max_queued_cost=11) as batcher:
            await batcher.submit("first", estimated_cost=1)
            await held.entered.wait()
            for observer in observers:
                batcher.add_observer(observer)
            pair = await batcher.submit_batch(["a", "bad"], estimated_cost=[3, 5])
            boom = await batcher.submit("boom", estimated_cost=2)
            withdrawn = await batcher.submit("withdrawn", estimated_cost=1)
            assert withdrawn.cancel()
            expired = await batcher.submit("expired", estimated_cost=1, max_queue_delay_s=0.001)
            with pytest.raises(QueueTimeoutError):
                await expired
            with pytest.raises(BatcherOverloadedError):
                await batcher.submit("refused", estimated_cost=4)
            held.release()
            assert await pair[0] == "a"
            with pytest.raises(RuntimeError, match="boom"):
                await boom
    return batcher


@bounded(60)
class TestEvents:
    async def test_known_batches_give_known_events(self) -> None:
        log = Log()
        await run_known_batches(log)
        dispatched, ended = log.of(BatchDispatched), log.of(BatchEnded)
        assert [(e.size, e.cost, e.records_cost, e.fill_ratio) for e in dispatched] == [(2, 8, 8, 0.8), (1, 2, 2, 0.2)]
        assert all(e.worker == 0 for e in dispatched)
        assert [len(e.queue_waits_s) for e in dispatched] == [2, 1]  # every record timed while observed
        assert all(wait >= 0 for e in dispatched for wait in e.queue_waits_s)
        # "first" was dispatched before the observer came: neither of its events is seen.
        assert [(e.size, e.outcome, e.failed) for e in ended] == [(2, "ok", 1), (1, "failed", 1)]
        assert [e.batch for e in ended] == [e.batch for e in dispatched] == [2, 3]
        dropped = [(e.reason, e.records, e.cost) for e in log.of(RecordsDropped)]
        assert dropped == [("withdrawn", 1, 1), ("expired", 1, 1), ("shed", 1, 4)]

    async def test_a_timed_out_batch_and_the_state_it_reports(self) -> None:
        log = Log()
        gate = anyio.Event()

        async def hangs(batch: list[Any]) -> list[Any]:
            await gate.wait()
            return batch

        async with DynamicBatcher(hangs, process_timeout_s=0.05, observers=[log]) as batcher:
            with pytest.raises(TimeoutError):
                await batcher.call("x")
            gate.set()
        (dispatched,) = log.of(BatchDispatched)
        assert (dispatched.queued, dispatched.batches_in_flight) == (0, 1)
        (ended,) = log.of(BatchEnded)
        assert (ended.outcome, ended.failed, ended.batches_in_flight) == ("timed_out", 1, 0)
        assert ended.duration_s >= 0.05

    async def test_a_streamed_batch_that_fails_counts_only_the_records_it_failed(self) -> None:
        async def generate(batch: list[str]) -> Any:
            yield [END] + [f"{record}:0" for record in batch[1:]]  # the first record has ended
            raise RuntimeError("the model died mid-generation")

        log = Log()
        ends: list[str] = []

        async def consume(stream: Any) -> None:
            try:
                async with stream:
                    async for _ in stream:
                        pass
                ends.append("ok")
            except RuntimeError:
                ends.append("failed")

        with anyio.fail_after(5):
            async with DynamicBatcher(generate, max_batch_size=3, observers=[log]) as batcher:
                streams = [batcher.stream(record) for record in "abc"]
                async with anyio.create_task_group() as tg:
                    for stream in streams:
                        tg.start_soon(consume, stream)
        assert sorted(ends) == ["failed", "failed", "ok"]
        (ended,) = log.of(BatchEnded)
        assert (ended.size, ended.outcome, ended.failed) == (3, "failed", 2)
        assert batcher.stats.total_failed == 2

    async def test_records_failed_while_queued_by_an_abnormal_stop(self) -> None:
        log = Log()
        held = Recorder(hold=True)
        batcher: DynamicBatcher[Any, Any] = DynamicBatcher(held, max_batch_size=2, observers=[log])
        futures: list[Any] = []

        async def abort() -> None:
            async with batcher:
                futures.extend([await batcher.submit(i, estimated_cost=2) for i in range(7)])
                await held.entered.wait()  # two records in the model, five queued
                raise KeyError("the application failed")

        with anyio.fail_after(5), pytest.raises(KeyError):
            await abort()
        assert all(isinstance(future.exception(), BatcherClosedError) for future in futures)
        dropped = [(e.reason, e.records, e.cost) for e in log.of(RecordsDropped)]
        assert sum(records for _, records, _ in dropped) == 5
        assert {reason for reason, _, _ in dropped} == {"closed"}
        assert sum(cost for _, _, cost in dropped) == 10
        stats = batcher.stats
        assert (stats.queued, stats.queued_cost, stats.total_failed) == (0, 0, 7)
        held.release()
        async with batcher:  # a restart counts from the right state
            await batcher.call("again")
            assert repr(batcher).endswith("running queued=0 in_flight=0>")
        assert [e.queued for e in log.of(BatchEnded)][-1] == 0

    async def test_an_observer_that_raises_is_logged_and_ignored(self, caplog: pytest.LogCaptureFixture) -> None:
        def broken(event: Event) -> None:
            raise KeyError("observer bug")

        log = Log()
        with caplog.at_level(logging.ERROR, logger="batcher"):
            async with DynamicBatcher(Recorder(), observers=[broken, log]) as batcher:
                assert await batcher.call("x") == ("done", "x")
        assert len(log.of(BatchEnded)) == 1  # the next observer still ran
        assert "observer" in caplog.text
        assert "KeyError" in caplog.text

    async def test_an_observer_removed_while_its_batch_runs_sees_its_end(self) -> None:
        log = Log()
        async with blocked_batcher(observers=[log]) as (batcher, model, first):
            batcher.remove_observer(log)
            model.release()
            await first
        assert [e.batch for e in log.of(BatchEnded)] == [1]

    async def test_adding_and_removing_observers(self) -> None:
        log = Log()
        async with DynamicBatcher(Recorder()) as batcher:
            await batcher.call(1)
            batcher.add_observer(log)
            await batcher.call(2)
            batcher.remove_observer(log)
            await batcher.call(3)
            with pytest.raises(ValueError, match="not added"):
                batcher.remove_observer(log)
            with pytest.raises(TypeError, match="an observer must be callable, got int"):
                batcher.add_observer(3)  # type: ignore[arg-type]
        assert [e.batch for e in log.of(BatchEnded)] == [2]  # only the batch dispatched while observed
        with pytest.raises(TypeError, match="an observer must be callable"):
            DynamicBatcher(Recorder(), observers=["not callable"])  # type: ignore[list-item]

    async def test_an_async_observer_is_refused(self) -> None:
        async def observe(event: Event) -> None:
            pass

        class Observing:
            async def __call__(self, event: Event) -> None:
                pass

        for observer in (observe, Observing()):
            with pytest.raises(TypeError, match="an observer must be a plain callable, got the async"):
                DynamicBatcher(Recorder(), observers=[observer])
            async with DynamicBatcher(Recorder()) as batcher:
                with pytest.raises(TypeError, match="plain callable"):
                    batcher.add_observer(observer)
                await batcher.call(1)  # no observer was added: nothing to warn of
            assert not batcher._observers


@bounded(60)
class TestStats:
    async def test_state_and_percentiles(self) -> None:
        async with blocked_batcher(max_batch_size=1) as (batcher, held, _):
            for n in range(40):
                await batcher.submit(n, estimated_cost=2)
            stats = batcher.stats
            assert (stats.queued, stats.queued_cost, stats.batches_in_flight) == (40, 80, 1)
            assert stats.batch_duration_p50_s is None  # no batch has ended yet
            held.release()
        stats = batcher.stats
        assert (stats.queued, stats.queued_cost, stats.batches_in_flight) == (0, 0, 0)
        assert stats.batch_duration_p50_s is not None
        assert stats.batch_duration_p99_s is not None
        assert 0 <= stats.batch_duration_p50_s <= stats.batch_duration_p90_s <= stats.batch_duration_p99_s  # type: ignore[operator]
        # Without an observer one record at a time is timed: about one a batch.
        assert stats.queue_wait_p50_s is not None
        assert stats.queue_wait_p50_s >= 0


def samples(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@bounded(60)
class TestPrometheus:
    async def test_known_batches_give_known_metrics(self) -> None:
        registry = CollectorRegistry()
        await run_known_batches(PrometheusObserver(registry=registry, labels={"batcher": "known"}))
        label = {"batcher": "known"}
        assert samples(registry, "batcher_batch_size_count", **label) == 2
        assert samples(registry, "batcher_batch_size_sum", **label) == 3
        assert samples(registry, "batcher_batch_size_bucket", le="1.0", **label) == 1
        assert samples(registry, "batcher_batch_size_bucket", le="2.0", **label) == 2
        assert samples(registry, "batcher_batch_cost_sum", **label) == 10
        assert samples(registry, "batcher_batch_cost_bucket", le="4.0", **label) == 1  # the cost of 2
        assert samples(registry, "batcher_batch_cost_bucket", le="8.0", **label) == 2
        assert samples(registry, "batcher_batch_fill_ratio_bucket", le="0.2", **label) == 1
        assert samples(registry, "batcher_queue_wait_seconds_count", **label) == 3
        assert samples(registry, "batcher_batch_duration_seconds_count", **label) == 2
        records = {
            outcome: samples(registry, "batcher_records_total", outcome=outcome, **label)
            for outcome in ("ok", "failed", "withdrawn", "expired", "shed")
        }
        assert records == {"ok": 1, "failed": 2, "withdrawn": 1, "expired": 1, "shed": 1}  # "first" unobserved
        assert samples(registry, "batcher_batches_total", outcome="ok", **label) == 1
        assert samples(registry, "batcher_batches_total", outcome="failed", **label) == 1
        assert samples(registry, "batcher_queue_depth", **label) == 0
        assert samples(registry, "batcher_batches_in_flight", **label) == 0

    async def test_the_gauges_while_records_wait_and_a_batch_runs(self) -> None:
        registry = CollectorRegistry()
        async with blocked_batcher(observers=[PrometheusObserver(registry)]) as (batcher, _, _):
            queued = [await batcher.submit(name, estimated_cost=cost) for name, cost in (("a", 2), ("b", 3), ("c", 4))]
            queued[2].cancel()  # an event: the gauges take the state it reports
            gauges = [samples(registry, name) for name in ("batcher_queue_depth", "batcher_queued_cost")]
            assert [*gauges, samples(registry, "batcher_batches_in_flight")] == [2, 5, 1]

    async def test_without_labels(self) -> None:
        registry = CollectorRegistry()
        async with DynamicBatcher(Recorder(), observers=[PrometheusObserver(registry)]) as batcher:
            await batcher.call(1)
        assert samples(registry, "batcher_batch_size_count") == 1
        assert samples(registry, "batcher_records_total", outcome="ok") == 1

    async def test_two_batchers_share_the_metrics_told_apart_by_a_label(self) -> None:
        registry = CollectorRegistry()
        async with (
            DynamicBatcher(Recorder(), observers=[PrometheusObserver(registry, labels={"batcher": "a"})]) as a,
            DynamicBatcher(Recorder(), observers=[PrometheusObserver(registry, labels={"batcher": "b"})]) as b,
        ):
            await a.call(1)
            await b.submit_batch([1, 2])
            await (await b.submit(3))
        assert samples(registry, "batcher_records_total", outcome="ok", batcher="a") == 1
        assert samples(registry, "batcher_records_total", outcome="ok", batcher="b") == 3

    def test_bad_arguments_are_refused_naming_them(self) -> None:
        registry = CollectorRegistry()
        with pytest.raises(TypeError, match="registry must be a prometheus_client CollectorRegistry"):
            PrometheusObserver(registry="x")
        with pytest.raises(TypeError, match="namespace must be a string"):
            PrometheusObserver(registry, namespace=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="labels must be a mapping"):
            PrometheusObserver(registry, labels=["batcher"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="labels must map strings to strings"):
            PrometheusObserver(registry, labels={"batcher": 1})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="labels cannot use 'outcome'"):
            PrometheusObserver(registry, labels={"outcome": "x"})
        assert list(registry.collect()) == []  # nothing was registered
        PrometheusObserver(registry, labels={"batcher": "a"})
        with pytest.raises(ValueError, match=r"the label names \['batcher'\], not \['model'\]"):
            PrometheusObserver(registry, labels={"model": "b"})
        with pytest.raises(ValueError, match=r"not \[\]"):
            PrometheusObserver(registry)
        PrometheusObserver(registry, namespace="other")  # another namespace has its own label names
        PrometheusObserver(registry, labels={"batcher": "b"})


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


@bounded(60)
class TestOpenTelemetry:
    async def test_known_batches_give_known_measurements(self) -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        await run_known_batches(OpenTelemetryObserver(provider, attributes={"batcher": "known"}))
        points = otel_points(reader)
        (size,) = points["batcher.batch.size"]
        assert (size.count, size.sum, dict(size.attributes)) == (2, 3, {"batcher": "known"})
        (cost,) = points["batcher.batch.cost"]
        assert (cost.count, cost.sum) == (2, 10)
        assert points["batcher.queue.wait"][0].count == 3
        assert points["batcher.batch.duration"][0].count == 2
        records = {point.attributes["outcome"]: point.value for point in points["batcher.records"]}
        assert records == {"ok": 1, "failed": 2, "withdrawn": 1, "expired": 1, "shed": 1}  # "first" unobserved
        batches = {point.attributes["outcome"]: point.value for point in points["batcher.batches"]}
        assert batches == {"ok": 1, "failed": 1}
        assert points["batcher.queue.depth"][0].value == 0
        provider.shutdown()

    async def test_the_gauges_while_records_wait_and_a_batch_runs(self) -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        async with blocked_batcher(observers=[OpenTelemetryObserver(provider)]) as (batcher, _, _):
            queued = [await batcher.submit(name, estimated_cost=cost) for name, cost in (("a", 2), ("b", 3), ("c", 4))]
            queued[2].cancel()  # an event: the gauges take the state it reports
            points = otel_points(reader)
            names = ("batcher.queue.depth", "batcher.queue.cost", "batcher.batches.in_flight")
            assert [points[name][0].value for name in names] == [2, 5, 1]
        provider.shutdown()

    def test_bad_arguments_are_refused_naming_them(self) -> None:
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        with pytest.raises(TypeError, match="meter_provider must be an OpenTelemetry MeterProvider"):
            OpenTelemetryObserver(meter_provider="x")
        with pytest.raises(TypeError, match="attributes must be a mapping"):
            OpenTelemetryObserver(provider, attributes=["batcher"])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="attributes cannot use 'outcome'"):
            OpenTelemetryObserver(provider, attributes={"outcome": "x"})
        provider.shutdown()


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def without_clients(name: str, package: str | None = None) -> Any:
        if name in ("prometheus_client", "opentelemetry.metrics"):
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_clients)
    with pytest.raises(ImportError, match=r"batcher's 'prometheus' extra \(pip install -e '\.\[prometheus\]'"):
        PrometheusObserver()
    with pytest.raises(ImportError, match=r"batcher's 'otel' extra \(pip install -e '\.\[otel\]'"):
        OpenTelemetryObserver()
