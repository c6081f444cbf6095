"""Pure OKX v5 decoding: raw frames and REST bodies -> normalised protobuf. No I/O, no clock.

- :func:`parse_frame`: one websocket frame -> :class:`FrameResult` (stateless).
- :func:`parse_instruments`: a ``/api/v5/public/instruments`` body -> instruments.
- :class:`OkxSession`: per-connection state on top of the stateless parse: book sequencing
  (``seqId``/``prevSeqId``) and checksum verification on a string-level book, tickers
  assembled from ``opt-summary`` + ``tickers`` + ``mark-price``, request/ack matching,
  header sequence stamping. The live venue sends checksum 0 since June 2026: the string
  book is kept only for books whose snapshot carried a checksum, and a non-zero checksum on
  a book without one resyncs it (``book.checksum_unexpected``). A hot path answers books
  pushes and ``opt-summary`` with msgspec Structs (see :meth:`OkxSession._hot_frame`).

Normalisation: IVs are fractions already ("0"/"" -> absent); ``opt-summary`` ``fwdPx`` is
the ticker's ``forward_usd``; ``deltaBS`` is ``delta`` and ``delta`` (premium-adjusted) is
``delta_premium_adjusted``; gamma/vega/theta are the ``*BS`` (Black-Scholes, USD) greeks.
Premiums of ``-USD`` families are inverse: USD per coin = native x ``fwdPx``.

Nothing here raises on bad input: unknown events and channels are counted and ignored,
messages missing required fields are dead-lettered with a reason.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson

from svc_connector.kit.book_levels import (
    ASKS_TAG,
    BIDS_TAG,
    TextLevel,
    add_book_levels,
    book_levels,
    text_levels,
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
)
from svc_connector.kit.requests import PendingRequests, name_venue_errors
from svc_connector.kit.sequencing import BookSequencer, book_reset_event, sequence_delta
from svc_connector.kit.stamping import StampingSession, ms_header
from svc_connector.kit.tickers import (
    PRICE_FIELDS,
    TickerMerger,
    fill_usd_fields,
    fill_usd_per_coin,
    set_best_quotes,
    ticker_fields,
)
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    InstrumentParseResult,
    InstrumentStateChange,
    NormalisedEvent,
    RequestAck,
    VenueError,
    VenueRequest,
)
from svc_connector.venues.okx import constants as c
from svc_connector.venues.okx import messages as msg
from svc_connector.venues.okx.checksum import OkxChecksumBook
from svc_connector.venues.okx.symbols import (
    USD_QUOTES,
    channel_arg,
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


# ---------------------------------------------------------------------------------------------
# websocket frames
# ---------------------------------------------------------------------------------------------


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
                result.dead_letters.append(DeadLetter(orjson.dumps(entry), str(exc)))
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


_currency_of = cached(currency_of)


def _currency(symbol: str, where: str) -> str:
    currency = _currency_of(symbol)
    if currency is None:
        raise FieldError(f"{where}: cannot tell the currency of {symbol!r}")
    return currency


# Integers a float holds exactly (what the checked path's float round trip returns as is).
_EXACT_INT: Final = 2**53


def _optional_int(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if type(value) is int and -_EXACT_INT < value < _EXACT_INT:
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
    timestamp_ms = int(ts) if type(ts) is str and ts.isdigit() else req_integer(entry, "ts", where)
    bids = text_levels(entry.get("bids"), where, "bids")
    asks = text_levels(entry.get("asks"), where, "asks")
    checksum = _optional_int(entry, "checksum", where) or 0
    sequence = _optional_int(entry, "seqId", where)
    prev = _optional_int(entry, "prevSeqId", where)
    has_sequence = sequence is not None
    # Built in place (nested constructors would copy every sub-message once more).
    event = md_pb.MarketDataEvent()
    if action == "snapshot":
        snapshot = event.book_snapshot
        _fill_header(snapshot.header, timestamp_ms, receive_time_ns)
        snapshot.symbol = symbol
        add_book_levels(snapshot.bids, [level for level in bids if float(level[1]) > 0])
        add_book_levels(snapshot.asks, [level for level in asks if float(level[1]) > 0])
        snapshot.venue_sequence = sequence or 0
        result.counts["book.snapshot"] += 1
    elif action == "update":
        if has_sequence and prev is None:
            raise FieldError(f"{where}: update with 'seqId' but no 'prevSeqId'")
        delta = event.book_delta
        _fill_header(delta.header, timestamp_ms, receive_time_ns)
        delta.symbol = symbol
        add_book_levels(delta.bids, bids)
        add_book_levels(delta.asks, asks)
        delta.venue_sequence = sequence or 0
        delta.prev_venue_sequence = prev or 0
        delta.checksum = checksum
        is_keepalive = not bids and not asks and has_sequence and prev == sequence
        result.counts["book.keepalive" if is_keepalive else "book.update"] += 1
    else:
        raise FieldError(f"{where}: missing or unknown book 'action' {action!r}")
    item = NormalisedEvent(currency, "book", event)
    result.events.append(item)
    parsed.books.append((item, BookText(symbol, bids, asks, checksum, has_sequence)))


def _fill_header(header: common_pb.EventHeader, timestamp_ms: int, receive_time_ns: int) -> None:
    """:func:`ms_header` written into an event's own header."""
    header.event_time_ns = timestamp_ms * MS_TO_NS
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
    timestamp_ms = int(ts) if type(ts) is str and ts.isdigit() else req_integer(entry, "ts", where)
    fields = _summary_fields_fast(entry)
    if fields is None:
        fields = _summary_fields_checked(entry, result.counts)
    if parsed.defer_tickers:
        event = md_pb.MarketDataEvent()
        parsed.ticker_parts[id(event)] = (symbol, timestamp_ms * MS_TO_NS, fields)
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


# ---------------------------------------------------------------------------------------------
# REST instruments
# ---------------------------------------------------------------------------------------------


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
    if size_currency == currency:
        contract_size = contract_value * multiplier
    else:
        contract_size = 0.0  # a USD face value (inverse futures): no size in coins
        counts["instrument.face_not_in_coin"] += 1
    state = entry.get("state")
    instrument = md_pb.Instrument(
        venue=c.VENUE,
        symbol=name,
        currency=currency,
        settlement_currency=settle,
        contract_size_coin=contract_size,
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
        return int(milliseconds) * MS_TO_NS
    if symbol is not None and symbol.expiry_time_ns is not None:
        return int(symbol.expiry_time_ns)
    raise FieldError(f"{where}: missing or non-numeric 'expTime'")


# ---------------------------------------------------------------------------------------------
# per-connection session
# ---------------------------------------------------------------------------------------------

_MAX_PENDING: Final = 10_000


class OkxSession(StampingSession):
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
    - a gap, an update without a snapshot, or a checksum mismatch: the message is dropped,
      a ``BookReset`` is emitted and the book channel is resubscribed (the venue answers
      with a fresh snapshot); updates in between are dropped, the resubscribe is requested
      again if no snapshot came within ``resync_timeout_ns``.

    Tickers: ``opt-summary`` (IVs, forward, greeks), ``tickers`` (best bid/ask) and
    ``mark-price`` each own some VenueTicker fields; the session emits the merged ticker of
    the instrument each time (see :class:`TickerMerger`) with USD-per-coin prices from the
    latest forward.

    ``on_frame`` tries a hot path first (see :meth:`_hot_frame`); ``hot_path = False``
    leaves every frame to the checked path, ``hot_hits`` counts the frames it answered.
    """

    subscribe_method = c.SUBSCRIBE
    unsubscribe_method = c.UNSUBSCRIBE
    # False: every frame takes the checked path (tests and benchmarks compare the two).
    hot_path: bool = True

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
        super().__init__(first_sequence=first_sequence, sequence=sequence)
        self._books = BookSequencer(resync_timeout_ns)
        self._strings: dict[str, OkxChecksumBook] = {}
        self._verify_checksums = verify_checksums
        self._premium_units: dict[str, md_pb.PremiumUnit] = dict(premium_units or {})
        self._contract_sizes: dict[str, float] = {}
        self._tickers = TickerMerger()
        self._next_request_id = first_request_id
        self._pending = PendingRequests(_MAX_PENDING)
        # request id -> channels whose ack has not arrived yet (OKX acks one per argument).
        self._unacked: dict[str, set[str]] = {}
        # Frames the hot path answered (the rest took the checked path).
        self.hot_hits = 0

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
        self._pending.clear()
        self._unacked.clear()

    # ---- outgoing ----------------------------------------------------------------------------

    def encode(self, request: VenueRequest) -> str:
        """``ping`` -> the text ``ping``; (un)subscribe ``{"channels": [...]}`` -> op + args."""
        if request.method == c.PING:
            return c.PING
        request_id = str(self._next_request_id)
        self._next_request_id += 1
        channels_value = request.params.get("channels")
        channels = [str(ch) for ch in channels_value] if isinstance(channels_value, list) else []
        args = [arg for arg in (channel_arg(ch) for ch in channels) if arg is not None]
        self._pending.add(request_id, request.method, channels)
        if request.method in (c.SUBSCRIBE, c.UNSUBSCRIBE):
            if len(self._unacked) >= _MAX_PENDING:
                self._unacked.pop(next(iter(self._unacked)))
            self._unacked[request_id] = set(channels)
        body = {"id": request_id, "op": request.method, "args": args}
        return orjson.dumps(body).decode()

    # ---- incoming ----------------------------------------------------------------------------

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        if self.hot_path:
            try:
                result = self._hot_frame(raw, receive_time_ns)
            except Exception:  # decided before any state changed: the checked path reports it
                result = None
            if result is not None:
                self.hot_hits += 1
                return result
        return super().on_frame(raw, receive_time_ns)

    def _hot_frame(self, raw: bytes | str, now_ns: int) -> FrameResult | None:
        """The hot path: the usual push frames (``books`` updates and snapshots,
        ``opt-summary``) decoded into msgspec Structs (messages.py) and normalised without
        the checked path's generic layers, which cost several times the decode per frame.

        Returns exactly what the checked path would (events stamped), or None before
        changing any state for anything else: replies, other channels, a decode or type
        error, a value the checked path would reject, count or read another way, a sequence
        that does not continue the book, a checksum to verify. Everything that can raise
        happens before the first state change.
        """
        try:
            book = msg.BOOK_PUSH_DECODER.decode(raw)
        except msgspec.MsgspecError:
            pass
        else:
            if book.event is not None or book.arg.channel not in c.INCREMENTAL_BOOKS:
                return None
            if book.action == "update":
                return self._hot_update(raw, book, now_ns)
            if book.action == "snapshot":
                return self._hot_snapshot(raw, book, now_ns)
            return None
        try:
            summary = msg.SUMMARY_PUSH_DECODER.decode(raw)
        except msgspec.MsgspecError:
            return None
        if summary.event is not None or summary.arg.channel != c.OPT_SUMMARY:
            return None
        return self._hot_summaries(raw, summary, now_ns)

    def _hot_update(
        self, raw: bytes | str, push: msg.HotBookPush, now_ns: int
    ) -> FrameResult | None:
        symbol = push.arg.instId
        currency = _currency_of(symbol) if symbol else None
        if currency is None or len(push.data) != 1:
            return None
        entry = push.data[0]
        sequence, prev, checksum = entry.seqId, entry.prevSeqId, entry.checksum
        if (
            sequence is None
            or prev is None
            or not -_EXACT_INT < sequence < _EXACT_INT
            or prev != self._books.last_sequence(symbol)  # also None: no book, resyncing
            or symbol in self._strings  # its checksum book needs the venue's strings
        ):
            return None
        body = self._hot_book_body(raw, entry, skip_empty=False)
        if body is None:
            return None
        checksum_count, levels, timestamp_ms = body
        bids, asks = entry.bids, entry.asks
        event = md_pb.MarketDataEvent()
        delta = event.book_delta
        delta.MergeFromString(levels)
        header = delta.header
        _fill_header(header, timestamp_ms, now_ns)
        delta.symbol = symbol
        delta.venue_sequence = sequence
        delta.prev_venue_sequence = prev
        delta.checksum = checksum
        # Decided: from here on nothing raises.
        self._books.check_delta(symbol, prev, sequence, now_ns)  # APPLY: prev == last
        header.sequence = self._take_sequence()
        result = FrameResult(
            [NormalisedEvent(currency, "book", event, header)], f"{push.arg.channel}:{symbol}"
        )
        counts = result.counts
        counts["frames"] = 1
        counts[
            "book.keepalive" if not bids and not asks and prev == sequence else "book.update"
        ] = 1
        counts[checksum_count] = 1
        return result

    def _hot_snapshot(
        self, raw: bytes | str, push: msg.HotBookPush, now_ns: int
    ) -> FrameResult | None:
        symbol = push.arg.instId
        currency = _currency_of(symbol) if symbol else None
        if currency is None or len(push.data) != 1:
            return None
        entry = push.data[0]
        sequence = entry.seqId
        if sequence is None or not -_EXACT_INT < sequence < _EXACT_INT:
            return None
        # A snapshot keeps the levels with a size (size 0 deletes only in updates).
        body = self._hot_book_body(raw, entry, skip_empty=True)
        if body is None:
            return None
        checksum_count, levels, timestamp_ms = body
        event = md_pb.MarketDataEvent()
        snapshot = event.book_snapshot
        snapshot.MergeFromString(levels)
        header = snapshot.header
        _fill_header(header, timestamp_ms, now_ns)
        snapshot.symbol = symbol
        snapshot.venue_sequence = sequence
        # Decided: from here on nothing raises.
        self._books.snapshot(symbol, sequence)
        self._strings.pop(symbol, None)
        header.sequence = self._take_sequence()
        result = FrameResult(
            [NormalisedEvent(currency, "book", event, header)], f"{push.arg.channel}:{symbol}"
        )
        counts = result.counts
        counts["frames"] = 1
        counts["book.snapshot"] = 1
        counts[checksum_count] = 1
        return result

    def _hot_book_body(
        self, raw: bytes | str, entry: msg.HotBook, skip_empty: bool
    ) -> tuple[str, bytes, int] | None:
        """What a books update and a snapshot check alike: (checksum counter, the levels'
        wire bytes, the venue timestamp in ms); None for the checked path."""
        checksum = entry.checksum
        if checksum == 0:
            checksum_count = "book.checksum_absent"
        elif not self._verify_checksums and -_MAX_CHECKSUM <= checksum < _MAX_CHECKSUM:
            checksum_count = "book.checksum_not_verified"
        else:
            return None  # to verify (or out of range): the checked path
        timestamp_ms = _hot_ts(entry.ts)
        if timestamp_ms is None:
            return None
        wire: list[bytes] = []
        bid_zeros = _hot_levels(wire, BIDS_TAG, entry.bids, skip_empty=skip_empty)
        ask_zeros = _hot_levels(wire, ASKS_TAG, entry.asks, skip_empty=skip_empty)
        if (
            bid_zeros is None
            or ask_zeros is None
            or ((bid_zeros or ask_zeros) and _minus_zero(raw))
        ):
            return None
        return checksum_count, b"".join(wire), timestamp_ms

    def _hot_summaries(
        self, raw: bytes | str, push: msg.HotSummaryPush, now_ns: int
    ) -> FrameResult | None:
        units = self._premium_units
        parsed: list[tuple[str, str, int, tuple[float, ...], md_pb.PremiumUnit]] = []
        zeros = False
        for entry in push.data:
            symbol = entry.instId
            currency = _currency_of(symbol) if symbol else None
            timestamp_ms = _hot_ts(entry.ts)
            values = _hot_summary_values(entry)
            if currency is None or timestamp_ms is None or values is None:
                return None
            unit = units.get(symbol) or premium_unit_from_id(symbol)
            parsed.append((symbol, currency, timestamp_ms * MS_TO_NS, values, unit))
            zeros = zeros or 0.0 in values[4:]
        if zeros and _minus_zero(raw):
            return None
        # Decided: from here on nothing raises.
        arg = push.arg
        key = arg.instId or arg.instFamily or arg.uly
        result = FrameResult(channel=f"{c.OPT_SUMMARY}:{key}" if key else c.OPT_SUMMARY)
        merger = self._tickers
        sizes = self._contract_sizes
        events = result.events
        take_sequence = self._take_sequence
        source = c.SOURCE
        for symbol, currency, event_time_ns, values, unit in parsed:
            merged = _merge_summary(merger, symbol, values)
            if not _NATIVE_PRICES.isdisjoint(merged):
                merged = dict(merged)  # gets USD twins the merger does not keep
                fill_usd_fields(merged, unit, sizes.get(symbol))
            event = md_pb.MarketDataEvent()
            ticker = event.ticker
            header = ticker.header
            header.event_time_ns = event_time_ns
            header.receive_time_ns = now_ns
            header.source = source
            ticker.symbol = symbol
            for name, value in merged.items():
                setattr(ticker, name, value)
            header.sequence = take_sequence()
            events.append(NormalisedEvent(currency, "ticker", event, header))
        counts = result.counts
        counts["frames"] = 1
        if parsed:
            counts["ticker.opt_summary"] = len(parsed)
        return result

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
        if not text.has_sequence:
            last = self._books.last_sequence(text.symbol)
            if last is not None:
                delta.prev_venue_sequence = last
                delta.venue_sequence = last + 1
        events = sequence_delta(self._books, item, result.channel, result, now_ns)
        if len(events) != 1 or events[0] is not item:
            return events
        strings = self._strings.get(text.symbol)
        if strings is not None:
            strings.apply_update(text.bids, text.asks)
        return self._checked(item, text, result, now_ns)

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


# ---------------------------------------------------------------------------------------------
# hot path
# ---------------------------------------------------------------------------------------------
# What the hot path checks so that nothing after its decision raises: timestamps whose
# nanoseconds fit an int64, sequences a float holds exactly (the checked path's float round
# trip alters others), checksums that fit the int32 field.
_MAX_TS_MS: Final = 9_000_000_000_000  # x 1e6 ns < 2**63
_MAX_CHECKSUM: Final = 2**31
_INF: Final = math.inf
_MINUS_ZERO_TEXT: Final = '"-0"'
_MINUS_ZERO_BYTES: Final = b'"-0"'
# One BookLevel on the wire, as svc_connector.session.levels_wire writes it.
_pack_level: Final = struct.Struct("<BBBdBd").pack


def _hot_ts(text: str) -> int | None:
    """A millisecond timestamp string as the checked path reads it, or None to fall back."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value < _MAX_TS_MS else None


def _minus_zero(raw: bytes | str) -> bool:
    """Whether ``raw`` has a "-0" string, the one number msgspec reads differently (0.0,
    float() -0.0). Asked only when a decoded value is 0 (a search of the whole frame)."""
    return _MINUS_ZERO_TEXT in raw if isinstance(raw, str) else _MINUS_ZERO_BYTES in raw


def _hot_levels(
    wire: list[bytes], tag: int, levels: list[list[float]], skip_empty: bool = False
) -> bool | None:
    """Append ``levels`` to ``wire`` as a book's ``bids``/``asks`` (``tag``) wire bytes
    (:func:`levels_wire`), the levels :func:`text_levels` + :func:`add_book_levels` would
    add; None for anything the checked path would reject (the caller then falls back),
    else whether a size was 0 (see :func:`_minus_zero`)."""
    zeros = False
    for level in levels:
        if len(level) < 2:
            return None
        price, size = level[0], level[1]
        if not (0.0 < price < _INF and 0.0 <= size < _INF):
            return None
        if size == 0.0:
            zeros = True
            if skip_empty:
                continue
        wire.append(_pack_level(tag, 18, 0x09, price, 0x11, size))
    return zeros


def _hot_summary_values(entry: msg.HotSummary) -> tuple[float, ...] | None:
    """(bid IV, ask IV, mark IV, forward, delta, delta premium adjusted, gamma, vega, theta)
    as :func:`_summary_fields_fast` reads them (0 = no value for the first four); None to
    fall back."""
    bid_text, ask_text, mark_text, forward_text = (
        entry.bidVol,
        entry.askVol,
        entry.markVol,
        entry.fwdPx,
    )
    try:
        bid = float(bid_text) if bid_text else 0.0
        ask = float(ask_text) if ask_text else 0.0
        mark = float(mark_text) if mark_text else 0.0
        forward = float(forward_text) if forward_text else 0.0
    except ValueError:
        return None
    delta, delta_adjusted = entry.deltaBS, entry.delta
    gamma, vega, theta = entry.gammaBS, entry.vegaBS, entry.thetaBS
    total = bid + ask + mark + forward + delta + delta_adjusted + gamma + vega + theta
    if not math.isfinite(total):
        return None
    return (bid, ask, mark, forward, delta, delta_adjusted, gamma, vega, theta)


# Merged ticker fields that make fill_usd_fields add or drop a USD twin.
_NATIVE_PRICES: Final = frozenset(native for native, _ in PRICE_FIELDS)


def _merge_summary(merger: TickerMerger, symbol: str, values: tuple[float, ...]) -> dict[str, Any]:
    """:meth:`TickerMerger.merge_fields` of an opt-summary entry's fields
    (:func:`_hot_summary_values`) for ``OPT_SUMMARY_FIELDS``, without a dict per entry;
    returns the merger's own dict (read it, do not change it)."""
    current = merger.current(symbol)
    bid, ask, mark, forward, delta, delta_adjusted, gamma, vega, theta = values
    # An IV or forward of 0 (or less) is "no value": cleared, as merge_fields does.
    for name, value in (
        ("bid_iv", bid),
        ("ask_iv", ask),
        ("mark_iv", mark),
        ("forward_usd", forward),
    ):
        if value > 0:
            current[name] = value
        else:
            current.pop(name, None)
    current["delta"] = delta
    current["delta_premium_adjusted"] = delta_adjusted
    current["gamma"] = gamma
    current["vega"] = vega
    current["theta"] = theta
    return current
