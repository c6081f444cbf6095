"""Shapes of Bybit v5 option stream messages as ``TypedDict``s (documentation and typing).

Only the fields volstream reads are listed; the venue adds fields over time and parse.py
ignores the ones it does not know. Prices, sizes and IVs are strings; "0" means "no value"
for IVs and an empty side for prices. The parser validates every field it uses.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

import msgspec

# ---- requests and responses ------------------------------------------------------------------


class OpRequest(TypedDict):
    """``{"req_id": "1", "op": "subscribe", "args": ["orderbook.25.BTC-...", ...]}``."""

    req_id: str
    op: Literal["subscribe", "unsubscribe", "ping"]
    args: NotRequired[list[str]]


class OpResponse(TypedDict):
    """The plain ack shape: ``success`` for the whole request, ``ret_msg`` on failure."""

    success: bool
    ret_msg: str
    conn_id: str
    req_id: NotRequired[str]
    op: str


class CommandRespData(TypedDict):
    successTopics: list[str]
    failTopics: list[str]


class CommandResp(TypedDict):
    """The option stream's ack shape: per-topic success and failure lists."""

    type: Literal["COMMAND_RESP"]
    success: NotRequired[bool]
    ret_msg: NotRequired[str]
    conn_id: NotRequired[str]
    req_id: NotRequired[str]
    op: NotRequired[str]
    data: CommandRespData


class Pong(TypedDict):
    """Answer to ``{"op": "ping"}`` on the option stream (``args``: server time, ms)."""

    op: Literal["pong"]
    args: NotRequired[list[str]]
    req_id: NotRequired[str]
    conn_id: NotRequired[str]


# ---- topics ----------------------------------------------------------------------------------

# [price, size]; size "0" deletes in a delta.
Level = tuple[str, str]


class OrderbookData(TypedDict):
    """``orderbook.{25|100}.{symbol}``.

    ``u``: update id; a snapshot always resets the book (u 1: the venue restarted; an empty
    book comes as a snapshot with u 0); a delta follows when its u is the last u + 1.
    ``seq``: cross-check sequence, absent in older recordings (which carry a top-level ``id``).
    """

    s: str
    b: list[Level]
    a: list[Level]
    u: int
    seq: NotRequired[int]


class OrderbookMessage(TypedDict):
    topic: str
    type: Literal["snapshot", "delta"]
    ts: int
    data: OrderbookData
    id: NotRequired[str]


class TickerData(TypedDict):
    """``tickers.{symbol}``. IVs are fractions ("0": that side is empty)."""

    symbol: str
    bidPrice: str
    bidSize: str
    bidIv: str
    askPrice: str
    askSize: str
    askIv: str
    lastPrice: NotRequired[str]
    markPrice: str
    markPriceIv: str
    indexPrice: str
    underlyingPrice: str
    openInterest: NotRequired[str]
    delta: NotRequired[str]
    gamma: NotRequired[str]
    vega: NotRequired[str]
    theta: NotRequired[str]
    predictedDeliveryPrice: NotRequired[str]


class TickerMessage(TypedDict):
    topic: str
    type: Literal["snapshot"]
    ts: int
    data: TickerData
    id: NotRequired[str]


# ---- REST ------------------------------------------------------------------------------------


class PriceFilter(TypedDict):
    minPrice: str
    maxPrice: str
    tickSize: str


class LotSizeFilter(TypedDict):
    maxOrderQty: str
    minOrderQty: str
    qtyStep: str


class InstrumentInfo(TypedDict):
    """One entry of ``/v5/market/instruments-info?category=option``: no strike field."""

    symbol: str
    status: Literal["PreLaunch", "Trading", "Delivering", "Closed"]
    baseCoin: str
    quoteCoin: str
    settleCoin: str
    optionsType: Literal["Call", "Put"]
    launchTime: NotRequired[str]
    deliveryTime: str
    priceFilter: PriceFilter
    lotSizeFilter: LotSizeFilter


class InstrumentsResult(TypedDict):
    category: str
    nextPageCursor: str
    list: list[InstrumentInfo]


class InstrumentsResponse(TypedDict):
    retCode: int
    retMsg: str
    result: InstrumentsResult
    time: int


# ---- msgspec shapes of the hot path (parse.BybitSession._hot_frame) ----------------------------
#
# Decoded with ``strict=False`` so that msgspec reads the venue's numeric strings as floats in C
# (float() per field costs more than the whole decode). Where that lenient mode differs from the
# checked path the hot path checks the outcome and steps aside: integers are typed
# ``int | float`` and must come out as ``int`` (lenient ``int`` would also take 12.0 and "1e3"),
# absent numbers default to NaN (non-finite: not taken), and a frame holding the string "-0"
# (msgspec reads 0.0, float() -0.0) where the sign of a zero would show is not taken. Strings
# are never coerced. Unknown fields are refused, not skipped: msgspec skips a value without
# converting it, where orjson (the checked path) refuses a number beyond double range or 64
# bits, so a field nobody reads could hide a malformed frame. A field the venue adds later
# sends its frames to the checked path until it is listed here.

_ABSENT = float("nan")


class StreamData(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """``data`` of an ``orderbook.*`` or a ``tickers.*`` frame, one struct for both topics
    (one decode pass; the other topic's fields keep their defaults)."""

    # orderbook.{depth}.{symbol}: levels are exactly [price, size]
    s: str = ""
    u: int | float = _ABSENT
    seq: int | float | None = None  # not used; read so that its range is checked
    b: list[tuple[float, float]] | None = None
    a: list[tuple[float, float]] | None = None
    # tickers.{symbol}
    symbol: str = ""
    bid_price: float = _ABSENT
    bid_size: float = _ABSENT
    bid_iv: float = _ABSENT
    ask_price: float = _ABSENT
    ask_size: float = _ABSENT
    ask_iv: float = _ABSENT
    mark_price: float = _ABSENT
    mark_price_iv: float = _ABSENT
    underlying_price: float = _ABSENT
    index_price: float = _ABSENT
    delta: float = _ABSENT
    gamma: float = _ABSENT
    vega: float = _ABSENT
    theta: float = _ABSENT
    open_interest: float = _ABSENT
    # tickers.{symbol}, not read: typed so that a JSON number in them is range-checked
    last_price: str | float | None = None
    # (named by hand: rename="camel" would spell them highPrice24H)
    high_price24h: str | float | None = msgspec.field(default=None, name="highPrice24h")
    low_price24h: str | float | None = msgspec.field(default=None, name="lowPrice24h")
    change24h: str | float | None = None
    predicted_delivery_price: str | float | None = None
    volume24h: str | float | None = None
    turnover24h: str | float | None = None
    total_volume: str | float | None = None
    total_turnover: str | float | None = None


class StreamFrame(msgspec.Struct, forbid_unknown_fields=True):
    """A topic notification: ``{"topic", "type", "ts", "data"}`` (``id`` ignored)."""

    topic: str
    ts: int | float
    data: StreamData
    type: str = ""
    cts: int | float | None = None  # not used; read so that its range is checked
    id: str | float | None = None  # not used
