"""Undiscounted Black-76 prices and greeks, vectorised over numpy arrays (r = 0).

Notation (docs/quant.md): F forward, K strike, T years, sigma vol, k = ln(K/F).
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


def _phi_d1(forward: Array, strike: Array, t: Array, sigma: Array) -> Array:
    d1, _ = _d1_d2(forward, strike, t, sigma)
    return np.asarray(np.exp(-0.5 * d1 * d1) / _SQRT_2PI, dtype=np.float64)


_SQRT_2PI = float(np.sqrt(2.0 * np.pi))
DAYS_PER_YEAR = 365.0


def gamma(forward: ArrayLike, strike: ArrayLike, t: ArrayLike, sigma: ArrayLike) -> Array:
    """d delta / dF per USD of forward: phi(d1) / (F sigma sqrt(T)); the same for calls and puts."""
    f, k, tt, s = (np.asarray(x, dtype=np.float64) for x in (forward, strike, t, sigma))
    return np.asarray(_phi_d1(f, k, tt, s) / (f * s * np.sqrt(tt)), dtype=np.float64)


def vega(forward: ArrayLike, strike: ArrayLike, t: ArrayLike, sigma: ArrayLike) -> Array:
    """dV/dsigma: F phi(d1) sqrt(T), in the forward's units per 1.00 of vol (calls and puts)."""
    f, k, tt, s = (np.asarray(x, dtype=np.float64) for x in (forward, strike, t, sigma))
    return np.asarray(f * _phi_d1(f, k, tt, s) * np.sqrt(tt), dtype=np.float64)


def theta(forward: ArrayLike, strike: ArrayLike, t: ArrayLike, sigma: ArrayLike) -> Array:
    """Value change per calendar day as time passes: -F phi(d1) sigma / (2 sqrt(T)) / 365.

    With r = 0 and the forward held fixed, calls and puts share it.
    """
    f, k, tt, s = (np.asarray(x, dtype=np.float64) for x in (forward, strike, t, sigma))
    per_year = -f * _phi_d1(f, k, tt, s) * s / (2.0 * np.sqrt(tt))
    return np.asarray(per_year / DAYS_PER_YEAR, dtype=np.float64)
