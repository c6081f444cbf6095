"""Deribit instrument names.

- option: ``BTC-6AUG21-40000-C`` (day not zero-padded); USDC-linear
  ``MATIC_USDC-9MAR24-1d02-C`` where ``d`` is the decimal point of the strike;
- future: ``BTC-25MAR22``, ``BTC_USDC-29MAR24``; perpetual: ``BTC-PERPETUAL``,
  ``BTC_USDC-PERPETUAL``;
- anything else (spot ``BTC_USDC``, combos ``BTC-FS-...``) is not parsed (``None``).

Every expiry is at 08:00 UTC on the expiry date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Final

from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NUMBER: Final = {name: number for number, name in enumerate(MONTHS, start=1)}
EXPIRY_HOUR_UTC: Final = 8

_BASE = r"(?P<base>[A-Z0-9]+)(?:_(?P<quote>[A-Z]+))?"
_EXPIRY = r"(?P<day>\d{1,2})(?P<month>[A-Z]{3})(?P<year>\d{2})"
_OPTION_RE: Final = re.compile(rf"^{_BASE}-{_EXPIRY}-(?P<strike>\d+(?:d\d+)?)-(?P<cp>[CP])$")
_FUTURE_RE: Final = re.compile(rf"^{_BASE}-{_EXPIRY}$")
_PERPETUAL_RE: Final = re.compile(rf"^{_BASE}-PERPETUAL$")


@dataclass(frozen=True, slots=True)
class DeribitSymbol:
    """A parsed instrument name."""

    name: str
    # Underlying coin, uppercase ("BTC", "MATIC").
    currency: str
    # "" for inverse (coin-margined) instruments, else the linear quote ("USDC", "USDT").
    quote: str
    kind: md_pb.InstrumentKind
    option_kind: common_pb.OptionKind = common_pb.OPTION_KIND_UNSPECIFIED
    expiry: date | None = None
    strike: float | None = None

    @property
    def is_linear(self) -> bool:
        return self.quote != ""

    @property
    def expiry_time_ns(self) -> int | None:
        return None if self.expiry is None else expiry_time_ns(self.expiry)


def expiry_time_ns(expiry: date) -> int:
    """08:00 UTC on ``expiry``, in ns since the epoch."""
    moment = datetime(expiry.year, expiry.month, expiry.day, EXPIRY_HOUR_UTC, tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000


def _expiry(match: re.Match[str]) -> date | None:
    month = _MONTH_NUMBER.get(match["month"])
    if month is None:
        return None
    try:
        return date(2000 + int(match["year"]), month, int(match["day"]))
    except ValueError:
        return None


def parse_strike(text: str) -> float | None:
    """``"40000"`` -> 40000.0, ``"1d02"`` -> 1.02."""
    try:
        return float(Decimal(text.replace("d", ".")))
    except InvalidOperation:
        return None


def format_strike(strike: float) -> str:
    """Inverse of :func:`parse_strike`: no trailing zeros, ``d`` for the decimal point."""
    text = format(Decimal(repr(float(strike))).normalize(), "f")
    return text.replace(".", "d")


def format_expiry(expiry: date) -> str:
    return f"{expiry.day}{MONTHS[expiry.month - 1]}{expiry.year % 100:02d}"


def _base(currency: str, quote: str) -> str:
    return f"{currency.upper()}_{quote.upper()}" if quote else currency.upper()


def format_option_name(
    currency: str, expiry: date, strike: float, is_call: bool, quote: str = ""
) -> str:
    return (
        f"{_base(currency, quote)}-{format_expiry(expiry)}-{format_strike(strike)}-"
        f"{'C' if is_call else 'P'}"
    )


def format_future_name(currency: str, expiry: date | None, quote: str = "") -> str:
    """A dated future, or the perpetual when ``expiry`` is None."""
    suffix = "PERPETUAL" if expiry is None else format_expiry(expiry)
    return f"{_base(currency, quote)}-{suffix}"


def parse_instrument_name(name: str) -> DeribitSymbol | None:
    """Parse an option/future/perpetual name; ``None`` for anything else."""
    match = _OPTION_RE.match(name)
    if match is not None:
        expiry = _expiry(match)
        strike = parse_strike(match["strike"])
        if expiry is None or strike is None:
            return None
        return DeribitSymbol(
            name=name,
            currency=match["base"],
            quote=match["quote"] or "",
            kind=md_pb.INSTRUMENT_KIND_OPTION,
            option_kind=common_pb.OPTION_KIND_CALL
            if match["cp"] == "C"
            else common_pb.OPTION_KIND_PUT,
            expiry=expiry,
            strike=strike,
        )
    match = _PERPETUAL_RE.match(name)
    if match is not None:
        return DeribitSymbol(
            name, match["base"], match["quote"] or "", md_pb.INSTRUMENT_KIND_PERPETUAL
        )
    match = _FUTURE_RE.match(name)
    if match is not None:
        expiry = _expiry(match)
        if expiry is None:
            return None
        return DeribitSymbol(
            name, match["base"], match["quote"] or "", md_pb.INSTRUMENT_KIND_FUTURE, expiry=expiry
        )
    return None


def currency_of(name: str) -> str | None:
    """Underlying coin of an instrument name (``"MATIC_USDC-..."`` -> ``"MATIC"``)."""
    head = name.split("-", 1)[0]
    coin = head.split("_", 1)[0]
    return coin.upper() if coin.isalnum() and coin else None


def index_name(currency: str) -> str:
    """Deribit's USD index of a coin: ``"BTC"`` -> ``"btc_usd"``."""
    return f"{currency.lower()}_usd"


def currency_of_index(name: str) -> str | None:
    """``"btc_usd"`` -> ``"BTC"``, ``"matic_usdc"`` -> ``"MATIC"``."""
    coin, sep, _ = name.partition("_")
    return coin.upper() if sep and coin.isalnum() else None


def premium_unit_from_name(name: str) -> md_pb.PremiumUnit:
    """Fallback premium unit when no instrument list is known yet.

    Options: inverse (coin per coin) unless the name carries a linear quote; futures and
    perpetuals are quoted in USD per coin either way.
    """
    symbol = parse_instrument_name(name)
    if symbol is None:
        return md_pb.PREMIUM_UNIT_UNSPECIFIED
    if symbol.kind == md_pb.INSTRUMENT_KIND_OPTION and not symbol.is_linear:
        return md_pb.PREMIUM_UNIT_COIN_PER_COIN
    return md_pb.PREMIUM_UNIT_USD_PER_COIN
