"""The OKX per-connection session (:class:`OkxSession`): book sequencing (``seqId`` /
``prevSeqId``) and checksum verification on a string-level book, tickers assembled from
``opt-summary`` + ``tickers`` + ``mark-price``, request/ack matching, header sequence
stamping. The live venue sends checksum 0 since June 2026: the string book is kept only for
books whose snapshot carried a checksum, and a non-zero checksum on a book without one
resyncs it (``book.checksum_unexpected``). Pure: no I/O, no clock.

OKX book sequencing needs no normalisation for the one sequence rule (``prevSeqId`` is the
previous ``seqId``, also for keep-alives and after a reset at maintenance); messages without
``seqId`` are numbered here so that they obey it too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from svc_connector.kit.fields import raw_bytes
from svc_connector.kit.requests import PendingRequests, name_venue_errors, request_channels
from svc_connector.kit.sequencing import (
    BookSequencer,
    book_reset_event,
    bridge_rest_snapshot,
    sequence_delta,
)
from svc_connector.kit.tickers import TickerMerger, fill_usd_fields, ticker_fields
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    NormalisedEvent,
    RequestAck,
    ResubscribeRequest,
    VenueRequest,
)
from svc_connector.venues.okx import constants as c
from svc_connector.venues.okx.checksum import OkxChecksumBook
from svc_connector.venues.okx.hot import OkxHotPath
from svc_connector.venues.okx.parse import (
    OWNED_FIELDS,
    BookText,
    ParsedFrame,
    parse_frame_detailed,
    parse_rest_book,
)
from svc_connector.venues.okx.symbols import channel_arg, premium_unit_from_id
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

_MAX_PENDING: Final = 10_000


@dataclass(slots=True)
class _RestBook:
    """A book waiting for its REST snapshot: the updates meanwhile, in arrival order."""

    channel: str
    # prevSeqId of the first update kept: a REST snapshot older than it is asked again.
    first_prev: int
    asked_ns: int
    updates: deque[NormalisedEvent] = field(
        default_factory=lambda: deque(maxlen=c.MAX_BUFFERED_UPDATES)
    )


class OkxSession(OkxHotPath):
    """Pure per-connection state: book sequencing + checksums, merged tickers, acks.

    Books of incremental channels (``books``, ``books-l2-tbt``, ``books50-l2-tbt``):

    - a snapshot (re)starts the book at its ``seqId`` and ends any resync;
    - an update applies when ``prevSeqId`` equals the last ``seqId``; this also accepts the
      keep-alive (empty, ``prevSeqId == seqId``) and the ``seqId`` going backwards after
      maintenance (its ``prevSeqId`` still equals the last ``seqId``);
    - an update with ``seqId`` <= the last one (otherwise not contiguous) is a duplicate:
      dropped and counted, never applied twice;
    - older messages without ``seqId`` are numbered here: the snapshot is 1 and each update
      continues from the last number (only the checksum can then detect a loss);
    - after applying, the top 25 levels of a string-level book (the venue's own strings)
      are hashed and compared with the message's ``checksum`` when it is non-zero. The
      string-level book is kept only for books whose snapshot carried a non-zero checksum
      (the venue sends 0 since June 2026); a non-zero checksum on an update of a book
      without one resyncs it like a mismatch (``book.checksum_unexpected``);
    - a gap or a checksum mismatch: the message is dropped, a ``BookReset`` is emitted and
      the book channel is resubscribed (the venue answers with a fresh snapshot); updates
      in between are dropped, the resubscribe is requested again if no snapshot came within
      ``resync_timeout_ns``;
    - no snapshot since subscribing (OKX's announced removal of the initial snapshot): the
      book is built from the REST book (``GET /api/v5/market/books``), asked for with a
      ``ResubscribeRequest`` whose reason is ``REST_SNAPSHOT_REASON`` (the client fetches
      it and hands it to :meth:`on_rest_book`). Updates are kept meanwhile; a snapshot
      whose ``seqId`` is below the first kept update's ``prevSeqId`` is asked again;
      updates with ``seqId`` <= the snapshot's are dropped, the one with ``prevSeqId`` <=
      the snapshot's ``seqId`` < its ``seqId`` continues it (emitted with
      ``prev_venue_sequence`` = the snapshot's, the one rule consumers apply), the rest
      follow in order. Once a book came without a snapshot, gaps resync from REST too;

    Tickers: ``opt-summary`` (IVs, forward, greeks), ``tickers`` (best bid/ask) and
    ``mark-price`` each own some VenueTicker fields; the session emits the merged ticker of
    the instrument each time (see :class:`TickerMerger`) with USD-per-coin prices from the
    latest forward.

    ``on_frame`` tries the hot path first (``hot.py``, :class:`OkxHotPath`); ``hot_path = False``
    leaves every frame to the checked path, ``hot_hits`` counts the frames it answered.
    """

    subscribe_method = c.SUBSCRIBE
    unsubscribe_method = c.UNSUBSCRIBE

    def __init__(
        self,
        *,
        resync_timeout_ns: int = 10_000_000_000,
        premium_units: Mapping[str, md_pb.PremiumUnit] | None = None,
        verify_checksums: bool = True,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            first_request_id=first_request_id, first_sequence=first_sequence, sequence=sequence
        )
        self._books = BookSequencer(resync_timeout_ns)
        self._strings: dict[str, OkxChecksumBook] = {}
        self._verify_checksums = verify_checksums
        self._premium_units: dict[str, md_pb.PremiumUnit] = dict(premium_units or {})
        self._contract_sizes: dict[str, float] = {}
        self._tickers = TickerMerger()
        self._pending = PendingRequests(_MAX_PENDING)
        # request id -> channels whose ack has not arrived yet (OKX acks one per argument).
        self._unacked: dict[str, set[str]] = {}
        # Books waiting for their REST snapshot, and those waiting for the update spanning it.
        self._rest_books: dict[str, _RestBook] = {}
        self._bridging: set[str] = set()
        # The venue sent an update without a snapshot: it sends none (resync from REST).
        self._no_ws_snapshots = False
        self._resync_timeout_ns = resync_timeout_ns

    @property
    def source(self) -> str:
        return c.SOURCE

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None:
        """Premium units and contract sizes of known instruments (USD-per-coin conversion)."""
        for instrument in instruments:
            self._premium_units[instrument.symbol] = instrument.premium_unit
            self._contract_sizes[instrument.symbol] = instrument.contract_size_coin

    def on_connected(self) -> None:
        self._books.reset()
        self._strings.clear()
        self._rest_books.clear()
        self._bridging.clear()
        self._pending.clear()
        self._unacked.clear()

    # ---- outgoing ----------------------------------------------------------------------------

    def encode(self, request: VenueRequest) -> str:
        """``ping`` -> the text ``ping``; (un)subscribe ``{"channels": [...]}`` -> op + args."""
        if request.method == c.PING:
            return c.PING
        request_id = str(self._take_request_id())
        channels = request_channels(request)
        args = [arg for arg in (channel_arg(ch) for ch in channels) if arg is not None]
        self._pending.add(request_id, request.method, channels)
        if request.method in (c.SUBSCRIBE, c.UNSUBSCRIBE):
            if len(self._unacked) >= _MAX_PENDING:
                self._unacked.pop(next(iter(self._unacked)))
            self._unacked[request_id] = set(channels)
        body = {"id": request_id, "op": request.method, "args": args}
        return orjson.dumps(body).decode()

    # ---- incoming ----------------------------------------------------------------------------

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        parsed = parse_frame_detailed(raw, receive_time_ns, self._premium_units, defer_tickers=True)
        result = parsed.result
        if parsed.replies or result.venue_errors:
            self._match_replies(parsed)
        if parsed.books:
            self._sequence_books(parsed, receive_time_ns)
        if any(e.kind == "ticker" for e in result.events):
            self._merge_tickers(parsed, receive_time_ns)
        return result

    def _match_replies(self, parsed: ParsedFrame) -> None:
        result = parsed.result
        for request_id, op, channel in parsed.replies:
            key = self._request_of(request_id, op, channel)
            if key is None:
                result.counts["response.unmatched"] += 1
                continue
            unacked = self._unacked[key]
            unacked.discard(channel)
            if not unacked:
                del self._unacked[key]
                request = self._pending.pop(key)
                channels = list(request[1]) if request is not None else []
                result.acks.append(RequestAck(key, op, channels))
                result.counts[f"response.{op}"] += 1
        name_venue_errors(result, self._pending)
        for error in result.venue_errors:
            if error.method in (c.SUBSCRIBE, c.UNSUBSCRIBE):
                self._unacked.pop(str(error.request_id), None)

    def _request_of(self, request_id: int | str | None, op: str, channel: str) -> str | None:
        if isinstance(request_id, str) and request_id in self._unacked:
            return request_id
        # Older venue versions do not echo the id: the oldest request awaiting this channel.
        for key, unacked in self._unacked.items():
            pending = self._pending.get(key)
            if pending is not None and pending[0] == op and channel in unacked:
                return key
        return None

    def _sequence_books(self, parsed: ParsedFrame, now_ns: int) -> None:
        result = parsed.result
        books = parsed.books
        if len(books) == 1 and len(result.events) == 1 and books[0][0] is result.events[0]:
            # The usual frame: one book message and nothing else.
            item, text = books[0]
            if item.event.WhichOneof("event") == "book_snapshot":
                result.events = self._on_snapshot(item, text, result, now_ns)
            else:
                result.events = self._on_update(item, text, result, now_ns)
            return
        texts = {id(book): book_text for book, book_text in books}
        events: list[NormalisedEvent] = []
        for event in result.events:
            found = texts.get(id(event))
            if found is None:
                events.append(event)
            elif event.event.WhichOneof("event") == "book_snapshot":
                events.extend(self._on_snapshot(event, found, result, now_ns))
            else:
                events.extend(self._on_update(event, found, result, now_ns))
        result.events = events

    def _on_snapshot(
        self, item: NormalisedEvent, text: BookText, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        snapshot = item.event.book_snapshot
        if not text.has_sequence:
            snapshot.venue_sequence = 1
        self._rest_books.pop(text.symbol, None)
        self._bridging.discard(text.symbol)
        self._books.snapshot(text.symbol, snapshot.venue_sequence)
        # A checksum book only for books the venue checksums (it sends 0 since June 2026).
        if text.checksum and self._verify_checksums:
            strings = OkxChecksumBook()
            strings.apply_snapshot(text.bids, text.asks)
            self._strings[text.symbol] = strings
        else:
            self._strings.pop(text.symbol, None)
        return self._checked(item, text, result, now_ns)

    def _on_update(
        self, item: NormalisedEvent, text: BookText, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        delta = item.event.book_delta
        symbol = text.symbol
        if not text.has_sequence:
            last = self._books.last_sequence(symbol)
            if last is not None:
                delta.prev_venue_sequence = last
                delta.venue_sequence = last + 1
        elif symbol in self._rest_books:
            return self._keep_for_rest(item, result, now_ns)
        elif self._books.last_sequence(symbol) is None and not self._books.is_resyncing(symbol):
            # No snapshot since subscribing: the venue sends none, the REST book will do.
            self._no_ws_snapshots = True
            result.counts["book.no_ws_snapshot"] += 1
            self._ask_rest(symbol, result.channel, delta.prev_venue_sequence, result, now_ns)
            return self._keep_for_rest(item, result, now_ns)
        events = self._sequenced(item, result, now_ns)
        if len(events) != 1 or events[0] is not item:
            return events
        strings = self._strings.get(text.symbol)
        if strings is not None:
            strings.apply_update(text.bids, text.asks)
        return self._checked(item, text, result, now_ns)

    # ---- books built from a REST snapshot ------------------------------------------------------

    def _ask_rest(
        self, symbol: str, channel: str, first_prev: int, result: FrameResult, now_ns: int
    ) -> None:
        self._rest_books[symbol] = _RestBook(channel, first_prev, now_ns)
        self._books.start_resync(symbol, now_ns)
        self._bridging.discard(symbol)
        result.resubscribes.append(ResubscribeRequest(symbol, channel, c.REST_SNAPSHOT_REASON))
        result.counts["book.rest_snapshot_requested"] += 1

    def _keep_for_rest(
        self, item: NormalisedEvent, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        symbol = item.event.book_delta.symbol
        waiting = self._rest_books[symbol]
        waiting.updates.append(item)
        result.counts["book.buffered"] += 1
        if now_ns - waiting.asked_ns >= self._resync_timeout_ns:
            waiting.asked_ns = now_ns
            reason = c.REST_SNAPSHOT_REASON
            result.resubscribes.append(ResubscribeRequest(symbol, waiting.channel, reason))
            result.counts["book.rest_snapshot_requested"] += 1
        return []

    def _sequenced(
        self, item: NormalisedEvent, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        """The sequence rule, the update spanning a REST snapshot, and, once the venue sends
        no snapshots, a resync from REST instead of a resubscribe."""
        delta = item.event.book_delta
        symbol = delta.symbol
        bridged = bridge_rest_snapshot(self._books, self._bridging, item, result)
        if bridged is not None:
            return bridged
        asked = len(result.resubscribes)
        events = sequence_delta(self._books, item, result.channel, result, now_ns)
        if self._no_ws_snapshots and len(result.resubscribes) > asked:
            # A gap: resubscribing brings no snapshot, the REST book does.
            request = result.resubscribes.pop()
            self._ask_rest(symbol, request.channel, delta.prev_venue_sequence, result, now_ns)
            self._rest_books[symbol].updates.append(item)
        return events

    def expect_rest_book(self, symbol: str, channel: str, now_ns: int) -> bool:
        """A book subscribed a while ago has neither a snapshot nor an update (a quiet book
        on a venue that sends no snapshots): True when the client should fetch its REST
        book (updates are kept from now on, any snapshot seqId will do)."""
        books = self._books
        if (
            symbol in self._rest_books
            or books.last_sequence(symbol) is not None
            or books.is_resyncing(symbol)
        ):
            return False
        self._no_ws_snapshots = True
        self._rest_books[symbol] = _RestBook(channel, -1, now_ns)
        books.start_resync(symbol, now_ns)
        return True

    def on_rest_book(self, body: bytes | str, symbol: str, receive_time_ns: int) -> FrameResult:
        """The REST book of ``symbol``, asked for by a ``REST_SNAPSHOT_REASON`` request: the
        snapshot and the kept updates that follow it (class docstring). Stamped like a
        frame's result; never raises."""
        result = FrameResult()
        waiting = self._rest_books.get(symbol)
        if waiting is None:
            result.counts["book.rest_snapshot_unexpected"] += 1
            return result
        result.channel = waiting.channel
        event, reason = parse_rest_book(body, symbol, receive_time_ns)
        if event is None:
            # Asked again by the next update after the resync timeout.
            result.counts["book.rest_snapshot_bad"] += 1
            result.dead_letters.append(DeadLetter(raw_bytes(body), reason))
            return result
        sequence = event.event.book_snapshot.venue_sequence
        if sequence < waiting.first_prev:
            # Older than the updates kept: they cannot continue it. Ask again.
            result.counts["book.rest_snapshot_too_old"] += 1
            waiting.asked_ns = receive_time_ns
            reason = c.REST_SNAPSHOT_REASON
            result.resubscribes.append(ResubscribeRequest(symbol, waiting.channel, reason))
            return result
        del self._rest_books[symbol]
        self._books.snapshot(symbol, sequence)
        self._strings.pop(symbol, None)
        self._bridging.add(symbol)
        result.counts["book.rest_snapshot"] += 1
        result.events.append(event)
        for item in waiting.updates:
            if symbol in self._rest_books:  # a gap among the kept updates: asked again
                self._rest_books[symbol].updates.append(item)
                continue
            result.events.extend(self._sequenced(item, result, receive_time_ns))
        return self.stamp(result)

    def _checked(
        self, item: NormalisedEvent, text: BookText, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        """The event if the book's top 25 levels hash to the venue's checksum, else a reset."""
        if text.checksum == 0:
            result.counts["book.checksum_absent"] += 1
            return [item]
        if not self._verify_checksums:
            result.counts["book.checksum_not_verified"] += 1
            return [item]
        strings = self._strings.get(text.symbol)
        if strings is None:
            # A checksum on a book whose snapshot had none: nothing to verify it against.
            result.counts["book.checksum_unexpected"] += 1
            reason = f"checksum {text.checksum} on a book whose snapshot had none"
            return [
                book_reset_event(
                    self._books, item, text.symbol, result.channel, reason, result, now_ns
                )
            ]
        actual = strings.checksum()
        if actual == text.checksum:
            result.counts["book.checksum_ok"] += 1
            return [item]
        result.counts["book.checksum_mismatch"] += 1
        del self._strings[text.symbol]
        reason = f"checksum mismatch: venue {text.checksum}, book {actual}"
        return [
            book_reset_event(self._books, item, text.symbol, result.channel, reason, result, now_ns)
        ]

    def _merge_tickers(self, parsed: ParsedFrame, receive_time_ns: int) -> None:
        result = parsed.result
        owned = OWNED_FIELDS.get(result.channel.partition(":")[0], ())
        deferred = parsed.ticker_parts
        units = self._premium_units
        sizes = self._contract_sizes
        merger = self._tickers
        events: list[NormalisedEvent] = []
        for item in result.events:
            if item.kind != "ticker":
                events.append(item)
                continue
            parts = deferred.get(id(item.event))
            header: common_pb.EventHeader | dict[str, Any]
            if parts is None:
                ticker = item.event.ticker
                symbol, header = ticker.symbol, ticker.header
                fields = ticker_fields(ticker, owned)
            else:
                symbol, event_time_ns, fields = parts
                header = {
                    "event_time_ns": event_time_ns,
                    "receive_time_ns": receive_time_ns,
                    "source": c.SOURCE,
                }
            merged = merger.merge_fields(symbol, fields, owned)
            unit = units.get(symbol) or premium_unit_from_id(symbol)
            fill_usd_fields(merged, unit, sizes.get(symbol))
            merged["header"] = header
            merged["symbol"] = symbol
            events.append(
                NormalisedEvent(item.currency, "ticker", md_pb.MarketDataEvent(ticker=merged))
            )
        result.events = events
