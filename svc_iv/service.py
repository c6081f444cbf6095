"""IV service runtime: instruments, tickers, index (md.*) and tops (book.*) -> IvCore per
partition -> per-expiry smiles on iv.<venue>.<ccy>.

Smiles are flushed on a cadence in event time (cfg.iv_interval_ms), kept per partition by
the stage kit's ``PartitionClock``, which also stamps each batch header: a partition is
flushed at the first input whose event time is the interval past its last flush, and the
flush solves and publishes only the expiries whose inputs changed. The flushed batch is
published once the next 32 input messages are folded (``publish_every``), not after the
rest of the consumed batch. Why the interval is not shorter, and why a batch carries whole
smiles rather than the changed quotes: docs/architecture.md section 3, "Cadences". At
start-up the latest instrument set and book keyframe of each owned partition are read back
from JetStream, so a restarted replica prices its chains as soon as tickers arrive, and the
batch sequence continues from the last published batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from google.protobuf.message import DecodeError

from svc_iv import wire
from svc_iv.core import IvConfig, IvCore
from volstream.bus.stage import (
    InMessage,
    Output,
    PartitionClock,
    StageEnv,
    StageInput,
    dead_letter_output,
    output_msg_id,
    stamp_header,
)
from volstream.config import Config, Partition
from volstream.runtime import ServiceContext, durable_name, last_message, service_context
from volstream.subjects import parse_partition
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb

log = logging.getLogger("svc_iv")

SERVICE = "iv"
SOURCE = "svc_iv"


class IvStage:
    # Publish a flushed partition once the next 32 input messages are folded, not after the
    # rest of a 256-message batch (volstream.bus.stage, "Publishing early"; cuts are per
    # input message).
    publish_every = 32

    def __init__(
        self, env: StageEnv, partitions: tuple[Partition, ...], *, offload: bool = True
    ) -> None:
        """``offload`` False: solve on the caller's thread (a replay, which has no event loop
        to keep responsive, saves the hand-over)."""
        self.env = env
        self.offload = offload
        interval_ns = env.cfg.iv_interval_ms * 1_000_000
        self.cores: dict[tuple[str, str], IvCore] = {}
        self.clocks: dict[tuple[str, str], PartitionClock] = {}
        for p in partitions:
            key = (p.venue, p.currency.upper())
            self.cores[key] = IvCore(*key, IvConfig(forward_policy=env.cfg.iv_forward_policy))
            self.clocks[key] = PartitionClock(interval_ns)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iv")

    async def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def bootstrap(self, ctx: ServiceContext, counters_only: bool = False) -> None:
        """Latest instrument set and book keyframe per partition, and the last published
        batch's sequence, before consuming. ``counters_only``: the sequence alone, never
        lowered (after a partial rebuild, volstream.bus.rebuild)."""
        subjects = self.env.subjects
        for venue, ccy in self.cores:
            for stream, subject in (
                ()
                if counters_only
                else (
                    ("MD", subjects.md(venue, ccy, "instrument")),
                    ("BOOK", subjects.book(venue, ccy) + ".keyframe"),
                )
            ):
                data = await last_message(ctx, stream, subject)
                if data is not None:
                    await asyncio.get_running_loop().run_in_executor(
                        self.pool, self._fold, subject, data
                    )
            data = await last_message(ctx, "IV", subjects.iv(venue, ccy))
            if data is not None:
                with contextlib.suppress(DecodeError):
                    sequence = iv_pb.SmileBatch.FromString(data).header.sequence
                    clock = self.clocks[(venue, ccy)]
                    clock.sequence = max(clock.sequence, sequence)
        log.info("bootstrapped %d partitions", len(self.cores))

    def _fold(self, subject: str, data: bytes) -> tuple[str, str] | None:
        """Apply one input message to its core; the partition key, None if not ours."""
        stage, venue, ccy_token, rest = parse_partition(subject, self.env.subjects.namespace)
        key = (venue, ccy_token.upper())
        core = self.cores.get(key)
        if core is None:
            return None
        clock = self.clocks[key]
        latest = clock.now_ns
        if stage == "book" and rest != "md":  # tops (or a keyframe's, at bootstrap)
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
        clock.observe(latest)
        return key

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        # Decoding and folding a keyframe of thousands of tops and solving whole chains are
        # the heavy parts: all of it runs on the one worker thread, so the event loop keeps
        # acking, heartbeating and reconnecting on time. Handlers are called one at a time
        # (StageRunner), so the cores are only ever touched by that thread.
        if not self.offload:
            return self.handle_sync(batch)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.handle_sync, batch)

    def handle_sync(self, batch: list[InMessage]) -> list[Output]:
        """Fold each message into its core and flush the partition when its cadence is due:
        the outputs to publish. Cut per message, not per batch, so what is published does
        not depend on how the consumer happened to batch the stream."""
        outputs: list[Output] = []
        for msg in batch:
            try:
                key = self._fold(msg.subject, msg.data)
            except (DecodeError, ValueError) as exc:
                reason = f"undecodable input: {exc}"
                outputs.append(dead_letter_output(self.env.subjects, SERVICE, msg, reason))
                continue
            if key is None:
                reason = "partition not owned by this replica"
                outputs.append(dead_letter_output(self.env.subjects, SERVICE, msg, reason))
                continue
            clock = self.clocks[key]
            if not clock.due():
                continue
            smiles = self.cores[key].flush_serialized(clock.now_ns)
            if not smiles:
                continue
            venue, ccy = key
            header = stamp_header(common_pb.EventHeader(), SOURCE, clock)
            subject = self.env.subjects.iv(venue, ccy)
            payload = wire.smile_batch_bytes(header, venue, ccy, smiles)
            outputs.append(Output(subject, payload, output_msg_id(SOURCE, subject, msg)))
        return outputs


def stage_inputs(env: StageEnv, partitions: tuple[Partition, ...]) -> list[StageInput]:
    # One ordered input: the tops and, relayed by the book stage in the same order, the
    # tickers, index prices and instrument sets (svc_book.service).
    filters = [
        subject
        for p in partitions
        for subject in (
            env.subjects.book(p.venue, p.currency),
            env.subjects.book_relay(p.venue, p.currency),
        )
    ]
    # deploy/ scales a group on this durable's lag.
    return [StageInput(env.subjects.stream_name("BOOK"), durable_name(SERVICE, env.cfg), filters)]


async def run(cfg: Config) -> None:
    async with service_context(cfg, SERVICE) as ctx:
        partitions = cfg.owned_partitions()
        stage = IvStage(ctx, partitions)
        if cfg.rebuild == "resume":  # "replay": the runner rebuilds the chains from BOOK
            await stage.bootstrap(ctx)

        async def continue_counters() -> None:
            await stage.bootstrap(ctx, counters_only=True)

        # Closers run last-registered first: the runner finishes its batch, then the pool goes.
        ctx.on_close(stage.close)
        await ctx.start_stage(stage_inputs(ctx, partitions), stage, continue_counters)
        log.info("iv service owns %s", ", ".join(str(p) for p in partitions))
        await ctx.wait_stopped()
