"""The Bybit connector against the exchange simulator over real websockets and HTTP."""

from __future__ import annotations

import asyncio

from tests.connector.test_deribit_client_sim import _assert_books_consistent as consistent_books
from tests.connector.test_deribit_client_sim import _symbols_of as symbols_of
from tests.connector.test_okx_client_sim import check_gap_resync_and_reconnect, sim_running


async def test_bybit_books_tickers_and_keepalive() -> None:
    # The simulator closes a connection that sends nothing for 3 s: pings keep it open.
    async with sim_running(
        "bybit", {"idle_timeout_s": 3.0}, heartbeat_interval_s=0.3, watchdog_timeout_s=6.0
    ) as run:
        options = run.options()
        assert len(options) > 20
        conns = len(run.connector.connections)
        assert conns >= 2  # 2 topics per option, 60 per connection
        await run.until(
            lambda s: len(s.of_case("book_delta")) >= 100 and s.counters["heartbeat.pong"] >= 4,
            15,
        )
        await asyncio.sleep(3.2)  # longer than the idle timeout
        sink = run.sink
        assert sink.counters["connection.connected"] == conns
        assert sink.counters["book.gap"] == 0 and sink.dead_letters == []
        assert consistent_books(sink).broken == set()
        planned = sum(len(c.desired) for c in run.connector.connections)
        assert planned == 2 * len(options)
        assert run.sim_stats()["channels_subscribed"] == planned
        assert all(c.confirmed == c.desired for c in run.connector.connections)
        # USDC per coin: the USD equivalents are the native prices; IVs are fractions.
        ticker = next(e.ticker for e in sink.of_case("ticker") if e.ticker.HasField("mark_iv"))
        assert 0.05 < ticker.mark_iv < 3.0 and ticker.forward_usd > 0
        assert ticker.index_price_usd > 0
        assert ticker.mark_price_usd_per_coin == ticker.mark_price_native


async def test_bybit_gap_resync_reconnect_listing_and_expiry() -> None:
    async with sim_running("bybit", instrument_refresh_s=1.0) as run:
        await check_gap_resync_and_reconnect(run)

        reconnects = run.sink.counters["connection.reconnect"]
        listed = await run.fault("list", currency="BTC")
        symbols = listed["symbols"]
        assert isinstance(symbols, list) and symbols
        new = str(symbols[0])
        await run.until(lambda s: new in symbols_of(s, "book_snapshot"), 15.0)
        assert f"orderbook.25.{new}" in run.channels() and f"tickers.{new}" in run.channels()
        # Subscribed once: the venue refuses duplicates ("already subscribed").
        assert run.sink.counters["venue_error.unknown"] == 0
        await run.fault("expire", symbol=new)
        await run.until(
            lambda s: any(
                new in e.instrument_set.delisted_symbols for e in s.of_case("instrument_set")
            ),
            15.0,
        )
        assert f"orderbook.25.{new}" not in run.channels()
        assert run.sink.counters["connection.reconnect"] == reconnects


async def test_bybit_instrument_requests_always_name_the_base_coin() -> None:
    """instruments-info defaults baseCoin to BTC when it is omitted (the simulator too): an
    ETH connector must name it on every page, or it would list BTC options as ETH's."""
    import aiohttp

    from simulator import SimConfig, run_simulator
    from svc_connector.venues import registry
    from svc_connector.venues.base import ConnectorConfig, MemorySink

    sim = await run_simulator(
        SimConfig(port=0, venues=("bybit",), currencies=("BTC", "ETH"), max_expiries=1)
    )
    try:
        adapter = registry.get("bybit")
        base = sim.urls["bybit"].rest_base
        config = ConnectorConfig(
            currencies=("ETH",),
            endpoints=adapter.simulator_endpoints(base, "ws" + base.removeprefix("http")),
        )
        connector = adapter.make_connector(config, MemorySink())
        asked: list[dict[str, str]] = []
        get = connector.get  # type: ignore[attr-defined]

        async def recording_get(http: object, url: str, params: dict[str, str]) -> object:
            asked.append(dict(params))
            return await get(http, url, params)

        connector.get = recording_get  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as http:
            instruments, _ = await connector.fetch_instruments(http)  # type: ignore[attr-defined]
            # What omitting it gives: BTC's list.
            async with http.get(f"{base}/v5/market/instruments-info?category=option") as r:
                default = await r.json()
        assert asked and all(p["baseCoin"] == "ETH" for p in asked)
        assert instruments and {i.currency for i in instruments} == {"ETH"}
        assert {e["baseCoin"] for e in default["result"]["list"]} == {"BTC"}
    finally:
        await sim.stop()
