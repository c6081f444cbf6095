"""The Deribit per-connection session (:class:`DeribitSession`): book sequencing
(``change_id`` / ``prev_change_id``), request/response matching, header sequence stamping.
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

import orjson

from svc_connector.kit.fields import raw_bytes, safe_token
from svc_connector.kit.sequencing import BookSequencer, DeltaVerdict
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    NormalisedEvent,
    RequestAck,
    ResubscribeRequest,
    VenueError,
    VenueRequest,
)
from svc_connector.venues.deribit import constants as c
from svc_connector.venues.deribit.hot import DeribitHotPath
from svc_connector.venues.deribit.parse import parse_frame
from volstream.v1 import market_data_pb2 as md_pb

_MAX_PENDING: Final = 10_000


class DeribitSession(DeribitHotPath):
    """Pure per-connection state: book sequencing, request matching, header sequences.

    Book rules (``book.{inst}.{interval}``), on top of :class:`BookSequencer`:

    - a snapshot (re)starts the book at its ``change_id`` and ends any resync;
    - a change applies when ``prev_change_id`` equals the last ``change_id``;
    - a change with ``change_id`` <= the last one is a duplicate or replayed old change:
      dropped and counted (``book.stale_dropped``), never applied twice, not a gap;
    - a change with ``prev_change_id`` 0 (a just-listed option) is relative to an empty
      book: it is emitted as an empty snapshot at sequence 0 followed by the change, so
      that consumers applying "prev == last" stay consistent;
    - any other mismatch, or a change with no snapshot since subscribing, is a gap: the
      change is dropped, a ``BookReset`` is emitted and the book channel is resubscribed
      (the venue answers with a fresh snapshot); changes in between are dropped, and the
      resubscribe is requested again if no snapshot came within ``resync_timeout_ns``.

    ``header.sequence`` is stamped from a counter that runs for the session's lifetime
    (across reconnects), or from ``sequence()`` when given (the connector shares one counter
    between its connections so that (source, sequence) stays unique).
    """

    def __init__(
        self,
        *,
        resync_timeout_ns: int = 10_000_000_000,
        premium_units: Mapping[str, md_pb.PremiumUnit] | None = None,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        self._books = BookSequencer(resync_timeout_ns)
        self._premium_units: dict[str, md_pb.PremiumUnit] = dict(premium_units or {})
        self._next_request_id = first_request_id
        self._next_sequence = first_sequence
        # A shared counter (one per connector) keeps sequences unique across connections.
        self._shared_sequence = sequence
        self._pending: dict[int, tuple[str, tuple[str, ...]]] = {}
        # False: every frame takes the checked path (tests and benches compare the two).
        self.hot_path: bool = True
        # Frames the hot path answered (so a test notices when it silently stops doing so).
        self.hot_hits = 0

    @property
    def source(self) -> str:
        return c.SOURCE

    def _take_sequence(self) -> int:
        if self._shared_sequence is not None:
            return self._shared_sequence()
        value = self._next_sequence
        self._next_sequence += 1
        return value

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None:
        """Premium units of known instruments (for USD-per-coin conversion of tickers)."""
        for instrument in instruments:
            self._premium_units[instrument.symbol] = instrument.premium_unit

    def on_connected(self) -> None:
        self._books.reset()
        self._pending.clear()

    # ---- outgoing ----------------------------------------------------------------------------

    def encode(self, request: VenueRequest) -> str:
        request_id = self._next_request_id
        self._next_request_id += 1
        channels_value = request.params.get("channels")
        channels = (
            tuple(str(ch) for ch in channels_value) if isinstance(channels_value, list) else ()
        )
        if len(self._pending) >= _MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        self._pending[request_id] = (request.method, channels)
        body = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": request.method,
            "params": dict(request.params),
        }
        return orjson.dumps(body).decode()

    def subscribe(self, channels: Iterable[str]) -> str:
        return self.encode(VenueRequest(c.SUBSCRIBE, {"channels": list(channels)}, "subscribe"))

    def unsubscribe(self, channels: Iterable[str]) -> str:
        return self.encode(VenueRequest(c.UNSUBSCRIBE, {"channels": list(channels)}, "unsubscribe"))

    # ---- incoming ----------------------------------------------------------------------------

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        if self.hot_path:
            try:
                hot = self._hot_frame(raw, receive_time_ns)
            except Exception:  # it changes state only after its last possible failure
                hot = None
            if hot is not None:
                self.hot_hits += 1
                return hot
        try:
            result = parse_frame(raw, receive_time_ns, self._premium_units)
            self._match_responses(result)
            if any(e.kind == "book" for e in result.events):
                self._sequence_books(result, receive_time_ns)
        except Exception as exc:  # belt and braces: the client must never see an exception
            result = FrameResult()
            result.counts["session_internal_error"] += 1
            result.dead_letters.append(
                DeadLetter(raw_bytes(raw), f"internal session error: {type(exc).__name__}: {exc}")
            )
        for event in result.events:
            case = event.event.WhichOneof("event")
            if case is not None:
                getattr(event.event, case).header.sequence = self._take_sequence()
        return result

    def _match_responses(self, result: FrameResult) -> None:
        acks: list[RequestAck] = []
        for ack in result.acks:
            pending = (
                self._pending.pop(ack.request_id, None) if isinstance(ack.request_id, int) else None
            )
            if pending is None:
                result.counts["response.unmatched"] += 1
                acks.append(ack)
                continue
            method, _ = pending
            acks.append(RequestAck(ack.request_id, method, ack.result))
            result.counts[f"response.{safe_token(method)}"] += 1
            if method in (c.SUBSCRIBE, c.UNSUBSCRIBE):
                if not isinstance(ack.result, list):
                    result.counts["response.bad_channel_list"] += 1
                    continue
                channels = [ch for ch in ack.result if isinstance(ch, str)]
                if method == c.SUBSCRIBE:
                    refused = len(set(pending[1]) - set(channels))
                    if refused:
                        result.counts["subscribe.unconfirmed_channels"] += refused
                (result.subscribed if method == c.SUBSCRIBE else result.unsubscribed).extend(
                    channels
                )
        result.acks = acks
        errors: list[VenueError] = []
        for error in result.venue_errors:
            pending = (
                self._pending.pop(error.request_id, None)
                if isinstance(error.request_id, int)
                else None
            )
            if pending is None:
                errors.append(error)
            else:
                errors.append(
                    VenueError(error.code, error.message, error.request_id, pending[0], pending[1])
                )
        result.venue_errors = errors

    def _sequence_books(self, result: FrameResult, now_ns: int) -> None:
        events: list[NormalisedEvent] = []
        for item in result.events:
            case = item.event.WhichOneof("event")
            if case == "book_snapshot":
                snapshot = item.event.book_snapshot
                if not snapshot.is_periodic:
                    self._books.snapshot(snapshot.symbol, snapshot.venue_sequence)
                events.append(item)
            elif case == "book_delta":
                events.extend(self._on_delta(item, result, now_ns))
            else:
                events.append(item)
        result.events = events

    def _on_delta(
        self, item: NormalisedEvent, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        delta = item.event.book_delta
        symbol, prev, sequence = delta.symbol, delta.prev_venue_sequence, delta.venue_sequence
        last = self._books.last_sequence(symbol)
        if prev == 0 and last != 0 and not self._books.is_resyncing(symbol):
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
        verdict = self._books.check_delta(symbol, prev, sequence, now_ns)
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
                ResubscribeRequest(symbol, result.channel, "no snapshot after resubscribing")
            )
            return []
        if verdict == DeltaVerdict.NO_SNAPSHOT:
            reason = f"change {sequence} without a snapshot since subscribing"
            result.counts["book.no_snapshot"] += 1
        else:
            reason = f"gap: prev_change_id {prev} != last change_id {last} (change_id {sequence})"
            result.counts["book.gap"] += 1
        self._books.start_resync(symbol, now_ns)
        reset = md_pb.BookReset(symbol=symbol, reason=reason)
        reset.header.CopyFrom(delta.header)
        result.resubscribes.append(ResubscribeRequest(symbol, result.channel, reason))
        return [NormalisedEvent(item.currency, "book", md_pb.MarketDataEvent(book_reset=reset))]
