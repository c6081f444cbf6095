"""OkxSession: the recorded checksummed book, seqId sequencing, gaps, merged tickers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest

from svc_connector.venues.base import FrameResult
from svc_connector.venues.okx.checksum import okx_checksum
from svc_connector.venues.okx.session import OkxSession
from tests.connector.deribit_fixtures import Books, lines
from volstream.v1 import market_data_pb2 as md_pb

SYMBOL = "BTC-USD-220527"
CHANNEL = f"books:{SYMBOL}"


def _frames(venue_fixtures: Path) -> list[bytes]:
    return lines(venue_fixtures / "okx" / "ws_books_checksum_BTC-USD-220527_2022-05-13.jsonl")


def _run(session: OkxSession, frames: Sequence[bytes | str], start_ns: int = 0) -> FrameResult:
    total = FrameResult()
    for offset, frame in enumerate(frames):
        total.extend(session.on_frame(frame, start_ns + offset))
    return total


def test_recorded_book_applies_without_gap_and_every_checksum_verifies(
    venue_fixtures: Path,
) -> None:
    frames = _frames(venue_fixtures)
    assert len(frames) == 99
    result = _run(OkxSession(), frames)
    assert result.kind_counts() == {"book_snapshot": 1, "book_delta": 98}
    assert result.counts["book.checksum_ok"] == 99
    for name in ("book.checksum_mismatch", "book.gap", "book.stale_dropped", "book.no_snapshot"):
        assert result.counts[name] == 0, name
    assert result.resubscribes == [] and result.dead_letters == []
    # The recording predates seqId: the session numbers the chain 1..99 so that consumers
    # applying "prev == last" stay consistent.
    books = Books()
    for event in result.events:
        books.apply(event.event)
    assert books.sequence[SYMBOL] == 99
    # The consumer's book equals a book built directly from the wire levels.
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for frame in frames:
        entry = orjson.loads(frame)["data"][0]
        for side, levels in ((bids, entry["bids"]), (asks, entry["asks"])):
            for price, size, *_ in levels:
                if float(size) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = float(size)
    assert books.sides[SYMBOL] == (bids, asks)


def test_a_lost_update_is_caught_by_the_checksum(venue_fixtures: Path) -> None:
    frames = _frames(venue_fixtures)
    session = OkxSession(resync_timeout_ns=10**12)
    result = _run(session, frames[:10] + frames[11:])
    assert result.counts["book.checksum_mismatch"] == 1
    resets = [e.event.book_reset for e in result.events if e.event.HasField("book_reset")]
    assert [r.symbol for r in resets] == [SYMBOL] and "checksum mismatch" in resets[0].reason
    assert [(r.symbol, r.channel) for r in result.resubscribes] == [(SYMBOL, CHANNEL)]
    # The broken update is not emitted; the rest wait for a fresh snapshot.
    assert result.kind_counts()["book_delta"] == 9
    assert result.counts["book.dropped_while_resyncing"] == 98 - 10 - 1
    books = Books()
    for event in result.events:
        books.apply(event.event)
    assert SYMBOL in books.broken
    # The venue answers the resubscribe with a snapshot: the book is back.
    after = session.on_frame(frames[0], 10**6)
    assert after.kind_counts() == {"book_snapshot": 1}
    assert after.counts["book.checksum_ok"] == 1
    assert session.on_frame(frames[1], 10**6 + 1).kind_counts() == {"book_delta": 1}


def test_a_corrupted_checksum_resets_the_book(venue_fixtures: Path) -> None:
    frames = _frames(venue_fixtures)
    bad = orjson.loads(frames[5])
    bad["data"][0]["checksum"] += 1
    result = _run(OkxSession(), [*frames[:5], orjson.dumps(bad)])
    assert result.kind_counts() == {"book_snapshot": 1, "book_delta": 4, "book_reset": 1}
    assert result.counts["book.checksum_mismatch"] == 1 and len(result.resubscribes) == 1


def test_checksum_zero_and_disabled_verification_skip_the_check(venue_fixtures: Path) -> None:
    frames = _frames(venue_fixtures)
    zeroed = []
    for frame in frames[:6]:
        message = orjson.loads(frame)
        message["data"][0]["checksum"] = 0  # the venue sends 0 since 2026
        zeroed.append(orjson.dumps(message))
    result = _run(OkxSession(), [*zeroed[:3], *zeroed[4:]])  # even with a lost update
    assert result.counts["book.checksum_absent"] == 5 and result.resubscribes == []
    bad = orjson.loads(frames[5])
    bad["data"][0]["checksum"] += 1
    unchecked = _run(OkxSession(verify_checksums=False), [*frames[:5], orjson.dumps(bad)])
    assert unchecked.counts["book.checksum_not_verified"] == 6 and unchecked.resubscribes == []


# ---- seqId / prevSeqId ------------------------------------------------------------------------

BTC_OPTION = "BTC-USD-241227-100000-C"


class _VenueBook:
    """Builds books messages with seqIds and correct checksums, as the venue would."""

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def message(
        self,
        action: str,
        seq: int,
        prev: int,
        bids: Sequence[tuple[str, str]] = (),
        asks: Sequence[tuple[str, str]] = (),
        checksum: bool = True,
    ) -> bytes:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size in levels:
                if float(size) == 0:
                    side.pop(price, None)
                else:
                    side[price] = size
        best_bids = sorted(self.bids.items(), key=lambda kv: -float(kv[0]))
        best_asks = sorted(self.asks.items(), key=lambda kv: float(kv[0]))
        entry = {
            "asks": [[p, s, "0", "1"] for p, s in asks],
            "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": str(1735000000000 + seq),
            "checksum": okx_checksum(best_bids, best_asks) if checksum else 0,
            "seqId": seq,
            "prevSeqId": prev,
        }
        return orjson.dumps(
            {"arg": {"channel": "books", "instId": BTC_OPTION}, "action": action, "data": [entry]}
        )


def test_keepalive_and_sequence_reset_after_maintenance_apply() -> None:
    venue = _VenueBook()
    frames = [
        venue.message("snapshot", 10, -1, [("0.01", "5")], [("0.012", "3")]),
        venue.message("update", 11, 10, [("0.011", "2")]),
        venue.message("update", 11, 11),  # keep-alive: empty, prevSeqId == seqId
        venue.message("update", 3, 11, asks=[("0.012", "0")]),  # seqId backwards
        venue.message("update", 4, 3, asks=[("0.013", "1")]),
    ]
    session = OkxSession()
    result = _run(session, frames)
    assert result.kind_counts() == {"book_snapshot": 1, "book_delta": 4}
    assert result.counts["book.checksum_ok"] == 5 and result.counts["book.keepalive"] == 1
    assert result.resubscribes == []
    books = Books()
    for event in result.events:
        books.apply(event.event)
    assert books.sequence[BTC_OPTION] == 4
    assert books.top(BTC_OPTION) == ((0.011, 2.0), (0.013, 1.0))
    # A replayed update is a duplicate, not a gap.
    again = session.on_frame(frames[-1], 9)
    assert again.events == [] and again.counts["book.stale_dropped"] == 1


def test_sequence_gap_resets_and_resubscribes() -> None:
    venue = _VenueBook()
    session = OkxSession(resync_timeout_ns=1_000)
    result = _run(
        session,
        [
            venue.message("snapshot", 10, -1, [("0.01", "5")]),
            venue.message("update", 13, 12, [("0.011", "1")]),
        ],
    )
    assert result.kind_counts() == {"book_snapshot": 1, "book_reset": 1}
    assert result.counts["book.gap"] == 1
    assert "prev 12 != last 10" in result.events[1].event.book_reset.reason
    assert [r.channel for r in result.resubscribes] == [f"books:{BTC_OPTION}"]
    # No snapshot within the resync timeout: asked again.
    retry = session.on_frame(venue.message("update", 14, 13), 5_000)
    assert retry.counts["book.resync_again"] == 1 and len(retry.resubscribes) == 1


def test_reconnect_forgets_books(venue_fixtures: Path) -> None:
    frames = _frames(venue_fixtures)
    session = OkxSession()
    _run(session, frames[:3])
    session.on_connected()
    assert session.on_frame(frames[3], 9).kind_counts() == {"book_reset": 1}


# ---- tickers assembled from channels ----------------------------------------------------------


def _push(channel: str, key: str, entry: dict[str, str]) -> bytes:
    arg_key = "instFamily" if channel == "opt-summary" else "instId"
    return orjson.dumps({"arg": {"channel": channel, arg_key: key}, "data": [entry]})


def test_tickers_merge_opt_summary_quotes_and_forward() -> None:
    session = OkxSession()
    unit = {BTC_OPTION: md_pb.PREMIUM_UNIT_COIN_PER_COIN}
    session.set_instruments(
        [
            md_pb.Instrument(symbol=s, premium_unit=u, contract_size_coin=0.01)
            for s, u in unit.items()
        ]
    )
    quotes = (
        session.on_frame(
            _push(
                "tickers",
                BTC_OPTION,
                {
                    "instId": BTC_OPTION,
                    "bidPx": "0.05",
                    "bidSz": "10",
                    "askPx": "0.052",
                    "askSz": "4",
                    "ts": "1",
                },
            ),
            1,
        )
        .events[0]
        .event.ticker
    )
    # No forward yet: no USD equivalent for an inverse option.
    assert quotes.best_bid_price_native == 0.05 and not quotes.HasField(
        "best_bid_price_usd_per_coin"
    )
    summary = {
        "instId": BTC_OPTION,
        "markVol": "0.6",
        "bidVol": "0.58",
        "askVol": "0.62",
        "fwdPx": "100000",
        "deltaBS": "0.5",
        "delta": "0.45",
        "ts": "2",
    }
    merged = session.on_frame(_push("opt-summary", "BTC-USD", summary), 2).events[0].event.ticker
    assert merged.best_bid_price_native == 0.05  # kept from `tickers`
    assert merged.bid_iv == 0.58 and merged.forward_usd == 100000.0
    # Inverse: USD per coin = coin premium x fwdPx.
    assert merged.best_bid_price_usd_per_coin == pytest.approx(5000.0)
    assert merged.best_ask_price_usd_per_coin == pytest.approx(5200.0)
    assert merged.header.event_time_ns == 2_000_000
    # The bid side empties: cleared (not kept stale); IVs and forward stay.
    emptied = (
        session.on_frame(
            _push(
                "tickers",
                BTC_OPTION,
                {
                    "instId": BTC_OPTION,
                    "bidPx": "",
                    "bidSz": "",
                    "askPx": "0.053",
                    "askSz": "4",
                    "ts": "3",
                },
            ),
            3,
        )
        .events[0]
        .event.ticker
    )
    assert not emptied.HasField("best_bid_price_native")
    assert not emptied.HasField("best_bid_price_usd_per_coin")
    assert emptied.best_ask_price_usd_per_coin == pytest.approx(5300.0)
    assert emptied.mark_iv == 0.6 and emptied.delta_premium_adjusted == 0.45
    # A new opt-summary without bidVol clears only the bid IV.
    summary["bidVol"] = "0"
    latest = session.on_frame(_push("opt-summary", "BTC-USD", summary), 4).events[0].event.ticker
    assert not latest.HasField("bid_iv") and latest.ask_iv == 0.62
    assert latest.best_ask_price_native == 0.053
