"""Checked Deribit parsing: raw frames and REST bodies -> normalised protobuf. Stateless, no
I/O, no clock.

- :func:`parse_frame`: one websocket frame -> :class:`FrameResult`.
- :func:`parse_instruments`: a ``public/get_instruments`` body -> :class:`InstrumentParseResult`.

The per-connection state is in ``session.py``, the fast path in ``hot.py``.

Normalisation: IVs are percent on the wire and fractions here (0 and negatives -> absent);
prices of inverse options are coin per coin (USD per coin = native x ``underlying_price``);
the volatility index (DVOL) is a fraction too.

Nothing here raises on bad input: unknown messages and channels are counted and ignored,
messages missing required fields are dead-lettered with a reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from svc_connector.kit.book_levels import add_number_levels, best_first, best_first_pairs
from svc_connector.kit.fields import (
    FieldError,
    as_object,
    cached,
    int64,
    is_json_number,
    ms_to_ns,
    opt_json_number,
    positive,
    raw_bytes,
    req_json_int,
    req_json_number,
    req_text,
    request_id_of,
    safe_token,
)
from svc_connector.kit.frames import collect_instruments, decode_frame, decode_rest_object, guarded
from svc_connector.kit.stamping import ms_header
from svc_connector.kit.tickers import emit_ticker, fill_usd_fields
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
from svc_connector.venues.deribit import constants as c
from svc_connector.venues.deribit.symbols import (
    currency_of,
    currency_of_index,
    premium_unit_from_name,
)
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

US_TO_NS: Final = 1_000
_USD_QUOTES: Final = frozenset({"USD", "USDC", "USDT"})


def _iv_fraction(value: float | None) -> float | None:
    """Deribit IVs are percent; 0 (empty side) and negatives mean "no value"."""
    return value / 100.0 if value is not None and value > 0 else None


def parse_frame(
    raw: bytes | str,
    receive_time_ns: int,
    premium_units: Mapping[str, md_pb.PremiumUnit] | None = None,
) -> FrameResult:
    """Decode one Deribit websocket frame. Stateless; never raises.

    ``premium_units`` (symbol -> PremiumUnit, from discovery) decides how a ticker's native
    prices convert to USD per coin; unknown symbols fall back to the name's convention.
    Header ``sequence`` is left 0 (the session stamps it).
    """
    result = FrameResult()
    message = decode_frame(raw, result)
    if message is not None:
        units = premium_units or {}
        guarded(raw, result, lambda: _dispatch(message, receive_time_ns, units, result))
    return result


def _dispatch(
    message: dict[str, Any],
    receive_time_ns: int,
    premium_units: Mapping[str, md_pb.PremiumUnit],
    result: FrameResult,
) -> None:
    method = message.get("method")
    if method == "subscription":
        params = message.get("params")
        if not isinstance(params, dict):
            raise FieldError("subscription: missing 'params'")
        channel = req_text(params, "channel", "subscription")
        result.channel = channel
        if "data" not in params:
            raise FieldError(f"{channel}: missing 'data'")
        _parse_notification(channel, params["data"], receive_time_ns, premium_units, result)
    elif method == "heartbeat":
        params = message.get("params")
        kind = params.get("type") if isinstance(params, dict) else None
        if kind == "test_request":
            result.counts["heartbeat.test_request"] += 1
            result.replies.append(VenueRequest(c.TEST, {}, "test_request reply"))
        elif kind == "heartbeat":
            result.counts["heartbeat.heartbeat"] += 1
        else:
            result.counts["heartbeat.unknown_type"] += 1
    elif isinstance(method, str):
        # Requests (e.g. our own frames in a recording) and notifications we do not follow.
        result.counts[f"unknown_method.{safe_token(method)}"] += 1
    elif "error" in message:
        error = message["error"]
        if not isinstance(error, dict):
            raise FieldError("error response: 'error' is not an object")
        result.venue_errors.append(
            VenueError(
                code=str(error.get("code", "")),
                message=str(error.get("message", "")),
                request_id=request_id_of(message.get("id")),
            )
        )
        result.counts["venue_error"] += 1
    elif "result" in message:
        result.acks.append(RequestAck(request_id_of(message.get("id")), "", message["result"]))
        result.counts["response"] += 1
    else:
        result.counts["unknown_message"] += 1


def _parse_notification(
    channel: str,
    data: object,
    receive_time_ns: int,
    premium_units: Mapping[str, md_pb.PremiumUnit],
    result: FrameResult,
) -> None:
    parts = channel.split(".")
    head = parts[0]
    if head == "book":
        if len(parts) == 3:
            _parse_book(as_object(data, channel, "'data'"), receive_time_ns, result)
        elif len(parts) == 5:
            _parse_grouped_book(as_object(data, channel, "'data'"), receive_time_ns, result)
        else:
            result.counts["unknown_channel.book_shape"] += 1
    elif head == "ticker" and len(parts) == 3:
        _parse_ticker(as_object(data, channel, "'data'"), receive_time_ns, premium_units, result)
    elif head == "deribit_price_index" and len(parts) == 2:
        _parse_price_index(as_object(data, channel, "'data'"), receive_time_ns, result)
    elif head == "deribit_volatility_index" and len(parts) == 2:
        _parse_volatility_index(as_object(data, channel, "'data'"), receive_time_ns, result)
    elif head == "instrument" and len(parts) >= 2 and parts[1] == "state":
        body = as_object(data, channel, "'data'")
        result.instrument_states.append(
            InstrumentStateChange(
                req_text(body, "instrument_name", channel), req_text(body, "state", channel)
            )
        )
        result.counts["instrument_state"] += 1
    else:
        result.counts[f"unknown_channel.{safe_token(head)}"] += 1


cached_currency_of = cached(currency_of)


def _currency(symbol: str, where: str) -> str:
    currency = cached_currency_of(symbol)
    if currency is None:
        raise FieldError(f"{where}: cannot tell the currency of {symbol!r}")
    return currency


def _levels(
    entries: object, where: str, side: str, with_action: bool, result: FrameResult
) -> list[md_pb.BookLevel]:
    """Book entries -> levels. ``with_action``: ``[action, price, amount]`` (delete -> size 0)."""
    if not isinstance(entries, list):
        raise FieldError(f"{where}: missing or non-list '{side}'")
    levels: list[md_pb.BookLevel] = []
    width = 3 if with_action else 2
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != width:
            raise FieldError(f"{where}: malformed {side} entry {entry!r}")
        price, amount = entry[width - 2], entry[width - 1]
        if not (is_json_number(price) and is_json_number(amount)):
            raise FieldError(f"{where}: non-numeric {side} entry {entry!r}")
        size = float(amount)
        if with_action:
            action = entry[0]
            if action == "delete":
                size = 0.0
            elif action not in ("new", "change"):
                raise FieldError(f"{where}: unknown book action {action!r}")
        levels.append(md_pb.BookLevel(price_native=float(price), size_native=size))
    return levels


def _level_pairs(entries: object, where: str, side: str) -> list[tuple[float, float]]:
    """``[action, price, amount]`` book entries -> (price, size) pairs (delete -> size 0);
    same checks and errors as :func:`_levels`, without building BookLevel messages."""
    if not isinstance(entries, list):
        raise FieldError(f"{where}: missing or non-list '{side}'")
    pairs: list[tuple[float, float]] = []
    for entry in entries:
        # Fast path for the usual shape: an action string and two finite floats.
        if type(entry) is list and len(entry) == 3:
            action, price, amount = entry
            if (
                type(price) is float
                and type(amount) is float
                and price - price == 0.0
                and amount - amount == 0.0
            ):
                if action == "new" or action == "change":
                    pairs.append((price, amount))
                    continue
                if action == "delete":
                    pairs.append((price, 0.0))
                    continue
        level = _levels([entry], where, side, True, FrameResult())[0]
        pairs.append((level.price_native, level.size_native))
    return pairs


def _parse_book(data: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = result.channel
    symbol = req_text(data, "instrument_name", where)
    currency = _currency(symbol, where)
    header = ms_header(req_json_int(data, "timestamp", where), receive_time_ns, c.SOURCE)
    change_id = req_json_int(data, "change_id", where)
    kind = data.get("type")
    prev = data.get("prev_change_id")
    # Old messages carry no type: the snapshot is the one without prev_change_id. A snapshot
    # that carries prev_change_id ignores it.
    is_snapshot = kind == "snapshot" or (kind is None and prev is None)
    if not is_snapshot and kind not in (None, "change"):
        raise FieldError(f"{where}: unknown book type {kind!r}")
    bids = _level_pairs(data.get("bids"), where, "bids")
    asks = _level_pairs(data.get("asks"), where, "asks")
    # Built in place (nested constructors would copy every sub-message once more).
    event = md_pb.MarketDataEvent()
    if is_snapshot:
        snapshot = event.book_snapshot
        snapshot.header.CopyFrom(header)
        snapshot.symbol = symbol
        # Best first; a stable sort, like sorting BookLevels by price.
        live_bids, live_asks = best_first_pairs(bids, asks)
        add_number_levels(snapshot.bids, live_bids)
        add_number_levels(snapshot.asks, live_asks)
        snapshot.venue_sequence = int64(change_id, "change_id", where)
        result.counts["book.snapshot"] += 1
    else:
        if not is_json_number(prev):
            raise FieldError(f"{where}: change without numeric 'prev_change_id'")
        delta = event.book_delta
        delta.header.CopyFrom(header)
        delta.symbol = symbol
        add_number_levels(delta.bids, bids)
        add_number_levels(delta.asks, asks)
        delta.venue_sequence = int64(change_id, "change_id", where)
        delta.prev_venue_sequence = int64(int(prev), "prev_change_id", where)
        result.counts["book.change"] += 1
    result.events.append(NormalisedEvent(currency, "book", event))


def _parse_grouped_book(data: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = result.channel
    symbol = req_text(data, "instrument_name", where)
    currency = _currency(symbol, where)
    header = ms_header(req_json_int(data, "timestamp", where), receive_time_ns, c.SOURCE)
    change_id = data.get("change_id")
    bids = _levels(data.get("bids"), where, "bids", False, result)
    asks = _levels(data.get("asks"), where, "asks", False, result)
    best_bids, best_asks = best_first(bids, asks)
    snapshot = md_pb.BookSnapshot(
        header=header,
        symbol=symbol,
        bids=best_bids,
        asks=best_asks,
        venue_sequence=int(change_id) if is_json_number(change_id) else 0,
        is_periodic=True,
    )
    result.events.append(
        NormalisedEvent(currency, "book", md_pb.MarketDataEvent(book_snapshot=snapshot))
    )
    result.counts["book.grouped_snapshot"] += 1


_IV_KEYS: Final = ("bid_iv", "ask_iv", "mark_iv")


_GREEKS: Final = ("delta", "gamma", "vega", "theta")


def _parse_ticker(
    data: dict[str, Any],
    receive_time_ns: int,
    premium_units: Mapping[str, md_pb.PremiumUnit],
    result: FrameResult,
) -> None:
    where = result.channel
    counts = result.counts
    symbol = req_text(data, "instrument_name", where)
    currency = _currency(symbol, where)
    timestamp_ms = req_json_int(data, "timestamp", where)
    # Collected in a dict and built in one constructor call (cheaper than field by field).
    fields: dict[str, Any] = {}
    state = data.get("state")
    if state is not None and state != c.OPEN_STATE:
        # Not open (locked, halted, settlement, ...): no tradable price, so no price, size,
        # IV or greek; forward and index still hold.
        _forward_and_index(data, counts, fields)
        emit_ticker(
            result, currency, symbol, fields, ms_to_ns(timestamp_ms), receive_time_ns, c.SOURCE
        )
        counts["ticker.not_open"] += 1
        # Also state news: the connector withdraws the instrument (its book may still hold
        # prices) as an instrument.state notification would.
        result.instrument_states.append(InstrumentStateChange(symbol, str(state)))
        return
    bid_price = opt_json_number(data, "best_bid_price", counts, "ticker")
    bid_size = opt_json_number(data, "best_bid_amount", counts, "ticker")
    ask_price = opt_json_number(data, "best_ask_price", counts, "ticker")
    ask_size = opt_json_number(data, "best_ask_amount", counts, "ticker")
    # An empty side comes as price 0 (or null) with amount 0.
    if bid_price is not None and bid_size is not None and bid_size > 0:
        fields["best_bid_price_native"] = bid_price
        fields["best_bid_size_native"] = bid_size
    if ask_price is not None and ask_size is not None and ask_size > 0:
        fields["best_ask_price_native"] = ask_price
        fields["best_ask_size_native"] = ask_size
    # A closed instrument is sent with mark 0: no value, not a price.
    mark = positive(opt_json_number(data, "mark_price", counts, "ticker"))
    if mark is not None:
        fields["mark_price_native"] = mark
    for key in _IV_KEYS:
        iv = _iv_fraction(opt_json_number(data, key, counts, "ticker"))
        if iv is not None:
            fields[key] = iv
    _forward_and_index(data, counts, fields)
    rate = opt_json_number(data, "interest_rate", counts, "ticker")
    if rate is not None:
        fields["interest_rate"] = rate
    open_interest = opt_json_number(data, "open_interest", counts, "ticker")
    if open_interest is not None:
        fields["open_interest"] = open_interest
    greeks = data.get("greeks")
    if isinstance(greeks, dict):
        for name in _GREEKS:
            value = opt_json_number(greeks, name, counts, "ticker.greeks")
            if value is not None:
                fields[name] = value
    # Deribit premiums are coin or USD per coin (no contract size involved).
    unit = premium_units.get(symbol) or premium_unit_from_name(symbol)
    fill_usd_fields(fields, unit, None)
    emit_ticker(result, currency, symbol, fields, ms_to_ns(timestamp_ms), receive_time_ns, c.SOURCE)
    result.counts["ticker"] += 1


def _forward_and_index(data: dict[str, Any], counts: Counter[str], fields: dict[str, Any]) -> None:
    """The forward and index fields: all a ticker of an instrument that is not open keeps."""
    forward = positive(opt_json_number(data, "underlying_price", counts, "ticker"))
    if forward is not None:
        fields["forward_usd"] = forward
    forward_name = data.get("underlying_index")
    if isinstance(forward_name, str):
        fields["forward_name"] = forward_name
    index_price = positive(opt_json_number(data, "index_price", counts, "ticker"))
    if index_price is not None:
        fields["index_price_usd"] = index_price


def _index_currency(index_name: str, where: str) -> str:
    currency = currency_of_index(index_name)
    if currency is None:
        raise FieldError(f"{where}: cannot tell the currency of index {index_name!r}")
    return currency


def _parse_price_index(data: dict[str, Any], receive_time_ns: int, result: FrameResult) -> None:
    where = result.channel
    name = req_text(data, "index_name", where)
    event = md_pb.IndexPrice(
        header=ms_header(req_json_int(data, "timestamp", where), receive_time_ns, c.SOURCE),
        index_name=name,
        price_usd=req_json_number(data, "price", where),
    )
    result.events.append(
        NormalisedEvent(
            _index_currency(name, where), "index", md_pb.MarketDataEvent(index_price=event)
        )
    )
    result.counts["index_price"] += 1


def _parse_volatility_index(
    data: dict[str, Any], receive_time_ns: int, result: FrameResult
) -> None:
    where = result.channel
    name = req_text(data, "index_name", where)
    event = md_pb.VolatilityIndex(
        header=ms_header(req_json_int(data, "timestamp", where), receive_time_ns, c.SOURCE),
        index_name=name,
        volatility=req_json_number(data, "volatility", where) / 100.0,
    )
    result.events.append(
        NormalisedEvent(
            _index_currency(name, where), "index", md_pb.MarketDataEvent(volatility_index=event)
        )
    )
    result.counts["volatility_index"] += 1


def parse_instruments(body: bytes | str, receive_time_ns: int) -> InstrumentParseResult:
    """Decode a ``public/get_instruments`` body. Options, futures and perpetuals are kept;
    other kinds (spot, combos) are counted and skipped; a bad entry is dead-lettered alone.

    Every field is read by name: premium unit from ``quote_currency`` (the coin itself ->
    coin per coin; USD/USDC/USDT -> USD per coin; ``instrument_type`` when the quote is
    missing), settlement from ``settlement_currency`` (older responses lack it: inverse
    instruments settle in the base coin, linear ones in their quote), underlying from
    ``price_index`` (older responses: ``<base>_usd`` / ``<base>_<quote>``). Perpetuals get
    expiry 0 (the venue states year 3000).
    """
    result = InstrumentParseResult()
    message = decode_rest_object(body, result)
    if message is None:
        return result
    us_out = message.get("usOut")
    if is_json_number(us_out):
        result.venue_time_ns = int(us_out) * US_TO_NS
    error = message.get("error")
    if isinstance(error, dict):
        result.venue_errors.append(
            VenueError(
                str(error.get("code", "")), str(error.get("message", "")), None, c.GET_INSTRUMENTS
            )
        )
        return result
    entries = message.get("result")
    if not isinstance(entries, list):
        result.dead_letters.append(DeadLetter(raw_bytes(body), "get_instruments: no result list"))
        return result
    collect_instruments(entries, _instrument, result)
    return result


def _premium(kind: str, base: str, quote: str, instrument_type: str) -> md_pb.PremiumUnit:
    if quote:
        if quote == base:
            return md_pb.PREMIUM_UNIT_COIN_PER_COIN
        if quote in _USD_QUOTES:
            return md_pb.PREMIUM_UNIT_USD_PER_COIN
        return md_pb.PREMIUM_UNIT_UNSPECIFIED
    if instrument_type == "reversed":
        return (
            md_pb.PREMIUM_UNIT_COIN_PER_COIN
            if kind == "option"
            else md_pb.PREMIUM_UNIT_USD_PER_COIN
        )
    if instrument_type == "linear":
        return md_pb.PREMIUM_UNIT_USD_PER_COIN
    return md_pb.PREMIUM_UNIT_UNSPECIFIED


def _instrument(entry: dict[str, Any], counts: Counter[str]) -> md_pb.Instrument | None:
    name = req_text(entry, "instrument_name", "instrument")
    where = f"instrument {name}"
    kind = req_text(entry, "kind", where)
    if kind not in ("option", "future"):
        counts[f"instrument.skipped.{safe_token(kind)}"] += 1
        return None
    base = req_text(entry, "base_currency", where).upper()
    quote_value = entry.get("quote_currency")
    quote = quote_value.upper() if isinstance(quote_value, str) else ""
    instrument_type_value = entry.get("instrument_type")
    instrument_type = instrument_type_value if isinstance(instrument_type_value, str) else ""
    if not quote and not instrument_type:
        raise FieldError(f"{where}: neither 'quote_currency' nor 'instrument_type'")
    premium_unit = _premium(kind, base, quote, instrument_type)
    if premium_unit == md_pb.PREMIUM_UNIT_UNSPECIFIED:
        counts["instrument.unknown_premium_unit"] += 1
    is_inverse = instrument_type == "reversed" or quote in ("", "USD", base)
    settlement_value = entry.get("settlement_currency")
    if isinstance(settlement_value, str) and settlement_value:
        settlement = settlement_value.upper()
    else:
        settlement = base if is_inverse else quote
    price_index = entry.get("price_index")
    if isinstance(price_index, str) and price_index:
        underlying = price_index
    else:
        underlying = f"{base.lower()}_usd" if is_inverse else f"{base.lower()}_{quote.lower()}"
    # Inverse futures and perpetuals state `contract_size` and amounts in USD (10 per BTC
    # contract), not coins; options and linear futures in coins.
    contract_size = req_json_number(entry, "contract_size", where)
    size_unit = md_pb.SIZE_UNIT_USD if kind == "future" and is_inverse else md_pb.SIZE_UNIT_COIN
    # Since January 2026 `state` says whether the book is open; older bodies: `is_active`.
    state = entry.get("state")
    is_active = state == c.OPEN_STATE if isinstance(state, str) else entry.get("is_active")
    if isinstance(state, str) and state != c.OPEN_STATE:
        counts["instrument.not_open"] += 1
    instrument = md_pb.Instrument(
        venue=c.VENUE,
        symbol=name,
        currency=base,
        premium_currency=quote
        or (base if premium_unit == md_pb.PREMIUM_UNIT_COIN_PER_COIN else "USD"),
        settlement_currency=settlement,
        premium_unit=premium_unit,
        contract_size=contract_size,
        contract_size_unit=size_unit,
        size_unit=size_unit,
        contract_size_coin=contract_size if size_unit == md_pb.SIZE_UNIT_COIN else 0.0,
        tick_size_native=req_json_number(entry, "tick_size", where),
        min_size_native=opt_json_number(entry, "min_trade_amount", counts, "instrument") or 0.0,
        underlying=underlying,
        is_active=is_active if isinstance(is_active, bool) else True,
    )
    expiry_ms = req_json_int(entry, "expiration_timestamp", where)
    if kind == "option":
        instrument.kind = md_pb.INSTRUMENT_KIND_OPTION
        option_type = entry.get("option_type")
        if option_type == "call":
            instrument.option_kind = common_pb.OPTION_KIND_CALL
        elif option_type == "put":
            instrument.option_kind = common_pb.OPTION_KIND_PUT
        else:
            raise FieldError(f"{where}: missing or unknown 'option_type'")
        instrument.strike_usd = req_json_number(entry, "strike", where)
        instrument.expiry_time_ns = ms_to_ns(expiry_ms)
        counts["instrument.option"] += 1
    elif entry.get("settlement_period") == "perpetual" or name.endswith("-PERPETUAL"):
        instrument.kind = md_pb.INSTRUMENT_KIND_PERPETUAL
        counts["instrument.perpetual"] += 1
    else:
        instrument.kind = md_pb.INSTRUMENT_KIND_FUTURE
        instrument.expiry_time_ns = ms_to_ns(expiry_ms)
        counts["instrument.future"] += 1
    return instrument
