"""Vectorised Black-76 implied volatility (r = 0) over whole numpy arrays.

Method (docs/quant.md section 1):

1. Reject what has no implied vol with a status (never raise): bad forward/strike/T,
   T <= 0, missing or non-positive price, price at/below intrinsic, at/above the upper bound.
2. Reduce every option to an out-of-the-money call in normalised form: subtract the
   intrinsic value once (put-call parity), then x = -|ln(F/K)| <= 0 and
   beta = (price - intrinsic) / sqrt(F K), whose bound is b_max = exp(x/2).
3. Initial guess after Jaeckel's "Let's Be Rational": the inflection point s_c = sqrt(2|x|)
   splits the curve; the tangent at s_c meets b = 0 at s_l and b = b_max at s_h. Below b(s_l)
   the lower asymptotic map f_l = 2 pi |x| / (3 sqrt 3) N(-|x| / (sqrt 3 s))^3 is
   interpolated by a rational cubic in (beta, f_l) and inverted; above b(s_h) the upper map
   f_u = N(-s/2) likewise; in between s(beta) itself is a rational cubic through
   (b_l, s_l), (b_c, s_c), (b_h, s_h) with the exact slopes 1/vega.
4. A fixed number of Halley steps on f(s) = ln b(x, s) - ln beta (no data-dependent loop).

The normalised call is evaluated as b = 1/2 exp(-h^2/2 - s^2/8) (erfcx(z1) - erfcx(z2)),
h = x/s, z1 = -(h + s/2)/sqrt 2, z2 = z1 + s/sqrt 2. Its log is free of the exp and the
vega-to-price ratio is sqrt(2/pi) / (erfcx(z1) - erfcx(z2)): both stay accurate deep out of
the money where C = F N(d1) - K N(d2) cancels. It is the same quantity that ln b written with
scipy's log_ndtr gives, with one subtraction fewer of two large logs.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import erfcx, ndtr, ndtri

from volstream.v1 import iv_pb2 as iv_pb

Array = NDArray[np.float64]
StatusArray = NDArray[np.int8]

# Status codes: the IvStatus values of iv.proto.
OK: Final = np.int8(iv_pb.IV_STATUS_OK)
MISSING_PRICE: Final = np.int8(iv_pb.IV_STATUS_MISSING_PRICE)
BELOW_INTRINSIC: Final = np.int8(iv_pb.IV_STATUS_BELOW_INTRINSIC)
ABOVE_UPPER_BOUND: Final = np.int8(iv_pb.IV_STATUS_ABOVE_UPPER_BOUND)
EXPIRED: Final = np.int8(iv_pb.IV_STATUS_EXPIRED)
BAD_INPUT: Final = np.int8(iv_pb.IV_STATUS_BAD_INPUT)

# Two steps already reach the double-precision floor on the docs/quant.md grid (about 4e-14);
# the third keeps that floor far outside it (|x| up to 12, s up to 15) for ~15% more time.
DEFAULT_HALLEY_STEPS: Final = 3

# Arrays are solved in cache-sized chunks: the temporaries of one chunk stay in L2.
_CHUNK: Final = 8192

_SQRT2: Final = float(np.sqrt(2.0))
_SQRT3: Final = float(np.sqrt(3.0))
_SQRT_2PI: Final = float(np.sqrt(2.0 * np.pi))
_SQRT_2_OVER_PI: Final = float(np.sqrt(2.0 / np.pi))
_SQRT_PI_OVER_2: Final = float(np.sqrt(np.pi / 2.0))
_TWO_PI: Final = 2.0 * float(np.pi)
_LOWER_MAP_SCALE: Final = _TWO_PI / (3.0 * _SQRT3)  # 2 pi / (3 sqrt 3)
_EPS: Final = float(np.finfo(np.float64).eps)
# Rational-cubic control parameter: r -> infinity is the straight line; r > -1 keeps the
# denominator positive (Delbourgo and Gregory).
_R_MAX: Final = 2.0 / (_EPS * _EPS)
_R_MIN: Final = -(1.0 - float(np.sqrt(_EPS)))


# --------------------------------------------------------------------------------------
# Normalised Black call, x <= 0
# --------------------------------------------------------------------------------------
def _erfcx_difference(x: Array, s: Array) -> tuple[Array, Array]:
    """(erfcx(z1) - erfcx(z2), h = x/s) for the normalised call at (x, s)."""
    h = x / s
    z1 = h + 0.5 * s
    z1 *= -1.0 / _SQRT2
    z2 = s * (1.0 / _SQRT2)
    z2 += z1
    diff = erfcx(z1)
    diff -= erfcx(z2)
    return diff, h


def ln_normalised_black_call(x: ArrayLike, s: ArrayLike) -> Array:
    """ln b(x, s) with b = C / sqrt(F K) of an out-of-the-money call.

    x = ln(F/K) <= 0, s = sigma sqrt(T).
    """
    xx = np.asarray(x, dtype=np.float64)
    ss = np.asarray(s, dtype=np.float64)
    diff, h = _erfcx_difference(xx, ss)
    return np.asarray(np.log(0.5 * diff) - 0.5 * h * h - 0.125 * ss * ss, dtype=np.float64)


def _b_and_vega(x: Array, s: Array) -> tuple[Array, Array]:
    """b(x, s) and db/ds for x <= 0, s > 0."""
    diff, h = _erfcx_difference(x, s)
    gauss = np.exp(-0.5 * h * h - 0.125 * s * s)
    return 0.5 * gauss * diff, gauss / _SQRT_2PI


# --------------------------------------------------------------------------------------
# Rational cubic interpolation (shape-preserving, Delbourgo-Gregory), vectorised
# --------------------------------------------------------------------------------------
def _rational_cubic(
    at: Array, xl: Array, xr: Array, yl: Array, yr: Array, dl: Array, dr: Array, r: Array
) -> Array:
    h = xr - xl
    t = (at - xl) / h
    omt = 1.0 - t
    t2 = t * t
    omt2 = omt * omt
    numerator = (
        yr * t2 * t + (r * yr - h * dr) * t2 * omt + (r * yl + h * dl) * t * omt2 + yl * omt2 * omt
    )
    curve = numerator / (1.0 + (r - 3.0) * t * omt)
    return np.where(r >= _R_MAX, yr * t + yl * omt, curve)


def _minimum_control(dl: Array, dr: Array, slope: Array) -> Array:
    """Smallest r that keeps the interpolant monotone and convex/concave like its data."""
    monotone = (dl * slope >= 0.0) & (dr * slope >= 0.0)
    convex = (dl <= slope) & (slope <= dr)
    concave = (dl >= slope) & (slope >= dr)
    curved = convex | concave
    r_monotone = np.where(monotone, np.where(slope != 0.0, (dr + dl) / slope, _R_MAX), -np.inf)
    span = dr - dl
    flat_side = (slope - dl == 0.0) | (dr - slope == 0.0)
    r_curved = np.maximum(np.abs(span / (dr - slope)), np.abs(span / (slope - dl)))
    r_curved = np.where(
        curved, np.where(flat_side, _R_MAX, r_curved), np.where(monotone, _R_MAX, -np.inf)
    )
    r = np.maximum(np.maximum(r_monotone, r_curved), _R_MIN)
    return np.where(monotone | curved, r, _R_MIN)


def _control_for_second_derivative(
    numerator: Array, denominator: Array, dl: Array, dr: Array, slope: Array
) -> Array:
    r = numerator / denominator
    r = np.where(denominator == 0.0, np.where(numerator > 0.0, _R_MAX, _R_MIN), r)
    r = np.where(numerator == 0.0, 0.0, r)
    return np.maximum(r, _minimum_control(dl, dr, slope))


def _fit_left(
    xl: Array, xr: Array, yl: Array, yr: Array, dl: Array, dr: Array, d2l: Array | float
) -> Array:
    """Control parameter that matches the second derivative d2l at the left end."""
    h = xr - xl
    slope = (yr - yl) / h
    return _control_for_second_derivative(0.5 * h * d2l + (dr - dl), slope - dl, dl, dr, slope)


def _fit_right(
    xl: Array, xr: Array, yl: Array, yr: Array, dl: Array, dr: Array, d2r: Array | float
) -> Array:
    """Control parameter that matches the second derivative d2r at the right end."""
    h = xr - xl
    slope = (yr - yl) / h
    return _control_for_second_derivative(0.5 * h * d2r + (dr - dl), dr - slope, dl, dr, slope)


# --------------------------------------------------------------------------------------
# Initial guess
# --------------------------------------------------------------------------------------
def _lower_map(ax: Array, s: Array) -> tuple[Array, Array, Array]:
    """f_l(s) and its first two derivatives with respect to beta."""
    z = ax / (_SQRT3 * s)
    y = z * z
    s2 = s * s
    cdf = ndtr(-z)
    pdf = np.exp(-0.5 * y) / _SQRT_2PI
    grow = np.exp(y + 0.125 * s2)
    f = _LOWER_MAP_SCALE * ax * cdf * cdf * cdf
    fp = _TWO_PI * y * cdf * cdf * grow
    # d(fp)/ds divided by db/ds = exp(-3y/2 - s^2/8) / sqrt(2 pi)
    dfp_ds = _TWO_PI * grow * cdf * y * (2.0 * (pdf * z - cdf) / s + cdf * (0.25 * s - 2.0 * y / s))
    fpp = dfp_ds * _SQRT_2PI * np.exp(1.5 * y + 0.125 * s2)
    return f, fp, fpp


def _inverse_lower_map(ax: Array, f: Array) -> Array:
    u = np.cbrt(f / (_LOWER_MAP_SCALE * ax))
    return np.asarray(ax / (_SQRT3 * np.abs(ndtri(u))), dtype=np.float64)


def _upper_map(x: Array, s: Array) -> tuple[Array, Array, Array]:
    """f_u(s) = N(-s/2) and its first two derivatives with respect to beta."""
    w = (x / s) ** 2
    f = ndtr(-0.5 * s)
    fp = -0.5 * np.exp(0.5 * w)
    fpp = _SQRT_PI_OVER_2 * np.exp(w + 0.125 * s * s) * w / s
    return f, fp, fpp


def _initial_guess(x: Array, beta: Array) -> Array:
    """s = sigma sqrt(T) close enough that two Halley steps reach full precision."""
    b_max = np.exp(0.5 * x)
    v_c = b_max / _SQRT_2PI  # db/ds at s_c: exp(-|x|/2) / sqrt(2 pi)
    s_c = np.sqrt(-2.0 * x)
    b_c = 0.5 * b_max - ndtr(-s_c) / b_max
    low = beta < b_c
    # The tangent at s_c hits b = 0 at s_l and b = b_max at s_h.
    s_edge = np.where(low, s_c - b_c / v_c, s_c + (b_max - b_c) / v_c)
    has_edge = s_edge > 0.0
    safe_edge = np.where(has_edge, s_edge, 1.0)
    b_edge, v_edge = _b_and_vega(x, safe_edge)
    b_edge = np.where(has_edge, b_edge, 0.0)
    v_edge = np.where(has_edge, v_edge, v_c)
    s_edge = np.where(has_edge, s_edge, 0.0)

    # Middle branches: s(beta) as a rational cubic between the edge and s_c, with zero
    # curvature at the inflection point.
    inv_v_c = 1.0 / v_c
    inv_v_edge = 1.0 / v_edge
    xl = np.where(low, b_edge, b_c)
    xr = np.where(low, b_c, b_edge)
    yl = np.where(low, s_edge, s_c)
    yr = np.where(low, s_c, s_edge)
    dl = np.where(low, inv_v_edge, inv_v_c)
    dr = np.where(low, inv_v_c, inv_v_edge)
    h = xr - xl
    slope = (yr - yl) / h
    numerator = dr - dl
    denominator = np.where(low, dr - slope, slope - dl)
    r = _control_for_second_derivative(numerator, denominator, dl, dr, slope)
    s = _rational_cubic(beta, xl, xr, yl, yr, dl, dr, r)

    # Lower wing: rational cubic in (beta, f_l) from (0, 0) with slope 1, then invert f_l.
    deep_low = np.flatnonzero(low & (beta < b_edge))
    if deep_low.size:
        ax = -x[deep_low]
        bl = b_edge[deep_low]
        bb = beta[deep_low]
        fl, fpl, fppl = _lower_map(ax, s_edge[deep_low])
        zero = np.zeros_like(bl)
        one = np.ones_like(bl)
        r_l = _fit_right(zero, bl, zero, fl, one, fpl, fppl)
        f = _rational_cubic(bb, zero, bl, zero, fl, one, fpl, r_l)
        t = bb / bl
        f = np.where(f > 0.0, f, (fl * t + bl * (1.0 - t)) * t)  # round-off fallback
        s[deep_low] = _inverse_lower_map(ax, f)

    # Upper wing: rational cubic in (beta, f_u) to (b_max, 0) with slope -1/2, then invert.
    deep_high = np.flatnonzero(~low & (beta > b_edge))
    if deep_high.size:
        bh = b_edge[deep_high]
        bm = b_max[deep_high]
        bb = beta[deep_high]
        fh, fph, fpph = _upper_map(x[deep_high], s_edge[deep_high])
        zero = np.zeros_like(bh)
        half = np.full_like(bh, -0.5)
        finite = np.isfinite(fpph)
        r_h = _fit_left(bh, bm, fh, zero, fph, half, np.where(finite, fpph, 0.0))
        f = _rational_cubic(bb, bh, bm, fh, zero, fph, half, r_h)
        width = bm - bh
        t = (bb - bh) / width
        linear = (fh * (1.0 - t) + 0.5 * width * t) * (1.0 - t)
        f = np.where(finite & (f > 0.0), f, linear)
        s[deep_high] = -2.0 * ndtri(f)
    return s


# --------------------------------------------------------------------------------------
# Normalised solver
# --------------------------------------------------------------------------------------
def _halley(x: Array, ln_beta: Array, s: Array, steps: int) -> Array:
    for _ in range(steps):
        diff, h = _erfcx_difference(x, s)
        nu = _SQRT_2_OVER_PI / diff  # f'(s) = (db/ds) / b
        f = np.log(0.5 * diff)
        f -= 0.5 * h * h + 0.125 * s * s
        f -= ln_beta
        # f''(s) = nu (x^2/s^3 - s/4) - nu^2
        f2 = nu * (h * h / s - 0.25 * s) - nu * nu
        newton = f / nu
        step = newton / (1.0 - 0.5 * newton * f2 / nu)
        # Never let a step take s below half its value (s > 0 always).
        s = np.maximum(s - step, 0.5 * s)
    return s


def _normalised_solve(x: Array, beta: Array, steps: int) -> Array:
    out = np.empty_like(beta)
    for start in range(0, beta.size, _CHUNK):
        part = slice(start, start + _CHUNK)
        xp = x[part]
        bp = beta[part]
        out[part] = _halley(xp, np.log(bp), _initial_guess(xp, bp), steps)
    return out


def normalised_implied_vol(
    beta: ArrayLike, x: ArrayLike, *, halley_steps: int = DEFAULT_HALLEY_STEPS
) -> Array:
    """s = sigma sqrt(T) with b(x, s) = beta, for x <= 0 and 0 < beta < exp(x/2) (not checked)."""
    b = np.ascontiguousarray(beta, dtype=np.float64).ravel()
    xx = np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=np.float64), np.shape(beta)))
    with np.errstate(all="ignore"):
        s = _normalised_solve(xx.ravel(), b, halley_steps)
    return s.reshape(np.shape(beta))


# --------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------
def _classify(
    price: ArrayLike, forward: ArrayLike, strike: ArrayLike, t: ArrayLike, is_call: ArrayLike
) -> tuple[StatusArray, Array, Array, Array, tuple[int, ...]]:
    """Flat (status, x, beta, t) and the broadcast shape; status OK marks what can be solved."""
    p, f, k, tt, call = np.broadcast_arrays(
        np.asarray(price, dtype=np.float64),
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(t, dtype=np.float64),
        np.asarray(is_call, dtype=bool),
    )
    shape = p.shape
    p, f, k, tt, call = (np.ravel(a) for a in (p, f, k, tt, call))
    status = np.full(p.size, OK, dtype=np.int8)
    with np.errstate(all="ignore"):
        bad_contract = ~(np.isfinite(f) & np.isfinite(k) & (f > 0.0) & (k > 0.0)) | ~(tt < np.inf)
        expired = ~bad_contract & (tt <= 0.0)
        usable = ~(bad_contract | expired)
        missing = usable & np.isnan(p)
        bad_price = usable & ~missing & ~((p > 0.0) & (p < np.inf))
        priced = usable & ~missing & ~bad_price
        intrinsic = np.where(call, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0))
        time_value = p - intrinsic
        below = priced & (time_value <= 0.0)
        x = -np.abs(np.log(f / k))
        beta = time_value / (np.sqrt(f) * np.sqrt(k))
        above = priced & ~below & ((p >= np.where(call, f, k)) | (beta >= np.exp(0.5 * x)))
    status[bad_contract] = BAD_INPUT
    status[expired] = EXPIRED
    status[missing] = MISSING_PRICE
    status[bad_price] = BAD_INPUT
    status[below] = BELOW_INTRINSIC
    status[above] = ABOVE_UPPER_BOUND
    return status, x, beta, tt, shape


def bound_status(
    price: ArrayLike, forward: ArrayLike, strike: ArrayLike, t: ArrayLike, is_call: ArrayLike
) -> StatusArray:
    """The status implied_vol would give, without solving (OK: a vol exists)."""
    status, _, _, _, shape = _classify(price, forward, strike, t, is_call)
    return status.reshape(shape)


def implied_vol(
    price: ArrayLike,
    forward: ArrayLike,
    strike: ArrayLike,
    t: ArrayLike,
    is_call: ArrayLike,
    *,
    halley_steps: int = DEFAULT_HALLEY_STEPS,
) -> tuple[Array, StatusArray]:
    """Black-76 implied vols (r = 0) of undiscounted prices, element-wise over broadcast arrays.

    price, forward and strike share one unit (USD per coin); t is in years. Returns
    ``(iv, status)``: status holds IvStatus values (iv.proto) and iv is NaN wherever the
    status is not IV_STATUS_OK. Never raises on bad values; precedence of reasons:
    BAD_INPUT (forward/strike/t) > EXPIRED > MISSING_PRICE (NaN) > BAD_INPUT (price <= 0 or
    infinite) > BELOW_INTRINSIC > ABOVE_UPPER_BOUND.
    """
    status, x, beta, tt, shape = _classify(price, forward, strike, t, is_call)
    iv = np.full(status.size, np.nan)
    solve = status == OK
    with np.errstate(all="ignore"):
        if solve.all():
            iv = _normalised_solve(x, beta, halley_steps) / np.sqrt(tt)
        elif solve.any():
            idx = np.flatnonzero(solve)
            iv[idx] = _normalised_solve(x[idx], beta[idx], halley_steps) / np.sqrt(tt[idx])
        # A time value so small that s underflows is indistinguishable from intrinsic.
        lost = solve & ~((iv > 0.0) & (iv < np.inf))
    status[lost] = BELOW_INTRINSIC
    iv[lost] = np.nan
    return iv.reshape(shape), status.reshape(shape)
