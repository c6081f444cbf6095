"""Option expiry dates as venues spell them in instrument names, and the expiry instant."""

from __future__ import annotations

from datetime import UTC, date, datetime

# Every venue expires options at 08:00 UTC on the expiry date.
EXPIRY_HOUR_UTC = 8
MONTH_CODES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def expiry_ns(expiry: date) -> int:
    """08:00 UTC on ``expiry``, in ns since the epoch."""
    moment = datetime(expiry.year, expiry.month, expiry.day, EXPIRY_HOUR_UTC, tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000


def parse_yymmdd(text: str) -> date | None:
    """``"220514"`` -> 2022-05-14 (OKX, Binance); None if it is not a date."""
    if len(text) != 6 or not text.isdigit():
        return None
    try:
        return date(2000 + int(text[:2]), int(text[2:4]), int(text[4:]))
    except ValueError:
        return None


def parse_dmmmyy(text: str) -> date | None:
    """``"6JAN23"`` / ``"27DEC24"`` -> a date (Deribit, Bybit: day not zero-padded)."""
    day, month, year = text[:-5], text[-5:-2], text[-2:]
    if not (day.isdigit() and len(day) <= 2 and year.isdigit() and month in MONTH_CODES):
        return None
    try:
        return date(2000 + int(year), MONTH_CODES.index(month) + 1, int(day))
    except ValueError:
        return None
