"""Book service runtime: md.<venue>.<ccy>.book -> BookCore per partition -> book.<venue>.<ccy>.

Tops are published per consumed batch, only for books that changed. Every
KEYFRAME_INTERVAL_NS of event time a keyframe with every book of the partition goes to
book.<venue>.<ccy>.keyframe, from which a restarted consumer (svc_iv) rebuilds. Books that
need a snapshot (restart, gap) are named on ctl.connector.<venue>.resync so the connector
resubscribes them.
"""

from __future__ import annotations

import logging

import orjson
from google.protobuf.message import DecodeError

from svc_book.core import BookConfig, BookCore
from volstream.bus.stage import InMessage, Output, StageInput, StageRunner, dead_letter_output
from volstream.config import Config, Partition
from volstream.runtime import ServiceContext, durable_name, service_context, wall_ns
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import market_data_pb2 as md_pb

log = logging.getLogger("svc_book")

SERVICE = "book"
KEYFRAME_INTERVAL_NS = 5_000_000_000
RESYNC_INTERVAL_NS = 5_000_000_000


class BookStage:
    """The stage handler: decode, fold into the partition's core, emit changed tops."""

    def __init__(self, ctx: ServiceContext, partitions: tuple[Partition, ...]) -> None:
        self.ctx = ctx
        self.owned = {(p.venue, p.currency.upper()) for p in partitions}
        self.cores: dict[tuple[str, str], BookCore] = {}
        self.last_keyframe_ns: dict[tuple[str, str], int] = {}
        self.last_resync_ns: dict[tuple[str, str], int] = {}
        stale_ns = ctx.cfg.book_stale_ms * 1_000_000
        self.config = BookConfig(stale_after_ns=stale_ns)

    def core(self, venue: str, currency: str) -> BookCore:
        key = (venue, currency)
        core = self.cores.get(key)
        if core is None:
            core = self.cores[key] = BookCore(venue, currency, self.config)
        return core

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        touched: dict[tuple[str, str], tuple[int, InMessage]] = {}
        dead: list[Output] = []
        for msg in batch:
            try:
                md = md_pb.MarketDataBatch.FromString(msg.data)
            except DecodeError as exc:
                dead.append(
                    dead_letter_output(
                        self.ctx.subjects, SERVICE, msg, f"undecodable MarketDataBatch: {exc}"
                    )
                )
                continue
            key = (md.venue, md.currency.upper())
            if key not in self.owned:
                dead.append(
                    dead_letter_output(
                        self.ctx.subjects,
                        SERVICE,
                        msg,
                        f"partition {md.venue}:{md.currency} is not owned by this replica",
                    )
                )
                continue
            core = self.core(*key)
            latest = touched.get(key, (0, msg))[0]
            for event in md.events:
                core.apply(event)
                case = event.WhichOneof("event")
                if case is not None:
                    latest = max(latest, getattr(event, case).header.event_time_ns)
            touched[key] = (latest, msg)
        outputs: list[Output] = dead
        for (venue, ccy), (now_ns, last) in touched.items():
            outputs.extend(self._emit(venue, ccy, now_ns, last))
            await self._request_resync(venue, ccy, now_ns)
        return outputs

    def _emit(self, venue: str, ccy: str, now_ns: int, last: InMessage) -> list[Output]:
        core = self.cores[(venue, ccy)]
        subject = self.ctx.subjects.book(venue, ccy)
        out: list[Output] = []
        changed = self._batch(venue, ccy, now_ns, last, keyframe=False)
        if core.tops_into(changed, now_ns):
            out.append(self._output(subject, changed, last))
        if now_ns - self.last_keyframe_ns.get((venue, ccy), 0) >= KEYFRAME_INTERVAL_NS:
            self.last_keyframe_ns[(venue, ccy)] = now_ns
            every = self._batch(venue, ccy, now_ns, last, keyframe=True)
            core.tops_into(every, now_ns, keyframe=True)
            out.append(self._output(f"{subject}.keyframe", every, last))
        return out

    @staticmethod
    def _batch(
        venue: str, ccy: str, now_ns: int, last: InMessage, keyframe: bool
    ) -> book_pb.TopOfBookBatch:
        batch = book_pb.TopOfBookBatch(venue=venue, currency=ccy, is_keyframe=keyframe)
        batch.header.source = "svc_book"
        batch.header.event_time_ns = now_ns
        batch.header.sequence = last.stream_seq
        return batch

    @staticmethod
    def _output(subject: str, batch: book_pb.TopOfBookBatch, last: InMessage) -> Output:
        batch.header.publish_time_ns = wall_ns()
        # Deterministic: the same input message always yields the same id (restart dedupe).
        msg_id = f"svc_book.{subject}.{last.metadata.stream}.{last.stream_seq}"
        return Output(subject, batch.SerializeToString(), msg_id)

    async def _request_resync(self, venue: str, ccy: str, now_ns: int) -> None:
        if now_ns - self.last_resync_ns.get((venue, ccy), 0) < RESYNC_INTERVAL_NS:
            return
        symbols = self.cores[(venue, ccy)].needs_resync()
        if not symbols:
            return
        self.last_resync_ns[(venue, ccy)] = now_ns
        subject = self.ctx.subjects.control("connector", venue, "resync")
        await self.ctx.nc.publish(subject, orjson.dumps({"currency": ccy, "symbols": symbols}))
        log.info("%s:%s: asked the connector to resync %d books", venue, ccy, len(symbols))


def stage_inputs(ctx: ServiceContext, partitions: tuple[Partition, ...]) -> list[StageInput]:
    filters = [ctx.subjects.md(p.venue, p.currency, "book") for p in partitions]
    return [StageInput(ctx.subjects.stream_name("MD"), durable_name(SERVICE, ctx.cfg), filters)]


async def run(cfg: Config) -> None:
    async with service_context(cfg, SERVICE) as ctx:
        partitions = cfg.owned_partitions()
        stage = BookStage(ctx, partitions)
        runner = StageRunner(
            ctx.nc, SERVICE, ctx.subjects, stage_inputs(ctx, partitions), stage, ctx.metrics
        )
        await runner.start()
        ctx.on_close(runner.stop)
        log.info("book service owns %s", ", ".join(str(p) for p in partitions))
        await ctx.wait_stopped()
