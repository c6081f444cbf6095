"""Book delta sequencing for "snapshot then deltas" books: per-symbol verdicts (apply / stale /
gap / resync) and the events a delta becomes (the delta, nothing, or a BookReset plus a
resubscribe). Pure: time is an argument.

Every venue session emits deltas that obey one rule, the one ``BookDelta.prev_venue_sequence``
states in the proto: a delta applies when its ``prev_venue_sequence`` equals the book's
sequence. A venue whose protocol has exceptions to that rule normalises them in its own
session (``venues/<venue>/session.py``) before asking the sequencer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from svc_connector.venues.base import FrameResult, NormalisedEvent, ResubscribeRequest
from volstream.v1 import market_data_pb2 as md_pb


class DeltaVerdict(StrEnum):
    APPLY = "apply"
    # change already covered by the book (duplicate or replayed old message): drop, no gap.
    STALE = "stale"
    # a change is missing: the book is broken, resync.
    GAP = "gap"
    # no snapshot since (re)subscribing: the delta has nothing to apply to; drop.
    NO_SNAPSHOT = "no_snapshot"
    # a resync is in flight: drop until the fresh snapshot arrives.
    RESYNCING = "resyncing"
    # a resync has been in flight longer than the timeout: drop and ask again.
    RESYNC_AGAIN = "resync_again"


@dataclass(slots=True)
class _BookState:
    last_sequence: int
    resync_since_ns: int | None = None


class BookSequencer:
    """Per-symbol sequence state for "snapshot then deltas" books.

    Rules, in order, for a delta (``prev``, ``seq``) on a book whose last sequence is ``last``:

    1. resync in flight -> RESYNCING (or RESYNC_AGAIN after ``resync_timeout_ns``);
    2. no snapshot yet -> NO_SNAPSHOT;
    3. ``prev == last`` -> APPLY (contiguous; also covers keep-alives with prev == seq);
    4. ``seq <= last`` -> STALE: a duplicate or a replayed old change. The book already
       contains it (a snapshot at ``last`` includes every change up to ``last``), so it is
       dropped without breaking the book, and never applied twice;
    5. otherwise -> GAP: something between ``last`` and ``prev`` is missing.

    Venue quirks (Deribit ``prev_change_id`` 0 for a just-listed option) are handled by the
    venue session before asking the sequencer.
    """

    def __init__(self, resync_timeout_ns: int) -> None:
        self._books: dict[str, _BookState] = {}
        self._resync_timeout_ns = resync_timeout_ns

    def reset(self) -> None:
        self._books.clear()

    def snapshot(self, symbol: str, sequence: int) -> None:
        self._books[symbol] = _BookState(sequence)

    def last_sequence(self, symbol: str) -> int | None:
        state = self._books.get(symbol)
        if state is None or state.resync_since_ns is not None:
            return None
        return state.last_sequence

    def is_resyncing(self, symbol: str) -> bool:
        state = self._books.get(symbol)
        return state is not None and state.resync_since_ns is not None

    def check_delta(self, symbol: str, prev: int, sequence: int, now_ns: int) -> DeltaVerdict:
        state = self._books.get(symbol)
        if state is None:
            return DeltaVerdict.NO_SNAPSHOT
        if state.resync_since_ns is not None:
            if now_ns - state.resync_since_ns >= self._resync_timeout_ns:
                state.resync_since_ns = now_ns
                return DeltaVerdict.RESYNC_AGAIN
            return DeltaVerdict.RESYNCING
        if prev == state.last_sequence:
            state.last_sequence = sequence
            return DeltaVerdict.APPLY
        if sequence <= state.last_sequence:
            return DeltaVerdict.STALE
        return DeltaVerdict.GAP

    def start_resync(self, symbol: str, now_ns: int) -> None:
        state = self._books.setdefault(symbol, _BookState(0))
        state.resync_since_ns = now_ns

    def forget(self, symbol: str) -> None:
        self._books.pop(symbol, None)


def book_reset_event(
    books: BookSequencer,
    item: NormalisedEvent,
    symbol: str,
    channel: str,
    reason: str,
    result: FrameResult,
    now_ns: int,
) -> NormalisedEvent:
    """Start a resync of ``symbol``: a BookReset (header of ``item``) plus a resubscribe."""
    books.start_resync(symbol, now_ns)
    reset = md_pb.BookReset(symbol=symbol, reason=reason)
    header = item.event_header()
    if header is not None:
        reset.header.CopyFrom(header)
    result.resubscribes.append(ResubscribeRequest(symbol, channel, reason))
    return NormalisedEvent(item.currency, "book", md_pb.MarketDataEvent(book_reset=reset))


@dataclass(frozen=True, slots=True)
class SequenceTerms:
    """The venue's words for a delta and its sequence fields, in BookReset reasons."""

    delta: str = "delta"
    prev: str = "prev"
    last: str = "last"
    sequence: str = "sequence"


GENERIC_TERMS = SequenceTerms()


def sequence_delta(
    books: BookSequencer,
    item: NormalisedEvent,
    channel: str,
    result: FrameResult,
    now_ns: int,
    terms: SequenceTerms = GENERIC_TERMS,
) -> list[NormalisedEvent]:
    """The events a BookDelta becomes after the sequence check (see :class:`BookSequencer`).

    Contiguous -> the delta; duplicate/replayed -> nothing (``book.stale_dropped``); while a
    resync is in flight -> nothing (asked again after the resync timeout); gap or no
    snapshot -> a BookReset (its reason in the venue's ``terms``) and a ResubscribeRequest
    for ``channel``.
    """
    delta = item.event.book_delta
    symbol, prev, sequence = delta.symbol, delta.prev_venue_sequence, delta.venue_sequence
    last = books.last_sequence(symbol)
    verdict = books.check_delta(symbol, prev, sequence, now_ns)
    if verdict == DeltaVerdict.APPLY:
        return [item]
    if verdict == DeltaVerdict.STALE:
        result.counts["book.stale_dropped"] += 1
        return []
    if verdict == DeltaVerdict.RESYNCING:
        result.counts["book.dropped_while_resyncing"] += 1
        return []
    if verdict == DeltaVerdict.RESYNC_AGAIN:
        result.counts["book.resync_again"] += 1
        result.resubscribes.append(
            ResubscribeRequest(symbol, channel, "no snapshot after resubscribing")
        )
        return []
    if verdict == DeltaVerdict.NO_SNAPSHOT:
        reason = f"{terms.delta} {sequence} without a snapshot since subscribing"
        result.counts["book.no_snapshot"] += 1
    else:
        reason = f"gap: {terms.prev} {prev} != {terms.last} {last} ({terms.sequence} {sequence})"
        result.counts["book.gap"] += 1
    return [book_reset_event(books, item, symbol, channel, reason, result, now_ns)]


def bridge_rest_snapshot(
    books: BookSequencer, bridging: set[str], item: NormalisedEvent, result: FrameResult
) -> list[NormalisedEvent] | None:
    """The first updates after a book built from a REST snapshot (Binance, OKX without a
    websocket snapshot), for a symbol in ``bridging``: an update at or below the snapshot's
    sequence is stale (nothing); the first one spanning it (prev <= snapshot < sequence) is
    emitted as continuing the snapshot (prev = the snapshot's sequence, the one rule
    consumers apply: its levels are absolute sizes) and ends the bridge. None: not bridging,
    or no span (the ordinary sequence rule decides)."""
    delta = item.event.book_delta
    symbol = delta.symbol
    if symbol not in bridging:
        return None
    last = books.last_sequence(symbol)
    if last is not None and delta.venue_sequence <= last:
        result.counts["book.stale_dropped"] += 1
        return []
    bridging.discard(symbol)
    if last is None or delta.prev_venue_sequence > last:
        return None
    delta.prev_venue_sequence = last
    books.snapshot(symbol, delta.venue_sequence)
    result.counts["book.bridged"] += 1
    return [item]


def sequence_book_events(
    books: BookSequencer,
    result: FrameResult,
    on_delta: Callable[[NormalisedEvent], list[NormalisedEvent]],
) -> None:
    """Sequence the book events of ``result`` in place: a BookSnapshot (not a periodic one)
    restarts its book, a BookDelta becomes ``on_delta(item)`` (the venue's rules around
    :func:`sequence_delta`), every other event passes as it is."""
    events: list[NormalisedEvent] = []
    for item in result.events:
        case = item.event.WhichOneof("event")
        if case == "book_snapshot":
            snapshot = item.event.book_snapshot
            if not snapshot.is_periodic:
                books.snapshot(snapshot.symbol, snapshot.venue_sequence)
            events.append(item)
        elif case == "book_delta":
            events.extend(on_delta(item))
        else:
            events.append(item)
    result.events = events
