"""The simulated Binance options over real HTTP and websockets: exchangeInfo, depth20 full
books with the U/u/pu chain, mark prices in USDT per contract priced on the index (a unit of
100 included), raw and combined streams, request limits, server pings and every fault kind."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from simulator import SimHandle, run_simulator
from simulator.binance import BinanceVenue
from tests.sim.conftest import running
from tests.sim.push_clients import (
    BinanceClient,
    assert_quote_iv,
    assert_reprices,
    check_connection_faults,
    check_listing_faults,
    check_stream_faults,
    config,
    connected,
    expiry_at_8utc,
    near_money,
)

FAST_MARKS = {"binance": {"mark_interval_s": 0.25}}


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with running(config("binance", venue_options=FAST_MARKS)) as handle:
        yield handle


@pytest.fixture
async def client(sim: SimHandle) -> AsyncIterator[BinanceClient]:
    async with connected(BinanceClient, sim) as c:
        yield c


def recorded(venue_fixtures: Path) -> dict[str, dict[str, Any]]:
    """The current-API (2025-12) messages by stream kind."""
    path = (
        venue_fixtures
        / "binance"
        / "tardis_node_mappers_test_binance_european_options_v2_2025-12.jsonl"
    )
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            msg = json.loads(line)
            out[msg["stream"].split("@", 1)[1]] = msg
    return out


def types_of(entry: dict[str, Any]) -> dict[str, type]:
    return {k: type(v) for k, v in entry.items()}


async def test_exchange_info_lists_options_with_units_and_filters(client: BinanceClient) -> None:
    status, body = await client.http_get("/eapi/v1/exchangeInfo")
    assert status == 200
    assert {"timezone", "serverTime", "optionContracts", "optionAssets", "optionSymbols"} <= set(
        body
    )
    assert {c["underlying"] for c in body["optionContracts"]} == {"BTCUSDT", "ETHUSDT"}
    symbols = body["optionSymbols"]
    assert len(symbols) > 20
    for s in symbols:
        coin, expiry, strike, side = s["symbol"].split("-")
        assert len(expiry) == 6 and expiry.isdigit()
        assert s["side"] == {"C": "CALL", "P": "PUT"}[side]
        assert float(s["strikePrice"]) == float(strike)
        assert s["underlying"] == f"{coin}USDT" and s["unit"] == 1 and s["quoteAsset"] == "USDT"
        assert isinstance(s["expiryDate"], int) and expiry_at_8utc(s["expiryDate"])
        price_filter = next(f for f in s["filters"] if f["filterType"] == "PRICE_FILTER")
        assert price_filter["tickSize"] == {"BTC": "5", "ETH": "0.1"}[coin]
        lot = next(f for f in s["filters"] if f["filterType"] == "LOT_SIZE")
        assert lot["stepSize"] == "0.01"
    status, index = await client.http_get("/eapi/v1/index", {"underlying": "BTCUSDT"})
    assert status == 200 and float(index["indexPrice"]) > 0
    status, _ = await client.http_get("/eapi/v1/index", {"underlying": "NOPEUSDT"})
    assert status == 400


async def test_depth20_is_a_full_book_each_push_with_a_pu_chain(
    sim: SimHandle, client: BinanceClient, venue_fixtures: Path
) -> None:
    rec = recorded(venue_fixtures)["depth20@100ms"]
    names = near_money(sim, await client.options("BTC"), 25)
    await client.subscribe_books(names)
    last: dict[str, int] = {}
    pushes = 0
    while pushes < 150:
        msg = await client.recv()
        book = client.book_msg(msg)
        if book is None:
            continue
        assert msg["stream"] == f"{book.symbol.lower()}@depth20@100ms", "lowercase stream names"
        assert types_of(msg["data"]) == types_of(rec["data"])
        assert len(book.bids) <= 20 and len(book.asks) <= 20
        for price, qty in book.bids + book.asks:
            assert price.split(".")[1].__len__() == 3 and qty.split(".")[1].__len__() == 2
            assert float(price) % 5 == 0 and float(qty) > 0
        bids = [float(p) for p, _ in book.bids]
        asks = [float(p) for p, _ in book.asks]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        if bids and asks:
            assert bids[0] < asks[0]
        if book.symbol in last:
            assert book.prev == last[book.symbol] and msg["data"]["U"] == book.prev + 1
            assert book.seq > book.prev
            pushes += 1
        else:
            assert book.snapshot
        last[book.symbol] = book.seq


async def test_mark_prices_reprice_on_the_index_per_contract(venue_fixtures: Path) -> None:
    handle = await run_simulator(
        config(
            "binance",
            clock="manual",
            venue_options={"binance": {"units": {"ETH": 100}}},
        )
    )
    try:
        c = await BinanceClient.connect(handle)
        assert isinstance(c, BinanceClient)
        rec = recorded(venue_fixtures)["optionMarkPrice"]["data"][0]
        venue = handle.venue("binance")
        assert isinstance(venue, BinanceVenue)
        checked = 0
        for ccy, unit, decimals in (("BTC", 1.0, 3), ("ETH", 100.0, 4)):
            options = {o.symbol: o for o in await c.options(ccy)}
            _, info = await c.http_get("/eapi/v1/exchangeInfo")
            units = {s["unit"] for s in info["optionSymbols"] if s["symbol"].startswith(ccy)}
            assert units == {int(unit)}
            await c.subscribe_books(near_money(handle, list(options.values()), 30, ccy))
            await c.subscribe_quotes(ccy, [])
            frames = await c.frames(0.5)
            marks = [e for f in frames for e in c.quote_entries(f)]
            assert {e["s"] for e in marks} == set(options), "every option in one array"
            snap = handle.truth.snapshot(ccy)
            ts = handle.clock.now_ns() // 1_000_000
            for e in marks:
                assert types_of(e) == {k: types_of(rec)[k] for k in e}
                assert set(rec) == set(e)
                opt = options[e["s"]]
                index = float(e["i"])
                assert index == pytest.approx(snap.index, abs=5e-9)
                sl = snap.slice_for(opt.expiry_ms * 1_000_000)
                assert sl is not None
                # Binance prices on the index: the smile sits on F = index.
                truth_vol = float(sl.vol(opt.strike * sl.forward / snap.index))
                assert float(e["vo"]) == pytest.approx(truth_vol, abs=6e-9)
                per_coin = float(e["mp"]) / unit
                assert_reprices(
                    per_coin,
                    index,
                    opt,
                    ts,
                    float(e["vo"]),
                    decimals + 2 if unit == 100 else decimals,
                )
                for price_key, qty_key, iv_key in (("bo", "bq", "b"), ("ao", "aq", "a")):
                    if float(e[qty_key]) == 0:
                        assert e[iv_key] == "-1.0", "no quote: IV -1"
                        continue
                    if e[iv_key] != "-1.0":
                        assert_quote_iv(
                            float(e[price_key]) / unit, index, opt, ts, float(e[iv_key]), 8
                        )
                        checked += 1
            await c.request("UNSUBSCRIBE", [f"{ccy.lower()}usdt@optionMarkPrice"])
        assert checked > 40
        await c.close()
    finally:
        await handle.stop()


async def test_raw_and_combined_streams_and_index(sim: SimHandle) -> None:
    base = sim.urls["binance"].ws_url.rsplit("/ws", 1)[0]
    combined = await BinanceClient.connect(
        sim, f"{base}/stream?streams=btcusdt@index/ethusdt@index"
    )
    raw = await BinanceClient.connect(sim, f"{base}/ws/btcusdt@index")
    frames = await combined.frames(0.6)
    streams = {f["stream"] for f in frames}
    assert streams == {"btcusdt@index", "ethusdt@index"}
    data = next(f["data"] for f in frames if f["stream"] == "btcusdt@index")
    assert data["e"] == "index" and data["s"] == "BTCUSDT" and isinstance(data["p"], str)
    raw_frames = await raw.frames(0.4)
    assert raw_frames and all(f["e"] == "index" and "stream" not in f for f in raw_frames)
    # The current hosts' path prefixes serve the same streams.
    market = await BinanceClient.connect(sim, f"{base}/market/stream?streams=btcusdt@index")
    assert (await market.recv())["stream"] == "btcusdt@index"
    assert isinstance(raw, BinanceClient)
    listed = await raw.request("LIST_SUBSCRIPTIONS", [])
    assert listed["result"] == ["btcusdt@index"]
    for c in (combined, raw, market):
        await c.close()


async def test_request_limits_and_errors() -> None:
    handle = await run_simulator(
        config("binance", venue_options={"binance": {"max_streams": 5, "max_incoming_per_s": 4}})
    )
    try:
        c = await BinanceClient.connect(handle)
        assert isinstance(c, BinanceClient)
        names = [o.symbol for o in await c.options("BTC")][:6]
        too_many = await c.request("SUBSCRIBE", [f"{n.lower()}@depth20@100ms" for n in names])
        assert too_many["error"]["code"] == 2 and "streams" in too_many["error"]["msg"]
        unknown = await c.request("SUBSCRIBE", ["btc-000101-1-c@depth20@100ms"])
        assert "error" in unknown
        # Beyond 4 messages in a second: an error answers the request.
        for i in range(6):
            await c.send({"method": "LIST_SUBSCRIPTIONS", "id": 100 + i})
        answers = [await c.recv() for _ in range(6)]
        limited = [a for a in answers if "error" in a]
        assert len(limited) >= 1 and limited[0]["error"]["code"] == -1003
        assert handle.venue("binance").stats()["counters"]["rate_limited"] >= 1  # type: ignore[index]
        await c.close()
    finally:
        await handle.stop()


async def test_server_pings_the_client() -> None:
    handle = await run_simulator(
        config("binance", venue_options={"binance": {"ping_interval_s": 0.2}})
    )
    try:
        url = handle.urls["binance"].ws_url
        async with aiohttp.ClientSession() as http, http.ws_connect(url, autoping=False) as ws:
            msg = await ws.receive(timeout=2.0)
            assert msg.type == aiohttp.WSMsgType.PING
            await ws.pong(msg.data)
            await ws.send_str(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}).decode())
            while (reply := await ws.receive(timeout=2.0)).type == aiohttp.WSMsgType.PING:
                continue
            assert orjson.loads(reply.data) == {"result": [], "id": 1}
        assert handle.venue("binance").stats()["counters"]["pings_sent"] >= 1  # type: ignore[index]
    finally:
        await handle.stop()


async def test_stream_faults(sim: SimHandle) -> None:
    await check_stream_faults(sim, BinanceClient)


async def test_connection_faults(sim: SimHandle) -> None:
    await check_connection_faults(sim, BinanceClient)


async def test_listing_faults(sim: SimHandle) -> None:
    await check_listing_faults(sim, BinanceClient)
