"""The market-data archive (VOLSTREAM_ARCHIVE_MD): every MD message byte for byte, in stream
order, exactly once across a restart; what cannot be archived is dead-lettered with a reason."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

import nats
import pyarrow.parquet as pq

from svc_archive import service as archive_service
from tests.archive.surfaces import T0_NS, surface
from volstream.archive import MD
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.streams import StreamLimits, default_stream_specs, ensure_streams
from volstream.config import Config
from volstream.subjects import Subjects
from volstream.v1 import market_data_pb2 as md_pb

SUBJECTS = ("md.deribit.btc.book", "md.okx.eth.ticker")


def batch(i: int) -> bytes:
    b = md_pb.MarketDataBatch(venue="deribit", currency="BTC")
    b.header.event_time_ns = T0_NS + i * 1_000_000
    b.events.add().index_price.price_usd = 60_000.0 + i
    return b.SerializeToString()


def archived_md(root: Path) -> list[tuple[int, str, bytes]]:
    rows: list[tuple[int, str, bytes]] = []
    for path in (root / MD).rglob("*.parquet"):
        t = pq.read_table(path, columns=["stream_seq", "subject", "data"])
        rows += zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True)
    return sorted(rows)


async def wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_market_data_is_archived_byte_for_byte_and_exactly_once(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js, default_stream_specs(Subjects(), StreamLimits.compact()))
    cfg = Config(
        nats_url=nats_server.url,
        data_dir=tmp_path,
        archive_md=True,
        archive_roll_s=0.2,
    ).validated()
    root = cfg.archive_root()
    published: list[tuple[int, str, bytes]] = []

    async def publish(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            subject = SUBJECTS[i % 2]
            ack = await js.publish(subject, batch(i))
            published.append((ack.seq, subject, batch(i)))

    await publish(0, 40)
    await js.publish("surface.deribit.btc", surface(1).SerializeToString())
    bad_md = await js.publish("md.deribit.btc.book", b"\xff\xfe not protobuf")
    try:
        task = asyncio.create_task(archive_service.run(cfg))
        await wait_for(lambda: len(archived_md(root)) == 40)
        await publish(40, 60)
        await wait_for(lambda: len(archived_md(root)) == 60)
        task.cancel()  # stopped; the restart resumes from the MD manifest
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publish(60, 80)
        task = asyncio.create_task(archive_service.run(cfg))
        await wait_for(lambda: len(archived_md(root)) >= 80)
        await asyncio.sleep(1.0)  # anything repeated would land within a few rolls
        assert archived_md(root) == published
        # The surface went to its own tables, the garbage to dead letters with a reason.
        assert list((root / "surfaces").rglob("*.parquet"))
        dlq = await js.get_last_msg("DLQ", "dlq.archive.deribit")
        assert dlq.headers is not None
        assert dlq.headers["Volstream-Dlq-Seq"] == str(bad_md.seq)
        assert "not a MarketDataBatch" in dlq.headers["Volstream-Dlq-Reason"]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await nc.close()
