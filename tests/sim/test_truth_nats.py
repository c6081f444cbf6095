"""The simulator publishes its ground truth on NATS (sim.truth.<venue>.<ccy>)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from simulator import run_simulator
from tests.sim.conftest import small_config
from volstream.bus.embedded import EmbeddedNats
from volstream.subjects import Subjects
from volstream.v1 import surface_pb2


async def test_truth_arrives_on_nats(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await got.put((msg.subject, msg.data))

    await nc.subscribe("sim.truth.>", cb=on_msg)
    handle = await run_simulator(
        small_config(nats_url=nats_server.url, truth_interval_s=0.3, max_expiries=None)
    )
    try:
        seen: dict[str, list[surface_pb2.Surface]] = {}
        while len(seen.get("sim.truth.deribit.btc", [])) < 2:
            subject, data = await asyncio.wait_for(got.get(), 5)
            seen.setdefault(subject, []).append(surface_pb2.Surface.FromString(data))
        assert Subjects().sim_truth("deribit", "BTC") == "sim.truth.deribit.btc"
        first, second = seen["sim.truth.deribit.btc"][:2]
        assert first.model == surface_pb2.SURFACE_MODEL_TRUTH
        assert first.venue == "deribit" and first.currency == "BTC"
        assert len(first.slices) >= 8
        assert second.revision > first.revision
        assert second.header.event_time_ns > first.header.event_time_ns
        # It is the simulator's truth (same slices, latest state).
        live = handle.truth.snapshot("BTC")
        assert [s.expiry_time_ns for s in second.slices] == [s.expiry_ns for s in live.slices]
        assert second.index_price_usd == pytest.approx(live.index, rel=1e-3)
        for sl in second.slices:
            assert sl.raw.b > 0 and abs(sl.raw.rho) < 1 and sl.forward_usd > 0
            assert 0.45 <= sl.metrics.atm_vol <= 0.8
        eth = await asyncio.wait_for(_first(got, "sim.truth.deribit.eth", seen), 5)
        assert eth.currency == "ETH"
    finally:
        await handle.stop()
        await nc.close()


async def _first(
    queue: asyncio.Queue[tuple[str, bytes]],
    subject: str,
    seen: dict[str, list[surface_pb2.Surface]],
) -> surface_pb2.Surface:
    if seen.get(subject):
        return seen[subject][0]
    while True:
        got_subject, data = await queue.get()
        if got_subject == subject:
            return surface_pb2.Surface.FromString(data)


async def test_namespace_prefixes_the_truth_subject(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    sub = await nc.subscribe("replay.t1.sim.truth.deribit.eth")
    handle = await run_simulator(
        small_config(nats_url=nats_server.url, truth_interval_s=0.2, namespace="replay.t1")
    )
    try:
        msg = await sub.next_msg(timeout=5)
        assert surface_pb2.Surface.FromString(msg.data).currency == "ETH"
    finally:
        await handle.stop()
        await nc.close()
