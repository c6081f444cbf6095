"""Normalisation of venue tickers to ``VenueTicker``: USD-per-coin twins of native prices, best
quotes, one ticker assembled from several channels, and the ticker event built in one call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from svc_connector.venues.base import FrameResult, NormalisedEvent
from volstream.v1 import market_data_pb2 as md_pb


def emit_ticker(
    result: FrameResult,
    currency: str,
    symbol: str,
    fields: dict[str, Any],
    event_time_ns: int,
    receive_time_ns: int,
    source: str,
) -> None:
    """Append the VenueTicker of ``fields`` (its field values by name), built in one
    constructor call: a setattr per field costs more than the parse around it."""
    fields["header"] = {
        "event_time_ns": event_time_ns,
        "receive_time_ns": receive_time_ns,
        "source": source,
    }
    fields["symbol"] = symbol
    result.events.append(NormalisedEvent(currency, "ticker", md_pb.MarketDataEvent(ticker=fields)))


# VenueTicker fields that hold a native price, with their USD-per-coin twin.
PRICE_FIELDS: tuple[tuple[str, str], ...] = (
    ("mark_price_native", "mark_price_usd_per_coin"),
    ("best_bid_price_native", "best_bid_price_usd_per_coin"),
    ("best_ask_price_native", "best_ask_price_usd_per_coin"),
)


def usd_per_coin(
    native: float, unit: md_pb.PremiumUnit, forward: float | None, contract_size: float | None
) -> float | None:
    """A native premium in USD per coin of notional; ``None`` when it cannot be converted."""
    if unit == md_pb.PREMIUM_UNIT_COIN_PER_COIN:
        return native * forward if forward is not None and forward > 0 else None
    if unit == md_pb.PREMIUM_UNIT_USD_PER_COIN:
        return native
    if unit == md_pb.PREMIUM_UNIT_USD_PER_CONTRACT:
        return native / contract_size if contract_size is not None and contract_size > 0 else None
    return None


def fill_usd_per_coin(
    ticker: md_pb.VenueTicker, unit: md_pb.PremiumUnit, contract_size: float | None
) -> None:
    """Set each ``*_usd_per_coin`` from its native price (cleared when it cannot be converted).

    A USD field without a native price is left alone (a venue may publish only the USD value).
    """
    forward = ticker.forward_usd if ticker.HasField("forward_usd") else None
    for native_field, usd_field in PRICE_FIELDS:
        if not ticker.HasField(native_field):
            continue
        value = usd_per_coin(getattr(ticker, native_field), unit, forward, contract_size)
        if value is None:
            ticker.ClearField(usd_field)
        else:
            setattr(ticker, usd_field, value)


def set_best_quotes(
    ticker: md_pb.VenueTicker,
    bid_price: float | None,
    bid_size: float | None,
    ask_price: float | None,
    ask_size: float | None,
) -> None:
    """Best bid/ask of a ticker; a side is set only with a positive price and size (venues
    send an empty side as 0 or "")."""
    if bid_price is not None and bid_price > 0 and bid_size is not None and bid_size > 0:
        ticker.best_bid_price_native = bid_price
        ticker.best_bid_size_native = bid_size
    if ask_price is not None and ask_price > 0 and ask_size is not None and ask_size > 0:
        ticker.best_ask_price_native = ask_price
        ticker.best_ask_size_native = ask_size


class TickerMerger:
    """The latest VenueTicker per symbol, assembled from channels that each own some fields.

    A venue may spread one instrument's ticker over channels (OKX ``opt-summary`` has the IVs
    and forward, ``tickers`` the best bid/ask, ``mark-price`` the mark). Downstream services
    treat every VenueTicker as the whole current state, so a partial message must not blank
    the other channels' fields. A merge replaces exactly the fields the message's channel
    owns (set, or cleared when the message lacks them: an emptied book side must not keep
    its old price) and keeps the rest; the header is the message's.

    The state is kept as plain ``{field: value}`` dicts (no protobuf copies per merge): the
    hot path hands over the fields it parsed (:meth:`merge_fields`) and builds the message
    once from the merged dict.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._fields: dict[str, dict[str, Any]] = {}

    def merge_fields(
        self, symbol: str, fields: Mapping[str, Any], owned: Iterable[str]
    ) -> dict[str, Any]:
        """Merge ``fields`` (the set fields of an update; absent = cleared) for the ``owned``
        names; returns a fresh dict of every field now set (without header and symbol)."""
        current = self.current(symbol)
        for name in owned:
            value = fields.get(name)
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        return dict(current)

    def current(self, symbol: str) -> dict[str, Any]:
        """The merger's own fields dict of ``symbol`` (made empty the first time; the oldest
        symbol is dropped at the limit). A hot path may merge into it in place, setting or
        popping exactly the fields its channel owns, as :meth:`merge_fields` does."""
        current = self._fields.get(symbol)
        if current is None:
            if len(self._fields) >= self._limit:
                self._fields.pop(next(iter(self._fields)))
            current = self._fields[symbol] = {}
        return current

    def merge(self, update: md_pb.VenueTicker, owned: Iterable[str]) -> md_pb.VenueTicker:
        merged = self.merge_fields(update.symbol, ticker_fields(update, owned), owned)
        return md_pb.VenueTicker(header=update.header, symbol=update.symbol, **merged)


_TICKER_PRESENCE: dict[str, bool] = {
    f.name: f.has_presence for f in md_pb.VenueTicker.DESCRIPTOR.fields
}


def ticker_fields(ticker: md_pb.VenueTicker, names: Iterable[str]) -> dict[str, Any]:
    """The set fields of ``ticker`` among ``names`` (proto3 fields without presence count as
    set when they hold a non-default value)."""
    fields: dict[str, Any] = {}
    for name in names:
        if _TICKER_PRESENCE[name]:
            if ticker.HasField(name):
                fields[name] = getattr(ticker, name)
        else:
            value = getattr(ticker, name)
            if value:
                fields[name] = value
    return fields


def fill_usd_fields(
    fields: dict[str, Any], unit: md_pb.PremiumUnit, contract_size: float | None
) -> None:
    """:func:`fill_usd_per_coin` on a ``{field: value}`` dict of a VenueTicker."""
    forward = fields.get("forward_usd")
    for native_field, usd_field in PRICE_FIELDS:
        native = fields.get(native_field)
        if native is None:
            continue
        value = usd_per_coin(native, unit, forward, contract_size)
        if value is None:
            fields.pop(usd_field, None)
        else:
            fields[usd_field] = value
