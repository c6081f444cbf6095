"""Each stage service in-process over a real nats-server: valid input flows through, an
undecodable message is dead-lettered with its reason (and counted), and processing goes on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, NamedTuple

import nats
import pytest
from nats.js import JetStreamContext

from svc_book import service as book_service
from svc_iv import service as iv_service
from svc_surface import service as surface_service
from volstream.bus.dlq import DLQ_REASON
from volstream.bus.embedded import EmbeddedNats
from volstream.config import Config
from volstream.runtime import provision_streams
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import market_data_pb2 as md_pb

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


@contextlib.asynccontextmanager
async def running(
    run: Callable[[Config], Coroutine[Any, Any, None]], cfg: Config
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run(cfg))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)


class Stored(NamedTuple):
    seq: int
    data: bytes
    headers: dict[str, str]


async def next_message(
    js: JetStreamContext, stream: str, subject: str, after: int, timeout_s: float = 20.0
) -> Stored:
    """The first message on subject with stream sequence > after."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(Exception):
            msg = await js.get_last_msg(stream, subject)
            if (msg.seq or 0) > after:
                return Stored(msg.seq or 0, msg.data or b"", msg.headers or {})
        await asyncio.sleep(0.1)
    raise AssertionError(f"nothing new on {subject}")


def snapshot_batch(seq: int, bid: float, ask: float) -> bytes:
    batch = md_pb.MarketDataBatch(venue="deribit", currency="BTC")
    snap = batch.events.add().book_snapshot
    snap.header.event_time_ns = T0 + seq * NS
    snap.header.source = "test"
    snap.header.sequence = seq
    snap.symbol = "BTC-29DEC23-40000-C"
    snap.bids.add(price_native=bid, size_native=1.0)
    snap.asks.add(price_native=ask, size_native=2.0)
    snap.venue_sequence = seq
    return batch.SerializeToString()


@pytest.fixture
async def bus(nats_server: EmbeddedNats) -> AsyncIterator[tuple[JetStreamContext, Config]]:
    cfg = Config(nats_url=nats_server.url, venues=("deribit",), currencies=("BTC",))
    await provision_streams(nats_server.url, cfg)
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream(), cfg
    await nc.close()


async def test_book_service_dead_letters_garbage_and_keeps_going(bus) -> None:
    js, cfg = bus
    async with running(book_service.run, cfg):
        ack = await js.publish(
            "md.deribit.btc.book", snapshot_batch(1, 0.01, 0.02), headers={"Nats-Msg-Id": "a"}
        )
        first = await next_message(js, "BOOK", "book.deribit.btc", 0)
        tops = book_pb.TopOfBookBatch.FromString(first.data)
        assert tops.tops[0].best_bid_price_native == 0.01
        # The msg-id names the input it came from; the header counts the partition's batches.
        assert first.headers["Nats-Msg-Id"] == f"svc_book.book.deribit.btc.MD.{ack.seq}"
        assert tops.header.sequence == 1 and tops.header.source == "svc_book"

        await js.publish(
            "md.deribit.btc.book", b"\xff\x00 not a protobuf", headers={"Nats-Msg-Id": "b"}
        )
        dead = await next_message(js, "DLQ", "dlq.book.deribit", 0)
        assert dead.data == b"\xff\x00 not a protobuf"
        assert "undecodable MarketDataBatch" in dead.headers[DLQ_REASON]

        await js.publish(
            "md.deribit.btc.book", snapshot_batch(3, 0.015, 0.02), headers={"Nats-Msg-Id": "c"}
        )
        later = await next_message(js, "BOOK", "book.deribit.btc", first.seq)
        after = book_pb.TopOfBookBatch.FromString(later.data)
        assert after.tops[0].best_bid_price_native == 0.015
        # One sequence per partition over both subjects (the keyframe took 2).
        assert after.header.sequence == 3


@pytest.mark.parametrize(
    ("run", "subject", "dlq_subject"),
    [
        (iv_service.run, "book.deribit.btc.md", "dlq.iv.deribit"),
        (iv_service.run, "book.deribit.btc", "dlq.iv.deribit"),
        (surface_service.run, "iv.deribit.btc", "dlq.surface.deribit"),
    ],
)
async def test_stage_dead_letters_undecodable_input(
    bus, run, subject: str, dlq_subject: str
) -> None:
    js, cfg = bus
    async with running(run, cfg):
        await js.publish(subject, b"\x08\x96\x01\xff\xff garbage", headers={"Nats-Msg-Id": "g1"})
        dead = await next_message(js, "DLQ", dlq_subject, 0)
        assert dead.headers[DLQ_REASON].startswith("undecodable")
        assert dead.headers["Volstream-Dlq-Subject"] == subject
