"""Pure order-book core for one partition (venue, currency): market data in, tops out.

`BookCore.apply(event)` folds one `MarketDataEvent` into the partition's books;
`BookCore.tops(now_ns)` returns a `TopOfBook` for every book whose top (best prices and
sizes), status or flags changed since the previous call, or for every book on a keyframe.
No wall clock: staleness is measured in event time against the `now_ns` the caller passes
(the latest event time it has seen).

Emission rules:
- a VALID book publishes best bid/ask (absent for an empty side), crossed / one_sided /
  stale flags and the depth summary over `config.depth_levels` levels per side;
- a book that is not valid (awaiting a snapshot, or after a gap) publishes only its status;
- the depth summary does not trigger an emission by itself (it rides along with a change
  or a keyframe), so a burst of deep-book churn costs nothing downstream;
- header: event_time_ns = time of the book's latest input event, source "svc_book",
  sequence = per-partition counter (1, 2, ... per TopOfBook).

Staleness: a VALID book is stale when `now_ns - last_seen > stale_after_ns`, where last_seen
is the event time of its last snapshot, applied delta or keep-alive. Books are kept in an
ordered map by last touch so each `tops()` looks only at the oldest ones.

Keyframes (`keyframe_tops_bytes`): every book, but most books do not change between two
keyframes (a keyframe every 5 s of event time carries thousands of tops against a few
hundred changed books). Each book's TopOfBook is kept as wire bytes without its header
sequence, and only the books touched since the previous keyframe (any event of theirs, or a
stale transition) are built again; the others cost a header and a few concatenations. The
bytes are exactly what `tops_into(batch, now_ns, keyframe=True)` serialises to.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from svc_book.book import (
    BookStatus,
    DeltaResult,
    L2Book,
    Level,
)
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb
from volstream.wire import WIRE_LEN, field_key, read_varint, varint

SOURCE = "svc_book"

# Module-level aliases: an enum member lookup costs ~75 ns, a global ~15 ns (hot path).
_VALID = BookStatus.VALID
_APPLIED = DeltaResult.APPLIED
_APPLIED_AT_TOP = DeltaResult.APPLIED_AT_TOP

_PROTO_VALID = book_pb.BOOK_STATUS_VALID
_TopOfBook = book_pb.TopOfBook

_PROTO_STATUS = {
    BookStatus.VALID: book_pb.BOOK_STATUS_VALID,
    BookStatus.AWAITING_SNAPSHOT: book_pb.BOOK_STATUS_AWAITING_SNAPSHOT,
    BookStatus.GAP: book_pb.BOOK_STATUS_GAP,
}

# Wire pieces of a keyframe's tops (book.proto): TopOfBookBatch.tops is field 4 and a
# TopOfBook's header field 1 (serialised first: fields go out in number order).
_BATCH_TOP_KEY = field_key(4, WIRE_LEN)
_TOP_HEADER_KEY = field_key(1, WIRE_LEN)
# Varints of the lengths a top and its header have (a top is ~100 bytes).
_LENGTHS = [varint(n) for n in range(1 << 14)]

# OKX sends a keep-alive for a quiet book every ~60 s: stay above it so quiet books do not flap.
DEFAULT_STALE_AFTER_NS = 90 * 1_000_000_000

# (status, stale, bid px, bid size, ask px, ask size); an invalid book carries its status only.
_TopState = tuple[BookStatus, bool, float | None, float | None, float | None, float | None]


@dataclass(frozen=True, slots=True)
class BookConfig:
    stale_after_ns: int = DEFAULT_STALE_AFTER_NS
    # Depth summary: levels counted per side, best first.
    depth_levels: int = 10


@dataclass(slots=True)
class BookStats:
    snapshots: int = 0
    # Deltas applied (level changes or a sequence advance).
    applied: int = 0
    keepalives: int = 0
    # Deltas already applied; ignored.
    duplicates: int = 0
    # Sequence breaks (book -> GAP).
    gaps: int = 0
    # BookReset events (book -> AWAITING_SNAPSHOT).
    resets: int = 0
    # Deltas for a book that is awaiting a snapshot or in GAP; dropped.
    not_valid: int = 0
    # Snapshots/deltas carrying an invalid level (NaN/inf/<=0 price, NaN/inf/negative size),
    # and book events without a symbol; the book (if any) then needs a resync.
    rejected: int = 0
    # Non-book events (tickers, index prices, ...).
    ignored: int = 0
    # Books dropped because their instrument was delisted.
    delisted: int = 0
    # TopOfBook messages returned by tops().
    emitted: int = 0
    # Books that went stale (event time).
    stale_transitions: int = 0


def _pairs(levels: Sequence[md_pb.BookLevel]) -> Sequence[Level]:
    """(price, size) tuples; indexing beats iterating a upb repeated field for 0-1 levels."""
    count = len(levels)
    if count == 0:
        return ()
    if count == 1:
        level = levels[0]
        return ((level.price_native, level.size_native),)
    return [(level.price_native, level.size_native) for level in levels]


def _top_state(book: L2Book, stale: bool) -> _TopState:
    """What a TopOfBook of `book` publishes, as a comparable tuple."""
    if book.status is not _VALID:
        return (book.status, False, None, None, None, None)
    if book.bid_prices:
        bid_px: float | None = book.bid_prices[-1]
        bid_size: float | None = book.bid_sizes[-1]
    else:
        bid_px = bid_size = None
    if book.ask_prices:
        ask_px: float | None = book.ask_prices[0]
        ask_size: float | None = book.ask_sizes[0]
    else:
        ask_px = ask_size = None
    return (_VALID, stale, bid_px, bid_size, ask_px, ask_size)


class BookCore:
    """All books of one (venue, currency) partition. Pure and synchronous."""

    def __init__(self, venue: str, currency: str, config: BookConfig | None = None) -> None:
        self.venue = venue
        self.currency = currency
        self.config = config if config is not None else BookConfig()
        self._depth = self.config.depth_levels
        self._books: dict[str, L2Book] = {}
        # Symbols touched since the last tops(); a dict keeps output order deterministic.
        self._dirty: dict[str, None] = {}
        self._emitted: dict[str, _TopState] = {}
        # VALID, not-stale books, least recently confirmed first.
        self._fresh: OrderedDict[str, None] = OrderedDict()
        self._stale: set[str] = set()
        self._needs_resync: dict[str, None] = {}
        # Keyframe cache: symbol -> (its header's event time, the rest of its TopOfBook as
        # wire bytes), valid while the book is untouched; touched symbols since the last one.
        self._keyframe_parts: dict[str, tuple[int, bytes]] = {}
        self._touched: dict[str, None] = {}
        self._keyframe_header = common_pb.EventHeader(source=SOURCE)
        self._stats = BookStats()
        # Header sequence of the last TopOfBook emitted; a runtime restoring state may set it.
        self.output_sequence = 0

    # -- input -------------------------------------------------------------------------

    @property
    def stats(self) -> BookStats:
        return self._stats

    def apply(self, event: md_pb.MarketDataEvent) -> None:
        """Fold one event in. Non-book events are counted and ignored; never raises."""
        # Deltas dominate, so their path is written out here: at ~200k deltas/s every Python
        # call and protobuf attribute read shows (see bench/bench_book.py). Reading
        # `book_delta` of another event kind yields an empty default message (no symbol).
        delta = event.book_delta
        symbol = delta.symbol
        if not symbol:
            if event.HasField("book_delta"):
                self._stats.rejected += 1
            else:
                self._apply_other(event)
            return
        self._touched[symbol] = None
        book = self._books.get(symbol)
        if book is None:
            book = self._new_book(symbol)
        result = book.apply_delta_levels(
            delta.bids,
            delta.asks,
            delta.venue_sequence,
            delta.prev_venue_sequence,
            delta.header.event_time_ns,
        )
        if result is _APPLIED_AT_TOP or result is _APPLIED:
            self._stats.applied += 1
            # Only a touched best level can change what tops() publishes; deeper changes
            # ride along with the next emission's depth summary.
            if result is _APPLIED_AT_TOP:
                self._dirty[symbol] = None
            # Inline _confirm(): un-stale, youngest in `_fresh`.
            if self._stale and symbol in self._stale:
                self._stale.discard(symbol)
                self._dirty[symbol] = None
            try:
                self._fresh.move_to_end(symbol)
            except KeyError:
                self._fresh[symbol] = None
            return
        stats = self._stats
        if result is DeltaResult.DUPLICATE:
            stats.duplicates += 1
        elif result is DeltaResult.KEEPALIVE:
            stats.keepalives += 1
            self._confirm(symbol)
        elif result is DeltaResult.NOT_VALID:
            stats.not_valid += 1
        elif result is DeltaResult.GAP:
            stats.gaps += 1
            self._invalidated(symbol)
        else:  # REJECTED
            stats.rejected += 1
            self._invalidated(symbol)

    def _apply_other(self, event: md_pb.MarketDataEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "book_snapshot":
            self._on_snapshot(event.book_snapshot)
        elif kind == "book_reset":
            self._on_reset(event.book_reset)
        elif kind == "instrument_set":
            self._on_instrument_set(event.instrument_set)
        else:
            self._stats.ignored += 1

    def _on_snapshot(self, snapshot: md_pb.BookSnapshot) -> None:
        symbol = snapshot.symbol
        if not symbol:
            self._stats.rejected += 1
            return
        self._touched[symbol] = None
        book = self._books.get(symbol)
        if book is None:
            book = self._new_book(symbol)
        ok = book.apply_snapshot(
            _pairs(snapshot.bids),
            _pairs(snapshot.asks),
            snapshot.venue_sequence,
            snapshot.header.event_time_ns,
            periodic=snapshot.is_periodic,
        )
        self._dirty[symbol] = None
        if ok:
            self._stats.snapshots += 1
            self._needs_resync.pop(symbol, None)
            self._confirm(symbol)
        else:
            self._stats.rejected += 1
            self._invalidated(symbol)

    def _on_reset(self, reset: md_pb.BookReset) -> None:
        symbol = reset.symbol
        if not symbol:
            self._stats.rejected += 1
            return
        self._touched[symbol] = None
        book = self._books.get(symbol)
        if book is None:
            book = self._new_book(symbol)
        book.reset(reset.header.event_time_ns)
        self._stats.resets += 1
        self._invalidated(symbol)

    def _on_instrument_set(self, instrument_set: md_pb.InstrumentSet) -> None:
        # Expired options would otherwise keep their books (and memory) forever.
        for symbol in instrument_set.delisted_symbols:
            if self.drop(symbol):
                self._stats.delisted += 1

    def drop(self, symbol: str) -> bool:
        """Forget a book entirely (delisted instrument). True if it existed."""
        if self._books.pop(symbol, None) is None:
            return False
        self._dirty.pop(symbol, None)
        self._emitted.pop(symbol, None)
        self._fresh.pop(symbol, None)
        self._stale.discard(symbol)
        self._needs_resync.pop(symbol, None)
        self._keyframe_parts.pop(symbol, None)
        return True

    def _new_book(self, symbol: str) -> L2Book:
        book = L2Book()
        self._books[symbol] = book
        # A book first seen via a delta or reset publishes its AWAITING status once.
        self._dirty[symbol] = None
        self._needs_resync[symbol] = None
        return book

    def _confirm(self, symbol: str) -> None:
        """The VALID book was just confirmed by the venue: not stale, youngest in `_fresh`."""
        if symbol in self._stale:
            self._stale.discard(symbol)
            self._dirty[symbol] = None
        try:
            self._fresh.move_to_end(symbol)
        except KeyError:
            self._fresh[symbol] = None

    def _invalidated(self, symbol: str) -> None:
        self._dirty[symbol] = None
        self._fresh.pop(symbol, None)
        self._stale.discard(symbol)
        self._needs_resync[symbol] = None

    # -- output ------------------------------------------------------------------------

    def tops(self, now_ns: int, keyframe: bool = False) -> list[book_pb.TopOfBook]:
        """TopOfBook of every book whose top/status/flags changed since the last call
        (all books, in first-seen order, when `keyframe`)."""
        out: list[book_pb.TopOfBook] = []
        for symbol, book, state in self._changed(now_ns, keyframe):
            top = _TopOfBook()
            self._fill(top, symbol, book, state)
            out.append(top)
        return out

    def tops_into(self, batch: book_pb.TopOfBookBatch, now_ns: int, keyframe: bool = False) -> int:
        """Same as `tops`, appended straight into `batch.tops` (sets `batch.is_keyframe` when
        `keyframe`); returns how many were added. Saves the copy that
        `TopOfBookBatch(tops=core.tops(...))` makes of every message (~0.6 us each)."""
        add = batch.tops.add
        added = 0
        for symbol, book, state in self._changed(now_ns, keyframe):
            self._fill(add(), symbol, book, state)
            added += 1
        if keyframe:
            batch.is_keyframe = True
        return added

    def _changed(self, now_ns: int, keyframe: bool) -> list[tuple[str, L2Book, _TopState]]:
        """Books to publish, with their new state; records that state as emitted."""
        self._mark_stale(now_ns)
        books = self._books
        symbols = list(books) if keyframe else self._dirty
        emitted = self._emitted
        stale = self._stale
        changed: list[tuple[str, L2Book, _TopState]] = []
        for symbol in symbols:
            book = books.get(symbol)
            if book is None:
                continue
            state = _top_state(book, symbol in stale)
            if not keyframe and emitted.get(symbol) == state:
                continue
            emitted[symbol] = state
            changed.append((symbol, book, state))
        self._dirty = {}
        self._stats.emitted += len(changed)
        return changed

    def keyframe_tops_bytes(self, now_ns: int) -> tuple[bytes, int]:
        """Every book's TopOfBook, in first-seen order, as the wire bytes of a
        TopOfBookBatch's `tops` field, and how many: byte for byte what
        `tops_into(batch, now_ns, keyframe=True)` adds to a batch, with the same bookkeeping
        (sequences, emitted states), re-encoding only the books touched since the previous
        keyframe (module docstring)."""
        self._mark_stale(now_ns)
        parts = self._keyframe_parts
        for symbol in self._touched:
            parts.pop(symbol, None)
        self._touched = {}
        books = self._books
        missing = [symbol for symbol in books if symbol not in parts]
        if missing:
            self._encode_bodies(missing)
        header = self._keyframe_header
        lengths = _LENGTHS
        sequence = self.output_sequence
        frames: list[bytes] = []
        for symbol in books:
            event_ns, body = parts[symbol]
            sequence += 1
            header.event_time_ns = event_ns
            header.sequence = sequence
            head = header.SerializeToString()
            top = _TOP_HEADER_KEY + lengths[len(head)] + head + body
            size = len(top)
            frames.append(_BATCH_TOP_KEY + (lengths[size] if size < 16384 else varint(size)) + top)
        self.output_sequence = sequence
        self._dirty = {}
        self._stats.emitted += len(frames)
        return b"".join(frames), len(frames)

    def _encode_bodies(self, symbols: list[str]) -> None:
        """Cache the TopOfBook of each of `symbols` without its header: filled into one
        scratch batch and serialised at once (one protobuf call, not one per top), then cut
        at each top's frame. A touched book's state is recorded as emitted; an untouched
        one's still is (nothing else changes it)."""
        scratch = book_pb.TopOfBookBatch()
        add = scratch.tops.add
        books = self._books
        stale = self._stale
        emitted = self._emitted
        for symbol in symbols:
            book = books[symbol]
            state = _top_state(book, symbol in stale)
            emitted[symbol] = state
            self._fill_body(add(), symbol, book, state)
        data = scratch.SerializeToString()
        parts = self._keyframe_parts
        at = 0
        for symbol in symbols:
            # The frame's key (field 4, length-delimited) is one byte, then its length.
            size, at = read_varint(data, at + 1)
            parts[symbol] = (books[symbol].last_event_ns, data[at : at + size])
            at += size

    def _fill(self, top: book_pb.TopOfBook, symbol: str, book: L2Book, state: _TopState) -> None:
        # Field-by-field assignment is ~2x faster than keyword construction (upb), and
        # fields left at their defaults (False, absent optionals, 0) are not touched.
        self.output_sequence += 1
        header = top.header
        header.event_time_ns = book.last_event_ns
        header.source = SOURCE
        header.sequence = self.output_sequence
        self._fill_body(top, symbol, book, state)

    def _fill_body(
        self, top: book_pb.TopOfBook, symbol: str, book: L2Book, state: _TopState
    ) -> None:
        """Every field of `top` but its header."""
        top.symbol = symbol
        top.last_update_time_ns = book.last_change_ns
        status, stale, bid_px, bid_size, ask_px, ask_size = state
        if status is not _VALID:
            top.status = _PROTO_STATUS[status]
            return
        top.status = _PROTO_VALID
        if stale:
            top.stale = True
        if bid_px is not None and bid_size is not None:
            top.best_bid_price_native = bid_px
            top.best_bid_size_native = bid_size
            if ask_px is not None and bid_px >= ask_px:
                top.crossed = True
        if ask_px is not None and ask_size is not None:
            top.best_ask_price_native = ask_px
            top.best_ask_size_native = ask_size
        if (bid_px is None) != (ask_px is None):
            top.one_sided = True
        # Depth summary inline (L2Book.depth_summary does the same): sizes are aligned with
        # the ascending prices, so the best `depth` levels are a slice.
        depth = self._depth
        if depth > 0:
            bid_sizes = book.bid_sizes
            ask_sizes = book.ask_sizes
            top.bid_levels = min(depth, len(bid_sizes))
            top.ask_levels = min(depth, len(ask_sizes))
            top.bid_depth_size_native = sum(bid_sizes[-depth:])
            top.ask_depth_size_native = sum(ask_sizes[:depth])

    def _mark_stale(self, now_ns: int) -> None:
        limit = now_ns - self.config.stale_after_ns
        fresh = self._fresh
        books = self._books
        while fresh:
            symbol = next(iter(fresh))
            if books[symbol].last_seen_ns >= limit:
                break
            del fresh[symbol]
            self._stale.add(symbol)
            self._dirty[symbol] = None
            self._touched[symbol] = None
            self._stats.stale_transitions += 1

    # -- inspection --------------------------------------------------------------------

    def needs_resync(self) -> list[str]:
        """Symbols awaiting a snapshot or in GAP, in the order they became invalid."""
        return list(self._needs_resync)

    def book(self, symbol: str) -> L2Book | None:
        return self._books.get(symbol)

    def symbols(self) -> list[str]:
        return list(self._books)

    def is_stale(self, symbol: str) -> bool:
        return symbol in self._stale
