"""The Prometheus endpoint serves volstream metrics; trace context travels per batch."""

from __future__ import annotations

import asyncio
import urllib.request

from opentelemetry.sdk.trace import TracerProvider

from volstream.bus.embedded import free_port
from volstream.telemetry import (
    batch_trace_context,
    extract_trace,
    inject_trace,
    reason_kind,
    setup_telemetry,
)

from .conftest import sample_value


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return bytes(resp.read()).decode()


async def test_prometheus_endpoint_serves_volstream_metrics() -> None:
    metrics = setup_telemetry("bus-test-http", free_port())
    assert setup_telemetry("bus-test-http", None) is metrics  # idempotent
    assert metrics.port  # discoverable (another test may have started the server first)
    metrics.events_in.add(5, {"stream": "MD"})
    metrics.events_out.add(3)
    metrics.failures.add(1, {"kind": "handler"})
    metrics.publish_retries.add(2)
    metrics.reconnects.add(1)
    metrics.handle_latency.record(0.004)
    metrics.consumer_lag.set(17, {"stream": "MD", "consumer": "svc_book"})
    metrics.dead_letter("ValueError: bad strike")
    metrics.counter("iv_resolves").add(9)
    metrics.histogram("fit_seconds").record(0.2)
    text = await asyncio.to_thread(_scrape, metrics.port)
    svc = {"service": "bus-test-http"}
    expected = [
        ("volstream_events_in_total", {"stream": "MD"}, 5.0),
        ("volstream_events_out_total", {}, 3.0),
        ("volstream_failures_total", {"kind": "handler"}, 1.0),
        ("volstream_publish_retries_total", {}, 2.0),
        ("volstream_reconnects_total", {}, 1.0),
        ("volstream_handle_latency_seconds_count", {}, 1.0),
        ("volstream_consumer_lag", {"stream": "MD", "consumer": "svc_book"}, 17.0),
        ("volstream_dead_letters_total", {"reason": "ValueError"}, 1.0),
        ("volstream_iv_resolves_total", {}, 9.0),
        ("volstream_fit_seconds_count", {}, 1.0),
    ]
    for name, labels, value in expected:
        assert sample_value(text, name, **svc, **labels) == value, name


def test_reason_kind_is_low_cardinality() -> None:
    assert reason_kind("decode_error: truncated") == "decode_error"
    assert reason_kind("ValueError: x") == "ValueError"
    assert reason_kind("strike 5 is negative") == "other"
    assert reason_kind("") == "other"


def test_trace_context_round_trips_through_headers() -> None:
    tracer = TracerProvider().get_tracer("test")
    assert inject_trace({"a": "b"}) == {"a": "b"}  # no active span: unchanged
    with tracer.start_as_current_span("batch") as span:
        headers = inject_trace({"Nats-Msg-Id": "x"})
        trace_id = span.get_span_context().trace_id
    assert headers["traceparent"].startswith("00-")
    assert headers["Nats-Msg-Id"] == "x"
    ctx = extract_trace(headers)
    with tracer.start_as_current_span("child", context=ctx) as child:
        assert child.get_span_context().trace_id == trace_id
    parent = batch_trace_context([None, {"x": "y"}, headers])
    with tracer.start_as_current_span("child2", context=parent) as child2:
        assert child2.get_span_context().trace_id == trace_id
