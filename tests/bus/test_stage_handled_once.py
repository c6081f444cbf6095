"""The stage kit hands each input to its handler once, also when the durable redelivers it
(volstream/bus/stage.py, "Handled once"): a rewind to an ack floor that lags behind what the
stage handled, a batch retried after a later part failed, a restart with a rebuild. A real
nats-server; the handler is a running sum, so an input handled twice shows in every output
after it."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client

from volstream.bus.embedded import EmbeddedNats
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.rebuild import direct_batch
from volstream.bus.stage import (
    SKIPPED_ALREADY_HANDLED,
    InMessage,
    Output,
    StageInput,
    StageRunner,
)
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry

from .conftest import RunningSum, make_stream, sample_value, wait_until

INPUT = StageInput("IN", "sum-once", ["in.n"])


async def publish(nc: Client, values: range) -> None:
    publisher = JetStreamPublisher(nc)
    for v in values:
        await publisher.publish("in.n", str(v).encode(), f"in-{v}")
    await publisher.close()


async def sums(nc: Client) -> list[int]:
    return [int(m.data) for m in await direct_batch(nc, "OUT", 1, 1000)]


def running_sums(last: int) -> list[int]:
    return [n * (n + 1) // 2 for n in range(1, last + 1)]


async def settled(nc: Client, outputs: int, timeout_s: float = 30.0) -> None:
    """Wait until OUT holds ``outputs`` messages and the durable has nothing pending or
    unacked (a hang guard, not a timing)."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout_s
    while True:
        info = await js.consumer_info(INPUT.stream, INPUT.durable)
        stored = (await js.stream_info("OUT")).state.messages
        if stored >= outputs and (info.num_pending, info.num_ack_pending) == (0, 0):
            return
        assert time.monotonic() < deadline, (stored, info.num_pending, info.num_ack_pending)
        await asyncio.sleep(0.05)


def skipped_metric(service: str) -> float | None:
    text = setup_telemetry(service).render().decode()
    return sample_value(
        text,
        "volstream_stage_inputs_skipped_total",
        service=service,
        reason=SKIPPED_ALREADY_HANDLED,
    )


async def test_inputs_redelivered_by_a_rewind_are_acked_not_handled_again(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    await make_stream(nc, "IN", "in.>")
    await make_stream(nc, "OUT", "out.>")
    handler = RunningSum()
    runner = StageRunner(
        nc, "sum", Subjects(), [INPUT], handler, setup_telemetry("once-rewind"), batch_size=4
    )
    await runner.start()
    await publish(nc, range(1, 11))
    await settled(nc, 10)  # handled, stored and acked

    # The durable forgets its acks, as on a new leader whose consumer state lags (a lost
    # ack): the consumer sees the gap, rewinds to the floor and everything comes again.
    await nc.jetstream().reset_consumer(INPUT.stream, INPUT.durable, 1)
    await publish(nc, range(11, 16))
    await settled(nc, 15)
    await runner.stop()

    assert handler.handled == list(range(1, 16))  # each input once
    assert await sums(nc) == running_sums(15)  # no extra output, none after it different
    assert runner.skipped == 10
    assert skipped_metric("once-rewind") == 10


async def test_a_part_stored_before_a_later_part_failed_is_skipped_on_the_retry(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    """Parts of one batch are stored one by one (``publish_every``); when a later part
    raises, the consumer retries the batch and the parts already stored are skipped."""
    await make_stream(nc, "IN", "in.>")
    await make_stream(nc, "OUT", "out.>")
    gate = asyncio.Event()
    blocked = asyncio.Event()

    class FailsOnceOnTen(RunningSum):
        publish_every = 1

        def __init__(self) -> None:
            super().__init__()
            self.failed = False

        async def handle(self, batch: list[InMessage]) -> list[Output]:
            seqs = [m.stream_seq for m in batch]
            if seqs == [1]:
                blocked.set()
                await gate.wait()  # the rest arrives meanwhile: one batch of 2..10
            if 10 in seqs and not self.failed:
                self.failed = True
                raise RuntimeError("fails once, before touching its state")
            return await super().handle(batch)

    handler = FailsOnceOnTen()
    runner = StageRunner(
        nc,
        "sum",
        Subjects(),
        [INPUT],
        handler,
        setup_telemetry("once-parts"),
        batch_size=100,
        retry_backoff_s=0.01,
    )
    await runner.start()
    await publish(nc, range(1, 2))
    await asyncio.wait_for(blocked.wait(), 30)  # a hang guard
    await publish(nc, range(2, 11))
    await wait_until(lambda: runner.consumers[0].stats.delivered == 10)
    gate.set()
    await settled(nc, 10)
    await runner.stop()

    assert handler.failed
    assert handler.handled == list(range(1, 11))
    assert await sums(nc) == running_sums(10)
    assert runner.skipped == 8  # 2..9 were stored before 10 failed
    assert skipped_metric("once-parts") == 8


@pytest.mark.parametrize("rebuild", [True, False])
async def test_a_restarted_stage_skips_what_its_predecessor_acked(
    nats_server: EmbeddedNats, nc: Client, rebuild: bool
) -> None:
    """The mark starts at the ack floor: with ``rebuild`` the state holds those inputs, so
    a later redelivery of them (the durable rewound below its floor) is skipped too."""
    await make_stream(nc, "IN", "in.>")
    await make_stream(nc, "OUT", "out.>")
    metrics = setup_telemetry(f"once-restart-{rebuild}")
    first = StageRunner(nc, "sum", Subjects(), [INPUT], RunningSum(), metrics, rebuild=rebuild)
    await first.start()
    await publish(nc, range(1, 6))
    await settled(nc, 5)
    await first.stop()

    handler = RunningSum()
    second = StageRunner(nc, "sum", Subjects(), [INPUT], handler, metrics, rebuild=rebuild)
    await second.start()
    rebuilt = list(range(1, 6)) if rebuild else []
    assert handler.handled == rebuilt
    assert second.marks == {(INPUT.stream, INPUT.durable): 5}
    await nc.jetstream().reset_consumer(INPUT.stream, INPUT.durable, 1)
    await publish(nc, range(6, 9))
    await settled(nc, 8)
    await second.stop()

    assert handler.handled == [*rebuilt, 6, 7, 8]
    if rebuild:  # without it the state starts empty: the sums are not continued
        assert await sums(nc) == running_sums(8)
    assert second.skipped == 5
