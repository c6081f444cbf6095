"""The Bybit hot path: the usual notification frames (``orderbook.*``, ``tickers.*``) decoded
with msgspec and written as protobuf wire bytes, with exactly the checked path's result
(see :class:`BybitHotPath`).
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable
from operator import itemgetter
from typing import Final

import msgspec

from svc_connector.kit.book_levels import ASKS_TAG, BIDS_TAG
from svc_connector.kit.fields import MS_TO_NS
from svc_connector.kit.sequencing import BookSequencer
from svc_connector.kit.stamping import StampingSession
from svc_connector.venues.base import FrameResult, NormalisedEvent
from svc_connector.venues.bybit import constants as c
from svc_connector.venues.bybit.messages import StreamData, StreamFrame
from svc_connector.venues.bybit.parse import cached_currency_of
from volstream.v1 import market_data_pb2 as md_pb

_STREAM_DECODER: Final = msgspec.json.Decoder(StreamFrame, strict=False)


def _in_orjson_range(value: float | None) -> bool:
    """False for an integer orjson may reject (beyond 64 bits it parses as a double, which
    can overflow); msgspec keeps any integer."""
    return not isinstance(value, int) or -(2**63) <= value < 2**64


_TICKERS_PREFIX: Final = c.TICKERS + "."


_ORDERBOOK_PREFIX: Final = c.ORDERBOOK + "."


_MAX_INT64: Final = 2**63


_MAX_TS_MS: Final = _MAX_INT64 // MS_TO_NS


_INF: Final = math.inf


# msgspec reads the string "-0" as 0.0, float() as -0.0: such frames take the checked path.
_NEGATIVE_ZERO: Final = '"-0"'


_LEVEL_PACK: Final = struct.Struct("<BBBdBd").pack  # one BookLevel, as in levels_wire


_PRICE: Final = itemgetter(0)


def _delta_wire(bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> bytes:
    """A delta's levels as :func:`wire_levels` writes them (every level, venue order; bids
    then asks). Raises ValueError where it would raise a FieldError (on_frame -> None)."""
    pack = _LEVEL_PACK
    parts = [
        pack(tag, 18, 0x09, price, 0x11, size)
        for tag, side in ((BIDS_TAG, bids), (ASKS_TAG, asks))
        for price, size in side
        if 0.0 < price < _INF and 0.0 <= size < _INF
    ]
    if len(parts) != len(bids) + len(asks):
        raise ValueError("invalid level")
    return b"".join(parts)


def _levels_wire(entries: list[tuple[float, float]], tag: int, best_first: bool) -> bytes:
    """A snapshot side's live levels best first (a stable sort), as :func:`wire_levels`
    writes them. Raises ValueError where it would raise a FieldError (on_frame -> None)."""
    # Every level is checked, deleted ones too (wire_levels raises for them as well).
    if not all(0.0 < price < _INF and 0.0 <= size < _INF for price, size in entries):
        raise ValueError("invalid level")
    live = sorted([level for level in entries if level[1] > 0.0], key=_PRICE, reverse=best_first)
    pack = _LEVEL_PACK
    return b"".join([pack(tag, 18, 0x09, price, 0x11, size) for price, size in live])


def _double_tag(name: str) -> bytes:
    """The wire tag (a varint) of the VenueTicker double field ``name``."""
    tag = int(md_pb.VenueTicker.DESCRIPTOR.fields_by_name[name].number) << 3 | 1
    return bytes([tag]) if tag < 0x80 else bytes([tag & 0x7F | 0x80, tag >> 7])


# The ticker numbers _ticker_wire reads, in this order (their index in its ``numbers``).
_NUMBERS: Final = (
    "bid_price",
    "bid_size",
    "ask_price",
    "ask_size",
    "mark_price",
    "bid_iv",
    "ask_iv",
    "mark_price_iv",
    "underlying_price",
    "index_price",
    "delta",
    "gamma",
    "vega",
    "theta",
    "open_interest",
)


# VenueTicker fields in field-number order: (field, index in ``numbers``, index of the
# presence flag that sets it or None for always), mirroring _ticker's rules.
_TICKER_LAYOUT: Final = (
    ("best_bid_price_native", 0, 0),
    ("best_bid_size_native", 1, 0),
    ("best_ask_price_native", 2, 1),
    ("best_ask_size_native", 3, 1),
    ("mark_price_native", 4, 2),
    ("bid_iv", 5, 3),
    ("ask_iv", 6, 4),
    ("mark_iv", 7, 5),
    ("forward_usd", 8, 6),
    ("index_price_usd", 9, 7),
    ("delta", 10, None),
    ("gamma", 11, None),
    ("vega", 12, None),
    ("theta", 13, None),
    ("open_interest", 14, None),
    ("mark_price_usd_per_coin", 4, 2),
    ("best_bid_price_usd_per_coin", 0, 0),
    ("best_ask_price_usd_per_coin", 2, 1),
)


_TAGS: Final = {name: _double_tag(name) for name, _, _ in _TICKER_LAYOUT}


# Every tag byte, appended after the numbers so that one itemgetter picks tags and values.
_TAG_BYTES: Final = tuple(byte for tag in _TAGS.values() for byte in tag)


_TAG_OFFSET: Final = dict(
    zip(_TAGS, itertools.accumulate((len(tag) for tag in _TAGS.values()), initial=0), strict=False)
)


_TickerPacker = Callable[[tuple[float, ...]], bytes]


_TICKER_PACKERS: dict[tuple[bool, ...], _TickerPacker] = {}


def _ticker_packer(present: tuple[bool, ...]) -> _TickerPacker:
    """numbers -> the wire bytes of the fields ``present`` selects: one struct.pack (cached
    per presence pattern; a field at a time costs several times more)."""
    packer = _TICKER_PACKERS.get(present)
    if packer is not None:
        return packer
    indices: list[int] = []
    layout = "<"
    for name, number, flag in _TICKER_LAYOUT:
        if flag is None or present[flag]:
            tag = _TAGS[name]
            start = len(_NUMBERS) + _TAG_OFFSET[name]
            indices += [*range(start, start + len(tag)), number]
            layout += "B" * len(tag) + "d"
    pick = itemgetter(*indices)
    pack = struct.Struct(layout).pack

    def packed(numbers: tuple[float, ...]) -> bytes:
        return pack(*pick(numbers + _TAG_BYTES))

    _TICKER_PACKERS[present] = packed
    return packed


def _ticker_wire(data: StreamData) -> bytes | None:
    """The VenueTicker fields :func:`_ticker` sets, as wire bytes (optional doubles), or None
    when a number is absent or one the checked path would count (it decides then)."""
    numbers = (
        data.bid_price,
        data.bid_size,
        data.ask_price,
        data.ask_size,
        data.mark_price,
        data.bid_iv,
        data.ask_iv,
        data.mark_price_iv,
        data.underlying_price,
        data.index_price,
        data.delta,
        data.gamma,
        data.vega,
        data.theta,
        data.open_interest,
    )
    # An absent value is NaN (left to the checked path), a NaN or an infinity makes the sum
    # non-finite (so may a huge finite sum: a harmless fallback).
    total = sum(numbers)
    if total - total != 0.0:
        return None
    bid, bid_size, ask, ask_size, mark, bid_iv, ask_iv, mark_iv, forward, index = numbers[:10]
    present = (
        bid > 0 and bid_size > 0,
        ask > 0 and ask_size > 0,
        mark > 0,
        bid_iv > 0,
        ask_iv > 0,
        mark_iv > 0,
        forward > 0,
        index > 0,
    )
    return _ticker_packer(present)(numbers)


class BybitHotPath(StampingSession):
    """The hot path of :class:`~svc_connector.venues.bybit.session.BybitSession`: ``orderbook.*``
    snapshots and continuing deltas and ``tickers.*`` frames decoded with msgspec and built
    with a few C calls. It answers exactly what the checked path would, or None before
    touching any state. The session state it reads and moves on is declared here and made
    by the session.
    """

    _books: BookSequencer

    def _hot_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult | None:
        """The common notification frames, parsed without the checked path's layers.

        Covers ``orderbook.*`` snapshots, ``orderbook.*`` deltas that continue their book
        (``u`` = last ``u`` + 1) and ``tickers.*`` frames whose numbers all read cleanly:
        about every frame of live traffic. It exists because the checked path's generic
        per-field layers cost several times the decode; here msgspec checks the frame's shape
        in C and the event is built with a few C calls.

        Returns exactly the FrameResult the checked path would return (stamped), or ``None``
        before touching any state: anything else (responses, unknown topics, gaps, duplicates,
        odd or non-finite values, what the checked path would count or dead-letter) is left
        to :meth:`_on_frame`. May raise on junk input; :meth:`on_frame` treats that as None.

        Unknown fields make the decode fail (see messages.py): msgspec would skip them without
        the range checks orjson makes.
        """
        if not isinstance(raw, str):
            raw = raw.decode()  # orjson rejects invalid UTF-8 anywhere, msgspec only where read
        frame = _STREAM_DECODER.decode(raw)
        topic = frame.topic
        ts = frame.ts
        if not isinstance(ts, int) or not 0 <= ts < _MAX_TS_MS:  # the header's int64 ns
            return None
        data = frame.data
        if not (_in_orjson_range(frame.cts) and _in_orjson_range(data.seq)):
            return None
        event = md_pb.MarketDataEvent()
        message: md_pb.BookSnapshot | md_pb.BookDelta | md_pb.VenueTicker
        kind = frame.type
        update_id = 0
        if topic.startswith(_TICKERS_PREFIX):
            symbol = data.symbol
            payload = _ticker_wire(data)
            if payload is None:
                return None
            greeks = (data.delta, data.gamma, data.vega, data.theta, data.open_interest)
            if 0.0 in greeks and _NEGATIVE_ZERO in raw:  # set even when 0: the sign counts
                return None
            message = event.ticker
            message.MergeFromString(payload)
        elif topic.startswith(_ORDERBOOK_PREFIX):
            symbol = data.s
            venue_sequence = data.u
            if not isinstance(venue_sequence, int) or not 0 <= venue_sequence < _MAX_INT64:
                return None
            update_id = venue_sequence
            bids, asks = data.b, data.a
            if bids is None or asks is None or _NEGATIVE_ZERO in raw:  # a size "-0"
                return None
            if kind == "delta":
                if self._books.last_sequence(symbol) != update_id - 1:
                    return None  # a gap, a duplicate, no snapshot yet, a resync: checked path
                payload = _delta_wire(bids, asks)
                message = event.book_delta
                message.MergeFromString(payload)
                message.prev_venue_sequence = update_id - 1
            elif kind == "snapshot":
                payload = _levels_wire(bids, BIDS_TAG, True) + _levels_wire(asks, ASKS_TAG, False)
                message = event.book_snapshot
                message.MergeFromString(payload)
            else:
                return None
            message.venue_sequence = update_id
        else:
            return None
        if not symbol:
            return None
        currency = cached_currency_of(symbol)
        if currency is None:
            return None
        message.symbol = symbol
        header = message.header
        header.event_time_ns = ts * MS_TO_NS
        header.receive_time_ns = receive_time_ns
        header.source = c.SOURCE
        # Committed from here on: nothing below can fail.
        header.sequence = self._take_sequence()
        result = FrameResult()
        result.channel = topic
        counts = result.counts
        counts["frames"] = 1
        if isinstance(message, md_pb.VenueTicker):
            counts["ticker"] = 1
            result.events.append(NormalisedEvent(currency, "ticker", event, header))
            return result
        if kind == "delta":
            self._books.check_delta(symbol, update_id - 1, update_id, receive_time_ns)
            counts["book.delta"] = 1
        else:
            self._books.snapshot(symbol, update_id)
            counts["book.snapshot"] = 1
        result.events.append(NormalisedEvent(currency, "book", event, header))
        return result
