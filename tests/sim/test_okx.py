"""The simulated OKX v5 over real HTTP and websockets: instruments as recorded, books whose
seqId chain and CRC32 checksum hold on every message, opt-summary units, keep-alives and
every fault kind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from simulator import SimHandle, run_simulator
from simulator.okx import OkxVenue
from svc_connector.venues.okx.checksum import OkxChecksumBook
from tests.sim.conftest import running
from tests.sim.push_clients import (
    OkxClient,
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


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    # Real checksums (the default is 0, as on the live venue since June 2026).
    async with running(config("okx", venue_options={"okx": {"checksums": True}})) as handle:
        yield handle


@pytest.fixture
async def client(sim: SimHandle) -> AsyncIterator[OkxClient]:
    async with connected(OkxClient, sim) as c:
        yield c


def recorded_instruments(venue_fixtures: Path) -> list[dict[str, Any]]:
    path = venue_fixtures / "okx" / "rest_instruments_OPTION_BTC-USD_2022-05-13.json"
    body = json.loads(path.read_text())
    assert body["code"] == "0"
    return list(body["data"])


def recorded_messages(venue_fixtures: Path) -> list[dict[str, Any]]:
    path = venue_fixtures / "okx" / "tardis_node_mappers_test_okex_options_v5.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def types_of(entry: dict[str, Any]) -> dict[str, type]:
    return {k: type(v) for k, v in entry.items()}


async def test_instruments_have_the_recorded_fields_and_types(
    client: OkxClient, venue_fixtures: Path
) -> None:
    recorded = recorded_instruments(venue_fixtures)[0]
    status, body = await client.http_get(
        "/api/v5/public/instruments", {"instType": "OPTION", "instFamily": "BTC-USD"}
    )
    assert status == 200 and body["code"] == "0" and body["msg"] == ""
    options = body["data"]
    assert len(options) > 20
    for entry in options:
        assert set(recorded) <= set(entry), set(recorded) - set(entry)
        assert {k: t for k, t in types_of(entry).items() if k in recorded} == types_of(recorded)
        coin, quote, expiry, strike, side = entry["instId"].split("-")
        assert f"{coin}-{quote}" == "BTC-USD" == entry["uly"] == entry["instFamily"]
        assert len(expiry) == 6 and expiry.isdigit()
        assert float(strike) == float(entry["stk"]) and side == entry["optType"]
        assert entry["instType"] == "OPTION" and entry["state"] == "live"
        assert entry["settleCcy"] == "BTC" and entry["ctValCcy"] == "BTC"
        assert float(entry["ctVal"]) * float(entry["ctMult"]) == pytest.approx(0.01)
        assert entry["tickSz"] == "0.0005" and entry["lotSz"] == "1"
        assert expiry_at_8utc(int(entry["expTime"]))
    # Uly works as the older key; ETH is its own family; futures are listed too.
    _, by_uly = await client.http_get(
        "/api/v5/public/instruments", {"instType": "OPTION", "uly": "BTC-USD"}
    )
    assert [e["instId"] for e in by_uly["data"]] == [e["instId"] for e in options]
    eth = await client.options("ETH")
    assert eth and all(o.symbol.startswith("ETH-USD-") for o in eth)
    status, missing = await client.http_get("/api/v5/public/instruments", {"instFamily": "BTC-USD"})
    assert status == 400 and missing["code"] == "50014" and missing["data"] == []


async def test_futures_are_listed_as_inverse_contracts() -> None:
    handle = await run_simulator(config("okx", max_expiries=6))
    try:
        c = await OkxClient.connect(handle)
        status, body = await c.http_get(
            "/api/v5/public/instruments", {"instType": "FUTURES", "instFamily": "BTC-USD"}
        )
        assert status == 200 and body["data"], "weekly/monthly expiries have futures"
        for entry in body["data"]:
            assert entry["instType"] == "FUTURES" and entry["ctType"] == "inverse"
            assert entry["ctValCcy"] == "USD" and entry["ctVal"] == "100"
            assert entry["alias"] in {
                "this_week",
                "next_week",
                "this_month",
                "next_month",
                "quarter",
                "next_quarter",
            }
            assert len(entry["instId"].split("-")) == 3
        await c.close()
    finally:
        await handle.stop()


async def test_books_chain_and_checksum_verify_on_every_message(
    sim: SimHandle, client: OkxClient
) -> None:
    names = near_money(sim, await client.options("BTC"), 30)
    acks = await client.subscribe([{"channel": "books", "instId": n} for n in names])
    assert all(set(a) == {"id", "event", "arg", "connId"} for a in acks)
    assert {a["arg"]["instId"] for a in acks} == set(names)
    books: dict[str, OkxChecksumBook] = {}
    seqs: dict[str, int] = {}
    updates = deletes = 0
    while updates < 200:
        msg = await client.recv()
        book = client.book_msg(msg)
        if book is None:
            continue
        data = book.raw["data"][0]
        assert set(data) == {"asks", "bids", "ts", "checksum", "prevSeqId", "seqId"}
        assert isinstance(data["ts"], str) and isinstance(data["checksum"], int)
        for level in book.bids + book.asks:
            assert len(level) == 4 and all(isinstance(x, str) for x in level)
        if book.symbol not in books:
            assert book.snapshot and data["prevSeqId"] == -1
            books[book.symbol] = OkxChecksumBook()
            books[book.symbol].apply_snapshot(book.bids, book.asks)
        else:
            assert not book.snapshot and book.prev == seqs[book.symbol], "seqId chain"
            assert book.seq > book.prev
            books[book.symbol].apply_update(book.bids, book.asks)
            deletes += sum(1 for lv in book.bids + book.asks if lv[1] == "0")
            updates += 1
        assert books[book.symbol].checksum_ok(data["checksum"]), "checksum"
        assert data["checksum"] != 0
        seqs[book.symbol] = book.seq
        bids, asks = books[book.symbol].top(1)
        if bids and asks:
            assert float(bids[0][0]) < float(asks[0][0]), "crossed book"
    assert deletes > 0, "size '0' deletes levels"
    assert len(books) == len(names)


async def test_opt_summary_ivs_reprice_the_venue_premiums_on_fwdpx(
    venue_fixtures: Path,
) -> None:
    handle = await run_simulator(config("okx", clock="manual"))
    try:
        c = await OkxClient.connect(handle)
        assert isinstance(c, OkxClient)
        options = {o.symbol: o for o in await c.options("BTC")}
        names = near_money(handle, list(options.values()), 40)
        await c.subscribe(
            [{"channel": "opt-summary", "instFamily": "BTC-USD"}]
            + [{"channel": "books", "instId": n} for n in names]
            + [{"channel": "mark-price", "instId": n} for n in names]
        )
        recorded = next(
            m["data"][0]
            for m in recorded_messages(venue_fixtures)
            if m["arg"]["channel"] == "opt-summary"
        )
        summary: dict[str, dict[str, Any]] = {}
        books: dict[str, Any] = {}
        marks: dict[str, dict[str, Any]] = {}
        for msg in await c.frames(1.0):
            channel = msg["arg"]["channel"]
            if channel == "opt-summary":
                summary.update({e["instId"]: e for e in msg["data"]})
            elif channel == "books":
                books[msg["arg"]["instId"]] = msg["data"][0]
            elif channel == "mark-price":
                marks[msg["arg"]["instId"]] = msg["data"][0]
        assert set(summary) == set(options), "the whole family, once"
        assert set(books) == set(names) and set(marks) == set(names)
        snap = handle.truth.snapshot("BTC")
        venue = handle.venue("okx")
        assert isinstance(venue, OkxVenue)
        market = venue.markets["BTC"]
        forwards = venue.truth_forwards("BTC")
        bids = asks = 0
        for sym, entry in summary.items():
            assert set(recorded) <= set(entry)
            assert all(isinstance(v, str) for v in entry.values())
            opt = options[sym]
            ts = int(entry["ts"])
            fwd = float(entry["fwdPx"])
            assert fwd == forwards[opt.expiry_ms * 1_000_000]
            # The same smile as the truth, in log-moneyness against OKX's own forward
            # (2 bp above the truth's), which fwdPx publishes to the cent.
            sl = snap.slice_for(opt.expiry_ms * 1_000_000)
            assert sl is not None
            venue_forward = market.forward_raw(sl)
            assert venue_forward == pytest.approx(sl.forward * 1.0002, rel=1e-12)
            assert fwd == pytest.approx(venue_forward, abs=0.005)
            truth_vol = float(sl.vol(opt.strike * sl.forward / venue_forward))
            assert float(entry["markVol"]) == pytest.approx(truth_vol, abs=1e-8)
            # Premium-adjusted delta = Black delta - coin premium.
            if sym in marks:
                usd = float(marks[sym]["markPx"])
                assert_reprices(usd, fwd, opt, ts, float(entry["markVol"]), 10)
                assert float(entry["delta"]) == pytest.approx(
                    float(entry["deltaBS"]) - usd / fwd, abs=2e-9
                )
            if sym in books:
                book = books[sym]
                for side, key in ((book["bids"], "bidVol"), (book["asks"], "askVol")):
                    if not side or not entry[key]:
                        continue
                    coin = float(side[0][0])
                    assert_quote_iv(coin * fwd, fwd, opt, ts, float(entry[key]), 10)
                    bids += key == "bidVol"
                    asks += key == "askVol"
        assert bids > 10 and asks > 10
        await c.close()
    finally:
        await handle.stop()


async def test_index_tickers_and_instruments_channels(sim: SimHandle, client: OkxClient) -> None:
    await client.subscribe(
        [
            {"channel": "index-tickers", "instId": "BTC-USD"},
            {"channel": "instruments", "instType": "OPTION"},
        ]
    )
    frames = await client.frames(0.7)
    index = [f["data"][0] for f in frames if f["arg"]["channel"] == "index-tickers"]
    assert len(index) >= 2
    assert index[0]["instId"] == "BTC-USD"
    assert float(index[0]["idxPx"]) == pytest.approx(sim.truth.snapshot("BTC").index, rel=0.01)
    listing = [f for f in frames if f["arg"]["channel"] == "instruments"]
    assert listing and len(listing[0]["data"]) == len(await client.options("BTC")) + len(
        await client.options("ETH")
    )
    new = await sim.fault("list", venue="okx", currency="BTC")
    pushed = [f for f in await client.frames(0.3) if f["arg"]["channel"] == "instruments"]
    symbols = new["symbols"]
    assert isinstance(symbols, list)
    assert {e["instId"] for e in pushed[0]["data"]} == set(symbols)


async def test_quiet_book_gets_keepalive_updates() -> None:
    handle = await run_simulator(
        config(
            "okx",
            messages_per_second=1.0,
            venue_options={"okx": {"book_keepalive_s": 0.4, "checksums": True}},
        )
    )
    try:
        c = await OkxClient.connect(handle)
        name = near_money(handle, await c.options("BTC"), 1)[0]
        await handle.fault("stale_quotes", venue="okx", symbol=name, duration_s=30)
        last = await c.start_books([name])
        keepalives = []
        for msg in await c.frames(1.5):
            book = c.book_msg(msg)
            if book is not None:
                keepalives.append(book)
        assert len(keepalives) >= 2
        for book in keepalives:
            data = book.raw["data"][0]
            assert book.bids == [] and book.asks == []
            assert data["prevSeqId"] == data["seqId"] == last[name]
            assert data["checksum"] != 0
        await c.close()
    finally:
        await handle.stop()


async def test_ping_pong_and_silent_connections_are_dropped() -> None:
    handle = await run_simulator(config("okx", venue_options={"okx": {"idle_timeout_s": 0.6}}))
    try:
        quiet = await OkxClient.connect(handle)
        chatty = await OkxClient.connect(handle)
        assert await chatty.ping_roundtrip(1.0)
        for _ in range(8):
            await asyncio.sleep(0.2)
            assert await chatty.ping_roundtrip(1.0)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await quiet.frames(0.1)
            await quiet.recv(wait=1.0)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4004
        assert handle.venue("okx").stats()["counters"]["idle_disconnects"] == 1  # type: ignore[index]
        await chatty.close()
    finally:
        await handle.stop()


async def test_bad_requests_get_okx_errors(client: OkxClient) -> None:
    acks = await client.subscribe([{"channel": "books", "instId": "BTC-USD-000101-1-C"}])
    assert acks[0]["event"] == "error" and acks[0]["code"] == "60018" and acks[0]["connId"]
    await client.ws.send("{not json")
    err = await client.recv()
    assert err["event"] == "error" and err["code"] == "60012"
    await client.send({"op": "fly", "args": []})
    assert (await client.recv())["code"] == "60012"
    acks = await client.subscribe([{"channel": "opt-summary", "instFamily": "DOGE-USD"}])
    assert acks[0]["event"] == "error"


async def test_unsubscribe_stops_the_book(sim: SimHandle, client: OkxClient) -> None:
    names = near_money(sim, await client.options("BTC"), 5)
    await client.start_books(names)
    acks = await client.subscribe([{"channel": "books", "instId": n} for n in names], "unsubscribe")
    assert {a["event"] for a in acks} == {"unsubscribe"}
    await client.frames(0.2)
    assert [f for f in await client.frames(0.5) if client.book_msg(f)] == []


async def test_stream_faults(sim: SimHandle) -> None:
    await check_stream_faults(sim, OkxClient)


async def test_connection_faults(sim: SimHandle) -> None:
    await check_connection_faults(sim, OkxClient)


async def test_listing_faults(sim: SimHandle) -> None:
    await check_listing_faults(sim, OkxClient)


def test_okx_strike_naming_is_venue_style() -> None:
    from simulator.okx import OkxNaming

    naming = OkxNaming()
    expiry_ns = 1_716_796_800 * 1_000_000_000  # 2024-05-27 08:00 UTC
    assert naming.option("BTC", expiry_ns, 60_000.0, True) == "BTC-USD-240527-60000-C"
    assert naming.option("ETH", expiry_ns, 2_525.0, False) == "ETH-USD-240527-2525-P"
    assert naming.future("BTC", expiry_ns) == "BTC-USD-240527"
