"""Partition-parallel replay (replay/parallel.py) stores exactly what the single-process
replay stores: the same messages in the same order, with the same stream positions,
msg-ids and dead letters, wall-clock stamps aside. Input: a few seconds of the simulator
through the connector, from a real nats-server's MD stream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.golden_stages import fill_md, normalised
from replay.parallel import ParallelReplay, partition_groups
from replay.run import InProcessReplay
from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.inprocess import Published
from volstream.bus.stage import Output
from volstream.config import Config, Partition
from volstream.subjects import Subjects

NAMESPACE = "t.par"
VENUES = ("deribit", "okx")
CURRENCIES = ("BTC", "ETH")
CHUNK = 64

Stored = tuple[str, int, str, bytes, str, tuple[tuple[str, str], ...]]


async def _read_md(url: str) -> list[tuple[str, bytes]]:
    nc = await connect(url, "test-parallel")
    try:
        js = nc.jetstream()
        info = await js.stream_info("MD")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("MD", seq, direct=True)
            out.append((f"{NAMESPACE}.{msg.subject}", msg.data or b""))
        return out
    finally:
        await nc.drain()


@pytest.fixture(scope="module")
def md(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, bytes]]]:
    tmp = tmp_path_factory.mktemp("parallel")
    with EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        asyncio.run(fill_md(nats.url, 8.0, VENUES, CURRENCIES))
        yield asyncio.run(_read_md(nats.url))


def _comparable(stored: list[Published]) -> list[Stored]:
    prefix = f"{NAMESPACE}."
    return [
        (
            m.stream,
            m.stream_seq,
            m.subject,
            normalised(m.subject[len(prefix) :], m.payload, zero_sequence=False),
            m.msg_id,
            tuple(sorted((m.headers or {}).items())),
        )
        for m in stored
    ]


def _dead(dead: list[Output]) -> list[tuple[str, bytes, str, tuple[tuple[str, str], ...]]]:
    return [
        (d.subject, d.payload, d.msg_id, tuple(sorted((d.headers or {}).items()))) for d in dead
    ]


async def _run(
    engine: InProcessReplay | ParallelReplay, md: list[tuple[str, bytes]], ahead: int
) -> tuple[list[Published], list[Output], dict[str, float]]:
    stored: list[Published] = []
    dead: list[Output] = []
    for at in range(0, len(md), CHUNK):
        engine.submit(md[at : at + CHUNK])
        while engine.in_flight > ahead:
            out, letters = await engine.collect()
            stored += out
            dead += letters
    while engine.in_flight:
        out, letters = await engine.collect()
        stored += out
        dead += letters
    return stored, dead, await engine.close()


async def test_parallel_replay_stores_what_one_process_stores(
    md: list[tuple[str, bytes]],
) -> None:
    cfg = Config(venues=VENUES, currencies=CURRENCIES, namespace=NAMESPACE)
    one, one_dead, one_cpu = await _run(InProcessReplay(cfg, Subjects(NAMESPACE)), md, 0)
    many, many_dead, many_cpu = await _run(ParallelReplay(cfg, workers=2), md, 3)
    kinds = {m.subject.split(".")[2] for m in one}
    assert {"book", "iv", "surface"} <= kinds
    assert any(".surface.all." in m.subject for m in one)
    assert _comparable(many) == _comparable(one)
    assert _dead(many_dead) == _dead(one_dead)
    assert set(one_cpu) == {"book", "iv", "surface"}
    assert set(many_cpu) == {"book", "iv", "surface", "surface.all"}


def test_partition_groups_deal_partitions_round_robin() -> None:
    parts = tuple(Partition(v, c) for v in ("deribit", "okx", "bybit") for c in CURRENCIES)
    two = partition_groups(parts, 2)
    assert [{p.currency for p in g} for g in two] == [{"BTC"}, {"ETH"}]
    assert partition_groups(parts, 10) == [(p,) for p in parts]
    assert partition_groups(parts, 0) == [parts]
