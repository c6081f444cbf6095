"""StageRunner end to end on a real nats-server: input stream -> handler -> output stream."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from volstream.bus.connection import connect
from volstream.bus.dlq import DLQ_REASON, DLQ_SUBJECT
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.stage import InMessage, Output, StageInput, StageRunner, dead_letter_output
from volstream.bus.streams import StreamLimits, default_stream_specs, ensure_streams
from volstream.subjects import Subjects, parse_partition
from volstream.telemetry import setup_telemetry

from .conftest import sample_value

NS = Subjects("stagetest")
SERVICE = "svc_upper"


class Upper:
    """One output per input (upper-cased), dead letters for undecodable input."""

    def __init__(self) -> None:
        self.handled = 0

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        outputs: list[Output] = []
        for msg in batch:
            self.handled += 1
            if msg.data.startswith(b"bad"):
                outputs.append(dead_letter_output(NS, SERVICE, msg, "decode_error: not a tick"))
                continue
            _stage, venue, ccy, _rest = parse_partition(msg.subject, NS.namespace)
            outputs.append(
                Output(
                    subject=NS.book(venue, ccy),
                    payload=msg.data.upper(),
                    # Deterministic: derived from the input's stream sequence.
                    msg_id=f"{SERVICE}:{msg.metadata.stream}:{msg.stream_seq}",
                    headers={"Volstream-Input-Seq": str(msg.stream_seq)},
                )
            )
        return outputs


class CrashAfterFlush(JetStreamPublisher):
    """A real publisher whose process 'dies' right after the Nth flush: outputs stored, inputs
    not yet acked (the window that msg-id dedupe exists for)."""

    def __init__(self, nc: Client, crash_at: int) -> None:
        super().__init__(nc)
        self.crash_at = crash_at
        self.flushes = 0
        self.crashed = asyncio.Event()

    async def flush(self, timeout_s: float = 10.0) -> None:
        await super().flush(timeout_s)
        self.flushes += 1
        if self.flushes == self.crash_at:
            await self._nc.close()
            self.crashed.set()


def inputs() -> list[StageInput]:
    return [
        StageInput(
            stream=NS.stream_name("MD"),
            durable=SERVICE,
            filter_subjects=[NS.md_filter("deribit"), NS.md_filter("okx")],
        )
    ]


async def publish_inputs(nc: Client, start: int, stop: int) -> None:
    publisher = JetStreamPublisher(nc)
    for i in range(start, stop):
        venue = "deribit" if i % 2 else "okx"
        data = b"bad" if i == 700 else f"tick-{i}".encode()
        await publisher.publish(NS.md(venue, "btc", "ticker"), data, msg_id=f"in-{i}")
    await publisher.close()


async def read_stream(nc: Client, stream: str, subject: str) -> list[bytes]:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out: list[bytes] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        if (msg.subject or "").startswith(subject.rstrip(">")):
            out.append(msg.data or b"")
    return out


async def wait_for_stream(nc: Client, stream: str, count: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while (await nc.jetstream().stream_info(stream)).state.messages < count:
        assert time.monotonic() < deadline, f"{stream} did not reach {count} messages"
        await asyncio.sleep(0.05)


async def test_stage_end_to_end_with_crash_and_restart(nats_server: EmbeddedNats) -> None:
    admin = await connect(nats_server.url, "admin")
    await ensure_streams(admin.jetstream(), default_stream_specs(NS, StreamLimits.compact()))
    metrics = setup_telemetry("bus-test-stage", None)
    await publish_inputs(admin, 0, 1500)
    expected = [f"TICK-{i}".encode() for i in range(1500) if i != 700]

    # 1) A runner that dies right after storing the outputs of its 3rd batch, before acking.
    doomed = await connect(nats_server.url, "doomed")
    crashing = CrashAfterFlush(doomed, crash_at=3)
    first = StageRunner(
        doomed, SERVICE, NS, inputs(), Upper(), metrics, batch_size=100, publisher=crashing
    )
    await first.start()
    await asyncio.wait_for(crashing.crashed.wait(), 10)
    await first.stop()
    stored_before_restart = crashing.published
    assert 0 < stored_before_restart < 1500

    # 2) A fresh runner resumes from the durable; the re-handled batch is deduplicated.
    nc2 = await connect(nats_server.url, "second")
    handler2 = Upper()
    second = StageRunner(nc2, SERVICE, NS, inputs(), handler2, metrics, batch_size=100)
    await second.start()
    await asyncio.sleep(0.05)
    await second.stop()  # graceful stop mid-stream

    # 3) and a third one finishes the job, with more input arriving meanwhile.
    nc3 = await connect(nats_server.url, "third")
    third = StageRunner(nc3, SERVICE, NS, inputs(), Upper(), metrics, batch_size=100)
    await third.start()
    await publish_inputs(admin, 1500, 1600)
    expected += [f"TICK-{i}".encode() for i in range(1500, 1600)]
    await wait_for_stream(admin, NS.stream_name("BOOK"), len(expected))
    await asyncio.sleep(0.2)  # a duplicate would land now
    await third.stop()

    assert second.publisher.duplicates + third.publisher.duplicates >= 1  # dedupe did work
    outputs = await read_stream(admin, NS.stream_name("BOOK"), NS.stage_all("book"))
    assert outputs == expected  # no loss, no duplicate, in input order

    dlq = await admin.jetstream().get_last_msg(NS.stream_name("DLQ"), NS.dlq(SERVICE, "okx"))
    assert dlq.data == b"bad"
    assert dlq.headers is not None
    assert dlq.headers[DLQ_REASON] == "decode_error: not a tick"
    assert dlq.headers[DLQ_SUBJECT] == NS.md("okx", "btc", "ticker")
    assert (await admin.jetstream().stream_info(NS.stream_name("DLQ"))).state.messages == 1

    info = await admin.jetstream().consumer_info(NS.stream_name("MD"), SERVICE)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    text = metrics.render().decode()
    svc = "bus-test-stage"
    assert sample_value(text, "volstream_dead_letters_total", reason="decode_error", service=svc)
    # Every output the metered runners published was acked (duplicates included).
    acked = sum(r.publisher.published + r.publisher.duplicates for r in (second, third))
    assert sample_value(text, "volstream_events_out_total", service=svc) == acked
    for client in (nc2, nc3, admin):
        await client.close()


async def test_stage_runs_cpu_work_off_the_loop(nc: Client) -> None:
    """A handler that offloads work keeps the loop free: heartbeats/acks keep their timing."""
    work_s = 0.25  # per batch, blocking (a solver); on the loop it would stall it this long
    probe_s = 0.005
    await ensure_streams(nc.jetstream(), default_stream_specs(NS, StreamLimits.compact()))
    await publish_inputs(nc, 0, 200)
    loop = asyncio.get_running_loop()

    class Offloading(Upper):
        async def handle(self, batch: list[InMessage]) -> list[Output]:
            await loop.run_in_executor(None, time.sleep, work_s)  # stands in for a solver
            return await super().handle(batch)

    metrics = setup_telemetry("bus-test-stage-cpu", None)
    runner = StageRunner(nc, SERVICE, NS, inputs(), Offloading(), metrics, batch_size=50)
    await runner.start()
    worst_lag = 0.0
    deadline = time.monotonic() + 40 * work_s  # 4 batches of work_s: bounds a hang only
    while runner.outputs < 200 and time.monotonic() < deadline:
        before = time.perf_counter()
        await asyncio.sleep(probe_s)
        worst_lag = max(worst_lag, time.perf_counter() - before - probe_s)
    await runner.stop()
    assert runner.outputs == 200
    # Work done on the loop would delay a probe by about work_s; half of it is the slack
    # allowed for scheduling on a loaded machine.
    assert worst_lag < work_s / 2


async def test_publish_every_sends_each_part_before_handling_the_next(nc: Client) -> None:
    """With ``publish_every = 1`` a part's outputs are on the bus before the next part of the
    same batch is handled (a slow fit of one key no longer holds back another's surface);
    the batch is still acked once, after every output is stored."""
    await ensure_streams(nc.jetstream(), default_stream_specs(NS, StreamLimits.compact()))
    await publish_inputs(nc, 0, 40)
    book = NS.stream_name("BOOK")

    class Early(Upper):
        publish_every = 1

        def __init__(self) -> None:
            super().__init__()
            self.parts: list[int] = []

        async def handle(self, batch: list[InMessage]) -> list[Output]:
            self.parts.append(len(batch))
            # Every earlier output is stored before this part is handled (times out if the
            # runner held them back until the end of the batch).
            await wait_for_stream(nc, book, self.handled, timeout_s=5)
            return await super().handle(batch)

    metrics = setup_telemetry("bus-test-stage-early", None)
    handler = Early()
    runner = StageRunner(nc, SERVICE, NS, inputs(), handler, metrics, batch_size=10)
    await runner.start()
    await wait_for_stream(nc, book, 40)
    await runner.stop()
    assert handler.parts == [1] * 40
    outputs = await read_stream(nc, book, NS.stage_all("book"))
    assert outputs == [f"TICK-{i}".encode() for i in range(40)]
    info = await nc.jetstream().consumer_info(NS.stream_name("MD"), SERVICE)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    # Fewer batches than parts: the parts came in batches of up to 10.
    assert runner.batches < 40
