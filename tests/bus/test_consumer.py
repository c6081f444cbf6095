"""PullConsumer against a real nats-server: order, batched acks, resume, failures, lag."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy

from volstream.bus.connection import connect
from volstream.bus.consumer import PullConsumer, in_message, parse_ack_metadata
from volstream.bus.dlq import DLQ_DELIVERED, DLQ_REASON, DLQ_SERVICE, DLQ_SUBJECT, DeadLetters
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.streams import ConsumerSpec, ensure_consumer, ensure_streams
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry

from .conftest import CuttableProxy, make_stream, sample_value, small_stream, wait_until


async def publish_numbers(
    nc: Client, start: int, stop: int, subject: str = "c.deribit.btc"
) -> None:
    publisher = JetStreamPublisher(nc)
    for i in range(start, stop):
        await publisher.publish(subject, str(i).encode(), msg_id=f"n-{i}")
    await publisher.close()


class Recorder:
    """A handler that records numbers and batch sizes; optionally fails on chosen values."""

    def __init__(self, poison: set[int] | None = None) -> None:
        self.seen: list[int] = []
        self.batches: list[int] = []
        self.poison = poison or set()
        self.attempts: dict[int, int] = {}

    async def __call__(self, msgs: list[Msg]) -> None:
        values = [int(m.data) for m in msgs]
        for v in values:
            self.attempts[v] = self.attempts.get(v, 0) + 1
        bad = self.poison.intersection(values)
        if bad:
            raise ValueError(f"cannot handle {sorted(bad)}")
        self.batches.append(len(values))
        self.seen.extend(values)


class StallingRecorder(Recorder):
    """Records until `after` values, then holds the next batch unacked (a hung instance)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.stalled = asyncio.Event()

    async def __call__(self, msgs: list[Msg]) -> None:
        if len(self.seen) >= self.after:
            self.stalled.set()
            await asyncio.Event().wait()  # never returns: this batch is never acked
        await super().__call__(msgs)


def test_parse_ack_metadata_both_layouts() -> None:
    v1 = parse_ack_metadata("$JS.ACK.MD.svc.3.1042.77.1795241354302951940.12")
    assert v1 is not None
    assert (v1.stream, v1.consumer, v1.num_delivered) == ("MD", "svc", 3)
    assert (v1.stream_seq, v1.consumer_seq, v1.num_pending) == (1042, 77, 12)
    v2 = parse_ack_metadata("$JS.ACK.hub.ACCHASH.MD.svc.1.5.6.1795241354302951940.0.r4nd")
    assert v2 is not None
    assert (v2.domain, v2.stream, v2.stream_seq, v2.consumer_seq) == ("hub", "MD", 5, 6)
    assert parse_ack_metadata("_INBOX.abc.1") is None
    assert parse_ack_metadata("$JS.ACK.MD.svc.x.1.2.3.4") is None


async def test_5000_messages_in_order_across_batches_with_batched_acks(nc: Client) -> None:
    await make_stream(nc, "C", "c.>")
    await publish_numbers(nc, 0, 5000)
    await ensure_consumer(nc.jetstream(), ConsumerSpec("C", "ordered", ["c.>"]))
    recorder = Recorder()
    consumer = PullConsumer(nc, "C", "ordered", recorder, batch_size=200)
    await consumer.start()
    await wait_until(lambda: len(recorder.seen) >= 5000)
    await consumer.stop()

    assert recorder.seen == list(range(5000))
    assert max(recorder.batches) <= 200
    assert 25 <= len(recorder.batches) < 5000
    assert consumer.stats.batches == len(recorder.batches)
    info = await nc.jetstream().consumer_info("C", "ordered")
    assert info.config.ack_policy == AckPolicy.ALL
    assert info.ack_floor.stream_seq == 5000
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_durable_resume_after_stop_without_duplicates_or_loss(nc: Client) -> None:
    await make_stream(nc, "C", "c.>")
    await publish_numbers(nc, 0, 3000)
    await ensure_consumer(nc.jetstream(), ConsumerSpec("C", "resume", ["c.>"], ack_wait_s=30))
    recorder = Recorder()
    first = PullConsumer(nc, "C", "resume", recorder, batch_size=100)
    await first.start()
    await wait_until(lambda: len(recorder.seen) >= 1000)
    await first.stop()  # mid-stream: batches were in flight
    stopped_at = len(recorder.seen)
    assert stopped_at < 3000

    await publish_numbers(nc, 3000, 4000)
    second = PullConsumer(nc, "C", "resume", recorder, batch_size=100)
    await second.start()
    await wait_until(lambda: len(recorder.seen) >= 4000)
    await asyncio.sleep(0.2)  # anything extra (a duplicate) would show up now
    await second.stop()
    assert recorder.seen == list(range(4000))


async def test_crashed_instance_is_resumed_from_the_ack_floor(nats_server: EmbeddedNats) -> None:
    """A client that dies with deliveries in hand must not have them acked by the next one."""
    setup = await connect(nats_server.url, "setup")
    await make_stream(setup, "C", "c.>")
    await publish_numbers(setup, 0, 2000)
    await ensure_consumer(setup.jetstream(), ConsumerSpec("C", "crash", ["c.>"], ack_wait_s=30))

    doomed = await connect(nats_server.url, "doomed")
    recorder = StallingRecorder(after=500)
    first = PullConsumer(doomed, "C", "crash", recorder, batch_size=100)
    await first.start()
    await asyncio.wait_for(recorder.stalled.wait(), 20)  # a batch is in hand, unacked
    await doomed.close()  # no graceful stop: unacked deliveries stay pending for 30 s
    await first.stop(timeout_s=1.0)  # only tidies up the tasks: the connection is gone
    handled = list(recorder.seen)

    info = await setup.jetstream().consumer_info("C", "crash")
    assert info.num_ack_pending > 0
    recorder2 = Recorder()
    second = PullConsumer(setup, "C", "crash", recorder2, batch_size=100)
    await second.start()
    await wait_until(lambda: recorder2.seen[-1:] == [1999], timeout_s=10)
    await second.stop()
    assert second.stats.resets == 1
    # Everything after the last ack comes back, in order, at once (not after ack_wait).
    assert recorder2.seen == list(range(recorder2.seen[0], 2000))
    assert recorder2.seen[0] <= handled[-1] + 1
    await setup.close()


async def test_failing_handler_redelivers_then_dead_letters_the_poison(nc: Client) -> None:
    subjects = Subjects()
    await ensure_streams(
        nc.jetstream(),
        [small_stream("C", ("c.>",)), small_stream("DLQ", (subjects.dlq_all(),))],
    )
    await publish_numbers(nc, 0, 300)
    await ensure_consumer(
        nc.jetstream(), ConsumerSpec("C", "poisoned", ["c.>"], ack_wait_s=30, max_deliver=4)
    )
    metrics = setup_telemetry("bus-test-consumer", None)
    publisher = JetStreamPublisher(nc)
    dead_letters = DeadLetters(publisher, subjects, "svc_test", metrics)
    recorder = Recorder(poison={137})
    consumer = PullConsumer(
        nc,
        "C",
        "poisoned",
        recorder,
        batch_size=50,
        dead_letters=dead_letters,
        metrics=metrics,
        retry_backoff_s=0.02,
    )
    await consumer.start()
    await wait_until(lambda: recorder.seen[-1:] == [299])
    await consumer.stop()

    expected = [i for i in range(300) if i != 137]
    assert recorder.seen == expected  # order kept around the failure, nothing lost
    # In its batch, then alone three times: max_deliver 4 -> dead-lettered at failure 3.
    assert recorder.attempts[137] == 4
    assert consumer.stats.dead_letters == 1
    assert consumer.stats.failures == 4
    assert consumer.stats.retries == 2
    # Isolating the culprit re-ran only the batch it came in (at most 50 neighbours, twice).
    rerun = sorted(i for i, n in recorder.attempts.items() if n > 1 and i != 137)
    assert len(rerun) < 50
    assert all(recorder.attempts[i] == 2 for i in rerun)
    assert {*rerun, 137} == set(range(min(rerun[0], 137), max(rerun[-1], 137) + 1))

    dlq = await nc.jetstream().get_last_msg("DLQ", "dlq.svc_test.deribit")
    assert dlq.data == b"137"
    assert dlq.headers is not None
    assert dlq.headers[DLQ_REASON] == "ValueError: cannot handle [137]"
    assert dlq.headers[DLQ_SERVICE] == "svc_test"
    assert dlq.headers[DLQ_SUBJECT] == "c.deribit.btc"
    assert dlq.headers[DLQ_DELIVERED] == "3"
    info = await nc.jetstream().consumer_info("C", "poisoned")
    assert info.ack_floor.stream_seq == 300
    assert info.num_ack_pending == 0
    text = metrics.render().decode()
    assert (
        sample_value(
            text, "volstream_dead_letters_total", reason="ValueError", service="bus-test-consumer"
        )
        == 1.0
    )
    await publisher.close()


async def test_consumer_lag_is_reported(nc: Client) -> None:
    await make_stream(nc, "C", "c.>")
    await publish_numbers(nc, 0, 1000)
    await ensure_consumer(nc.jetstream(), ConsumerSpec("C", "laggy", ["c.>"]))
    metrics = setup_telemetry("bus-test-lag", None)
    gate = asyncio.Event()
    lags: list[int] = []
    consumer: PullConsumer

    async def slow(msgs: list[Msg]) -> None:
        lags.append(consumer.lag)
        if not gate.is_set():
            await gate.wait()

    consumer = PullConsumer(nc, "C", "laggy", slow, batch_size=100, metrics=metrics)
    await consumer.start()
    await wait_until(lambda: len(lags) >= 1)
    # First batch in hand, nothing acked: the server knows 1000 are outstanding.
    assert await consumer.refresh_lag() == 1000
    labels = {"consumer": "laggy", "service": "bus-test-lag", "stream": "C"}
    assert sample_value(metrics.render().decode(), "volstream_consumer_lag", **labels) == 1000.0
    gate.set()
    await wait_until(lambda: consumer.stats.processed == 1000)
    assert consumer.lag == 0
    for _ in range(100):  # acks are asynchronous: the server gets the last one shortly
        if await consumer.refresh_lag() == 0:
            break
        await asyncio.sleep(0.01)
    assert consumer.lag == 0
    await consumer.stop()
    text = metrics.render().decode()
    assert sample_value(text, "volstream_consumer_lag", **labels) == 0.0
    assert sample_value(text, "volstream_events_in_total", **labels) == 1000.0


async def test_consumer_survives_a_server_restart(restartable_server: EmbeddedNats) -> None:
    nc = await connect(restartable_server.url, "restart-consumer", reconnect_wait_s=0.1)
    try:
        await make_stream(nc, "C", "c.>")
        await publish_numbers(nc, 0, 500)
        await ensure_consumer(nc.jetstream(), ConsumerSpec("C", "survivor", ["c.>"]))
        recorder = Recorder()
        consumer = PullConsumer(
            nc, "C", "survivor", recorder, batch_size=50, idle_heartbeat_s=0.5, expires_s=5
        )
        await consumer.start()
        await wait_until(lambda: len(recorder.seen) >= 500)
        restartable_server.stop()
        await asyncio.sleep(0.3)
        restartable_server.start()
        await publish_numbers(nc, 500, 1000)
        await wait_until(lambda: recorder.seen[-1:] == [999], timeout_s=15)
        await consumer.stop()
        assert recorder.seen == list(range(1000))
    finally:
        await nc.close()


async def test_in_message_carries_metadata(nc: Client) -> None:
    await make_stream(nc, "C", "c.>")
    await publish_numbers(nc, 0, 3)
    await ensure_consumer(nc.jetstream(), ConsumerSpec("C", "meta", ["c.>"]))
    got: list[Msg] = []

    async def keep(msgs: list[Msg]) -> None:
        got.extend(msgs)

    consumer = PullConsumer(nc, "C", "meta", keep)
    await consumer.start()
    await wait_until(lambda: len(got) == 3)
    await consumer.stop()
    first = in_message(got[0])
    assert (first.subject, first.data, first.stream_seq) == ("c.deribit.btc", b"0", 1)
    assert first.metadata.stream == "C" and first.metadata.num_delivered == 1
    assert first.headers is not None and first.headers["Nats-Msg-Id"] == "n-0"


async def test_deliveries_lost_on_the_wire_are_redelivered_in_order(
    nats_server: EmbeddedNats,
) -> None:
    """Deliveries lost with a broken connection must not be acked by the next AckAll ack."""
    proxy = await CuttableProxy(nats_server.port).start()
    admin = await connect(nats_server.url, "admin")
    nc = await connect(proxy.url, "lossy", reconnect_wait_s=0.05)
    try:
        await make_stream(admin, "C", "c.>")
        await publish_numbers(admin, 0, 3000)
        await ensure_consumer(admin.jetstream(), ConsumerSpec("C", "lossy", ["c.>"]))
        seen: list[int] = []

        async def slowish(msgs: list[Msg]) -> None:
            seen.extend(int(m.data) for m in msgs)
            await asyncio.sleep(0.01)

        consumer = PullConsumer(
            nc, "C", "lossy", slowish, batch_size=100, idle_heartbeat_s=0.5, expires_s=5
        )
        await consumer.start()
        await wait_until(lambda: len(seen) >= 300)
        await proxy.cut(blackhole_s=0.3)  # deliveries made meanwhile never arrive
        await wait_until(lambda: 2999 in seen, timeout_s=20)
        await consumer.stop()
        assert consumer.stats.resets >= 1  # the loss was detected and rewound
        assert list(dict.fromkeys(seen)) == list(range(3000))  # nothing lost, in order
        info = await admin.jetstream().consumer_info("C", "lossy")
        assert info.ack_floor.stream_seq == 3000
    finally:
        await nc.close()
        await admin.close()
        await proxy.close()
