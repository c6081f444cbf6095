"""Property tests: BookCore against a plain reference model and against the venue's truth.

A 'truth' book evolves through contiguous deltas; the stream delivered to the core is that
truth perturbed with drops (gaps), redeliveries (duplicates), swaps (reordering), fresh and
old snapshots, resets, keep-alives and corrupted levels, interleaved across symbols. After
every event the core must agree with an independently written dict-of-levels model (status,
sequence, levels, emitted tops, staleness), and a VALID book must equal the truth at its
sequence: a book that says it is valid is never wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svc_book.book import BookStatus
from svc_book.core import BookConfig, BookCore
from tests.book.helpers import delta, reset, snapshot
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

Pair = tuple[float, float]
STALE_AFTER = 3_000
DEPTH = 4
PRICES = [round(0.5 * i, 1) for i in range(1, 21)]
SIZES = [0.0, 0.5, 1.0, 2.5, 7.0]
BAD_LEVELS = [(math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (1.0, -1.0), (0.0, 2.0)]
VENUES = ["okx", "bybit", "deribit", "binance"]


# -- reference model ---------------------------------------------------------------------------


def _good(levels: list[Pair]) -> bool:
    return all(math.isfinite(p) and p > 0 and math.isfinite(s) and s >= 0 for p, s in levels)


@dataclass
class RefBook:
    venue: str
    status: str = "awaiting"
    seq: int = 0
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    deltas_since_snapshot: int = 0
    last_seen: int = -(2**62)

    def invalidate(self, status: str) -> None:
        self.status, self.bids, self.asks, self.deltas_since_snapshot = status, {}, {}, 0

    def snapshot(self, bids: list[Pair], asks: list[Pair], seq: int, t: int) -> None:
        if not (_good(bids) and _good(asks)):
            self.invalidate("awaiting")
            return
        self.bids = {p: s for p, s in bids if s > 0}
        self.asks = {p: s for p, s in asks if s > 0}
        self.status, self.seq, self.deltas_since_snapshot = "valid", seq, 0
        self.last_seen = max(self.last_seen, t)

    def delta(self, bids: list[Pair], asks: list[Pair], seq: int, prev: int, t: int) -> None:
        if self.status != "valid":
            return
        follows = prev == self.seq
        if self.venue == "deribit" and prev == 0 and not self.bids and not self.asks:
            follows = follows or seq > self.seq
        if self.venue == "binance" and self.deltas_since_snapshot == 0:
            follows = follows or prev < self.seq < seq
        if not follows:
            if seq > self.seq:
                self.invalidate("gap")
            return
        if not bids and not asks and seq == prev:
            self.seq = seq
            self.last_seen = max(self.last_seen, t)
            return
        if not (_good(bids) and _good(asks)):
            self.invalidate("gap")
            return
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for p, s in levels:
                if s == 0:
                    side.pop(p, None)
                else:
                    side[p] = s
        self.seq = seq
        self.deltas_since_snapshot += 1
        self.last_seen = max(self.last_seen, t)

    def top_state(self, now: int) -> tuple[object, ...]:
        if self.status != "valid":
            return (self.status,)
        best_bid = max(self.bids) if self.bids else None
        best_ask = min(self.asks) if self.asks else None
        return (
            "valid",
            now - self.last_seen > STALE_AFTER,
            best_bid,
            self.bids[best_bid] if best_bid is not None else None,
            best_ask,
            self.asks[best_ask] if best_ask is not None else None,
        )


_STATUS_NAMES = {
    book_pb.BOOK_STATUS_VALID: "valid",
    book_pb.BOOK_STATUS_AWAITING_SNAPSHOT: "awaiting",
    book_pb.BOOK_STATUS_GAP: "gap",
}


_BOOK_STATUS_NAMES = {
    BookStatus.VALID: "valid",
    BookStatus.AWAITING_SNAPSHOT: "awaiting",
    BookStatus.GAP: "gap",
}


def _emitted_state(top: book_pb.TopOfBook) -> tuple[object, ...]:
    status = _STATUS_NAMES[top.status]
    if status != "valid":
        return (status,)

    def opt(name: str) -> float | None:
        return getattr(top, name) if top.HasField(name) else None

    return (
        "valid",
        top.stale,
        opt("best_bid_price_native"),
        opt("best_bid_size_native"),
        opt("best_ask_price_native"),
        opt("best_ask_size_native"),
    )


# -- truth and delivery ------------------------------------------------------------------------

levels_st = st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), max_size=6)
delta_levels_st = st.lists(
    st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), min_size=0, max_size=3
)
ACTIONS = ["next", "next", "next", "drop", "dup", "swap", "snap", "old_snap", "reset", "corrupt"]
ACTIONS += ["keepalive"]


Truth = dict[int, tuple[dict[float, float], dict[float, float]]]


@st.composite
def symbol_stream(draw: st.DrawFn, symbol: str) -> tuple[list[md_pb.MarketDataEvent], Truth]:
    """The venue's truth for one symbol (book at every sequence) and a perturbed delivery."""
    seq0 = draw(st.integers(0, 50))
    bids0, asks0 = draw(levels_st), draw(levels_st)
    states: list[tuple[int, dict[float, float], dict[float, float]]] = [
        (seq0, {p: s for p, s in bids0 if s > 0}, {p: s for p, s in asks0 if s > 0})
    ]
    deltas: list[tuple[list[Pair], list[Pair], int, int]] = []
    for _ in range(draw(st.integers(0, 20))):
        prev_seq, bids, asks = states[-1]
        bids, asks = dict(bids), dict(asks)
        d_bids, d_asks = draw(delta_levels_st), draw(delta_levels_st)
        for side, levels in ((bids, d_bids), (asks, d_asks)):
            for p, s in levels:
                if s == 0:
                    side.pop(p, None)
                else:
                    side[p] = s
        seq = prev_seq + draw(st.integers(1, 3))
        deltas.append((d_bids, d_asks, seq, prev_seq))
        states.append((seq, bids, asks))

    def snap_of(k: int) -> md_pb.MarketDataEvent:
        seq, bids, asks = states[k]
        return snapshot(symbol, list(bids.items()), list(asks.items()), seq)

    def delta_of(k: int, extra_bid: Pair | None = None) -> md_pb.MarketDataEvent:
        d_bids, d_asks, seq, prev = deltas[k]
        bids = [*d_bids, extra_bid] if extra_bid is not None else d_bids
        return delta(symbol, bids, d_asks, seq, prev)

    out: list[md_pb.MarketDataEvent] = []
    if draw(st.sampled_from([True, True, True, False])):
        out.append(snap_of(0))
    ptr = 0  # next truth delta to deliver; states[ptr] is the venue's current state
    for action in draw(st.lists(st.sampled_from(ACTIONS), max_size=30)):
        if action in ("next", "drop", "corrupt", "swap") and ptr >= len(deltas):
            continue
        if action == "next":
            out.append(delta_of(ptr))
            ptr += 1
        elif action == "drop":
            ptr += 1
        elif action == "corrupt":
            out.append(delta_of(ptr, draw(st.sampled_from(BAD_LEVELS))))
            ptr += 1
        elif action == "swap":
            if ptr + 1 < len(deltas):
                out.append(delta_of(ptr + 1))
            out.append(delta_of(ptr))
            ptr = min(ptr + 2, len(deltas))
        elif action == "dup" and ptr > 0:
            out.append(delta_of(draw(st.integers(0, ptr - 1))))
        elif action == "snap":
            out.append(snap_of(min(ptr, len(states) - 1)))
        elif action == "old_snap":
            out.append(snap_of(draw(st.integers(0, min(ptr, len(states) - 1)))))
        elif action == "reset":
            out.append(reset(symbol))
        elif action == "keepalive":
            seq = states[min(ptr, len(states) - 1)][0]
            out.append(delta(symbol, [], [], seq, seq))
    return out, {seq: (bids, asks) for seq, bids, asks in states}


Scenario = tuple[str, list[md_pb.MarketDataEvent], dict[str, Truth]]


@st.composite
def scenario(draw: st.DrawFn) -> Scenario:
    venue = draw(st.sampled_from(VENUES))
    queues: dict[str, list[md_pb.MarketDataEvent]] = {}
    truth: dict[str, Truth] = {}
    for sym in ("A", "B"):
        queues[sym], truth[sym] = draw(symbol_stream(sym))
    merged: list[md_pb.MarketDataEvent] = []
    for pick in draw(st.lists(st.sampled_from(["A", "B"]), max_size=80)):
        if queues[pick]:
            merged.append(queues[pick].pop(0))
    merged += queues["A"] + queues["B"]
    # Event time: non-decreasing, sometimes long pauses so books go stale.
    t = 0
    for event in merged:
        t += draw(st.sampled_from([0, 1, 100, 1_000, 2_999, 3_001, 10_000]))
        _body(event).header.event_time_ns = t
    return venue, merged, truth


def _body(event: md_pb.MarketDataEvent) -> md_pb.BookSnapshot | md_pb.BookDelta | md_pb.BookReset:
    if event.HasField("book_snapshot"):
        return event.book_snapshot
    if event.HasField("book_delta"):
        return event.book_delta
    return event.book_reset


def _levels(levels: Iterable[md_pb.BookLevel]) -> list[Pair]:
    return [(lv.price_native, lv.size_native) for lv in levels]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_core_agrees_with_reference_model_and_never_reports_a_wrong_valid_book(
    case: Scenario,
) -> None:
    venue, events, truth = case
    core = BookCore(venue, "BTC", BookConfig(stale_after_ns=STALE_AFTER, depth_levels=DEPTH))
    model: dict[str, RefBook] = {}
    model_emitted: dict[str, tuple[object, ...]] = {}
    now = 0
    for event in events:
        body = _body(event)
        symbol, now = body.symbol, body.header.event_time_ns
        ref = model.setdefault(symbol, RefBook(venue))
        if isinstance(body, md_pb.BookSnapshot):
            ref.snapshot(_levels(body.bids), _levels(body.asks), body.venue_sequence, now)
        elif isinstance(body, md_pb.BookDelta):
            ref.delta(
                _levels(body.bids),
                _levels(body.asks),
                body.venue_sequence,
                body.prev_venue_sequence,
                now,
            )
        else:
            ref.invalidate("awaiting")
        core.apply(event)

        for sym, expected in model.items():
            book = core.book(sym)
            assert book is not None
            assert _BOOK_STATUS_NAMES[book.status] == expected.status
            assert book.bids == expected.bids and book.asks == expected.asks
            assert book.bid_prices == sorted(book.bids) and book.ask_prices == sorted(book.asks)
            if expected.status == "valid":
                assert book.sequence == expected.seq
                # Never wrong while VALID: equal to the venue's book at that sequence.
                assert (book.bids, book.asks) == truth[sym][book.sequence]
        assert sorted(core.needs_resync()) == sorted(
            s for s, r in model.items() if r.status != "valid"
        )

        tops = core.tops(now)
        got = {t.symbol: t for t in tops}
        assert len(got) == len(tops)
        expected_changed = {
            sym
            for sym, ref_book in model.items()
            if model_emitted.get(sym) != ref_book.top_state(now)
        }
        assert set(got) == expected_changed
        for sym in expected_changed:
            state = model[sym].top_state(now)
            assert _emitted_state(got[sym]) == state
            model_emitted[sym] = state
            if state[0] == "valid":
                ref_book = model[sym]
                best_bids = sorted(ref_book.bids.items(), reverse=True)[:DEPTH]
                best_asks = sorted(ref_book.asks.items())[:DEPTH]
                top = got[sym]
                assert (top.bid_levels, top.ask_levels) == (len(best_bids), len(best_asks))
                assert math.isclose(top.bid_depth_size_native, sum(s for _, s in best_bids))
                assert math.isclose(top.ask_depth_size_native, sum(s for _, s in best_asks))
                best_bid = best_bids[0][0] if best_bids else None
                best_ask = best_asks[0][0] if best_asks else None
                assert top.crossed == (
                    best_bid is not None and best_ask is not None and best_bid >= best_ask
                )
    keyframe = core.tops(now, keyframe=True)
    assert [t.symbol for t in keyframe] == list(model)
    for top in keyframe:
        assert _emitted_state(top) == model[top.symbol].top_state(now)


# -- garbage in, no exception out --------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True)
any_int64 = st.integers(-(2**63), 2**63 - 1)
any_symbol = st.sampled_from(["", "A", "B"]) | st.text(max_size=4)
any_levels = st.lists(st.tuples(any_float, any_float), max_size=4)


@st.composite
def any_event(draw: st.DrawFn) -> md_pb.MarketDataEvent:
    kind = draw(st.sampled_from(["snapshot", "delta", "reset", "ticker", "set", "empty"]))
    header = common_pb.EventHeader(event_time_ns=draw(any_int64))
    symbol = draw(any_symbol)

    def levels() -> list[md_pb.BookLevel]:
        return [md_pb.BookLevel(price_native=p, size_native=s) for p, s in draw(any_levels)]

    if kind == "snapshot":
        return md_pb.MarketDataEvent(
            book_snapshot=md_pb.BookSnapshot(
                header=header,
                symbol=symbol,
                bids=levels(),
                asks=levels(),
                venue_sequence=draw(any_int64),
                is_periodic=draw(st.booleans()),
            )
        )
    if kind == "delta":
        return md_pb.MarketDataEvent(
            book_delta=md_pb.BookDelta(
                header=header,
                symbol=symbol,
                bids=levels(),
                asks=levels(),
                venue_sequence=draw(any_int64),
                prev_venue_sequence=draw(any_int64 | st.integers(-2, 5)),
                checksum=draw(st.integers(-(2**31), 2**31 - 1)),
            )
        )
    if kind == "reset":
        return md_pb.MarketDataEvent(book_reset=md_pb.BookReset(header=header, symbol=symbol))
    if kind == "ticker":
        return md_pb.MarketDataEvent(ticker=md_pb.VenueTicker(header=header, symbol=symbol))
    if kind == "set":
        delisted = draw(st.lists(any_symbol, max_size=2))
        return md_pb.MarketDataEvent(
            instrument_set=md_pb.InstrumentSet(header=header, delisted_symbols=delisted)
        )
    return md_pb.MarketDataEvent()


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*VENUES, "unknown"]),
    st.lists(st.tuples(any_event(), any_int64, st.booleans()), max_size=25),
)
def test_no_exception_escapes_for_any_input(
    venue: str, steps: list[tuple[md_pb.MarketDataEvent, int, bool]]
) -> None:
    core = BookCore(venue, "BTC", BookConfig(stale_after_ns=1_000))
    for event, now, keyframe in steps:
        core.apply(event)
        tops = core.tops(now, keyframe=keyframe)
        assert {t.symbol for t in tops} <= set(core.symbols())
        assert core.tops(now) == []  # change tracking is idempotent
        for symbol in core.symbols():
            book = core.book(symbol)
            assert book is not None and symbol != ""
            assert book.bid_prices == sorted(book.bids) and book.ask_prices == sorted(book.asks)
            for price, size in [*book.bids.items(), *book.asks.items()]:
                assert math.isfinite(price) and price > 0 and math.isfinite(size) and size > 0
            if book.status is not BookStatus.VALID:
                assert not book.bids and not book.asks
    s = core.stats
    counted = s.snapshots + s.applied + s.keepalives + s.duplicates + s.gaps + s.resets
    counted += s.not_valid + s.rejected + s.ignored
    book_events = sum(1 for event, _, _ in steps if event.WhichOneof("event") != "instrument_set")
    assert counted == book_events


# -- keyframes from cached bytes ---------------------------------------------------------------

small_pairs = st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), max_size=3)


@st.composite
def book_event(draw: st.DrawFn) -> md_pb.MarketDataEvent:
    """Well-formed events over three symbols whose sequences often continue (deltas apply,
    deep and at the top), at times that repeat (a change keeps the book's event time)."""
    symbol = draw(st.sampled_from(["A", "B", "C"]))
    t = draw(st.integers(0, 12)) * 1_000
    kind = draw(st.sampled_from(["snapshot", "delta", "delta", "delta", "reset", "delist"]))
    if kind == "snapshot":
        return snapshot(symbol, draw(small_pairs), draw(small_pairs), draw(st.integers(0, 3)), t)
    if kind == "reset":
        return reset(symbol, t)
    if kind == "delist":
        return md_pb.MarketDataEvent(
            instrument_set=md_pb.InstrumentSet(venue="okx", delisted_symbols=[symbol])
        )
    seq = draw(st.integers(1, 4))
    prev = draw(st.sampled_from([seq - 1, seq, seq - 2]))
    return delta(symbol, draw(small_pairs), draw(small_pairs), seq, prev, t)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(book_event(), st.integers(0, 20), st.sampled_from(["", "tops", "keyframe"])),
        max_size=40,
    )
)
def test_keyframe_bytes_are_the_keyframe_batch_bytes(
    steps: list[tuple[md_pb.MarketDataEvent, int, str]],
) -> None:
    """keyframe_tops_bytes (cached per untouched book) is byte for byte the `tops` of the
    keyframe batch that tops_into builds, and leaves the same state behind: the next
    publications of both cores are equal too."""
    config = BookConfig(stale_after_ns=STALE_AFTER, depth_levels=DEPTH)
    built, cached = BookCore("okx", "BTC", config), BookCore("okx", "BTC", config)
    now = 0
    for event, advance, action in steps:
        now += advance * 500
        built.apply(event)
        cached.apply(event)
        if action == "tops":
            a, b = book_pb.TopOfBookBatch(), book_pb.TopOfBookBatch()
            assert built.tops_into(a, now) == cached.tops_into(b, now)
            assert a.SerializeToString() == b.SerializeToString()
        elif action == "keyframe":
            batch = book_pb.TopOfBookBatch()
            count = built.tops_into(batch, now, keyframe=True)
            batch.ClearField("is_keyframe")
            assert cached.keyframe_tops_bytes(now) == (batch.SerializeToString(), count)
        assert built.output_sequence == cached.output_sequence
