"""Binance option symbols and stream names.

Symbols: ``BTC-251219-89000-C`` (expiry ``YYMMDD``; strikes may carry decimals:
``DOGE-231006-0.06-C``, ``XRP-251219-2.05-P``). Underlyings: ``BTCUSDT``. Every expiry is at
08:00 UTC on the expiry date. Stream names are ``<name>@<kind>[@...]``; the current API
wants them lowercase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Final

from svc_connector.kit.expiry import expiry_ns, parse_yymmdd
from volstream.v1 import common_pb2 as common_pb

_OPTION_RE: Final = re.compile(
    r"^(?P<base>[A-Z0-9]+)-(?P<expiry>\d{6})-(?P<strike>\d+(?:\.\d+)?)-(?P<cp>[CP])$"
)
_QUOTES: Final = ("USDT", "USDC", "USD")
DEFAULT_QUOTE: Final = "USDT"


@dataclass(frozen=True, slots=True)
class BinanceSymbol:
    name: str
    currency: str
    expiry: date
    strike: float
    option_kind: common_pb.OptionKind

    @property
    def expiry_time_ns(self) -> int:
        return expiry_ns(self.expiry)


def parse_symbol(name: str) -> BinanceSymbol | None:
    """Parse an option symbol (either case); ``None`` for anything else."""
    match = _OPTION_RE.match(name.upper())
    if match is None:
        return None
    expiry = parse_yymmdd(match["expiry"])
    if expiry is None:
        return None
    return BinanceSymbol(
        name=name.upper(),
        currency=match["base"],
        expiry=expiry,
        strike=float(match["strike"]),
        option_kind=common_pb.OPTION_KIND_CALL if match["cp"] == "C" else common_pb.OPTION_KIND_PUT,
    )


def format_symbol(currency: str, expiry: date, strike: float, is_call: bool) -> str:
    strike_text = format(Decimal(repr(float(strike))).normalize(), "f")
    return f"{currency.upper()}-{expiry:%y%m%d}-{strike_text}-{'C' if is_call else 'P'}"


def underlying_of(currency: str, quote: str = DEFAULT_QUOTE) -> str:
    """``"BTC"`` -> ``"BTCUSDT"``."""
    return f"{currency.upper()}{quote.upper()}"


def currency_of(name: str) -> str | None:
    """The coin of a symbol (``"BTC-251219-89000-C"``), an underlying (``"BTCUSDT"``) or a
    coin stream head (``"XRP"``), in either case."""
    head = name.split("-", 1)[0].upper()
    if not head.isalnum():
        return None
    if "-" not in name:
        for quote in _QUOTES:
            if head.endswith(quote) and len(head) > len(quote):
                return head[: -len(quote)]
    return head


def split_stream(stream: str) -> tuple[str, str, tuple[str, ...]]:
    """``"eth-251219-3100-c@depth20@100ms"`` -> (``"eth-251219-3100-c"``, ``"depth20"``,
    ``("100ms",)``); the kind lowercased."""
    head, _, rest = stream.partition("@")
    parts = rest.split("@") if rest else []
    kind = parts[0].lower() if parts else ""
    return head, kind, tuple(parts[1:])
