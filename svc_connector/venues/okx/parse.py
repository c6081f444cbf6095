"""Checked OKX v5 parsing: raw frames and REST bodies -> normalised protobuf. Stateless, no I/O,
no clock.

- :func:`parse_frame`: one websocket frame -> :class:`FrameResult`;
  :func:`parse_frame_detailed` adds what the session needs (book strings, replies).
- :func:`parse_instruments`: a ``/api/v5/public/instruments`` body -> instruments.

The per-connection state is in ``session.py``, the fast path in ``hot.py``.

Normalisation: IVs are fractions already ("0"/"" -> absent); ``opt-summary`` ``fwdPx`` is
the ticker's ``forward_usd``; ``deltaBS`` is ``delta`` and ``delta`` (premium-adjusted) is
``delta_premium_adjusted``; gamma/vega/theta are the ``*BS`` (Black-Scholes, USD) greeks.
Premiums of ``-USD`` families are inverse: USD per coin = native x ``fwdPx``.

Nothing here raises on bad input: unknown events and channels are counted and ignored,
messages missing required fields are dead-lettered with a reason.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from svc_connector.kit.book_levels import TextLevel, add_book_levels, book_levels, text_levels
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
    entry_bytes,
    guarded,
)
from svc_connector.kit.stamping import ms_header
from svc_connector.kit.tickers import fill_usd_per_coin, set_best_quotes
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    InstrumentParseResult,
    InstrumentStateChange,
    NormalisedEvent,
    VenueError,
)
from svc_connector.venues.okx import constants as c
from svc_connector.venues.okx.symbols import (
    USD_QUOTES,
    channel_of_arg,
    currency_of,
    parse_instrument_id,
    premium_unit_from_id,
)
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

# The VenueTicker fields each channel owns (TickerMerger replaces exactly these).
OPT_SUMMARY_FIELDS: Final = (
    "bid_iv",
    "ask_iv",
    "mark_iv",
    "forward_usd",
    "delta",
    "delta_premium_adjusted",
    "gamma",
    "vega",
    "theta",
)


TICKER_FIELDS: Final = (
    "best_bid_price_native",
    "best_bid_size_native",
    "best_ask_price_native",
    "best_ask_size_native",
    "best_bid_price_usd_per_coin",
    "best_ask_price_usd_per_coin",
)


MARK_FIELDS: Final = ("mark_price_native", "mark_price_usd_per_coin")


OWNED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    c.OPT_SUMMARY: OPT_SUMMARY_FIELDS,
    c.TICKERS: TICKER_FIELDS,
    c.MARK_PRICE: MARK_FIELDS,
}


@dataclass(slots=True)  # not frozen: one is made per book message (frozen init is slower)
class BookText:
    """The venue's own strings of one incremental book message (checksums hash them)."""

    symbol: str
    bids: list[TextLevel]
    asks: list[TextLevel]
    # 0 when the venue sent none (or 0: nothing to verify).
    checksum: int
    # False for older messages without seqId/prevSeqId.
    has_sequence: bool


@dataclass(slots=True)
class ParsedFrame:
    """A :class:`FrameResult` plus what the session needs beyond it."""

    result: FrameResult
    # Incremental book events with their wire strings, in event order.
    books: list[tuple[NormalisedEvent, BookText]] = field(default_factory=list)
    # (un)subscribe acks: (request id if echoed, "subscribe"/"unsubscribe", channel name).
    replies: list[tuple[int | str | None, str, str]] = field(default_factory=list)
    # Set by the session, which merges every ticker anyway: opt-summary entries then get an
    # empty placeholder event and their parts (symbol, event time ns, VenueTicker fields)
    # in ``ticker_parts`` (id(event) -> parts), so the message is built once, merged.
    defer_tickers: bool = False
    ticker_parts: dict[int, tuple[str, int, dict[str, float]]] = field(default_factory=dict)


def parse_frame(
    raw: bytes | str,
    receive_time_ns: int,
    premium_units: Mapping[str, md_pb.PremiumUnit] | None = None,
) -> FrameResult:
    """Decode one OKX websocket frame. Stateless; never raises.

    Books without ``seqId`` (older messages) carry sequence 0 here; the session numbers
    them. Inverse option prices get their USD-per-coin equivalents only in the session,
    which knows the family's forward from ``opt-summary``.
    """
    return parse_frame_detailed(raw, receive_time_ns, premium_units).result


def parse_frame_detailed(
    raw: bytes | str,
    receive_time_ns: int,
    premium_units: Mapping[str, md_pb.PremiumUnit] | None = None,
    defer_tickers: bool = False,
) -> ParsedFrame:
    parsed = ParsedFrame(FrameResult(), defer_tickers=defer_tickers)
    result = parsed.result
    if raw in (c.PONG, c.PONG.encode()):
        result.counts["frames"] += 1
        result.counts["heartbeat.pong"] += 1
        return parsed
    message = decode_frame(raw, result)
    if message is None:
        return parsed
    units = premium_units or {}
    guarded(raw, result, lambda: _dispatch(message, receive_time_ns, units, parsed))
    return parsed


def _dispatch(
    message: dict[str, Any],
    receive_time_ns: int,
    units: Mapping[str, md_pb.PremiumUnit],
    parsed: ParsedFrame,
) -> None:
    result = parsed.result
    event = message.get("event")
    if isinstance(event, str):
        _on_event(event, message, parsed)
    elif "arg" in message:
        _on_push(message, receive_time_ns, units, parsed)
    else:
        result.counts["unknown_message"] += 1


def _on_event(event: str, message: dict[str, Any], parsed: ParsedFrame) -> None:
    result = parsed.result
    request_id = request_id_of(message.get("id"))
    if event in (c.SUBSCRIBE, c.UNSUBSCRIBE):
        channel = channel_of_arg(message.get("arg"))
        if channel is None:
            result.counts[f"event.{event}.bad_arg"] += 1
            return
        parsed.replies.append((request_id, event, channel))
        (result.subscribed if event == c.SUBSCRIBE else result.unsubscribed).append(channel)
        result.counts[f"event.{event}"] += 1
    elif event == "error":
        result.venue_errors.append(
            VenueError(str(message.get("code", "")), str(message.get("msg", "")), request_id)
        )
        result.counts["venue_error"] += 1
    elif event == "notice":
        # e.g. 64008: the connection will be closed soon for a service upgrade.
        result.venue_errors.append(
            VenueError(
                str(message.get("code", "")), str(message.get("msg", "")), request_id, "notice"
            )
        )
        result.counts["event.notice"] += 1
    else:
        result.counts[f"unknown_event.{safe_token(event)}"] += 1


def _on_push(
    message: dict[str, Any],
    receive_time_ns: int,
    units: Mapping[str, md_pb.PremiumUnit],
    parsed: ParsedFrame,
) -> None:
    result = parsed.result
    arg = message.get("arg")
    if not isinstance(arg, dict):
        raise FieldError("push: 'arg' is not an object")
    channel = req_text(arg, "channel", "push arg")
    result.channel = channel_of_arg(arg) or channel
    where = result.channel
    data = message.get("data")
    if not isinstance(data, list):
        raise FieldError(f"{where}: missing or non-list 'data'")
    if channel in c.INCREMENTAL_BOOKS:
        action = message.get("action")
        for entry in data:
            _incremental_book(arg, action, as_object(entry, where), receive_time_ns, parsed)
    elif channel in c.PERIODIC_BOOKS:
        for entry in data:
            _periodic_book(arg, as_object(entry, where), receive_time_ns, result)
    elif channel == c.OPT_SUMMARY:
        # each_entry inlined (the channel carries hundreds of entries a frame).
        for entry in data:
            try:
                _opt_summary(as_object(entry, where), receive_time_ns, parsed)
            except FieldError as exc:
                result.counts["bad_entry"] += 1
                result.dead_letters.append(DeadLetter(entry_bytes(entry), str(exc)))
    elif channel == c.TICKERS:
        each_entry(data, where, result, lambda e: _ticker(e, receive_time_ns, units, result))
    elif channel == c.INDEX_TICKERS:
        each_entry(data, where, result, lambda e: _index_ticker(e, receive_time_ns, result))
    elif channel == c.MARK_PRICE:
        each_entry(data, where, result, lambda e: _mark_price(e, receive_time_ns, units, result))
    elif channel == c.INSTRUMENTS:
        each_entry(data, where, result, lambda e: _instrument_state(e, result))
    else:
        result.counts[f"unknown_channel.{safe_token(channel)}"] += 1


cached_currency_of = cached(currency_of)


def _currency(symbol: str, where: str) -> str:
    currency = cached_currency_of(symbol)
    if currency is None:
        raise FieldError(f"{where}: cannot tell the currency of {symbol!r}")
    return currency


# Integers a float holds exactly (what the checked path's float round trip returns as is).
EXACT_INT: Final = 2**53


def _optional_int(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if type(value) is int and -EXACT_INT < value < EXACT_INT:
        return value
    number = as_number(value)
    if number is None or not number.is_integer():
        raise FieldError(f"{where}: non-integer '{key}'")
    return int(number)


def _incremental_book(
    arg: Mapping[str, Any],
    action: object,
    entry: dict[str, Any],
    receive_time_ns: int,
    parsed: ParsedFrame,
) -> None:
    result = parsed.result
    where = result.channel
    symbol = arg.get("instId")
    if type(symbol) is not str or not symbol:
        symbol = req_text(arg, "instId", where)
    currency = _currency(symbol, where)
    ts = entry.get("ts")
    timestamp_ms = (
        int(ts)
        if type(ts) is str and ts.isascii() and ts.isdigit()
        else req_integer(entry, "ts", where)
    )
    bids = text_levels(entry.get("bids"), where, "bids")
    asks = text_levels(entry.get("asks"), where, "asks")
    checksum = _optional_int(entry, "checksum", where) or 0
    if not -(2**31) <= checksum < 2**31:  # a CRC-32 as a signed int32 (the proto's type)
        raise FieldError(f"{where}: 'checksum' out of the int32 range: {checksum}")
    sequence = _optional_int(entry, "seqId", where)
    prev = _optional_int(entry, "prevSeqId", where)
    has_sequence = sequence is not None
    # Built in place (nested constructors would copy every sub-message once more).
    event = md_pb.MarketDataEvent()
    if action == "snapshot":
        snapshot = event.book_snapshot
        fill_header(snapshot.header, timestamp_ms, receive_time_ns)
        snapshot.symbol = symbol
        add_book_levels(snapshot.bids, [level for level in bids if float(level[1]) > 0])
        add_book_levels(snapshot.asks, [level for level in asks if float(level[1]) > 0])
        snapshot.venue_sequence = int64(sequence or 0, "seqId", where)
        result.counts["book.snapshot"] += 1
    elif action == "update":
        if has_sequence and prev is None:
            raise FieldError(f"{where}: update with 'seqId' but no 'prevSeqId'")
        delta = event.book_delta
        fill_header(delta.header, timestamp_ms, receive_time_ns)
        delta.symbol = symbol
        add_book_levels(delta.bids, bids)
        add_book_levels(delta.asks, asks)
        delta.venue_sequence = int64(sequence or 0, "seqId", where)
        delta.prev_venue_sequence = int64(prev or 0, "prevSeqId", where)
        delta.checksum = checksum
        is_keepalive = not bids and not asks and has_sequence and prev == sequence
        result.counts["book.keepalive" if is_keepalive else "book.update"] += 1
    else:
        raise FieldError(f"{where}: missing or unknown book 'action' {action!r}")
    item = NormalisedEvent(currency, "book", event)
    result.events.append(item)
    parsed.books.append((item, BookText(symbol, bids, asks, checksum, has_sequence)))


def parse_rest_book(
    body: bytes | str, symbol: str, receive_time_ns: int
) -> tuple[NormalisedEvent | None, str]:
    """A ``GET /api/v5/market/books?instId=`` body -> (BookSnapshot event at its ``seqId``,
    ""), or (None, reason). A snapshot without ``seqId`` cannot be bridged to the
    websocket updates: refused. Pure; never raises."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return None, f"REST book {symbol}: not JSON: {exc}"
    if not isinstance(message, dict):
        return None, f"REST book {symbol}: not an object"
    if str(message.get("code", "0")) != "0":
        return None, f"REST book {symbol}: venue error {message.get('code')} {message.get('msg')}"
    data = message.get("data")
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        return None, f"REST book {symbol}: 'data' is not one book"
    entry = data[0]
    where = f"REST book {symbol}"
    try:
        currency = _currency(symbol, where)
        sequence = _optional_int(entry, "seqId", where)
        if sequence is None:
            return None, f"{where}: no 'seqId' to bridge the websocket updates with"
        bids = text_levels(entry.get("bids"), where, "bids")
        asks = text_levels(entry.get("asks"), where, "asks")
        event = md_pb.MarketDataEvent()
        snapshot = event.book_snapshot
        fill_header(snapshot.header, req_integer(entry, "ts", where), receive_time_ns)
        snapshot.symbol = symbol
        add_book_levels(snapshot.bids, [level for level in bids if float(level[1]) > 0])
        add_book_levels(snapshot.asks, [level for level in asks if float(level[1]) > 0])
        snapshot.venue_sequence = sequence
    except (FieldError, ValueError, OverflowError) as exc:
        return None, str(exc)
    return NormalisedEvent(currency, "book", event), ""


def fill_header(header: common_pb.EventHeader, timestamp_ms: int, receive_time_ns: int) -> None:
    """:func:`ms_header` written into an event's own header."""
    header.event_time_ns = ms_to_ns(timestamp_ms)
    header.receive_time_ns = receive_time_ns
    header.source = c.SOURCE


def _periodic_book(
    arg: Mapping[str, Any], entry: dict[str, Any], receive_time_ns: int, result: FrameResult
) -> None:
    where = result.channel
    symbol = str(entry.get("instId") or req_text(arg, "instId", where))
    currency = _currency(symbol, where)
    header = ms_header(req_integer(entry, "ts", where), receive_time_ns, c.SOURCE)
    bids = book_levels(text_levels(entry.get("bids"), where, "bids"))
    asks = book_levels(text_levels(entry.get("asks"), where, "asks"))
    sequence = _optional_int(entry, "seqId", where)
    snapshot = md_pb.BookSnapshot(
        header=header,
        symbol=symbol,
        bids=[level for level in bids if level.size_native > 0],
        asks=[level for level in asks if level.size_native > 0],
        venue_sequence=sequence or 0,
        is_periodic=True,
    )
    result.events.append(
        NormalisedEvent(currency, "book", md_pb.MarketDataEvent(book_snapshot=snapshot))
    )
    result.counts["book.periodic_snapshot"] += 1


def _ticker_base(entry: Mapping[str, Any], receive_time_ns: int, where: str) -> md_pb.VenueTicker:
    symbol = req_text(entry, "instId", where)
    _currency(symbol, where)
    return md_pb.VenueTicker(
        header=ms_header(req_integer(entry, "ts", where), receive_time_ns, c.SOURCE),
        symbol=symbol,
    )


def _emit_ticker(ticker: md_pb.VenueTicker, result: FrameResult, name: str) -> None:
    currency = currency_of(ticker.symbol) or ""
    result.events.append(NormalisedEvent(currency, "ticker", md_pb.MarketDataEvent(ticker=ticker)))
    result.counts[name] += 1


# (VenueTicker field, opt-summary key) pairs: IVs ("0"/"" = no value) and greeks.
_SUMMARY_IVS: Final = (("bid_iv", "bidVol"), ("ask_iv", "askVol"), ("mark_iv", "markVol"))


_SUMMARY_GREEKS: Final = (
    ("delta", "deltaBS"),
    ("delta_premium_adjusted", "delta"),
    ("gamma", "gammaBS"),
    ("vega", "vegaBS"),
    ("theta", "thetaBS"),
)


def _opt_summary(entry: dict[str, Any], receive_time_ns: int, parsed: ParsedFrame) -> None:
    where = c.OPT_SUMMARY
    result = parsed.result
    symbol = req_text(entry, "instId", where)
    currency = _currency(symbol, where)
    ts = entry.get("ts")
    timestamp_ms = (
        int(ts)
        if type(ts) is str and ts.isascii() and ts.isdigit()
        else req_integer(entry, "ts", where)
    )
    fields = _summary_fields_fast(entry)
    if fields is None:
        fields = _summary_fields_checked(entry, result.counts)
    if parsed.defer_tickers:
        event = md_pb.MarketDataEvent()
        parsed.ticker_parts[id(event)] = (symbol, ms_to_ns(timestamp_ms), fields)
    else:
        header = ms_header(timestamp_ms, receive_time_ns, c.SOURCE)
        event = md_pb.MarketDataEvent(ticker={"header": header, "symbol": symbol, **fields})
    result.events.append(NormalisedEvent(currency, "ticker", event))
    result.counts["ticker.opt_summary"] += 1


def _summary_fields_fast(entry: dict[str, Any]) -> dict[str, float] | None:
    """The usual entry (numeric strings; IVs and forward may be "" or absent) in one go;
    ``None`` for anything else (absent greeks, numbers, junk), which the checked path reads."""
    # An absent IV or forward is "no value" like "" (older messages have no fwdPx).
    bid_text, ask_text = entry.get("bidVol", ""), entry.get("askVol", "")
    mark_text, forward_text = entry.get("markVol", ""), entry.get("fwdPx", "")
    try:
        delta_text, adjusted_text, gamma_text = entry["deltaBS"], entry["delta"], entry["gammaBS"]
        vega_text, theta_text = entry["vegaBS"], entry["thetaBS"]
    except KeyError:
        return None
    str_ = str
    if not (
        type(bid_text) is str_
        and type(ask_text) is str_
        and type(mark_text) is str_
        and type(forward_text) is str_
        and type(delta_text) is str_
        and type(adjusted_text) is str_
        and type(gamma_text) is str_
        and type(vega_text) is str_
        and type(theta_text) is str_
    ):
        return None
    try:
        # "" is "no value" like "0": both leave an IV or the forward absent (not so for
        # greeks: an empty greek goes down the checked path).
        bid = float(bid_text) if bid_text else 0.0
        ask = float(ask_text) if ask_text else 0.0
        mark = float(mark_text) if mark_text else 0.0
        forward = float(forward_text) if forward_text else 0.0
        delta, delta_adjusted = float(delta_text), float(adjusted_text)
        gamma, vega, theta = float(gamma_text), float(vega_text), float(theta_text)
    except ValueError:
        return None
    # One check for all: a sum with a NaN or an infinity is not finite (an overflowing sum
    # of finite values only sends the entry down the checked path).
    total = bid + ask + mark + forward + delta + delta_adjusted + gamma + vega + theta
    if not math.isfinite(total):
        return None
    fields = {
        "delta": delta,
        "delta_premium_adjusted": delta_adjusted,
        "gamma": gamma,
        "vega": vega,
        "theta": theta,
    }
    if bid > 0:
        fields["bid_iv"] = bid
    if ask > 0:
        fields["ask_iv"] = ask
    if mark > 0:
        fields["mark_iv"] = mark
    if forward > 0:
        fields["forward_usd"] = forward
    return fields


def _summary_fields_checked(entry: dict[str, Any], counts: Counter[str]) -> dict[str, float]:
    where = c.OPT_SUMMARY
    fields: dict[str, float] = {}
    for target, key in _SUMMARY_IVS:
        iv = iv_fraction(opt_number(entry, key, counts, where))
        if iv is not None:
            fields[target] = iv
    forward = positive(opt_number(entry, "fwdPx", counts, where))
    if forward is not None:
        fields["forward_usd"] = forward
    for target, key in _SUMMARY_GREEKS:
        value = opt_number(entry, key, counts, where)
        if value is not None:
            fields[target] = value
    return fields


def _unit(symbol: str, units: Mapping[str, md_pb.PremiumUnit]) -> md_pb.PremiumUnit:
    return units.get(symbol) or premium_unit_from_id(symbol)


def _ticker(
    entry: dict[str, Any],
    receive_time_ns: int,
    units: Mapping[str, md_pb.PremiumUnit],
    result: FrameResult,
) -> None:
    where = c.TICKERS
    counts = result.counts
    ticker = _ticker_base(entry, receive_time_ns, where)
    # An empty side comes as "" price and size.
    set_best_quotes(
        ticker,
        opt_number(entry, "bidPx", counts, where),
        opt_number(entry, "bidSz", counts, where),
        opt_number(entry, "askPx", counts, where),
        opt_number(entry, "askSz", counts, where),
    )
    fill_usd_per_coin(ticker, _unit(ticker.symbol, units), None)
    _emit_ticker(ticker, result, "ticker.tickers")


def _mark_price(
    entry: dict[str, Any],
    receive_time_ns: int,
    units: Mapping[str, md_pb.PremiumUnit],
    result: FrameResult,
) -> None:
    where = c.MARK_PRICE
    ticker = _ticker_base(entry, receive_time_ns, where)
    mark = req_number(entry, "markPx", where)
    if entry.get("instType") == "OPTION":
        # The option mark here looks like USD per coin, not the coin premium (unconfirmed:
        # 3.80 for an ETH option whose ask was 0.0005 ETH); no native price is derived.
        ticker.mark_price_usd_per_coin = mark
        result.counts["mark_price.option_usd_unconfirmed"] += 1
    else:
        ticker.mark_price_native = mark
        fill_usd_per_coin(ticker, _unit(ticker.symbol, units), None)
    _emit_ticker(ticker, result, "ticker.mark_price")


def _instrument_state(entry: dict[str, Any], result: FrameResult) -> None:
    """``instruments``: the venue's list of an instrument type (listings, state changes)."""
    result.instrument_states.append(
        InstrumentStateChange(
            req_text(entry, "instId", c.INSTRUMENTS), req_text(entry, "state", c.INSTRUMENTS)
        )
    )
    result.counts["instrument_state"] += 1


def _index_ticker(entry: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = c.INDEX_TICKERS
    name = req_text(entry, "instId", where)
    index = md_pb.IndexPrice(
        header=ms_header(req_integer(entry, "ts", where), receive_time_ns, c.SOURCE),
        index_name=name,
        price_usd=req_number(entry, "idxPx", where),
    )
    result.events.append(
        NormalisedEvent(_currency(name, where), "index", md_pb.MarketDataEvent(index_price=index))
    )
    result.counts["index_price"] += 1


def parse_instruments(body: bytes | str, receive_time_ns: int) -> InstrumentParseResult:
    """Decode a ``/api/v5/public/instruments`` body (options, futures, swaps).

    Contract size in coins = ``ctVal`` x ``ctMult`` when ``ctValCcy`` is the coin (inverse
    futures state a USD face value instead: contract size 0). Options settling in their coin
    are inverse (coin per coin), in USDT/USDC linear (USD per coin, unconfirmed); futures and
    swaps are quoted in USD per coin. ``is_active`` is ``state == "live"``. The family comes
    from ``instFamily`` or, in older bodies, ``uly``. A bad entry is dead-lettered alone.
    """
    result = InstrumentParseResult()
    message = decode_rest_object(body, result)
    if message is None:
        return result
    code = message.get("code")
    if code not in ("0", 0, None):
        result.venue_errors.append(
            VenueError(str(code), str(message.get("msg", "")), None, c.INSTRUMENTS_PATH)
        )
        return result
    entries = message.get("data")
    if not isinstance(entries, list):
        result.dead_letters.append(DeadLetter(raw_bytes(body), "instruments: no data list"))
        return result
    collect_instruments(entries, _instrument, result)
    return result


def _instrument(entry: dict[str, Any], counts: Counter[str]) -> md_pb.Instrument | None:
    name = req_text(entry, "instId", "instrument")
    where = f"instrument {name}"
    inst_type = req_text(entry, "instType", where)
    if inst_type not in ("OPTION", "FUTURES", "SWAP"):
        counts[f"instrument.skipped.{safe_token(inst_type)}"] += 1
        return None
    symbol = parse_instrument_id(name)
    family_value = entry.get("instFamily") or entry.get("uly")
    family = family_value if isinstance(family_value, str) and family_value else None
    if family is None:
        if symbol is None:
            raise FieldError(f"{where}: neither 'instFamily' nor 'uly'")
        family = symbol.family
    currency, _, quote = family.upper().partition("-")
    settle = req_text(entry, "settleCcy", where).upper()
    size_currency = str(entry.get("ctValCcy", "")).upper()
    contract_value = req_number(entry, "ctVal", where)
    multiplier = opt_number(entry, "ctMult", counts, "instrument") or 1.0
    stated = contract_value * multiplier
    if size_currency == currency:
        contract_size, stated_unit = stated, md_pb.SIZE_UNIT_COIN
    else:
        contract_size = 0.0  # a USD face value (inverse futures): no size in coins
        stated_unit = (
            md_pb.SIZE_UNIT_USD if size_currency in USD_QUOTES else md_pb.SIZE_UNIT_UNSPECIFIED
        )
        counts["instrument.face_not_in_coin"] += 1
    state = entry.get("state")
    instrument = md_pb.Instrument(
        venue=c.VENUE,
        symbol=name,
        currency=currency,
        settlement_currency=settle,
        contract_size_coin=contract_size,
        contract_size=stated,
        contract_size_unit=stated_unit,
        # Book sizes, minSz and lotSz count contracts.
        size_unit=md_pb.SIZE_UNIT_CONTRACT,
        tick_size_native=req_number(entry, "tickSz", where),
        min_size_native=opt_number(entry, "minSz", counts, "instrument")
        or opt_number(entry, "lotSz", counts, "instrument")
        or 0.0,
        underlying=family,
        is_active=state == "live",
    )
    expiry_ms = entry.get("expTime")
    if inst_type == "OPTION":
        instrument.kind = md_pb.INSTRUMENT_KIND_OPTION
        if settle == currency:
            instrument.premium_unit = md_pb.PREMIUM_UNIT_COIN_PER_COIN
        elif settle in USD_QUOTES:
            instrument.premium_unit = md_pb.PREMIUM_UNIT_USD_PER_COIN
            counts["instrument.linear_option_unconfirmed"] += 1
        else:
            counts["instrument.unknown_premium_unit"] += 1
        instrument.premium_currency = settle
        option_type = entry.get("optType")
        if option_type == "C":
            instrument.option_kind = common_pb.OPTION_KIND_CALL
        elif option_type == "P":
            instrument.option_kind = common_pb.OPTION_KIND_PUT
        else:
            raise FieldError(f"{where}: missing or unknown 'optType'")
        strike = as_number(entry.get("stk"))
        if strike is None and symbol is not None:
            strike = symbol.strike
        if strike is None or strike <= 0:
            raise FieldError(f"{where}: missing or non-numeric 'stk'")
        instrument.strike_usd = strike
        instrument.expiry_time_ns = _expiry_ns(expiry_ms, symbol, where)
        counts["instrument.option"] += 1
    else:
        instrument.premium_unit = md_pb.PREMIUM_UNIT_USD_PER_COIN
        instrument.premium_currency = quote or "USD"
        if inst_type == "SWAP":
            instrument.kind = md_pb.INSTRUMENT_KIND_PERPETUAL
            counts["instrument.perpetual"] += 1
        else:
            instrument.kind = md_pb.INSTRUMENT_KIND_FUTURE
            instrument.expiry_time_ns = _expiry_ns(expiry_ms, symbol, where)
            counts["instrument.future"] += 1
    return instrument


def _expiry_ns(value: object, symbol: Any, where: str) -> int:
    milliseconds = as_number(value)
    if milliseconds is not None and milliseconds > 0:
        return ms_to_ns(int(milliseconds))
    if symbol is not None and symbol.expiry_time_ns is not None:
        return int(symbol.expiry_time_ns)
    raise FieldError(f"{where}: missing or non-numeric 'expTime'")
