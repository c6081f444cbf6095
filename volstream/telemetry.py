"""Metrics and tracing shared by every volstream service.

Metrics are OpenTelemetry instruments exported through a Prometheus reader into a private
``prometheus_client`` registry, served over HTTP by :func:`setup_telemetry`. One process may
host several services (the embedded "run everything" mode): they share one MeterProvider and
one HTTP endpoint, and every data point carries a ``service`` label.

Standard instruments (Prometheus names after export):

- ``volstream_events_in_total``      messages consumed
- ``volstream_events_out_total``     messages published (acknowledged by JetStream)
- ``volstream_failures_total``       handler / publish failures (``kind`` label)
- ``volstream_dead_letters_total``   dead-lettered messages (``reason`` label, low cardinality)
- ``volstream_handle_latency_seconds`` batch handling latency histogram
- ``volstream_consumer_lag``         messages pending for a durable consumer (gauge)
- ``volstream_publish_retries_total``  JetStream republishes (same ``Nats-Msg-Id``)
- ``volstream_publish_duplicates_total``  of ``events_out``, the publishes JetStream had already
  stored (a retry answered ``duplicate``): stored = events_out - duplicates (bench_pipeline)
- ``volstream_reconnects_total``     NATS reconnects

Tracing is optional and travels in NATS headers as W3C ``traceparent``. Inject it once per
*batch* message (the messages we publish are batches), never per tick: a header on every
message halves core NATS throughput (docs/architecture.md section 9).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Counter, Histogram, Meter, _Gauge
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import start_http_server

log = logging.getLogger("volstream.telemetry")

METRIC_PREFIX = "volstream"
TRACEPARENT = "traceparent"

# Seconds: from sub-millisecond batch handling up to slow surface fits.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

# Dead-letter reasons become a label: keep the set small whatever callers pass.
MAX_REASON_KINDS = 32
_REASON_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def reason_kind(reason: str) -> str:
    """A low-cardinality label for a free-text reason: its leading identifier.

    ``"decode_error: truncated protobuf"`` -> ``decode_error``;
    ``"ValueError: bad strike 'x'"`` -> ``ValueError``; anything else -> ``other``.
    """
    head = reason.split(":", 1)[0].strip()
    match = _REASON_TOKEN.match(head)
    if not match or match.end() != len(head):
        return "other"
    return head[:48]


class CounterHandle:
    """A counter bound to a service label; extra attributes merge per call."""

    __slots__ = ("_attributes", "_counter")

    def __init__(self, counter: Counter, attributes: Mapping[str, str]) -> None:
        self._counter = counter
        self._attributes = dict(attributes)

    def add(self, amount: float = 1, attributes: Mapping[str, str] | None = None) -> None:
        if amount <= 0:
            return
        attrs = self._attributes if not attributes else {**self._attributes, **attributes}
        self._counter.add(amount, attrs)


class HistogramHandle:
    __slots__ = ("_attributes", "_histogram")

    def __init__(self, histogram: Histogram, attributes: Mapping[str, str]) -> None:
        self._histogram = histogram
        self._attributes = dict(attributes)

    def record(self, value: float, attributes: Mapping[str, str] | None = None) -> None:
        attrs = self._attributes if not attributes else {**self._attributes, **attributes}
        self._histogram.record(value, attrs)


class GaugeHandle:
    __slots__ = ("_attributes", "_gauge")

    def __init__(self, gauge: _Gauge, attributes: Mapping[str, str]) -> None:
        self._gauge = gauge
        self._attributes = dict(attributes)

    def set(self, value: float, attributes: Mapping[str, str] | None = None) -> None:
        attrs = self._attributes if not attributes else {**self._attributes, **attributes}
        self._gauge.set(value, attrs)


@dataclass
class _Shared:
    """Process-wide telemetry state (one MeterProvider, one registry, one HTTP server)."""

    provider: MeterProvider
    meter: Meter
    registry: CollectorRegistry
    port: int | None = None
    http_server: Any = None
    counters: dict[str, Counter] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    gauges: dict[str, _Gauge] = field(default_factory=dict)
    services: dict[str, Metrics] = field(default_factory=dict)


_LOCK = threading.Lock()
_SHARED: _Shared | None = None


def _full_name(name: str) -> str:
    return name if name.startswith(METRIC_PREFIX + ".") else f"{METRIC_PREFIX}.{name}"


class Metrics:
    """The instruments of one service. Create with :func:`setup_telemetry`."""

    def __init__(self, shared: _Shared, service: str) -> None:
        self._shared = shared
        self.service = service
        self._base = {"service": service}
        self._reason_kinds: set[str] = set()
        self.events_in = self.counter("events_in", "messages consumed")
        self.events_out = self.counter("events_out", "messages published and acknowledged")
        self.failures = self.counter("failures", "handler and publish failures")
        # Prefer dead_letter(reason): it keeps the reason label low-cardinality.
        self.dead_letters = self.counter("dead_letters", "messages sent to a dead-letter subject")
        self.handle_latency = self.histogram(
            "handle_latency", "time to handle one consumed batch", unit="s"
        )
        self.consumer_lag = self.gauge("consumer_lag", "messages pending for a durable consumer")
        self.publish_retries = self.counter("publish_retries", "JetStream republishes")
        self.publish_duplicates = self.counter(
            "publish_duplicates", "acknowledged publishes JetStream had already stored"
        )
        self.reconnects = self.counter("reconnects", "NATS reconnects")

    # --- getters for service-specific instruments ------------------------------------
    def counter(self, name: str, description: str = "", unit: str = "") -> CounterHandle:
        full = _full_name(name)
        with _LOCK:
            inst = self._shared.counters.get(full)
            if inst is None:
                inst = self._shared.meter.create_counter(full, unit=unit, description=description)
                self._shared.counters[full] = inst
        return CounterHandle(inst, self._base)

    def histogram(
        self,
        name: str,
        description: str = "",
        unit: str = "s",
        buckets: Iterable[float] = LATENCY_BUCKETS_S,
    ) -> HistogramHandle:
        full = _full_name(name)
        with _LOCK:
            inst = self._shared.histograms.get(full)
            if inst is None:
                inst = self._shared.meter.create_histogram(
                    full,
                    unit=unit,
                    description=description,
                    explicit_bucket_boundaries_advisory=list(buckets),
                )
                self._shared.histograms[full] = inst
        return HistogramHandle(inst, self._base)

    def gauge(self, name: str, description: str = "", unit: str = "") -> GaugeHandle:
        full = _full_name(name)
        with _LOCK:
            inst = self._shared.gauges.get(full)
            if inst is None:
                inst = self._shared.meter.create_gauge(full, unit=unit, description=description)
                self._shared.gauges[full] = inst
        return GaugeHandle(inst, self._base)

    # --- helpers -------------------------------------------------------------------------
    def dead_letter(self, reason: str, count: int = 1) -> None:
        """Count dead letters under a bounded ``reason`` label (see :func:`reason_kind`)."""
        kind = reason_kind(reason)
        if kind not in self._reason_kinds:
            if len(self._reason_kinds) >= MAX_REASON_KINDS:
                kind = "other"
            else:
                self._reason_kinds.add(kind)
        self.dead_letters.add(count, {"reason": kind})

    @property
    def port(self) -> int | None:
        """The port the Prometheus endpoint listens on (None when not serving)."""
        return self._shared.port

    @property
    def registry(self) -> CollectorRegistry:
        return self._shared.registry

    def render(self) -> bytes:
        """The Prometheus text exposition of every volstream metric in this process."""
        return bytes(generate_latest(self._shared.registry))


def _shared_state() -> _Shared:
    global _SHARED
    with _LOCK:
        if _SHARED is None:
            registry = CollectorRegistry(auto_describe=True)
            ProcessCollector(registry=registry)
            reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
            provider = MeterProvider(
                metric_readers=[reader],
                resource=Resource.create({"service.namespace": METRIC_PREFIX}),
            )
            _SHARED = _Shared(
                provider=provider,
                meter=provider.get_meter(METRIC_PREFIX),
                registry=registry,
            )
        return _SHARED


def setup_telemetry(service: str, metrics_port: int | None = None) -> Metrics:
    """Metrics for ``service``; serves Prometheus text on ``metrics_port`` (0/None: no server).

    Idempotent: the same service gets the same :class:`Metrics`; the HTTP server starts once
    per process (a later, different port is ignored with a warning). ``Metrics.port`` tells
    which port serves.
    """
    shared = _shared_state()
    if metrics_port:
        with _LOCK:
            if shared.http_server is None:
                server, _thread = start_http_server(metrics_port, registry=shared.registry)
                shared.http_server = server
                shared.port = int(server.server_port)
                log.info("prometheus metrics on :%d/metrics", shared.port)
            elif shared.port != metrics_port:
                log.warning(
                    "metrics already served on port %s; ignoring port %s for %s",
                    shared.port,
                    metrics_port,
                    service,
                )
    with _LOCK:
        existing = shared.services.get(service)
    if existing is not None:
        return existing
    metrics = Metrics(shared, service)
    with _LOCK:
        return shared.services.setdefault(service, metrics)


# --- tracing ---------------------------------------------------------------------------------

_PROPAGATOR = TraceContextTextMapPropagator()


def get_tracer(service: str) -> trace.Tracer:
    """A tracer named after the service. It is a no-op until the application installs an SDK
    ``TracerProvider`` (``opentelemetry.trace.set_tracer_provider``) with an exporter."""
    return trace.get_tracer(f"{METRIC_PREFIX}.{service}")


def inject_trace(
    headers: MutableMapping[str, str] | None = None, context: Context | None = None
) -> dict[str, str]:
    """Headers with the current (or given) span context as W3C ``traceparent``.

    Call once per published batch. Returns a new dict; without an active span it only
    copies ``headers``.
    """
    carrier: dict[str, str] = dict(headers) if headers else {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_trace(headers: Mapping[str, str] | None) -> Context:
    """The remote span context carried by one message's headers (empty Context if none)."""
    if not headers or TRACEPARENT not in headers:
        return Context()
    return _PROPAGATOR.extract(dict(headers))


def batch_trace_context(headers_of_batch: Iterable[Mapping[str, str] | None]) -> Context:
    """Parent context for a consumed batch: the first message that carries a traceparent."""
    for headers in headers_of_batch:
        if headers and TRACEPARENT in headers:
            return _PROPAGATOR.extract(dict(headers))
    return Context()
