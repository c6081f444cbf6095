"""The Deribit connector against the exchange simulator over real websockets and HTTP.

Each test starts the simulator (simulator) on a free port and the connector from
the registry with the simulator's URLs; only the URLs differ from a live run. Faults are
injected through the simulator's own API.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from simulator import SimConfig, SimHandle, run_simulator
from svc_connector.venues import registry
from svc_connector.venues.base import ConnectionState, ConnectorConfig, Endpoints, MemorySink
from svc_connector.venues.deribit.client import DeribitConnector
from tests.connector.deribit_fixtures import Books
from volstream.v1 import market_data_pb2 as md_pb

SIM = SimConfig(
    port=0,
    currencies=("BTC",),
    max_expiries=2,
    messages_per_second=400.0,
    min_heartbeat_interval_s=1.0,
)
CONNECTOR = ConnectorConfig(
    currencies=("BTC",),
    heartbeat_interval_s=1.0,
    # Small budget: the ~160 channels spread over several connections.
    max_channels_per_connection=60,
    reconnect_initial_s=0.05,
    reconnect_max_s=0.5,
    instrument_refresh_s=60.0,
    venue_options={"min_heartbeat_interval_s": "1", "early_refresh_spacing_s": "0.2"},
)


@dataclass
class Running:
    sim: SimHandle
    connector: DeribitConnector
    sink: MemorySink

    def options(self) -> list[str]:
        sets = self.sink.of_case("instrument_set")
        return [
            i.symbol
            for i in sets[-1].instrument_set.instruments
            if i.kind == md_pb.INSTRUMENT_KIND_OPTION
        ]

    def all_live(self) -> bool:
        conns = self.connector.connections
        return bool(conns) and all(c.state == ConnectionState.LIVE for c in conns)

    def sim_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.sim.stats()["venues"]["deribit"]  # type: ignore[index]
        return stats

    async def until(self, condition: Callable[[MemorySink], bool], timeout_s: float = 10.0) -> None:
        await self.sink.wait_for(condition, timeout_s)


@asynccontextmanager
async def running(**connector_changes: Any) -> AsyncIterator[Running]:
    sim = await run_simulator(SIM)
    sink = MemorySink()
    urls = sim.urls["deribit"]
    config = replace(
        CONNECTOR, endpoints=Endpoints(urls.ws_url, urls.rest_base), **connector_changes
    )
    connector = registry.get("deribit").make_connector(config, sink)
    assert isinstance(connector, DeribitConnector)
    task = asyncio.create_task(connector.run())
    state = Running(sim, connector, sink)
    try:
        await state.until(
            lambda s: (
                bool(s.of_case("instrument_set"))
                and len(s.of_case("book_snapshot")) >= len(state.options())
                and state.all_live()
            )
        )
        yield state
    finally:
        await connector.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()


def _symbols_of(sink: MemorySink, case: str) -> list[str]:
    return [getattr(e, case).symbol for e in sink.of_case(case)]


def busiest_book(sink: MemorySink) -> str:
    """The symbol with the most book deltas so far. A check that needs a book to change
    again after a fault takes this one: in the simulator, as on the venues, a quiet book may
    not change for longer than the check waits."""
    return Counter(_symbols_of(sink, "book_delta")).most_common(1)[0][0]


def resynced(symbol: str) -> Callable[[MemorySink], bool]:
    """True once ``symbol`` had a BookReset, then a fresh snapshot, then a change."""

    def check(sink: MemorySink) -> bool:
        seen_reset = seen_snapshot = False
        for event in sink.events:
            case = str(event.event.WhichOneof("event"))
            if getattr(getattr(event.event, case), "symbol", None) != symbol:
                continue
            if case == "book_reset":
                seen_reset = True
            elif case == "book_snapshot" and seen_reset:
                seen_snapshot = True
            elif case == "book_delta" and seen_snapshot:
                return True
        return False

    return check


def _assert_books_consistent(sink: MemorySink) -> Books:
    books = Books()
    for event in sink.events:
        books.apply(event.event)  # asserts every delta sits on the sequence the consumer holds
    return books


async def test_snapshots_changes_heartbeats_and_indices_arrive() -> None:
    async with running() as run:
        options = run.options()
        assert len(options) > 20
        await run.until(
            lambda s: (
                len(s.of_case("book_delta")) >= 100
                and s.counters["heartbeat.test_request"] >= 2 * len(run.connector.connections)
                and bool(s.of_case("index_price"))
                and bool(s.of_case("volatility_index"))
            )
        )
        sink = run.sink
        # Every option book started from a snapshot and every change applied in sequence.
        assert set(_symbols_of(sink, "book_snapshot")) == set(options)
        books = _assert_books_consistent(sink)
        assert books.broken == set()
        assert sink.counters["book.gap"] == 0 and sink.dead_letters == []
        # Nearly every frame took a session hot path, and the runtime counted them.
        assert 0.5 * sink.counters["frames"] <= sink.counters["frames.hot_path"]
        assert sink.counters["frames.hot_path"] <= sink.counters["frames"]
        # Heartbeats were answered: the simulator cut nobody off.
        stats = run.sim_stats()
        assert stats["counters"]["heartbeat_disconnects"] == 0
        assert sink.counters["response.public/test"] >= sink.counters[
            "heartbeat.test_request"
        ] - len(run.connector.connections)
        # The channel plan was split over several connections, all subscribed.
        conns = run.connector.connections
        assert len(conns) >= 3
        assert stats["connections_open"] == len(conns)
        planned = sum(len(c.desired) for c in conns)
        assert planned == 2 * len(options) + 1 + 3  # + perpetual ticker, index, DVOL, state
        assert stats["channels_subscribed"] == planned
        # Normalised values are in volstream units.
        ticker = next(e.ticker for e in sink.of_case("ticker") if e.ticker.HasField("mark_iv"))
        assert 0.05 < ticker.mark_iv < 3.0
        assert ticker.forward_usd > 0 and ticker.forward_name
        assert ticker.mark_price_usd_per_coin == ticker.mark_price_native * ticker.forward_usd
        index = sink.of_case("index_price")[0].index_price
        assert index.index_name == "btc_usd" and index.price_usd > 0
        assert 0.05 < sink.of_case("volatility_index")[0].volatility_index.volatility < 3.0
        # Header sequences are unique across the connector's connections.
        sequences = [
            getattr(e.event, str(e.event.WhichOneof("event"))).header.sequence for e in sink.events
        ]
        assert len(set(sequences)) == len(sequences)


async def test_reconnects_and_resubscribes_after_the_sim_drops_connections() -> None:
    async with running() as run:
        conns = len(run.connector.connections)
        snapshots_before = len(run.sink.of_case("book_snapshot"))
        await run.sim.fault("disconnect")
        options = len(run.options())
        await run.until(
            lambda s: (
                s.counters["connection.connected"] >= 2 * conns
                and len(s.of_case("book_snapshot")) >= snapshots_before + options
                and run.all_live()
            )
        )
        assert run.sink.counters["connection.reconnect"] >= conns
        # Books continue from the fresh snapshots; data flows again on the new sockets.
        deltas_after = len(run.sink.of_case("book_delta"))
        await run.until(lambda s: len(s.of_case("book_delta")) >= deltas_after + 20)
        _assert_books_consistent(run.sink)
        assert run.sim_stats()["connections_open"] == conns


async def test_sequence_gap_resyncs_only_that_book() -> None:
    async with running() as run:
        await run.until(lambda s: len(s.of_case("book_delta")) >= 30)
        symbol = busiest_book(run.sink)  # the check needs a change after the resync
        connected = run.sink.counters["connection.connected"]
        await run.sim.fault("sequence_gap", symbol=symbol)

        await run.until(resynced(symbol), 15.0)
        resets = [e.book_reset for e in run.sink.of_case("book_reset")]
        assert [r.symbol for r in resets] == [symbol]
        assert "gap" in resets[0].reason
        assert run.sink.counters["book.gap"] == 1
        assert run.sink.counters["book.resubscribe"] == 1
        # Resynced over the same connection: no reconnect.
        assert run.sink.counters["connection.connected"] == connected
        books = _assert_books_consistent(run.sink)
        assert symbol not in books.broken


async def test_swapped_book_messages_are_resynced_too() -> None:
    async with running() as run:
        await run.until(lambda s: len(s.of_case("book_delta")) >= 30)
        symbol = busiest_book(run.sink)
        await run.sim.fault("out_of_order", symbol=symbol)
        await run.until(resynced(symbol), 15.0)
        assert run.sink.counters["book.gap"] == 1
        assert [e.book_reset.symbol for e in run.sink.of_case("book_reset")] == [symbol]
        books = _assert_books_consistent(run.sink)
        assert symbol not in books.broken


async def test_watchdog_reconnects_a_silent_connection() -> None:
    async with running(watchdog_timeout_s=1.5) as run:
        conns = len(run.connector.connections)
        snapshots = len(run.sink.of_case("book_snapshot"))
        await run.sim.fault("heartbeat_stall", duration_s=4.0)
        await run.until(
            lambda s: (
                s.counters["connection.watchdog_timeout"] >= conns
                and s.counters["connection.connected"] >= 2 * conns
                and run.all_live()
                # every book resubscribed on the new sockets
                and len(s.of_case("book_snapshot")) >= snapshots + len(run.options())
            ),
            15.0,
        )
        _assert_books_consistent(run.sink)


async def test_bad_frames_are_dead_lettered_and_the_connection_survives() -> None:
    async with running() as run:
        connected = run.sink.counters["connection.connected"]
        await run.sim.fault("malformed", count=2)
        await run.sim.fault("unknown_fields", count=20)
        await run.sim.fault("missing_fields", count=20)
        await run.sim.fault("duplicate")
        conns = len(run.connector.connections)
        await run.until(lambda s: len(s.dead_letters) >= 2 * conns)
        assert all("malformed JSON" in d.reason for d in run.sink.dead_letters)
        deltas = len(run.sink.of_case("book_delta"))
        await run.until(lambda s: len(s.of_case("book_delta")) >= deltas + 30)
        assert run.sink.counters["connection.connected"] == connected
        assert len(run.sink.dead_letters) == 2 * conns
        _assert_books_consistent(run.sink)
        # Option tickers without their optional fields still normalise (greeks absent).
        assert any(
            e.ticker.HasField("mark_iv") and not e.ticker.HasField("delta")
            for e in run.sink.of_case("ticker")
        )


def _sessions(run: Running) -> dict[str, tuple[int, int]]:
    """Each connection (the object's identity) and how many times it has connected, by name."""
    return {c.name: (id(c), c.connects) for c in run.connector.connections}


def _assert_no_restart(run: Running, before: dict[str, tuple[int, int]]) -> None:
    """Every connection open before is the same object on its first session. A listing may
    add a connection when the others are full (how full depends on the day's calendar):
    that is not a restart."""
    after = _sessions(run)
    assert all(after.get(name) == was for name, was in before.items()), (before, after)
    assert all(n == 1 for name, (_, n) in after.items() if name not in before), after


async def test_listing_and_expiry_are_followed_without_restart() -> None:
    async with running() as run:
        before = _sessions(run)
        listed = await run.sim.fault("list", currency="BTC")
        symbols = listed["symbols"]
        assert isinstance(symbols, list)
        new_symbols = [str(s) for s in symbols]
        assert new_symbols

        def seen_listing(s: MemorySink) -> bool:
            return any(
                set(new_symbols) <= set(e.instrument_set.listed_symbols)
                for e in s.of_case("instrument_set")
            )

        await run.until(seen_listing)
        await run.until(lambda s: set(new_symbols) <= set(_symbols_of(s, "book_snapshot")))
        _assert_no_restart(run, before)
        channels = set().union(*(c.desired for c in run.connector.connections))
        assert all(f"book.{sym}.100ms" in channels for sym in new_symbols)

        await run.sim.fault("expire", symbol=new_symbols[0])

        def seen_expiry(s: MemorySink) -> bool:
            return any(
                new_symbols[0] in e.instrument_set.delisted_symbols
                for e in s.of_case("instrument_set")
            )

        await run.until(seen_expiry)
        channels = set().union(*(c.desired for c in run.connector.connections))
        assert f"book.{new_symbols[0]}.100ms" not in channels
        assert f"ticker.{new_symbols[0]}.100ms" not in channels
        await run.until(
            lambda s: (
                run.sim_stats()["channels_subscribed"]
                == sum(len(c.desired) for c in run.connector.connections)
            )
        )
        _assert_no_restart(run, before)
