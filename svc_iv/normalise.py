"""Venue premiums to Black-76 inputs: USD per coin of notional, and years to expiry.

docs/quant.md section 2: inverse premiums (coin per coin) are worth native x forward (the
forward, not the index); linear USD-per-coin premiums are already in place; per-contract
premiums are divided by the contract size in coins. T = (expiry - event time) / 365 days.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from volstream.v1 import market_data_pb2 as md_pb

Array = NDArray[np.float64]

NS_PER_YEAR: Final = 365 * 24 * 3600 * 1_000_000_000

COIN_PER_COIN: Final = md_pb.PREMIUM_UNIT_COIN_PER_COIN
USD_PER_COIN: Final = md_pb.PREMIUM_UNIT_USD_PER_COIN
USD_PER_CONTRACT: Final = md_pb.PREMIUM_UNIT_USD_PER_CONTRACT


def premium_usd_per_coin(
    native: ArrayLike, unit: ArrayLike, forward: ArrayLike, contract_size_coin: ArrayLike
) -> Array:
    """Native premiums to USD per coin, element-wise; NaN where the unit is unknown or the
    forward (inverse) / contract size (per contract) is not a positive finite number."""
    p, u, f, size = np.broadcast_arrays(
        np.asarray(native, dtype=np.float64),
        np.asarray(unit),
        np.asarray(forward, dtype=np.float64),
        np.asarray(contract_size_coin, dtype=np.float64),
    )
    good_forward = np.isfinite(f) & (f > 0.0)
    good_size = np.isfinite(size) & (size > 0.0)
    with np.errstate(all="ignore"):
        out = np.where(
            u == COIN_PER_COIN,
            np.where(good_forward, p * f, np.nan),
            np.where(
                u == USD_PER_COIN,
                p,
                np.where((u == USD_PER_CONTRACT) & good_size, p / size, np.nan),
            ),
        )
    return np.asarray(out, dtype=np.float64)


def usd_per_coin_to_native(
    usd_per_coin: ArrayLike, unit: ArrayLike, forward: ArrayLike, contract_size_coin: ArrayLike
) -> Array:
    """The inverse of premium_usd_per_coin (for simulators and tests)."""
    p, u, f, size = np.broadcast_arrays(
        np.asarray(usd_per_coin, dtype=np.float64),
        np.asarray(unit),
        np.asarray(forward, dtype=np.float64),
        np.asarray(contract_size_coin, dtype=np.float64),
    )
    with np.errstate(all="ignore"):
        out = np.where(
            u == COIN_PER_COIN,
            p / f,
            np.where(u == USD_PER_COIN, p, np.where(u == USD_PER_CONTRACT, p * size, np.nan)),
        )
    return np.asarray(out, dtype=np.float64)


def d_usd_per_coin_d_forward(native: ArrayLike, unit: ArrayLike) -> Array:
    """How the USD-per-coin premium moves with the forward at a fixed native price."""
    p, u = np.broadcast_arrays(np.asarray(native, dtype=np.float64), np.asarray(unit))
    return np.asarray(np.where(u == COIN_PER_COIN, p, 0.0), dtype=np.float64)


def years_to_expiry(expiry_time_ns: ArrayLike, event_time_ns: ArrayLike) -> Array:
    """(expiry - event time) / 365 days; negative once expired. Integer nanoseconds are
    subtracted before the conversion so that no precision is lost to 1.7e18-sized floats."""
    diff = np.subtract(
        np.asarray(expiry_time_ns, dtype=np.int64), np.asarray(event_time_ns, dtype=np.int64)
    )
    return np.asarray(diff / NS_PER_YEAR, dtype=np.float64)
