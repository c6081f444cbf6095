"""The forward of one expiry, and where it came from.

Order of preference (quant.md section 2): the venue's own forward (Deribit
underlying_price, OKX fwdPx, Bybit underlyingPrice), the same-expiry future mid, put-call
parity on near-ATM strikes (robust median over the strikes with the smallest |C - P|), the
spot index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike

from volstream.v1 import common_pb2 as common_pb

# Near-ATM strikes whose parity forwards enter the median.
DEFAULT_PARITY_STRIKES: Final = 5


@dataclass(frozen=True, slots=True)
class ForwardEstimate:
    value_usd: float
    # A ForwardSource value (common.proto); UNSPECIFIED with a NaN value when none exists.
    source: int

    @property
    def is_valid(self) -> bool:
        return _usable(self.value_usd)


NO_FORWARD: Final = ForwardEstimate(math.nan, common_pb.FORWARD_SOURCE_UNSPECIFIED)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0.0


def parity_forward(
    strike: ArrayLike,
    call_price: ArrayLike,
    put_price: ArrayLike,
    *,
    inverse: bool,
    strikes_used: int = DEFAULT_PARITY_STRIKES,
) -> float:
    """Forward from call and put prices of the same strikes; NaN when no strike qualifies.

    Linear premiums in USD per coin: F = K + C - P. Inverse premiums in coin per coin
    (zero coin rate): C - P = 1 - K/F, so F = K / (1 - C + P). The strikes with the
    smallest |C - P| are nearest the money, where parity is least sensitive to the spread;
    the median of their forwards ignores a stray quote.
    """
    k, c, p = (np.asarray(a, dtype=np.float64).ravel() for a in (strike, call_price, put_price))
    with np.errstate(all="ignore"):
        good = np.isfinite(k) & np.isfinite(c) & np.isfinite(p) & (k > 0.0) & (c > 0.0) & (p > 0.0)
        if not good.any() or strikes_used < 1:
            return math.nan
        k, c, p = k[good], c[good], p[good]
        candidates = k / (1.0 - c + p) if inverse else k + c - p
        usable = np.isfinite(candidates) & (candidates > 0.0)
        if not usable.any():
            return math.nan
        gap = np.abs(c - p)[usable]
        candidates = candidates[usable]
        nearest = np.argsort(gap, kind="stable")[:strikes_used]
        return float(np.median(candidates[nearest]))


def choose_forward(
    *,
    venue: float | None = None,
    future_mid: float | None = None,
    parity: float | None = None,
    index: float | None = None,
) -> ForwardEstimate:
    """The first usable (finite, positive) candidate in order of preference."""
    for value, source in (
        (venue, common_pb.FORWARD_SOURCE_VENUE),
        (future_mid, common_pb.FORWARD_SOURCE_FUTURE),
        (parity, common_pb.FORWARD_SOURCE_PUT_CALL_PARITY),
        (index, common_pb.FORWARD_SOURCE_INDEX),
    ):
        if _usable(value):
            assert value is not None
            return ForwardEstimate(float(value), source)
    return NO_FORWARD
