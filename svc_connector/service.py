"""Connector runtime: runs the venue adapters of cfg.venues and publishes their normalised
events to md.<venue>.<ccy>.<kind> as MarketDataBatch messages.

Events are batched per subject (time or size, whichever first) so that one NATS message
carries many venue ticks (docs/architecture.md section 2). Batch msg-ids are
``<source>.<run>.<subject>.<n>``: a retry of the same batch is deduplicated by JetStream,
while a restarted process (a new run id) publishes the new data it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping

import orjson
from nats.aio.msg import Msg

from svc_connector.venues import registry
from svc_connector.venues.base import (
    ConnectorConfig,
    MdKind,
    NormalisedEvent,
    VenueAdapter,
    VenueConnector,
)
from volstream.bus.batcher import Batcher
from volstream.config import Config
from volstream.runtime import ServiceContext, service_context, wall_ns
from volstream.v1 import market_data_pb2 as md_pb
from volstream.wire import varint

log = logging.getLogger("svc_connector")

BATCH_MAX_EVENTS = 256
BATCH_MAX_DELAY_S = 0.025
# Distinct count names per connector; later new names fold into "<prefix>.other".
MAX_COUNT_NAMES = 256
_COUNTER_NAME = re.compile(r"[^a-z0-9_.]")


def bounded_count_name(name: str, known: Mapping[str, object], limit: int = MAX_COUNT_NAMES) -> str:
    """``name``, or ``<prefix>.other`` once ``limit`` names are known: names carry venue text
    (an unknown channel's name), and a hostile or broken feed must not grow the metric's
    label set without bound."""
    if name in known or len(known) < limit:
        return name
    return f"{name.split('.', 1)[0]}.other"


class NatsSink:
    """EventSink publishing batched events of one venue through the service context."""

    def __init__(self, ctx: ServiceContext, venue: str) -> None:
        self.ctx = ctx
        self.venue = venue
        self.source = f"connector.{venue}"
        self.run_id = format(time.time_ns(), "x")
        self._batch_seq: dict[str, int] = {}
        self._subject_ccy: dict[str, str] = {}
        self._subjects: dict[tuple[str, str], str] = {}
        self._batcher: Batcher[NormalisedEvent] = Batcher(
            self._flush, max_items=BATCH_MAX_EVENTS, max_delay_s=BATCH_MAX_DELAY_S
        )
        self._events = ctx.metrics.counter("connector_events", "normalised events by kind")
        self._named = ctx.metrics.counter("connector_counts", "connector state and frame counters")
        self.published_events = 0
        self.dead_letters = 0
        # Counts are kept here and handed to the metrics in bulk (export_counts), not per
        # call: a metrics add costs tens of microseconds and a frame makes several counts (it
        # was a third of the per-frame cost). Exported ones move to _exported (see counts).
        self._exported: Counter[str] = Counter()
        self._unexported: Counter[str] = Counter()
        self._labels: dict[str, dict[str, str]] = {}
        self._dead_seq = 0

    async def emit(self, currency: str, kind: MdKind, event: md_pb.MarketDataEvent) -> None:
        """Batch ``event`` for its subject. The sink owns the event from here on: its header
        gets the publish time when the batch is flushed (no copy is made)."""
        subject = self._subjects.get((currency, kind)) or self._subject(currency, kind)
        if self._batcher.append(subject, NormalisedEvent(currency, kind, event)):
            await self._batcher.flush_key(subject)

    async def emit_all(self, events: list[NormalisedEvent]) -> None:
        subjects = self._subjects
        append = self._batcher.append
        for item in events:
            currency, kind = item.currency, item.kind
            subject = subjects.get((currency, kind)) or self._subject(currency, kind)
            if append(subject, item):
                await self._batcher.flush_key(subject)

    def _subject(self, currency: str, kind: MdKind) -> str:
        subject = self.ctx.subjects.md(self.venue, currency, kind)
        self._subject_ccy[subject] = currency.upper()
        self._subjects[(currency, kind)] = subject
        return subject

    async def dead_letter(self, raw: bytes, reason: str) -> None:
        # A unique id per frame: two identical bad frames are two dead letters (counts must
        # reconcile: every frame is either published or dead-lettered).
        self._dead_seq += 1
        await self.ctx.dead_letters.send(
            self.venue,
            raw,
            reason,
            f"ws.{self.venue}",
            msg_id=f"{self.source}.{self.run_id}.dlq.{self._dead_seq}",
        )
        self.dead_letters += 1

    @property
    def counts(self) -> Counter[str]:
        """Every count since start, by name (a fresh Counter)."""
        total = Counter(self._exported)
        total.update(self._unexported)
        return total

    def count(self, name: str, value: int = 1) -> None:
        self._unexported[name] += value

    def count_all(self, counts: Mapping[str, int]) -> None:
        # A plain loop: Counter.update starts with an isinstance(..., Mapping) ABC check
        # that costs more than the few additions of a frame.
        unexported = self._unexported
        get = unexported.get
        for name, value in counts.items():
            unexported[name] = get(name, 0) + value

    def export_counts(self) -> None:
        """Add the counts since the last export to the ``connector_counts`` metric (called
        with every published batch and once a second)."""
        if not self._unexported:
            return
        exported = self._exported
        for name, value in self._unexported.items():
            labels = self._labels.get(name)
            if labels is None:
                name = bounded_count_name(name, self._labels)
                labels = self._labels.get(name)
                if labels is None:
                    label = _COUNTER_NAME.sub("_", name.lower())[:80]
                    labels = self._labels[name] = {"venue": self.venue, "name": label}
            self._named.add(value, labels)
            exported[name] += value
        self._unexported.clear()

    async def _flush(self, subject: str, events: list[NormalisedEvent]) -> None:
        seq = self._batch_seq.get(subject, 0) + 1
        self._batch_seq[subject] = seq
        payload = batch_bytes(
            self.venue, self._subject_ccy[subject], self.source, seq, wall_ns(), events
        )
        await self.ctx.publisher.publish(
            subject, payload, f"{self.source}.{self.run_id}.{subject}.{seq}"
        )
        self.published_events += len(events)
        self._events.add(len(events), {"venue": self.venue, "subject": subject})
        self.export_counts()

    async def close(self) -> None:
        await self._batcher.close()
        self.export_counts()


# MarketDataBatch.events is field 4, length-delimited: tag byte (4 << 3) | 2.
_EVENTS_TAG = 0x22


# Tag + length prefix of an event of each length below 16 KiB (events are a few hundred
# bytes; a longer one is prefixed by hand).
_EVENT_PREFIXES: tuple[bytes, ...] = tuple(
    bytes((_EVENTS_TAG,)) + varint(n) for n in range(1 << 14)
)


def batch_bytes(
    venue: str,
    currency: str,
    source: str,
    sequence: int,
    publish_ns: int,
    events: list[NormalisedEvent],
) -> bytes:
    """The wire bytes of a MarketDataBatch of ``events``: every event header gets
    ``publish_ns``; the batch header has ``sequence``, ``publish_ns`` and the latest event
    time (``publish_ns`` when no event has one).

    Same bytes as building the batch message and serializing it, without deep-copying every
    event into it: a repeated message field is its elements' tag + length + bytes, one after
    the other, after the lower-numbered fields. The events' own headers are stamped.
    """
    event_ns = 0
    head = md_pb.MarketDataBatch(venue=venue, currency=currency)
    parts: list[bytes] = [b""]
    append = parts.append
    prefixes = _EVENT_PREFIXES
    for item in events:
        header = item.header or item.event_header()
        if header is not None:
            header.publish_time_ns = publish_ns
            if header.event_time_ns > event_ns:
                event_ns = header.event_time_ns
        data = item.event.SerializeToString()
        size = len(data)
        append(prefixes[size] if size < 1 << 14 else bytes((_EVENTS_TAG,)) + varint(size))
        append(data)
    head.header.source = source
    head.header.sequence = sequence
    head.header.publish_time_ns = publish_ns
    head.header.event_time_ns = event_ns or publish_ns
    parts[0] = head.SerializeToString()
    return b"".join(parts)


async def _listen_for_resync(ctx: ServiceContext, venue: str, connector: VenueConnector) -> None:
    """ctl.connector.<venue>.resync {"symbols": [...]}: resubscribe books a consumer lost."""

    async def on_request(msg: Msg) -> None:
        try:
            request = orjson.loads(msg.data)
            symbols = [str(s) for s in request["symbols"]]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("%s: bad resync request %r: %s", venue, msg.data[:200], exc)
            return
        asked = connector.resync_books(symbols)
        log.info("%s: resync of %d books requested, %d resubscribed", venue, len(symbols), asked)

    await ctx.nc.subscribe(ctx.subjects.control("connector", venue, "resync"), cb=on_request)


async def _watch_publishes(
    ctx: ServiceContext, sinks: list[NatsSink], every_s: float = 1.0
) -> None:
    """Once a second: log loudly when publishes failed for good (the publisher retries with
    the same msg-id by itself first), and export the sinks' counts.

    It reads the publisher's failure count rather than awaiting ``flush()``: under a steady
    stream something is always in flight, so a flush never sees an empty window and would
    time out (and report a failure) although every publish is acknowledged."""
    reported = ctx.publisher.stats().failures
    while True:
        await asyncio.sleep(every_s)
        for sink in sinks:
            sink.export_counts()
        failures = ctx.publisher.stats().failures
        if failures > reported:
            log.error("%d JetStream publishes failed after their retries", failures - reported)
            reported = failures


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def venue_options(cfg: Config, venue: str) -> dict[str, str]:
    """The adapter options of ``venue`` from ``cfg.extra``: key ``"<venue>.<option>"``
    (e.g. ``{"binance.book_mode": "diff"}``); each adapter documents the options it reads."""
    prefix = f"{venue}."
    return {k.removeprefix(prefix): v for k, v in cfg.extra.items() if k.startswith(prefix)}


def connector_config(cfg: Config, adapter: VenueAdapter) -> ConnectorConfig:
    """Venue URLs: the simulator's when cfg.sim_url is set, else live or testnet."""
    endpoints = None
    if cfg.sim_url:
        http_base = f"{cfg.sim_url.rstrip('/')}/{adapter.name}"
        ws_base = re.sub(r"^http", "ws", http_base)
        endpoints = adapter.simulator_endpoints(http_base, ws_base)
    return ConnectorConfig(
        currencies=cfg.currencies,
        environment="testnet" if cfg.testnet else "live",
        endpoints=endpoints,
        venue_options=venue_options(cfg, adapter.name),
    )


async def run(cfg: Config) -> None:
    async with service_context(cfg, "connector") as ctx:
        connectors: list[tuple[VenueConnector, NatsSink]] = []
        for venue in cfg.venues:
            try:
                adapter = registry.get(venue)
            except KeyError:
                log.warning("no adapter for venue %s: skipped", venue)
                continue
            sink = NatsSink(ctx, venue)
            connectors.append((adapter.make_connector(connector_config(cfg, adapter), sink), sink))
        tasks = [asyncio.create_task(c.run(), name=f"connector.{c}") for c, _ in connectors]
        for connector, sink in connectors:
            await _listen_for_resync(ctx, sink.venue, connector)

        async def stop() -> None:
            for c, sink in connectors:
                await c.stop()
                await sink.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        ctx.on_close(stop)
        sinks = [sink for _, sink in connectors]
        flusher: asyncio.Task[None] = asyncio.create_task(_watch_publishes(ctx, sinks))

        async def stop_flusher() -> None:
            await _cancel(flusher)

        ctx.on_close(stop_flusher)
        log.info("connector running for %s", ", ".join(cfg.venues))
        await ctx.wait_stopped()
