"""The Binance hot path: partial depth pushes and ``optionMarkPrice`` pushes decoded and
checked in C by msgspec (messages.py), with exactly the checked path's result; anything the
shapes do not accept as is returns None before any state is touched, and the checked path
handles the frame.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any, Final

import msgspec

from svc_connector.kit.book_levels import ASKS_TAG, BIDS_TAG
from svc_connector.kit.fields import MS_TO_NS
from svc_connector.kit.stamping import StampingSession
from svc_connector.kit.tickers import TickerMerger
from svc_connector.venues.base import FrameResult, NormalisedEvent
from svc_connector.venues.binance import constants as c
from svc_connector.venues.binance.messages import HotDepthFrame, HotMark, HotMarkFrame
from svc_connector.venues.binance.parse import (
    OWNED_FIELDS,
    cached_currency_of,
    index_event,
    stream_head_kind,
)
from volstream.v1 import market_data_pb2 as md_pb

# Partial depth pushes (``<symbol>@depth20@100ms``) are nearly all of the traffic. The checked
# path reads them through orjson dicts, per-field checks and per-level float() calls; here
# msgspec decodes and checks the whole frame in C (messages.HotDepthFrame) and only the level
# order and the wire bytes are left to Python. Anything the shapes do not accept as is
# returns None before any state is touched, and the checked path handles the frame.
_HOT_DECODER: Final = msgspec.json.Decoder(HotDepthFrame, strict=False)


_HOT_LEVEL: Final = struct.Struct("<BBBdBd")  # as session.levels_wire writes a BookLevel


_HOT_PRICE: Final = itemgetter(0)


def _hot_levels(levels: list[tuple[float, float]], tag: int, descending: bool) -> bytes | None:
    """The live levels (size > 0) as wire bytes, in venue order, when that order is already
    best first (what session.wire_levels gives then); None when the checked path would sort."""
    if len(levels) > 1 and sorted(levels, key=_HOT_PRICE, reverse=descending) != levels:
        return None
    pack = _HOT_LEVEL.pack
    return b"".join([pack(tag, 18, 0x09, price, 0x11, size) for price, size in levels if size])


def hot_partial_depth(
    raw: bytes | str, receive_time_ns: int, next_sequence: Callable[[], int]
) -> FrameResult | None:
    """A partial depth frame -> the stamped FrameResult the checked path gives for it, or None
    (nothing read from ``next_sequence``) when the frame is anything but the usual shape."""
    try:
        frame = _HOT_DECODER.decode(raw)
    except (msgspec.DecodeError, TypeError):
        return None
    stream = frame.stream
    kind = stream_head_kind(stream)[1]
    if kind[:5] != "depth" or kind[5:] not in c.PARTIAL_DEPTH_LEVELS:
        return None
    data = frame.data
    timestamp_ms = data.E
    if type(timestamp_ms) is not int:
        return None  # a float or a string: the checked path's rules
    symbol = data.s
    currency = cached_currency_of(symbol)
    if currency is None:
        return None
    bids = _hot_levels(data.b, BIDS_TAG, True)
    asks = _hot_levels(data.a, ASKS_TAG, False)
    if bids is None or asks is None:
        return None
    event = md_pb.MarketDataEvent()
    snapshot = event.book_snapshot
    snapshot.MergeFromString(bids + asks)
    snapshot.venue_sequence = data.u
    snapshot.is_periodic = True
    snapshot.symbol = symbol
    header = snapshot.header
    header.event_time_ns = timestamp_ms * MS_TO_NS
    header.receive_time_ns = receive_time_ns
    header.source = c.SOURCE
    header.sequence = next_sequence()
    result = FrameResult([NormalisedEvent(currency, "book", event, header)], stream)
    counts = result.counts
    counts["frames"] = 1
    counts["book.partial_snapshot"] = 1
    return result


# ``<underlying>@optionMarkPrice`` pushes are rare (one per underlying a second) but carry one
# entry per listed option (~350): the checked path builds each ticker from a dict, reads its
# fields back and builds it again merged. Here each entry is decoded and checked in C
# (messages.HotMark), its fields go straight into the merge and its ticker is built once.
_HOT_MARKS_DECODER: Final = msgspec.json.Decoder(HotMarkFrame, strict=False)


_INT64: Final = range(-(2**63), 2**63)


def _odd_text(raw: bytes | str) -> bool:
    """Spellings msgspec reads unlike the checked path: "-0" (msgspec: +0.0) and, to be sure
    of no other such case, any escape."""
    if isinstance(raw, str):
        return "\\" in raw or '"-0"' in raw
    return b"\\" in raw or b'"-0"' in raw


def _hot_mark_fields(
    entry: HotMark, underlying: str, sizes: Mapping[str, float], counts: Counter[str]
) -> dict[str, Any]:
    """The fields the checked path's ticker of ``entry`` has set (what ``ticker_fields`` reads
    back: every field here has presence, but ``forward_name`` which is never empty)."""
    fields: dict[str, Any] = {}
    price, size = entry.bo, entry.bq
    if price is not None and price > 0 and size is not None and size > 0:
        fields["best_bid_price_native"] = price
        fields["best_bid_size_native"] = size
    price, size = entry.ao, entry.aq
    if price is not None and price > 0 and size is not None and size > 0:
        fields["best_ask_price_native"] = price
        fields["best_ask_size_native"] = size
    mark = entry.mp
    if mark is not None and mark > 0:
        fields["mark_price_native"] = mark
    value = entry.b
    if value is not None and value > 0:
        fields["bid_iv"] = value
    value = entry.a
    if value is not None and value > 0:
        fields["ask_iv"] = value
    value = entry.vo
    if value is not None and value > 0:
        fields["mark_iv"] = value
    if entry.d is not None:
        fields["delta"] = entry.d
    if entry.g is not None:
        fields["gamma"] = entry.g
    if entry.v is not None:
        fields["vega"] = entry.v
    if entry.t is not None:
        fields["theta"] = entry.t
    index = entry.i
    if index is not None and index > 0:
        fields["forward_usd"] = index
        fields["index_price_usd"] = index
        fields["forward_name"] = underlying
    if entry.rf is not None:
        fields["interest_rate"] = entry.rf
    contract_size = sizes.get(entry.s)
    if contract_size is None:
        counts["ticker.unknown_contract_size"] += 1
    elif contract_size > 0:
        # fill_usd_fields with PER_CONTRACT: native / contract size (same field order).
        if mark is not None and mark > 0:
            fields["mark_price_usd_per_coin"] = mark / contract_size
        if "best_bid_price_native" in fields:
            fields["best_bid_price_usd_per_coin"] = fields["best_bid_price_native"] / contract_size
        if "best_ask_price_native" in fields:
            fields["best_ask_price_usd_per_coin"] = fields["best_ask_price_native"] / contract_size
    return fields


class BinanceHotPath(StampingSession):
    """The hot path of :class:`~svc_connector.venues.binance.session.BinanceSession` for
    ``optionMarkPrice`` pushes (partial depth pushes need no state: :func:`hot_partial_depth`).
    It answers exactly what the checked path would, or None before touching any state. The
    session state it reads and moves on is declared here and made by the session.
    """

    _contract_sizes: dict[str, float]
    _tickers: TickerMerger
    # currency -> (index name, price) of the latest IndexPrice.
    _indices: dict[str, tuple[str, float]]

    def _hot_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult | None:
        """A partial depth push (it only advances the header sequence, so its result and
        state are the checked path's) or an ``optionMarkPrice`` push; else None."""
        result = hot_partial_depth(raw, receive_time_ns, self._take_sequence)
        if result is None:
            result = self._hot_marks(raw, receive_time_ns)
        return result

    def _hot_marks(self, raw: bytes | str, receive_time_ns: int) -> FrameResult | None:
        """An ``optionMarkPrice`` push -> the stamped result of the checked path, with the same
        merges and index update; None (no state touched) unless every entry is the usual shape.
        Only an unknown contract size is counted here; anything else the checked path would
        count or dead-letter makes the decode or the checks below refuse the frame."""
        if type(receive_time_ns) is not int or receive_time_ns not in _INT64 or _odd_text(raw):
            return None
        try:
            frame = _HOT_MARKS_DECODER.decode(raw)
        except (msgspec.DecodeError, TypeError):
            return None
        stream = frame.stream
        head, kind = stream_head_kind(stream)
        entries = frame.data
        if kind != "optionmarkprice" or not head or not entries:
            return None
        underlying = head.upper()
        result = FrameResult([], stream)
        counts = result.counts
        counts["frames"] = 1
        sizes = self._contract_sizes
        parsed: list[tuple[HotMark, int, str, dict[str, Any]]] = []
        for entry in entries:
            currency = cached_currency_of(entry.s)
            timestamp_ms = entry.E
            if currency is None or type(timestamp_ms) is not int:
                return None
            fields = _hot_mark_fields(entry, underlying, sizes, counts)
            parsed.append((entry, timestamp_ms, currency, fields))
        # Every entry is good: now what _post_process/_merged do, in the same order (tickers
        # see the index of earlier pushes; this push's index is taken after them).
        owned = OWNED_FIELDS["optionmarkprice"]
        merge = self._tickers.merge_fields
        indices = self._indices
        events = result.events
        for entry, timestamp_ms, currency, fields in parsed:
            symbol = entry.s
            merged = merge(symbol, fields, owned)
            if "forward_usd" not in merged:
                latest_index = indices.get(currency)
                if latest_index is not None:
                    name, price = latest_index
                    merged["forward_usd"] = price
                    merged["index_price_usd"] = price
                    merged["forward_name"] = name
            # No second fill_usd_fields (as _merged does): every field a ticker may hold is
            # one this stream owns, so ``merged`` is ``fields`` (plus an index forward,
            # which per-contract premiums do not use) and its USD values are already set.
            merged["header"] = {
                "event_time_ns": timestamp_ms * MS_TO_NS,
                "receive_time_ns": receive_time_ns,
                "source": c.SOURCE,
            }
            merged["symbol"] = symbol
            event = md_pb.MarketDataEvent(ticker=merged)
            events.append(NormalisedEvent(currency, "ticker", event, event.ticker.header))
        counts["ticker.mark_price"] = len(parsed)
        index_currency = cached_currency_of(underlying)
        if index_currency is not None:
            for entry, timestamp_ms, _, _ in parsed:
                index = entry.i
                if index is not None and index > 0:
                    event = index_event(underlying, index, timestamp_ms, receive_time_ns)
                    header = event.index_price.header
                    events.append(NormalisedEvent(index_currency, "index", event, header))
                    counts["index_price.from_marks"] = 1
                    indices[index_currency] = (underlying, index)
                    break
        return self.stamp(result)
