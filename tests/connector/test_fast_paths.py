"""The connectors' fast paths against their checked twins, on every recorded fixture frame
and on perturbed copies (numbers as JSON numbers, empty, junk, NaN, missing).

Each fast path must give exactly what the checked path gives, or step aside (``None``) and
leave the entry to it; the batch wire bytes must equal the serialized MarketDataBatch.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from svc_connector.kit.book_levels import (
    ASKS_TAG,
    BIDS_TAG,
    add_number_levels,
    best_first_pairs,
    levels_wire,
    number_levels,
    text_levels,
    wire_levels,
)
from svc_connector.kit.fields import FieldError
from svc_connector.kit.tickers import TickerMerger
from svc_connector.service import batch_bytes
from svc_connector.venues.base import FrameResult, NormalisedEvent
from svc_connector.venues.deribit import parse as deribit_parse
from svc_connector.venues.okx import parse as okx_parse
from svc_connector.venues.okx import session as okx_session
from svc_connector.venues.okx.checksum import OkxChecksumBook, okx_checksum
from volstream.v1 import market_data_pb2 as md_pb


def _frames(path: Path) -> Iterator[Any]:
    for line in path.read_text().splitlines():
        if line.strip():
            yield orjson.loads(line)


def _okx_entries(venue_fixtures: Path, channel: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in sorted((venue_fixtures / "okx").glob("*.jsonl")):
        for frame in _frames(path):
            if isinstance(frame, dict) and frame.get("arg", {}).get("channel") == channel:
                entries.extend(e for e in frame.get("data", []) if isinstance(e, dict))
    return entries


JUNK: tuple[object, ...] = ("", "abc", "nan", "inf", "-inf", None, True, 1, 0.25, [], "1e999")


def _perturbed(entry: dict[str, Any], keys: list[str], rng: random.Random) -> dict[str, Any]:
    changed = copy.deepcopy(entry)
    for key in rng.sample(keys, k=min(len(keys), rng.randint(1, 2))):
        if rng.random() < 0.15:
            changed.pop(key, None)
        else:
            changed[key] = rng.choice(JUNK)
    return changed


def test_okx_opt_summary_fast_fields_match_the_checked_path(venue_fixtures: Path) -> None:
    entries = _okx_entries(venue_fixtures, "opt-summary")
    assert entries, "no opt-summary entries in the OKX fixtures"
    keys = ["bidVol", "askVol", "markVol", "fwdPx", "deltaBS", "delta", "gammaBS", "vegaBS"]
    keys.append("thetaBS")
    rng = random.Random(7)
    cases = entries + [_perturbed(e, keys, rng) for e in entries for _ in range(5)]
    fast_taken = 0
    for entry in cases:
        counts: Counter[str] = Counter()
        checked = okx_parse._summary_fields_checked(entry, counts)
        fast = okx_parse._summary_fields_fast(entry)
        if fast is not None:
            fast_taken += 1
            assert fast == checked, entry
            assert not counts, entry  # the fast path only takes entries without bad fields
    assert fast_taken >= len(entries)  # every recorded entry takes the fast path


def test_okx_session_tickers_equal_the_stateless_parse_merged(venue_fixtures: Path) -> None:
    """The session's deferred opt-summary tickers carry exactly the parsed fields."""
    path = venue_fixtures / "okx" / "tardis_node_mappers_test_okex_options_v5.jsonl"
    lines = [line for line in path.read_text().splitlines() if '"opt-summary"' in line]
    assert lines
    session = okx_session.OkxSession()
    for line in lines:
        stateless = okx_parse.parse_frame(line, 5)
        stamped = session.on_frame(line, 5)
        assert len(stateless.events) == len(stamped.events)
        for plain, merged in zip(stateless.events, stamped.events, strict=True):
            expected = plain.event.ticker
            got = merged.event.ticker
            got.header.sequence = 0
            # First sight of each symbol: the merge adds nothing but USD prices (none here:
            # opt-summary has no native price).
            assert got == expected


def _level_entries(venue_fixtures: Path) -> list[list[Any]]:
    sides: list[list[Any]] = []
    for path in sorted((venue_fixtures / "okx").glob("*.jsonl")):
        for frame in _frames(path):
            for entry in frame.get("data", []) if isinstance(frame, dict) else []:
                if isinstance(entry, dict):
                    sides.extend(entry[side] for side in ("bids", "asks") if side in entry)
    return sides


def test_number_levels_match_text_levels(venue_fixtures: Path) -> None:
    sides = _level_entries(venue_fixtures)
    assert sides
    rng = random.Random(3)
    perturbed = []
    for side in sides[:300]:
        if side:
            changed = copy.deepcopy(side)
            level = rng.randrange(len(changed))
            changed[level] = [rng.choice(JUNK), *changed[level][1:]]
            perturbed.append(changed)
        perturbed.append([[1.5, 2], ["0.1", 0]])
    for side in sides + perturbed:
        try:
            texts = text_levels(side, "w", "bids")
        except FieldError as exc:
            with pytest.raises(FieldError) as caught:
                number_levels(side, "w", "bids")
            assert str(caught.value) == str(exc)
            continue
        numbers = number_levels(side, "w", "bids")
        assert numbers == [(float(p), float(s)) for p, s in texts]


def test_wire_levels_equal_the_general_path(venue_fixtures: Path) -> None:
    sides = _level_entries(venue_fixtures)
    rng = random.Random(9)
    extra: list[Any] = [[["2", "1"], ["3", "1"], ["1", "0"]], [["1", "1"], ["1", "2"]], "x"]
    for side in sides[:200]:
        shuffled = copy.deepcopy(side)
        rng.shuffle(shuffled)
        extra.append(shuffled)
        if side:
            broken = copy.deepcopy(side)
            broken[rng.randrange(len(broken))] = [rng.choice(JUNK), "1"]
            extra.append(broken)
    for side in sides + extra:
        try:
            levels = number_levels(side, "w", "b")
        except FieldError as exc:
            for order in (True, False, None):
                with pytest.raises(FieldError) as caught:
                    wire_levels(side, "w", "b", BIDS_TAG, order)
                assert str(caught.value) == str(exc)
            continue
        bids, asks = best_first_pairs(levels, levels)
        assert wire_levels(side, "w", "b", BIDS_TAG, True) == levels_wire(BIDS_TAG, bids)
        assert wire_levels(side, "w", "a", ASKS_TAG, False) == levels_wire(ASKS_TAG, asks)
        assert wire_levels(side, "w", "b", BIDS_TAG) == levels_wire(BIDS_TAG, levels)


def test_levels_wire_equals_added_levels() -> None:
    rng = random.Random(5)
    for _ in range(200):
        bids = [
            (rng.uniform(0.0001, 1e6), rng.choice([0.0, rng.uniform(0, 1e4)])) for _ in range(9)
        ]
        asks = bids[: rng.randint(0, 9)]
        for book_type in (md_pb.BookSnapshot, md_pb.BookDelta):
            wired = book_type(symbol="S")
            wired.MergeFromString(levels_wire(BIDS_TAG, bids) + levels_wire(ASKS_TAG, asks))
            added = book_type(symbol="S")
            add_number_levels(added.bids, bids)
            add_number_levels(added.asks, asks)
            assert wired == added
            assert wired.SerializeToString() == added.SerializeToString()


def test_okx_checksum_book_matches_the_reference_on_recorded_books(venue_fixtures: Path) -> None:
    path = venue_fixtures / "okx" / "ws_books_checksum_BTC-USD-220527_2022-05-13.jsonl"
    book = OkxChecksumBook()
    verified = 0
    for frame in _frames(path):
        for entry in frame["data"]:
            if frame["action"] == "snapshot":
                book.apply_snapshot(entry["bids"], entry["asks"])
            else:
                book.apply_update(entry["bids"], entry["asks"])
            bids, asks = book.top()
            assert book.checksum() == okx_checksum(bids, asks) == entry["checksum"]
            verified += 1
    assert verified > 10


def test_deribit_level_pairs_match_levels(venue_fixtures: Path) -> None:
    sides: list[Any] = []
    for frame in _frames(venue_fixtures / "deribit" / "ws_book_raw_options_2021-07-22.jsonl"):
        data = frame.get("params", {}).get("data", {})
        sides.extend(data[side] for side in ("bids", "asks") if side in data)
    assert sides
    extra: list[Any] = [
        [["new", 1, 2]],
        [["delete", 0.5, 0]],
        [["modify", 0.5, 1.0]],
        [["new", "0.5", 1.0]],
        [["new", float("nan"), 1.0]],
        [["new", 0.5]],
        "x",
    ]
    for side in sides + extra:
        try:
            levels = deribit_parse._levels(side, "w", "bids", True, FrameResult())
        except FieldError as exc:
            with pytest.raises(FieldError) as caught:
                deribit_parse._level_pairs(side, "w", "bids")
            assert str(caught.value) == str(exc)
            continue
        pairs = deribit_parse._level_pairs(side, "w", "bids")
        assert pairs == [(level.price_native, level.size_native) for level in levels]


def test_ticker_merger_replaces_owned_fields_only() -> None:
    merger = TickerMerger()
    quotes = ("best_bid_price_native", "best_bid_size_native")
    ivs = ("bid_iv", "forward_usd", "forward_name")
    first = md_pb.VenueTicker(symbol="S", best_bid_price_native=1.0, best_bid_size_native=2.0)
    first.header.sequence = 1
    merged = merger.merge(first, quotes)
    assert merged == first
    second = md_pb.VenueTicker(symbol="S", bid_iv=0.5, forward_name="F")
    second.header.sequence = 2
    merged = merger.merge(second, ivs)
    assert merged.header.sequence == 2 and merged.bid_iv == 0.5 and merged.forward_name == "F"
    assert merged.best_bid_price_native == 1.0 and not merged.HasField("forward_usd")
    # A message lacking an owned field clears it; fields of other channels stay.
    emptied = merger.merge(md_pb.VenueTicker(symbol="S"), quotes)
    assert not emptied.HasField("best_bid_price_native") and emptied.bid_iv == 0.5


def test_batch_bytes_equal_the_serialized_batch() -> None:
    rng = random.Random(11)
    events = [
        md_pb.MarketDataEvent(
            ticker={
                "header": {"event_time_ns": rng.randrange(1 << 62), "sequence": i},
                "symbol": "S" * rng.choice([1, 100, 200, 20_000]),
                "bid_iv": 0.5,
            }
        )
        for i in range(40)
    ]
    events.append(md_pb.MarketDataEvent(book_reset={"symbol": "B", "reason": "gap"}))
    events.append(md_pb.MarketDataEvent())
    expected = md_pb.MarketDataBatch(venue="v", currency="BTC", events=events)
    expected.header.source = "src"
    expected.header.sequence = 9
    expected.header.publish_time_ns = 123
    latest = 0
    for event in expected.events:
        case = event.WhichOneof("event")
        if case is not None:
            header = getattr(event, case).header
            header.publish_time_ns = 123
            latest = max(latest, header.event_time_ns)
    expected.header.event_time_ns = latest
    items = [NormalisedEvent("BTC", "ticker", e) for e in events]
    assert batch_bytes("v", "BTC", "src", 9, 123, items) == expected.SerializeToString()
    empty = md_pb.MarketDataBatch(venue="v", currency="BTC")
    empty.header.source = "src"
    empty.header.sequence = 1
    empty.header.publish_time_ns = empty.header.event_time_ns = 5
    assert batch_bytes("v", "BTC", "src", 1, 5, []) == empty.SerializeToString()
