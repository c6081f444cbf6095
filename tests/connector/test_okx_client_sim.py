"""The OKX connector against the exchange simulator over real websockets and HTTP.

Each test starts the simulator (simulator) speaking OKX on a free port and the
connector from the registry with the simulator's URLs; only the URLs differ from a live
run. Faults are injected through the simulator's own API. ``sim_running`` is shared with the
Bybit and Binance simulator tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

from simulator import SimConfig, SimHandle, run_simulator
from svc_connector.runtime.pool import PooledConnector
from svc_connector.venues import registry
from svc_connector.venues.base import ConnectionState, ConnectorConfig, MemorySink
from tests.connector.test_deribit_client_sim import _assert_books_consistent as consistent_books
from tests.connector.test_deribit_client_sim import _symbols_of as symbols_of
from tests.connector.test_deribit_client_sim import busiest_book, resynced
from volstream.v1 import market_data_pb2 as md_pb


@dataclass
class SimRun:
    venue: str
    sim: SimHandle
    connector: PooledConnector
    sink: MemorySink

    def options(self) -> list[str]:
        sets = self.sink.of_case("instrument_set")
        return [
            i.symbol
            for i in sets[-1].instrument_set.instruments
            if i.kind == md_pb.INSTRUMENT_KIND_OPTION and i.is_active
        ]

    def all_live(self) -> bool:
        conns = self.connector.connections
        return bool(conns) and all(c.state == ConnectionState.LIVE for c in conns)

    def sim_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.sim.stats()["venues"][self.venue]  # type: ignore[index]
        return stats

    def channels(self) -> set[str]:
        return set().union(*(c.desired for c in self.connector.connections))

    async def until(self, condition: Callable[[MemorySink], bool], timeout_s: float = 10.0) -> None:
        try:
            await self.sink.wait_for(condition, timeout_s)
        except TimeoutError:
            states = [c.status() for c in self.connector.connections]
            raise AssertionError(
                f"condition not met in {timeout_s}s; counters {dict(self.sink.counters)}; "
                f"connections {states}"
            ) from None

    async def fault(self, kind: str, **kwargs: Any) -> dict[str, object]:
        return await self.sim.fault(kind, venue=self.venue, **kwargs)


@asynccontextmanager
async def sim_running(
    venue: str,
    sim_options: Mapping[str, object] | None = None,
    **connector_changes: Any,
) -> AsyncIterator[SimRun]:
    sim = await run_simulator(
        SimConfig(
            port=0,
            venues=(venue,),
            currencies=("BTC",),
            max_expiries=2,
            messages_per_second=400.0,
            venue_options={venue: dict(sim_options or {})},
        )
    )
    adapter = registry.get(venue)
    base = sim.urls[venue].rest_base
    config = ConnectorConfig(
        currencies=("BTC",),
        endpoints=adapter.simulator_endpoints(base, "ws" + base.removeprefix("http")),
        max_channels_per_connection=60,
        max_connections=8,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.5,
        instrument_refresh_s=60.0,
    )
    sink = MemorySink()
    connector = adapter.make_connector(replace(config, **connector_changes), sink)
    assert isinstance(connector, PooledConnector)
    task = asyncio.create_task(connector.run())
    run = SimRun(venue, sim, connector, sink)
    try:
        await run.until(
            lambda s: (
                bool(s.of_case("instrument_set"))
                and set(run.options())
                <= {e.book_snapshot.symbol for e in s.of_case("book_snapshot")}
                and run.all_live()
            ),
            15.0,
        )
        yield run
    finally:
        await connector.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()


async def check_gap_resync_and_reconnect(run: SimRun) -> str:
    """A sequence gap resyncs that one book on its connection; a disconnect of every
    connection reconnects and resubscribes them all. Returns the book's symbol."""
    await run.until(lambda s: len(s.of_case("book_delta")) >= 30)
    symbol = busiest_book(run.sink)  # the check needs a change after the resync
    connected = run.sink.counters["connection.connected"]
    await run.fault("sequence_gap", symbol=symbol)
    await run.until(resynced(symbol), 15.0)
    resets = [e.book_reset for e in run.sink.of_case("book_reset")]
    assert [r.symbol for r in resets] == [symbol] and "gap" in resets[0].reason
    assert run.sink.counters["connection.connected"] == connected  # same connection

    conns = len(run.connector.connections)
    snapshots = len(run.sink.of_case("book_snapshot"))
    await run.fault("disconnect")
    await run.until(
        lambda s: (
            s.counters["connection.connected"] >= connected + conns
            and len(s.of_case("book_snapshot")) >= snapshots + len(run.options())
            and run.all_live()
        ),
        15.0,
    )
    assert run.sink.counters["connection.reconnect"] >= conns
    assert symbol not in consistent_books(run.sink).broken
    return symbol


# ---- OKX ------------------------------------------------------------------------------------


async def test_okx_books_summaries_and_keepalive() -> None:
    # The simulator closes a connection that sends nothing for 3 s: pings keep them open.
    async with sim_running(
        "okx",
        {"idle_timeout_s": 3.0, "checksums": True},
        heartbeat_interval_s=0.3,
        watchdog_timeout_s=6.0,
    ) as run:
        options = run.options()
        assert len(options) > 20
        conns = len(run.connector.connections)
        await run.until(
            lambda s: (
                len(s.of_case("book_delta")) >= 200
                and s.counters["heartbeat.pong"] >= 2 * conns
                and bool(s.of_case("index_price"))
            ),
            15,
        )
        await asyncio.sleep(3.2)  # longer than the idle timeout
        sink = run.sink
        assert sink.counters["connection.connected"] == conns  # nobody was cut off
        assert set(symbols_of(sink, "book_snapshot")) >= set(options)
        assert sink.counters["book.checksum_ok"] > 200
        assert sink.counters["book.checksum_mismatch"] == 0 and sink.counters["book.gap"] == 0
        assert consistent_books(sink).broken == set() and sink.dead_letters == []
        assert run.sim_stats()["connections_open"] == conns >= 2
        # opt-summary: fractional IVs, the forward, both deltas.
        ticker = next(e.ticker for e in sink.of_case("ticker") if e.ticker.HasField("mark_iv"))
        assert 0.05 < ticker.mark_iv < 3.0 and ticker.forward_usd > 0
        assert ticker.HasField("delta") and ticker.HasField("delta_premium_adjusted")
        index = sink.of_case("index_price")[0].index_price
        assert index.index_name == "BTC-USD" and index.price_usd > 0
        sequences = [
            getattr(e.event, str(e.event.WhichOneof("event"))).header.sequence for e in sink.events
        ]
        assert len(set(sequences)) == len(sequences)


async def test_okx_gap_resync_reconnect_and_expiry() -> None:
    async with sim_running("okx", instrument_refresh_s=1.0) as run:
        symbol = await check_gap_resync_and_reconnect(run)

        # An expiry is found by the periodic refresh and unsubscribed without a restart.
        reconnects = run.sink.counters["connection.reconnect"]
        expired = await run.fault("expire", symbol=symbol)
        assert expired["symbols"] == [symbol]
        await run.until(
            lambda s: any(
                symbol in e.instrument_set.delisted_symbols for e in s.of_case("instrument_set")
            ),
            15.0,
        )
        assert f"books:{symbol}" not in run.channels()
        assert run.sink.counters["connection.reconnect"] == reconnects


async def test_okx_listing_via_the_instruments_channel_and_bad_frames() -> None:
    async with sim_running(
        "okx", instrument_refresh_s=30.0, venue_options={"early_refresh_spacing_s": "0.2"}
    ) as run:
        listed = await run.fault("list", currency="BTC")
        symbols = listed["symbols"]
        assert isinstance(symbols, list)
        new_symbols = [str(s) for s in symbols]
        # The `instruments` channel announces it: discovery refreshes early.
        await run.until(
            lambda s: (
                any(
                    set(new_symbols) <= set(e.instrument_set.listed_symbols)
                    for e in s.of_case("instrument_set")
                )
                and set(new_symbols) <= set(symbols_of(s, "book_snapshot"))
            ),
            15.0,
        )
        assert run.sink.counters["discovery.early_refresh"] >= 1
        assert run.connector.refreshes == 2  # the first one and the early one
        assert f"books:{new_symbols[0]}" in run.channels()
        assert run.sink.counters["connection.reconnect"] == 0

        await run.fault("malformed", count=1)
        await run.fault("unknown_fields", count=20)
        await run.fault("missing_fields", count=20)
        conns = len(run.connector.connections)
        await run.until(lambda s: len(s.dead_letters) >= conns)
        assert all("malformed JSON" in d.reason for d in run.sink.dead_letters)
        deltas = len(run.sink.of_case("book_delta"))
        await run.until(lambda s: len(s.of_case("book_delta")) >= deltas + 30)
        assert run.sink.counters["connection.reconnect"] == 0
        consistent_books(run.sink)
