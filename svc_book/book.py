"""One instrument's L2 book: price levels per side, sequence tracking, top of book.

Each side is two aligned lists, prices ascending and their sizes, so the best level is read
in O(1) (`bid_prices[-1]`, `ask_prices[0]`) and the depth summary is a C-level slice sum
(`sum(bid_sizes[-n:])`). A level update is one C bisect; adding or removing a level is a
list insert/delete (a memmove of a few hundred pointers at most). Nothing is sorted per
delta, and no float is hashed on the hot path. (A price->size dict beside a sorted price
list was measured too: level updates cost about the same, but the depth summary read on
every top-of-book emission cost ~2.5x more in dict lookups.)

Sequencing (see `L2Book.apply_delta`) has one venue-neutral rule, the one the proto states
for `BookDelta.prev_venue_sequence`: a delta applies when its `prev_sequence` equals the
book's sequence (this also accepts keep-alives, prev == sequence == the book's, and a
sequence that restarts lower after venue maintenance, whose prev is still the book's).
Otherwise a delta whose sequence is at or below the book's is a duplicate (ignored), and
anything else is a gap: the book is cleared and stays invalid until the next snapshot. Venue
exceptions (Deribit's just-listed option, Binance's first diff after a REST snapshot) are
normalised by the connector, in each venue's session, before they reach the bus.

Bad input never raises. A level is valid when its price is finite and > 0 and its size is
finite and >= 0. A snapshot with any invalid level is rejected (book awaits another
snapshot); a contiguous delta with any invalid level is rejected: the book is cleared and
goes to GAP (nothing of that delta is ever visible), because it no longer matches the
venue's book and needs a resync.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

Level = tuple[float, float]


class LevelLike(Protocol):
    """A price level: `volstream.v1.BookLevel` or `PairLevel`."""

    @property
    def price_native(self) -> float: ...

    @property
    def size_native(self) -> float: ...


class PairLevel(NamedTuple):
    price_native: float
    size_native: float


_INF = math.inf


class BookStatus(enum.IntEnum):
    """Mirrors volstream.v1.BookStatus numbers so values can be written into the proto."""

    VALID = 1
    AWAITING_SNAPSHOT = 2
    GAP = 3


class DeltaResult(enum.Enum):
    # Applied, and a best level (price or size) was touched: the top may have changed.
    APPLIED_AT_TOP = "applied_at_top"
    # Applied below the best levels only (or an empty delta advancing the sequence).
    APPLIED = "applied"
    # Contiguous, no levels and sequence unchanged (OKX keep-alive): confirms the book is alive.
    KEEPALIVE = "keepalive"
    # Already applied (sequence at or below the book's and not contiguous): ignored.
    DUPLICATE = "duplicate"
    # Sequence break: the book is now GAP.
    GAP = "gap"
    # The book is not valid (awaiting a snapshot or after a gap): the delta cannot apply.
    NOT_VALID = "not_valid"
    # Contiguous but carried an invalid level: not applied, the book is now GAP.
    REJECTED = "rejected"


# Module-level aliases: an enum member lookup costs ~75 ns, a global ~15 ns (hot path).
_VALID = BookStatus.VALID
_APPLIED = DeltaResult.APPLIED
_APPLIED_AT_TOP = DeltaResult.APPLIED_AT_TOP
_NOT_VALID = DeltaResult.NOT_VALID


def _all_valid(levels: Sequence[Level]) -> bool:
    # Written so NaN fails every comparison. A plain loop: faster than all(<generator>).
    for price, size in levels:  # noqa: SIM110
        if not (0.0 < price < _INF and 0.0 <= size < _INF):
            return False
    return True


class L2Book:
    """L2 book of one instrument. Not thread-safe; one owner (the partition's core)."""

    __slots__ = (
        "ask_prices",
        "ask_sizes",
        "bid_prices",
        "bid_sizes",
        "last_change_ns",
        "last_event_ns",
        "last_seen_ns",
        "periodic",
        "sequence",
        "status",
    )

    def __init__(self) -> None:
        # Prices ascending (best bid last, best ask first); sizes aligned with them.
        self.bid_prices: list[float] = []
        self.bid_sizes: list[float] = []
        self.ask_prices: list[float] = []
        self.ask_sizes: list[float] = []
        self.sequence = 0
        self.status = BookStatus.AWAITING_SNAPSHOT
        # True when the last snapshot was a periodic full top-N push.
        self.periodic = False
        # Event time of the last change to the levels (or snapshot).
        self.last_change_ns = 0
        # Event time of the last message confirming the book (change, snapshot, keep-alive).
        self.last_seen_ns = 0
        # Event time of the last message that touched the book at all (incl. gap, reset).
        self.last_event_ns = 0

    # -- updates -----------------------------------------------------------------------

    def apply_snapshot(
        self,
        bids: Sequence[Level],
        asks: Sequence[Level],
        sequence: int,
        event_time_ns: int,
        periodic: bool = False,
    ) -> bool:
        """Replace the whole book. False (book cleared, AWAITING_SNAPSHOT) on an invalid level.

        Size-0 levels in a snapshot are not levels and are skipped; a repeated price keeps
        its last size.
        """
        self._touch_event(event_time_ns)
        if not (_all_valid(bids) and _all_valid(asks)):
            self._invalidate(BookStatus.AWAITING_SNAPSHOT)
            return False
        self.bid_prices, self.bid_sizes = _sorted_side(bids)
        self.ask_prices, self.ask_sizes = _sorted_side(asks)
        self.sequence = sequence
        self.status = BookStatus.VALID
        self.periodic = periodic
        self._touch_change(event_time_ns)
        return True

    def apply_delta(
        self,
        bids: Sequence[Level],
        asks: Sequence[Level],
        sequence: int,
        prev_sequence: int,
        event_time_ns: int,
    ) -> DeltaResult:
        """Apply changed (price, size) levels (size 0 deletes) if the delta continues the
        book's sequence. Same as `apply_delta_levels`, for plain tuples."""
        return self.apply_delta_levels(
            [PairLevel(price, size) for price, size in bids],
            [PairLevel(price, size) for price, size in asks],
            sequence,
            prev_sequence,
            event_time_ns,
        )

    def apply_delta_levels(
        self,
        bids: Sequence[LevelLike],
        asks: Sequence[LevelLike],
        sequence: int,
        prev_sequence: int,
        event_time_ns: int,
    ) -> DeltaResult:
        """Apply changed levels (size 0 deletes) if the delta continues the book's sequence.

        Levels are anything with `price_native` and `size_native`: the `BookLevel`s of a
        `BookDelta` are passed as they are (no copy on the hot path).
        """
        # Hot path: timestamps are updated inline rather than through the _touch helpers.
        if event_time_ns > self.last_event_ns:
            self.last_event_ns = event_time_ns
        if self.status is not _VALID:
            return _NOT_VALID
        if prev_sequence != self.sequence:
            if sequence <= self.sequence:
                return DeltaResult.DUPLICATE
            self._invalidate(BookStatus.GAP)
            return DeltaResult.GAP
        bid_count = len(bids)
        ask_count = len(asks)
        if not bid_count and not ask_count and sequence == prev_sequence:
            self.sequence = sequence
            self._touch_seen(event_time_ns)
            return DeltaResult.KEEPALIVE
        # One pass: an invalid level stops it and the book is cleared anyway, so no
        # half-applied delta survives. A single level is indexed rather than iterated
        # (iterating a protobuf repeated field costs more than the level itself).
        bid_outcome = ask_outcome = _UNTOUCHED
        if bid_count:
            bid_outcome = _apply_bids(
                self.bid_prices, self.bid_sizes, (bids[0],) if bid_count == 1 else bids
            )
        if ask_count and bid_outcome:
            ask_outcome = _apply_asks(
                self.ask_prices, self.ask_sizes, (asks[0],) if ask_count == 1 else asks
            )
        if not (bid_outcome and ask_outcome):
            self._invalidate(BookStatus.GAP)
            return DeltaResult.REJECTED
        self.sequence = sequence
        if event_time_ns > self.last_change_ns:
            self.last_change_ns = event_time_ns
        if event_time_ns > self.last_seen_ns:
            self.last_seen_ns = event_time_ns
        if bid_outcome == _AT_TOP or ask_outcome == _AT_TOP:
            return _APPLIED_AT_TOP
        return _APPLIED

    def reset(self, event_time_ns: int) -> None:
        """The source lost the sequence: unusable until the next snapshot."""
        self._touch_event(event_time_ns)
        self._invalidate(BookStatus.AWAITING_SNAPSHOT)

    def _invalidate(self, status: BookStatus) -> None:
        self.status = status
        self.bid_prices = []
        self.bid_sizes = []
        self.ask_prices = []
        self.ask_sizes = []

    def _touch_event(self, event_time_ns: int) -> None:
        if event_time_ns > self.last_event_ns:
            self.last_event_ns = event_time_ns

    def _touch_seen(self, event_time_ns: int) -> None:
        if event_time_ns > self.last_seen_ns:
            self.last_seen_ns = event_time_ns

    def _touch_change(self, event_time_ns: int) -> None:
        if event_time_ns > self.last_change_ns:
            self.last_change_ns = event_time_ns
        if event_time_ns > self.last_seen_ns:
            self.last_seen_ns = event_time_ns

    # -- reads -------------------------------------------------------------------------

    @property
    def is_valid(self) -> bool:
        return self.status is BookStatus.VALID

    @property
    def bids(self) -> dict[float, float]:
        """Bid levels as a price -> size dict (a copy, for inspection)."""
        return dict(zip(self.bid_prices, self.bid_sizes, strict=True))

    @property
    def asks(self) -> dict[float, float]:
        """Ask levels as a price -> size dict (a copy, for inspection)."""
        return dict(zip(self.ask_prices, self.ask_sizes, strict=True))

    def best_bid(self) -> Level | None:
        if not self.bid_prices:
            return None
        return self.bid_prices[-1], self.bid_sizes[-1]

    def best_ask(self) -> Level | None:
        if not self.ask_prices:
            return None
        return self.ask_prices[0], self.ask_sizes[0]

    @property
    def crossed(self) -> bool:
        """Best bid at or above best ask (both sides present)."""
        return bool(self.bid_prices and self.ask_prices) and (
            self.bid_prices[-1] >= self.ask_prices[0]
        )

    @property
    def one_sided(self) -> bool:
        """Exactly one side is empty."""
        return bool(self.bid_prices) != bool(self.ask_prices)

    def bid_levels(self, depth: int | None = None) -> list[Level]:
        """Bids best first, at most `depth` of them."""
        if depth is not None and depth <= 0:
            return []
        start = 0 if depth is None else max(len(self.bid_prices) - depth, 0)
        levels = list(zip(self.bid_prices[start:], self.bid_sizes[start:], strict=True))
        levels.reverse()
        return levels

    def ask_levels(self, depth: int | None = None) -> list[Level]:
        """Asks best first, at most `depth` of them."""
        end = len(self.ask_prices) if depth is None else max(depth, 0)
        return list(zip(self.ask_prices[:end], self.ask_sizes[:end], strict=True))

    def depth_summary(self, depth: int) -> tuple[int, float, int, float]:
        """(bid levels, bid size, ask levels, ask size) over the best `depth` levels per side."""
        if depth <= 0:
            return 0, 0.0, 0, 0.0
        bid_levels = min(depth, len(self.bid_prices))
        ask_levels = min(depth, len(self.ask_prices))
        return (
            bid_levels,
            sum(self.bid_sizes[-depth:]),
            ask_levels,
            sum(self.ask_sizes[:depth]),
        )


def _sorted_side(levels: Sequence[Level]) -> tuple[list[float], list[float]]:
    """Snapshot side -> aligned ascending (prices, sizes); size 0 skipped, last size wins."""
    by_price = {price: size for price, size in levels if size > 0.0}
    prices = sorted(by_price)
    return prices, [by_price[price] for price in prices]


# Outcome of applying one side's levels; falsy means an invalid level was met.
_INVALID = 0
_UNTOUCHED = 1
_AT_TOP = 2


def _apply_bids(prices: list[float], sizes: list[float], levels: Iterable[LevelLike]) -> int:
    """Apply bid levels in order (prices ascending: the best bid is the last element)."""
    outcome = _UNTOUCHED
    for level in levels:
        price = level.price_native
        size = level.size_native
        if not (0.0 < price < _INF and 0.0 <= size < _INF):
            return _INVALID
        i = bisect_left(prices, price)
        count = len(prices)
        if i < count and prices[i] == price:
            if size == 0.0:
                del prices[i]
                del sizes[i]
            else:
                sizes[i] = size
            if i == count - 1:
                outcome = _AT_TOP
        elif size != 0.0:
            prices.insert(i, price)
            sizes.insert(i, size)
            if i == count:
                outcome = _AT_TOP
        # else: deleting an unknown level is a no-op (venues send deletes for levels we never had).
    return outcome


def _apply_asks(prices: list[float], sizes: list[float], levels: Iterable[LevelLike]) -> int:
    """Apply ask levels in order (prices ascending: the best ask is the first element)."""
    outcome = _UNTOUCHED
    for level in levels:
        price = level.price_native
        size = level.size_native
        if not (0.0 < price < _INF and 0.0 <= size < _INF):
            return _INVALID
        i = bisect_left(prices, price)
        if i < len(prices) and prices[i] == price:
            if size == 0.0:
                del prices[i]
                del sizes[i]
            else:
                sizes[i] = size
            if i == 0:
                outcome = _AT_TOP
        elif size != 0.0:
            prices.insert(i, price)
            sizes.insert(i, size)
            if i == 0:
                outcome = _AT_TOP
    return outcome
