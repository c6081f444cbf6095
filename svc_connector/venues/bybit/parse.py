"""Checked Bybit v5 (option stream) parsing: frames and REST bodies -> protobuf. Stateless, no
I/O, no clock.

- :func:`parse_frame`: one websocket frame -> :class:`FrameResult`.
- :func:`parse_instruments` / :func:`parse_instruments_page`: an ``instruments-info`` body ->
  instruments (+ the next page cursor).

The per-connection state is in ``session.py``, the fast path in ``hot.py``.

Normalisation: premiums are USDC (USDT for ``-USDT`` symbols) per coin, so USD per coin =
native; IVs are fractions ("0" -> absent); ``underlyingPrice`` is the ticker's
``forward_usd``, ``indexPrice`` its ``index_price_usd``; a book delta's
``prev_venue_sequence`` is ``u - 1`` (a delta follows when its ``u`` is the last ``u`` + 1).

Nothing here raises on bad input: unknown messages and topics are counted and ignored,
messages missing required fields are dead-lettered with a reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from svc_connector.kit.book_levels import ASKS_TAG, BIDS_TAG, wire_levels
from svc_connector.kit.fields import (
    FieldError,
    as_number,
    cached,
    int64,
    iv_fraction,
    ms_to_ns,
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
from svc_connector.kit.tickers import emit_ticker
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    InstrumentParseResult,
    NormalisedEvent,
    RequestAck,
    VenueError,
)
from svc_connector.venues.bybit import constants as c
from svc_connector.venues.bybit.symbols import currency_of, parse_symbol
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb


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


cached_currency_of = cached(currency_of)


def _currency(symbol: str, where: str) -> str:
    currency = cached_currency_of(symbol)
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
        book.venue_sequence = int64(update_id, "u", where)
        result.counts["book.snapshot"] += 1
    elif kind == "delta":
        book = event.book_delta
        book.MergeFromString(levels)
        book.venue_sequence = int64(update_id, "u", where)
        book.prev_venue_sequence = int64(update_id - 1, "u", where)
        result.counts["book.delta"] += 1
    else:
        raise FieldError(f"{where}: missing or unknown book 'type' {kind!r}")
    header = book.header
    header.event_time_ns = ms_to_ns(timestamp_ms)
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
    emit_ticker(result, currency, symbol, fields, ms_to_ns(timestamp_ms), receive_time_ns, c.SOURCE)
    counts["ticker"] += 1


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
        result.venue_time_ns = ms_to_ns(int(venue_time))
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
        expiry_time_ns=ms_to_ns(int(delivery_ms)) if delivery_ms else symbol.expiry_time_ns,
        premium_currency=settle,
        settlement_currency=settle,
        premium_unit=md_pb.PREMIUM_UNIT_USD_PER_COIN,
        # Bybit option quantities are in coins: one contract is one coin.
        contract_size_coin=1.0,
        contract_size=1.0,
        contract_size_unit=md_pb.SIZE_UNIT_COIN,
        size_unit=md_pb.SIZE_UNIT_COIN,
        tick_size_native=req_number(price_filter, "tickSize", where),
        min_size_native=(
            opt_number(lot_filter, "minOrderQty", counts, "instrument") or 0.0
            if isinstance(lot_filter, dict)
            else 0.0
        ),
        underlying=currency,
        is_active=entry.get("status") == c.TRADING,
    )
