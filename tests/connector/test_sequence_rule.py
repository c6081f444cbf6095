"""The connector emits book deltas that obey the one sequence rule of the proto
(``BookDelta.prev_venue_sequence``: a delta applies when it equals the book's sequence), so
svc_book's venue-neutral L2Book applies every venue's exceptional deltas with no venue rules:
Deribit's just-listed option (``prev_change_id`` 0) and Binance's first diff after a REST
snapshot (``pu`` < ``lastUpdateId`` < ``u``)."""

from __future__ import annotations

import orjson

from svc_book.book import DeltaResult, L2Book
from svc_connector.venues.base import FrameResult
from svc_connector.venues.binance.session import BinanceSession
from svc_connector.venues.deribit.session import DeribitSession
from volstream.v1 import market_data_pb2 as md_pb

APPLIED = {DeltaResult.APPLIED, DeltaResult.APPLIED_AT_TOP}


def _apply(book: L2Book, result: FrameResult) -> list[object]:
    """Apply a session's book events to ``book`` as svc_book does; the outcome of each."""
    outcomes: list[object] = []
    for item in result.events:
        event = item.event
        case = event.WhichOneof("event")
        if case == "book_snapshot":
            snap = event.book_snapshot
            levels = (
                [(lv.price_native, lv.size_native) for lv in side]
                for side in (snap.bids, snap.asks)
            )
            bids, asks = levels
            outcomes.append(book.apply_snapshot(bids, asks, snap.venue_sequence, 1))
        elif case == "book_delta":
            delta = event.book_delta
            outcomes.append(
                book.apply_delta_levels(
                    delta.bids, delta.asks, delta.venue_sequence, delta.prev_venue_sequence, 2
                )
            )
        elif case == "book_reset":
            book.reset(3)
            outcomes.append("reset")
    return outcomes


DERIBIT_SYMBOL = "ETH-1DEC23-2000-C"


def _deribit_book(kind: str, change_id: int, prev: int | None, asks: list[list[object]]) -> bytes:
    data: dict[str, object] = {
        "type": kind,
        "timestamp": 1700000000000,
        "instrument_name": DERIBIT_SYMBOL,
        "change_id": change_id,
        "bids": [],
        "asks": asks,
    }
    if prev is not None:
        data["prev_change_id"] = prev
    params = {"channel": f"book.{DERIBIT_SYMBOL}.100ms", "data": data}
    return orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": params})


def test_deribit_just_listed_option_reaches_the_book_as_a_continuing_delta() -> None:
    for hot in (True, False):
        session = DeribitSession()
        session.hot_path = hot
        book = L2Book()
        assert _apply(book, session.on_frame(_deribit_book("snapshot", 13167318455, None, []), 1))
        first = session.on_frame(_deribit_book("change", 13167318999, 0, [["new", 0.05, 3.0]]), 2)
        cases = [e.event.WhichOneof("event") for e in first.events]
        assert cases == ["book_snapshot", "book_delta"]
        empty, delta = first.events[0].event.book_snapshot, first.events[1].event.book_delta
        # The empty snapshot names the sequence the delta continues.
        assert empty.venue_sequence == delta.prev_venue_sequence == 0
        assert _apply(book, first)[1] in APPLIED
        assert book.best_ask() == (0.05, 3.0) and book.sequence == 13167318999
        # A redelivery of that first change never reaches the book.
        again = session.on_frame(_deribit_book("change", 13167318999, 0, [["new", 0.05, 3.0]]), 3)
        assert again.events == [] and again.counts["book.stale_dropped"] == 1
        following = session.on_frame(
            _deribit_book("change", 13167319500, 13167318999, [["delete", 0.05, 0.0]]), 4
        )
        assert _apply(book, following) == [DeltaResult.APPLIED_AT_TOP]
        assert book.best_ask() is None


def test_deribit_listing_change_redelivered_on_an_emptied_book_stays_out() -> None:
    session = DeribitSession()
    book = L2Book()
    frames = [
        _deribit_book("snapshot", 100, None, []),
        _deribit_book("change", 105, 0, [["new", 0.05, 3.0]]),
        _deribit_book("change", 109, 105, [["delete", 0.05, 0.0]]),
        _deribit_book("change", 105, 0, [["new", 0.05, 3.0]]),  # the listing change again
    ]
    outcomes = [outcome for frame in frames for outcome in _apply(book, session.on_frame(frame, 1))]
    assert DeltaResult.GAP not in outcomes and DeltaResult.DUPLICATE not in outcomes
    assert book.best_ask() is None and book.sequence == 109


BINANCE_SYMBOL = "BTC-251219-89000-C"
BINANCE_STREAM = "btc-251219-89000-c@depth@100ms"


def _binance_diff(first: int, last: int, prev: int, bid: str) -> bytes:
    data = {
        "e": "depthUpdate",
        "E": 1765983419000 + last,
        "s": BINANCE_SYMBOL,
        "U": first,
        "u": last,
        "pu": prev,
        "b": [["10", bid]],
        "a": [],
    }
    return orjson.dumps({"stream": BINANCE_STREAM, "data": data})


def _binance_rest(update_id: int) -> bytes:
    return orjson.dumps(
        {"T": 1765983419000, "u": update_id, "bids": [["10", "1"]], "asks": [["11", "1"]]}
    )


def test_binance_first_diff_after_a_rest_snapshot_continues_it() -> None:
    session = BinanceSession(buffer_diffs=True, resync_timeout_ns=10**12)
    book = L2Book()
    session.expect_snapshot(BINANCE_SYMBOL, BINANCE_STREAM, 0)
    for frame in (
        _binance_diff(991, 995, 990, "2"),  # older than the snapshot: dropped
        _binance_diff(999, 1003, 998, "3"),  # spans lastUpdateId 1000: bridges
        _binance_diff(1004, 1007, 1003, "4"),
    ):
        assert session.on_frame(frame, 1).events == []  # buffered for the snapshot
    applied = session.on_rest_depth(_binance_rest(1000), BINANCE_SYMBOL, 2)
    assert applied.counts["book.bridged"] == 1 and applied.counts["book.stale_dropped"] == 1
    deltas = [e.event.book_delta for e in applied.events if e.kind == "book"][1:]
    assert [(d.prev_venue_sequence, d.venue_sequence) for d in deltas] == [
        (1000, 1003),
        (1003, 1007),
    ]
    outcomes = _apply(book, applied)
    assert outcomes[0] is True and all(outcome in APPLIED for outcome in outcomes[1:])
    assert book.best_bid() == (10.0, 4.0) and book.sequence == 1007
    # Bridging only right after a snapshot: a later spanning diff is a gap for both.
    gap = session.on_frame(_binance_diff(1010, 1012, 1005, "5"), 3)
    assert [e.event.WhichOneof("event") for e in gap.events] == ["book_reset"]


def test_every_delta_a_session_emits_continues_the_book_it_follows() -> None:
    """The rule as a property of a whole Deribit session run: every emitted delta's prev is
    the sequence of the snapshot or delta of its symbol emitted before it."""
    session = DeribitSession()
    frames = [
        _deribit_book("snapshot", 10, None, [["new", 0.1, 1.0]]),
        _deribit_book("change", 12, 10, [["change", 0.1, 2.0]]),
        _deribit_book("change", 12, 10, [["change", 0.1, 2.0]]),  # duplicate
        _deribit_book("change", 15, 0, [["new", 0.2, 1.0]]),  # restart from empty
        _deribit_book("change", 18, 15, [["new", 0.3, 1.0]]),
        _deribit_book("change", 30, 25, [["new", 0.3, 1.0]]),  # gap
    ]
    last: int | None = None
    for frame in frames:
        for item in session.on_frame(frame, 1).events:
            event: md_pb.MarketDataEvent = item.event
            case = event.WhichOneof("event")
            if case == "book_snapshot":
                last = event.book_snapshot.venue_sequence
            elif case == "book_delta":
                assert event.book_delta.prev_venue_sequence == last
                last = event.book_delta.venue_sequence
            elif case == "book_reset":
                last = None
    assert last is None  # ended on the gap's reset
