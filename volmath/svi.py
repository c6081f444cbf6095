"""Raw SVI total variance, its k-derivatives, Durrleman's g and the jump-wings form.

docs/quant.md section 4. Everything is vectorised over k; parameters are plain floats.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]

# Lee's moment bound on the total-variance wing slope: b (1 + |rho|) <= 2.
LEE_WING_BOUND = 2.0


class RawSvi(NamedTuple):
    """w(k) = a + b (rho (k - m) + sqrt((k - m)^2 + sigma^2))."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float


class JwSvi(NamedTuple):
    """SVI jump-wings (Gatheral 2004) for a slice of maturity t: variances per year."""

    v: float  # ATM variance w(0)/t
    psi: float  # ATM skew
    p: float  # put wing slope
    c: float  # call wing slope
    v_tilde: float  # minimum implied variance


def total_variance(p: RawSvi, k: ArrayLike) -> Array:
    x = np.asarray(k, dtype=np.float64) - p.m
    return p.a + p.b * (p.rho * x + np.sqrt(x * x + p.sigma * p.sigma))


def total_variance_rows(rows: Array, k: Array) -> Array:
    """Total variance with one parameter row (a, b, rho, m, sigma) per k: rows (N, 5), k
    (N,). For many slices' points at once (a numpy call per slice costs more than its
    arithmetic)."""
    x = k - rows[:, 3]
    return np.asarray(
        rows[:, 0] + rows[:, 1] * (rows[:, 2] * x + np.sqrt(x * x + rows[:, 4] * rows[:, 4])),
        dtype=np.float64,
    )


def implied_vol(p: RawSvi, k: ArrayLike, t: float) -> Array:
    """sqrt(w/T); NaN where w < 0."""
    w = total_variance(p, k)
    with np.errstate(invalid="ignore"):
        return np.asarray(np.sqrt(w / t), dtype=np.float64)


def dw_dk(p: RawSvi, k: ArrayLike) -> Array:
    """w'(k) = b (rho + (k - m) / sqrt((k - m)^2 + sigma^2))."""
    x = np.asarray(k, dtype=np.float64) - p.m
    return np.asarray(p.b * (p.rho + x / np.sqrt(x * x + p.sigma * p.sigma)), dtype=np.float64)


def d2w_dk2(p: RawSvi, k: ArrayLike) -> Array:
    """w''(k) = b sigma^2 / ((k - m)^2 + sigma^2)^(3/2)."""
    x = np.asarray(k, dtype=np.float64) - p.m
    r2 = x * x + p.sigma * p.sigma
    return np.asarray(p.b * p.sigma * p.sigma / (r2 * np.sqrt(r2)), dtype=np.float64)


def durrleman_g_from_w(k: ArrayLike, w: ArrayLike, w1: ArrayLike, w2: ArrayLike) -> Array:
    """g(k) = (1 - k w'/(2w))^2 - (w'^2/4)(1/w + 1/4) + w''/2 for any smooth smile.

    w'' enters linearly (a popular implementation squares it by mistake).
    Non-positive total variance has no density: g is NaN there.
    """
    kk, ww, d1, d2 = (np.asarray(x, dtype=np.float64) for x in (k, w, w1, w2))
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (1.0 - kk * d1 / (2.0 * ww)) ** 2 - 0.25 * d1 * d1 * (1.0 / ww + 0.25) + 0.5 * d2
    return np.asarray(np.where(ww > 0.0, g, np.nan), dtype=np.float64)


def durrleman_g(p: RawSvi, k: ArrayLike) -> Array:
    """Durrleman's butterfly function for a raw SVI slice; >= 0 everywhere iff no butterfly."""
    kk = np.asarray(k, dtype=np.float64)
    return durrleman_g_from_w(kk, total_variance(p, kk), dw_dk(p, kk), d2w_dk2(p, kk))


def min_total_variance(p: RawSvi) -> float:
    """min_k w(k) = a + b sigma sqrt(1 - rho^2) (for |rho| < 1, b >= 0)."""
    return p.a + p.b * p.sigma * math.sqrt(max(0.0, 1.0 - p.rho * p.rho))


def domain_violations(p: RawSvi, wing_bound: float = LEE_WING_BOUND) -> list[str]:
    """Reasons why p is outside the raw-SVI parameter domain (empty list: valid)."""
    reasons: list[str] = []
    if not all(math.isfinite(x) for x in p):
        return ["non-finite parameter"]
    if p.b < 0.0:
        reasons.append(f"b = {p.b:g} < 0")
    if not abs(p.rho) < 1.0:
        reasons.append(f"|rho| = {abs(p.rho):g} >= 1")
    if not p.sigma > 0.0:
        reasons.append(f"sigma = {p.sigma:g} <= 0")
    if not reasons and min_total_variance(p) < 0.0:
        reasons.append(f"a + b sigma sqrt(1 - rho^2) = {min_total_variance(p):g} < 0")
    if p.b * (1.0 + abs(p.rho)) > wing_bound:
        reasons.append(f"b (1 + |rho|) = {p.b * (1.0 + abs(p.rho)):g} > {wing_bound:g} (Lee)")
    return reasons


def is_valid(p: RawSvi, wing_bound: float = LEE_WING_BOUND) -> bool:
    return not domain_violations(p, wing_bound)


def raw_to_jw(p: RawSvi, t: float) -> JwSvi:
    """Raw SVI -> jump-wings at maturity t (Gatheral & Jacquier 2014, section 3.3)."""
    root = math.sqrt(p.m * p.m + p.sigma * p.sigma)
    w_atm = p.a + p.b * (-p.rho * p.m + root)
    sqrt_w = math.sqrt(w_atm) if w_atm > 0.0 else float("nan")
    return JwSvi(
        v=w_atm / t,
        psi=p.b / (2.0 * sqrt_w) * (p.rho - p.m / root),
        p=p.b * (1.0 - p.rho) / sqrt_w,
        c=p.b * (1.0 + p.rho) / sqrt_w,
        v_tilde=min_total_variance(p) / t,
    )


def jw_to_raw(jw: JwSvi, t: float) -> RawSvi:
    """Closed-form inverse of raw_to_jw.

    With beta = m / sqrt(m^2 + sigma^2) = rho - 2 psi sqrt(w)/b, the usual
    alpha = sign(beta) sqrt(1/beta^2 - 1) form is singular at m = 0; written in beta and
    the angle difference between arcsin(rho) and arcsin(beta) it is smooth there:
    m = (v - v~) t beta / (b D), sigma = (v - v~) t sqrt(1 - beta^2) / (b D),
    D = 1 - cos(arcsin rho - arcsin beta) = 2 sin^2((arcsin rho - arcsin beta) / 2).
    Raises ValueError when the jump-wings values map to no raw slice.
    """
    w_atm = jw.v * t
    if not (w_atm > 0.0 and jw.p + jw.c > 0.0):
        raise ValueError("jump-wings: need v > 0 and p + c > 0")
    sqrt_w = math.sqrt(w_atm)
    b = 0.5 * sqrt_w * (jw.c + jw.p)
    rho = (jw.c - jw.p) / (jw.c + jw.p)
    beta = rho - 2.0 * jw.psi * sqrt_w / b
    if not (abs(rho) < 1.0 and abs(beta) < 1.0):
        raise ValueError(f"jump-wings: |rho| = {abs(rho):g} or |beta| = {abs(beta):g} >= 1")
    half_angle = 0.5 * (math.asin(rho) - math.asin(beta))
    denom = 2.0 * math.sin(half_angle) ** 2
    gap = (jw.v - jw.v_tilde) * t
    if denom == 0.0:
        # psi = 0 and beta = rho: the ATM point is the minimum, so v = v~ and sigma is
        # not identified by the jump-wings values.
        raise ValueError("jump-wings: beta = rho leaves sigma unidentified")
    m = gap * beta / (b * denom)
    sigma = gap * math.sqrt(1.0 - beta * beta) / (b * denom)
    a = jw.v_tilde * t - b * sigma * math.sqrt(1.0 - rho * rho)
    if not sigma > 0.0:
        raise ValueError(f"jump-wings: implied sigma = {sigma:g} <= 0 (need v > v~)")
    return RawSvi(a=a, b=b, rho=rho, m=m, sigma=sigma)
