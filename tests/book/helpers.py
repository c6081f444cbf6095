"""Builders of book events and converters of recorded venue book messages (test-only).

The converters follow docs/venues/*.md literally and are deliberately simple; they stand in for
the connector's parsers, which svc_book never sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

MS = 1_000_000
Pair = tuple[float, float]


def _levels(pairs: Iterable[Pair]) -> list[md_pb.BookLevel]:
    return [md_pb.BookLevel(price_native=p, size_native=s) for p, s in pairs]


def snapshot(
    symbol: str,
    bids: Iterable[Pair],
    asks: Iterable[Pair],
    seq: int = 0,
    t_ns: int = 0,
    periodic: bool = False,
) -> md_pb.MarketDataEvent:
    return md_pb.MarketDataEvent(
        book_snapshot=md_pb.BookSnapshot(
            header=common_pb.EventHeader(event_time_ns=t_ns),
            symbol=symbol,
            bids=_levels(bids),
            asks=_levels(asks),
            venue_sequence=seq,
            is_periodic=periodic,
        )
    )


def delta(
    symbol: str,
    bids: Iterable[Pair],
    asks: Iterable[Pair],
    seq: int,
    prev: int,
    t_ns: int = 0,
) -> md_pb.MarketDataEvent:
    return md_pb.MarketDataEvent(
        book_delta=md_pb.BookDelta(
            header=common_pb.EventHeader(event_time_ns=t_ns),
            symbol=symbol,
            bids=_levels(bids),
            asks=_levels(asks),
            venue_sequence=seq,
            prev_venue_sequence=prev,
        )
    )


def reset(symbol: str, t_ns: int = 0, reason: str = "test") -> md_pb.MarketDataEvent:
    return md_pb.MarketDataEvent(
        book_reset=md_pb.BookReset(
            header=common_pb.EventHeader(event_time_ns=t_ns), symbol=symbol, reason=reason
        )
    )


def ticker(symbol: str, t_ns: int = 0) -> md_pb.MarketDataEvent:
    return md_pb.MarketDataEvent(
        ticker=md_pb.VenueTicker(header=common_pb.EventHeader(event_time_ns=t_ns), symbol=symbol)
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- Deribit book.{instrument}.raw -----------------------------------------------------------


def deribit_book_event(message: dict[str, Any]) -> md_pb.MarketDataEvent:
    """`{"params":{"data":{type, change_id, prev_change_id?, bids:[[action, px, amt]]}}}`."""
    data = message["params"]["data"]
    bids = [(float(px), float(amt)) for _action, px, amt in data["bids"]]
    asks = [(float(px), float(amt)) for _action, px, amt in data["asks"]]
    t_ns = int(data["timestamp"]) * MS
    kind = data.get("type")
    is_snapshot = kind == "snapshot" or (kind is None and "prev_change_id" not in data)
    if is_snapshot:
        return snapshot(data["instrument_name"], bids, asks, int(data["change_id"]), t_ns)
    return delta(
        data["instrument_name"],
        bids,
        asks,
        int(data["change_id"]),
        int(data["prev_change_id"]),
        t_ns,
    )


def deribit_raw_levels(side: Sequence[Sequence[Any]]) -> list[Pair]:
    return [(float(px), float(amt)) for _action, px, amt in side]


# -- Bybit orderbook.{depth}.{symbol} --------------------------------------------------------


def bybit_book_event(message: dict[str, Any]) -> md_pb.MarketDataEvent:
    data = message["data"]
    bids = [(float(px), float(sz)) for px, sz in data["b"]]
    asks = [(float(px), float(sz)) for px, sz in data["a"]]
    t_ns = int(message["ts"]) * MS
    u = int(data["u"])
    if message["type"] == "snapshot":
        return snapshot(data["s"], bids, asks, u, t_ns)
    return delta(data["s"], bids, asks, u, u - 1, t_ns)


# -- Binance depth streams (full top-N pushes) -----------------------------------------------


def binance_depth_snapshot(message: dict[str, Any]) -> md_pb.MarketDataEvent:
    data = message["data"]
    bids = [(float(px), float(sz)) for px, sz in data["b"]]
    asks = [(float(px), float(sz)) for px, sz in data["a"]]
    return snapshot(data["s"], bids, asks, int(data["u"]), int(data["E"]) * MS, periodic=True)
