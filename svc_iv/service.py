"""IV service runtime: instruments, tickers, index (md.*) and tops (book.*) -> IvCore per
partition -> per-expiry smiles on iv.<venue>.<ccy>.

Smiles are flushed on a cadence in event time (cfg.iv_interval_ms). At start-up the latest
instrument set and book keyframe of each owned partition are read back from JetStream, so a
restarted replica prices its chains as soon as tickers arrive.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from google.protobuf.message import DecodeError

from svc_iv import wire
from svc_iv.core import IvCore
from volstream.bus.stage import (
    InMessage,
    Output,
    StageInput,
    dead_letter_output,
    output_msg_id,
)
from volstream.config import Config, Partition
from volstream.runtime import (
    ServiceContext,
    durable_name,
    last_message,
    service_context,
    wall_ns,
)
from volstream.subjects import parse_partition
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

log = logging.getLogger("svc_iv")

SERVICE = "iv"


class IvStage:
    def __init__(self, ctx: ServiceContext, partitions: tuple[Partition, ...]) -> None:
        self.ctx = ctx
        self.interval_ns = ctx.cfg.iv_interval_ms * 1_000_000
        self.cores: dict[tuple[str, str], IvCore] = {
            (p.venue, p.currency.upper()): IvCore(p.venue, p.currency.upper()) for p in partitions
        }
        self.now_ns: dict[tuple[str, str], int] = {}
        self.last_flush_ns: dict[tuple[str, str], int] = {}
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iv")

    async def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def bootstrap(self) -> None:
        """Latest instrument set and book keyframe per partition, before consuming."""
        for venue, ccy in self.cores:
            for stream, subject in (
                ("MD", self.ctx.subjects.md(venue, ccy, "instrument")),
                ("BOOK", self.ctx.subjects.book(venue, ccy) + ".keyframe"),
            ):
                data = await last_message(self.ctx, stream, subject)
                if data is not None:
                    await asyncio.get_running_loop().run_in_executor(
                        self.pool, self._fold, subject, data
                    )
        log.info("bootstrapped %d partitions", len(self.cores))

    def _fold(self, subject: str, data: bytes) -> tuple[str, str] | None:
        """Apply one input message to its core; the partition key, None if not ours."""
        stage, venue, ccy_token, _rest = parse_partition(subject, self.ctx.subjects.namespace)
        key = (venue, ccy_token.upper())
        core = self.cores.get(key)
        if core is None:
            return None
        latest = self.now_ns.get(key, 0)
        if stage == "book":
            tops = book_pb.TopOfBookBatch.FromString(data)
            for top in tops.tops:
                core.on_top(top)
            latest = max(latest, tops.header.event_time_ns)
        else:
            md = md_pb.MarketDataBatch.FromString(data)
            for event in md.events:
                case = event.WhichOneof("event")
                if case == "ticker":
                    core.on_ticker(event.ticker)
                    latest = max(latest, event.ticker.header.event_time_ns)
                elif case == "index_price":
                    core.on_index(event.index_price)
                    latest = max(latest, event.index_price.header.event_time_ns)
                elif case == "instrument_set":
                    core.on_instruments(event.instrument_set)
        self.now_ns[key] = latest
        return key

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        # Decoding and folding a keyframe of thousands of tops and solving whole chains are
        # the heavy parts: all of it runs on the one worker thread, so the event loop keeps
        # acking, heartbeating and reconnecting on time. Handlers are called one at a time
        # (StageRunner), so the cores are only ever touched by that thread.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.handle_sync, batch)

    def handle_sync(self, batch: list[InMessage]) -> list[Output]:
        """Fold a batch into the cores and flush the partitions due: the outputs to publish."""
        touched: dict[tuple[str, str], InMessage] = {}
        dead: list[Output] = []
        for msg in batch:
            try:
                key = self._fold(msg.subject, msg.data)
            except (DecodeError, ValueError) as exc:
                dead.append(
                    dead_letter_output(self.ctx.subjects, SERVICE, msg, f"undecodable input: {exc}")
                )
                continue
            if key is None:
                dead.append(
                    dead_letter_output(
                        self.ctx.subjects, SERVICE, msg, "partition not owned by this replica"
                    )
                )
                continue
            touched[key] = msg
        outputs: list[Output] = dead
        for key, last in touched.items():
            now = self.now_ns.get(key, 0)
            if now <= 0 or now - self.last_flush_ns.get(key, 0) < self.interval_ns:
                continue
            self.last_flush_ns[key] = now
            smiles = self.cores[key].flush_serialized(now)
            if not smiles:
                continue
            venue, ccy = key
            header = common_pb.EventHeader(
                event_time_ns=now,
                publish_time_ns=wall_ns(),
                source="svc_iv",
                sequence=last.stream_seq,
            )
            subject = self.ctx.subjects.iv(venue, ccy)
            payload = wire.smile_batch_bytes(header, venue, ccy, smiles)
            outputs.append(Output(subject, payload, output_msg_id("svc_iv", subject, last)))
        return outputs


def stage_inputs(ctx: ServiceContext, partitions: tuple[Partition, ...]) -> list[StageInput]:
    md_filters = [
        ctx.subjects.md(p.venue, p.currency, kind)
        for p in partitions
        for kind in ("instrument", "ticker", "index")
    ]
    book_filters = [ctx.subjects.book(p.venue, p.currency) for p in partitions]
    # The BOOK durable carries the plain name: deploy/ scales a group on its lag.
    name = durable_name(SERVICE, ctx.cfg)
    return [
        StageInput(ctx.subjects.stream_name("BOOK"), name, book_filters),
        StageInput(ctx.subjects.stream_name("MD"), f"{name}-md", md_filters),
    ]


async def run(cfg: Config) -> None:
    async with service_context(cfg, SERVICE) as ctx:
        partitions = cfg.owned_partitions()
        stage = IvStage(ctx, partitions)
        await stage.bootstrap()
        # Closers run last-registered first: the runner finishes its batch, then the pool goes.
        ctx.on_close(stage.close)
        await ctx.start_stage(stage_inputs(ctx, partitions), stage)
        log.info("iv service owns %s", ", ".join(str(p) for p in partitions))
        await ctx.wait_stopped()
