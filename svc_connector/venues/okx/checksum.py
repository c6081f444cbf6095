"""OKX `books` checksum: CRC32 over the top 25 levels, on the venue's own strings.

The string is `bid1px:bid1sz:ask1px:ask1sz:bid2px:...` over the best 25 bids and asks
(when one side is shorter, the other continues alone), and the checksum is the CRC32 of it
as a signed 32-bit integer. It must be computed from the strings the venue sent ("30316"
and "30316.0" hash differently), so the connector, which holds the strings, verifies it.
`OkxChecksumBook` keeps such a string-level book per instrument for that purpose.
Since June 2026 OKX sends checksum 0: 0 means "nothing to verify".
"""

from __future__ import annotations

import math
import zlib
from bisect import bisect_left, insort
from collections.abc import Sequence
from itertools import chain

OKX_CHECKSUM_DEPTH = 25

# A venue level as received: [price, size, ...] strings (OKX sends 4 fields).
StrLevel = Sequence[str]


def okx_checksum_string(
    bids: Sequence[StrLevel], asks: Sequence[StrLevel], depth: int = OKX_CHECKSUM_DEPTH
) -> str:
    """The string OKX hashes; `bids` and `asks` best first."""
    parts: list[str] = []
    for i in range(depth):
        if i < len(bids):
            parts.append(bids[i][0])
            parts.append(bids[i][1])
        if i < len(asks):
            parts.append(asks[i][0])
            parts.append(asks[i][1])
    return ":".join(parts)


def okx_checksum(
    bids: Sequence[StrLevel], asks: Sequence[StrLevel], depth: int = OKX_CHECKSUM_DEPTH
) -> int:
    """Signed 32-bit CRC32 of `okx_checksum_string`."""
    crc = zlib.crc32(okx_checksum_string(bids, asks, depth).encode())
    return crc - (1 << 32) if crc >= (1 << 31) else crc


def okx_checksum_ok(expected: int, bids: Sequence[StrLevel], asks: Sequence[StrLevel]) -> bool:
    """True when the top levels hash to `expected`, or when the venue sent 0 (no checksum)."""
    return expected == 0 or okx_checksum(bids, asks) == expected


class OkxChecksumBook:
    """String-level OKX book of one instrument, enough to verify each message's checksum.

    Levels are keyed by the numeric price (sorted) and keep the venue's strings. Apply a
    snapshot or update, then `checksum_ok(msg_checksum)`; on False the book is out of sync
    with the venue and must be resubscribed.
    """

    __slots__ = ("_ask_keys", "_ask_texts", "_asks", "_bid_keys", "_bid_texts", "_bids")

    def __init__(self) -> None:
        self._bids: dict[float, tuple[str, str]] = {}
        self._asks: dict[float, tuple[str, str]] = {}
        # "price:size" of each level, what the checksum string is made of (joined once per
        # level change instead of once per level per checksum).
        self._bid_texts: dict[float, str] = {}
        self._ask_texts: dict[float, str] = {}
        self._bid_keys: list[float] = []  # ascending; best bid last
        self._ask_keys: list[float] = []  # ascending; best ask first

    def apply_snapshot(self, bids: Sequence[StrLevel], asks: Sequence[StrLevel]) -> None:
        self._bids = {}
        self._asks = {}
        self._bid_texts = {}
        self._ask_texts = {}
        self._bid_keys = []
        self._ask_keys = []
        self.apply_update(bids, asks)

    def apply_update(self, bids: Sequence[StrLevel], asks: Sequence[StrLevel]) -> None:
        """Size "0" deletes. Raises ValueError on a non-numeric or non-finite price or size
        (levels before it are applied: treat the book as broken and resubscribe)."""
        _apply(self._bids, self._bid_texts, self._bid_keys, bids)
        _apply(self._asks, self._ask_texts, self._ask_keys, asks)

    def top(
        self, depth: int = OKX_CHECKSUM_DEPTH
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Best `depth` (price, size) strings per side, best first."""
        bids = [self._bids[k] for k in reversed(self._bid_keys[-depth:])] if depth > 0 else []
        asks = [self._asks[k] for k in self._ask_keys[:depth]]
        return bids, asks

    def checksum(self) -> int:
        """:func:`okx_checksum` of :meth:`top`, from the kept "price:size" texts."""
        depth = OKX_CHECKSUM_DEPTH
        bid_texts, ask_texts = self._bid_texts, self._ask_texts
        bids = [bid_texts[k] for k in self._bid_keys[: -depth - 1 : -1]]  # best first
        asks = [ask_texts[k] for k in self._ask_keys[:depth]]
        both = min(len(bids), len(asks))
        # bid1 ask1 bid2 ask2 ... while both sides have levels, then the longer one alone.
        parts = list(chain.from_iterable(zip(bids, asks, strict=False)))
        parts.extend(bids[both:] if len(bids) > both else asks[both:])
        crc = zlib.crc32(":".join(parts).encode())
        return crc - (1 << 32) if crc >= (1 << 31) else crc

    def checksum_ok(self, expected: int) -> bool:
        return expected == 0 or self.checksum() == expected


def _apply(
    levels: dict[float, tuple[str, str]],
    texts: dict[float, str],
    keys: list[float],
    update: Sequence[StrLevel],
) -> None:
    for level in update:
        price_str, size_str = level[0], level[1]
        price = float(price_str)
        size = float(size_str)
        if not (math.isfinite(price) and math.isfinite(size)):
            raise ValueError(f"non-finite OKX level {price_str!r}:{size_str!r}")
        if size == 0.0:
            if levels.pop(price, None) is not None:
                del texts[price]
                del keys[bisect_left(keys, price)]
        else:
            if price not in levels:
                insort(keys, price)
            levels[price] = (price_str, size_str)
            texts[price] = f"{price_str}:{size_str}"
