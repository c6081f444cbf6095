"""Smile summaries, fixed tenors, delta risk nodes and a 30-day variance index (docs/quant.md §5).

Every smile here is w(k) = (1 - alpha) w_lo(k) + alpha w_hi(k) with raw-SVI w_lo, w_hi: an
expiry slice is alpha = 0, a fixed tenor between two expiries interpolates total variance
linearly in T at fixed k. Smiles are handled in batches (one numpy pass per Newton step for
every (smile, delta) pair of a surface).

Conventions: ATM is ATM-forward (k = 0). RR = vol(call) - vol(put); BF = (call + put)/2 - ATM
(with the 1/2). Deltas are signed (puts negative) and use either the undiscounted forward
delta N(d1) or the premium-adjusted delta (K/F) N(d2); the premium-adjusted call delta is
not monotone in K and is solved on K >= F.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri

from volmath import black76
from volmath.svi import RawSvi, total_variance_rows
from volstream.v1 import common_pb2 as common_pb

Array = NDArray[np.float64]

FORWARD = common_pb.DELTA_CONVENTION_FORWARD
PREMIUM_ADJUSTED = common_pb.DELTA_CONVENTION_PREMIUM_ADJUSTED

YEAR_DAYS = 365.0
DEFAULT_TENOR_DAYS = (1, 2, 3, 7, 14, 21, 30, 60, 90, 180, 365)
NODE_DELTAS = (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45)


def _svi_dw(p: Array, k: Array) -> Array:
    x = k - p[:, 3]
    return np.asarray(
        p[:, 1] * (p[:, 2] + x / np.sqrt(x * x + p[:, 4] * p[:, 4])), dtype=np.float64
    )


@dataclass(frozen=True)
class SmileSet:
    """N smiles: lo, hi (N, 5) raw-SVI rows (a, b, rho, m, sigma), alpha (N,), t (N,)."""

    lo: Array
    hi: Array
    alpha: Array
    t: Array

    @staticmethod
    def from_slices(params: Sequence[RawSvi], ts: Sequence[float]) -> SmileSet:
        p = np.array([tuple(x) for x in params], dtype=np.float64).reshape(-1, 5)
        return SmileSet(lo=p, hi=p.copy(), alpha=np.zeros(len(p)), t=np.asarray(ts, np.float64))

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def take(self, idx: NDArray[np.intp]) -> SmileSet:
        return SmileSet(self.lo[idx], self.hi[idx], self.alpha[idx], self.t[idx])

    def w(self, k: Array) -> Array:
        lo, hi = total_variance_rows(self.lo, k), total_variance_rows(self.hi, k)
        return (1.0 - self.alpha) * lo + self.alpha * hi

    def dw(self, k: Array) -> Array:
        return (1.0 - self.alpha) * _svi_dw(self.lo, k) + self.alpha * _svi_dw(self.hi, k)

    def vol(self, k: Array) -> Array:
        with np.errstate(invalid="ignore"):
            return np.asarray(np.sqrt(self.w(k) / self.t), dtype=np.float64)


def _d1_and_slope(s: SmileSet, k: Array) -> tuple[Array, Array, Array, Array]:
    """d1(k) = -k/sqrt(w) + sqrt(w)/2, its k-derivative, sqrt(w) and w'/(2 sqrt w)."""
    w = s.w(k)
    w1 = s.dw(k)
    with np.errstate(invalid="ignore", divide="ignore"):
        sw = np.sqrt(w)
        dsw = w1 / (2.0 * sw)
        d1 = -k / sw + 0.5 * sw
        dd1 = -1.0 / sw + k * dsw / w + 0.5 * dsw
    return d1, dd1, sw, dsw


def _solve(fn_and_slope: _Objective, lo: Array, hi: Array, x0: Array, iters: int = 60) -> Array:
    """Vectorised safeguarded Newton for decreasing-through-zero f on [lo, hi]
    (f(lo) > 0 > f(hi)); bisects whenever a Newton step leaves the bracket. Every row is
    evaluated at each step and only the unconverged ones move (with a few hundred rows,
    gathering the active ones costs more than evaluating them all)."""
    x = np.clip(x0, lo, hi)
    active = np.ones(x.shape, dtype=bool)
    for _ in range(iters):
        if not active.any():
            break
        f, df = fn_and_slope(x, None)
        pos = f > 0.0
        lo = np.where(active & pos, x, lo)
        hi = np.where(active & ~pos, x, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - f / df
            inside = np.isfinite(newton) & (newton >= lo) & (newton <= hi)
            nxt = np.where(inside, newton, 0.5 * (lo + hi))
            exact = f == 0.0
            nxt = np.where(exact, x, nxt)
            done = (np.abs(nxt - x) < 1e-14 * (1.0 + np.abs(nxt))) | exact
            done |= (hi - lo) < 1e-15
        x = np.where(active, nxt, x)
        active &= ~done
    return x


class _Objective:
    """f and f' at k, one k per smile (idx: the smiles' rows, None: all of them)."""

    def __call__(self, k: Array, idx: NDArray[np.intp] | None) -> tuple[Array, Array]:
        raise NotImplementedError  # pragma: no cover - interface


class _ForwardD1(_Objective):
    """d1(k) - target, decreasing in k for an arbitrage-free smile."""

    def __init__(self, s: SmileSet, target: Array) -> None:
        self.s, self.target = s, target

    def __call__(self, k: Array, idx: NDArray[np.intp] | None) -> tuple[Array, Array]:
        if idx is None:
            d1, dd1, _, _ = _d1_and_slope(self.s, k)
            return d1 - self.target, dd1
        d1, dd1, _, _ = _d1_and_slope(self.s.take(idx), k)
        return d1 - self.target[idx], dd1


class _PremiumAdjusted(_Objective):
    """Call: e^k N(d2) - delta; put: delta - (-e^k N(-d2)) = delta + e^k N(-d2) (sign
    chosen so both decrease through the root on the bracket)."""

    def __init__(self, s: SmileSet, delta: Array) -> None:
        self.s, self.delta = s, delta

    def __call__(self, k: Array, idx: NDArray[np.intp] | None) -> tuple[Array, Array]:
        s, delta = (self.s, self.delta) if idx is None else (self.s.take(idx), self.delta[idx])
        d1, dd1, sw, dsw = _d1_and_slope(s, k)
        d2 = d1 - sw
        dd2 = dd1 - dsw
        call = delta > 0.0
        ek = np.exp(k)
        pdf = np.exp(-0.5 * d2 * d2) / math.sqrt(2.0 * math.pi)
        # Call: f = e^k N(d2) - delta. Put: f = |delta| - e^k N(-d2) (increasing |put|).
        fc = ek * ndtr(d2) - delta
        dfc = ek * (ndtr(d2) + pdf * dd2)
        fp = -delta - ek * ndtr(-d2)
        dfp = -ek * (ndtr(-d2) - pdf * dd2)
        return np.where(call, fc, fp), np.where(call, dfc, dfp)


def _pa_call_peak(s: SmileSet, span: Array, points: int = 65) -> Array:
    """k near the maximum of the premium-adjusted call delta e^k N(d2) (a grid argmax,
    zoomed twice): the call strike is solved on the decreasing branch to its right."""
    n = len(s)
    rows = np.repeat(np.arange(n), points)
    sub = s.take(rows)
    centre = np.zeros(n)
    half = span.copy()
    for _ in range(3):
        k = (centre[:, None] + half[:, None] * np.linspace(-1.0, 1.0, points)[None, :]).ravel()
        d1, _, sw, _ = _d1_and_slope(sub, k)
        pa = (np.exp(k) * ndtr(d1 - sw)).reshape(n, points)
        pa = np.where(np.isfinite(pa), pa, -np.inf)
        centre = k.reshape(n, points)[np.arange(n), np.argmax(pa, axis=1)]
        half = half * 2.0 / (points - 1)
    return np.asarray(centre, dtype=np.float64)


def k_at_delta(s: SmileSet, delta: ArrayLike, convention: int = FORWARD) -> Array:
    """Log-moneyness of the option with the given signed delta on each smile (NaN when no
    such strike exists, e.g. a premium-adjusted call delta above its maximum).

    Premium-adjusted calls are solved right of the delta's maximum (which lies at K < F
    for usual vols, so the 25- and 10-delta calls land on K > F, docs/quant.md section 3).
    """
    dl = np.asarray(delta, dtype=np.float64)
    n = len(s)
    if dl.shape != (n,):
        raise ValueError("one delta per smile")
    w0 = s.w(np.zeros(n))
    sw0 = np.sqrt(np.maximum(w0, 1e-12))
    span = 10.0 * sw0 + w0 + 0.5
    valid = (np.abs(dl) > 0.0) & (np.abs(dl) < 1.0) & np.isfinite(w0) & (w0 > 0.0)
    obj: _Objective
    if convention == PREMIUM_ADJUSTED:
        call = dl > 0.0
        lo = -span
        if np.any(call):
            lo = lo.copy()
            lo[call] = _pa_call_peak(s.take(np.flatnonzero(call)), span[call])
        hi = span.copy()
        clipped = np.clip(np.abs(dl), 1e-12, 1 - 1e-12)
        # Flat-smile guesses: calls k ~ -N^-1(delta) sqrt(w), puts k ~ N^-1(|delta|) sqrt(w).
        guess = np.where(call, -ndtri(clipped) * sw0, ndtri(clipped) * sw0 - 0.5 * w0)
        obj = _PremiumAdjusted(s, dl)
    else:
        target = ndtri(np.clip(np.where(dl > 0.0, dl, 1.0 + dl), 1e-300, 1.0))
        lo, hi = -span, span.copy()
        guess = -target * sw0 + 0.5 * w0
        obj = _ForwardD1(s, target)
    f_lo, _ = obj(lo, None)
    f_hi, _ = obj(hi, None)
    valid &= (f_lo >= 0.0) & (f_hi < 0.0)
    k = np.full(n, np.nan)
    idx = np.flatnonzero(valid)
    if idx.size:
        sub = s.take(idx)
        sub_obj: _Objective = (
            _PremiumAdjusted(sub, dl[idx])
            if convention == PREMIUM_ADJUSTED
            else _ForwardD1(sub, target[idx])
        )
        k[idx] = _solve(sub_obj, lo[idx], hi[idx], guess[idx])
    return k


@dataclass(frozen=True)
class SmileMetricsValues:
    atm_vol: float
    rr25: float
    bf25: float
    rr10: float
    bf10: float
    convention: int


def smile_metrics_batch(s: SmileSet, convention: int = FORWARD) -> list[SmileMetricsValues]:
    n = len(s)
    deltas = np.tile(np.array([0.25, -0.25, 0.10, -0.10]), n)
    rep = s.take(np.repeat(np.arange(n), 4))
    k = k_at_delta(rep, deltas, convention)
    vols = rep.vol(k).reshape(n, 4)
    atm = s.vol(np.zeros(n))
    out = []
    for i in range(n):
        c25, p25, c10, p10 = (float(v) for v in vols[i])
        a = float(atm[i])
        out.append(
            SmileMetricsValues(
                atm_vol=a,
                rr25=c25 - p25,
                bf25=0.5 * (c25 + p25) - a,
                rr10=c10 - p10,
                bf10=0.5 * (c10 + p10) - a,
                convention=convention,
            )
        )
    return out


def smile_metrics(p: RawSvi, t: float, convention: int = FORWARD) -> SmileMetricsValues:
    return smile_metrics_batch(SmileSet.from_slices([p], [t]), convention)[0]


def strike_at_delta(
    p: RawSvi, t: float, forward: float, delta: float, convention: int = FORWARD
) -> float:
    k = k_at_delta(SmileSet.from_slices([p], [t]), [delta], convention)[0]
    return float(forward * math.exp(k)) if math.isfinite(k) else float("nan")


@dataclass(frozen=True)
class DeltaNodeValue:
    label: str
    delta: float
    vol: float
    strike: float


def node_layout() -> list[tuple[str, float]]:
    """("5P", -0.05) ... ("45P", -0.45), ("ATM", 0.5), ("45C", 0.45) ... ("5C", 0.05)."""
    puts = [(f"{round(d * 100)}P", -d) for d in NODE_DELTAS]
    calls = [(f"{round(d * 100)}C", d) for d in reversed(NODE_DELTAS)]
    return [*puts, ("ATM", 0.5), *calls]


@dataclass(frozen=True)
class NodeGrid:
    """Risk nodes of n smiles in node_layout() order: vols and strikes (n, 19)."""

    labels: tuple[str, ...]
    deltas: Array
    vols: Array
    strikes: Array


def node_grid(s: SmileSet, forwards: Sequence[float], convention: int = FORWARD) -> NodeGrid:
    """Risk nodes of every smile from one batched delta solve; ATM is the ATM-forward
    point (strike = forward)."""
    layout = node_layout()
    n, m = len(s), len(layout)
    deltas = np.array([d for _, d in layout])
    is_atm = np.array([label == "ATM" for label, _ in layout])
    rep = s.take(np.repeat(np.arange(n), m))
    dl = np.tile(np.where(is_atm, 0.25, deltas), n)  # ATM placeholder, overwritten below
    k = k_at_delta(rep, dl, convention)
    k = np.where(np.tile(is_atm, n), 0.0, k)
    vols = rep.vol(k).reshape(n, m)
    fwd = np.asarray(forwards, dtype=np.float64).reshape(n, 1)
    with np.errstate(invalid="ignore"):
        strikes = fwd * np.exp(k.reshape(n, m))
    return NodeGrid(
        labels=tuple(label for label, _ in layout), deltas=deltas, vols=vols, strikes=strikes
    )


def delta_nodes_batch(
    s: SmileSet, forwards: Sequence[float], convention: int = FORWARD
) -> list[list[DeltaNodeValue]]:
    """Risk nodes per smile as values (see node_grid for the array form)."""
    grid = node_grid(s, forwards, convention)
    return [
        [
            DeltaNodeValue(label=label, delta=float(d), vol=float(v), strike=float(k))
            for label, d, v, k in zip(grid.labels, grid.deltas, vols, strikes, strict=True)
        ]
        for vols, strikes in zip(grid.vols, grid.strikes, strict=True)
    ]


def concat(sets: Sequence[SmileSet]) -> SmileSet:
    """One SmileSet holding the smiles of several, in order."""
    return SmileSet(
        lo=np.concatenate([x.lo for x in sets]).reshape(-1, 5),
        hi=np.concatenate([x.hi for x in sets]).reshape(-1, 5),
        alpha=np.concatenate([x.alpha for x in sets]),
        t=np.concatenate([x.t for x in sets]),
    )


def metrics_and_nodes(
    s: SmileSet, forwards: Sequence[float], convention: int = FORWARD
) -> tuple[list[SmileMetricsValues], NodeGrid]:
    """Smile metrics and risk nodes of every smile from one batched delta solve (the
    25- and 10-delta points are nodes)."""
    grid = node_grid(s, forwards, convention)
    col = {label: j for j, label in enumerate(grid.labels)}
    v = grid.vols
    atm = v[:, col["ATM"]]
    c25, p25, c10, p10 = (v[:, col[x]] for x in ("25C", "25P", "10C", "10P"))
    rows = zip(
        atm.tolist(),
        (c25 - p25).tolist(),
        (0.5 * (c25 + p25) - atm).tolist(),
        (c10 - p10).tolist(),
        (0.5 * (c10 + p10) - atm).tolist(),
        strict=True,
    )
    out = [
        SmileMetricsValues(a, rr25, bf25, rr10, bf10, convention)
        for a, rr25, bf25, rr10, bf10 in rows
    ]
    return out, grid


@dataclass(frozen=True)
class TenorSmile:
    tenor_days: int
    t: float
    available: bool
    # Row index into the interpolation SmileSet when available.
    forward: float


def interpolate_tenors(
    ts: Sequence[float],
    params: Sequence[RawSvi],
    forwards: Sequence[float],
    tenor_days: Sequence[int] = DEFAULT_TENOR_DAYS,
    spot: float | None = None,
) -> tuple[list[TenorSmile], SmileSet]:
    """Fixed-tenor smiles, linear in total variance in T at fixed k between the two
    bracketing expiries; never extrapolated (available = False outside [T_first, T_last]).

    The forward interpolates the annualised basis ln(F/S)/T when a spot is given, else
    ln F linearly in T. Returns the tenors and a SmileSet holding the available ones in
    order.
    """
    order = np.argsort(np.asarray(ts, dtype=np.float64))
    t_sorted = np.asarray(ts, dtype=np.float64)[order]
    p_sorted = [params[i] for i in order]
    f_sorted = np.asarray(forwards, dtype=np.float64)[order]
    tenors: list[TenorSmile] = []
    lo_rows: list[tuple[float, ...]] = []
    hi_rows: list[tuple[float, ...]] = []
    alphas: list[float] = []
    t_rows: list[float] = []
    eps = 1e-12
    use_basis = spot is not None and spot > 0.0 and math.isfinite(spot)
    for days in tenor_days:
        t = days / YEAR_DAYS
        if t_sorted.size == 0 or t < t_sorted[0] - eps or t > t_sorted[-1] + eps:
            tenors.append(TenorSmile(days, t, False, math.nan))
            continue
        j = int(np.searchsorted(t_sorted, t - eps, side="left"))
        j = min(max(j, 1), t_sorted.size - 1) if t_sorted.size > 1 else 0
        i = j - 1 if t_sorted.size > 1 else 0
        t0, t1 = t_sorted[i], t_sorted[j]
        alpha = 0.0 if t1 == t0 else min(max((t - t0) / (t1 - t0), 0.0), 1.0)
        f0, f1 = f_sorted[i], f_sorted[j]
        if use_basis:
            assert spot is not None
            b0, b1 = math.log(f0 / spot) / t0, math.log(f1 / spot) / t1
            fwd = spot * math.exp(t * (b0 + alpha * (b1 - b0)))
        else:
            fwd = math.exp(math.log(f0) + alpha * (math.log(f1) - math.log(f0)))
        lo_rows.append(tuple(p_sorted[i]))
        hi_rows.append(tuple(p_sorted[j]))
        alphas.append(alpha)
        t_rows.append(t)
        tenors.append(TenorSmile(days, t, True, fwd))
    smiles = SmileSet(
        lo=np.array(lo_rows, dtype=np.float64).reshape(-1, 5),
        hi=np.array(hi_rows, dtype=np.float64).reshape(-1, 5),
        alpha=np.array(alphas, dtype=np.float64),
        t=np.array(t_rows, dtype=np.float64),
    )
    return tenors, smiles


def variance_swap_vol(s: SmileSet, k_lo: ArrayLike, k_hi: ArrayLike, points: int = 401) -> Array:
    """Model-free (variance-replication) vol per smile over [k_lo, k_hi]:
    sigma^2 T = 2 * integral of OTM(k) e^-k dk, OTM prices normalised by the forward.
    Trapezoid rule on each side of the forward (the integrand has a kink at k = 0)."""
    lo = np.minimum(np.asarray(k_lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(k_hi, dtype=np.float64), 0.0)
    n = len(s)
    frac = np.linspace(0.0, 1.0, points)
    total = np.zeros(n)
    for a, b in ((lo, np.zeros(n)), (np.zeros(n), hi)):
        k = a[:, None] + (b - a)[:, None] * frac[None, :]
        rows = np.repeat(np.arange(n), points)
        flat_k = k.ravel()
        vol = s.take(rows).vol(flat_k)
        prices = black76.price(1.0, np.exp(flat_k), s.t[rows], vol, flat_k >= 0.0)
        integrand = (prices * np.exp(-flat_k)).reshape(n, points)
        dk = (b - a) / (points - 1)
        total += dk * (integrand.sum(axis=1) - 0.5 * (integrand[:, 0] + integrand[:, -1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.sqrt(2.0 * total / s.t), dtype=np.float64)


def vol_index(
    ts: Sequence[float],
    params: Sequence[RawSvi],
    k_ranges: Sequence[tuple[float, float]],
    days: float = 30.0,
) -> float:
    """DVOL/VIX-style index: variance replication on the two expiries bracketing `days`,
    interpolated linearly in total variance to exactly `days`, annualised. NaN when no
    pair of expiries brackets it (never extrapolated)."""
    target = days / YEAR_DAYS
    t_arr = np.asarray(ts, dtype=np.float64)
    if t_arr.size == 0:
        return math.nan
    below = np.flatnonzero(t_arr <= target + 1e-12)
    above = np.flatnonzero(t_arr >= target - 1e-12)
    if below.size == 0 or above.size == 0:
        return math.nan
    i = int(below[np.argmax(t_arr[below])])
    j = int(above[np.argmin(t_arr[above])])
    pick = [i] if i == j else [i, j]
    s = SmileSet.from_slices([params[x] for x in pick], [ts[x] for x in pick])
    vols = variance_swap_vol(s, [k_ranges[x][0] for x in pick], [k_ranges[x][1] for x in pick])
    if not np.all(np.isfinite(vols)):
        return math.nan
    if i == j:
        return float(vols[0])
    t1, t2 = t_arr[i], t_arr[j]
    w1, w2 = vols[0] ** 2 * t1, vols[1] ** 2 * t2
    w = w1 + (w2 - w1) * (target - t1) / (t2 - t1)
    return float(math.sqrt(max(w, 0.0) / target))
