"""DeribitSession book sequencing: the recorded chain, gaps, duplicates, venue edge cases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson

from svc_connector.venues.base import FrameResult
from svc_connector.venues.deribit.session import DeribitSession
from tests.connector.deribit_fixtures import Books, deribit_dir, lines

SYMBOL = "BTC-24SEP21-8000-P"
CHANNEL = f"book.{SYMBOL}.raw"


def _run(session: DeribitSession, frames: list[bytes], start_ns: int = 0) -> FrameResult:
    total = FrameResult()
    for offset, frame in enumerate(frames):
        total.extend(session.on_frame(frame, start_ns + offset))
    return total


def _book_frames(venue_fixtures: Path) -> list[bytes]:
    return lines(deribit_dir(venue_fixtures) / "ws_book_raw_options_2021-07-22.jsonl")


def test_recorded_46_message_chain_applies_without_gap(venue_fixtures: Path) -> None:
    frames = _book_frames(venue_fixtures)
    assert len(frames) == 46
    result = _run(DeribitSession(), frames)
    assert result.kind_counts() == {"book_snapshot": 10, "book_delta": 36}
    assert result.resubscribes == []
    for name in (
        "book.gap",
        "book.stale_dropped",
        "book.no_snapshot",
        "book.dropped_while_resyncing",
    ):
        assert result.counts[name] == 0
    books = Books()
    for event in result.events:
        books.apply(event.event)
    assert books.sequence[SYMBOL] == 33195898166  # the last change_id of that chain


def test_rebuilt_books_match_every_recorded_ticker_top(venue_fixtures: Path) -> None:
    """Cross-check: books rebuilt from the chain equal the venue's own ticker best bid/ask."""
    frames = lines(deribit_dir(venue_fixtures) / "ws_options_2021-07-22.jsonl")
    result = _run(DeribitSession(), frames)
    # A ticker at time t reflects every book change stamped <= t (order by venue time).
    ordered = sorted(
        (e.event for e in result.events),
        key=lambda ev: (
            getattr(ev, str(ev.WhichOneof("event"))).header.event_time_ns,
            ev.WhichOneof("event") == "ticker",
        ),
    )
    books = Books()
    compared = 0
    for event in ordered:
        if event.WhichOneof("event") != "ticker":
            books.apply(event)
            continue
        ticker = event.ticker
        bid = (
            (ticker.best_bid_price_native, ticker.best_bid_size_native)
            if ticker.HasField("best_bid_price_native")
            else None
        )
        ask = (
            (ticker.best_ask_price_native, ticker.best_ask_size_native)
            if ticker.HasField("best_ask_price_native")
            else None
        )
        assert books.top(ticker.symbol) == (bid, ask), ticker.symbol
        compared += 1
    assert compared == 89


def test_dropped_message_gives_book_reset_and_resubscribe(venue_fixtures: Path) -> None:
    frames = _book_frames(venue_fixtures)
    symbol_changes = [
        i
        for i, f in enumerate(frames)
        if orjson.loads(f)["params"]["data"]["instrument_name"] == SYMBOL
        and orjson.loads(f)["params"]["data"]["type"] == "change"
    ]
    dropped = symbol_changes[3]
    session = DeribitSession(resync_timeout_ns=10**12)
    result = _run(session, frames[:dropped] + frames[dropped + 1 :])

    resets = [e for e in result.events if e.event.WhichOneof("event") == "book_reset"]
    assert len(resets) == 1
    assert resets[0].event.book_reset.symbol == SYMBOL and resets[0].kind == "book"
    assert "gap" in resets[0].event.book_reset.reason
    assert [(r.symbol, r.channel) for r in result.resubscribes] == [(SYMBOL, CHANNEL)]
    assert result.counts["book.gap"] == 1
    # Every later change of the broken book is dropped until a snapshot; others flow on.
    later = len(symbol_changes) - 4 - 1
    assert result.counts["book.dropped_while_resyncing"] == later
    deltas = Counter(
        e.event.book_delta.symbol
        for e in result.events
        if e.event.WhichOneof("event") == "book_delta"
    )
    assert deltas[SYMBOL] == 3
    assert sum(deltas.values()) == 36 - 1 - 1 - later

    books = Books()
    for event in result.events:
        books.apply(event.event)  # asserts the consumer never sees a non-contiguous delta
    assert SYMBOL in books.broken

    # The fresh snapshot after resubscribing resyncs; the next change applies again.
    last = orjson.loads(frames[-1])["params"]["data"]
    snapshot = {
        "type": "snapshot",
        "timestamp": last["timestamp"] + 1,
        "instrument_name": SYMBOL,
        "change_id": 33195899000,
        "bids": [["new", 0.0005, 150.0]],
        "asks": [["new", 0.001, 2.0]],
    }
    change = {
        "type": "change",
        "timestamp": last["timestamp"] + 2,
        "instrument_name": SYMBOL,
        "change_id": 33195899005,
        "prev_change_id": 33195899000,
        "bids": [],
        "asks": [["change", 0.001, 3.0]],
    }
    after = _run(session, [_frame(CHANNEL, snapshot), _frame(CHANNEL, change)], 10**6)
    assert after.kind_counts() == {"book_snapshot": 1, "book_delta": 1}
    for event in after.events:
        books.apply(event.event)
    assert books.top(SYMBOL) == ((0.0005, 150.0), (0.001, 3.0))


def test_duplicate_and_replayed_changes_are_dropped_not_applied_twice(
    venue_fixtures: Path,
) -> None:
    frames = _book_frames(venue_fixtures)
    # Deliver one change twice and, later, an old change again.
    replayed = [*frames[:15], frames[14], *frames[15:30], frames[12], *frames[30:]]
    result = _run(DeribitSession(), replayed)
    assert result.counts["book.stale_dropped"] == 2
    assert result.counts["book.gap"] == 0 and result.resubscribes == []
    assert result.kind_counts() == {"book_snapshot": 10, "book_delta": 36}
    books = Books()
    for event in result.events:
        books.apply(event.event)
    reference = Books()
    for event in _run(DeribitSession(), frames).events:
        reference.apply(event.event)
    assert books.sides == reference.sides


def test_swapped_changes_are_a_gap_then_the_late_one_is_dropped(venue_fixtures: Path) -> None:
    frames = _book_frames(venue_fixtures)
    # frames 10 and 11 are consecutive changes of SYMBOL: deliver them swapped.
    first, second = orjson.loads(frames[10]), orjson.loads(frames[11])
    assert second["params"]["data"]["prev_change_id"] == first["params"]["data"]["change_id"]
    swapped = [*frames[:10], frames[11], frames[10], *frames[12:]]
    result = _run(DeribitSession(resync_timeout_ns=10**12), swapped)
    assert result.counts["book.gap"] == 1
    assert result.counts["book.dropped_while_resyncing"] >= 1
    assert [r.symbol for r in result.resubscribes] == [SYMBOL]


def _frame(channel: str, data: dict[str, object]) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
    )


def _book(kind: str | None, change_id: int, prev: int | None, bids: list[list[object]]) -> bytes:
    data: dict[str, object] = {
        "timestamp": 1700000000000,
        "instrument_name": "ETH-1DEC23-2000-C",
        "change_id": change_id,
        "bids": bids,
        "asks": [],
    }
    if kind is not None:
        data["type"] = kind
    if prev is not None:
        data["prev_change_id"] = prev
    return _frame("book.ETH-1DEC23-2000-C.100ms", data)


def test_old_messages_without_type_snapshot_is_the_one_without_prev() -> None:
    result = _run(
        DeribitSession(),
        [_book(None, 10, None, [["new", 0.1, 1.0]]), _book(None, 12, 10, [["change", 0.1, 2.0]])],
    )
    assert result.kind_counts() == {"book_snapshot": 1, "book_delta": 1}
    assert result.counts["book.gap"] == 0


def test_snapshot_carrying_prev_change_id_ignores_it() -> None:
    result = _run(
        DeribitSession(),
        [
            _book("snapshot", 50, 7, [["new", 0.1, 1.0]]),
            _book("change", 51, 50, [["delete", 0.1, 0.0]]),
        ],
    )
    assert result.kind_counts() == {"book_snapshot": 1, "book_delta": 1}
    snapshot = result.events[0].event.book_snapshot
    assert snapshot.venue_sequence == 50
    assert result.events[1].event.book_delta.bids[0].size_native == 0.0


def test_prev_change_id_zero_restarts_from_an_empty_book() -> None:
    """A just-listed option's change with prev_change_id 0 is relative to an empty book."""
    session = DeribitSession()
    result = _run(
        session,
        [
            _book("snapshot", 90, None, []),
            _book("change", 95, 0, [["new", 0.05, 3.0]]),
            _book("change", 96, 95, [["new", 0.04, 1.0]]),
        ],
    )
    cases = [e.event.WhichOneof("event") for e in result.events]
    assert cases == ["book_snapshot", "book_snapshot", "book_delta", "book_delta"]
    empty = result.events[1].event.book_snapshot
    assert empty.venue_sequence == 0 and len(empty.bids) == 0
    assert result.counts["book.restart_from_empty"] == 1 and result.counts["book.gap"] == 0
    books = Books()
    for event in result.events:
        books.apply(event.event)
    assert books.top("ETH-1DEC23-2000-C") == ((0.05, 3.0), None)
    # A replay of that first change later is stale, not another restart.
    again = session.on_frame(_book("change", 95, 0, [["new", 0.05, 3.0]]), 9)
    assert again.events == [] and again.counts["book.stale_dropped"] == 1


def test_change_without_snapshot_is_reset_and_resync_is_retried_after_timeout() -> None:
    session = DeribitSession(resync_timeout_ns=1_000)
    first = session.on_frame(_book("change", 5, 4, []), 0)
    assert first.kind_counts() == {"book_reset": 1}
    assert first.counts["book.no_snapshot"] == 1
    assert len(first.resubscribes) == 1
    # Still waiting within the timeout: dropped quietly.
    waiting = session.on_frame(_book("change", 6, 5, []), 500)
    assert waiting.resubscribes == [] and waiting.counts["book.dropped_while_resyncing"] == 1
    # No snapshot after the timeout: ask again.
    retry = session.on_frame(_book("change", 7, 6, []), 2_000)
    assert retry.counts["book.resync_again"] == 1 and len(retry.resubscribes) == 1
    # The snapshot ends the resync.
    done = _run(session, [_book("snapshot", 8, None, []), _book("change", 9, 8, [])], 3_000)
    assert done.kind_counts() == {"book_snapshot": 1, "book_delta": 1}


def test_reconnect_forgets_book_sequences(venue_fixtures: Path) -> None:
    frames = _book_frames(venue_fixtures)
    session = DeribitSession(resync_timeout_ns=10**12)
    _run(session, frames[:20])
    session.on_connected()
    # After a reconnect a change from the old stream has no snapshot to apply to.
    result = session.on_frame(frames[20], 99)
    assert result.kind_counts() == {"book_reset": 1}
