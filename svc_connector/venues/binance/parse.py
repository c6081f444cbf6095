"""Pure Binance options decoding: frames and REST bodies -> normalised protobuf. No I/O, no clock.

- :func:`parse_frame`: one combined-stream frame -> :class:`FrameResult` (stateless); both
  the current stream API and the older ``eoptions`` one.
- :func:`parse_instruments`: an ``/eapi/v1/exchangeInfo`` body -> instruments.
- :func:`parse_depth_snapshot`: an ``/eapi/v1/depth`` body -> a BookSnapshot.
- :class:`BinanceSession`: per-connection state: tickers assembled from the streams that
  carry parts of them, the spot index as the forward, diff-book sequencing bridged onto
  REST snapshots, request/response matching, header sequence stamping.

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

import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import Any, Final

import msgspec
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
    MS_TO_NS,
    FieldError,
    as_number,
    as_object,
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
from svc_connector.kit.frames import (
    collect_instruments,
    decode_frame,
    decode_rest_object,
    each_entry,
    guarded,
    internal_error,
)
from svc_connector.kit.requests import PendingRequests, name_venue_errors
from svc_connector.kit.sequencing import BookSequencer, sequence_delta
from svc_connector.kit.stamping import StampingSession, ms_header
from svc_connector.kit.tickers import (
    TickerMerger,
    emit_ticker,
    fill_usd_fields,
    fill_usd_per_coin,
    set_best_quotes,
    ticker_fields,
)
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    InstrumentParseResult,
    NormalisedEvent,
    RequestAck,
    VenueError,
    VenueRequest,
)
from svc_connector.venues.binance import constants as c
from svc_connector.venues.binance.messages import HotDepthFrame, HotMark, HotMarkFrame
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


# ---------------------------------------------------------------------------------------------
# websocket frames
# ---------------------------------------------------------------------------------------------


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
    head, kind = _stream_head_kind(stream)
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


def _stream_head_kind(stream: str) -> tuple[str, str]:
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


_currency_of = cached(currency_of)


def _currency(name: str, where: str) -> str:
    currency = _currency_of(name)
    if currency is None:
        raise FieldError(f"{where}: cannot tell the currency of {name!r}")
    return currency


def _emit_ticker(ticker: md_pb.VenueTicker, result: FrameResult, name: str) -> None:
    result.events.append(
        NormalisedEvent(
            _currency_of(ticker.symbol) or "", "ticker", md_pb.MarketDataEvent(ticker=ticker)
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
    emit_ticker(
        result, currency, symbol, fields, timestamp_ms * MS_TO_NS, receive_time_ns, c.SOURCE
    )
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


def _index_event(
    name: str, price: float, event_time_ms: int, receive_time_ns: int
) -> md_pb.MarketDataEvent:
    index = md_pb.IndexPrice(
        header=ms_header(event_time_ms, receive_time_ns, c.SOURCE), index_name=name, price_usd=price
    )
    return md_pb.MarketDataEvent(index_price=index)


def _index(data: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = result.channel
    name = req_text(data, "s", where)
    event = _index_event(
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
            event = _index_event(underlying, price, int(event_time), receive_time_ns)
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
        snapshot.venue_sequence = int(update_id) if update_id is not None else 0
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
        book.venue_sequence = sequence
        book.prev_venue_sequence = prev
        result.counts["book.diff"] += 1
    header = book.header
    header.event_time_ns = timestamp_ms * MS_TO_NS
    header.receive_time_ns = receive_time_ns
    header.source = c.SOURCE
    book.symbol = symbol
    result.events.append(NormalisedEvent(currency, "book", event))


# ---------------------------------------------------------------------------------------------
# hot path
# ---------------------------------------------------------------------------------------------
# Partial depth pushes (``<symbol>@depth20@100ms``) are nearly all of the traffic. The checked
# path reads them through orjson dicts, per-field checks and per-level float() calls; here
# msgspec decodes and checks the whole frame in C (messages.HotDepthFrame) and only the level
# order and the wire bytes are left to Python. Anything the shapes do not accept as is
# returns None before any state is touched, and the checked path handles the frame.

_HOT_DECODER: Final = msgspec.json.Decoder(HotDepthFrame, strict=False)
_HOT_LEVEL: Final = struct.Struct("<BBBdBd")  # as session.levels_wire writes a BookLevel
_HOT_PRICE: Final = itemgetter(0)


def _hot_levels(levels: list[tuple[float, float]], tag: int, descending: bool) -> bytes | None:
    """The live levels (size > 0) as wire bytes, in venue order, when that order is already
    best first (what session.wire_levels gives then); None when the checked path would sort."""
    if len(levels) > 1 and sorted(levels, key=_HOT_PRICE, reverse=descending) != levels:
        return None
    pack = _HOT_LEVEL.pack
    return b"".join([pack(tag, 18, 0x09, price, 0x11, size) for price, size in levels if size])


def hot_partial_depth(
    raw: bytes | str, receive_time_ns: int, next_sequence: Callable[[], int]
) -> FrameResult | None:
    """A partial depth frame -> the stamped FrameResult the checked path gives for it, or None
    (nothing read from ``next_sequence``) when the frame is anything but the usual shape."""
    try:
        frame = _HOT_DECODER.decode(raw)
    except (msgspec.DecodeError, TypeError):
        return None
    stream = frame.stream
    kind = _stream_head_kind(stream)[1]
    if kind[:5] != "depth" or kind[5:] not in c.PARTIAL_DEPTH_LEVELS:
        return None
    data = frame.data
    timestamp_ms = data.E
    if type(timestamp_ms) is not int:
        return None  # a float or a string: the checked path's rules
    symbol = data.s
    currency = _currency_of(symbol)
    if currency is None:
        return None
    bids = _hot_levels(data.b, BIDS_TAG, True)
    asks = _hot_levels(data.a, ASKS_TAG, False)
    if bids is None or asks is None:
        return None
    event = md_pb.MarketDataEvent()
    snapshot = event.book_snapshot
    snapshot.MergeFromString(bids + asks)
    snapshot.venue_sequence = data.u
    snapshot.is_periodic = True
    snapshot.symbol = symbol
    header = snapshot.header
    header.event_time_ns = timestamp_ms * MS_TO_NS
    header.receive_time_ns = receive_time_ns
    header.source = c.SOURCE
    header.sequence = next_sequence()
    result = FrameResult([NormalisedEvent(currency, "book", event, header)], stream)
    counts = result.counts
    counts["frames"] = 1
    counts["book.partial_snapshot"] = 1
    return result


# ``<underlying>@optionMarkPrice`` pushes are rare (one per underlying a second) but carry one
# entry per listed option (~350): the checked path builds each ticker from a dict, reads its
# fields back and builds it again merged. Here each entry is decoded and checked in C
# (messages.HotMark), its fields go straight into the merge and its ticker is built once.

_HOT_MARKS_DECODER: Final = msgspec.json.Decoder(HotMarkFrame, strict=False)
_INT64: Final = range(-(2**63), 2**63)


def _odd_text(raw: bytes | str) -> bool:
    """Spellings msgspec reads unlike the checked path: "-0" (msgspec: +0.0) and, to be sure
    of no other such case, any escape."""
    if isinstance(raw, str):
        return "\\" in raw or '"-0"' in raw
    return b"\\" in raw or b'"-0"' in raw


def _hot_mark_fields(
    entry: HotMark, underlying: str, sizes: Mapping[str, float], counts: Counter[str]
) -> dict[str, Any]:
    """The fields the checked path's ticker of ``entry`` has set (what ``ticker_fields`` reads
    back: every field here has presence, but ``forward_name`` which is never empty)."""
    fields: dict[str, Any] = {}
    price, size = entry.bo, entry.bq
    if price is not None and price > 0 and size is not None and size > 0:
        fields["best_bid_price_native"] = price
        fields["best_bid_size_native"] = size
    price, size = entry.ao, entry.aq
    if price is not None and price > 0 and size is not None and size > 0:
        fields["best_ask_price_native"] = price
        fields["best_ask_size_native"] = size
    mark = entry.mp
    if mark is not None and mark > 0:
        fields["mark_price_native"] = mark
    value = entry.b
    if value is not None and value > 0:
        fields["bid_iv"] = value
    value = entry.a
    if value is not None and value > 0:
        fields["ask_iv"] = value
    value = entry.vo
    if value is not None and value > 0:
        fields["mark_iv"] = value
    if entry.d is not None:
        fields["delta"] = entry.d
    if entry.g is not None:
        fields["gamma"] = entry.g
    if entry.v is not None:
        fields["vega"] = entry.v
    if entry.t is not None:
        fields["theta"] = entry.t
    index = entry.i
    if index is not None and index > 0:
        fields["forward_usd"] = index
        fields["index_price_usd"] = index
        fields["forward_name"] = underlying
    if entry.rf is not None:
        fields["interest_rate"] = entry.rf
    contract_size = sizes.get(entry.s)
    if contract_size is None:
        counts["ticker.unknown_contract_size"] += 1
    elif contract_size > 0:
        # fill_usd_fields with PER_CONTRACT: native / contract size (same field order).
        if mark is not None and mark > 0:
            fields["mark_price_usd_per_coin"] = mark / contract_size
        if "best_bid_price_native" in fields:
            fields["best_bid_price_usd_per_coin"] = fields["best_bid_price_native"] / contract_size
        if "best_ask_price_native" in fields:
            fields["best_ask_price_usd_per_coin"] = fields["best_ask_price_native"] / contract_size
    return fields


# ---------------------------------------------------------------------------------------------
# REST
# ---------------------------------------------------------------------------------------------


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
        result.venue_time_ns = int(server_time) * MS_TO_NS
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
        expiry_time_ns=req_integer(entry, "expiryDate", where) * MS_TO_NS,
        premium_currency=quote,
        settlement_currency=quote,
        premium_unit=PER_CONTRACT,
        contract_size_coin=unit,
        tick_size_native=tick or 0.0,
        min_size_native=min_size or 0.0,
        underlying=underlying or f"{currency}{quote}",
        is_active=status in (None, "TRADING"),
    )


# ---------------------------------------------------------------------------------------------
# per-connection session
# ---------------------------------------------------------------------------------------------


class BinanceSession(StampingSession):
    """Pure per-connection state: merged tickers, index forward, diff books, acks.

    Tickers: ``optionMarkPrice`` carries everything (quotes, IVs, greeks, mark, the index
    ``i`` = forward); the older streams split it (``ticker``: quotes, IVs, greeks, mark;
    ``markPrice``: the mark; ``bookTicker``: best bid/ask). Each stream owns its fields and
    the session emits the merged ticker (see :class:`TickerMerger`); a ticker without a
    forward of its own gets the latest index of its currency (``<UNDERLYING>@index``).

    Books: partial depth snapshots (``is_periodic``) pass through. Diffs
    (``@depth@100ms``) apply when ``pu`` equals the last ``u``; a duplicate is dropped; a
    gap or a diff without a snapshot gives a ``BookReset`` and a resync request. The
    venue's answer to a resync is a REST snapshot, fed in with :meth:`on_rest_depth`; with
    ``buffer_diffs`` the diffs that arrive meanwhile are kept (bounded) and replayed onto it:
    those at or below its ``u`` are dropped, the first one spanning it (``pu`` <= ``u`` <
    its ``u``) bridges, the rest must be contiguous.
    """

    subscribe_method = c.SUBSCRIBE
    unsubscribe_method = c.UNSUBSCRIBE
    # False: every frame takes the checked path (tests and benches compare the two).
    hot_path: bool = True

    def __init__(
        self,
        *,
        resync_timeout_ns: int = 10_000_000_000,
        contract_sizes: Mapping[str, float] | None = None,
        buffer_diffs: bool = False,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(first_sequence=first_sequence, sequence=sequence)
        self._books = BookSequencer(resync_timeout_ns)
        self._contract_sizes: dict[str, float] = dict(contract_sizes or {})
        self._tickers = TickerMerger()
        # currency -> (index name, price) of the latest IndexPrice.
        self._indices: dict[str, tuple[str, float]] = {}
        self._buffer_diffs = buffer_diffs
        self._buffers: dict[str, deque[NormalisedEvent]] = {}
        self._diff_channels: dict[str, str] = {}
        # Books whose REST snapshot awaits the diff that spans it.
        self._bridging: set[str] = set()
        self._next_request_id = first_request_id
        self._pending = PendingRequests()
        # Frames the hot path answered (tests check that it keeps taking the usual traffic).
        self.hot_hits = 0

    @property
    def source(self) -> str:
        return c.SOURCE

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None:
        """Contract sizes (``unit``) of known instruments (USD-per-coin conversion)."""
        for instrument in instruments:
            if instrument.contract_size_coin > 0:
                self._contract_sizes[instrument.symbol] = instrument.contract_size_coin

    def on_connected(self) -> None:
        self._books.reset()
        self._buffers.clear()
        self._bridging.clear()
        self._pending.clear()

    # ---- outgoing ----------------------------------------------------------------------------

    def encode(self, request: VenueRequest) -> str:
        request_id = self._next_request_id
        self._next_request_id += 1
        channels_value = request.params.get("channels")
        channels = [str(ch) for ch in channels_value] if isinstance(channels_value, list) else []
        self._pending.add(request_id, request.method, channels)
        body = {"method": request.method, "params": channels, "id": request_id}
        return orjson.dumps(body).decode()

    # ---- incoming ----------------------------------------------------------------------------

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        """The hot paths (:func:`hot_partial_depth`, :meth:`_hot_marks`) first, else the
        checked path. A partial depth push only advances the header sequence, so the hot
        path's result and state are the checked path's; mark pushes see below."""
        if self.hot_path:
            try:
                result = hot_partial_depth(raw, receive_time_ns, self._take_sequence)
                if result is None:
                    result = self._hot_marks(raw, receive_time_ns)
            except Exception:  # e.g. a receive time out of range: the checked path reports it
                result = None
            if result is not None:
                self.hot_hits += 1
                return result
        return super().on_frame(raw, receive_time_ns)

    def _hot_marks(self, raw: bytes | str, receive_time_ns: int) -> FrameResult | None:
        """An ``optionMarkPrice`` push -> the stamped result of the checked path, with the same
        merges and index update; None (no state touched) unless every entry is the usual shape.
        Only an unknown contract size is counted here; anything else the checked path would
        count or dead-letter makes the decode or the checks below refuse the frame."""
        if type(receive_time_ns) is not int or receive_time_ns not in _INT64 or _odd_text(raw):
            return None
        try:
            frame = _HOT_MARKS_DECODER.decode(raw)
        except (msgspec.DecodeError, TypeError):
            return None
        stream = frame.stream
        head, kind = _stream_head_kind(stream)
        entries = frame.data
        if kind != "optionmarkprice" or not head or not entries:
            return None
        underlying = head.upper()
        result = FrameResult([], stream)
        counts = result.counts
        counts["frames"] = 1
        sizes = self._contract_sizes
        parsed: list[tuple[HotMark, int, str, dict[str, Any]]] = []
        for entry in entries:
            currency = _currency_of(entry.s)
            timestamp_ms = entry.E
            if currency is None or type(timestamp_ms) is not int:
                return None
            fields = _hot_mark_fields(entry, underlying, sizes, counts)
            parsed.append((entry, timestamp_ms, currency, fields))
        # Every entry is good: now what _post_process/_merged do, in the same order (tickers
        # see the index of earlier pushes; this push's index is taken after them).
        owned = OWNED_FIELDS["optionmarkprice"]
        merge = self._tickers.merge_fields
        indices = self._indices
        events = result.events
        for entry, timestamp_ms, currency, fields in parsed:
            symbol = entry.s
            merged = merge(symbol, fields, owned)
            if "forward_usd" not in merged:
                latest_index = indices.get(currency)
                if latest_index is not None:
                    name, price = latest_index
                    merged["forward_usd"] = price
                    merged["index_price_usd"] = price
                    merged["forward_name"] = name
            # No second fill_usd_fields (as _merged does): every field a ticker may hold is
            # one this stream owns, so ``merged`` is ``fields`` (plus an index forward,
            # which per-contract premiums do not use) and its USD values are already set.
            merged["header"] = {
                "event_time_ns": timestamp_ms * MS_TO_NS,
                "receive_time_ns": receive_time_ns,
                "source": c.SOURCE,
            }
            merged["symbol"] = symbol
            event = md_pb.MarketDataEvent(ticker=merged)
            events.append(NormalisedEvent(currency, "ticker", event, event.ticker.header))
        counts["ticker.mark_price"] = len(parsed)
        index_currency = _currency_of(underlying)
        if index_currency is not None:
            for entry, timestamp_ms, _, _ in parsed:
                index = entry.i
                if index is not None and index > 0:
                    event = _index_event(underlying, index, timestamp_ms, receive_time_ns)
                    header = event.index_price.header
                    events.append(NormalisedEvent(index_currency, "index", event, header))
                    counts["index_price.from_marks"] = 1
                    indices[index_currency] = (underlying, index)
                    break
        return self.stamp(result)

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        result = parse_frame(raw, receive_time_ns, self._contract_sizes)
        if result.acks or result.venue_errors:
            self._match_responses(result)
        if result.events:
            self._post_process(result, receive_time_ns)
        return result

    def expect_snapshot(self, symbol: str, channel: str, now_ns: int) -> None:
        """A REST snapshot of a newly subscribed diff book is on its way: keep its diffs for it
        (no reset: there was no book yet)."""
        self._diff_channels[symbol] = channel
        if self._books.last_sequence(symbol) is None and not self._books.is_resyncing(symbol):
            self._books.start_resync(symbol, now_ns)

    def on_rest_depth(self, body: bytes | str, symbol: str, receive_time_ns: int) -> FrameResult:
        """A REST book snapshot for a diff book: restart the book on it, replay buffered
        diffs. Stamped like a frame's result; never raises."""
        result = FrameResult()
        try:
            event, reason = parse_depth_snapshot(body, symbol, receive_time_ns)
            if event is None:
                result.counts["book.rest_snapshot_bad"] += 1
                result.dead_letters.append(DeadLetter(raw_bytes(body), reason))
                return result
            sequence = event.event.book_snapshot.venue_sequence
            self._books.snapshot(symbol, sequence)
            self._bridging.add(symbol)
            result.counts["book.rest_snapshot"] += 1
            result.channel = self._diff_channels.get(symbol, "")
            result.events.append(event)
            for delta in self._buffers.pop(symbol, deque()):
                result.events.extend(self._on_diff(delta, result, receive_time_ns))
        except Exception as exc:  # the client must never see an exception
            result = internal_error(body, "session", exc)
        return self.stamp(result)

    def _match_responses(self, result: FrameResult) -> None:
        acks: list[RequestAck] = []
        for ack in result.acks:
            pending = self._pending.pop(ack.request_id)
            if pending is None:
                result.counts["response.unmatched"] += 1
                acks.append(ack)
                continue
            method, channels = pending
            acks.append(RequestAck(ack.request_id, method, ack.result))
            result.counts[f"response.{safe_token(method)}"] += 1
            (result.subscribed if method == c.SUBSCRIBE else result.unsubscribed).extend(channels)
        result.acks = acks
        name_venue_errors(result, self._pending)

    def _post_process(self, result: FrameResult, now_ns: int) -> None:
        events = result.events
        if len(events) == 1 and events[0].event.WhichOneof("event") == "book_snapshot":
            return  # a partial depth push, the usual frame: nothing to do
        owned = OWNED_FIELDS.get(_stream_head_kind(result.channel)[1], ())
        events = []
        for item in result.events:
            case = item.event.WhichOneof("event")
            if case == "index_price":
                index = item.event.index_price
                self._indices[item.currency] = (index.index_name, index.price_usd)
                events.append(item)
            elif case == "ticker":
                events.append(self._merged(item, owned))
            elif case == "book_delta":
                events.extend(self._on_diff(item, result, now_ns))
            else:
                events.append(item)
        result.events = events

    def _merged(self, item: NormalisedEvent, owned: tuple[str, ...]) -> NormalisedEvent:
        ticker = item.event.ticker
        symbol = ticker.symbol
        merged = self._tickers.merge_fields(symbol, ticker_fields(ticker, owned), owned)
        latest_index = self._indices.get(item.currency)
        if "forward_usd" not in merged and latest_index is not None:
            name, price = latest_index
            merged["forward_usd"] = price
            merged["index_price_usd"] = price
            merged["forward_name"] = name
        fill_usd_fields(merged, PER_CONTRACT, self._contract_sizes.get(symbol))
        merged["header"] = ticker.header
        merged["symbol"] = symbol
        return NormalisedEvent(item.currency, "ticker", md_pb.MarketDataEvent(ticker=merged))

    def _on_diff(
        self, item: NormalisedEvent, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        delta = item.event.book_delta
        symbol = delta.symbol
        if result.channel:
            self._diff_channels[symbol] = result.channel
        channel = self._diff_channels.get(symbol, result.channel)
        if symbol in self._bridging:
            last = self._books.last_sequence(symbol)
            if last is not None and delta.venue_sequence <= last:
                result.counts["book.stale_dropped"] += 1
                return []
            self._bridging.discard(symbol)
            if last is not None and delta.prev_venue_sequence <= last:
                # The first diff spanning the REST snapshot's update id.
                self._books.snapshot(symbol, delta.venue_sequence)
                result.counts["book.bridged"] += 1
                return [item]
        events = sequence_delta(self._books, item, channel, result, now_ns)
        if self._buffer_diffs and events != [item] and self._books.is_resyncing(symbol):
            buffer = self._buffers.setdefault(symbol, deque(maxlen=c.MAX_BUFFERED_DELTAS))
            buffer.append(item)
            result.counts["book.buffered"] += 1
        return events
