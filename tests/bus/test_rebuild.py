"""A restarted stage with ``rebuild`` gets its state back from its input stream: the same
outputs as without the restart, none published twice (volstream/bus/rebuild.py)."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from volstream.bus.embedded import EmbeddedNats
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.rebuild import direct_batch, rebuild_from_input
from volstream.bus.stage import StageInput, StageRunner
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry

from .conftest import RunningSum, make_stream

INPUT = StageInput("IN", "sum-all", ["in.mine"])


async def publish(nc: Client, values: range) -> None:
    publisher = JetStreamPublisher(nc)
    for v in values:
        # Interleaved with a subject the stage does not consume.
        await publisher.publish("in.mine", str(v).encode(), f"mine-{v}")
        await publisher.publish("in.other", b"1000", f"other-{v}")
    await publisher.close()


async def sums(nc: Client) -> list[int]:
    return [int(m.data) for m in await direct_batch(nc, "OUT", 1, 1000)]


async def run_until(nc: Client, handler: RunningSum, outputs: int, rebuild: bool) -> None:
    runner = StageRunner(
        nc, "sum", Subjects(), [INPUT], handler, setup_telemetry("test"), rebuild=rebuild
    )
    await runner.start()
    for _ in range(200):
        if len(await sums(nc)) >= outputs:
            break
        await asyncio.sleep(0.05)
    await runner.stop()


async def test_a_rebuilt_stage_continues_as_if_never_restarted(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    await make_stream(nc, "IN", "in.>")
    await make_stream(nc, "OUT", "out.>")
    await publish(nc, range(1, 11))
    await run_until(nc, RunningSum(), 10, rebuild=True)  # first start: nothing to rebuild

    await publish(nc, range(11, 21))
    restarted = RunningSum()
    await run_until(nc, restarted, 20, rebuild=True)

    assert await sums(nc) == [n * (n + 1) // 2 for n in range(1, 21)]  # no gap, no copy
    # The ten inputs before the restart were replayed (outputs discarded), then the new ten;
    # the other subject was skipped.
    assert len(restarted.handled) == 20
    assert restarted.handled == sorted(restarted.handled)


async def test_without_rebuild_the_state_is_lost(nats_server: EmbeddedNats, nc: Client) -> None:
    await make_stream(nc, "IN", "in.>")
    await make_stream(nc, "OUT", "out.>")
    await publish(nc, range(1, 4))
    await run_until(nc, RunningSum(), 3, rebuild=False)
    await publish(nc, range(4, 6))
    await run_until(nc, RunningSum(), 5, rebuild=False)
    assert await sums(nc) == [1, 3, 6, 4, 9]  # what `rebuild` exists to prevent


async def test_rebuild_reads_up_to_the_ack_floor_only(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    await make_stream(nc, "IN", "in.>")
    await make_stream(nc, "OUT", "out.>")
    await publish(nc, range(1, 6))
    await run_until(nc, RunningSum(), 5, rebuild=False)
    await publish(nc, range(6, 9))  # not consumed yet: beyond the floor
    handler = RunningSum()
    stats = await rebuild_from_input(nc, INPUT, handler)
    assert handler.total == 15 and stats.handled == 5 and stats.discarded == 5
    assert stats.through_seq == 9  # in.mine 5 is the stream's 9th message
    assert len(await sums(nc)) == 5  # nothing published by a rebuild


async def test_a_stream_that_lost_its_head_gives_a_partial_rebuild(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    await make_stream(nc, "IN", "in.>")
    await make_stream(nc, "OUT", "out.>")
    await publish(nc, range(1, 6))
    await run_until(nc, RunningSum(), 5, rebuild=True)
    await nc.jetstream().purge_stream("IN", seq=3)  # as retention would: seqs 1, 2 gone
    called: list[bool] = []

    async def continue_counters() -> None:
        called.append(True)

    handler = RunningSum()
    runner = StageRunner(
        nc,
        "sum",
        Subjects(),
        [INPUT],
        handler,
        setup_telemetry("test"),
        rebuild=True,
        after_partial_rebuild=continue_counters,
    )
    await runner.start()
    await runner.stop()
    assert called == [True]
    assert handler.total == 15 - 1  # in.mine 1 (seq 1) is gone
