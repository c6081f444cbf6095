"""Shapes of Bybit v5 option stream messages as ``TypedDict``s (documentation and typing).

Only the fields volstream reads are listed; the venue adds fields over time and parse.py
ignores the ones it does not know. Prices, sizes and IVs are strings; "0" means "no value"
for IVs and an empty side for prices. The parser validates every field it uses.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

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
