"""Venue message shapes: Binance options messages as ``TypedDict``s (documentation and
typing) and, for the hot path, as ``msgspec.Struct``s (decoded and type-checked in C).

Combined streams wrap every payload as ``{"stream": "<name>", "data": <payload>}``. Only
the fields volstream reads are listed; numbers are strings; an IV of "-1" means no quote.
The parser validates every field it uses: the TypedDicts describe, they do not guarantee.
"""

from __future__ import annotations

import sys
from typing import Annotated, Final, Literal, NotRequired, TypedDict

import msgspec

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


# ---- hot path shapes (msgspec) ---------------------------------------------------------------
# Decoded with ``msgspec.json.Decoder(..., strict=False)`` (numeric strings -> floats). The
# bounds make the decoder reject, in C, every value the checked path would not take as is
# (it then handles the frame): NaN fails every bound, infinities fail ``le``, and unknown
# fields are refused (msgspec would skip values orjson rejects, such as 1e999).

_MAX_DOUBLE: Final = sys.float_info.max
# A level's price: finite and > 0; its size: finite and >= 0 (0 = an empty level).
HotPrice = Annotated[float, msgspec.Meta(gt=0.0, le=_MAX_DOUBLE)]
HotSize = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_DOUBLE)]
# Milliseconds that fit an int64 of nanoseconds.
HotMillis = Annotated[int, msgspec.Meta(ge=0, lt=2**63 // 1_000_000)]
# An update id the checked path reads exactly (it goes through a float: below 2**53).
HotUpdateId = Annotated[int, msgspec.Meta(ge=0, lt=2**53)]
HotInt = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class HotDepth(msgspec.Struct, forbid_unknown_fields=True):
    """The ``data`` of a partial depth push (:class:`Depth`); only ``s``/``E``/``u``/``b``/``a``
    are used. ``E`` also decodes as float or str (strict=False would turn 1.0 or "1" into an
    int) so that anything but a JSON integer can be told apart and left to the checked path."""

    s: Annotated[str, msgspec.Meta(min_length=1)]
    E: HotMillis | float | str
    u: HotUpdateId
    b: list[tuple[HotPrice, HotSize]]
    a: list[tuple[HotPrice, HotSize]]
    e: str = ""
    T: HotInt = 0
    U: HotInt = 0
    pu: HotInt = 0


class HotDepthFrame(msgspec.Struct, forbid_unknown_fields=True):
    """A combined-stream frame carrying a partial depth push."""

    stream: str
    data: HotDepth


# Any finite double (NaN fails both bounds, infinities one); null or absent -> None. An empty
# string is refused (the checked path reads it as absent; rare: it handles the frame).
HotNumber = Annotated[float, msgspec.Meta(ge=-_MAX_DOUBLE, le=_MAX_DOUBLE)]


class HotMark(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One ``optionMarkPrice`` entry (:class:`OptionMarkPrice`). Every field the venue sends is
    listed, so that an unknown one (whose value msgspec would skip unchecked) is refused; the
    unused ones (``e``/``P``/``hl``/``ll``) must be strings. ``E`` as in :class:`HotDepth`."""

    s: Annotated[str, msgspec.Meta(min_length=1)]
    E: HotMillis | float | str
    mp: HotNumber | None = None
    i: HotNumber | None = None
    bo: HotNumber | None = None
    ao: HotNumber | None = None
    bq: HotNumber | None = None
    aq: HotNumber | None = None
    b: HotNumber | None = None
    a: HotNumber | None = None
    vo: HotNumber | None = None
    rf: HotNumber | None = None
    d: HotNumber | None = None
    t: HotNumber | None = None
    g: HotNumber | None = None
    v: HotNumber | None = None
    e: str = ""
    P: str = ""
    hl: str = ""
    ll: str = ""


class HotMarkFrame(msgspec.Struct, forbid_unknown_fields=True):
    """A combined-stream frame carrying an ``<underlying>@optionMarkPrice`` push."""

    stream: str
    data: list[HotMark]
