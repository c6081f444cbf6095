"""JetStreamPublisher against a real nats-server: window, dedupe, error acks, outages."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client

from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.publisher import JetStreamPublisher, PublishError

from .conftest import make_stream, wait_until


async def test_many_messages_all_land_in_order_with_a_small_window(nc: Client) -> None:
    await make_stream(nc, "P", "p.>")
    # A window far smaller than the data forces back-pressure many times over.
    publisher = JetStreamPublisher(nc, max_inflight_bytes=64 * 1024, max_inflight_msgs=500)
    payload = b"x" * 200
    for i in range(5000):
        await publisher.publish(f"p.{i % 7}", payload + str(i).encode(), msg_id=f"p-{i}")
        assert publisher.in_flight <= 500
        assert publisher.in_flight_bytes <= 64 * 1024 + 400
    await publisher.flush(10)
    stats = publisher.stats()
    assert (stats.published, stats.duplicates, stats.failures, stats.in_flight) == (5000, 0, 0, 0)
    info = await nc.jetstream().stream_info("P")
    assert info.state.messages == 5000
    # No retries were needed, so stream order is publish order.
    for seq in (1, 2500, 5000):
        stored = await nc.jetstream().get_msg("P", seq)
        assert stored.data == payload + str(seq - 1).encode()
    await publisher.close()


async def test_same_msg_id_twice_is_stored_once(nc: Client) -> None:
    await make_stream(nc, "P", "p.>")
    publisher = JetStreamPublisher(nc)
    await publisher.publish("p.a", b"first", msg_id="deribit:btc:42")
    await publisher.publish("p.a", b"second", msg_id="deribit:btc:42")
    await publisher.flush()
    assert publisher.published == 1
    assert publisher.duplicates == 1
    info = await nc.jetstream().stream_info("P")
    assert info.state.messages == 1
    stored = await nc.jetstream().get_last_msg("P", "p.a")
    assert stored.data == b"first"
    await publisher.close()


async def test_error_ack_fails_fast_instead_of_hanging(nc: Client) -> None:
    """nats-py 2.16's publish_async never resolves an error ack; ours reports it."""
    ack_timeout_s = 5.0
    await make_stream(nc, "P", "p.>")
    publisher = JetStreamPublisher(nc, expected_stream="NOT_P", ack_timeout_s=ack_timeout_s)
    await publisher.publish("p.a", b"x", msg_id="m1")
    started = time.monotonic()
    with pytest.raises(PublishError) as err:
        await publisher.flush(2 * ack_timeout_s)
    # Failed on the error ack itself, not on a missing ack: before the first ack timeout
    # (the whole ack timeout is the slack for scheduling), and without a retry.
    assert time.monotonic() - started < ack_timeout_s
    assert publisher.retries == 0
    assert err.value.failures[0].msg_id == "m1"
    assert "400" in err.value.failures[0].reason
    assert publisher.failures == 1
    await publisher.flush(1)  # failures are reported once
    await publisher.close()


async def test_subject_without_stream_is_retried_then_reported(nc: Client) -> None:
    publisher = JetStreamPublisher(nc, max_attempts=3, retry_for_s=0.0, retry_backoff_s=0.02)
    await publisher.publish("nostream.x", b"x", msg_id="m1")
    with pytest.raises(PublishError, match="503"):
        await publisher.flush(5)
    assert publisher.retries == 2
    await publisher.close()


async def test_publish_during_outage_lands_exactly_once(restartable_server: EmbeddedNats) -> None:
    nc = await connect(restartable_server.url, "outage-test", reconnect_wait_s=0.1)
    try:
        await make_stream(nc, "P", "p.>")
        publisher = JetStreamPublisher(nc, ack_timeout_s=1.0)
        for i in range(100):
            await publisher.publish("p.before", b"b", msg_id=f"before-{i}")
        await publisher.flush()

        restartable_server.stop()
        await wait_until(lambda: not nc.is_connected)  # a closed socket is seen at once
        # Sent while the server is down: buffered by the client, no ack can come.
        for i in range(50):
            await publisher.publish("p.during", f"d{i}".encode(), msg_id=f"during-{i}")
        assert publisher.in_flight == 50
        await asyncio.sleep(0.3)
        restartable_server.start()

        await publisher.flush(15)
        assert publisher.failures == 0
        info = await nc.jetstream().stream_info("P")
        assert info.state.messages == 150
        during = await nc.jetstream().stream_info("P", subjects_filter="p.during")
        assert during.state.subjects == {"p.during": 50}
        await publisher.close()
    finally:
        await nc.close()


async def test_acks_lost_in_a_server_restart_are_republished_once(
    restartable_server: EmbeddedNats,
) -> None:
    nc = await connect(restartable_server.url, "restart-test", reconnect_wait_s=0.1)
    try:
        await make_stream(nc, "P", "p.>")
        publisher = JetStreamPublisher(nc, ack_timeout_s=1.0)
        for i in range(3000):
            await publisher.publish("p.burst", b"y" * 100, msg_id=f"burst-{i}")
        in_flight_at_stop = publisher.in_flight
        restartable_server.stop()  # some stored, some not, acks of all in flight lost
        await asyncio.sleep(0.2)
        restartable_server.start()
        await publisher.flush(15)
        assert in_flight_at_stop > 0
        assert publisher.failures == 0
        assert publisher.published + publisher.duplicates == 3000
        assert publisher.retries >= 1
        info = await nc.jetstream().stream_info("P")
        assert info.state.messages == 3000
        await publisher.close()
    finally:
        await nc.close()
