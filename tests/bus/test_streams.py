"""Streams and consumers as code, against a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, DeliverPolicy, StorageType, StoreCompression

from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.streams import (
    ConsumerConfigConflict,
    ConsumerSpec,
    StreamConfigConflict,
    StreamLimits,
    default_stream_specs,
    ensure_consumer,
    ensure_streams,
)
from volstream.subjects import Subjects


async def test_default_streams_are_created_once_and_pick_up_changed_limits(nc: Client) -> None:
    js = nc.jetstream()
    specs = default_stream_specs(Subjects(), StreamLimits())
    assert [s.name for s in specs] == ["MD", "BOOK", "IV", "SURFACE", "DLQ", "SIM"]

    first = await ensure_streams(js, specs)
    second = await ensure_streams(js, specs)
    for name, info in first.items():
        assert second[name].created == info.created  # not recreated
    assert first["MD"].config.subjects == ["md.>"]
    assert first["SURFACE"].config.allow_direct is True
    assert first["MD"].config.storage == StorageType.FILE

    # Data survives an update of the limits.
    ack = await js.publish("md.deribit.btc.book", b"x", headers={"Nats-Msg-Id": "m1"})
    assert ack.stream == "MD"
    changed = default_stream_specs(
        Subjects(), StreamLimits(md_max_age_s=7200.0, md_max_bytes=10**9)
    )
    third = await ensure_streams(js, changed)
    md = third["MD"]
    assert md.config.max_age == pytest.approx(7200.0)
    assert md.config.max_bytes == 10**9
    assert md.state.messages == 1
    info = await js.stream_info("MD")
    assert info.config.max_age == pytest.approx(7200.0)


async def test_busy_streams_are_s2_compressed_and_an_existing_stream_is_switched_in_place(
    nc: Client,
) -> None:
    js = nc.jetstream()
    plain = StreamLimits(compressed=())
    await ensure_streams(js, default_stream_specs(Subjects(), plain))
    assert (await js.stream_info("MD")).config.compression == StoreCompression.NONE
    await js.publish("md.deribit.btc.book", b"kept", headers={"Nats-Msg-Id": "m1"})
    infos = await ensure_streams(js, default_stream_specs(Subjects()))
    compressed = {n for n, i in infos.items() if i.config.compression == StoreCompression.S2}
    assert compressed == {"MD", "BOOK", "IV", "SURFACE"}
    assert (await js.get_last_msg("MD", "md.deribit.btc.book")).data == b"kept"


def test_every_default_age_limit_is_what_its_bytes_hold_at_the_measured_rate() -> None:
    # Bytes per second measured under `up --sim` at the default rate (StreamLimits docstring).
    measured = {"MD": 2.3e6, "BOOK": 0.9e6, "IV": 6e6, "SURFACE": 2e6}
    for spec in default_stream_specs(Subjects()):
        if spec.name in measured:
            holds_s = spec.max_bytes / measured[spec.name]
            assert 0.9 * holds_s <= spec.max_age_s <= holds_s, (spec.name, holds_s)


async def test_namespace_gets_its_own_streams(nc: Client) -> None:
    js = nc.jetstream()
    live = await ensure_streams(js, default_stream_specs(Subjects()))
    replay = await ensure_streams(
        js, default_stream_specs(Subjects("replay.run7"), StreamLimits.compact())
    )
    assert "SURFACE_REPLAY_RUN7" in replay
    assert replay["SURFACE_REPLAY_RUN7"].config.subjects == ["replay.run7.surface.>"]
    await js.publish("replay.run7.surface.deribit.btc", b"s")
    assert (await js.stream_info("SURFACE_REPLAY_RUN7")).state.messages == 1
    assert (await js.stream_info("SURFACE")).state.messages == 0
    assert set(live).isdisjoint(replay)


async def test_services_starting_together_race_safely(nats_server: EmbeddedNats) -> None:
    clients = [await connect(nats_server.url, f"svc{i}") for i in range(4)]
    try:
        specs = default_stream_specs(Subjects(), StreamLimits())
        results = await asyncio.gather(*(ensure_streams(c.jetstream(), specs) for c in clients))
        created = {r["MD"].created for r in results}
        assert len(created) == 1
        names = [str(i.config.name) for i in await clients[0].jetstream().streams_info()]
        assert sorted(names) == sorted(s.name for s in specs)
    finally:
        for c in clients:
            await c.close()


async def test_storage_change_is_refused_not_applied(nc: Client) -> None:
    js = nc.jetstream()
    spec = default_stream_specs(Subjects())[1]
    await ensure_streams(js, [spec])
    with pytest.raises(StreamConfigConflict):
        await ensure_streams(js, [dataclasses.replace(spec, storage=StorageType.MEMORY)])


async def test_consumer_is_idempotent_updates_and_refuses_policy_change(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js, default_stream_specs(Subjects()))
    spec = ConsumerSpec(
        stream="MD",
        durable="svc_book",
        filter_subjects=["md.deribit.*.book", "md.okx.*.book"],
        ack_wait_s=10.0,
        max_deliver=4,
    )
    first = await ensure_consumer(js, spec)
    assert first.config.ack_policy == AckPolicy.ALL
    assert sorted(first.config.filter_subjects or []) == sorted(spec.filter_subjects)
    again = await ensure_consumer(js, spec)
    assert again.created == first.created

    wider = dataclasses.replace(
        spec, filter_subjects=[*spec.filter_subjects, "md.bybit.*.book"], max_deliver=6
    )
    updated = await ensure_consumer(js, wider)
    assert updated.config.max_deliver == 6
    assert len(updated.config.filter_subjects or []) == 3

    with pytest.raises(ConsumerConfigConflict):
        await ensure_consumer(js, dataclasses.replace(wider, deliver_policy=DeliverPolicy.NEW))
