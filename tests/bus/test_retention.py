"""What `up` logs about each stream's real retention: the estimate, and the numbers it is made
of as a real nats-server reports them."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.aio.client import Client

from volstream.bus.streams import StreamLimits, default_stream_specs, ensure_streams
from volstream.retention import StreamUsage, describe, holds, report_retention, stream_usage
from volstream.subjects import Subjects

S = 1_000_000_000
MB = 1_000_000


def usage(bytes_: int, span_s: float, max_bytes: int, max_age_s: float) -> StreamUsage:
    return StreamUsage("MD", bytes_, 1000, 10 * S, 10 * S + int(span_s * S), max_bytes, max_age_s)


def test_the_limit_that_binds_first_decides() -> None:
    # 2 MB/s: 4 GB last 2,000 s, under a 3 day age limit: the bytes decide.
    h = holds(usage(120 * MB, 60, 4_000 * MB, 3 * 86400))
    assert h.rate_bytes_s == 2 * MB and h.seconds == 2_000 and h.bound == "max_bytes"
    assert describe(usage(120 * MB, 60, 4_000 * MB, 3 * 86400)).startswith(
        "stream MD holds 33 min at the current 2.0 MB/s (max_bytes decides;"
    )
    # A quiet stream: the age limit decides.
    quiet = holds(usage(1 * MB, 100, 4_000 * MB, 3600))
    assert quiet.seconds == 3600 and quiet.bound == "max_age"


def test_an_empty_or_single_message_stream_has_no_rate_yet() -> None:
    one = StreamUsage("SIM", 100, 1, 5 * S, 5 * S, 10**9, 86400)
    assert holds(one).seconds is None
    assert "rate not known yet" in describe(one)


async def test_usage_is_read_from_the_stream_itself(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js, default_stream_specs(Subjects(), StreamLimits.compact()))
    payload = b"x" * 10_000
    started = time.time_ns()
    for i in range(20):
        await js.publish("surface.deribit.btc", payload, headers={"Nats-Msg-Id": str(i)})
    u = await stream_usage(nc, "SURFACE")
    assert u.messages == 20 and u.bytes >= 20 * len(payload)
    assert started - S <= u.first_ns < u.last_ns <= time.time_ns() + S
    assert u.max_bytes == StreamLimits.compact().surface_max_bytes
    assert u.max_age_s == StreamLimits().surface_max_age_s
    h = holds(u)
    assert h.seconds is not None and h.rate_bytes_s > 0
    assert h.seconds == min(u.max_bytes / h.rate_bytes_s, u.max_age_s)


async def test_a_stream_is_reported_as_soon_as_its_rate_is_known(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await ensure_streams(js, default_stream_specs(Subjects(), StreamLimits.compact()))
    await js.publish("md.deribit.btc.book", b"x" * 100, headers={"Nats-Msg-Id": "a"})
    await js.publish("md.deribit.btc.book", b"x" * 100, headers={"Nats-Msg-Id": "b"})
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="volstream.retention")
    task = asyncio.create_task(report_retention(nc, ["MD", "SURFACE"], stop, 0.2))

    async def logged(text: str) -> int:
        for _ in range(100):
            found = sum(text in r.getMessage() for r in caplog.records)
            if found:
                return found
            await asyncio.sleep(0.05)
        return 0

    try:
        assert await logged("stream MD holds")
        assert await logged("stream SURFACE: 0 messages, rate not known yet")
        for i in range(2):
            await js.publish("surface.deribit.btc", b"s" * 100, headers={"Nats-Msg-Id": str(i)})
        assert await logged("stream SURFACE holds")
        await asyncio.sleep(0.6)  # three more ticks: nothing new, nothing repeated
        assert sum("stream MD holds" in r.getMessage() for r in caplog.records) == 1
    finally:
        stop.set()
        await task
