"""Undiscounted Black-76 prices and greeks, vectorised over numpy arrays (r = 0).

Notation (quant.md): F forward, K strike, T years, sigma vol, k = ln(K/F).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr

Array = NDArray[np.float64]


def _d1_d2(forward: Array, strike: Array, t: Array, sigma: Array) -> tuple[Array, Array]:
    sqrt_var = sigma * np.sqrt(t)
    d1 = (np.log(forward / strike) + 0.5 * sqrt_var * sqrt_var) / sqrt_var
    return d1, d1 - sqrt_var


def price(
    forward: ArrayLike, strike: ArrayLike, t: ArrayLike, sigma: ArrayLike, is_call: ArrayLike
) -> Array:
    """Undiscounted Black-76 option price in the forward's units (USD per coin)."""
    f, k, tt, s = (np.asarray(x, dtype=np.float64) for x in (forward, strike, t, sigma))
    call = np.asarray(is_call, dtype=bool)
    d1, d2 = _d1_d2(f, k, tt, s)
    c = f * ndtr(d1) - k * ndtr(d2)
    p = k * ndtr(-d2) - f * ndtr(-d1)
    return np.asarray(np.where(call, c, p), dtype=np.float64)


def forward_delta(
    forward: ArrayLike, strike: ArrayLike, t: ArrayLike, sigma: ArrayLike, is_call: ArrayLike
) -> Array:
    """N(d1) for calls, N(d1) - 1 for puts."""
    f, k, tt, s = (np.asarray(x, dtype=np.float64) for x in (forward, strike, t, sigma))
    d1, _ = _d1_d2(f, k, tt, s)
    nd1 = ndtr(d1)
    return np.asarray(np.where(np.asarray(is_call, dtype=bool), nd1, nd1 - 1.0), dtype=np.float64)


def premium_adjusted_delta(
    forward: ArrayLike, strike: ArrayLike, t: ArrayLike, sigma: ArrayLike, is_call: ArrayLike
) -> Array:
    """(K/F) N(d2) for calls, -(K/F) N(-d2) for puts (what inverse venues report)."""
    f, k, tt, s = (np.asarray(x, dtype=np.float64) for x in (forward, strike, t, sigma))
    _, d2 = _d1_d2(f, k, tt, s)
    ratio = k / f
    return np.asarray(
        np.where(np.asarray(is_call, dtype=bool), ratio * ndtr(d2), -ratio * ndtr(-d2)),
        dtype=np.float64,
    )
