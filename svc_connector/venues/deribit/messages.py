"""Venue message shapes: Deribit's JSON-RPC messages as ``TypedDict``s (documentation and
typing), and the msgspec Structs the hot path (hot.py) decodes into.

Only the fields volstream reads are listed; the venue adds fields over time and parse.py
ignores the ones it does not know. ``NotRequired`` marks fields absent in some recordings.
The parser validates every field it uses: these types describe, they do not guarantee.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

import msgspec

# ---- requests and responses ------------------------------------------------------------------


class JsonRpcRequest(TypedDict):
    jsonrpc: Literal["2.0"]
    id: int
    method: str
    params: dict[str, object]


class JsonRpcErrorBody(TypedDict):
    code: int
    message: str
    data: NotRequired[object]


class JsonRpcResponse(TypedDict):
    """Answer to a request: ``result`` or ``error``; ``usIn``/``usOut`` in microseconds."""

    jsonrpc: Literal["2.0"]
    id: NotRequired[int | str | None]
    result: NotRequired[object]
    error: NotRequired[JsonRpcErrorBody]
    usIn: NotRequired[int]
    usOut: NotRequired[int]
    usDiff: NotRequired[int]
    testnet: NotRequired[bool]


# ---- notifications ---------------------------------------------------------------------------


class HeartbeatParams(TypedDict):
    # "test_request": answer with public/test or be disconnected; "heartbeat": no answer.
    type: Literal["test_request", "heartbeat"]


class HeartbeatNotification(TypedDict):
    jsonrpc: Literal["2.0"]
    method: Literal["heartbeat"]
    params: HeartbeatParams


class SubscriptionParams(TypedDict):
    channel: str
    data: object


class SubscriptionNotification(TypedDict):
    jsonrpc: Literal["2.0"]
    method: Literal["subscription"]
    params: SubscriptionParams


# ---- channel payloads ------------------------------------------------------------------------

# book.{inst}.{interval}: [action, price, amount], action in new/change/delete.
BookEntry = tuple[Literal["new", "change", "delete"], float, float]
# book.{inst}.{group}.{depth}.{interval}: [price, amount].
GroupedBookEntry = tuple[float, float]


class BookData(TypedDict):
    """``book.{inst}.{interval}``: a snapshot (first after subscribing) then changes."""

    # Missing in old messages: the snapshot is then the message without prev_change_id.
    type: NotRequired[Literal["snapshot", "change"]]
    timestamp: int
    instrument_name: str
    change_id: int
    # On changes; 0 for a just-listed option; ignored on snapshots.
    prev_change_id: NotRequired[int]
    bids: list[BookEntry]
    asks: list[BookEntry]


class GroupedBookData(TypedDict):
    """``book.{inst}.{group}.{depth}.{interval}``: full top-N book on every push."""

    timestamp: int
    instrument_name: str
    change_id: int
    bids: list[GroupedBookEntry]
    asks: list[GroupedBookEntry]


class Greeks(TypedDict):
    """Black-76 greeks of the USD price (vega per vol point, theta per calendar day)."""

    delta: float
    gamma: float
    vega: float
    theta: float
    rho: float


class TickerData(TypedDict):
    """``ticker.{inst}.{interval}``. IVs in percent, 0 when that side is empty."""

    timestamp: int
    instrument_name: str
    state: NotRequired[str]
    underlying_price: NotRequired[float]
    underlying_index: NotRequired[str]
    index_price: NotRequired[float]
    interest_rate: NotRequired[float]
    mark_price: NotRequired[float]
    mark_iv: NotRequired[float]
    bid_iv: NotRequired[float]
    ask_iv: NotRequired[float]
    best_bid_price: NotRequired[float | None]
    best_bid_amount: NotRequired[float]
    best_ask_price: NotRequired[float | None]
    best_ask_amount: NotRequired[float]
    last_price: NotRequired[float | None]
    open_interest: NotRequired[float]
    greeks: NotRequired[Greeks]
    stats: NotRequired[dict[str, float | None]]


class PriceIndexData(TypedDict):
    """``deribit_price_index.{index}``."""

    timestamp: int
    price: float
    index_name: str


class VolatilityIndexData(TypedDict):
    """``deribit_volatility_index.{index}`` (DVOL, percent)."""

    timestamp: int
    volatility: float
    index_name: str


class InstrumentStateData(TypedDict):
    """``instrument.state.{kind}.{currency}``."""

    timestamp: int
    instrument_name: str
    # Older: created, started, settled, closed, deactivated, terminated; since January 2026
    # the book lifecycle: open, locked, settlement, delivered, inactive, halted, archivized.
    state: str


# ---- REST ------------------------------------------------------------------------------------


class InstrumentInfo(TypedDict):
    """One entry of ``public/get_instruments``."""

    instrument_name: str
    kind: Literal["option", "future", "spot", "future_combo", "option_combo"]
    option_type: NotRequired[Literal["call", "put"]]
    strike: NotRequired[float]
    expiration_timestamp: int
    tick_size: float
    contract_size: float
    min_trade_amount: float
    base_currency: str
    quote_currency: str
    settlement_currency: NotRequired[str]
    is_active: bool
    settlement_period: NotRequired[str]
    # Newer responses:
    instrument_id: NotRequired[int]
    counter_currency: NotRequired[str]
    price_index: NotRequired[str]
    instrument_type: NotRequired[Literal["reversed", "linear"]]


# ---- hot-path shapes (msgspec) ---------------------------------------------------------------
# Decoded in C by hot.py, which checks every field's type in the same pass. One
# ``data`` shape covers book and ticker notifications: every field either channel sends, the
# others defaulting to None. Strict: numbers must be JSON numbers (a numeric string or a bool
# fails, and the frame takes the checked path). Unknown fields are refused, not skipped:
# msgspec skips a value without checking its range, where orjson (the checked path) refuses
# a number that overflows a double (1e999), so an unread field could hide a malformed frame.
# Fields the hot path does not read are typed only so that they are read in full.


class HotGreeks(msgspec.Struct, forbid_unknown_fields=True):
    delta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None
    rho: float | None = None  # not read


class HotData(msgspec.Struct, forbid_unknown_fields=True):
    """``data`` of ``book.{inst}.{interval}`` (snapshot/change) or ``ticker.{inst}.{interval}``."""

    instrument_name: str
    timestamp: int
    # book
    type: str | None = None
    change_id: int | None = None
    prev_change_id: int | None = None
    bids: list[BookEntry] | None = None
    asks: list[BookEntry] | None = None
    # ticker
    best_bid_price: float | None = None
    best_bid_amount: float | None = None
    best_ask_price: float | None = None
    best_ask_amount: float | None = None
    mark_price: float | None = None
    bid_iv: float | None = None
    ask_iv: float | None = None
    mark_iv: float | None = None
    underlying_price: float | None = None
    underlying_index: str | None = None
    index_price: float | None = None
    interest_rate: float | None = None
    open_interest: float | None = None
    greeks: HotGreeks | None = None
    # ticker, not read
    state: str | None = None
    stats: dict[str, float | None] | None = None
    last_price: float | None = None
    settlement_price: float | None = None
    delivery_price: float | None = None
    estimated_delivery_price: float | None = None
    min_price: float | None = None
    max_price: float | None = None
    current_funding: float | None = None
    funding_8h: float | None = None
    interest_value: float | None = None


class HotParams(msgspec.Struct, forbid_unknown_fields=True):
    channel: str
    data: HotData


class HotNotification(msgspec.Struct, forbid_unknown_fields=True):
    """A ``subscription`` notification."""

    method: str
    params: HotParams
    jsonrpc: str | None = None  # not read
