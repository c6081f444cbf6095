"""BinanceSession: diff books bridged onto REST snapshots, merged tickers; instruments and plan."""

from __future__ import annotations

import orjson
import pytest

from svc_connector.venues import registry
from svc_connector.venues.base import ConnectorConfig, Endpoints, FrameResult, MemorySink
from svc_connector.venues.binance.client import (
    BinanceConnector,
    BinanceSettings,
    plan_channel_groups,
)
from svc_connector.venues.binance.parse import parse_instruments
from svc_connector.venues.binance.session import BinanceSession
from svc_connector.venues.binance.symbols import format_symbol, parse_symbol
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

SYMBOL = "BTC-251219-89000-C"
STREAM = "btc-251219-89000-c@depth@100ms"


def _diff(first: int, last: int, prev: int, bids: list[list[str]] | None = None) -> bytes:
    data = {
        "e": "depthUpdate",
        "E": 1765983419000 + last,
        "s": SYMBOL,
        "U": first,
        "u": last,
        "pu": prev,
        "b": bids or [],
        "a": [],
    }
    return orjson.dumps({"stream": STREAM, "data": data})


def _rest(update_id: int) -> bytes:
    return orjson.dumps(
        {"T": 1765983419000, "u": update_id, "bids": [["1400", "2"]], "asks": [["1500", "1"]]}
    )


def _cases(result: FrameResult) -> list[str]:
    return [str(e.event.WhichOneof("event")) for e in result.events]


def test_diffs_are_buffered_and_bridged_onto_the_rest_snapshot() -> None:
    session = BinanceSession(buffer_diffs=True, resync_timeout_ns=10**12)
    # No snapshot yet: reset + resync request; the diffs are kept meanwhile.
    first = session.on_frame(_diff(101, 105, 100), 1)
    assert _cases(first) == ["book_reset"]
    assert [(r.symbol, r.channel) for r in first.resubscribes] == [(SYMBOL, STREAM)]
    waiting = session.on_frame(_diff(106, 110, 105, [["1410", "3"]]), 2)
    assert waiting.events == [] and waiting.counts["book.buffered"] == 1
    session.on_frame(_diff(111, 115, 110), 3)
    # The REST snapshot (u 108) arrives: 101-105 is older (dropped), 106-110 spans it
    # (bridges), 111-115 continues.
    applied = session.on_rest_depth(_rest(108), SYMBOL, 4)
    assert _cases(applied) == ["book_snapshot", "book_delta", "book_delta"]
    assert applied.counts["book.stale_dropped"] == 1 and applied.counts["book.bridged"] == 1
    snapshot = applied.events[0].event.book_snapshot
    assert snapshot.venue_sequence == 108 and not snapshot.is_periodic
    bridge = applied.events[1].event.book_delta
    # Emitted as continuing the snapshot (pu 105 normalised to its u 108): the one rule.
    assert (bridge.prev_venue_sequence, bridge.venue_sequence) == (108, 110)
    # Header sequences are stamped like a frame's.
    sequences = [e.event.book_delta.header.sequence for e in applied.events[1:]]
    assert sequences[1] == sequences[0] + 1
    # Live diffs continue on pu == last u.
    live = session.on_frame(_diff(116, 120, 115), 5)
    assert _cases(live) == ["book_delta"]
    gap = session.on_frame(_diff(131, 135, 130), 6)
    assert _cases(gap) == ["book_reset"] and gap.counts["book.gap"] == 1


def test_a_rest_snapshot_newer_than_every_buffered_diff_waits_for_the_next() -> None:
    session = BinanceSession(buffer_diffs=True)
    session.on_frame(_diff(101, 105, 100), 1)
    applied = session.on_rest_depth(_rest(120), SYMBOL, 2)
    assert _cases(applied) == ["book_snapshot"] and applied.counts["book.stale_dropped"] == 1
    assert _cases(session.on_frame(_diff(118, 125, 117), 3)) == ["book_delta"]  # bridges


def test_bad_rest_snapshots_are_dead_lettered() -> None:
    session = BinanceSession(buffer_diffs=True)
    bad = session.on_rest_depth(b'{"code":-1121,"msg":"Invalid symbol."}', SYMBOL, 1)
    assert bad.events == [] and "venue error -1121" in bad.dead_letters[0].reason
    garbage = session.on_rest_depth(b"<html>", SYMBOL, 1)
    assert "malformed JSON" in garbage.dead_letters[0].reason
    no_u = session.on_rest_depth(b'{"T":1,"bids":[],"asks":[]}', SYMBOL, 1)
    assert "'u'" in no_u.dead_letters[0].reason


def test_without_buffering_diffs_are_dropped_while_resyncing() -> None:
    session = BinanceSession(resync_timeout_ns=10**12)
    session.on_frame(_diff(101, 105, 100), 1)
    dropped = session.on_frame(_diff(106, 110, 105), 2)
    assert dropped.events == [] and dropped.counts["book.dropped_while_resyncing"] == 1


def test_legacy_mark_and_ticker_merge_without_blanking_each_other() -> None:
    session = BinanceSession()
    session.set_instruments([md_pb.Instrument(symbol=SYMBOL, contract_size_coin=1.0)])
    ticker = {
        "e": "24hrTicker",
        "E": 1,
        "s": SYMBOL,
        "bo": "100",
        "ao": "110",
        "bq": "1",
        "aq": "2",
        "b": "0.5",
        "a": "0.55",
        "vo": "0.52",
        "mp": "105",
        "d": "0.4",
        "t": "-1",
        "g": "0.001",
        "v": "10",
    }
    session.on_frame(orjson.dumps({"stream": f"{SYMBOL}@ticker", "data": ticker}), 1)
    mark = [{"e": "markPrice", "E": 2, "s": SYMBOL, "mp": "106"}]
    merged = session.on_frame(orjson.dumps({"stream": "BTC@markPrice", "data": mark}), 2)
    result = merged.events[0].event.ticker
    assert result.mark_price_native == 106.0 and result.mark_price_usd_per_coin == 106.0
    assert result.bid_iv == 0.5 and result.best_ask_price_native == 110.0  # kept
    assert result.header.event_time_ns == 2_000_000


# ---- instruments and planning ------------------------------------------------------------------


def _symbol(name: str, unit: object, strike: str, **changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "contractId": 2,
        "expiryDate": 1766131200000,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.1",
                "maxPrice": "10000",
                "tickSize": "0.1",
            },
            {"filterType": "LOT_SIZE", "minQty": "0.01", "maxQty": "100", "stepSize": "0.01"},
        ],
        "id": 17,
        "symbol": name,
        "side": "CALL" if name.endswith("-C") else "PUT",
        "strikePrice": strike,
        "underlying": name.split("-")[0] + "USDT",
        "unit": unit,
        "quoteAsset": "USDT",
        "status": "TRADING",
    }
    entry.update(changes)
    return entry


EXCHANGE_INFO = orjson.dumps(
    {
        "timezone": "UTC",
        "serverTime": 1765983420000,
        "optionContracts": [],
        "optionSymbols": [
            _symbol("BTC-251219-89000-C", 1, "89000.000"),
            _symbol("XRP-251219-2.05-P", 100, "2.05000000"),
            _symbol("DOGE-251219-0.06-C", "1000", "0.06"),
            _symbol("BTC-251219-90000-C", 1, "90000", status="CLOSE"),
        ],
    }
)


def test_exchange_info_instruments() -> None:
    result = parse_instruments(EXCHANGE_INFO, 1)
    assert result.dead_letters == [] and result.venue_time_ns == 1765983420000 * 1_000_000
    by_symbol = {i.symbol: i for i in result.instruments}
    xrp = by_symbol["XRP-251219-2.05-P"]
    assert xrp.contract_size_coin == 100.0  # unit: coins per contract
    assert xrp.premium_unit == md_pb.PREMIUM_UNIT_USD_PER_CONTRACT
    assert xrp.strike_usd == 2.05 and xrp.option_kind == common_pb.OPTION_KIND_PUT
    assert xrp.currency == "XRP" and xrp.underlying == "XRPUSDT"
    assert xrp.expiry_time_ns == 1766131200000 * 1_000_000
    assert xrp.tick_size_native == 0.1 and xrp.min_size_native == 0.01
    assert by_symbol["DOGE-251219-0.06-C"].contract_size_coin == 1000.0
    assert not by_symbol["BTC-251219-90000-C"].is_active
    parsed = parse_symbol("xrp-251219-2.05-p")
    assert parsed is not None and parsed.name == "XRP-251219-2.05-P"
    assert parsed.expiry_time_ns == xrp.expiry_time_ns  # 08:00 UTC
    assert format_symbol("DOGE", parsed.expiry, 0.06, True) == "DOGE-251219-0.06-C"
    bad = parse_instruments(
        orjson.dumps({"optionSymbols": [_symbol("BTC-251219-1-C", 0, "1"), {"symbol": "X"}]}), 1
    )
    assert bad.instruments == []
    assert "'unit'" in bad.dead_letters[0].reason and "'side'" in bad.dead_letters[1].reason
    error = parse_instruments(b'{"code":-1003,"msg":"Too many requests"}', 1)
    assert error.venue_errors[0].code == "-1003"


def test_plan_routes_and_urls() -> None:
    instruments = parse_instruments(EXCHANGE_INFO, 1).instruments
    settings = BinanceSettings.from_config(ConnectorConfig(currencies=("BTC", "XRP")))
    groups = plan_channel_groups(instruments, settings)
    assert groups == {
        "BTC-251219-89000-C": ("btc-251219-89000-c@depth20@100ms",),
        "XRP-251219-2.05-P": ("xrp-251219-2.05-p@depth20@100ms",),
        "market:BTC": ("btcusdt@optionMarkPrice",),
        "market:XRP": ("xrpusdt@optionMarkPrice",),
    }
    connector = BinanceConnector(ConnectorConfig(currencies=("BTC",)), MemorySink())
    assert connector.route_of("market:BTC") == "market"
    assert connector.route_of("BTC-251219-89000-C") == "public"
    assert connector.connection_plan("public").url == "wss://fstream.binance.com/public/stream"
    market = connector.connection_plan("market")
    assert market.url == "wss://fstream.binance.com/market/stream"
    assert market.keepalive is None and market.max_age_s is not None and market.max_age_s < 86400
    # Partial books are complete on every push: nothing to resync.
    assert connector.resync_books(["BTC-251219-89000-C"]) == 0

    legacy = BinanceSettings.from_config(
        ConnectorConfig(currencies=("BTC",), environment="eoptions")
    )
    assert (
        legacy.api == "eoptions" and legacy.runtime.ws_url == "wss://nbstream.binance.com/eoptions"
    )
    assert plan_channel_groups(instruments, legacy) == {
        "BTC-251219-89000-C": ("BTC-251219-89000-C@depth20@100ms", "BTC-251219-89000-C@ticker"),
        "market:BTC": ("BTCUSDT@index", "BTC@markPrice"),
    }
    diff = BinanceSettings.from_config(
        ConnectorConfig(currencies=("BTC",), venue_options={"book_mode": "diff"})
    )
    assert plan_channel_groups(instruments, diff)["BTC-251219-89000-C"] == (
        "btc-251219-89000-c@depth@100ms",
    )
    with pytest.raises(ValueError, match="book mode"):
        BinanceSettings.from_config(ConnectorConfig(venue_options={"book_mode": "full"}))


def test_registry_entry() -> None:
    adapter = registry.get("binance")
    assert adapter.source == "connector.binance"
    assert adapter.resolve_endpoints(ConnectorConfig()).rest_url == "https://eapi.binance.com"
    sim = adapter.simulator_endpoints("http://h:1/binance/", "ws://h:1/binance")
    assert sim == Endpoints("ws://h:1/binance", "http://h:1/binance")
    assert adapter.limits.max_channels_per_connection == 200
