"""Binance frame parsing against both recorded stream APIs, plus bad-input outcomes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from svc_connector.venues.base import FrameResult
from svc_connector.venues.binance.parse import parse_frame
from svc_connector.venues.binance.session import BinanceSession
from tests.connector.deribit_fixtures import lines
from volstream.v1 import market_data_pb2 as md_pb

V1_FILE = "tardis_node_mappers_test_binance_european_options_v1_2023-10.jsonl"
V2_FILE = "tardis_node_mappers_test_binance_european_options_v2_2025-12.jsonl"


def binance_dir(venue_fixtures: Path) -> Path:
    return venue_fixtures / "binance"


def _run(session: BinanceSession, frames: list[bytes]) -> FrameResult:
    total = FrameResult()
    for offset, frame in enumerate(frames):
        total.extend(session.on_frame(frame, offset))
    return total


def _units(*pairs: tuple[str, float]) -> list[md_pb.Instrument]:
    return [md_pb.Instrument(symbol=s, contract_size_coin=u) for s, u in pairs]


@pytest.mark.parametrize("name", [V1_FILE, V2_FILE])
def test_recordings_parse_with_exact_counts(venue_fixtures: Path, name: str) -> None:
    frames = lines(binance_dir(venue_fixtures) / name)
    kinds: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for frame in frames:
        result = parse_frame(frame, 1)
        assert result.dead_letters == [] and result.venue_errors == []
        kinds.update(result.kind_counts())
        counts.update(result.counts)
    assert kinds == {"ticker": 3, "index_price": 2, "book_snapshot": 1}
    assert _run(BinanceSession(), frames).kind_counts() == kinds
    if name == V1_FILE:
        assert len(frames) == 10
        assert counts["unknown_channel.trade"] == 2
        assert counts["unknown_channel.openinterest"] == 2
        assert counts["ticker.ticker"] == 2 and counts["ticker.legacy_mark_price"] == 1
        assert counts["index_price"] == 2
    else:
        assert len(frames) == 8
        assert counts["unknown_channel.optiontrade"] == 2
        assert counts["unknown_channel.optionopeninterest"] == 1
        assert counts["ignored.optionTicker"] == 1  # 24 h statistics only
        assert counts["ticker.mark_price"] == 2 and counts["ticker.book_ticker"] == 1
        assert counts["index_price.from_marks"] == 2


def test_current_mark_price_normalisation_and_unit(venue_fixtures: Path) -> None:
    frames = lines(binance_dir(venue_fixtures) / V2_FILE)
    session = BinanceSession()
    session.set_instruments(_units(("XRP-251219-2.05-P", 100.0), ("BTC-251219-89000-C", 1.0)))
    result = _run(session, frames)
    tickers = {e.event.ticker.symbol: e.event.ticker for e in result.events if e.kind == "ticker"}
    xrp = tickers["XRP-251219-2.05-P"]
    # XRP contracts are 100 coins: premium per coin = premium / unit.
    assert xrp.mark_price_native == 19.0314
    assert xrp.mark_price_usd_per_coin == pytest.approx(0.190314)
    # IV "-1.0" means no quote; "0.0000" prices an empty side.
    assert not xrp.HasField("bid_iv") and not xrp.HasField("ask_iv")
    assert not xrp.HasField("best_bid_price_native") and xrp.mark_iv == 2.6
    # The venue prices on the spot index.
    assert xrp.forward_usd == xrp.index_price_usd == 1.96239445
    assert xrp.forward_name == "XRPUSDT"
    btc = tickers["BTC-251219-89000-C"]
    assert (btc.bid_iv, btc.ask_iv, btc.mark_iv) == (0.85, 0.88, 0.86)
    assert btc.best_bid_price_native == 1440.0 and btc.best_ask_size_native == 3.5
    assert btc.best_bid_price_usd_per_coin == 1440.0  # unit 1
    assert (btc.delta, btc.gamma, btc.vega, btc.theta) == (0.75, 0.002, 0.15, -0.05)
    assert btc.header.event_time_ns == 1765983421000 * 1_000_000
    indices = [e for e in result.events if e.kind == "index"]
    assert [(e.currency, e.event.index_price.index_name) for e in indices] == [
        ("XRP", "XRPUSDT"),
        ("BTC", "BTCUSDT"),
    ]
    assert indices[1].event.index_price.price_usd == 104334.60217391
    # Without the unit nothing is guessed.
    bare = parse_frame(frames[-1], 1)
    assert not bare.events[0].event.ticker.HasField("mark_price_usd_per_coin")
    assert bare.counts["ticker.unknown_contract_size"] == 1


def test_partial_depth_and_book_ticker(venue_fixtures: Path) -> None:
    frames = lines(binance_dir(venue_fixtures) / V2_FILE)
    depth = parse_frame(frames[2], 1)
    assert depth.channel == "eth-251219-3100-c@depth20@100ms"
    snapshot = depth.events[0].event.book_snapshot
    assert snapshot.symbol == "ETH-251219-3100-C" and snapshot.is_periodic
    assert snapshot.venue_sequence == 121509455
    assert [(lv.price_native, lv.size_native) for lv in snapshot.bids] == [
        (16.6, 150.23),
        (16.4, 10.0),
    ]
    book_ticker = parse_frame(frames[3], 1).events[0].event.ticker
    # bookTicker: "b"/"a" are prices here, not IVs.
    assert book_ticker.best_bid_price_native == 5.8 and book_ticker.best_bid_size_native == 38.47
    assert book_ticker.best_ask_price_native == 6.4 and not book_ticker.HasField("bid_iv")


def test_legacy_streams_take_the_forward_from_the_index(venue_fixtures: Path) -> None:
    frames = lines(binance_dir(venue_fixtures) / V1_FILE)
    session = BinanceSession()
    session.set_instruments(_units(("BTC-240927-25000-P", 1.0), ("XRP-231006-0.44-C", 100.0)))
    result = _run(session, frames)
    tickers = [e.event.ticker for e in result.events if e.kind == "ticker"]
    xrp, first, second = tickers
    assert xrp.symbol == "XRP-231006-0.44-C" and xrp.mark_price_native == 7.949
    assert xrp.mark_price_usd_per_coin == pytest.approx(0.07949)
    assert not xrp.HasField("forward_usd")  # no XRP index seen
    # The older ticker carries IVs and greeks but no index: the latest BTCUSDT index is used.
    assert first.forward_usd == 26963.13461538 and first.forward_name == "BTCUSDT"
    assert second.forward_usd == 26960.90703297
    assert first.bid_iv == 0.3804034 and first.mark_iv == 0.42824954
    assert first.best_bid_price_native == 3000.0 and first.best_ask_price_native == 3950.0
    assert first.vega == 99.30558193 and first.mark_price_native == 3475.0
    # The older depth100 is a full book (partial depth stream), uppercase stream name.
    depth = next(e for e in result.events if e.kind == "book").event.book_snapshot
    assert depth.is_periodic and depth.symbol == "BTC-231027-34000-C"
    assert depth.venue_sequence == 1925729


def _wrap(stream: str, data: object) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


MARK = {
    "s": "BTC-251219-89000-C",
    "mp": "1450.5",
    "E": 1765983421000,
    "e": "markPrice",
    "i": "104334.6",
    "bo": "1440.0",
    "ao": "1460.0",
    "bq": "5.00",
    "aq": "3.50",
    "b": "",
    "a": "0",
    "vo": "-1",
    "d": "0.75",
    "t": "-0.05",
    "g": "0.002",
    "v": "0.15",
}


def test_stream_names_are_matched_in_either_case() -> None:
    lower = parse_frame(_wrap("btcusdt@optionmarkprice", [MARK]), 1)
    upper = parse_frame(_wrap("BTCUSDT@OPTIONMARKPRICE", [MARK]), 1)
    assert lower.kind_counts() == upper.kind_counts() == {"ticker": 1, "index_price": 1}
    assert lower.events[0].event == upper.events[0].event
    ticker = lower.events[0].event.ticker
    # "", "0" and "-1" IVs are all absent.
    assert not (
        ticker.HasField("bid_iv") or ticker.HasField("ask_iv") or ticker.HasField("mark_iv")
    )


def test_diff_depth_carries_pu_as_previous_sequence() -> None:
    data = {
        "e": "depthUpdate",
        "E": 1765983419936,
        "T": 1765983419928,
        "s": "ETH-251219-3100-C",
        "U": 121508743,
        "u": 121509455,
        "pu": 121508733,
        "b": [["16.6000", "0"]],
        "a": [["18.8000", "70.00"]],
    }
    result = parse_frame(_wrap("eth-251219-3100-c@depth@100ms", data), 1)
    delta = result.events[0].event.book_delta
    assert (delta.prev_venue_sequence, delta.venue_sequence) == (121508733, 121509455)
    assert delta.bids[0].size_native == 0.0  # size 0 deletes
    missing_pu = {k: v for k, v in data.items() if k != "pu"}
    dead = parse_frame(_wrap("eth-251219-3100-c@depth@100ms", missing_pu), 1)
    assert dead.events == [] and "'pu'" in dead.dead_letters[0].reason


def test_subscribe_responses_and_errors() -> None:
    session = BinanceSession(first_request_id=7)
    wire = orjson.loads(session.subscribe(["btcusdt@optionMarkPrice"]))
    assert wire == {"method": "SUBSCRIBE", "params": ["btcusdt@optionMarkPrice"], "id": 7}
    ack = session.on_frame(b'{"result":null,"id":7}', 1)
    assert ack.subscribed == ["btcusdt@optionMarkPrice"]
    assert [(a.request_id, a.method) for a in ack.acks] == [(7, "SUBSCRIBE")]
    session.subscribe(["bad stream"])
    error = session.on_frame(b'{"error":{"code":2,"msg":"Invalid request"},"id":8}', 2)
    assert error.venue_errors[0].code == "2" and error.venue_errors[0].method == "SUBSCRIBE"
    assert error.venue_errors[0].channels == ("bad stream",)
    flat = session.on_frame(b'{"code":-1121,"msg":"Invalid symbol."}', 3)
    assert flat.venue_errors[0].code == "-1121" and flat.venue_errors[0].method == ""


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b'{"stream":"x@index"', "malformed JSON"),
        (b"1", "not a JSON object"),
        (b'{"stream":"btcusdt@index"}', "missing 'data'"),
        (_wrap("btcusdt@optionMarkPrice", {"s": "X"}), "'data' is not a list"),
        (_wrap("BTCUSDT@index", {"e": "index", "E": 1, "s": "BTCUSDT"}), "'p'"),
        (_wrap("btc-1-1-c@depth20@100ms", [1]), "is not an object"),
        (
            _wrap("btc-251219-1-c@depth20@100ms", {"E": 1, "s": "BTC-251219-1-C", "b": 1, "a": []}),
            "non-list 'b'",
        ),
    ],
)
def test_bad_frames_are_dead_lettered_never_raised(raw: bytes, reason_part: str) -> None:
    result = BinanceSession().on_frame(raw, 1)
    assert result.events == []
    assert len(result.dead_letters) == 1 and result.dead_letters[0].raw == raw
    assert reason_part in result.dead_letters[0].reason


def test_a_bad_mark_entry_is_dead_lettered_alone() -> None:
    no_symbol = {k: v for k, v in MARK.items() if k != "s"}
    result = BinanceSession().on_frame(_wrap("btcusdt@optionMarkPrice", [no_symbol, MARK]), 1)
    assert result.kind_counts() == {"ticker": 1, "index_price": 1}
    assert len(result.dead_letters) == 1 and "'s'" in result.dead_letters[0].reason


def test_unknown_frames_are_counted() -> None:
    session = BinanceSession()
    assert session.on_frame(b'{"hello":"world"}', 1).counts["unknown_message"] == 1
    assert (
        session.on_frame(_wrap("!optionSymbol", {}), 1).counts["unknown_channel._optionSymbol"] == 1
    )
    assert session.on_frame(_wrap("btc@depth7@100ms", {}), 1).counts["unknown_channel.depth7"] == 1
