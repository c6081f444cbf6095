"""Deribit REST of the simulator against the recorded get_instruments response."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from simulator import SimHandle
from tests.sim.conftest import get_instruments

NAME = re.compile(r"^(BTC|ETH)-(\d{1,2})([A-Z]{3})(\d{2})-(\d+)-([CP])$")


def recorded(venue_fixtures: Path) -> dict[str, Any]:
    path = venue_fixtures / "deribit" / "rest_get_instruments_BTC_2021-07-22.json"
    body = json.loads(path.read_text())
    assert isinstance(body, dict)
    return body


def same_json_type(sim_value: object, rec_value: object) -> bool:
    if isinstance(rec_value, bool):
        return isinstance(sim_value, bool)
    if isinstance(rec_value, int | float):
        return isinstance(sim_value, type(rec_value)) and not isinstance(sim_value, bool)
    return isinstance(sim_value, type(rec_value))


async def test_options_have_the_recorded_fields_and_types(
    sim: SimHandle, venue_fixtures: Path
) -> None:
    rec = recorded(venue_fixtures)
    status, body = await get_instruments(sim, "BTC", "option")
    assert status == 200
    assert set(rec) - {"result"} <= set(body), "envelope usIn/usOut/usDiff/testnet"
    assert body["jsonrpc"] == "2.0" and body["testnet"] is False
    assert body["usOut"] >= body["usIn"] and isinstance(body["usDiff"], int)
    rec_option = next(i for i in rec["result"] if i["kind"] == "option")
    options = body["result"]
    assert len(options) > 100
    for inst in options:
        missing = set(rec_option) - set(inst)
        assert not missing, missing
        for key, value in rec_option.items():
            assert same_json_type(inst[key], value), (key, inst[key], value)
        m = NAME.match(inst["instrument_name"])
        assert m is not None, inst["instrument_name"]
        assert not m.group(2).startswith("0"), "day is not zero-padded"
        assert float(m.group(5)) == inst["strike"]
        assert (m.group(6) == "C") == (inst["option_type"] == "call")
        expiry = datetime.fromtimestamp(inst["expiration_timestamp"] / 1000, tz=UTC)
        assert (expiry.hour, expiry.minute) == (8, 0)
        assert f"{expiry.day}{expiry.strftime('%b').upper()}{expiry.year % 100:02d}" == "".join(
            m.group(2, 3, 4)
        )
        assert inst["kind"] == "option" and inst["is_active"] is True
        assert inst["base_currency"] == "BTC" and inst["quote_currency"] == "BTC"
        assert inst["tick_size"] == 0.0005 and inst["min_trade_amount"] == 0.1
        assert inst["instrument_type"] == "reversed" and inst["price_index"] == "btc_usd"
    # Every option has its put/call twin.
    names = {i["instrument_name"] for i in options}
    for n in names:
        twin = n[:-1] + ("P" if n.endswith("C") else "C")
        assert twin in names


async def test_futures_include_perpetual_with_recorded_fields(
    sim: SimHandle, venue_fixtures: Path
) -> None:
    rec = recorded(venue_fixtures)
    rec_future = next(i for i in rec["result"] if i["kind"] == "future")
    status, body = await get_instruments(sim, "BTC", "future")
    assert status == 200
    futures = {i["instrument_name"]: i for i in body["result"]}
    assert "BTC-PERPETUAL" in futures
    assert futures["BTC-PERPETUAL"]["settlement_period"] == "perpetual"
    assert futures["BTC-PERPETUAL"]["expiration_timestamp"] == 32503708800000
    for inst in futures.values():
        for key, value in rec_future.items():
            assert same_json_type(inst[key], value), (key, inst[key], value)
        assert inst["kind"] == "future" and "strike" not in inst
    # No kind: options and futures together; ETH has its own set.
    _, both = await get_instruments(sim, "BTC", None)
    kinds = {i["kind"] for i in both["result"]}
    assert kinds == {"option", "future"}
    _, eth = await get_instruments(sim, "ETH", "option")
    assert eth["result"] and all(i["base_currency"] == "ETH" for i in eth["result"])
    assert all(i["min_trade_amount"] == 1.0 for i in eth["result"])


async def test_bad_params_and_unknown_methods_get_deribit_errors(sim: SimHandle) -> None:
    status, body = await get_instruments(sim, "DOGE", "option")
    assert status == 400
    assert body["error"]["code"] == -32602
    assert body["error"]["data"]["param"] == "currency"
    assert {"usIn", "usOut", "usDiff", "testnet", "jsonrpc"} <= set(body)
    base = sim.urls["deribit"].rest_base
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/public/no_such_method") as resp:
            assert resp.status == 400
            err = orjson.loads(await resp.read())
        assert err["error"] == {"message": "Method not found", "code": -32601}
        async with http.get(f"{base}/public/get_time") as resp:
            t = orjson.loads(await resp.read())["result"]
        assert isinstance(t, int) and abs(t - sim.clock.now_ns() // 1_000_000) < 5_000
        async with http.post(
            base, json={"jsonrpc": "2.0", "id": 9, "method": "public/test", "params": {}}
        ) as resp:
            ok = orjson.loads(await resp.read())
        assert ok["id"] == 9 and "version" in ok["result"]


async def test_rest_ticker_and_order_book(sim: SimHandle) -> None:
    _, body = await get_instruments(sim, "BTC", "option")
    name = body["result"][len(body["result"]) // 2]["instrument_name"]
    base = sim.urls["deribit"].rest_base
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/public/ticker", params={"instrument_name": name}) as r:
            ticker = orjson.loads(await r.read())["result"]
        async with http.get(
            f"{base}/public/get_order_book", params={"instrument_name": name, "depth": "5"}
        ) as r:
            book = orjson.loads(await r.read())["result"]
    assert ticker["instrument_name"] == name and ticker["state"] == "open"
    assert 10 < ticker["mark_iv"] < 300
    assert book["instrument_name"] == name and isinstance(book["change_id"], int)
    assert len(book["bids"]) <= 5 and len(book["asks"]) <= 5
    for side, desc in (("bids", True), ("asks", False)):
        prices = [p for p, _ in book[side]]
        assert prices == sorted(prices, reverse=desc)
    if book["bids"] and book["asks"]:
        assert book["bids"][0][0] < book["asks"][0][0]
