"""The simulated Bybit v5 options over real HTTP and websockets: paged instruments, books
whose `u` moves by exactly one, tickers in USDC per coin priced on `underlyingPrice`, the
recorded shapes, ping/pong and every fault kind."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from simulator import SimHandle, run_simulator
from simulator.bybit import BybitVenue
from tests.sim.conftest import running
from tests.sim.push_clients import (
    BybitClient,
    assert_quote_iv,
    assert_reprices,
    bybit_expiry_ms,
    check_connection_faults,
    check_listing_faults,
    check_stream_faults,
    config,
    connected,
    expiry_at_8utc,
    near_money,
)

INSTRUMENT_FIELDS = {
    "symbol",
    "status",
    "baseCoin",
    "quoteCoin",
    "settleCoin",
    "optionsType",
    "launchTime",
    "deliveryTime",
    "deliveryFeeRate",
    "priceFilter",
    "lotSizeFilter",
}


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with running(config("bybit")) as handle:
        yield handle


@pytest.fixture
async def client(sim: SimHandle) -> AsyncIterator[BybitClient]:
    async with connected(BybitClient, sim) as c:
        yield c


def recorded(venue_fixtures: Path) -> list[dict[str, Any]]:
    path = venue_fixtures / "bybit" / "tardis_node_mappers_test_bybit_options.jsonl"
    out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out.append(
        json.loads((venue_fixtures / "bybit" / "nautilus_ws_ticker_option.json").read_text())
    )
    return out


async def test_instruments_are_paged_with_a_cursor(client: BybitClient) -> None:
    status, first = await client.http_get(
        "/v5/market/instruments-info", {"category": "option", "baseCoin": "BTC", "limit": "25"}
    )
    assert status == 200 and first["retCode"] == 0 and first["retMsg"] == "success"
    assert set(first) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    page = first["result"]
    assert page["category"] == "option" and len(page["list"]) == 25 and page["nextPageCursor"]
    everything = await client.options("BTC")
    assert len(everything) > 25
    assert len({o.symbol for o in everything}) == len(everything), "pages do not overlap"
    assert [o.symbol for o in everything[:25]] == [e["symbol"] for e in page["list"]]
    for entry in page["list"]:
        assert set(entry) >= INSTRUMENT_FIELDS
        coin, label, strike, side = entry["symbol"].split("-")
        assert coin == entry["baseCoin"] == "BTC" and entry["settleCoin"] == "USDC"
        assert entry["optionsType"] == {"C": "Call", "P": "Put"}[side]
        assert int(entry["deliveryTime"]) == bybit_expiry_ms(label)
        assert expiry_at_8utc(int(entry["deliveryTime"]))
        assert float(strike) > 0 and entry["status"] == "Trading"
        assert entry["priceFilter"]["tickSize"] == "5"
        assert entry["lotSizeFilter"]["qtyStep"] == "0.01"
        assert all(isinstance(v, str) for v in entry["priceFilter"].values())
    eth = await client.options("ETH")
    assert eth and all(o.symbol.startswith("ETH-") for o in eth)
    _, bad = await client.http_get("/v5/market/instruments-info", {"baseCoin": "BTC"})
    assert bad["retCode"] == 10001


async def test_orderbook_u_moves_by_one_and_levels_are_strings(
    sim: SimHandle, client: BybitClient, venue_fixtures: Path
) -> None:
    rec_snapshot = next(
        m
        for m in recorded(venue_fixtures)
        if m.get("type") == "snapshot" and m["topic"].startswith("orderbook") and m["data"]["b"]
    )
    names = near_money(sim, await client.options("BTC"), 30)
    ack = await client.request("subscribe", [f"orderbook.25.{n}" for n in names])
    assert ack["success"] is True and ack["op"] == "subscribe" and ack["conn_id"]
    books: dict[str, dict[str, dict[str, str]]] = {}
    last_u: dict[str, int] = {}
    deltas = deletes = 0
    while deltas < 200:
        msg = await client.recv()
        book = client.book_msg(msg)
        if book is None:
            continue
        assert set(rec_snapshot) <= set(msg) and set(rec_snapshot["data"]) <= set(msg["data"])
        assert isinstance(msg["ts"], int) and isinstance(msg["data"]["seq"], int)
        for level in book.bids + book.asks:
            assert len(level) == 2 and all(isinstance(x, str) for x in level)
        if book.symbol not in books:
            assert book.snapshot
            books[book.symbol] = {
                "b": {p: q for p, q in book.bids},
                "a": {p: q for p, q in book.asks},
            }
        else:
            assert not book.snapshot and book.seq == last_u[book.symbol] + 1, "u + 1"
            for side, levels in (("b", book.bids), ("a", book.asks)):
                for price, size in levels:
                    if size == "0":
                        assert price in books[book.symbol][side]
                        del books[book.symbol][side][price]
                        deletes += 1
                    else:
                        books[book.symbol][side][price] = size
            deltas += 1
        last_u[book.symbol] = book.seq
        bids, asks = books[book.symbol]["b"], books[book.symbol]["a"]
        if bids and asks:
            assert max(map(float, bids)) < min(map(float, asks)), "crossed"
        assert all(float(p) % 5 == 0 for p in [*bids, *asks]), "BTC tick 5 USDC"
    assert deletes > 0


async def test_tickers_reprice_on_underlying_price(venue_fixtures: Path) -> None:
    handle = await run_simulator(config("bybit", clock="manual"))
    try:
        c = await BybitClient.connect(handle)
        assert isinstance(c, BybitClient)
        options = {o.symbol: o for o in await c.options("BTC")}
        names = near_money(handle, list(options.values()), 60)
        await c.subscribe_quotes("BTC", names)
        rec = next(m["data"] for m in recorded(venue_fixtures) if m["topic"].startswith("tickers"))
        tickers = {t["symbol"]: t for f in await c.frames(0.6) for t in c.quote_entries(f)}
        assert set(tickers) == set(names)
        venue = handle.venue("bybit")
        assert isinstance(venue, BybitVenue)
        market = venue.markets["BTC"]
        snap = handle.truth.snapshot("BTC")
        sides = 0
        for sym, t in tickers.items():
            assert set(rec) <= set(t) and all(isinstance(v, str) for v in t.values())
            opt = options[sym]
            ts = handle.clock.now_ns() // 1_000_000
            fwd = float(t["underlyingPrice"])
            sl = snap.slice_for(opt.expiry_ms * 1_000_000)
            assert sl is not None
            # Bybit's forward: 3 bp under the truth's; the index is the truth's.
            assert fwd == pytest.approx(sl.forward * (1 - 3e-4), abs=0.005)
            assert float(t["indexPrice"]) == pytest.approx(snap.index, abs=0.005)
            truth_vol = float(sl.vol(opt.strike * sl.forward / market.forward_raw(sl)))
            assert float(t["markPriceIv"]) == pytest.approx(truth_vol, abs=5.1e-5)
            assert_reprices(float(t["markPrice"]), fwd, opt, ts, float(t["markPriceIv"]), 8)
            for price, iv in (("bidPrice", "bidIv"), ("askPrice", "askIv")):
                if t[price] == "0":
                    assert t[iv] == "0", "an empty side has IV 0"
                    continue
                assert float(t[price]) % 5 == 0
                if t[iv] != "0":
                    assert_quote_iv(float(t[price]), fwd, opt, ts, float(t[iv]), 4)
                    sides += 1
        assert sides > 30
        await c.close()
    finally:
        await handle.stop()


async def test_ping_pong_and_errors(client: BybitClient) -> None:
    await client.send({"req_id": "p1", "op": "ping"})
    pong = await client.recv()
    assert pong["op"] == "pong" and pong["req_id"] == "p1" and pong["args"][0].isdigit()
    bad = await client.request("subscribe", ["orderbook.25.BTC-1JAN20-1-C", "nonsense"])
    assert bad["success"] is False and "handler not found" in bad["ret_msg"]
    name = (await client.options("BTC"))[0].symbol
    ok = await client.request("subscribe", [f"tickers.{name}"])
    assert ok["success"] is True
    again = await client.request("subscribe", [f"tickers.{name}"])
    assert again["success"] is False and "already subscribed" in again["ret_msg"]
    off = await client.request("unsubscribe", [f"tickers.{name}"])
    assert off["success"] is True
    await client.ws.send("{oops")
    assert (await client.recv())["success"] is False


async def test_command_resp_acks_when_configured() -> None:
    handle = await run_simulator(
        config("bybit", venue_options={"bybit": {"ack_style": "command_resp"}})
    )
    try:
        c = await BybitClient.connect(handle)
        assert isinstance(c, BybitClient)
        name = (await c.options("BTC"))[0].symbol
        ack = await c.request("subscribe", [f"orderbook.25.{name}", "tickers.NOPE"])
        assert ack["type"] == "COMMAND_RESP"
        assert ack["data"] == {
            "successTopics": [f"orderbook.25.{name}"],
            "failTopics": ["tickers.NOPE"],
        }
        first = (await c.book_frames(1))[0]
        assert first.snapshot and first.symbol == name
        await c.close()
    finally:
        await handle.stop()


async def test_stream_faults(sim: SimHandle) -> None:
    await check_stream_faults(sim, BybitClient)


async def test_connection_faults(sim: SimHandle) -> None:
    await check_connection_faults(sim, BybitClient)


async def test_listing_faults(sim: SimHandle) -> None:
    await check_listing_faults(sim, BybitClient)
