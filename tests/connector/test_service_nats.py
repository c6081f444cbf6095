"""The connector service end to end: ``svc_connector.service.run`` against the exchange
simulator over real websockets, publishing to a real nats-server, observed only from NATS.

One test per venue: books, tickers and index prices arrive for BTC and ETH in the MD stream
as MarketDataBatch messages; then injected faults are survived: a sequence gap gives that
book a BookReset and a fresh snapshot, a disconnect is followed by data again within the
reconnect backoff, a malformed frame lands on ``dlq.connector.<venue>`` with its reason, and
the service task never exits.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from simulator import SimConfig, SimHandle, run_simulator
from svc_connector import service
from svc_connector.venues.base import ConnectorConfig
from volstream.bus.connection import connect
from volstream.bus.dlq import DLQ_REASON
from volstream.bus.embedded import EmbeddedNats
from volstream.config import Config
from volstream.runtime import provision_streams
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry
from volstream.v1 import market_data_pb2 as md_pb

CURRENCIES = ("BTC", "ETH")
# The ConnectorConfig defaults the service runs with.
DEFAULTS = ConnectorConfig()
# Time for a reconnect's connect, first (unpaced: a new connection's token bucket is full)
# subscribe and first snapshot on a loaded 2-core machine: scheduling slack, not a promise.
CONNECT_SLACK_S = 3.0
# How often the service exports its counters when no batch is published.
EXPORT_EVERY_S: float = inspect.signature(service._watch_publishes).parameters["every_s"].default
# Bybit's option websocket has no index channel: its index price rides on every ticker.
INDEX_IN_TICKER = frozenset({"bybit"})
# Binance's default partial books are whole snapshots (no sequence to lose): run its diff
# books, which bridge onto REST snapshots, so that a gap means something.
VENUE_EXTRA: dict[str, dict[str, str]] = {
    "binance": {"binance.book_mode": "diff", "binance.depth_snapshots_per_second": "200"},
}


@dataclass(frozen=True)
class Seen:
    """One event as read back from the MD stream."""

    subject: str
    currency: str
    case: str
    symbol: str
    event: md_pb.MarketDataEvent
    arrived: float


@dataclass
class Observed:
    md: list[Seen] = field(default_factory=list)
    dlq: list[Msg] = field(default_factory=list)

    def of(self, case: str, currency: str | None = None, after: float = 0.0) -> list[Seen]:
        return [
            s
            for s in self.md
            if s.case == case
            and s.arrived >= after
            and (currency is None or s.currency == currency)
        ]


def _symbol(event: md_pb.MarketDataEvent, case: str) -> str:
    return str(getattr(getattr(event, case), "symbol", ""))


async def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll until ``condition`` holds; returns the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


def _has_index(seen: Observed, venue: str, currency: str) -> bool:
    if venue in INDEX_IN_TICKER:
        return any(s.event.ticker.index_price_usd > 0 for s in seen.of("ticker", currency))
    return bool(seen.of("index_price", currency))


def _connector_counts(venue: str) -> dict[str, float]:
    """``connector_counts`` of ``venue`` as this process's Prometheus endpoint renders them
    (the service under test runs in this process)."""
    text = setup_telemetry("connector").render().decode()
    counts: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name != "volstream_connector_counts":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("venue") == venue:
                counts[sample.labels["name"]] += sample.value
    return counts


def _books_steady(seen: Observed, quiet_s: float) -> bool:
    snapshots = [s for s in seen.of("book_snapshot") if not s.event.book_snapshot.is_periodic]
    if not snapshots or time.monotonic() - snapshots[-1].arrived < quiet_s:
        return False
    return {s.symbol for s in seen.of("book_delta")} <= {s.symbol for s in snapshots}


@dataclass
class ServiceRun:
    venue: str
    sim: SimHandle
    task: asyncio.Task[None]
    seen: Observed

    def connections_total(self) -> int:
        """Websocket connections the simulator has accepted for the venue so far."""
        stats: Any = self.sim.stats()["venues"]
        return int(stats[self.venue]["counters"]["connections_total"])

    def alive(self) -> None:
        assert not self.task.done(), f"connector service exited: {self.task}"


@asynccontextmanager
async def service_running(venue: str, nats_url: str) -> AsyncIterator[ServiceRun]:
    sim = await run_simulator(
        SimConfig(
            port=0,
            venues=(venue,),
            currencies=CURRENCIES,
            max_expiries=1,
            messages_per_second=600.0,
            index_interval_s=0.25,
        )
    )
    cfg = Config(
        nats_url=nats_url,
        venues=(venue,),
        currencies=CURRENCIES,
        sim_url=sim.base_url,
        extra=VENUE_EXTRA.get(venue, {}),
    )
    await provision_streams(nats_url, cfg)
    seen = Observed()
    nc = await connect(nats_url, "test-observer")
    js = nc.jetstream()
    subjects = Subjects(cfg.namespace)

    async def on_md(msg: Msg) -> None:
        batch = md_pb.MarketDataBatch.FromString(msg.data)
        now = time.monotonic()
        for event in batch.events:
            case = str(event.WhichOneof("event"))
            seen.md.append(
                Seen(msg.subject, batch.currency, case, _symbol(event, case), event, now)
            )

    async def on_dlq(msg: Msg) -> None:
        seen.dlq.append(msg)

    await js.subscribe(subjects.md_filter(venue), ordered_consumer=True, cb=on_md)
    await js.subscribe(subjects.dlq("connector", venue), ordered_consumer=True, cb=on_dlq)
    task = asyncio.create_task(service.run(cfg), name=f"connector-service-{venue}")
    try:
        yield ServiceRun(venue, sim, task, seen)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.drain()
        await sim.stop()


@pytest.mark.parametrize("venue", ["deribit", "okx", "bybit", "binance"])
async def test_connector_service_publishes_and_survives_faults(
    venue: str, nats_server: EmbeddedNats
) -> None:
    async with service_running(venue, nats_server.url) as run:
        seen = run.seen
        # -- books, tickers and index prices for both currencies, from the MD stream --------
        await _until(
            lambda: all(
                seen.of("book_snapshot", ccy)
                and seen.of("book_delta", ccy)
                and seen.of("ticker", ccy)
                and _has_index(seen, venue, ccy)
                for ccy in CURRENCIES
            ),
            20.0,
            f"{venue}: books, tickers and index prices for {CURRENCIES}",
        )
        # Steady state: every book subscribed (the initial subscribes are paced) and no
        # subscription snapshot for a while, so that the faults below hit live books.
        await _until(lambda: _books_steady(seen, 0.5), 20.0, f"{venue}: books subscribed")
        run.alive()
        for s in seen.md:
            kind = "book" if s.case.startswith("book_") else s.subject.rsplit(".", 1)[-1]
            assert s.subject == f"md.{venue}.{s.currency.lower()}.{kind}"
        ticker = seen.of("ticker")[-1].event.ticker
        assert ticker.header.source == f"connector.{venue}" and ticker.header.publish_time_ns > 0
        for ccy in CURRENCIES:
            if venue in INDEX_IN_TICKER:
                assert seen.of("ticker", ccy)[-1].event.ticker.index_price_usd > 0
            else:
                assert seen.of("index_price", ccy)[-1].event.index_price.price_usd > 0

        # -- sequence gap: BookReset, then a fresh snapshot from the first resubscribe ------
        # The busiest book: a gap shows at the book's next change, and a quiet book may not
        # change within the wait (tests/connector/test_deribit_client_sim.py::busiest_book).
        symbol = Counter(s.symbol for s in seen.of("book_delta")).most_common(1)[0][0]
        fault_at = time.monotonic()
        await run.sim.fault("sequence_gap", venue=venue, symbol=symbol)
        await _until(
            lambda: any(s.symbol == symbol for s in seen.of("book_reset", after=fault_at)),
            10.0,
            f"{venue}: BookReset of {symbol} after a sequence gap",
        )
        reset = next(s for s in seen.of("book_reset", after=fault_at) if s.symbol == symbol)
        assert "gap" in reset.event.book_reset.reason.lower()
        await _until(
            lambda: any(s.symbol == symbol for s in seen.of("book_snapshot", after=reset.arrived)),
            2 * DEFAULTS.resync_timeout_s,
            f"{venue}: fresh snapshot of {symbol} after its reset",
        )
        snapshot = next(
            s for s in seen.of("book_snapshot", after=reset.arrived) if s.symbol == symbol
        )
        # Timed by the connector's own receive stamps (the observer's clock adds NATS and
        # scheduling delays of a shared test box). A resync without a snapshot is asked again
        # after resync_timeout_s: sooner means the first request was answered (the rest of
        # that interval is the slack for pacing and scheduling).
        resync_s = (
            snapshot.event.book_snapshot.header.receive_time_ns
            - reset.event.book_reset.header.receive_time_ns
        ) / 1e9
        assert 0 < resync_s < DEFAULTS.resync_timeout_s, f"resync took {resync_s:.2f}s"
        # Only the gapped book was reset.
        assert {s.symbol for s in seen.of("book_reset", after=fault_at)} == {symbol}
        run.alive()

        # -- disconnect: data flows again within the reconnect backoff bound ------------------
        connections = run.connections_total()
        cut_at = time.monotonic()
        await run.sim.fault("disconnect", venue=venue)
        # Fresh snapshots come only from new subscriptions, so they prove the reconnect;
        # data after them proves the flow resumed.
        resumed_at = await _until(
            lambda: (
                bool(seen.of("book_snapshot", after=cut_at))
                and bool(
                    seen.of("book_delta", after=seen.of("book_snapshot", after=cut_at)[0].arrived)
                )
            ),
            10.0,
            f"{venue}: data after a disconnect",
        )
        assert run.connections_total() > connections
        # The first retry waits at most 2 x reconnect_initial_s (exponential base + jitter);
        # then connect, subscribe and the first snapshot (CONNECT_SLACK_S).
        bound = 2 * DEFAULTS.reconnect_initial_s + CONNECT_SLACK_S
        assert resumed_at - cut_at <= bound, f"resumed after {resumed_at - cut_at:.2f}s"
        run.alive()

        # -- malformed frame: a dead letter with its reason --------------------------------
        dead_before = len(seen.dlq)
        await run.sim.fault("malformed", venue=venue)
        await _until(
            lambda: len(seen.dlq) > dead_before, 5.0, f"{venue}: malformed frame dead-lettered"
        )
        dead = seen.dlq[dead_before]
        assert dead.subject == f"dlq.connector.{venue}"
        reason = (dead.headers or {}).get(DLQ_REASON, "")
        assert "malformed json" in reason.lower(), reason
        assert dead.data  # the original (truncated) frame, byte for byte
        # Still publishing after everything.
        last = time.monotonic()
        await _until(lambda: bool(seen.of("book_delta", after=last)), 5.0, f"{venue}: flowing")
        run.alive()

        # -- every frame accounted for in the connector's Prometheus counters ----------------
        def outcomes(counts: dict[str, float]) -> float:
            ignored = sum(v for k, v in counts.items() if k.startswith("frames.ignored."))
            return counts["frames.published"] + counts["frames.dead_lettered"] + ignored

        # Counts are exported with each batch and once every EXPORT_EVERY_S: the dead letter
        # shows within a few of those (the deadline bounds a hang only).
        await _until(
            lambda: _connector_counts(venue)["frames.dead_lettered"] >= 1,
            5 * EXPORT_EVERY_S,
            f"{venue}: the dead letter counted",
        )
        counts = _connector_counts(venue)
        assert counts["frames"] == outcomes(counts) > 0
        assert counts["frames.dead_lettered"] >= 1
        ignored_kinds = {k: v for k, v in counts.items() if k.startswith("frames.ignored.")}
        assert counts["frames.published"] > 0.5 * outcomes(counts), ignored_kinds


def test_count_names_stay_bounded_whatever_the_feed_sends() -> None:
    # A feed inventing a new channel name per frame must not grow the metric's label set.
    known: dict[str, object] = {}
    for i in range(1000):
        name = service.bounded_count_name(f"unknown_channel.hostile{i}", known, limit=8)
        known.setdefault(name, None)
    assert len(known) == 9
    assert "unknown_channel.other" in known
    assert "unknown_channel.hostile0" in known
    # A name already known keeps its own counter after the limit.
    assert (
        service.bounded_count_name("unknown_channel.hostile3", known, limit=8)
        == "unknown_channel.hostile3"
    )
