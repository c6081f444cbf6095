"""Pure Bybit v5 (option stream) decoding: frames and REST bodies -> protobuf. No I/O, no clock.

- :func:`parse_frame`: one websocket frame -> :class:`FrameResult` (stateless).
- :func:`parse_instruments` / :func:`parse_instruments_page`: an ``instruments-info`` body ->
  instruments (+ the next page cursor).
- :class:`BybitSession`: per-connection state on top of ``parse_frame``: book sequencing on
  ``u``, matching both ack shapes to the requests it encoded, header sequence stamping.

Normalisation: premiums are USDC (USDT for ``-USDT`` symbols) per coin, so USD per coin =
native; IVs are fractions ("0" -> absent); ``underlyingPrice`` is the ticker's
``forward_usd``, ``indexPrice`` its ``index_price_usd``; a book delta's
``prev_venue_sequence`` is ``u - 1`` (a delta follows when its ``u`` is the last ``u`` + 1).

Nothing here raises on bad input: unknown messages and topics are counted and ignored,
messages missing required fields are dead-lettered with a reason.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import Any, Final

import msgspec
import orjson

from svc_connector.kit.book_levels import ASKS_TAG, BIDS_TAG, wire_levels
from svc_connector.kit.fields import (
    MS_TO_NS,
    FieldError,
    as_number,
    cached,
    iv_fraction,
    opt_number,
    positive,
    raw_bytes,
    req_integer,
    req_number,
    req_text,
    request_id_of,
    safe_token,
)
from svc_connector.kit.frames import collect_instruments, decode_frame, decode_rest_object, guarded
from svc_connector.kit.requests import PendingRequests, name_venue_errors
from svc_connector.kit.sequencing import BookSequencer, book_reset_event, sequence_delta
from svc_connector.kit.stamping import StampingSession
from svc_connector.kit.tickers import emit_ticker
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    InstrumentParseResult,
    NormalisedEvent,
    RequestAck,
    VenueError,
    VenueRequest,
)
from svc_connector.venues.bybit import constants as c
from svc_connector.venues.bybit.messages import StreamData, StreamFrame
from svc_connector.venues.bybit.symbols import currency_of, parse_symbol
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

# ---------------------------------------------------------------------------------------------
# websocket frames
# ---------------------------------------------------------------------------------------------


def parse_frame(raw: bytes | str, receive_time_ns: int) -> FrameResult:
    """Decode one Bybit websocket frame. Stateless; never raises.

    Acks come back as :class:`RequestAck` with ``result`` = the venue's success/fail topic
    lists (``None`` for the plain ``success`` shape); the session resolves them against the
    requests it sent.
    """
    result = FrameResult()
    message = decode_frame(raw, result)
    if message is None:
        return result
    guarded(raw, result, lambda: _dispatch(message, receive_time_ns, result))
    return result


def _dispatch(message: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    topic = message.get("topic")
    if isinstance(topic, str):
        result.channel = topic
        head = topic.split(".", 1)[0]
        if head == c.ORDERBOOK:
            _orderbook(message, receive_time_ns, result)
        elif head == c.TICKERS:
            _ticker(message, receive_time_ns, result)
        else:
            result.counts[f"unknown_channel.{safe_token(head)}"] += 1
    elif message.get("type") == c.COMMAND_RESP or "op" in message or "success" in message:
        _response(message, result)
    else:
        result.counts["unknown_message"] += 1


def _response(message: dict[str, Any], result: FrameResult) -> None:
    op = message.get("op")
    op_name = op if isinstance(op, str) else ""
    request_id = request_id_of(message.get("req_id"))
    if op_name == c.PONG or (op_name == c.PING and message.get("success") is not False):
        result.counts["heartbeat.pong"] += 1
        return
    data = message.get("data")
    topics: dict[str, list[str]] | None = None
    if isinstance(data, dict) and ("successTopics" in data or "failTopics" in data):
        topics = {
            "success": _topic_list(data.get("successTopics")),
            "fail": _topic_list(data.get("failTopics")),
        }
    if message.get("success") is False and topics is None:
        result.venue_errors.append(
            VenueError(
                str(message.get("ret_code", message.get("retCode", ""))),
                str(message.get("ret_msg", "")),
                request_id,
            )
        )
        result.counts["venue_error"] += 1
        return
    result.acks.append(RequestAck(request_id, op_name, topics))
    result.counts["response"] += 1


def _topic_list(value: object) -> list[str]:
    return [topic for topic in value if isinstance(topic, str)] if isinstance(value, list) else []


def _data(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    data = message.get("data")
    if not isinstance(data, dict):
        raise FieldError(f"{where}: missing or non-object 'data'")
    return data


_currency_of = cached(currency_of)


def _currency(symbol: str, where: str) -> str:
    currency = _currency_of(symbol)
    if currency is None:
        raise FieldError(f"{where}: cannot tell the currency of {symbol!r}")
    return currency


def _orderbook(message: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = result.channel
    data = _data(message, where)
    symbol = req_text(data, "s", where)
    currency = _currency(symbol, where)
    timestamp_ms = req_integer(message, "ts", where)
    update_id = req_integer(data, "u", where)
    kind = message.get("type")
    is_snapshot = kind == "snapshot"
    # Levels as wire bytes: a snapshot keeps its live levels best first, a delta all of them.
    levels = wire_levels(data.get("b"), where, "b", BIDS_TAG, True if is_snapshot else None)
    levels += wire_levels(data.get("a"), where, "a", ASKS_TAG, False if is_snapshot else None)
    # Built in place (nested constructors would copy every sub-message once more).
    event = md_pb.MarketDataEvent()
    book: md_pb.BookSnapshot | md_pb.BookDelta
    if is_snapshot:
        book = event.book_snapshot
        book.MergeFromString(levels)
        book.venue_sequence = update_id
        result.counts["book.snapshot"] += 1
    elif kind == "delta":
        book = event.book_delta
        book.MergeFromString(levels)
        book.venue_sequence = update_id
        book.prev_venue_sequence = update_id - 1
        result.counts["book.delta"] += 1
    else:
        raise FieldError(f"{where}: missing or unknown book 'type' {kind!r}")
    header = book.header
    header.event_time_ns = timestamp_ms * MS_TO_NS
    header.receive_time_ns = receive_time_ns
    header.source = c.SOURCE
    book.symbol = symbol
    result.events.append(NormalisedEvent(currency, "book", event))


_IVS: Final = (("bid_iv", "bidIv"), ("ask_iv", "askIv"), ("mark_iv", "markPriceIv"))
_GREEKS: Final = (
    ("delta", "delta"),
    ("gamma", "gamma"),
    ("vega", "vega"),
    ("theta", "theta"),
    ("open_interest", "openInterest"),
)


def _ticker(message: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = result.channel
    counts = result.counts
    data = _data(message, where)
    symbol = req_text(data, "symbol", where)
    currency = _currency(symbol, where)
    timestamp_ms = req_integer(message, "ts", where)
    # Collected in a dict and built in one constructor call (cheaper than field by field).
    fields: dict[str, Any] = {}
    bid_price = opt_number(data, "bidPrice", counts, "ticker")
    bid_size = opt_number(data, "bidSize", counts, "ticker")
    ask_price = opt_number(data, "askPrice", counts, "ticker")
    ask_size = opt_number(data, "askSize", counts, "ticker")
    # An empty side comes as price "0" and size "0" (see set_best_quotes). Linear: the
    # premium is already USD(C/T) per coin.
    if bid_price is not None and bid_price > 0 and bid_size is not None and bid_size > 0:
        fields["best_bid_price_native"] = bid_price
        fields["best_bid_size_native"] = bid_size
        fields["best_bid_price_usd_per_coin"] = bid_price
    if ask_price is not None and ask_price > 0 and ask_size is not None and ask_size > 0:
        fields["best_ask_price_native"] = ask_price
        fields["best_ask_size_native"] = ask_size
        fields["best_ask_price_usd_per_coin"] = ask_price
    mark = positive(opt_number(data, "markPrice", counts, "ticker"))
    if mark is not None:
        fields["mark_price_native"] = mark
        fields["mark_price_usd_per_coin"] = mark
    for target, key in _IVS:
        iv = iv_fraction(opt_number(data, key, counts, "ticker"))
        if iv is not None:
            fields[target] = iv
    forward = positive(opt_number(data, "underlyingPrice", counts, "ticker"))
    if forward is not None:
        fields["forward_usd"] = forward
    index = positive(opt_number(data, "indexPrice", counts, "ticker"))
    if index is not None:
        fields["index_price_usd"] = index
    for target, key in _GREEKS:
        value = opt_number(data, key, counts, "ticker")
        if value is not None:
            fields[target] = value
    emit_ticker(
        result, currency, symbol, fields, timestamp_ms * MS_TO_NS, receive_time_ns, c.SOURCE
    )
    counts["ticker"] += 1


# ---------------------------------------------------------------------------------------------
# REST instruments
# ---------------------------------------------------------------------------------------------


def parse_instruments(body: bytes | str, receive_time_ns: int) -> InstrumentParseResult:
    """Decode one ``/v5/market/instruments-info?category=option`` page (see
    :func:`parse_instruments_page`, which also returns the next page cursor)."""
    return parse_instruments_page(body, receive_time_ns)[0]


def parse_instruments_page(
    body: bytes | str, receive_time_ns: int
) -> tuple[InstrumentParseResult, str]:
    """(instruments of one page, ``nextPageCursor`` or "" on the last page).

    The strike comes from the symbol (the list has no strike field), the expiry from
    ``deliveryTime``; premiums are in ``settleCoin`` per coin (USD per coin), one contract is
    one coin; ``is_active`` is ``status == "Trading"``. A bad entry is dead-lettered alone.
    """
    result = InstrumentParseResult()
    message = decode_rest_object(body, result)
    if message is None:
        return result, ""
    venue_time = as_number(message.get("time"))
    if venue_time is not None:
        result.venue_time_ns = int(venue_time) * MS_TO_NS
    code = message.get("retCode")
    if code not in (0, "0", None):
        result.venue_errors.append(
            VenueError(str(code), str(message.get("retMsg", "")), None, c.INSTRUMENTS_PATH)
        )
        return result, ""
    body_result = message.get("result")
    entries = body_result.get("list") if isinstance(body_result, dict) else None
    if not isinstance(body_result, dict) or not isinstance(entries, list):
        result.dead_letters.append(DeadLetter(raw_bytes(body), "instruments-info: no result list"))
        return result, ""
    collect_instruments(entries, _instrument, result)
    cursor = body_result.get("nextPageCursor")
    return result, cursor if isinstance(cursor, str) else ""


def _instrument(entry: dict[str, Any], counts: Counter[str]) -> md_pb.Instrument:
    name = req_text(entry, "symbol", "instrument")
    where = f"instrument {name}"
    symbol = parse_symbol(name)
    if symbol is None:
        raise FieldError(f"{where}: cannot parse strike/expiry from the symbol")
    base_value = entry.get("baseCoin")
    currency = base_value.upper() if isinstance(base_value, str) and base_value else symbol.currency
    settle_value = entry.get("settleCoin")
    settle = (
        settle_value.upper() if isinstance(settle_value, str) and settle_value else symbol.settle
    )
    options_type = entry.get("optionsType")
    if options_type == "Call":
        option_kind = common_pb.OPTION_KIND_CALL
    elif options_type == "Put":
        option_kind = common_pb.OPTION_KIND_PUT
    else:
        option_kind = symbol.option_kind
        counts["instrument.option_type_from_symbol"] += 1
    if option_kind != symbol.option_kind:
        raise FieldError(f"{where}: 'optionsType' {options_type!r} contradicts the symbol")
    price_filter = entry.get("priceFilter")
    lot_filter = entry.get("lotSizeFilter")
    if not isinstance(price_filter, dict):
        raise FieldError(f"{where}: missing 'priceFilter'")
    delivery_ms = as_number(entry.get("deliveryTime"))
    counts["instrument.option"] += 1
    return md_pb.Instrument(
        venue=c.VENUE,
        symbol=name,
        currency=currency,
        kind=md_pb.INSTRUMENT_KIND_OPTION,
        option_kind=option_kind,
        strike_usd=symbol.strike,
        expiry_time_ns=int(delivery_ms) * MS_TO_NS if delivery_ms else symbol.expiry_time_ns,
        premium_currency=settle,
        settlement_currency=settle,
        premium_unit=md_pb.PREMIUM_UNIT_USD_PER_COIN,
        # Bybit option quantities are in coins: one contract is one coin.
        contract_size_coin=1.0,
        tick_size_native=req_number(price_filter, "tickSize", where),
        min_size_native=(
            opt_number(lot_filter, "minOrderQty", counts, "instrument") or 0.0
            if isinstance(lot_filter, dict)
            else 0.0
        ),
        underlying=currency,
        is_active=entry.get("status") == c.TRADING,
    )


# ---------------------------------------------------------------------------------------------
# per-connection session
# ---------------------------------------------------------------------------------------------


class BybitSession(StampingSession):
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
    # False: every frame takes the checked path (tests and benches compare the two).
    hot_path: bool = True

    def __init__(
        self,
        *,
        resync_timeout_ns: int = 10_000_000_000,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(first_sequence=first_sequence, sequence=sequence)
        self._books = BookSequencer(resync_timeout_ns)
        self._next_request_id = first_request_id
        self._pending = PendingRequests()
        # Frames the hot path answered / left to the checked path (tests and benches read them).
        self.hot_hits = 0
        self.hot_misses = 0

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
        request_id = str(self._next_request_id)
        self._next_request_id += 1
        body: dict[str, object] = {"req_id": request_id, "op": request.method}
        channels_value = request.params.get("channels")
        if isinstance(channels_value, list):
            channels = [str(ch) for ch in channels_value]
            body["args"] = channels
            self._pending.add(request_id, request.method, channels)
        return orjson.dumps(body).decode()

    # ---- incoming ----------------------------------------------------------------------------

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        if self.hot_path:
            try:
                hot = self._hot_frame(raw, receive_time_ns)
            except Exception:  # anything unexpected: the checked path decides (and reports)
                hot = None
            if hot is not None:
                self.hot_hits += 1
                return hot
            self.hot_misses += 1
        return super().on_frame(raw, receive_time_ns)

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        result = parse_frame(raw, receive_time_ns)
        if result.acks or result.venue_errors:
            self._match_responses(result)
        if any(e.event.WhichOneof("event") == "book_delta" for e in result.events):
            self._sequence_deltas(result, receive_time_ns)
        else:
            for item in result.events:
                if item.event.WhichOneof("event") == "book_snapshot":
                    snapshot = item.event.book_snapshot
                    self._books.snapshot(snapshot.symbol, snapshot.venue_sequence)
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

    def _sequence_deltas(self, result: FrameResult, now_ns: int) -> None:
        events: list[NormalisedEvent] = []
        for item in result.events:
            case = item.event.WhichOneof("event")
            if case == "book_snapshot":
                snapshot = item.event.book_snapshot
                self._books.snapshot(snapshot.symbol, snapshot.venue_sequence)
                events.append(item)
            elif case == "book_delta":
                delta = item.event.book_delta
                last = self._books.last_sequence(delta.symbol)
                if delta.venue_sequence == 1 and last not in (None, 0):
                    result.counts["book.venue_restart"] += 1
                    reason = f"venue restart: delta u 1 after u {last}"
                    events.append(
                        book_reset_event(
                            self._books, item, delta.symbol, result.channel, reason, result, now_ns
                        )
                    )
                else:
                    events.extend(sequence_delta(self._books, item, result.channel, result, now_ns))
            else:
                events.append(item)
        result.events = events

    # ---- hot path ------------------------------------------------------------------------------

    def _hot_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult | None:
        """The common notification frames, parsed without the checked path's layers.

        Covers ``orderbook.*`` snapshots, ``orderbook.*`` deltas that continue their book
        (``u`` = last ``u`` + 1) and ``tickers.*`` frames whose numbers all read cleanly:
        about every frame of live traffic. It exists because the checked path's generic
        per-field layers cost several times the decode; here msgspec checks the frame's shape
        in C and the event is built with a few C calls.

        Returns exactly the FrameResult the checked path would return (stamped), or ``None``
        before touching any state: anything else (responses, unknown topics, gaps, duplicates,
        odd or non-finite values, what the checked path would count or dead-letter) is left
        to :meth:`_on_frame`. May raise on junk input; :meth:`on_frame` treats that as None.

        Unknown fields make the decode fail (see messages.py): msgspec would skip them without
        the range checks orjson makes.
        """
        if not isinstance(raw, str):
            raw = raw.decode()  # orjson rejects invalid UTF-8 anywhere, msgspec only where read
        frame = _STREAM_DECODER.decode(raw)
        topic = frame.topic
        ts = frame.ts
        if not isinstance(ts, int) or not 0 <= ts < _MAX_TS_MS:  # the header's int64 ns
            return None
        data = frame.data
        if not (_in_orjson_range(frame.cts) and _in_orjson_range(data.seq)):
            return None
        event = md_pb.MarketDataEvent()
        message: md_pb.BookSnapshot | md_pb.BookDelta | md_pb.VenueTicker
        kind = frame.type
        update_id = 0
        if topic.startswith(_TICKERS_PREFIX):
            symbol = data.symbol
            payload = _ticker_wire(data)
            if payload is None:
                return None
            greeks = (data.delta, data.gamma, data.vega, data.theta, data.open_interest)
            if 0.0 in greeks and _NEGATIVE_ZERO in raw:  # set even when 0: the sign counts
                return None
            message = event.ticker
            message.MergeFromString(payload)
        elif topic.startswith(_ORDERBOOK_PREFIX):
            symbol = data.s
            venue_sequence = data.u
            if not isinstance(venue_sequence, int) or not 0 <= venue_sequence < _MAX_INT64:
                return None
            update_id = venue_sequence
            bids, asks = data.b, data.a
            if bids is None or asks is None or _NEGATIVE_ZERO in raw:  # a size "-0"
                return None
            if kind == "delta":
                if self._books.last_sequence(symbol) != update_id - 1:
                    return None  # a gap, a duplicate, no snapshot yet, a resync: checked path
                payload = _delta_wire(bids, asks)
                message = event.book_delta
                message.MergeFromString(payload)
                message.prev_venue_sequence = update_id - 1
            elif kind == "snapshot":
                payload = _levels_wire(bids, BIDS_TAG, True) + _levels_wire(asks, ASKS_TAG, False)
                message = event.book_snapshot
                message.MergeFromString(payload)
            else:
                return None
            message.venue_sequence = update_id
        else:
            return None
        if not symbol:
            return None
        currency = _currency_of(symbol)
        if currency is None:
            return None
        message.symbol = symbol
        header = message.header
        header.event_time_ns = ts * MS_TO_NS
        header.receive_time_ns = receive_time_ns
        header.source = c.SOURCE
        # Committed from here on: nothing below can fail.
        header.sequence = self._take_sequence()
        result = FrameResult()
        result.channel = topic
        counts = result.counts
        counts["frames"] = 1
        if isinstance(message, md_pb.VenueTicker):
            counts["ticker"] = 1
            result.events.append(NormalisedEvent(currency, "ticker", event, header))
            return result
        if kind == "delta":
            self._books.check_delta(symbol, update_id - 1, update_id, receive_time_ns)
            counts["book.delta"] = 1
        else:
            self._books.snapshot(symbol, update_id)
            counts["book.snapshot"] = 1
        result.events.append(NormalisedEvent(currency, "book", event, header))
        return result


_STREAM_DECODER: Final = msgspec.json.Decoder(StreamFrame, strict=False)


def _in_orjson_range(value: float | None) -> bool:
    """False for an integer orjson may reject (beyond 64 bits it parses as a double, which
    can overflow); msgspec keeps any integer."""
    return not isinstance(value, int) or -(2**63) <= value < 2**64


_TICKERS_PREFIX: Final = c.TICKERS + "."
_ORDERBOOK_PREFIX: Final = c.ORDERBOOK + "."
_MAX_INT64: Final = 2**63
_MAX_TS_MS: Final = _MAX_INT64 // MS_TO_NS
_INF: Final = math.inf
# msgspec reads the string "-0" as 0.0, float() as -0.0: such frames take the checked path.
_NEGATIVE_ZERO: Final = '"-0"'
_LEVEL_PACK: Final = struct.Struct("<BBBdBd").pack  # one BookLevel, as in levels_wire
_PRICE: Final = itemgetter(0)


def _delta_wire(bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> bytes:
    """A delta's levels as :func:`wire_levels` writes them (every level, venue order; bids
    then asks). Raises ValueError where it would raise a FieldError (on_frame -> None)."""
    pack = _LEVEL_PACK
    parts = [
        pack(tag, 18, 0x09, price, 0x11, size)
        for tag, side in ((BIDS_TAG, bids), (ASKS_TAG, asks))
        for price, size in side
        if 0.0 < price < _INF and 0.0 <= size < _INF
    ]
    if len(parts) != len(bids) + len(asks):
        raise ValueError("invalid level")
    return b"".join(parts)


def _levels_wire(entries: list[tuple[float, float]], tag: int, best_first: bool) -> bytes:
    """A snapshot side's live levels best first (a stable sort), as :func:`wire_levels`
    writes them. Raises ValueError where it would raise a FieldError (on_frame -> None)."""
    # Every level is checked, deleted ones too (wire_levels raises for them as well).
    if not all(0.0 < price < _INF and 0.0 <= size < _INF for price, size in entries):
        raise ValueError("invalid level")
    live = sorted([level for level in entries if level[1] > 0.0], key=_PRICE, reverse=best_first)
    pack = _LEVEL_PACK
    return b"".join([pack(tag, 18, 0x09, price, 0x11, size) for price, size in live])


def _double_tag(name: str) -> bytes:
    """The wire tag (a varint) of the VenueTicker double field ``name``."""
    tag = int(md_pb.VenueTicker.DESCRIPTOR.fields_by_name[name].number) << 3 | 1
    return bytes([tag]) if tag < 0x80 else bytes([tag & 0x7F | 0x80, tag >> 7])


# The ticker numbers _ticker_wire reads, in this order (their index in its ``numbers``).
_NUMBERS: Final = (
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
    "mark_price",
    "bid_iv",
    "ask_iv",
    "mark_price_iv",
    "underlying_price",
    "index_price",
    "delta",
    "gamma",
    "vega",
    "theta",
    "open_interest",
)
# VenueTicker fields in field-number order: (field, index in ``numbers``, index of the
# presence flag that sets it or None for always), mirroring _ticker's rules.
_TICKER_LAYOUT: Final = (
    ("best_bid_price_native", 0, 0),
    ("best_bid_size_native", 1, 0),
    ("best_ask_price_native", 2, 1),
    ("best_ask_size_native", 3, 1),
    ("mark_price_native", 4, 2),
    ("bid_iv", 5, 3),
    ("ask_iv", 6, 4),
    ("mark_iv", 7, 5),
    ("forward_usd", 8, 6),
    ("index_price_usd", 9, 7),
    ("delta", 10, None),
    ("gamma", 11, None),
    ("vega", 12, None),
    ("theta", 13, None),
    ("open_interest", 14, None),
    ("mark_price_usd_per_coin", 4, 2),
    ("best_bid_price_usd_per_coin", 0, 0),
    ("best_ask_price_usd_per_coin", 2, 1),
)
_TAGS: Final = {name: _double_tag(name) for name, _, _ in _TICKER_LAYOUT}
# Every tag byte, appended after the numbers so that one itemgetter picks tags and values.
_TAG_BYTES: Final = tuple(byte for tag in _TAGS.values() for byte in tag)
_TAG_OFFSET: Final = dict(
    zip(_TAGS, itertools.accumulate((len(tag) for tag in _TAGS.values()), initial=0), strict=False)
)
_TickerPacker = Callable[[tuple[float, ...]], bytes]
_TICKER_PACKERS: dict[tuple[bool, ...], _TickerPacker] = {}


def _ticker_packer(present: tuple[bool, ...]) -> _TickerPacker:
    """numbers -> the wire bytes of the fields ``present`` selects: one struct.pack (cached
    per presence pattern; a field at a time costs several times more)."""
    packer = _TICKER_PACKERS.get(present)
    if packer is not None:
        return packer
    indices: list[int] = []
    layout = "<"
    for name, number, flag in _TICKER_LAYOUT:
        if flag is None or present[flag]:
            tag = _TAGS[name]
            start = len(_NUMBERS) + _TAG_OFFSET[name]
            indices += [*range(start, start + len(tag)), number]
            layout += "B" * len(tag) + "d"
    pick = itemgetter(*indices)
    pack = struct.Struct(layout).pack

    def packed(numbers: tuple[float, ...]) -> bytes:
        return pack(*pick(numbers + _TAG_BYTES))

    _TICKER_PACKERS[present] = packed
    return packed


def _ticker_wire(data: StreamData) -> bytes | None:
    """The VenueTicker fields :func:`_ticker` sets, as wire bytes (optional doubles), or None
    when a number is absent or one the checked path would count (it decides then)."""
    numbers = (
        data.bid_price,
        data.bid_size,
        data.ask_price,
        data.ask_size,
        data.mark_price,
        data.bid_iv,
        data.ask_iv,
        data.mark_price_iv,
        data.underlying_price,
        data.index_price,
        data.delta,
        data.gamma,
        data.vega,
        data.theta,
        data.open_interest,
    )
    # An absent value is NaN (left to the checked path), a NaN or an infinity makes the sum
    # non-finite (so may a huge finite sum: a harmless fallback).
    total = sum(numbers)
    if total - total != 0.0:
        return None
    bid, bid_size, ask, ask_size, mark, bid_iv, ask_iv, mark_iv, forward, index = numbers[:10]
    present = (
        bid > 0 and bid_size > 0,
        ask > 0 and ask_size > 0,
        mark > 0,
        bid_iv > 0,
        ask_iv > 0,
        mark_iv > 0,
        forward > 0,
        index > 0,
    )
    return _ticker_packer(present)(numbers)
