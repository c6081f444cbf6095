"""Deribit websocket of the simulator: subscriptions, book sequencing, tickers, heartbeats,
errors. Real websockets against a running simulator."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

from simulator import SimHandle, run_simulator
from simulator.truth import vol_index
from tests.sim.conftest import LocalBook, RpcClient, near_money, option_names, small_config
from volmath import black76

SECONDS_PER_YEAR = 365 * 86_400


async def test_subscribe_gives_snapshot_then_a_continuous_change_chain(
    sim: SimHandle, client: RpcClient
) -> None:
    insts = await option_names(sim)
    names = [*near_money(sim, insts, 40), "BTC-PERPETUAL"]
    channels = [f"book.{n}.100ms" for n in names]
    resp = await client.call("public/subscribe", {"channels": channels})
    assert sorted(resp["result"]) == sorted(channels)
    books: dict[str, LocalBook] = {}
    changes = 0
    deadline = asyncio.get_running_loop().time() + 20
    while changes < 150:
        assert asyncio.get_running_loop().time() < deadline, f"only {changes} changes"
        msg = await client.recv()
        data = msg["params"]["data"]
        ch = msg["params"]["channel"]
        assert ch in channels
        assert data["instrument_name"] == ch.split(".")[1]
        assert isinstance(data["timestamp"], int)
        if ch not in books:
            assert data["type"] == "snapshot", "first notification of a book is its snapshot"
            assert "prev_change_id" not in data
            books[ch] = LocalBook(data)
        else:
            books[ch].apply(data)
            changes += 1
    assert len(books) >= 10


async def test_books_match_the_simulator_state_under_a_manual_clock() -> None:
    handle = await run_simulator(small_config(clock="manual", messages_per_second=20_000))
    try:
        client = await RpcClient.connect(handle.urls["deribit"].ws_url)
        insts = await option_names(handle)
        names = near_money(handle, insts, 25)
        channels = [f"book.{n}.100ms" for n in names] + [f"ticker.{n}.100ms" for n in names]
        await client.call("public/subscribe", {"channels": channels})
        books: dict[str, LocalBook] = {}
        tickers: dict[str, dict[str, Any]] = {}
        changes = 0
        for _ in range(15):
            await handle.step(1)
            for msg in await client.drain():
                ch = msg["params"]["channel"]
                data = msg["params"]["data"]
                if ch.startswith("ticker."):
                    tickers[data["instrument_name"]] = data
                elif ch not in books:
                    books[ch] = LocalBook(data)
                else:
                    books[ch].apply(data)
                    changes += 1
        assert changes >= 50
        market = handle.venues["deribit"].markets["BTC"]  # type: ignore[attr-defined]
        for name in names:
            local = books[f"book.{name}.100ms"]
            real = market.by_symbol[name].book
            assert local.change_id == real.sequence
            assert sorted(local.bids.items(), reverse=True) == real.side_levels(True)
            assert sorted(local.asks.items()) == real.side_levels(False)
            t = tickers[name]
            best_bid = max(local.bids) if local.bids else 0.0
            best_ask = min(local.asks) if local.asks else 0.0
            assert t["best_bid_price"] == best_bid and t["best_ask_price"] == best_ask
            assert t["best_bid_amount"] == (local.bids[best_bid] if local.bids else 0.0)
        await client.close()
    finally:
        await handle.stop()


async def test_ticker_fields_units_and_black76_repricing(
    sim: SimHandle, client: RpcClient, venue_fixtures: Path
) -> None:
    rec_path = venue_fixtures / "deribit" / "ws_ticker_options_2021-07-22.jsonl"
    recorded = json.loads(rec_path.read_text().splitlines()[0])["params"]["data"]
    insts = await option_names(sim)
    names = list(insts)
    await client.call("public/subscribe", {"channels": [f"ticker.{n}.100ms" for n in names]})
    notes = await client.notifications(1.0)
    seen: dict[str, dict[str, Any]] = {}
    for msg in notes:
        seen[msg["params"]["data"]["instrument_name"]] = msg["params"]["data"]
    assert len(seen) == len(names), "every subscription gets its ticker straight away"
    snap = sim.truth.snapshot("BTC")
    futures = {s.label for s in snap.slices if s.period != "day"}
    checked = 0
    for name, t in seen.items():
        for key, value in recorded.items():
            assert key in t, key
            if value is not None and t[key] is not None:
                assert isinstance(t[key], type(value)), (key, t[key])
        assert set(recorded["greeks"]) == set(t["greeks"])
        assert t["state"] == "open" and t["interest_rate"] == 0.0
        inst = insts[name]
        label = name.split("-")[1]
        expected_index = f"BTC-{label}" if label in futures else f"SYN.BTC-{label}"
        assert t["underlying_index"] == expected_index
        sl = snap.slice_for(inst["expiration_timestamp"] * 1_000_000)
        assert sl is not None
        assert t["underlying_price"] == pytest.approx(sl.forward, rel=2e-3)
        assert t["index_price"] == pytest.approx(snap.index, rel=2e-3)
        # mark_iv is in percent; the truth vol at this strike, within drift since publication.
        assert 20.0 < t["mark_iv"] < 300.0
        assert t["mark_iv"] / 100 == pytest.approx(float(sl.vol(inst["strike"])), abs=0.01)
        # Inverse premium: mark_price x forward is the Black-76 USD price at mark_iv.
        years = (inst["expiration_timestamp"] - t["timestamp"]) / 1000 / SECONDS_PER_YEAR
        is_call = inst["option_type"] == "call"
        fwd = t["underlying_price"]
        usd = float(black76.price(fwd, inst["strike"], years, t["mark_iv"] / 100, is_call))
        if usd > 1e-6 * fwd:
            assert t["mark_price"] * fwd == pytest.approx(usd, rel=1e-6)
            checked += 1
        # Empty sides are 0 in both price and IV; quoted sides bracket the mark.
        for side in ("bid", "ask"):
            if t[f"best_{side}_price"] == 0.0:
                assert t[f"{side}_iv"] == 0.0 and t[f"best_{side}_amount"] == 0.0
        if t["best_bid_price"] and t["best_ask_price"]:
            assert t["best_bid_price"] <= t["mark_price"] <= t["best_ask_price"]
            if t["bid_iv"] and t["ask_iv"]:
                assert t["bid_iv"] - 0.011 <= t["mark_iv"] <= t["ask_iv"] + 0.011
        # Deribit greeks of the USD price: delta signs, vega per vol point.
        g = t["greeks"]
        assert (0 <= g["delta"] <= 1) if is_call else (-1 <= g["delta"] <= 0)
        sd = t["mark_iv"] / 100 * math.sqrt(years)
        d1 = (math.log(fwd / inst["strike"]) + sd * sd / 2) / sd
        vega = fwd * math.exp(-d1 * d1 / 2) / math.sqrt(2 * math.pi) * math.sqrt(years) / 100
        assert g["vega"] == pytest.approx(vega, abs=1e-5)
        assert g["theta"] <= 0
    assert checked > len(names) // 2
    # One-sided and empty books exist in the wings, as on the venue.
    assert any(t["best_bid_price"] == 0.0 for t in seen.values())


async def test_index_dvol_and_grouped_book_channels(sim: SimHandle, client: RpcClient) -> None:
    name = near_money(sim, await option_names(sim), 1)[0]
    grouped = f"book.{name}.none.10.100ms"
    channels = [
        "deribit_price_index.btc_usd",
        "deribit_volatility_index.btc_usd",
        "deribit_price_index.eth_usd",
        grouped,
    ]
    resp = await client.call("public/subscribe", {"channels": channels})
    assert sorted(resp["result"]) == sorted(channels)
    notes = await client.notifications(1.5)
    by_channel: dict[str, list[dict[str, Any]]] = {}
    for msg in notes:
        by_channel.setdefault(msg["params"]["channel"], []).append(msg["params"]["data"])
    assert set(by_channel) == set(channels)
    idx = by_channel["deribit_price_index.btc_usd"][-1]
    assert set(idx) == {"timestamp", "price", "index_name"}
    assert idx["index_name"] == "btc_usd"
    assert idx["price"] == pytest.approx(sim.truth.snapshot("BTC").index, rel=1e-3)
    eth = by_channel["deribit_price_index.eth_usd"][-1]
    assert eth["price"] == pytest.approx(sim.truth.snapshot("ETH").index, rel=1e-3)
    dvol = by_channel["deribit_volatility_index.btc_usd"][-1]
    assert set(dvol) == {"volatility", "timestamp", "index_name"}
    assert dvol["volatility"] == pytest.approx(vol_index(sim.truth.snapshot("BTC")) * 100, abs=0.5)
    assert 30 < dvol["volatility"] < 120
    for book in by_channel[grouped]:
        assert set(book) == {"instrument_name", "timestamp", "change_id", "bids", "asks"}
        assert len(book["bids"]) <= 10 and len(book["asks"]) <= 10
        assert all(len(level) == 2 for level in book["bids"] + book["asks"])
        bids = [p for p, _ in book["bids"]]
        assert bids == sorted(bids, reverse=True)


async def test_each_subscription_starts_from_its_own_snapshot(sim: SimHandle) -> None:
    names = near_money(sim, await option_names(sim), 6)
    channels = [f"book.{n}.100ms" for n in names]
    a = await RpcClient.connect(sim.urls["deribit"].ws_url)
    b = await RpcClient.connect(sim.urls["deribit"].ws_url)
    try:
        await a.call("public/subscribe", {"channels": channels})
        a_notes = await a.notifications(0.7)
        await b.call("public/subscribe", {"channels": channels})
        b_first = await b.notifications(0.3)
        a_notes += await a.notifications(0.3)
        a_ids: dict[str, set[int]] = {}
        for msg in a_notes:
            a_ids.setdefault(msg["params"]["channel"], set()).add(
                msg["params"]["data"]["change_id"]
            )
        firsts: dict[str, dict[str, Any]] = {}
        for msg in b_first:
            firsts.setdefault(msg["params"]["channel"], msg["params"]["data"])
        assert set(firsts) == set(channels)
        for ch, data in firsts.items():
            assert data["type"] == "snapshot"
            # B's snapshot sits on A's chain.
            assert data["change_id"] in a_ids[ch]
        # Subscribing again on the same connection restarts from a fresh snapshot.
        await a.send("public/subscribe", {"channels": channels[:1]})
        again = [m for m in await a.notifications(0.5) if m["params"]["channel"] == channels[0]]
        assert again and again[0]["params"]["data"]["type"] == "snapshot"
    finally:
        await a.close()
        await b.close()


async def test_unsubscribe_stops_a_channel(sim: SimHandle, client: RpcClient) -> None:
    names = near_money(sim, await option_names(sim), 20)
    channels = [f"ticker.{n}.100ms" for n in names]
    await client.call("public/subscribe", {"channels": channels})
    await client.notifications(0.3)
    resp = await client.call("public/unsubscribe", {"channels": channels[:10]})
    assert sorted(resp["result"]) == sorted(channels[:10])
    later = await client.notifications(1.0)
    got = {m["params"]["channel"] for m in later}
    assert got and got <= set(channels[10:])


async def test_heartbeat_test_requests_and_disconnect_when_unanswered(
    sim: SimHandle, client: RpcClient
) -> None:
    low = await client.call("public/set_heartbeat", {"interval": 0.1})
    assert low["error"]["code"] == -32602
    ok = await client.call("public/set_heartbeat", {"interval": 0.5})
    assert ok["result"] == "ok"
    answered = 0
    end = asyncio.get_running_loop().time() + 2.0
    while asyncio.get_running_loop().time() < end:
        msg = await client.recv(wait=2.0)
        if msg.get("method") == "heartbeat":
            assert msg == {
                "jsonrpc": "2.0",
                "method": "heartbeat",
                "params": {"type": "test_request"},
            }
            await client.send("public/test")
            answered += 1
    assert answered >= 2
    # Stop answering: the venue drops the connection within about two intervals.
    with pytest.raises(websockets.ConnectionClosed):
        for _ in range(100):
            await client.recv(wait=3.0)


async def test_json_rpc_errors_have_the_venue_shape(sim: SimHandle, client: RpcClient) -> None:
    resp = await client.call("public/no_such_thing", {})
    assert resp["error"] == {"message": "Method not found", "code": -32601}
    assert resp["jsonrpc"] == "2.0" and isinstance(resp["usIn"], int) and resp["testnet"] is False
    raw = await client.call("public/subscribe", {"channels": ["book.BTC-PERPETUAL.raw"]})
    assert raw["error"]["code"] == 13778
    missing = await client.call("public/subscribe", {})
    assert missing["error"]["code"] == -32602
    await client.ws.send("{not json")
    parse = await client.recv()
    assert parse["error"]["code"] == -32700 and "id" not in parse
    t = await client.call("public/get_time")
    assert abs(t["result"] - sim.clock.now_ns() // 1_000_000) < 5_000
    test = await client.call("public/test")
    assert "version" in test["result"]
    unknown = await client.call("public/subscribe", {"channels": ["ticker.BTC-1JAN00-1-C.100ms"]})
    assert unknown["result"] == []


def test_black76_reference_matches_quant_reference() -> None:
    # The repricing oracle used above (docs/quant.md section 2 check).
    call = float(black76.price(60_000.0, 70_000.0, 30 / 365, 0.60, True))
    assert call == pytest.approx(1124.963284, abs=1e-6)
    assert call / 60_000.0 == pytest.approx(0.01874939, abs=1e-8)
    assert np.isfinite(call)
