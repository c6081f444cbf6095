"""L2Book: levels, the one sequencing rule, garbage handling, depth summary."""

from __future__ import annotations

import math

import pytest

from svc_book.book import BookStatus, DeltaResult, L2Book

APPLIED = {DeltaResult.APPLIED, DeltaResult.APPLIED_AT_TOP}


def _valid_book(seq: int = 10) -> L2Book:
    book = L2Book()
    assert book.apply_snapshot(
        [(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)], [(101.0, 4.0), (102.0, 5.0)], seq, 1_000
    )
    return book


def test_new_book_awaits_snapshot_and_drops_deltas() -> None:
    book = L2Book()
    assert book.status is BookStatus.AWAITING_SNAPSHOT
    assert book.apply_delta([(1.0, 1.0)], [], 2, 1, 5) is DeltaResult.NOT_VALID
    assert book.best_bid() is None and book.bids == {}


def test_snapshot_orders_levels_and_skips_zero_sizes() -> None:
    book = L2Book()
    assert book.apply_snapshot([(98.0, 3.0), (100.0, 1.0), (99.0, 0.0)], [(102.0, 5.0)], 7, 5)
    assert book.bid_levels() == [(100.0, 1.0), (98.0, 3.0)]
    assert book.best_ask() == (102.0, 5.0)
    assert (book.sequence, book.status, book.last_change_ns) == (7, BookStatus.VALID, 5)


def test_contiguous_delta_updates_inserts_and_deletes() -> None:
    book = _valid_book()
    result = book.apply_delta(
        [(100.0, 0.0), (99.5, 7.0), (98.0, 9.0)], [(101.0, 0.0), (103.0, 1.0)], 11, 10, 2_000
    )
    assert result in APPLIED
    assert book.bid_levels() == [(99.5, 7.0), (99.0, 2.0), (98.0, 9.0)]
    assert book.ask_levels() == [(102.0, 5.0), (103.0, 1.0)]
    assert book.bid_prices == sorted(book.bids) and book.ask_prices == sorted(book.asks)
    assert (book.sequence, book.last_change_ns) == (11, 2_000)


def test_deleting_an_unknown_level_is_a_no_op() -> None:
    book = _valid_book()
    assert book.apply_delta([(42.0, 0.0)], [], 11, 10, 2) in APPLIED
    assert book.bid_levels() == [(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)]


def test_duplicate_is_ignored_and_does_not_break_the_book() -> None:
    book = _valid_book()
    assert book.apply_delta([(100.0, 0.0)], [], 11, 10, 2) in APPLIED
    assert book.apply_delta([(97.0, 1.0)], [], 12, 11, 3) in APPLIED
    before = book.bid_levels()
    # Redelivered old deltas: sequence at or below the book's and not contiguous.
    assert book.apply_delta([(100.0, 0.0)], [], 11, 10, 4) is DeltaResult.DUPLICATE
    assert book.apply_delta([(97.0, 1.0)], [], 12, 11, 4) is DeltaResult.DUPLICATE
    assert book.bid_levels() == before
    assert book.status is BookStatus.VALID and book.sequence == 12
    assert book.apply_delta([(96.0, 1.0)], [], 13, 12, 5) in APPLIED


def test_gap_clears_book_until_next_snapshot() -> None:
    book = _valid_book()
    assert book.apply_delta([(97.0, 1.0)], [], 15, 14, 2) is DeltaResult.GAP
    assert book.status is BookStatus.GAP
    assert book.best_bid() is None and book.best_ask() is None
    # Even the delta that would have been next no longer applies.
    assert book.apply_delta([(97.0, 1.0)], [], 11, 10, 3) is DeltaResult.NOT_VALID
    assert book.apply_snapshot([(1.0, 1.0)], [(2.0, 1.0)], 20, 4)
    assert book.is_valid
    assert book.apply_delta([(1.5, 1.0)], [], 21, 20, 5) in APPLIED


def test_reset_invalidates() -> None:
    book = _valid_book()
    book.reset(3_000)
    assert book.status is BookStatus.AWAITING_SNAPSHOT
    assert book.bids == {} and book.last_event_ns == 3_000


def test_okx_keepalive_is_a_valid_no_op_that_refreshes_liveness() -> None:
    book = _valid_book(seq=500)
    levels = book.bid_levels()
    # Empty sides, prevSeqId == seqId == last seqId.
    assert book.apply_delta([], [], 500, 500, 60_000) is DeltaResult.KEEPALIVE
    assert book.bid_levels() == levels and book.status is BookStatus.VALID
    assert book.last_seen_ns == 60_000
    assert book.last_change_ns == 1_000  # nothing changed


def test_okx_sequence_reset_after_maintenance_is_accepted() -> None:
    book = _valid_book(seq=123_456)
    # seqId goes backwards but prevSeqId is the last seqId.
    assert book.apply_delta([(100.0, 9.0)], [], 7, 123_456, 2) in APPLIED
    assert book.sequence == 7 and book.best_bid() == (100.0, 9.0)
    assert book.apply_delta([], [(101.0, 0.0)], 8, 7, 3) in APPLIED
    assert book.best_ask() == (102.0, 5.0)


def test_empty_delta_that_advances_the_sequence_is_applied_not_keepalive() -> None:
    book = _valid_book()
    assert book.apply_delta([], [], 11, 10, 2) in APPLIED
    assert book.sequence == 11


def test_prev_zero_on_a_book_not_at_zero_is_a_gap_for_every_venue() -> None:
    # Deribit's just-listed option (prev_change_id 0) reaches the book after an empty
    # snapshot at 0 (the connector normalises it: tests/connector/test_sequence_rule.py).
    book = L2Book()
    assert book.apply_snapshot([], [], 500, 1)
    assert book.apply_delta([], [(0.05, 3.0)], 501, 0, 2) is DeltaResult.GAP


def test_a_delta_from_an_empty_book_at_zero_applies() -> None:
    book = L2Book()
    assert book.apply_snapshot([], [], 0, 1)
    assert book.apply_delta([], [(0.05, 3.0)], 13167318999, 0, 2) in APPLIED
    assert book.best_ask() == (0.05, 3.0)
    # Redelivered: at or below the book's sequence, a duplicate.
    assert book.apply_delta([], [(0.05, 3.0)], 13167318999, 0, 3) is DeltaResult.DUPLICATE


def test_a_delta_spanning_the_books_sequence_is_a_gap_for_every_venue() -> None:
    # Binance's first diff after a REST snapshot (pu < lastUpdateId < u) reaches the book
    # with prev = lastUpdateId (the connector normalises it).
    book = L2Book()
    assert book.apply_snapshot([(10.0, 1.0)], [(11.0, 1.0)], 1000, 1)
    assert book.apply_delta([(10.0, 3.0)], [], 1003, 998, 3) is DeltaResult.GAP


def test_bybit_snapshot_always_resets_even_with_lower_u() -> None:
    book = _valid_book(seq=24_642)
    assert book.apply_snapshot([(5.0, 1.0)], [], 1, 2)  # u = 1: venue restart
    assert book.bid_levels() == [(5.0, 1.0)] and book.sequence == 1
    assert book.apply_delta([], [(6.0, 1.0)], 2, 1, 3) in APPLIED
    assert book.apply_delta([], [(7.0, 1.0)], 4, 3, 4) is DeltaResult.GAP


@pytest.mark.parametrize(
    ("price", "size"),
    [
        (math.nan, 1.0),
        (1.0, math.nan),
        (math.inf, 1.0),
        (-math.inf, 1.0),
        (1.0, math.inf),
        (0.0, 1.0),
        (-5.0, 1.0),
        (1.0, -1.0),
    ],
)
def test_invalid_level_rejects_delta_whole_and_marks_gap(price: float, size: float) -> None:
    book = _valid_book()
    result = book.apply_delta([(99.5, 1.0), (price, size)], [], 11, 10, 2)
    assert result is DeltaResult.REJECTED
    assert book.status is BookStatus.GAP and book.bids == {}


@pytest.mark.parametrize(("price", "size"), [(math.nan, 1.0), (1.0, -2.0), (0.0, 1.0)])
def test_invalid_level_rejects_snapshot(price: float, size: float) -> None:
    book = _valid_book()
    assert not book.apply_snapshot([(1.0, 1.0)], [(price, size)], 99, 2)
    assert book.status is BookStatus.AWAITING_SNAPSHOT and book.asks == {}


def test_invalid_level_in_a_duplicate_does_not_break_the_book() -> None:
    book = _valid_book()
    assert book.apply_delta([(math.nan, 1.0)], [], 9, 8, 2) is DeltaResult.DUPLICATE
    assert book.status is BookStatus.VALID


def test_crossed_and_one_sided_flags() -> None:
    book = L2Book()
    book.apply_snapshot([(10.0, 1.0)], [(10.0, 1.0)], 1, 1)
    assert book.crossed and not book.one_sided
    book.apply_snapshot([(10.0, 1.0)], [(10.5, 1.0)], 2, 2)
    assert not book.crossed
    book.apply_snapshot([], [(10.5, 1.0)], 3, 3)
    assert book.one_sided and not book.crossed
    book.apply_snapshot([], [], 4, 4)
    assert not book.one_sided and not book.crossed


def test_depth_summary_over_best_levels() -> None:
    book = L2Book()
    bids = [(100.0 - i, float(i + 1)) for i in range(40)]
    asks = [(101.0 + i, 0.5) for i in range(3)]
    book.apply_snapshot(bids, asks, 1, 1)
    assert book.depth_summary(10) == (10, float(sum(range(1, 11))), 3, 1.5)
    assert book.depth_summary(0) == (0, 0.0, 0, 0.0)
    assert book.bid_levels(2) == [(100.0, 1.0), (99.0, 2.0)]
    assert book.ask_levels(0) == [] and book.bid_levels(0) == []


def test_applied_result_says_whether_a_best_level_was_touched() -> None:
    book = _valid_book()  # bids 100/99/98, asks 101/102
    at_top, below = DeltaResult.APPLIED_AT_TOP, DeltaResult.APPLIED
    cases = [
        ([(99.0, 5.0)], [], below),  # size change below the best bid
        ([(100.0, 5.0)], [], at_top),  # best bid size
        ([(100.5, 1.0)], [], at_top),  # new best bid
        ([(99.5, 1.0)], [], below),  # new level behind the best
        ([(100.5, 0.0)], [], at_top),  # best bid deleted
        ([(42.0, 0.0)], [], below),  # unknown level deleted: nothing changed
        ([], [(102.0, 9.0)], below),
        ([], [(101.0, 9.0)], at_top),
        ([], [(100.9, 1.0)], at_top),  # new best ask
        ([], [(100.9, 0.0)], at_top),
        ([(97.0, 1.0)], [(101.0, 2.0)], at_top),
        ([], [], below),  # empty delta advancing the sequence
    ]
    for seq, (bids, asks, expected) in enumerate(cases, start=11):
        assert book.apply_delta(bids, asks, seq, seq - 1, seq) is expected, (bids, asks)
    assert book.best_bid() == (100.0, 5.0) and book.best_ask() == (101.0, 2.0)
