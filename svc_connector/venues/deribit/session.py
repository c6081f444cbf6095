"""The Deribit per-connection session (:class:`DeribitSession`): book sequencing
(``change_id`` / ``prev_change_id``), request/response matching, header sequence stamping.
Pure: no I/O, no clock.

What it normalises for the one sequence rule (a delta applies when its
``prev_venue_sequence`` equals the book's sequence): the first change of a just-listed
option has ``prev_change_id`` 0, relative to an empty book; it is emitted after an empty
BookSnapshot at sequence 0, so that it continues that book like any other change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import orjson

from svc_connector.kit.requests import PendingRequests, match_acks, request_channels
from svc_connector.kit.sequencing import (
    BookSequencer,
    SequenceTerms,
    sequence_book_events,
    sequence_delta,
)
from svc_connector.venues.base import FrameResult, NormalisedEvent, RequestAck, VenueRequest
from svc_connector.venues.deribit import constants as c
from svc_connector.venues.deribit.hot import DeribitHotPath
from svc_connector.venues.deribit.parse import parse_frame
from volstream.v1 import market_data_pb2 as md_pb

# Deribit's words in BookReset reasons.
TERMS = SequenceTerms(
    delta="change", prev="prev_change_id", last="last change_id", sequence="change_id"
)


class DeribitSession(DeribitHotPath):
    """Pure per-connection state: book sequencing, request matching, header sequences.

    Book rules (``book.{inst}.{interval}``), on top of :class:`BookSequencer`:

    - a snapshot (re)starts the book at its ``change_id`` and ends any resync;
    - a change applies when ``prev_change_id`` equals the last ``change_id``;
    - a change with ``change_id`` <= the last one is a duplicate or replayed old change:
      dropped and counted (``book.stale_dropped``), never applied twice, not a gap;
    - a change with ``prev_change_id`` 0 (a just-listed option) is relative to an empty
      book: it is emitted as an empty snapshot at sequence 0 followed by the change, so
      that consumers applying "prev == last" stay consistent (``book.restart_from_empty``);
    - any other mismatch, or a change with no snapshot since subscribing, is a gap: the
      change is dropped, a ``BookReset`` is emitted and the book channel is resubscribed
      (the venue answers with a fresh snapshot); changes in between are dropped, and the
      resubscribe is requested again if no snapshot came within ``resync_timeout_ns``.

    ``header.sequence`` is stamped from a counter that runs for the session's lifetime
    (across reconnects), or from ``sequence()`` when given (the connector shares one counter
    between its connections so that (source, sequence) stays unique).
    """

    subscribe_method = c.SUBSCRIBE
    unsubscribe_method = c.UNSUBSCRIBE

    def __init__(
        self,
        *,
        resync_timeout_ns: int = 10_000_000_000,
        premium_units: Mapping[str, md_pb.PremiumUnit] | None = None,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            first_request_id=first_request_id, first_sequence=first_sequence, sequence=sequence
        )
        self._books = BookSequencer(resync_timeout_ns)
        self._premium_units = dict(premium_units or {})
        self._pending = PendingRequests()

    @property
    def source(self) -> str:
        return c.SOURCE

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None:
        """Premium units of known instruments (for USD-per-coin conversion of tickers)."""
        for instrument in instruments:
            self._premium_units[instrument.symbol] = instrument.premium_unit

    def on_connected(self) -> None:
        self._books.reset()
        self._pending.clear()

    # ---- outgoing ----------------------------------------------------------------------------

    def encode(self, request: VenueRequest) -> str:
        request_id = self._take_request_id()
        channels = request_channels(request)
        self._pending.add(request_id, request.method, channels)
        body = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": request.method,
            "params": dict(request.params),
        }
        return orjson.dumps(body).decode()

    # ---- incoming ----------------------------------------------------------------------------

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        result = parse_frame(raw, receive_time_ns, self._premium_units)
        if result.acks or result.venue_errors:
            self._match_responses(result)
        if any(e.kind == "book" for e in result.events):
            sequence_book_events(
                self._books, result, lambda item: self._on_delta(item, result, receive_time_ns)
            )
        return result

    def _match_responses(self, result: FrameResult) -> None:
        def confirm(ack: RequestAck, requested: tuple[str, ...]) -> None:
            method = ack.method
            if method not in (c.SUBSCRIBE, c.UNSUBSCRIBE):
                return
            # Deribit answers a (un)subscribe with the channels it now (un)subscribed.
            if not isinstance(ack.result, list):
                result.counts["response.bad_channel_list"] += 1
                return
            channels = [ch for ch in ack.result if isinstance(ch, str)]
            if method == c.SUBSCRIBE:
                refused = len(set(requested) - set(channels))
                if refused:
                    result.counts["subscribe.unconfirmed_channels"] += refused
            (result.subscribed if method == c.SUBSCRIBE else result.unsubscribed).extend(channels)

        match_acks(result, self._pending, confirm)

    def _on_delta(
        self, item: NormalisedEvent, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        delta = item.event.book_delta
        if delta.prev_venue_sequence == 0:
            restarted = self._restart_from_empty(item, result)
            if restarted is not None:
                return restarted
        return sequence_delta(self._books, item, result.channel, result, now_ns, TERMS)

    def _restart_from_empty(
        self, item: NormalisedEvent, result: FrameResult
    ) -> list[NormalisedEvent] | None:
        """A change with ``prev_change_id`` 0 on a followed book (not at 0, no resync): the
        empty snapshot at 0 and the change, or nothing for a replay; None: the usual rules."""
        delta = item.event.book_delta
        symbol, sequence = delta.symbol, delta.venue_sequence
        last = self._books.last_sequence(symbol)
        if last == 0 or self._books.is_resyncing(symbol):
            return None
        if last is not None and sequence <= last:
            result.counts["book.stale_dropped"] += 1
            return []
        # Just-listed instrument: the change is relative to an empty book.
        result.counts["book.restart_from_empty"] += 1
        empty = md_pb.BookSnapshot(symbol=symbol, venue_sequence=0)
        empty.header.CopyFrom(delta.header)
        self._books.snapshot(symbol, sequence)
        return [
            NormalisedEvent(item.currency, "book", md_pb.MarketDataEvent(book_snapshot=empty)),
            item,
        ]
