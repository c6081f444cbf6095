"""Fault kinds the simulator can inject on command (HTTP control endpoint or Python API)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    # Close every connection of the venue (or the one named by connection_id).
    DISCONNECT = "disconnect"
    # Send nothing and answer nothing (heartbeats included) for duration_s.
    HEARTBEAT_STALL = "heartbeat_stall"
    # Drop the next `count` incremental book messages (of `symbol`, else of any book).
    SEQUENCE_GAP = "sequence_gap"
    # Send the last notification (of `symbol` if given) again.
    DUPLICATE = "duplicate"
    # Swap the next two incremental book messages of one book.
    OUT_OF_ORDER = "out_of_order"
    # Send one frame that is not valid JSON.
    MALFORMED = "malformed"
    # Send the last notification again with its data fields of the wrong JSON types.
    WRONG_TYPES = "wrong_types"
    # Send the last notification again on a channel nobody subscribed.
    UNKNOWN_CHANNEL = "unknown_channel"
    # Add fields the venue never documented to the next `count` notifications.
    UNKNOWN_FIELDS = "unknown_fields"
    # Remove optional fields from the next `count` ticker notifications.
    MISSING_FIELDS = "missing_fields"
    # Expire `symbol` (or the nearest expiry): state "closed", removed from REST listings.
    EXPIRE = "expire"
    # List a new strike mid-session (on `symbol`'s expiry, else the nearest one).
    LIST = "list"
    # Freeze quotes (no ticker/book updates) of `symbol` or of everything for duration_s.
    STALE_QUOTES = "stale_quotes"


ALIASES = {
    "gap": FaultKind.SEQUENCE_GAP,
    "stall": FaultKind.HEARTBEAT_STALL,
    "dup": FaultKind.DUPLICATE,
    "swap": FaultKind.OUT_OF_ORDER,
    "reorder": FaultKind.OUT_OF_ORDER,
    "bad_json": FaultKind.MALFORMED,
    "wrong_type": FaultKind.WRONG_TYPES,
    "unknown_field": FaultKind.UNKNOWN_FIELDS,
    "missing_field": FaultKind.MISSING_FIELDS,
    "missing_optional_fields": FaultKind.MISSING_FIELDS,
    "expiry": FaultKind.EXPIRE,
    "expiring": FaultKind.EXPIRE,
    "delist": FaultKind.EXPIRE,
    "listing": FaultKind.LIST,
    "stale": FaultKind.STALE_QUOTES,
}


def parse_kind(value: str) -> FaultKind:
    v = value.strip().lower()
    if v in ALIASES:
        return ALIASES[v]
    try:
        return FaultKind(v)
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown fault kind {value!r}; known: {known}") from None


@dataclass(frozen=True)
class FaultRequest:
    kind: FaultKind
    venue: str = "deribit"
    symbol: str | None = None
    # Only this connection (ids are in /control/stats); None: all connections of the venue.
    connection_id: int | None = None
    duration_s: float = 5.0
    count: int = 1
    # LIST: the strike to list (default: between two listed strikes near the forward).
    strike: float | None = None
    # EXPIRE/LIST: currency when no symbol is given.
    currency: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> FaultRequest:
        """Validate a control-endpoint body; raises ValueError with a readable reason."""
        if not isinstance(obj, Mapping):
            raise ValueError("fault body must be a JSON object")
        kind = obj.get("kind")
        if not isinstance(kind, str):
            raise ValueError("'kind' (string) is required")
        venue = obj.get("venue", "deribit")
        if not isinstance(venue, str):
            raise ValueError("'venue' must be a string")
        symbol = obj.get("symbol")
        if symbol is not None and not isinstance(symbol, str):
            raise ValueError("'symbol' must be a string")
        currency = obj.get("currency")
        if currency is not None and not isinstance(currency, str):
            raise ValueError("'currency' must be a string")
        conn = obj.get("connection_id")
        if conn is not None and (not isinstance(conn, int) or isinstance(conn, bool)):
            raise ValueError("'connection_id' must be an integer")
        duration = obj.get("duration_s", 5.0)
        if not isinstance(duration, int | float) or isinstance(duration, bool) or duration < 0:
            raise ValueError("'duration_s' must be a non-negative number")
        count = obj.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError("'count' must be a positive integer")
        strike = obj.get("strike")
        if strike is not None and (
            not isinstance(strike, int | float) or isinstance(strike, bool) or strike <= 0
        ):
            raise ValueError("'strike' must be a positive number")
        return cls(
            kind=parse_kind(kind),
            venue=venue.lower(),
            symbol=symbol,
            connection_id=conn,
            duration_s=float(duration),
            count=count,
            strike=float(strike) if strike is not None else None,
            currency=currency.upper() if currency else None,
        )
