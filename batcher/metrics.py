"""Observers that export a batcher's events as metrics: :class:`PrometheusObserver`
(the ``prometheus`` extra, ``prometheus_client``) and :class:`OpenTelemetryObserver`
(the ``otel`` extra, ``opentelemetry-api``). Each is a callable to pass in
``observers=[...]`` or to :meth:`DynamicBatcher.add_observer`::

    from batcher.metrics import PrometheusObserver

    batcher = TokenBatcher(embed, observers=[PrometheusObserver(labels={"batcher": "embed"})])

Both record the same instruments: the queue wait of every record and the duration,
size, cost and fill ratio of every batch (histograms); the queue depth in records
and in cost and the batches in flight (gauges, as of the last event); and
records and batches by outcome (counters). Records' outcomes are ``ok``,
``failed``, ``withdrawn``, ``expired``, ``shed`` and ``closed`` (still queued when
the batcher stopped abnormally; ``stats.total_failed`` counts these with
``failed``); batches' are those of :class:`~batcher.BatchEnded`.
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable, Mapping
from functools import partial
from types import ModuleType
from typing import Any

from ._events import BatchDispatched, BatchEnded, Event

__all__ = (
    "COST_BUCKETS",
    "FILL_BUCKETS",
    "SECONDS_BUCKETS",
    "SIZE_BUCKETS",
    "OpenTelemetryObserver",
    "PrometheusObserver",
)

#: Histogram buckets: seconds (queue wait, batch duration), from 1 ms to 64 s by powers of two.
SECONDS_BUCKETS = tuple(2.0**n / 1000 for n in range(17))
#: Records in a batch: powers of two up to 4,096.
SIZE_BUCKETS = tuple(float(2**n) for n in range(13))
#: A batch's cost (tokens): powers of two up to about a million.
COST_BUCKETS = tuple(float(2**n) for n in range(21))
#: A batch's cost over the target: tenths, and one oversized record above 1.
FILL_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0)


def _require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is needed for this observer; install batcher's '{extra}' extra "
            f"(pip install -e '.[{extra}]' in batcher's checkout)"
        ) from exc


def _checked_labels(name: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    """``labels`` (``name``: the parameter) as a dict of strings, without ``outcome``,
    which the record and batch counters label themselves with.

    :raises TypeError: if it is not a mapping of strings to strings
    :raises ValueError: if it has an ``outcome`` key
    """
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise TypeError(f"{name} must be a mapping of names to values, such as {{'batcher': 'embed'}}, got {labels!r}")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{name} must map strings to strings, got {key!r}: {value!r}")
    if "outcome" in labels:
        raise ValueError(f"{name} cannot use 'outcome': the record and batch counters label their outcome with it")
    return dict(labels)


class PrometheusObserver:
    """Export a batcher's events to Prometheus (``prometheus_client``).

    :param registry: where the metrics are registered (default: the global registry)
    :param namespace: the prefix of every metric's name
    :param labels: constant labels for this batcher's series, such as
        ``{"batcher": "embed"}``: several batchers in one process share the metrics
        (created once per registry and namespace) and are told apart by these, so
        every observer of one registry and namespace has the same label names;
        ``outcome`` is the counters' own
    :raises TypeError: for an argument of the wrong type, naming it
    :raises ValueError: for an ``outcome`` label, or label names other than those
        this registry and namespace already have
    """

    def __init__(
        self, registry: Any = None, namespace: str = "batcher", labels: Mapping[str, str] | None = None
    ) -> None:
        client = _require("prometheus_client", "prometheus")
        registry = client.REGISTRY if registry is None else registry
        if not callable(getattr(registry, "register", None)):
            raise TypeError(f"registry must be a prometheus_client CollectorRegistry or None, got {registry!r}")
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a string, got {namespace!r}")
        self._labels = _checked_labels("labels", labels)
        metrics = _prometheus_metrics(client, registry, namespace, tuple(sorted(self._labels)))
        values = self._labels

        def series(name: str) -> Any:  # this batcher's series of a family
            return metrics[name].labels(**values) if values else metrics[name]

        self._wait = series("queue_wait_seconds")
        self._duration = series("batch_duration_seconds")
        self._size = series("batch_size")
        self._cost = series("batch_cost")
        self._fill = series("batch_fill_ratio")
        self._depth = series("queue_depth")
        self._depth_cost = series("queued_cost")
        self._in_flight = series("batches_in_flight")
        self._records = metrics["records"]
        self._batches = metrics["batches"]

    def __call__(self, event: Event) -> None:
        if isinstance(event, BatchDispatched):
            for wait in event.queue_waits_s:
                self._wait.observe(wait)
            self._size.observe(event.size)
            self._cost.observe(event.cost)
            self._fill.observe(event.fill_ratio)
        elif isinstance(event, BatchEnded):
            self._duration.observe(event.duration_s)
            self._batches.labels(outcome=event.outcome, **self._labels).inc()
            self._count_records("ok", event.size - event.failed)
            self._count_records("failed", event.failed)
        else:
            self._count_records(event.reason, event.records)
        self._depth.set(event.queued)
        self._depth_cost.set(event.queued_cost)
        self._in_flight.set(event.batches_in_flight)

    def _count_records(self, outcome: str, records: int) -> None:
        if records:
            self._records.labels(outcome=outcome, **self._labels).inc(records)


# Per registry (kept no longer than the registry), the families of each namespace and set of label names.
_PROMETHEUS: weakref.WeakKeyDictionary[Any, dict[tuple[str, tuple[str, ...]], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _prometheus_metrics(client: ModuleType, registry: Any, namespace: str, labels: tuple[str, ...]) -> dict[str, Any]:
    """The metric families of one registry, namespace and set of label names, made once."""
    made = _PROMETHEUS.setdefault(registry, {})
    key = (namespace, labels)
    if key not in made:
        if (other := next((names for space, names in made if space == namespace), None)) is not None:
            raise ValueError(
                f"this registry has the {namespace!r} metrics with the label names {list(other)}, not "
                f"{list(labels)}: give every PrometheusObserver of one registry and namespace the same "
                "label names (with their own values), or another namespace"
            )
        common = {"namespace": namespace, "labelnames": labels, "registry": registry}
        histograms = {
            "queue_wait_seconds": ("Time a record waited from submit to dispatch.", SECONDS_BUCKETS),
            "batch_duration_seconds": ("Time a batch spent in the process function.", SECONDS_BUCKETS),
            "batch_size": ("Records per batch.", SIZE_BUCKETS),
            "batch_cost": ("Cost (tokens) per batch, by the cost model.", COST_BUCKETS),
            "batch_fill_ratio": ("A batch's cost over the target batch cost.", FILL_BUCKETS),
        }
        gauges = {
            "queue_depth": "Records queued, not yet dispatched.",
            "queued_cost": "Cost (tokens) of the records queued.",
            "batches_in_flight": "Batches in the process function.",
        }
        outcome = {**common, "labelnames": (*labels, "outcome")}
        families = {
            **{
                name: partial(client.Histogram, name, text, buckets=buckets, **common)
                for name, (text, buckets) in histograms.items()
            },
            **{name: partial(client.Gauge, name, text, **common) for name, text in gauges.items()},
            "records": partial(client.Counter, "records", "Records by how they ended.", **outcome),
            "batches": partial(client.Counter, "batches", "Batches by how they ended.", **outcome),
        }
        made[key] = _registered(registry, families)
    return made[key]


def _registered(registry: Any, families: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """Make each family (each registers itself); if one cannot be registered (its name
    is taken in the registry), unregister those made before it, and raise."""
    metrics: dict[str, Any] = {}
    try:
        for name, family in families.items():
            metrics[name] = family()
    except Exception:
        for metric in metrics.values():
            registry.unregister(metric)
        raise
    return metrics


class OpenTelemetryObserver:
    """Export a batcher's events through the OpenTelemetry metrics API.

    :param meter_provider: the provider to get the ``batcher`` meter from (default:
        the global one, ``opentelemetry.metrics.get_meter_provider()``)
    :param attributes: attributes of every measurement, such as ``{"batcher": "embed"}``
        (``outcome`` is the counters' own)
    :raises TypeError: for an argument of the wrong type, naming it
    :raises ValueError: for an ``outcome`` attribute
    """

    def __init__(self, meter_provider: Any = None, attributes: Mapping[str, str] | None = None) -> None:
        metrics = _require("opentelemetry.metrics", "otel")
        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        if not callable(getattr(provider, "get_meter", None)):
            raise TypeError(f"meter_provider must be an OpenTelemetry MeterProvider or None, got {provider!r}")
        self._attributes = _checked_labels("attributes", attributes)
        meter = provider.get_meter("batcher")

        def histogram(name: str, unit: str, description: str, buckets: tuple[float, ...]) -> Any:
            # The buckets Prometheus gets (an SDK's view may still set others).
            return meter.create_histogram(
                name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
            )

        self._wait = histogram(
            "batcher.queue.wait", "s", "Time a record waited from submit to dispatch.", SECONDS_BUCKETS
        )
        self._duration = histogram(
            "batcher.batch.duration", "s", "Time a batch spent in the process function.", SECONDS_BUCKETS
        )
        self._size = histogram("batcher.batch.size", "{record}", "Records per batch.", SIZE_BUCKETS)
        self._cost = histogram("batcher.batch.cost", "{token}", "Cost per batch.", COST_BUCKETS)
        self._fill = histogram("batcher.batch.fill_ratio", "1", "Cost over target.", FILL_BUCKETS)
        self._depth = meter.create_gauge("batcher.queue.depth", unit="{record}", description="Records queued.")
        self._depth_cost = meter.create_gauge("batcher.queue.cost", unit="{token}", description="Cost queued.")
        self._in_flight = meter.create_gauge(
            "batcher.batches.in_flight", unit="{batch}", description="Batches running."
        )
        self._records = meter.create_counter("batcher.records", unit="{record}", description="Records by outcome.")
        self._batches = meter.create_counter("batcher.batches", unit="{batch}", description="Batches by outcome.")

    def __call__(self, event: Event) -> None:
        attributes = self._attributes
        if isinstance(event, BatchDispatched):
            for wait in event.queue_waits_s:
                self._wait.record(wait, attributes)
            self._size.record(event.size, attributes)
            self._cost.record(event.cost, attributes)
            self._fill.record(event.fill_ratio, attributes)
        elif isinstance(event, BatchEnded):
            self._duration.record(event.duration_s, attributes)
            self._batches.add(1, {**attributes, "outcome": event.outcome})
            self._count_records("ok", event.size - event.failed)
            self._count_records("failed", event.failed)
        else:
            self._count_records(event.reason, event.records)
        self._depth.set(event.queued, attributes)
        self._depth_cost.set(event.queued_cost, attributes)
        self._in_flight.set(event.batches_in_flight, attributes)

    def _count_records(self, outcome: str, records: int) -> None:
        if records:
            self._records.add(records, {**self._attributes, "outcome": outcome})
