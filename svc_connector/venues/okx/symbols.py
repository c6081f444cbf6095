"""OKX instrument ids and channel names.

- option: ``BTC-USD-220514-22000-C`` (family ``BTC-USD``, expiry ``YYMMDD``, strike, C/P);
- future: ``BTC-USD-220527`` (inverse) or ``BTC-USDT-220527`` (linear); swap ``BTC-USD-SWAP``;
- index: ``BTC-USD``;
- anything else is not parsed (``None``).

volstream names a subscription ``"<channel>:<key>"`` (key = instId, or the family for
``opt-summary``) so that the venue-independent planner can handle it as a string;
:func:`channel_arg` / :func:`channel_of_arg` convert to and from the venue's argument objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Final

from svc_connector.kit.expiry import expiry_ns, parse_yymmdd
from svc_connector.venues.okx import constants as c
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

_OPTION_RE: Final = re.compile(
    r"^(?P<base>[A-Z0-9]+)-(?P<quote>[A-Z]+)-(?P<expiry>\d{6})-(?P<strike>\d+(?:\.\d+)?)-(?P<cp>[CP])$"
)
_FUTURE_RE: Final = re.compile(r"^(?P<base>[A-Z0-9]+)-(?P<quote>[A-Z]+)-(?P<expiry>\d{6})$")
_SWAP_RE: Final = re.compile(r"^(?P<base>[A-Z0-9]+)-(?P<quote>[A-Z]+)-SWAP$")

USD_QUOTES: Final = frozenset({"USD", "USDT", "USDC"})


@dataclass(frozen=True, slots=True)
class OkxSymbol:
    name: str
    # Underlying coin, uppercase ("BTC").
    currency: str
    # "USD" for inverse (coin-margined) instruments, "USDT"/"USDC" for linear ones.
    quote: str
    kind: md_pb.InstrumentKind
    option_kind: common_pb.OptionKind = common_pb.OPTION_KIND_UNSPECIFIED
    expiry: date | None = None
    strike: float | None = None

    @property
    def family(self) -> str:
        return f"{self.currency}-{self.quote}"

    @property
    def is_inverse(self) -> bool:
        return self.quote == "USD"

    @property
    def expiry_time_ns(self) -> int | None:
        return None if self.expiry is None else expiry_ns(self.expiry)


def parse_instrument_id(name: str) -> OkxSymbol | None:
    match = _OPTION_RE.match(name)
    if match is not None:
        expiry = parse_yymmdd(match["expiry"])
        if expiry is None:
            return None
        return OkxSymbol(
            name,
            match["base"],
            match["quote"],
            md_pb.INSTRUMENT_KIND_OPTION,
            common_pb.OPTION_KIND_CALL if match["cp"] == "C" else common_pb.OPTION_KIND_PUT,
            expiry,
            float(match["strike"]),
        )
    match = _FUTURE_RE.match(name)
    if match is not None:
        expiry = parse_yymmdd(match["expiry"])
        if expiry is None:
            return None
        return OkxSymbol(
            name, match["base"], match["quote"], md_pb.INSTRUMENT_KIND_FUTURE, expiry=expiry
        )
    match = _SWAP_RE.match(name)
    if match is not None:
        return OkxSymbol(name, match["base"], match["quote"], md_pb.INSTRUMENT_KIND_PERPETUAL)
    return None


def format_strike(strike: float) -> str:
    text = format(Decimal(repr(float(strike))).normalize(), "f")
    return text


def format_option_id(
    currency: str, expiry: date, strike: float, is_call: bool, quote: str = "USD"
) -> str:
    return (
        f"{currency.upper()}-{quote.upper()}-{expiry:%y%m%d}-{format_strike(strike)}-"
        f"{'C' if is_call else 'P'}"
    )


def format_future_id(currency: str, expiry: date | None, quote: str = "USD") -> str:
    """A dated future, or the perpetual swap when ``expiry`` is None."""
    suffix = "SWAP" if expiry is None else f"{expiry:%y%m%d}"
    return f"{currency.upper()}-{quote.upper()}-{suffix}"


def family_of(currency: str, quote: str = "USD") -> str:
    """The option family / index of a coin: ``"BTC"`` -> ``"BTC-USD"``."""
    return f"{currency.upper()}-{quote.upper()}"


def currency_of(name: str) -> str | None:
    """Underlying coin of an instId, family or index id (``"ETH-USD-..."`` -> ``"ETH"``)."""
    head = name.split("-", 1)[0]
    return head.upper() if head.isalnum() else None


def premium_unit_from_id(name: str) -> md_pb.PremiumUnit:
    """Fallback premium unit when no instrument list is known yet.

    Options of a ``-USD`` family are inverse (coin per coin); linear families (unconfirmed)
    are USD per coin; futures and swaps are quoted in USD per coin either way.
    """
    symbol = parse_instrument_id(name)
    if symbol is None:
        return md_pb.PREMIUM_UNIT_UNSPECIFIED
    if symbol.kind == md_pb.INSTRUMENT_KIND_OPTION and symbol.is_inverse:
        return md_pb.PREMIUM_UNIT_COIN_PER_COIN
    if symbol.quote in USD_QUOTES:
        return md_pb.PREMIUM_UNIT_USD_PER_COIN
    return md_pb.PREMIUM_UNIT_UNSPECIFIED


# ---- subscription names -----------------------------------------------------------------------


def channel_name(channel: str, key: str) -> str:
    """``("books", "BTC-USD-220527-30000-C")`` -> ``"books:BTC-USD-220527-30000-C"``."""
    return f"{channel}:{key}"


def channel_arg(name: str) -> dict[str, str] | None:
    """The venue's subscription argument of a volstream channel name; None if malformed."""
    channel, sep, key = name.partition(":")
    if not sep or not channel or not key:
        return None
    if channel in c.FAMILY_CHANNELS:
        return {"channel": channel, c.FAMILY_KEY: key}
    if channel in c.TYPE_CHANNELS:
        return {"channel": channel, "instType": key}
    return {"channel": channel, "instId": key}


def channel_of_arg(arg: object) -> str | None:
    """The volstream channel name of a venue argument (keyed by ``instId``, ``instFamily``,
    ``uly``, or ``instType`` for type channels)."""
    if not isinstance(arg, dict):
        return None
    channel = arg.get("channel")
    if channel in c.TYPE_CHANNELS:
        key = arg.get("instType")
    else:
        key = arg.get("instId") or arg.get(c.FAMILY_KEY) or arg.get(c.LEGACY_FAMILY_KEY)
    if not isinstance(channel, str) or not isinstance(key, str) or not channel or not key:
        return None
    return channel_name(channel, key)
