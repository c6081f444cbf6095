"""Book service runtime: md.<venue>.<ccy>.book -> BookCore per partition -> book.<venue>.<ccy>.

The partition's other market data (md.<venue>.<ccy>.{ticker,index,instrument}) is relayed
verbatim on book.<venue>.<ccy>.md in input order, so the IV stage consumes one ordered
stream and its output depends on the input alone (replay reproduces live).

Output, per consumed input message (one connector MarketDataBatch, itself <= 25 ms or 256
events of one partition):

- book.<venue>.<ccy>: a TopOfBookBatch with the tops whose price, size, status or flags
  changed while folding that message in (nothing when none changed);
- book.<venue>.<ccy>.keyframe: every book of the partition, whenever the partition's event
  time has moved KEYFRAME_INTERVAL_NS past the previous keyframe (and on the first message
  after a start). Consumers (svc_iv) rebuild their view of the books from it.

Outputs are cut per input message, not per consumed batch, so what is published depends
only on the partition's input sequence: a replay from the start, or a different split of
partitions over replicas, publishes exactly the same messages (the msg-id names the input
message's stream sequence, and the per-partition sequences, of batches and of tops, run over
the partition's input only).

Time: "now" for a partition is the highest event time seen in its input (the batch
header's ``event_time_ns``, which the connector stamps with its latest event time; the
events' own times when it is absent), kept by the stage kit's ``PartitionClock``, which
also stamps each batch header. Staleness, keyframes and resync spacing all run on it.

Gaps: a venue gap normally reaches this service as a BookReset from the connector (which
detects it first and resubscribes the book): the book publishes AWAITING_SNAPSHOT, no
prices, until the fresh snapshot; a gap the connector missed is caught here (status GAP).
Either way the book is also named in a resync request (below).

Restart: the replica resumes from its durable (``book-<partition group>``) with empty
books. Keyframes carry tops only (no depth), so a book cannot be rebuilt from them; the
last keyframe only gives the partition's symbols, each of which starts AWAITING_SNAPSHOT.
Every book the replica lacks a snapshot for (from the keyframe, first seen via a delta,
reset, or invalidated by a gap) is named on ``ctl.connector.<venue>.resync`` and the connector
resubscribes it, which makes the venue send a fresh snapshot. Until its snapshot arrives a
book publishes only its status (AWAITING_SNAPSHOT, or GAP), never prices. A symbol is asked
again at most every RESYNC_INTERVAL_NS of event time while it stays invalid. The TopOfBook
sequence counter continues from the last one published (read back from the BOOK stream at
start, like the batch sequence), so "keep the highest sequence" stays true across restarts.
A book that is missing from the last keyframe (first seen after it) is rebuilt once it sees
a delta again.

The handler yields to the event loop every YIELD_EVERY input messages, so acks, heartbeats
and pings keep flowing during a full batch (~0.1 s of CPU at 256 messages).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import orjson
from google.protobuf.message import DecodeError

from svc_book.core import BookConfig, BookCore
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
from volstream.v1 import market_data_pb2 as md_pb
from volstream.wire import WIRE_VARINT, field_key

log = logging.getLogger("svc_book")

SERVICE = "book"
SOURCE = "svc_book"
KEYFRAME_INTERVAL_NS = 5_000_000_000
RESYNC_INTERVAL_NS = 5_000_000_000
# Input messages handled between two yields to the event loop.
YIELD_EVERY = 32

_decode_batch = md_pb.MarketDataBatch.FromString
# TopOfBookBatch.is_keyframe (field 5) = true, as protobuf writes it after the tops.
_IS_KEYFRAME = field_key(5, WIRE_VARINT) + b"\x01"
_BOOK_SUFFIX = ".book"


@dataclass
class PartitionState:
    """Runtime state of one owned (venue, currency) partition around its pure core."""

    venue: str
    currency: str
    core: BookCore
    subject: str
    keyframe_subject: str
    # "now" (highest event time in the input), the keyframe cadence, the batch sequence.
    clock: PartitionClock = field(default_factory=lambda: PartitionClock(KEYFRAME_INTERVAL_NS))
    # symbol -> event time it was last named in a resync request.
    resync_asked_ns: dict[str, int] = field(default_factory=dict)


def _latest_event_ns(md: md_pb.MarketDataBatch) -> int:
    """The batch's latest event time (slow path, for batches without a header time)."""
    latest = 0
    for event in md.events:
        case = event.WhichOneof("event")
        if case is not None:
            latest = max(latest, getattr(event, case).header.event_time_ns)
    return latest


class BookStage:
    """The stage handler: decode, fold into the partition's core, emit changed tops."""

    def __init__(self, env: StageEnv, partitions: tuple[Partition, ...]) -> None:
        self.env = env
        self.owned = {(p.venue, p.currency.upper()) for p in partitions}
        self.partitions: dict[tuple[str, str], PartitionState] = {}
        self.config = BookConfig(stale_after_ns=env.cfg.book_stale_ms * 1_000_000)
        self.resync_requests = 0

    def partition(self, venue: str, currency: str) -> PartitionState:
        key = (venue, currency)
        state = self.partitions.get(key)
        if state is None:
            subject = self.env.subjects.book(venue, currency)
            state = self.partitions[key] = PartitionState(
                venue,
                currency,
                BookCore(venue, currency, self.config),
                subject,
                f"{subject}.keyframe",
            )
        return state

    async def restore(self, ctx: ServiceContext, counters_only: bool = False) -> None:
        """Start-up: continue each owned partition's TopOfBook and batch sequences from the
        BOOK stream, and take the partition's symbols from its last keyframe: each is marked
        as awaiting a snapshot (published as such with the first output) and the connector
        is asked to resync them all, so books that see no delta soon are rebuilt too.

        ``counters_only``: the sequences alone, never lowered (after a partial rebuild,
        volstream.bus.rebuild: the books are rebuilt from MD, their counters must not go
        back)."""
        for venue, ccy in sorted(self.owned):
            state = self.partition(venue, ccy)
            highest = 0
            keyframe: book_pb.TopOfBookBatch | None = None
            for subject in (state.subject, state.keyframe_subject):
                payload = await last_message(ctx, "BOOK", subject)
                if payload is None:
                    continue
                try:
                    batch = book_pb.TopOfBookBatch.FromString(payload)
                except DecodeError:
                    continue
                if subject == state.keyframe_subject:
                    keyframe = batch
                for top in batch.tops:
                    highest = max(highest, top.header.sequence)
                state.clock.sequence = max(state.clock.sequence, batch.header.sequence)
            state.core.output_sequence = max(state.core.output_sequence, highest)
            if keyframe is None or counters_only:
                continue
            known_ns = keyframe.header.event_time_ns
            for top in keyframe.tops:
                reset = md_pb.MarketDataEvent()
                reset.book_reset.symbol = top.symbol
                reset.book_reset.reason = "svc_book restarted: no snapshot yet"
                reset.book_reset.header.event_time_ns = known_ns
                state.core.apply(reset)
            state.clock.observe(known_ns)
            request = self._resync_request(state)
            if request is not None:
                await ctx.nc.publish(request.subject, request.payload)

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        outputs: list[Output] = []
        touched: dict[tuple[str, str], PartitionState] = {}
        owned = self.owned
        for n, msg in enumerate(batch, 1):
            if n % YIELD_EVERY == 0:
                # A full batch is ~0.1 s of CPU: let acks, heartbeats and pings through.
                await asyncio.sleep(0)
            if not msg.subject.endswith(_BOOK_SUFFIX):
                outputs.append(self._relay(msg))
                continue
            try:
                md = _decode_batch(msg.data)
            except DecodeError as exc:
                reason = f"undecodable MarketDataBatch: {exc}"
                outputs.append(dead_letter_output(self.env.subjects, SERVICE, msg, reason))
                continue
            key = (md.venue, md.currency.upper())
            if key not in owned:
                reason = f"partition {md.venue}:{md.currency} is not owned by this replica"
                outputs.append(dead_letter_output(self.env.subjects, SERVICE, msg, reason))
                continue
            state = touched.get(key)
            if state is None:
                state = touched[key] = self.partition(*key)
            apply = state.core.apply
            for event in md.events:
                apply(event)
            state.clock.observe(md.header.event_time_ns or _latest_event_ns(md))
            self._emit(state, msg, outputs)
        for state in touched.values():
            request = self._resync_request(state)
            if request is not None:
                outputs.append(request)
        return outputs

    def _relay(self, msg: InMessage) -> Output:
        """A ticker, index or instrument message of an owned partition, verbatim on
        book.<venue>.<ccy>.md, in input order with the tops: the IV stage then reads one
        ordered stream, so its output depends on the input alone (a replay gives the same
        bytes). A relay, not a new event: the connector's header is left as it is."""
        try:
            _stage, venue, ccy, _kind = parse_partition(msg.subject, self.env.subjects.namespace)
        except ValueError as exc:
            return dead_letter_output(self.env.subjects, SERVICE, msg, str(exc))
        if (venue, ccy.upper()) not in self.owned:
            reason = f"partition {venue}:{ccy} is not owned by this replica"
            return dead_letter_output(self.env.subjects, SERVICE, msg, reason)
        subject = self.env.subjects.book_relay(venue, ccy)
        return Output(subject, msg.data, output_msg_id(SOURCE, subject, msg))

    def _emit(self, state: PartitionState, msg: InMessage, outputs: list[Output]) -> None:
        core = state.core
        clock = state.clock
        changed = self._batch(state, keyframe=False)
        if core.tops_into(changed, clock.now_ns):
            outputs.append(self._output(state, state.subject, changed, msg))
        if clock.due():
            # Assembled from the core's cached wire bytes of every top: a keyframe re-encodes
            # only the books touched since the previous one (svc_book.core). Field order as
            # protobuf writes it: header, venue, currency, tops, is_keyframe.
            tops, _count = core.keyframe_tops_bytes(clock.now_ns)
            head = self._batch(state, keyframe=False)
            stamp_header(head.header, SOURCE, clock)
            payload = head.SerializeToString() + tops + _IS_KEYFRAME
            subject = state.keyframe_subject
            outputs.append(Output(subject, payload, output_msg_id(SOURCE, subject, msg)))

    @staticmethod
    def _batch(state: PartitionState, keyframe: bool) -> book_pb.TopOfBookBatch:
        batch = book_pb.TopOfBookBatch()
        batch.venue = state.venue
        batch.currency = state.currency
        if keyframe:
            batch.is_keyframe = True
        return batch

    @staticmethod
    def _output(
        state: PartitionState, subject: str, batch: book_pb.TopOfBookBatch, msg: InMessage
    ) -> Output:
        stamp_header(batch.header, SOURCE, state.clock)
        return Output(subject, batch.SerializeToString(), output_msg_id(SOURCE, subject, msg))

    def _resync_request(self, state: PartitionState) -> Output | None:
        """The partition's invalid books the connector has not been asked about for
        RESYNC_INTERVAL_NS, as a request on ctl.connector.<venue>.resync (core NATS)."""
        invalid = state.core.needs_resync()
        asked = state.resync_asked_ns
        if not invalid:
            asked.clear()
            return None
        now_ns = state.clock.now_ns
        due = [
            s
            for s in invalid
            if now_ns - asked.get(s, now_ns - RESYNC_INTERVAL_NS) >= RESYNC_INTERVAL_NS
        ]
        if not due:
            return None
        for symbol in due:
            asked[symbol] = now_ns
        if len(asked) > 2 * len(invalid):
            # Forget symbols that became valid again (or were delisted).
            keep = set(invalid)
            state.resync_asked_ns = {s: t for s, t in asked.items() if s in keep}
        subject = self.env.subjects.control("connector", state.venue, "resync")
        payload = orjson.dumps({"currency": state.currency, "symbols": due})
        self.resync_requests += 1
        log.info(
            "%s:%s: asked the connector to resync %d books", state.venue, state.currency, len(due)
        )
        return Output(subject, payload, "", jetstream=False)


def stage_inputs(env: StageEnv, partitions: tuple[Partition, ...]) -> list[StageInput]:
    # Every kind of the partition's market data: books are folded, the rest relayed.
    filters = [env.subjects.md(p.venue, p.currency, "*") for p in partitions]
    return [StageInput(env.subjects.stream_name("MD"), durable_name(SERVICE, env.cfg), filters)]


async def run(cfg: Config) -> None:
    async with service_context(cfg, SERVICE) as ctx:
        partitions = cfg.owned_partitions()
        stage = BookStage(ctx, partitions)
        if cfg.rebuild == "resume":  # "replay": the runner rebuilds the books from MD
            await stage.restore(ctx)

        async def continue_counters() -> None:
            await stage.restore(ctx, counters_only=True)

        await ctx.start_stage(stage_inputs(ctx, partitions), stage, continue_counters)
        log.info("book service owns %s", ", ".join(str(p) for p in partitions))
        await ctx.wait_stopped()
