"""Raw SVI total variance and its k-derivatives (quant.md section 4), vectorised."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


class RawSvi(NamedTuple):
    """w(k) = a + b (rho (k - m) + sqrt((k - m)^2 + sigma^2))."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float


def total_variance(p: RawSvi, k: ArrayLike) -> Array:
    x = np.asarray(k, dtype=np.float64) - p.m
    return p.a + p.b * (p.rho * x + np.sqrt(x * x + p.sigma * p.sigma))


def implied_vol(p: RawSvi, k: ArrayLike, t: float) -> Array:
    """sqrt(w/T); NaN where w < 0."""
    w = total_variance(p, k)
    with np.errstate(invalid="ignore"):
        return np.asarray(np.sqrt(w / t), dtype=np.float64)
