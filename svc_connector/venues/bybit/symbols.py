"""Bybit option symbols.

``BTC-6JAN23-17500-C`` (day not zero-padded, strike may carry a decimal point), and the
USDT-settled series ``BTC-27DEC24-60000-C-USDT``. The instrument list has no strike field:
it is parsed from the symbol. Every expiry is at 08:00 UTC on the expiry date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Final

from svc_connector.kit.expiry import MONTH_CODES, expiry_ns, parse_dmmmyy
from svc_connector.venues.bybit import constants as c
from volstream.v1 import common_pb2 as common_pb

_OPTION_RE: Final = re.compile(
    r"^(?P<base>[A-Z0-9]+)-(?P<expiry>\d{1,2}[A-Z]{3}\d{2})-(?P<strike>\d+(?:\.\d+)?)"
    r"-(?P<cp>[CP])(?:-(?P<settle>[A-Z]+))?$"
)
# The settle coin of a symbol without a suffix.
DEFAULT_SETTLE: Final = "USDC"


@dataclass(frozen=True, slots=True)
class BybitSymbol:
    name: str
    currency: str
    expiry: date
    strike: float
    option_kind: common_pb.OptionKind
    # "USDC" for the classic series, the suffix ("USDT") otherwise.
    settle: str

    @property
    def expiry_time_ns(self) -> int:
        return expiry_ns(self.expiry)


def parse_symbol(name: str) -> BybitSymbol | None:
    """Parse an option symbol; ``None`` for anything else."""
    match = _OPTION_RE.match(name)
    if match is None:
        return None
    expiry = parse_dmmmyy(match["expiry"])
    if expiry is None:
        return None
    return BybitSymbol(
        name=name,
        currency=match["base"],
        expiry=expiry,
        strike=float(match["strike"]),
        option_kind=common_pb.OPTION_KIND_CALL if match["cp"] == "C" else common_pb.OPTION_KIND_PUT,
        settle=match["settle"] or DEFAULT_SETTLE,
    )


def format_symbol(
    currency: str, expiry: date, strike: float, is_call: bool, settle: str = DEFAULT_SETTLE
) -> str:
    strike_text = format(Decimal(repr(float(strike))).normalize(), "f")
    suffix = "" if settle.upper() == DEFAULT_SETTLE else f"-{settle.upper()}"
    month = MONTH_CODES[expiry.month - 1]
    return (
        f"{currency.upper()}-{expiry.day}{month}{expiry.year % 100:02d}-{strike_text}-"
        f"{'C' if is_call else 'P'}{suffix}"
    )


_QUOTE_SUFFIXES: Final = ("USDT", "USDC", "PERP", "USD")


def currency_of(name: str) -> str | None:
    """Underlying coin of an option symbol (``"SOL-28APR23-30-C"``) or of a linear symbol
    of the same envelope (``"BTCUSDT"``)."""
    symbol = parse_symbol(name)
    if symbol is not None:
        return symbol.currency
    head = name.split("-", 1)[0].upper()
    if not head.isalnum():
        return None
    for suffix in _QUOTE_SUFFIXES:
        if head.endswith(suffix) and len(head) > len(suffix):
            return head[: -len(suffix)]
    return head


def orderbook_topic(symbol: str, depth: str) -> str:
    return c.ORDERBOOK_TOPIC.format(depth=depth, symbol=symbol)


def tickers_topic(symbol: str) -> str:
    return c.TICKERS_TOPIC.format(symbol=symbol)
