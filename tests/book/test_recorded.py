"""Recorded venue book messages rebuild correct books (Deribit, OKX + checksum, Bybit, Binance)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from svc_book.core import BookCore
from svc_connector.venues.deribit.parse import parse_frame
from svc_connector.venues.okx.checksum import (
    OkxChecksumBook,
    okx_checksum,
    okx_checksum_ok,
    okx_checksum_string,
)
from tests.book.helpers import (
    MS,
    binance_depth_snapshot,
    bybit_book_event,
    delta,
    deribit_book_event,
    read_jsonl,
    snapshot,
)
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import market_data_pb2 as md_pb


def _top_tuple(top: book_pb.TopOfBook) -> tuple[float | None, ...]:
    return tuple(
        getattr(top, name) if top.HasField(name) else None
        for name in (
            "best_bid_price_native",
            "best_bid_size_native",
            "best_ask_price_native",
            "best_ask_size_native",
        )
    )


# -- Deribit -----------------------------------------------------------------------------------


def _deribit_messages(fixtures: Path) -> list[dict[str, Any]]:
    return read_jsonl(fixtures / "deribit" / "ws_book_raw_options_2021-07-22.jsonl")


def _via_connector_parser(message: dict[str, Any]) -> md_pb.MarketDataEvent:
    """The connector's own stateless Deribit parser (svc_connector/venues/deribit/parse.py)."""
    result = parse_frame(json.dumps(message), 0)
    assert not result.dead_letters and len(result.events) == 1
    return result.events[0].event


@pytest.mark.parametrize(
    "convert", [deribit_book_event, _via_connector_parser], ids=["test-helper", "connector-parser"]
)
def test_deribit_chain_rebuilds_without_gap_and_tops_match_raw_levels(
    venue_fixtures: Path, convert: Callable[[dict[str, Any]], md_pb.MarketDataEvent]
) -> None:
    messages = _deribit_messages(venue_fixtures)
    assert len(messages) == 46
    core = BookCore("deribit", "BTC")
    # Independent recomputation: apply the raw new/change/delete actions to plain dicts.
    raw: dict[str, tuple[dict[float, float], dict[float, float]]] = {}
    latest: dict[str, book_pb.TopOfBook] = {}
    for message in messages:
        data = message["params"]["data"]
        name = data["instrument_name"]
        if data["type"] == "snapshot":
            raw[name] = ({}, {})
        for side, entries in zip(raw[name], (data["bids"], data["asks"]), strict=True):
            for action, price, amount in entries:
                if action == "delete":
                    del side[price]
                else:
                    side[price] = amount
        core.apply(convert(message))
        emitted = {t.symbol: t for t in core.tops(int(data["timestamp"]) * MS)}
        bids, asks = raw[name]
        expected_top = (
            max(bids) if bids else None,
            bids[max(bids)] if bids else None,
            min(asks) if asks else None,
            asks[min(asks)] if asks else None,
        )
        top = emitted.get(name, latest.get(name))
        assert top is not None and top.status == book_pb.BOOK_STATUS_VALID
        assert _top_tuple(top) == expected_top
        # Emitted exactly when the top moved (or on the first snapshot).
        assert (name in emitted) == (name not in latest or _top_tuple(latest[name]) != expected_top)
        assert set(emitted) <= {name}
        if name in emitted:
            assert top.one_sided == (bool(bids) != bool(asks))
            assert top.bid_levels == min(10, len(bids)) and top.ask_levels == min(10, len(asks))
            best_bids = sorted(bids.items(), reverse=True)[:10]
            assert top.bid_depth_size_native == pytest.approx(sum(sz for _, sz in best_bids))
            assert top.last_update_time_ns == int(data["timestamp"]) * MS
        latest.update(emitted)
        book = core.book(name)
        assert book is not None
        assert book.bid_levels() == sorted(bids.items(), reverse=True)
        assert book.ask_levels() == sorted(asks.items())
    stats = core.stats
    assert (stats.snapshots, stats.applied, stats.gaps, stats.duplicates) == (10, 36, 0, 0)
    assert core.needs_resync() == []

    # Hand-checked against the recording.
    put = latest["BTC-31DEC21-34000-P"]  # bids 0.2325x0.8 -> 1.5 after change 33195894765
    assert (put.best_bid_price_native, put.best_bid_size_native) == (0.2325, 1.5)
    # asks: 0.2365 deleted and 0.236 changed to 8.4 by change 33195896887
    assert (put.best_ask_price_native, put.best_ask_size_native) == (0.236, 8.4)
    eth = latest["ETH-30JUL21-2800-C"]  # 0.0015 bid changed 4714 -> 4737
    assert (eth.best_bid_price_native, eth.best_bid_size_native) == (0.0015, 4737.0)
    deep_put = latest["BTC-24SEP21-8000-P"]  # the 0.001 ask came and went 16 times
    assert (deep_put.best_ask_price_native, deep_put.best_ask_size_native) == (0.0015, 94.7)
    empty = latest["ETH-27AUG21-4000-P"]
    assert empty.status == book_pb.BOOK_STATUS_VALID and not empty.one_sided
    assert latest["ETH-23JUL21-2300-C"].one_sided
    assert latest["BTC-31DEC21-300000-C"].best_ask_price_native == 0.0055


def test_deribit_redelivered_chain_changes_nothing(venue_fixtures: Path) -> None:
    """At-least-once delivery: replaying every change after the fact is ignored."""
    events = [deribit_book_event(m) for m in _deribit_messages(venue_fixtures)]
    core = BookCore("deribit", "BTC")
    for event in events:
        core.apply(event)
    first = {t.symbol: t for t in core.tops(0, keyframe=True)}
    for event in events:
        if event.HasField("book_delta"):
            core.apply(event)
    assert core.stats.duplicates == 36 and core.stats.gaps == 0
    assert core.tops(0) == []
    again = {t.symbol: t for t in core.tops(0, keyframe=True)}
    for symbol, top in first.items():
        top.header.sequence = again[symbol].header.sequence
        assert again[symbol] == top


def test_deribit_missing_change_is_a_gap(venue_fixtures: Path) -> None:
    events = [deribit_book_event(m) for m in _deribit_messages(venue_fixtures)]
    # Drop the 5th change of BTC-24SEP21-8000-P: its successor no longer chains.
    positions = [i for i, e in enumerate(events) if e.book_delta.symbol == "BTC-24SEP21-8000-P"]
    events.pop(positions[4])
    core = BookCore("deribit", "BTC")
    for event in events:
        core.apply(event)
    assert core.stats.gaps == 1
    assert core.needs_resync() == ["BTC-24SEP21-8000-P"]
    tops = {t.symbol: t for t in core.tops(0, keyframe=True)}
    assert tops["BTC-24SEP21-8000-P"].status == book_pb.BOOK_STATUS_GAP
    assert sum(t.status == book_pb.BOOK_STATUS_VALID for t in tops.values()) == 9


# -- OKX -----------------------------------------------------------------------------------


def _okx_messages(fixtures: Path) -> list[dict[str, Any]]:
    path = fixtures / "okx" / "ws_books_checksum_BTC-USD-220527_2022-05-13.jsonl"
    return read_jsonl(path)


class _NaiveStringBook:
    """The test's own string-level book: dicts of price string -> size string, sorted on read."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def apply(self, bids: list[list[str]], asks: list[list[str]]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size, *_ in levels:
                if float(size) == 0:
                    side.pop(price, None)
                else:
                    side[price] = size

    def sorted_bids(self) -> list[tuple[str, str]]:
        return sorted(self.bids.items(), key=lambda kv: float(kv[0]), reverse=True)

    def sorted_asks(self) -> list[tuple[str, str]]:
        return sorted(self.asks.items(), key=lambda kv: float(kv[0]))


def test_okx_book_rebuilds_and_checksum_verifies_on_every_message(venue_fixtures: Path) -> None:
    messages = _okx_messages(venue_fixtures)
    assert len(messages) == 99 and messages[0]["action"] == "snapshot"
    core = BookCore("okx", "BTC")
    naive = _NaiveStringBook()
    library = OkxChecksumBook()
    previous_top: tuple[float, ...] = ()
    for i, message in enumerate(messages):
        data = message["data"][0]
        symbol = message["arg"]["instId"]
        t_ns = int(data["ts"]) * MS
        bids = [(float(px), float(sz)) for px, sz, *_ in data["bids"]]
        asks = [(float(px), float(sz)) for px, sz, *_ in data["asks"]]
        # The recording predates seqId: number the messages as seqId would.
        if message["action"] == "snapshot":
            naive.bids, naive.asks = {}, {}
            naive.apply(data["bids"], data["asks"])
            library.apply_snapshot(data["bids"], data["asks"])
            core.apply(snapshot(symbol, bids, asks, 1000, t_ns))
        else:
            naive.apply(data["bids"], data["asks"])
            library.apply_update(data["bids"], data["asks"])
            core.apply(delta(symbol, bids, asks, 1000 + i, 1000 + i - 1, t_ns))
        expected = int(data["checksum"])
        assert okx_checksum(naive.sorted_bids(), naive.sorted_asks()) == expected, i
        assert library.checksum_ok(expected) and library.checksum() == expected, i
        tops = core.tops(t_ns)
        book = core.book(symbol)
        assert book is not None and book.is_valid
        assert book.bid_levels() == [(float(p), float(s)) for p, s in naive.sorted_bids()]
        assert book.ask_levels() == [(float(p), float(s)) for p, s in naive.sorted_asks()]
        best_bid, best_ask = naive.sorted_bids()[0], naive.sorted_asks()[0]
        top_now = (float(best_bid[0]), float(best_bid[1]), float(best_ask[0]), float(best_ask[1]))
        # Emitted exactly when the top moved.
        assert bool(tops) == (i == 0 or top_now != previous_top), i
        if tops:
            (top,) = tops
            assert _top_tuple(top) == top_now and not top.crossed and top.bid_levels == 10
        previous_top = top_now
    assert core.stats.applied == 98 and core.stats.gaps == 0
    # Hand-checked: the snapshot's best levels.
    first = messages[0]["data"][0]
    assert (first["bids"][0][:2], first["asks"][0][:2]) == (["30233.6", "3"], ["30238.8", "2"])


def test_okx_checksum_detects_a_missed_update(venue_fixtures: Path) -> None:
    messages = _okx_messages(venue_fixtures)
    library = OkxChecksumBook()
    library.apply_snapshot(messages[0]["data"][0]["bids"], messages[0]["data"][0]["asks"])
    # Skip update 1: update 2's checksum no longer matches.
    second = messages[2]["data"][0]
    library.apply_update(second["bids"], second["asks"])
    assert not library.checksum_ok(int(second["checksum"]))
    assert library.checksum_ok(0)  # the venue sent no checksum: nothing to verify


def test_okx_checksum_string_interleaves_and_continues_the_longer_side() -> None:
    bids = [["3", "1"], ["2", "1"], ["1", "5"]]
    asks = [["4", "2"]]
    assert okx_checksum_string(bids, asks) == "3:1:4:2:2:1:1:5"
    value = okx_checksum(bids, asks)
    assert -(2**31) <= value < 2**31
    assert okx_checksum_ok(value, bids, asks) and not okx_checksum_ok(value + 1, bids, asks)
    # Only the best 25 levels per side count.
    deep = [[str(100 - i), "1"] for i in range(30)]
    assert okx_checksum_string(deep, []).count(":") == 2 * 25 - 1
    assert okx_checksum(deep, []) == okx_checksum(deep[:25], [])


def test_okx_checksum_book_refuses_non_numeric_levels() -> None:
    book = OkxChecksumBook()
    book.apply_snapshot([["10", "1", "0", "1"]], [["11", "2", "0", "1"]])
    for bad in (["nan", "1"], ["10", "inf"], ["abc", "1"]):
        with pytest.raises(ValueError):
            book.apply_update([bad], [])
    book.apply_update([["10", "0", "0", "0"]], [])
    assert book.top() == ([], [("11", "2")])


def test_okx_recording_without_seq_ids_applies_as_unsequenced(venue_fixtures: Path) -> None:
    """What a connector sends for pre-seqId data (sequence 0 everywhere): every update applies."""
    core = BookCore("okx", "BTC")
    for message in _okx_messages(venue_fixtures):
        data = message["data"][0]
        bids = [(float(px), float(sz)) for px, sz, *_ in data["bids"]]
        asks = [(float(px), float(sz)) for px, sz, *_ in data["asks"]]
        if message["action"] == "snapshot":
            core.apply(snapshot("F", bids, asks, 0, 0))
        else:
            core.apply(delta("F", bids, asks, 0, 0, 0))
    assert core.stats.applied == 98 and core.stats.keepalives == 0
    last = _okx_messages(venue_fixtures)[-1]["data"][0]
    (top,) = core.tops(0, keyframe=True)
    book = core.book("F")
    assert book is not None
    # The last update: ask 30238.8 -> 3, ask 30240.7 deleted.
    assert last["asks"] == [["30238.8", "3", "0", "1"], ["30240.7", "0", "0", "0"]]
    assert book.asks[30238.8] == 3.0 and 30240.7 not in book.asks
    assert top.status == book_pb.BOOK_STATUS_VALID and top.best_ask_price_native == 30238.8


# -- Bybit ---------------------------------------------------------------------------------


def test_bybit_recorded_snapshot_delta_and_empty_snapshot(venue_fixtures: Path) -> None:
    lines = read_jsonl(venue_fixtures / "bybit" / "tardis_node_mappers_test_bybit_options.jsonl")
    books = [m for m in lines if m["topic"].startswith("orderbook.")]
    assert [m["type"] for m in books] == ["snapshot", "snapshot", "delta"]
    core = BookCore("bybit", "BTC")
    for message in books:
        core.apply(bybit_book_event(message))
    tops = {t.symbol: t for t in core.tops(1680652799661 * MS)}
    empty = tops["BTC-30JUN23-45000-P"]  # u 0, no levels
    assert empty.status == book_pb.BOOK_STATUS_VALID
    assert not empty.HasField("best_bid_price_native") and not empty.one_sided
    sol = tops["SOL-28APR23-30-C"]  # delta u 24642 deletes ask 1.74, adds 1.75x46
    assert (sol.best_bid_price_native, sol.best_bid_size_native) == (0.01, 50.0)
    assert (sol.best_ask_price_native, sol.best_ask_size_native) == (1.75, 46.0)
    assert sol.last_update_time_ns == 1680652799661 * MS
    assert core.stats.applied == 1 and core.stats.gaps == 0


def test_bybit_unrelated_snapshot_and_delta_are_a_gap(venue_fixtures: Path) -> None:
    """The nautilus snapshot (u 18521288) and delta (u 177400507) are not one chain."""
    folder = venue_fixtures / "bybit"
    snap = json.loads((folder / "nautilus_ws_orderbook_snapshot_LINEAR_BTCUSDT.json").read_text())
    dlt = json.loads((folder / "nautilus_ws_orderbook_delta_LINEAR_BTCUSDT.json").read_text())
    core = BookCore("bybit", "BTC")
    core.apply(bybit_book_event(snap))
    (top,) = core.tops(0)
    assert (top.best_bid_price_native, top.best_ask_price_native) == (16493.5, 16611.0)
    core.apply(bybit_book_event(dlt))
    (gap,) = core.tops(0)
    assert gap.status == book_pb.BOOK_STATUS_GAP and core.needs_resync() == ["BTCUSDT"]
    # u = 1 after a venue restart: the snapshot resets the book.
    restart = dict(snap, data=dict(snap["data"], u=1))
    core.apply(bybit_book_event(restart))
    (valid,) = core.tops(0)
    book = core.book("BTCUSDT")
    assert valid.status == book_pb.BOOK_STATUS_VALID and book is not None and book.sequence == 1


# -- Binance -------------------------------------------------------------------------------


def test_binance_depth_pushes_are_full_periodic_snapshots(venue_fixtures: Path) -> None:
    folder = venue_fixtures / "binance"
    messages = [
        m
        for path in sorted(folder.glob("*.jsonl"))
        for m in read_jsonl(path)
        if "@depth" in m.get("stream", "")
    ]
    assert len(messages) == 2
    core = BookCore("binance", "BTC")
    for message in messages:
        core.apply(binance_depth_snapshot(message))
    tops = {t.symbol: t for t in core.tops(0)}
    eth = tops["ETH-251219-3100-C"]
    assert (eth.best_bid_price_native, eth.best_bid_size_native) == (16.6, 150.23)
    assert (eth.best_ask_price_native, eth.best_ask_size_native) == (18.8, 70.0)
    assert (eth.bid_levels, eth.ask_levels) == (2, 2)
    btc = tops["BTC-231027-34000-C"]
    assert (btc.best_bid_price_native, btc.best_ask_price_native) == (60.0, 65.0)
    assert btc.ask_depth_size_native == 8.28 + 38.88
    book = core.book("ETH-251219-3100-C")
    assert book is not None and book.periodic and book.sequence == 121509455
    # The next push replaces the whole top-N: levels absent from it are gone.
    nxt = dict(messages[1], data=dict(messages[1]["data"], u=121509460, b=[["16.4000", "3.00"]]))
    core.apply(binance_depth_snapshot(nxt))
    (eth2,) = core.tops(0)
    assert (eth2.best_bid_price_native, eth2.best_bid_size_native, eth2.bid_levels) == (
        16.4,
        3.0,
        1,
    )
    assert core.stats.snapshots == 3 and core.needs_resync() == []
