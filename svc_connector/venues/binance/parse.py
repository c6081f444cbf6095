"""Checked Binance options parsing: frames and REST bodies -> normalised protobuf. Stateless,
no I/O, no clock.

- :func:`parse_frame`: one combined-stream frame -> :class:`FrameResult`; both the current
  stream API and the older ``eoptions`` one.
- :func:`parse_instruments`: an ``/eapi/v1/exchangeInfo`` body -> instruments.
- :func:`parse_depth_snapshot`: an ``/eapi/v1/depth`` body -> a BookSnapshot.

The per-connection state is in ``session.py``, the fast path in ``hot.py``.

Normalisation: premiums are USDT per contract of ``unit`` coins, so USD per coin =
premium / unit (the unit comes from exchangeInfo: XRP options have unit 100); IVs are
fractions, "-1" (and 0) -> absent; the forward is the spot index ``i`` the venue prices on
(``forward_name`` = the underlying, e.g. "BTCUSDT"); an empty side ("0" price/size) is
absent. Partial depth streams are full books (``is_periodic``); diff depth streams carry
``prev_venue_sequence = pu``.

Nothing here raises on bad input: unknown messages and streams are counted and ignored,
messages missing required fields are dead-lettered with a reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

import orjson

from svc_connector.kit.book_levels import (
    ASKS_TAG,
    BIDS_TAG,
    best_first,
    book_levels,
    text_levels,
    wire_levels,
)
from svc_connector.kit.fields import (
    FieldError,
    as_number,
    as_object,
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
from svc_connector.kit.frames import (
    collect_instruments,
    decode_frame,
    decode_rest_object,
    each_entry,
    guarded,
)
from svc_connector.kit.stamping import ms_header
from svc_connector.kit.tickers import (
    emit_ticker,
    fill_usd_fields,
    fill_usd_per_coin,
    set_best_quotes,
)
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    InstrumentParseResult,
    NormalisedEvent,
    RequestAck,
    VenueError,
)
from svc_connector.venues.binance import constants as c
from svc_connector.venues.binance.symbols import currency_of, parse_symbol, split_stream
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

PER_CONTRACT: Final = md_pb.PREMIUM_UNIT_USD_PER_CONTRACT


_TOP_FIELDS: Final = (
    "best_bid_price_native",
    "best_bid_size_native",
    "best_ask_price_native",
    "best_ask_size_native",
    "best_bid_price_usd_per_coin",
    "best_ask_price_usd_per_coin",
)


_MARK_FIELDS: Final = ("mark_price_native", "mark_price_usd_per_coin")


_QUOTE_FIELDS: Final = (
    *_MARK_FIELDS,
    *_TOP_FIELDS,
    "bid_iv",
    "ask_iv",
    "mark_iv",
    "delta",
    "gamma",
    "vega",
    "theta",
)


_FORWARD_FIELDS: Final = ("forward_usd", "forward_name", "index_price_usd", "interest_rate")


# The VenueTicker fields each stream kind owns (TickerMerger replaces exactly these).
OWNED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "optionmarkprice": (*_QUOTE_FIELDS, *_FORWARD_FIELDS),
    "ticker": _QUOTE_FIELDS,
    "markprice": _MARK_FIELDS,
    "bookticker": _TOP_FIELDS,
}


def parse_frame(
    raw: bytes | str,
    receive_time_ns: int,
    contract_sizes: Mapping[str, float] | None = None,
) -> FrameResult:
    """Decode one Binance websocket frame. Stateless; never raises.

    ``contract_sizes`` (symbol -> ``unit``, from exchangeInfo) converts per-contract
    premiums to USD per coin; without it those fields stay absent (never guessed).
    Header ``sequence`` is left 0 (the session stamps it).
    """
    result = FrameResult()
    message = decode_frame(raw, result)
    if message is None:
        return result
    sizes = contract_sizes or {}
    guarded(raw, result, lambda: _dispatch(message, receive_time_ns, sizes, result))
    return result


def _dispatch(
    message: dict[str, Any],
    receive_time_ns: int,
    sizes: Mapping[str, float],
    result: FrameResult,
) -> None:
    stream = message.get("stream")
    if isinstance(stream, str):
        if "data" not in message:
            raise FieldError(f"{stream}: missing 'data'")
        _stream(stream, message["data"], receive_time_ns, sizes, result)
        return
    request_id = request_id_of(message.get("id"))
    error = message.get("error")
    if isinstance(error, dict) or ("code" in message and "msg" in message):
        body = error if isinstance(error, dict) else message
        result.venue_errors.append(
            VenueError(str(body.get("code", "")), str(body.get("msg", "")), request_id)
        )
        result.counts["venue_error"] += 1
    elif "result" in message and "id" in message:
        result.acks.append(RequestAck(request_id, "", message["result"]))
        result.counts["response"] += 1
    else:
        result.counts["unknown_message"] += 1


def _stream(
    stream: str,
    data: object,
    receive_time_ns: int,
    sizes: Mapping[str, float],
    result: FrameResult,
) -> None:
    head, kind = stream_head_kind(stream)
    result.channel = stream
    if kind == "optionmarkprice":
        entries = _as_list(data, stream)
        underlying = head.upper()
        each_entry(
            entries, stream, result, lambda e: _quote(e, receive_time_ns, sizes, underlying, result)
        )
        _index_from_marks(entries, underlying, receive_time_ns, result)
    elif kind == "markprice":
        each_entry(
            _as_list(data, stream),
            stream,
            result,
            lambda e: _mark(e, receive_time_ns, sizes, result),
        )
    elif kind == "ticker":
        _quote(as_object(data, stream), receive_time_ns, sizes, None, result)
    elif kind == "bookticker":
        _book_ticker(as_object(data, stream), receive_time_ns, sizes, result)
    elif kind == "index":
        _index(as_object(data, stream), receive_time_ns, result)
    elif kind.startswith("depth") and kind[5:] in c.PARTIAL_DEPTH_LEVELS:
        _depth(as_object(data, stream), receive_time_ns, True, result)
    elif kind.startswith("depth") and kind[5:] in c.DIFF_DEPTH_LEVELS:
        _depth(as_object(data, stream), receive_time_ns, False, result)
    elif kind == "optionticker":
        # The current API's 24 h statistics ticker: no quotes, no IVs (those are in marks).
        result.counts["ignored.optionTicker"] += 1
    else:
        result.counts[f"unknown_channel.{safe_token(kind or head)}"] += 1


# stream -> (head, kind) of the streams seen (a connection carries a fixed set of streams;
# bounded all the same: cleared when full).
_STREAM_PARTS: dict[str, tuple[str, str]] = {}


def stream_head_kind(stream: str) -> tuple[str, str]:
    parts = _STREAM_PARTS.get(stream)
    if parts is None:
        head, kind, _ = split_stream(stream)
        parts = (head, kind)
        if len(_STREAM_PARTS) >= 100_000:
            _STREAM_PARTS.clear()
        _STREAM_PARTS[stream] = parts
    return parts


def _as_list(data: object, where: str) -> list[object]:
    if not isinstance(data, list):
        raise FieldError(f"{where}: 'data' is not a list")
    return data


cached_currency_of = cached(currency_of)


def _currency(name: str, where: str) -> str:
    currency = cached_currency_of(name)
    if currency is None:
        raise FieldError(f"{where}: cannot tell the currency of {name!r}")
    return currency


def _emit_ticker(ticker: md_pb.VenueTicker, result: FrameResult, name: str) -> None:
    result.events.append(
        NormalisedEvent(
            cached_currency_of(ticker.symbol) or "", "ticker", md_pb.MarketDataEvent(ticker=ticker)
        )
    )
    result.counts[name] += 1


def _new_ticker(entry: Mapping[str, Any], receive_time_ns: int, where: str) -> md_pb.VenueTicker:
    symbol = req_text(entry, "s", where)
    _currency(symbol, where)
    return md_pb.VenueTicker(
        header=ms_header(req_integer(entry, "E", where), receive_time_ns, c.SOURCE),
        symbol=symbol,
    )


def _set_top(
    ticker: md_pb.VenueTicker,
    entry: Mapping[str, Any],
    keys: tuple[str, str, str, str],
    counts: Counter[str],
) -> None:
    """Best bid/ask from (bid price, bid size, ask price, ask size) keys; "0" = empty side."""
    bid_price, bid_size, ask_price, ask_size = (
        opt_number(entry, key, counts, "ticker") for key in keys
    )
    set_best_quotes(ticker, bid_price, bid_size, ask_price, ask_size)


def _quote(
    entry: dict[str, Any],
    receive_time_ns: int,
    sizes: Mapping[str, float],
    underlying: str | None,
    result: FrameResult,
) -> None:
    """``optionMarkPrice`` entry (``underlying`` given: carries the index) or the older
    ``ticker``: quotes, IVs, greeks and mark."""
    where = result.channel
    counts = result.counts
    symbol = req_text(entry, "s", where)
    currency = _currency(symbol, where)
    timestamp_ms = req_integer(entry, "E", where)
    # Collected in a dict and built in one constructor call (cheaper than field by field).
    fields: dict[str, Any] = {}
    bid_price, bid_size, ask_price, ask_size = (
        opt_number(entry, key, counts, "ticker") for key in ("bo", "bq", "ao", "aq")
    )
    if bid_price is not None and bid_price > 0 and bid_size is not None and bid_size > 0:
        fields["best_bid_price_native"] = bid_price
        fields["best_bid_size_native"] = bid_size
    if ask_price is not None and ask_price > 0 and ask_size is not None and ask_size > 0:
        fields["best_ask_price_native"] = ask_price
        fields["best_ask_size_native"] = ask_size
    mark = positive(opt_number(entry, "mp", counts, "ticker"))
    if mark is not None:
        fields["mark_price_native"] = mark
    for target, key in (("bid_iv", "b"), ("ask_iv", "a"), ("mark_iv", "vo")):
        iv = iv_fraction(opt_number(entry, key, counts, "ticker"))
        if iv is not None:
            fields[target] = iv
    for target, key in (("delta", "d"), ("gamma", "g"), ("vega", "v"), ("theta", "t")):
        value = opt_number(entry, key, counts, "ticker")
        if value is not None:
            fields[target] = value
    if underlying is not None:
        index = positive(opt_number(entry, "i", counts, "ticker"))
        if index is not None:
            # The venue prices its options on the spot index.
            fields["forward_usd"] = index
            fields["index_price_usd"] = index
            fields["forward_name"] = underlying
        rate = opt_number(entry, "rf", counts, "ticker")
        if rate is not None:
            fields["interest_rate"] = rate
    size = sizes.get(symbol)
    if size is None:
        counts["ticker.unknown_contract_size"] += 1
    fill_usd_fields(fields, PER_CONTRACT, size)
    emit_ticker(result, currency, symbol, fields, ms_to_ns(timestamp_ms), receive_time_ns, c.SOURCE)
    counts["ticker.mark_price" if underlying else "ticker.ticker"] += 1


def _fill_usd(ticker: md_pb.VenueTicker, sizes: Mapping[str, float], counts: Counter[str]) -> None:
    size = sizes.get(ticker.symbol)
    if size is None:
        counts["ticker.unknown_contract_size"] += 1
    fill_usd_per_coin(ticker, PER_CONTRACT, size)


def _mark(
    entry: dict[str, Any], receive_time_ns: int, sizes: Mapping[str, float], result: FrameResult
) -> None:
    ticker = _new_ticker(entry, receive_time_ns, result.channel)
    mark = positive(req_number(entry, "mp", result.channel))
    if mark is not None:
        ticker.mark_price_native = mark
    _fill_usd(ticker, sizes, result.counts)
    _emit_ticker(ticker, result, "ticker.legacy_mark_price")


def _book_ticker(
    data: dict[str, Any], receive_time_ns: int, sizes: Mapping[str, float], result: FrameResult
) -> None:
    ticker = _new_ticker(data, receive_time_ns, result.channel)
    # Here "b"/"a" are prices and "B"/"A" sizes (not IVs as in marks).
    _set_top(ticker, data, ("b", "B", "a", "A"), result.counts)
    _fill_usd(ticker, sizes, result.counts)
    _emit_ticker(ticker, result, "ticker.book_ticker")


def index_event(
    name: str, price: float, event_time_ms: int, receive_time_ns: int
) -> md_pb.MarketDataEvent:
    index = md_pb.IndexPrice(
        header=ms_header(event_time_ms, receive_time_ns, c.SOURCE), index_name=name, price_usd=price
    )
    return md_pb.MarketDataEvent(index_price=index)


def _index(data: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = result.channel
    name = req_text(data, "s", where)
    event = index_event(
        name, req_number(data, "p", where), req_integer(data, "E", where), receive_time_ns
    )
    result.events.append(NormalisedEvent(_currency(name, where), "index", event))
    result.counts["index_price"] += 1


def _index_from_marks(
    entries: list[object], underlying: str, receive_time_ns: int, result: FrameResult
) -> None:
    """One IndexPrice per ``optionMarkPrice`` push: every entry carries the same index."""
    currency = currency_of(underlying)
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        price = positive(as_number(entry.get("i")))
        event_time = as_number(entry.get("E"))
        if price is not None and event_time is not None and currency is not None:
            event = index_event(underlying, price, int(event_time), receive_time_ns)
            result.events.append(NormalisedEvent(currency, "index", event))
            result.counts["index_price.from_marks"] += 1
            return


def _depth(
    data: dict[str, Any], receive_time_ns: int, is_partial: bool, result: FrameResult
) -> None:
    where = result.channel
    symbol = req_text(data, "s", where)
    currency = _currency(symbol, where)
    timestamp_ms = req_integer(data, "E", where)
    # Event built in place; the levels are written as wire bytes (BookLevels built one by
    # one, then copied into the book, cost several times as much).
    event = md_pb.MarketDataEvent()
    book: md_pb.BookSnapshot | md_pb.BookDelta
    if is_partial:
        levels = wire_levels(data.get("b"), where, "b", BIDS_TAG, best_first=True)
        levels += wire_levels(data.get("a"), where, "a", ASKS_TAG, best_first=False)
        update_id = as_number(data.get("u"))
        snapshot = event.book_snapshot
        snapshot.MergeFromString(levels)
        snapshot.venue_sequence = int64(int(update_id), "u", where) if update_id is not None else 0
        snapshot.is_periodic = True
        book = snapshot
        result.counts["book.partial_snapshot"] += 1
    else:
        levels = wire_levels(data.get("b"), where, "b", BIDS_TAG)
        levels += wire_levels(data.get("a"), where, "a", ASKS_TAG)
        sequence = req_integer(data, "u", where)
        prev = req_integer(data, "pu", where)
        book = event.book_delta
        book.MergeFromString(levels)
        book.venue_sequence = int64(sequence, "u", where)
        book.prev_venue_sequence = int64(prev, "pu", where)
        result.counts["book.diff"] += 1
    header = book.header
    header.event_time_ns = ms_to_ns(timestamp_ms)
    header.receive_time_ns = receive_time_ns
    header.source = c.SOURCE
    book.symbol = symbol
    result.events.append(NormalisedEvent(currency, "book", event))


def parse_depth_snapshot(
    body: bytes | str, symbol: str, receive_time_ns: int
) -> tuple[NormalisedEvent | None, str]:
    """``GET /eapi/v1/depth`` -> (a BookSnapshot at the body's ``u``, "") or (None, reason)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, f"depth {symbol}: malformed JSON: {exc}"
    if not isinstance(message, dict):
        return None, f"depth {symbol}: not a JSON object"
    if "code" in message and "msg" in message:
        return None, f"depth {symbol}: venue error {message['code']} {message['msg']}"
    where = f"depth {symbol}"
    try:
        currency = _currency(symbol, where)
        bids = book_levels(text_levels(message.get("bids"), where, "bids"))
        asks = book_levels(text_levels(message.get("asks"), where, "asks"))
        live_bids, live_asks = best_first(
            [level for level in bids if level.size_native > 0],
            [level for level in asks if level.size_native > 0],
        )
        snapshot = md_pb.BookSnapshot(
            header=ms_header(req_integer(message, "T", where), receive_time_ns, c.SOURCE),
            symbol=symbol,
            bids=live_bids,
            asks=live_asks,
            venue_sequence=req_integer(message, "u", where),
            is_periodic=False,
        )
    except FieldError as exc:
        return None, str(exc)
    return NormalisedEvent(currency, "book", md_pb.MarketDataEvent(book_snapshot=snapshot)), ""


def parse_instruments(body: bytes | str, receive_time_ns: int) -> InstrumentParseResult:
    """Decode an ``/eapi/v1/exchangeInfo`` body (``optionSymbols``, every underlying).

    ``unit`` is the contract size in coins (premiums are quote currency per contract:
    PREMIUM_UNIT_USD_PER_CONTRACT); the strike is ``strikePrice`` (decimals allowed), the
    expiry ``expiryDate`` (ms); tick and minimum size come from the PRICE_FILTER/LOT_SIZE
    filters (or ``minQty``); ``is_active`` is ``status == "TRADING"`` (active when absent).
    A bad entry is dead-lettered alone.
    """
    result = InstrumentParseResult()
    message = decode_rest_object(body, result)
    if message is None:
        return result
    if "code" in message and "msg" in message:
        result.venue_errors.append(
            VenueError(str(message["code"]), str(message["msg"]), None, c.EXCHANGE_INFO_PATH)
        )
        return result
    server_time = as_number(message.get("serverTime"))
    if server_time is not None:
        result.venue_time_ns = ms_to_ns(int(server_time))
    entries = message.get("optionSymbols")
    if not isinstance(entries, list):
        result.dead_letters.append(DeadLetter(raw_bytes(body), "exchangeInfo: no optionSymbols"))
        return result
    collect_instruments(entries, _instrument, result)
    return result


def _filter_value(entry: Mapping[str, Any], filter_type: str, key: str) -> float | None:
    filters = entry.get("filters")
    if not isinstance(filters, list):
        return None
    for item in filters:
        if isinstance(item, dict) and item.get("filterType") == filter_type:
            return as_number(item.get(key))
    return None


def _instrument(entry: dict[str, Any], counts: Counter[str]) -> md_pb.Instrument:
    name = req_text(entry, "symbol", "instrument")
    where = f"instrument {name}"
    symbol = parse_symbol(name)
    side = entry.get("side")
    if side == "CALL":
        option_kind = common_pb.OPTION_KIND_CALL
    elif side == "PUT":
        option_kind = common_pb.OPTION_KIND_PUT
    else:
        raise FieldError(f"{where}: missing or unknown 'side'")
    underlying_value = entry.get("underlying")
    underlying = underlying_value if isinstance(underlying_value, str) else ""
    currency = (symbol.currency if symbol is not None else None) or currency_of(underlying)
    if not currency:
        raise FieldError(f"{where}: cannot tell the currency")
    unit = req_number(entry, "unit", where)
    if unit <= 0:
        raise FieldError(f"{where}: non-positive 'unit'")
    tick = _filter_value(entry, "PRICE_FILTER", "tickSize")
    if tick is None:
        counts["instrument.no_tick_size"] += 1
    min_size = _filter_value(entry, "LOT_SIZE", "minQty") or opt_number(
        entry, "minQty", counts, "instrument"
    )
    quote_value = entry.get("quoteAsset")
    quote = quote_value.upper() if isinstance(quote_value, str) and quote_value else "USDT"
    status = entry.get("status")
    counts["instrument.option"] += 1
    return md_pb.Instrument(
        venue=c.VENUE,
        symbol=name,
        currency=currency,
        kind=md_pb.INSTRUMENT_KIND_OPTION,
        option_kind=option_kind,
        strike_usd=req_number(entry, "strikePrice", where),
        expiry_time_ns=ms_to_ns(req_integer(entry, "expiryDate", where)),
        premium_currency=quote,
        settlement_currency=quote,
        premium_unit=PER_CONTRACT,
        contract_size_coin=unit,
        contract_size=unit,
        contract_size_unit=md_pb.SIZE_UNIT_COIN,
        # Quantities (book, minQty) count contracts of `unit` coins.
        size_unit=md_pb.SIZE_UNIT_CONTRACT,
        tick_size_native=tick or 0.0,
        min_size_native=min_size or 0.0,
        underlying=underlying or f"{currency}{quote}",
        is_active=status in (None, "TRADING"),
    )
