"""Shapes of Binance options messages as ``TypedDict``s (documentation and typing).

Combined streams wrap every payload as ``{"stream": "<name>", "data": <payload>}``. Only
the fields volstream reads are listed; numbers are strings; an IV of "-1" means no quote.
The parser validates every field it uses: these types describe, they do not guarantee.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

# ---- requests and responses ------------------------------------------------------------------


class StreamRequest(TypedDict):
    """``{"method": "SUBSCRIBE", "params": ["btcusdt@optionMarkPrice"], "id": 1}``."""

    method: Literal["SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"]
    params: list[str]
    id: int


class StreamResponse(TypedDict):
    """``{"result": null, "id": 1}``."""

    result: object
    id: int


class ErrorBody(TypedDict):
    code: int
    msg: str


class StreamError(TypedDict):
    """``{"error": {"code": 2, "msg": "Invalid request"}, "id": 1}`` (or code/msg at the top)."""

    error: NotRequired[ErrorBody]
    code: NotRequired[int]
    msg: NotRequired[str]
    id: NotRequired[int]


class CombinedFrame(TypedDict):
    stream: str
    data: object


# ---- stream payloads ---------------------------------------------------------------------------


class OptionQuote(TypedDict):
    """What ``optionMarkPrice`` entries and the older ``ticker`` share.

    ``b``/``a``/``vo``: bid/ask/mark IV fractions ("-1" when absent); ``bo``/``ao``/``bq``/
    ``aq``: best bid/ask price (USDT per contract) and size; ``d``/``t``/``g``/``v``:
    delta/theta/gamma/vega; ``mp``: the mark.
    """

    E: int
    s: str
    mp: str
    bo: str
    ao: str
    bq: str
    aq: str
    b: str
    a: str
    vo: str
    d: str
    t: str
    g: str
    v: str


class OptionMarkPrice(OptionQuote):
    """One entry of ``<underlying>@optionMarkPrice`` (current API, every second).

    ``i``: the spot index the venue prices on (the forward); ``rf``: the rate (0 in samples).
    """

    e: Literal["markPrice"]
    i: str
    rf: NotRequired[str]
    hl: NotRequired[str]
    ll: NotRequired[str]


class LegacyMarkPrice(TypedDict):
    """One entry of ``<COIN>@markPrice`` (eoptions): the mark only."""

    e: Literal["markPrice"]
    E: int
    s: str
    mp: str


class LegacyTicker(OptionQuote):
    """``<SYMBOL>@ticker`` (eoptions 24hrTicker): quotes, IVs, greeks, mark; no index."""

    e: Literal["24hrTicker"]
    T: int


class BookTicker(TypedDict):
    """``<symbol>@bookTicker``: ``b``/``a`` are prices here, ``B``/``A`` sizes."""

    e: Literal["bookTicker"]
    u: int
    s: str
    b: str
    B: str
    a: str
    A: str
    T: int
    E: int


# [price, size] strings.
Level = tuple[str, str]


class Depth(TypedDict):
    """``@depth{N}@100ms``: the full top N each push; ``@depth@100ms``: diffs, contiguous when
    ``pu`` equals the previous ``u``."""

    e: Literal["depth", "depthUpdate"]
    E: int
    T: NotRequired[int]
    s: str
    U: NotRequired[int]
    u: int
    pu: NotRequired[int]
    b: list[Level]
    a: list[Level]


class Index(TypedDict):
    """``<UNDERLYING>@index``."""

    e: Literal["index"]
    E: int
    s: str
    p: str


class DepthSnapshot(TypedDict):
    """``GET /eapi/v1/depth``: the REST snapshot a diff stream is bridged onto."""

    T: int
    u: int
    bids: list[Level]
    asks: list[Level]


# ---- REST ------------------------------------------------------------------------------------


class Filter(TypedDict):
    filterType: Literal["PRICE_FILTER", "LOT_SIZE"]
    tickSize: NotRequired[str]
    minQty: NotRequired[str]


class OptionSymbol(TypedDict):
    """One entry of ``exchangeInfo.optionSymbols``: ``unit`` = coins per contract."""

    symbol: str
    side: Literal["CALL", "PUT"]
    strikePrice: str
    underlying: str
    unit: int | str
    expiryDate: int
    quoteAsset: NotRequired[str]
    status: NotRequired[str]
    minQty: NotRequired[str]
    filters: NotRequired[list[Filter]]


class ExchangeInfo(TypedDict):
    serverTime: int
    optionSymbols: list[OptionSymbol]
