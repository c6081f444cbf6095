"""Shapes of OKX v5 public messages: ``TypedDict``s (documentation and typing), and at the
end the msgspec Structs the hot path decodes into.

Only the fields volstream reads are listed; the venue adds fields over time and parse.py
ignores the ones it does not know. Numbers are strings on the wire ("0.7794507758"),
timestamps are millisecond strings, and "" (or "0" for IVs) means "no value". The parser
validates every field it uses: these types describe, they do not guarantee.
"""

from __future__ import annotations

from typing import Final, Literal, NotRequired, TypedDict

import msgspec

# ---- requests and events ----------------------------------------------------------------------


class SubscriptionArg(TypedDict):
    channel: str
    instId: NotRequired[str]
    # opt-summary: the family ("BTC-USD"); older versions and recordings use "uly".
    instFamily: NotRequired[str]
    uly: NotRequired[str]
    instType: NotRequired[str]


class SubscribeRequest(TypedDict):
    """``{"id": "1", "op": "subscribe", "args": [...]}``; keep-alive is the text ``ping``."""

    id: NotRequired[str]
    op: Literal["subscribe", "unsubscribe"]
    args: list[SubscriptionArg]


class EventMessage(TypedDict):
    """A reply: one ``subscribe``/``unsubscribe`` event per argument, or an ``error``.

    ``notice`` announces e.g. a service upgrade (code 64008: the connection will close).
    """

    event: Literal["subscribe", "unsubscribe", "error", "notice", "channel-conn-count"]
    id: NotRequired[str]
    arg: NotRequired[SubscriptionArg]
    code: NotRequired[str]
    msg: NotRequired[str]
    connId: NotRequired[str]


class PushMessage(TypedDict):
    """Channel data: ``{"arg": {...}, "action"?: "snapshot"|"update", "data": [...]}``."""

    arg: SubscriptionArg
    action: NotRequired[Literal["snapshot", "update"]]
    data: list[object]


# ---- channel payloads ------------------------------------------------------------------------

# [price, size, "0" (deprecated liquidated orders), number of orders], all strings.
BookLevel = tuple[str, str, str, str]


class BookData(TypedDict):
    """``books``: snapshot then updates (size "0" deletes); ``books5``: full top 5 each push.

    ``seqId``/``prevSeqId``: the snapshot has prevSeqId -1; an update applies when prevSeqId
    equals the last seqId; a keep-alive has empty sides and prevSeqId == seqId; after
    maintenance seqId may go backwards (prevSeqId still equals the last seqId). Older
    messages carry neither. ``checksum``: signed CRC32 of the top 25 levels, 0 since 2026.
    """

    asks: list[BookLevel]
    bids: list[BookLevel]
    ts: str
    checksum: NotRequired[int]
    seqId: NotRequired[int]
    prevSeqId: NotRequired[int]
    instId: NotRequired[str]


class OptSummaryData(TypedDict):
    """``opt-summary`` (whole family each push). IVs are fractions, "0"/"" when empty.

    ``delta`` is premium-adjusted (coin greeks), ``deltaBS`` etc. are plain Black-Scholes.
    """

    instId: str
    uly: NotRequired[str]
    instFamily: NotRequired[str]
    markVol: str
    bidVol: str
    askVol: str
    fwdPx: NotRequired[str]
    delta: str
    gamma: str
    vega: str
    theta: str
    deltaBS: str
    gammaBS: str
    vegaBS: str
    thetaBS: str
    volLv: NotRequired[str]
    lever: NotRequired[str]
    realVol: NotRequired[str]
    ts: str


class TickerData(TypedDict):
    """``tickers``: best bid/ask ("" when a side is empty), last trade, 24 h stats."""

    instId: str
    instType: NotRequired[str]
    bidPx: str
    bidSz: str
    askPx: str
    askSz: str
    last: NotRequired[str]
    ts: str


class IndexTickerData(TypedDict):
    """``index-tickers``: ``instId`` is the index ("BTC-USD")."""

    instId: str
    idxPx: str
    ts: str


class MarkPriceData(TypedDict):
    """``mark-price``. For options the unit looks like USD per coin (unconfirmed)."""

    instId: str
    instType: str
    markPx: str
    ts: str


# ---- REST ------------------------------------------------------------------------------------


class InstrumentInfo(TypedDict):
    """One entry of ``GET /api/v5/public/instruments``.

    Contract size in coins = ``ctVal`` x ``ctMult`` when ``ctValCcy`` is the coin (options:
    0.1 BTC in 2022, 0.01 BTC in 2024); inverse futures state a USD face value instead.
    """

    instType: Literal["OPTION", "FUTURES", "SWAP", "SPOT", "MARGIN"]
    instId: str
    uly: NotRequired[str]
    instFamily: NotRequired[str]
    optType: NotRequired[Literal["C", "P", ""]]
    stk: NotRequired[str]
    expTime: NotRequired[str]
    settleCcy: str
    ctVal: str
    ctMult: str
    ctValCcy: str
    tickSz: str
    lotSz: str
    minSz: NotRequired[str]
    state: Literal["live", "suspend", "preopen", "expired", "test"]


class InstrumentsResponse(TypedDict):
    code: str
    msg: str
    data: list[InstrumentInfo]


# ---- venue message shapes (msgspec, for the hot path) -----------------------------------------
# What hot.py decodes in one C pass, every field's type checked there. A frame
# that does not fit (a field missing or of another type) fails to decode and takes the
# checked path. Unknown fields are ignored, as the checked path ignores them. The decoders
# are lax (strict=False): numeric strings become numbers ("0.0585" -> 0.0585, "12" -> 12),
# exactly as Python's float() reads them except "-0" (msgspec: 0.0, float(): -0.0), which
# the hot path therefore refuses.


class HotArg(msgspec.Struct):
    channel: str
    instId: str = ""
    instFamily: str = ""
    uly: str = ""


class HotBook(msgspec.Struct):
    """One incremental ``books`` entry; levels are [price, size, "0", orders] numbers."""

    asks: list[list[float]]
    bids: list[list[float]]
    ts: str
    checksum: int = 0
    seqId: int | None = None
    prevSeqId: int | None = None


class HotBookPush(msgspec.Struct):
    arg: HotArg
    data: list[HotBook]
    action: str = ""
    # Present (any value but null) on replies: the checked path handles those.
    event: object = None


class HotSummary(msgspec.Struct):
    """One ``opt-summary`` entry. IVs and the forward stay text ("" = no value, as absent)."""

    instId: str
    ts: str
    delta: float
    deltaBS: float
    gammaBS: float
    vegaBS: float
    thetaBS: float
    bidVol: str = ""
    askVol: str = ""
    markVol: str = ""
    fwdPx: str = ""


class HotSummaryPush(msgspec.Struct):
    arg: HotArg
    data: list[HotSummary]
    event: object = None


BOOK_PUSH_DECODER: Final = msgspec.json.Decoder(HotBookPush, strict=False)
SUMMARY_PUSH_DECODER: Final = msgspec.json.Decoder(HotSummaryPush, strict=False)
