"""The forward of one expiry, and where it came from.

Order of preference (docs/quant.md section 2): the venue's own forward (Deribit
underlying_price, OKX fwdPx, Bybit underlyingPrice), the same-expiry future mid, put-call
parity on near-ATM strikes (robust median over the strikes with the smallest |C - P|), the
spot index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

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


class ForwardHistory:
    """Recent values of one forward input as (event time, forward), oldest first.

    Used to solve a quote on the forward that held when its price last changed: `at` gives,
    per event time, the latest entry at or before it; a time older than every entry gets
    the oldest entry, a time newer than all of them the latest (the current forward).
    Bounded: entries older than `window_ns` before the newest are dropped, except the one in
    force at the window's start, and at most `max_entries` are kept (the oldest go first).
    """

    def __init__(self, window_ns: int, max_entries: int) -> None:
        self.window_ns = window_ns
        self.max_entries = max(1, max_entries)
        # Twice the bound: appends are O(1) until the buffer is full, then one compaction.
        capacity = 2 * self.max_entries
        self._times = np.zeros(capacity, dtype=np.int64)
        self._values = np.zeros(capacity, dtype=np.float64)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def latest(self) -> float:
        return float(self._values[self._end - 1]) if self._end > self._start else math.nan

    @property
    def latest_time(self) -> int:
        return int(self._times[self._end - 1]) if self._end > self._start else 0

    def times(self) -> NDArray[np.int64]:
        return self._times[self._start : self._end].copy()

    def values(self) -> NDArray[np.float64]:
        return self._values[self._start : self._end].copy()

    def record(self, event_ns: int, value: float) -> None:
        """Append a new forward; a repeat of the latest value or an unusable one is ignored.
        A time older than the latest entry is taken as the latest (times stay sorted)."""
        if not _usable(value) or value == self.latest:
            return
        if len(self):
            event_ns = max(event_ns, self.latest_time)
        if self._end == self._times.size:
            count = len(self)
            self._times[:count] = self._times[self._start : self._end]
            self._values[:count] = self._values[self._start : self._end]
            self._start, self._end = 0, count
        self._times[self._end] = event_ns
        self._values[self._end] = value
        self._end += 1
        # The entry in force at the window's start stays: lookups inside the window are exact.
        # A scalar walk, amortised O(1): record() runs per ticker, and a numpy call per
        # ticker (searchsorted releases the GIL) starved the event loop of the IV service,
        # whose worker thread re-took the GIL before the loop could (30 ms stalls).
        cutoff = event_ns - self.window_ns
        times = self._times
        while self._end - self._start > 1 and times[self._start + 1] <= cutoff:
            self._start += 1
        self._start = max(self._start, self._end - self.max_entries)

    def at(self, event_ns: ArrayLike) -> NDArray[np.float64]:
        """The forward in force at each event time (NaN when the history is empty)."""
        when = np.asarray(event_ns, dtype=np.int64)
        if not len(self):
            return np.full(when.shape, np.nan)
        times = self._times[self._start : self._end]
        idx = np.searchsorted(times, when, side="right") - 1
        return self._values[self._start : self._end][np.maximum(idx, 0)]
