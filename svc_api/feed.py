"""NATS -> SurfaceHub: the API's read-only view of the SURFACE and IV streams.

On start an ordered consumer with DeliverPolicy.LAST_PER_SUBJECT delivers the latest surface
of every (venue, currency), then keeps following new ones (ephemeral, no ack, no durable:
nothing to clean up, and the nats-py ordered consumer re-creates itself from the last stream
sequence after a gap, a reconnect or a server restart). The IV stream is followed the same
way for GetSmile.

A message that cannot be used is counted, logged (rate-limited) and copied to
`dlq.api.<venue>` with the reason in a `Volstream-Dlq-Reason` header: the API is one more
consumer that must not drop anything silently. Several API replicas each report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from svc_api.hub import SurfaceHub
from volstream.subjects import Subjects, parse_partition
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger(__name__)

DLQ_SERVICE = "api"
DLQ_REASON_HEADER = "Volstream-Dlq-Reason"
DLQ_SUBJECT_HEADER = "Volstream-Dlq-Subject"
DLQ_SEQUENCE_HEADER = "Volstream-Dlq-Stream-Sequence"
IDLE_HEARTBEAT_S = 1.0
STREAM_RETRY_S = 1.0


@dataclass(frozen=True)
class JsMeta:
    """Stream sequence, stored time and pending count from a JetStream delivery subject."""

    stream_sequence: int
    stored_time_ns: int
    num_pending: int


def parse_ack_subject(reply: str | None) -> JsMeta | None:
    """`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>` (v1) or v2."""
    if not reply:
        return None
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    try:
        if len(tokens) == 9:
            return JsMeta(int(tokens[5]), int(tokens[7]), int(tokens[8]))
        # v2: $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pend>
        return JsMeta(int(tokens[7]), int(tokens[9]), int(tokens[10]))
    except (ValueError, IndexError):
        return None


def decode_surface(subject: str, data: bytes, namespace: str = "") -> surface_pb.Surface | str:
    """The Surface in a message on surface.<venue>.<ccy>, or why it cannot be used."""
    try:
        stage, venue, currency, rest = parse_partition(subject, namespace)
    except ValueError as exc:
        return str(exc)
    if stage != "surface" or rest:
        return f"subject {subject!r} is not surface.<venue>.<ccy>"
    surface = surface_pb.Surface()
    try:
        surface.ParseFromString(data)
    except DecodeError as exc:
        return f"not a volstream.v1.Surface ({len(data)} bytes): {exc}"
    if not surface.venue or not surface.currency:
        return "surface without venue or currency"
    if surface.venue.lower() != venue or surface.currency.lower() != currency:
        return (
            f"surface {surface.venue}/{surface.currency} published on {subject!r} "
            f"(subject says {venue}/{currency})"
        )
    return surface


def decode_smiles(subject: str, data: bytes, namespace: str = "") -> list[iv_pb.Smile] | str:
    """Smiles in a message on iv.<venue>.<ccy>: a SmileBatch or a single Smile."""
    try:
        stage, venue, currency, _ = parse_partition(subject, namespace)
    except ValueError as exc:
        return str(exc)
    if stage != "iv":
        return f"subject {subject!r} is not iv.<venue>.<ccy>"
    batch = iv_pb.SmileBatch()
    try:
        batch.ParseFromString(data)
    except DecodeError:
        batch.Clear()
    smiles: list[iv_pb.Smile] = []
    if batch.smiles:
        for s in batch.smiles:
            smile = iv_pb.Smile()
            smile.CopyFrom(s)
            if not smile.venue:
                smile.venue = batch.venue or venue
            if not smile.currency:
                smile.currency = batch.currency or currency.upper()
            if not smile.HasField("header"):
                smile.header.CopyFrom(batch.header)
            smiles.append(smile)
    else:
        single = iv_pb.Smile()
        try:
            single.ParseFromString(data)
        except DecodeError as exc:
            return f"neither a SmileBatch nor a Smile ({len(data)} bytes): {exc}"
        if single.expiry_time_ns > 0:
            smiles.append(single)
        elif not (batch.venue or batch.currency or batch.HasField("header")):
            return f"neither a SmileBatch nor a Smile ({len(data)} bytes)"
        # else: an empty SmileBatch, nothing to apply
    for smile in smiles:
        if smile.venue.lower() != venue or smile.currency.lower() != currency:
            return (
                f"smile {smile.venue}/{smile.currency} published on {subject!r} "
                f"(subject says {venue}/{currency})"
            )
    return smiles


@dataclass
class FeedStats:
    surfaces_applied: int = 0
    surfaces_ignored: int = 0
    smiles_applied: int = 0
    undecodable: int = 0
    dlq_published: int = 0
    consumer_starts: dict[str, int] = field(default_factory=dict)


class _Follower:
    """One ordered consumer over one stream, started when the stream exists."""

    def __init__(
        self,
        feed: SurfaceFeed,
        stream: str,
        filter_subject: str,
        handler: Any,
    ) -> None:
        self.feed = feed
        self.stream = stream
        self.filter_subject = filter_subject
        self.handler = handler
        self.caught_up = asyncio.Event()
        self.subscription: Any = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"api-follow-{self.stream}")

    async def _run(self) -> None:
        import nats.js.api as js_api
        import nats.js.errors as js_errors

        js = self.feed.nc.jetstream()
        warned = False
        while self.subscription is None:
            try:
                await js.stream_info(self.stream)
                self.subscription = await js.subscribe(
                    self.filter_subject,
                    stream=self.stream,
                    cb=self._on_message,
                    ordered_consumer=True,
                    deliver_policy=js_api.DeliverPolicy.LAST_PER_SUBJECT,
                    idle_heartbeat=IDLE_HEARTBEAT_S,
                )
            except js_errors.NotFoundError:
                if not warned:
                    log.warning("stream %s not found yet; retrying every %.0fs", self.stream, 1)
                    warned = True
                # Nothing to catch up on: the API starts with what it has.
                self.caught_up.set()
                await asyncio.sleep(STREAM_RETRY_S)
                continue
            except Exception as exc:  # NATS down or timing out: keep trying
                log.warning("cannot follow %s yet (%s); retrying", self.stream, exc)
                await asyncio.sleep(STREAM_RETRY_S)
                continue
            starts = self.feed.stats.consumer_starts
            starts[self.stream] = starts.get(self.stream, 0) + 1
            log.info(
                "following %s (%s) from the last message per subject",
                self.stream,
                self.filter_subject,
            )
            try:
                info = await self.subscription.consumer_info()
                if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                    self.caught_up.set()
            except Exception as exc:
                log.debug("consumer info of %s: %s", self.stream, exc)

    async def _on_message(self, msg: Any) -> None:
        meta = parse_ack_subject(msg.reply)
        try:
            await self.handler(msg, meta)
        except Exception:  # a handler bug must not kill the subscription
            log.exception("handling %s failed", msg.subject)
        if meta is None or meta.num_pending == 0:
            self.caught_up.set()

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.subscription is not None:
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()
            self.subscription = None


class SurfaceFeed:
    """Follows SURFACE (and IV) into a SurfaceHub."""

    def __init__(
        self,
        hub: SurfaceHub,
        nc: Any,
        namespace: str = "",
        follow_iv: bool = True,
        dead_letters: bool = True,
    ) -> None:
        self.hub = hub
        self.nc = nc
        self.namespace = namespace
        self.subjects = Subjects(namespace)
        self.dead_letters = dead_letters
        self.stats = FeedStats()
        self._surface = _Follower(
            self,
            self.subjects.stream_name("SURFACE"),
            self.subjects.stage_filter("surface"),
            self._on_surface,
        )
        self._iv = (
            _Follower(
                self,
                self.subjects.stream_name("IV"),
                self.subjects.stage_filter("iv"),
                self._on_iv,
            )
            if follow_iv
            else None
        )

    @property
    def surface_stream(self) -> str:
        return self._surface.stream

    async def start(self, catchup_timeout_s: float = 5.0) -> bool:
        """Start following; True when the initial catch-up finished within the timeout."""
        followers = [f for f in (self._surface, self._iv) if f is not None]
        for f in followers:
            f.start()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(f.caught_up.wait() for f in followers)), catchup_timeout_s
            )
        except TimeoutError:
            log.warning(
                "initial catch-up from JetStream not finished after %.1fs", catchup_timeout_s
            )
            return False
        return True

    async def stop(self) -> None:
        for f in (self._surface, self._iv):
            if f is not None:
                await f.stop()

    async def _on_surface(self, msg: Any, meta: JsMeta | None) -> None:
        decoded = decode_surface(msg.subject, msg.data, self.namespace)
        if isinstance(decoded, str):
            await self._dead_letter(msg, meta, decoded)
            return
        outcome = self.hub.apply_surface(
            decoded,
            sequence=meta.stream_sequence if meta else 0,
            stored_time_ns=meta.stored_time_ns if meta else 0,
        )
        if outcome.accepted:
            self.stats.surfaces_applied += 1
        else:
            # Replays after a consumer reset land here: harmless, not a dead letter.
            self.stats.surfaces_ignored += 1
            log.debug("surface ignored: %s", outcome.reason)

    async def _on_iv(self, msg: Any, meta: JsMeta | None) -> None:
        decoded = decode_smiles(msg.subject, msg.data, self.namespace)
        if isinstance(decoded, str):
            await self._dead_letter(msg, meta, decoded)
            return
        for smile in decoded:
            if self.hub.apply_smile(smile).accepted:
                self.stats.smiles_applied += 1

    async def _dead_letter(self, msg: Any, meta: JsMeta | None, reason: str) -> None:
        self.stats.undecodable += 1
        n = self.stats.undecodable
        if n <= 10 or n % 1000 == 0:
            log.warning("unusable message #%d on %s: %s", n, msg.subject, reason)
        if not self.dead_letters:
            return
        try:
            venue = parse_partition(msg.subject, self.namespace)[1]
            dlq_subject = self.subjects.dlq(DLQ_SERVICE, venue)
        except ValueError:
            dlq_subject = self.subjects.dlq(DLQ_SERVICE, "unknown")
        headers = {
            DLQ_REASON_HEADER: reason.replace("\r", " ").replace("\n", " ")[:1024],
            DLQ_SUBJECT_HEADER: msg.subject,
        }
        if meta is not None:
            headers[DLQ_SEQUENCE_HEADER] = str(meta.stream_sequence)
        try:
            await self.nc.publish(dlq_subject, msg.data, headers=headers)
            self.stats.dlq_published += 1
        except Exception as exc:
            log.warning("dead letter to %s failed: %s", dlq_subject, exc)
