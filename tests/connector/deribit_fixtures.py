"""Helpers: read the recorded Deribit fixtures exactly as they are; a consumer-side book."""

from __future__ import annotations

from pathlib import Path

import orjson

from volstream.v1 import market_data_pb2 as md_pb


def deribit_dir(venue_fixtures: Path) -> Path:
    return venue_fixtures / "deribit"


def lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def receive_times_ns(path: Path) -> list[int]:
    """The recorded local receive time of each line (epoch seconds -> ns)."""
    return [round(orjson.loads(line)["recv_ts"] * 1e9) for line in lines(path)]


class Books:
    """A plain L2 book per symbol, built from the session's output (the consumer's view)."""

    def __init__(self) -> None:
        self.sides: dict[str, tuple[dict[float, float], dict[float, float]]] = {}
        self.sequence: dict[str, int] = {}
        self.broken: set[str] = set()

    def apply(self, event: md_pb.MarketDataEvent) -> None:
        case = event.WhichOneof("event")
        if case == "book_snapshot":
            snap = event.book_snapshot
            self.sides[snap.symbol] = (
                {lv.price_native: lv.size_native for lv in snap.bids},
                {lv.price_native: lv.size_native for lv in snap.asks},
            )
            self.sequence[snap.symbol] = snap.venue_sequence
            self.broken.discard(snap.symbol)
        elif case == "book_delta":
            delta = event.book_delta
            # A consumer applies a delta only on top of the sequence it holds.
            assert delta.symbol not in self.broken
            assert self.sequence[delta.symbol] == delta.prev_venue_sequence
            bids, asks = self.sides[delta.symbol]
            for side, levels in ((bids, delta.bids), (asks, delta.asks)):
                for level in levels:
                    if level.size_native == 0:
                        side.pop(level.price_native, None)
                    else:
                        side[level.price_native] = level.size_native
            self.sequence[delta.symbol] = delta.venue_sequence
        elif case == "book_reset":
            self.broken.add(event.book_reset.symbol)

    def top(self, symbol: str) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
        bids, asks = self.sides[symbol]
        best_bid = (max(bids), bids[max(bids)]) if bids else None
        best_ask = (min(asks), asks[min(asks)]) if asks else None
        return best_bid, best_ask
