"""The Bybit per-connection session (:class:`BybitSession`): book sequencing on ``u``, ack
matching, header sequence stamping. Pure: no I/O, no clock.

The one sequence rule: Bybit numbers book messages with ``u`` (+1 per delta); each delta is
emitted with ``prev_venue_sequence = u - 1`` (normalised in ``parse.py``), so it applies when
that equals the book's sequence, like every venue's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

from svc_connector.kit.fields import safe_token
from svc_connector.kit.requests import PendingRequests, name_venue_errors
from svc_connector.kit.sequencing import (
    BookSequencer,
    book_reset_event,
    sequence_book_events,
    sequence_delta,
)
from svc_connector.venues.base import (
    FrameResult,
    NormalisedEvent,
    RequestAck,
    VenueError,
    VenueRequest,
)
from svc_connector.venues.bybit import constants as c
from svc_connector.venues.bybit.hot import BybitHotPath
from svc_connector.venues.bybit.parse import parse_frame
from volstream.v1 import market_data_pb2 as md_pb


class BybitSession(BybitHotPath):
    """Pure per-connection state: book sequencing on ``u``, ack matching, header sequences.

    Book rules (``orderbook.{depth}.{symbol}``), on top of :class:`BookSequencer`:

    - a snapshot always (re)starts the book at its ``u`` (0 for an empty book, 1 after a
      venue restart) and ends any resync;
    - a delta applies when its ``u`` is the last ``u`` + 1 (``prev_venue_sequence = u - 1``);
    - a delta with ``u`` <= the last one is a duplicate: dropped and counted;
    - a delta with ``u`` 1 on a book that had moved on means the venue restarted without a
      snapshot: reset and resubscribe (counted ``book.venue_restart``);
    - any other mismatch, or a delta without a snapshot since subscribing, is a gap: a
      ``BookReset`` and a resubscribe of the topic (answered with a fresh snapshot); the
      resubscribe is requested again if no snapshot came within ``resync_timeout_ns``.

    Acks: ``{"success": true, "op": ..., "req_id": ...}`` confirms every topic of the
    request; ``{"type": "COMMAND_RESP", "data": {"successTopics", "failTopics"}}`` confirms
    the listed ones and reports the failed ones as a :class:`VenueError`.
    """

    subscribe_method = c.SUBSCRIBE
    unsubscribe_method = c.UNSUBSCRIBE

    def __init__(
        self,
        *,
        resync_timeout_ns: int = 10_000_000_000,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            first_request_id=first_request_id, first_sequence=first_sequence, sequence=sequence
        )
        self._books = BookSequencer(resync_timeout_ns)
        self._pending = PendingRequests()

    @property
    def source(self) -> str:
        return c.SOURCE

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None:
        """Nothing to learn: every Bybit option premium is USD per coin."""

    def on_connected(self) -> None:
        self._books.reset()
        self._pending.clear()

    # ---- outgoing ----------------------------------------------------------------------------

    def encode(self, request: VenueRequest) -> str:
        request_id = str(self._take_request_id())
        body: dict[str, object] = {"req_id": request_id, "op": request.method}
        channels_value = request.params.get("channels")
        if isinstance(channels_value, list):
            channels = [str(ch) for ch in channels_value]
            body["args"] = channels
            self._pending.add(request_id, request.method, channels)
        return orjson.dumps(body).decode()

    # ---- incoming ----------------------------------------------------------------------------

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        result = parse_frame(raw, receive_time_ns)
        if result.acks or result.venue_errors:
            self._match_responses(result)
        if any(e.kind == "book" for e in result.events):
            sequence_book_events(
                self._books, result, lambda item: self._on_delta(item, result, receive_time_ns)
            )
        return result

    def _match_responses(self, result: FrameResult) -> None:
        acks: list[RequestAck] = []
        for ack in result.acks:
            pending = self._pending.pop(ack.request_id)
            method = pending[0] if pending is not None else ack.method
            requested = pending[1] if pending is not None else ()
            topics = ack.result if isinstance(ack.result, dict) else None
            confirmed = list(topics["success"]) if topics is not None else list(requested)
            failed = list(topics["fail"]) if topics is not None else []
            if pending is None:
                result.counts["response.unmatched"] += 1
            else:
                result.counts[f"response.{safe_token(method)}"] += 1
            if method == c.UNSUBSCRIBE:
                result.unsubscribed.extend(confirmed)
            elif method == c.SUBSCRIBE or topics is not None:
                result.subscribed.extend(confirmed)
            if failed:
                # The request was answered (its ack counts); the failed topics stay
                # unconfirmed and are asked again at the next reconcile.
                result.venue_errors.append(
                    VenueError("fail_topics", ", ".join(failed), ack.request_id, "", tuple(failed))
                )
                result.counts["subscribe.failed_topics"] += len(failed)
            acks.append(RequestAck(ack.request_id, method, confirmed))
        result.acks = acks
        # A failed-topics error answers a request popped above: it stays as it is.
        name_venue_errors(result, self._pending)

    def _on_delta(
        self, item: NormalisedEvent, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        delta = item.event.book_delta
        last = self._books.last_sequence(delta.symbol)
        if delta.venue_sequence == 1 and last not in (None, 0):
            result.counts["book.venue_restart"] += 1
            reason = f"venue restart: delta u 1 after u {last}"
            return [
                book_reset_event(
                    self._books, item, delta.symbol, result.channel, reason, result, now_ns
                )
            ]
        return sequence_delta(self._books, item, result.channel, result, now_ns)
