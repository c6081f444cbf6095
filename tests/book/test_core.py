"""BookCore: emission on change only, keyframes, status-only invalid books, event-time
staleness, resync list, counters."""

from __future__ import annotations

import math

from svc_book.core import BookConfig, BookCore
from tests.book.helpers import delta, reset, snapshot, ticker
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import market_data_pb2 as md_pb

S = 1_000_000_000


def _core(stale_after_s: int = 10, depth: int = 10) -> BookCore:
    return BookCore("okx", "BTC", BookConfig(stale_after_ns=stale_after_s * S, depth_levels=depth))


def _by_symbol(tops: list[book_pb.TopOfBook]) -> dict[str, book_pb.TopOfBook]:
    return {t.symbol: t for t in tops}


def test_snapshot_emits_top_and_depth_with_header() -> None:
    core = _core(depth=2)
    core.apply(snapshot("A", [(10.0, 1.0), (9.0, 2.0), (8.0, 4.0)], [(11.0, 3.0)], 5, 1 * S))
    (top,) = core.tops(1 * S)
    assert top.symbol == "A" and top.status == book_pb.BOOK_STATUS_VALID
    assert (top.best_bid_price_native, top.best_bid_size_native) == (10.0, 1.0)
    assert (top.best_ask_price_native, top.best_ask_size_native) == (11.0, 3.0)
    assert (top.bid_levels, top.bid_depth_size_native) == (2, 3.0)
    assert (top.ask_levels, top.ask_depth_size_native) == (1, 3.0)
    assert not top.crossed and not top.one_sided and not top.stale
    assert top.last_update_time_ns == 1 * S
    assert top.header.event_time_ns == 1 * S
    assert top.header.source == "svc_book" and top.header.sequence == 1


def test_only_changes_are_emitted() -> None:
    core = _core()
    core.apply(snapshot("A", [(10.0, 1.0), (9.0, 2.0)], [(11.0, 3.0)], 5, 1 * S))
    core.apply(snapshot("B", [(20.0, 1.0)], [(21.0, 3.0)], 7, 1 * S))
    assert len(core.tops(1 * S)) == 2
    assert core.tops(1 * S) == []  # nothing happened
    # Below the top: book changes, top does not -> nothing.
    core.apply(delta("A", [(9.0, 5.0)], [], 6, 5, 2 * S))
    assert core.tops(2 * S) == []
    # Top size changes -> only A.
    core.apply(delta("A", [(10.0, 1.5)], [], 7, 6, 3 * S))
    tops = core.tops(3 * S)
    assert [t.symbol for t in tops] == ["A"] and tops[0].best_bid_size_native == 1.5
    assert tops[0].bid_depth_size_native == 6.5  # depth rides along: 1.5 + 5
    # A change that is undone before tops() is not a change.
    core.apply(delta("B", [(20.5, 1.0)], [], 8, 7, 4 * S))
    core.apply(delta("B", [(20.5, 0.0)], [], 9, 8, 4 * S))
    assert core.tops(4 * S) == []
    # Sequence numbers keep counting across calls.
    core.apply(delta("B", [], [(21.0, 0.0)], 10, 9, 5 * S))
    (b,) = core.tops(5 * S)
    assert b.header.sequence == 4 and b.one_sided and not b.HasField("best_ask_price_native")


def test_keyframe_emits_every_book_and_resets_change_tracking() -> None:
    core = _core()
    core.apply(snapshot("A", [(10.0, 1.0)], [(11.0, 3.0)], 5, 1 * S))
    core.apply(snapshot("B", [], [], 7, 1 * S))
    core.apply(delta("C", [(1.0, 1.0)], [], 2, 1, 1 * S))  # unknown book: awaiting
    core.tops(1 * S)
    frame = _by_symbol(core.tops(2 * S, keyframe=True))
    assert set(frame) == {"A", "B", "C"}
    assert frame["A"].best_bid_price_native == 10.0
    assert not frame["B"].HasField("best_bid_price_native") and not frame["B"].one_sided
    assert frame["C"].status == book_pb.BOOK_STATUS_AWAITING_SNAPSHOT
    assert core.tops(2 * S) == []
    # A change pending at keyframe time is carried by the keyframe, not re-emitted after.
    core.apply(delta("A", [(10.0, 2.0)], [], 6, 5, 3 * S))
    assert len(core.tops(3 * S, keyframe=True)) == 3
    assert core.tops(3 * S) == []


def test_invalid_book_publishes_status_only() -> None:
    core = _core()
    core.apply(snapshot("A", [(10.0, 1.0)], [(10.0, 3.0)], 5, 1 * S))  # crossed
    (valid,) = core.tops(1 * S)
    assert valid.crossed
    core.apply(delta("A", [(9.0, 1.0)], [], 9, 8, 2 * S))  # gap
    (gap,) = core.tops(2 * S)
    assert gap.status == book_pb.BOOK_STATUS_GAP
    for name in (
        "best_bid_price_native",
        "best_bid_size_native",
        "best_ask_price_native",
        "best_ask_size_native",
    ):
        assert not gap.HasField(name)
    assert not gap.crossed and not gap.one_sided and not gap.stale
    assert gap.bid_levels == 0 and gap.ask_depth_size_native == 0.0
    assert gap.header.event_time_ns == 2 * S and gap.last_update_time_ns == 1 * S
    # Still in GAP: more deltas change nothing visible.
    core.apply(delta("A", [(9.0, 1.0)], [], 10, 9, 3 * S))
    assert core.tops(3 * S) == []
    core.apply(reset("A", 4 * S))
    (awaiting,) = core.tops(4 * S)
    assert awaiting.status == book_pb.BOOK_STATUS_AWAITING_SNAPSHOT
    core.apply(snapshot("A", [(10.0, 1.0)], [(10.0, 3.0)], 20, 5 * S))
    (back,) = core.tops(5 * S)
    assert back.status == book_pb.BOOK_STATUS_VALID and back.crossed


def test_staleness_in_event_time() -> None:
    core = _core(stale_after_s=10)
    core.apply(snapshot("A", [(10.0, 1.0)], [(11.0, 1.0)], 1, 100 * S))
    core.apply(snapshot("B", [(20.0, 1.0)], [(21.0, 1.0)], 1, 105 * S))
    core.tops(105 * S)
    assert core.tops(110 * S) == []  # exactly 10 s: not yet ("longer than")
    (a,) = core.tops(110 * S + 1)
    assert a.symbol == "A" and a.stale and a.best_bid_price_native == 10.0
    assert a.header.event_time_ns == 100 * S
    assert core.tops(114 * S) == []  # already reported
    # A keep-alive confirms A: no longer stale, although nothing changed in the book.
    core.apply(delta("A", [], [], 1, 1, 114 * S))
    (a2,) = core.tops(114 * S)
    assert a2.symbol == "A" and not a2.stale
    assert a2.last_update_time_ns == 100 * S and a2.header.event_time_ns == 114 * S
    (b,) = core.tops(116 * S)
    assert b.symbol == "B" and b.stale
    assert core.is_stale("B") and not core.is_stale("A")
    # A duplicate is not a sign of life.
    core.apply(delta("B", [(20.0, 5.0)], [], 1, 0, 117 * S))
    assert core.tops(117 * S) == [] and core.is_stale("B")
    # A real change un-stales B.
    core.apply(delta("B", [(20.0, 5.0)], [], 2, 1, 118 * S))
    (b2,) = core.tops(118 * S)
    assert not b2.stale and b2.best_bid_size_native == 5.0
    assert core.stats.stale_transitions == 2


def test_stale_flag_only_for_valid_books() -> None:
    core = _core(stale_after_s=1)
    core.apply(reset("A", 1 * S))
    assert len(core.tops(1 * S)) == 1
    assert core.tops(100 * S) == []
    assert not core.is_stale("A")


def test_needs_resync_tracks_gap_and_awaiting_books() -> None:
    core = _core()
    core.apply(delta("X", [(1.0, 1.0)], [], 2, 1, 1))  # never saw a snapshot
    core.apply(snapshot("A", [(10.0, 1.0)], [], 5, 1))
    core.apply(snapshot("B", [(10.0, 1.0)], [], 5, 1))
    assert core.needs_resync() == ["X"]
    core.apply(delta("B", [(10.0, 2.0)], [], 8, 7, 2))  # gap
    core.apply(reset("A", 3))
    assert core.needs_resync() == ["X", "B", "A"]
    core.apply(snapshot("B", [(10.0, 1.0)], [], 9, 4))
    assert core.needs_resync() == ["X", "A"]


def test_stats_and_ignored_events() -> None:
    core = _core()
    core.apply(ticker("A"))
    core.apply(md_pb.MarketDataEvent())  # empty oneof
    core.apply(snapshot("", [(1.0, 1.0)], [], 1))  # no symbol
    core.apply(snapshot("A", [(10.0, 1.0)], [], 5))
    core.apply(delta("A", [(10.0, 2.0)], [], 6, 5))
    core.apply(delta("A", [(10.0, 2.0)], [], 6, 5))  # duplicate
    core.apply(delta("A", [], [], 6, 6))  # keep-alive
    core.apply(delta("A", [(math.nan, 2.0)], [], 7, 6))  # rejected -> GAP
    core.apply(delta("A", [(10.0, 2.0)], [], 8, 7))  # not valid
    core.apply(reset("A"))
    core.apply(snapshot("A", [(10.0, 1.0)], [], 50))
    core.apply(delta("A", [(10.0, 2.0)], [], 60, 55))  # gap
    s = core.stats
    assert (s.ignored, s.rejected, s.snapshots, s.applied) == (2, 2, 2, 1)
    assert (s.duplicates, s.keepalives, s.not_valid, s.resets, s.gaps) == (1, 1, 1, 1, 1)


def test_delisted_instruments_are_forgotten() -> None:
    core = _core()
    core.apply(snapshot("A", [(10.0, 1.0)], [], 5))
    core.apply(snapshot("B", [(10.0, 1.0)], [], 5))
    core.apply(reset("B"))
    core.apply(
        md_pb.MarketDataEvent(
            instrument_set=md_pb.InstrumentSet(venue="okx", delisted_symbols=["B", "Z"])
        )
    )
    assert core.symbols() == ["A"] and core.needs_resync() == []
    assert core.stats.delisted == 1
    assert [t.symbol for t in core.tops(0, keyframe=True)] == ["A"]


def test_depth_config_limits_summary() -> None:
    core = _core(depth=3)
    core.apply(snapshot("A", [(float(p), 1.0) for p in range(1, 41)], [(50.0, 2.0)], 1))
    (top,) = core.tops(0)
    assert (top.bid_levels, top.bid_depth_size_native, top.ask_levels) == (3, 3.0, 1)
    assert top.best_bid_price_native == 40.0


def test_tops_into_a_batch_matches_tops() -> None:
    events = [
        snapshot("A", [(10.0, 1.0), (9.0, 2.0)], [(11.0, 3.0)], 5, 1 * S),
        snapshot("B", [], [(21.0, 3.0)], 7, 1 * S),
        reset("C", 1 * S),
        delta("A", [(10.5, 1.0)], [], 6, 5, 2 * S),
        delta("B", [], [(21.0, 0.0)], 8, 7, 3 * S),
        delta("A", [(9.0, 4.0)], [], 7, 6, 4 * S),  # below the top: nothing to publish
    ]
    plain, batched = _core(), _core()
    for step, event in enumerate(events):
        plain.apply(event)
        batched.apply(event)
        keyframe = step == 4
        batch = book_pb.TopOfBookBatch(venue="okx", currency="BTC")
        added = batched.tops_into(batch, step * S, keyframe=keyframe)
        expected = plain.tops(step * S, keyframe=keyframe)
        assert added == len(expected) and list(batch.tops) == expected
        assert batch.is_keyframe == keyframe
    assert plain.output_sequence == batched.output_sequence == 7  # 1+1+1+1, keyframe 3, 0


def test_keyframe_bytes_reencode_only_touched_books() -> None:
    core, twin = _core(stale_after_s=10), _core(stale_after_s=10)
    events = [
        snapshot("A", [(10.0, 1.0), (9.0, 2.0)], [(11.0, 3.0)], 5, 1 * S),
        snapshot("B", [(20.0, 1.0)], [(21.0, 3.0)], 7, 1 * S),
        reset("C", 1 * S),
    ]
    for event in events:
        core.apply(event)
        twin.apply(event)

    def keyframe_pair(now_ns: int) -> None:
        batch = book_pb.TopOfBookBatch()
        count = twin.tops_into(batch, now_ns, keyframe=True)
        batch.ClearField("is_keyframe")
        assert core.keyframe_tops_bytes(now_ns) == (batch.SerializeToString(), count)

    keyframe_pair(2 * S)
    assert len(core._keyframe_parts) == 3
    # A deep level (no new top, same event time): A is re-encoded, B and C come from cache.
    for c in (core, twin):
        c.apply(delta("A", [(9.0, 5.0)], [], 6, 5, 1 * S))
    cached_b = core._keyframe_parts["B"]
    keyframe_pair(3 * S)
    assert core._keyframe_parts["B"] is cached_b
    # Time alone makes A and B stale: both re-encoded with the flag.
    keyframe_pair(20 * S)
    stale = book_pb.TopOfBookBatch.FromString(core.keyframe_tops_bytes(21 * S)[0])
    assert [t.stale for t in stale.tops] == [True, True, False]
    twin.tops_into(book_pb.TopOfBookBatch(), 21 * S, keyframe=True)
    # Delisted: gone from the keyframe and the cache.
    for c in (core, twin):
        c.apply(md_pb.MarketDataEvent(instrument_set=md_pb.InstrumentSet(delisted_symbols=["B"])))
    keyframe_pair(22 * S)
    assert "B" not in core._keyframe_parts and core.output_sequence == twin.output_sequence
