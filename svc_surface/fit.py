"""Quasi-explicit raw-SVI calibration (Zeliade 2009), batched over slices.

For fixed (m, sigma), with y = (k - m)/sigma, a raw slice is w = a~ + d y + c sqrt(y^2 + 1)
(a~ = a, d = rho b sigma, c = b sigma): a weighted linear least-squares problem in
(a~, d, c), solved exactly on the domain 0 <= c, |d| <= c, c + |d| <= B sigma (B = Lee's
wing bound, b (1 + |rho|) <= B) and a~ >= 0 (Zeliade's domain; optionally a~ < 0 as long
as min w >= 0, which short-dated crypto smiles need): the best of the unconstrained 3x3
solution and every face, edge and corner. The outer 2-D problem in (m, ln sigma) is
searched by a coarse grid, then polished by Newton steps on a 3x3 finite-difference
stencil (multi-start optional). Every stage is vectorised across slices so a whole
surface costs a handful of numpy passes. Optional per-slice caps on the wing slopes
(WingCaps: put b (1 - rho) = v / sigma, call b (1 + rho) = u / sigma) tighten the box's
u and v faces: calendar order against a later expiry, inside the calibration
(docs/quant.md section 4).

The objective respects the bid/ask band: per quote, the squared distance of the fitted
total variance to [w_bid, w_ask] plus epsilon times the squared distance to the mid. It
is minimised by majorisation (targets = (clip(fit, band) + eps mid) / (1 + eps)), each
round a plain least-squares problem: a fit inside the band costs (almost) nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from volmath.svi import LEE_WING_BOUND, RawSvi

Array = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# 3x3 stencil offsets in units of the step, centre at index 4.
_STENCIL = np.array([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)], dtype=np.float64)
_CENTRE = 4


@dataclass(frozen=True)
class FitConfig:
    """Tuning of the quasi-explicit fitter (defaults suit 1-day to 2-year crypto smiles)."""

    # Total-variance wing-slope bound: b (1 + |rho|) <= wing_bound (Lee: 2).
    wing_bound: float = LEE_WING_BOUND
    # Allow a < 0 (as long as min w = a + b sigma sqrt(1 - rho^2) >= 0) instead of the
    # Zeliade domain's a >= 0: short-dated crypto smiles often need it.
    negative_a: bool = True
    # Weight of the distance to the mid relative to the distance outside the bid/ask band.
    band_epsilon: float = 0.1
    # Majorisation rounds for the band (0: fit the mid only), run only on slices whose fit
    # misses some quote's band by more than band_tolerance_vol.
    band_rounds: int = 1
    band_tolerance_vol: float = 0.001
    # Cold-start grid in (m, sigma), spanning the quoted log-moneyness range R.
    grid_m: int = 13
    grid_sigma: int = 10
    sigma_lo_frac: float = 0.005
    sigma_hi_frac: float = 2.0
    # Coarse sentinel grid evaluated on warm starts to catch a stale local minimum.
    sentinel_m: int = 7
    sentinel_sigma: int = 6
    # Cold fits polish this many of the grid's best local minima (in one batch).
    cold_starts: int = 1
    # Newton polish.
    max_iter: int = 40
    band_iter: int = 6
    # A warm-started slice stops after idle_iter iterations in a row that gained less
    # than gain_rtol of its objective (the last digits of a refit to noisy quotes cost
    # iterations, not accuracy; cold fits, rare, search to the end).
    gain_rtol: float = 1e-4
    idle_iter: int = 2
    xtol: float = 1e-10
    step_floor: float = 1e-6
    sigma_min: float = 1e-4
    sigma_min_frac: float = 0.002
    sigma_max: float = 20.0


@dataclass(frozen=True)
class SliceData:
    """One slice's fit inputs (quotes already selected).

    Vols are fractions; weights apply to squared vol residuals (zero: ignored). NaN bid or
    ask means no band on that side (the mid is the target there). ``target_vol``, when
    given, is what the least squares aims at instead of the mid (temporal smoothing blends
    the mid with the last published slice); residuals are still reported against the mid.
    """

    t: float
    k: Array
    mid_vol: Array
    bid_vol: Array
    ask_vol: Array
    vol_weight: Array
    target_vol: Array | None = None

    @property
    def n(self) -> int:
        return int(self.k.shape[0])


class WingCaps(NamedTuple):
    """Upper bounds on a slice's total-variance wing slopes: put b (1 - rho), call
    b (1 + rho) (inf: Lee's bound only)."""

    put: float
    call: float


def wing_slopes(p: RawSvi) -> WingCaps:
    """A slice's own wing slopes (put, call)."""
    return WingCaps(p.b * (1.0 - p.rho), p.b * (1.0 + p.rho))


@dataclass(frozen=True)
class SviFitResult:
    params: RawSvi
    t: float
    fitted_vol: Array
    # fitted - mid, basis points of vol, one per input quote.
    residuals_bp: Array
    rmse_bp: float
    max_abs_residual_bp: float
    # Minimised objective (normalised weights, total-variance units).
    objective: float
    fit_time_ms: float
    warm_start: bool
    iterations: int


@dataclass
class _Batch:
    """Padded arrays for S slices (padding has zero weight)."""

    k: Array  # (S, n)
    target: Array  # (S, n) current least-squares target in total variance
    weight: Array  # (S, n) total-variance weights, each row sums to 1
    mid: Array  # (S, n)
    lo: Array  # (S, n)
    hi: Array  # (S, n)
    m_lo: Array  # (S,)
    m_hi: Array  # (S,)
    span: Array  # (S,) quoted log-moneyness range (floored)
    t_col: Array = field(default_factory=lambda: np.ones((0, 1)))  # (S, 1) maturities
    # Lowest a~ considered (-max w): a < 0 is allowed while min w = a + sqrt(u v) >= 0.
    a_floor: Array = field(default_factory=lambda: np.zeros(0))
    # Per-slice sums that depend on the targets only (see set_target).
    s1: Array = field(default_factory=lambda: np.zeros(0))
    st: Array = field(default_factory=lambda: np.zeros(0))
    stt: Array = field(default_factory=lambda: np.zeros(0))
    ones_t: Array = field(default_factory=lambda: np.zeros(0))
    # (S,) caps on the wing slopes of w, b (1 - rho) (put) and b (1 + rho) (call), on top
    # of Lee's bound: a slice below its later neighbour's wings (calendar order).
    put_cap: Array = field(default_factory=lambda: np.zeros(0))
    call_cap: Array = field(default_factory=lambda: np.zeros(0))
    # (S,) warm-started slices: their polish stops on idle iterations (gain_rtol).
    warm: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.a_floor.shape != self.span.shape:
            self.a_floor = -np.max(self.hi, axis=1)
        if self.put_cap.shape != self.span.shape:
            self.put_cap = np.full(self.span.shape, np.inf)
        if self.call_cap.shape != self.span.shape:
            self.call_cap = np.full(self.span.shape, np.inf)
        if self.warm.shape != self.span.shape:
            self.warm = np.zeros(self.span.shape, dtype=bool)
        self.set_target(self.target)

    def set_target(self, target: Array) -> None:
        self.target = target
        om = self.weight
        self.s1 = om.sum(axis=1)
        self.st = (om * target).sum(axis=1)
        self.stt = (om * target * target).sum(axis=1)
        self.ones_t = np.stack([np.ones_like(target), target], axis=-1)

    def take(self, rows: NDArray[np.intp]) -> _Batch:
        """The same arrays for a subset of slices (targets copied)."""
        return _Batch(
            k=self.k[rows],
            target=self.target[rows].copy(),
            weight=self.weight[rows],
            mid=self.mid[rows],
            lo=self.lo[rows],
            hi=self.hi[rows],
            m_lo=self.m_lo[rows],
            m_hi=self.m_hi[rows],
            span=self.span[rows],
            t_col=self.t_col[rows],
            a_floor=self.a_floor[rows],
            put_cap=self.put_cap[rows],
            call_cap=self.call_cap[rows],
            warm=self.warm[rows],
        )


def _batch(datas: Sequence[SliceData]) -> _Batch:
    """Pad the slices into (S, n) arrays; padding repeats each slice's first quote with zero
    weight so every array stays finite."""
    counts = np.array([d.n for d in datas])
    if np.any(counts < 3):
        raise ValueError(f"SVI fit needs at least 3 quotes, got {int(counts.min())}")
    ts = np.array([d.t for d in datas], dtype=np.float64)
    if not np.all(np.isfinite(ts) & (ts > 0.0)):
        raise ValueError(f"SVI fit needs T > 0, got {ts.min()}")
    n = int(counts.max())
    # Gather indices into the concatenated inputs (padding points at the slice's quote 0).
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    col = np.arange(n)[None, :]
    live = col < counts[:, None]
    gather = offsets[:, None] + np.where(live, col, 0)
    k_all = np.concatenate([np.asarray(d.k, dtype=np.float64) for d in datas])
    vol_all = np.concatenate(
        [np.asarray(d.mid_vol if d.target_vol is None else d.target_vol) for d in datas]
    ).astype(np.float64, copy=False)
    bid_all = np.concatenate([np.asarray(d.bid_vol, dtype=np.float64) for d in datas])
    ask_all = np.concatenate([np.asarray(d.ask_vol, dtype=np.float64) for d in datas])
    wt_all = np.concatenate([np.asarray(d.vol_weight, dtype=np.float64) for d in datas])
    if not (np.all(np.isfinite(vol_all)) and np.all(vol_all > 0.0) and np.all(np.isfinite(k_all))):
        raise ValueError("SVI fit needs finite k and positive mid vols")
    k = k_all[gather]
    vol = vol_all[gather]
    t = ts[:, None]
    mid = vol * vol * t
    with np.errstate(invalid="ignore"):
        bid = np.where(np.isfinite(bid_all[gather]), np.minimum(bid_all[gather], vol), vol)
        ask = np.where(np.isfinite(ask_all[gather]), np.maximum(ask_all[gather], vol), vol)
    # Squared vol residual ~ (dw / (2 sigma T))^2: convert the vol weights to w space.
    om = wt_all[gather] / (2.0 * vol * t) ** 2
    om = np.where(live & np.isfinite(om) & (om > 0.0), om, 0.0)
    total = om.sum(axis=1, keepdims=True)
    if not np.all(total > 0.0):
        raise ValueError("SVI fit needs positive weights")
    lo = np.where(live, np.maximum(bid, 0.0) ** 2 * t, mid)
    hi = np.where(live, ask * ask * t, mid)
    masked = np.where(live, k, np.nan)
    kmin, kmax = np.nanmin(masked, axis=1), np.nanmax(masked, axis=1)
    span = np.maximum(kmax - kmin, 0.02)
    return _Batch(
        k=k,
        target=mid.copy(),
        weight=om / total,
        mid=mid,
        lo=lo,
        hi=hi,
        m_lo=kmin - span,
        m_hi=kmax + span,
        span=span,
        t_col=t,
    )


# Inner problem in box coordinates. With u = c + d = b sigma (1 + rho) and
# v = c - d = b sigma (1 - rho) the slice is w = a~ + u p + v q, p = (z + y)/2,
# q = (z - y)/2 (so p q = 1/4), and the Zeliade domain becomes the box
# a~ >= 0, 0 <= u <= B sigma, 0 <= v <= B sigma. (The a~ <= max w face of the paper is
# never active: above every target, lowering a~ lowers every residual.)
# Each active set fixes some coordinates at a bound and solves for the rest: u, v free or
# at 0 or B sigma; a~ free or at 0 or at its floor (-max w, when negative a is allowed:
# then min w = a~ + sqrt(u v) >= 0 is also checked, and the a~ = 0 faces always hold a
# feasible point).
_FREE, _ZERO, _UPPER, _FLOOR = 0, 1, 2, 3


def _active_sets(negative_a: bool) -> list[tuple[int, int, int]]:
    a_modes = (_FREE, _ZERO, _FLOOR) if negative_a else (_FREE, _ZERO)
    return [
        (sa, su, sv)
        for sa in a_modes
        for su in (_FREE, _ZERO, _UPPER)
        for sv in (_FREE, _ZERO, _UPPER)
        if (sa, su, sv) != (_FREE, _FREE, _FREE)
    ]


_ACTIVE_SETS = {flag: _active_sets(flag) for flag in (False, True)}
_SET_MODES = {flag: np.array(sets, dtype=np.int64) for flag, sets in _ACTIVE_SETS.items()}
_SET_FREE = {flag: modes == _FREE for flag, modes in _SET_MODES.items()}
_EYE = np.eye(3)


class _Normal:
    """Normal equations H x = g of the weighted least squares, entries as arrays (N,)."""

    __slots__ = ("g", "h", "stt")

    def __init__(self, h: list[list[Array]], g: list[Array], stt: Array) -> None:
        self.h = h
        self.g = g
        self.stt = stt

    def take(self, mask: BoolArray) -> _Normal:
        return _Normal(
            [[e[mask] for e in row] for row in self.h], [e[mask] for e in self.g], self.stt[mask]
        )

    def value(self, x: list[Array]) -> Array:
        """x^T H x - 2 g^T x + stt."""
        h, g = self.h, self.g
        total = self.stt - 2.0 * (g[0] * x[0] + g[1] * x[1] + g[2] * x[2])
        total = total + h[0][0] * x[0] * x[0] + h[1][1] * x[1] * x[1] + h[2][2] * x[2] * x[2]
        total = total + 2.0 * (
            h[0][1] * x[0] * x[1] + h[0][2] * x[0] * x[2] + h[1][2] * x[1] * x[2]
        )
        return np.asarray(total, dtype=np.float64)

    def solve_all(self) -> list[Array]:
        """Unconstrained solution by the adjugate."""
        (h00, h01, h02), (_, h11, h12), (_, _, h22) = self.h
        g0, g1, g2 = self.g
        c00 = h11 * h22 - h12 * h12
        c01 = h02 * h12 - h01 * h22
        c02 = h01 * h12 - h02 * h11
        c11 = h00 * h22 - h02 * h02
        c12 = h01 * h02 - h00 * h12
        c22 = h00 * h11 - h01 * h01
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inv = 1.0 / (h00 * c00 + h01 * c01 + h02 * c02)
            return [
                (c00 * g0 + c01 * g1 + c02 * g2) * inv,
                (c01 * g0 + c11 * g1 + c12 * g2) * inv,
                (c02 * g0 + c12 * g1 + c22 * g2) * inv,
            ]


def _inside(x: list[Array], upper_u: Array, upper_v: Array, a_floor: Array) -> BoolArray:
    tol_u = 1e-12 * (1.0 + upper_u)
    tol_v = 1e-12 * (1.0 + upper_v)
    ok: BoolArray = (
        (x[0] >= a_floor - 1e-15)
        & (x[1] >= -tol_u)
        & (x[1] <= upper_u + tol_u)
        & (x[2] >= -tol_v)
        & (x[2] <= upper_v + tol_v)
    )
    # a~ < 0 is fine while the smile stays above zero: min w = a~ + sqrt(u v).
    negative = x[0] < 0.0
    if np.any(negative):
        with np.errstate(invalid="ignore"):
            floor_w = x[0] + np.sqrt(np.maximum(x[1], 0.0) * np.maximum(x[2], 0.0))
        ok &= ~negative | (floor_w >= 0.0)
    return ok


def _box_solve(
    ne: _Normal, upper_u: Array, upper_v: Array, a_floor: Array, negative_a: bool
) -> list[Array]:
    """Exact minimiser over the box when the unconstrained one is outside: the best
    feasible candidate over all faces, edges and corners, every active set solved at
    once (K sets x N points): fixed coordinates get an identity row, so each set is one
    3x3 system whose free block is the reduced normal equations."""
    modes, free = _SET_MODES[negative_a], _SET_FREE[negative_a]  # (K, 3)
    n = upper_u.shape[0]
    zero = np.zeros(n)
    fixed = np.stack(
        [
            np.where((modes[:, 0] == _FLOOR)[:, None], a_floor[None, :], zero[None, :]),
            np.where((modes[:, 1] == _UPPER)[:, None], upper_u[None, :], zero[None, :]),
            np.where((modes[:, 2] == _UPPER)[:, None], upper_v[None, :], zero[None, :]),
        ],
        axis=1,
    )  # (K, 3, N)
    h = np.array([[ne.h[i][j] for j in range(3)] for i in range(3)])  # (3, 3, N)
    g = np.array(ne.g)  # (3, N)
    # Right-hand side: g_R - H_RF x_F on free rows, x_F on fixed ones.
    rhs = np.where(free[:, :, None], g[None] - np.einsum("ijn,kjn->kin", h, fixed), fixed)
    both = free[:, :, None] & free[:, None, :]  # (K, 3, 3)
    a = np.where(both[..., None], h[None], _EYE[None, :, :, None])  # (K, 3, 3, N)
    (h00, h01, h02), (h10, h11, h12), (h20, h21, h22) = (
        (a[:, i, 0], a[:, i, 1], a[:, i, 2]) for i in range(3)
    )
    c00 = h11 * h22 - h12 * h21
    c01 = h02 * h21 - h01 * h22
    c02 = h01 * h12 - h02 * h11
    c10 = h12 * h20 - h10 * h22
    c11 = h00 * h22 - h02 * h20
    c12 = h02 * h10 - h00 * h12
    c20 = h10 * h21 - h11 * h20
    c21 = h01 * h20 - h00 * h21
    c22 = h00 * h11 - h01 * h10
    r0, r1, r2 = rhs[:, 0], rhs[:, 1], rhs[:, 2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = 1.0 / (h00 * c00 + h01 * c10 + h02 * c20)
        x = [
            (c00 * r0 + c01 * r1 + c02 * r2) * inv,
            (c10 * r0 + c11 * r1 + c12 * r2) * inv,
            (c20 * r0 + c21 * r1 + c22 * r2) * inv,
        ]
        # Fixed coordinates exactly at their bound (the solve leaves them to rounding).
        x = [np.where(free[:, i, None], x[i], fixed[:, i]) for i in range(3)]
        val = ne.value(x)
    good = _inside(x, upper_u[None, :], upper_v[None, :], a_floor[None, :]) & np.isfinite(val)
    val = np.where(good, val, np.inf)
    pick = np.argmin(val, axis=0)  # the first of equal values, as a sequential scan
    cols = np.arange(n)
    found = np.isfinite(val[pick, cols])
    return [np.where(found, x[i][pick, cols], 0.0) for i in range(3)]


def _profile(
    b: _Batch,
    rows: NDArray[np.intp],
    m: Array,
    sigma: Array,
    bound: float,
    exact: bool = True,
    negative_a: bool = True,
) -> tuple[Array, Array]:
    """Best (a~, u, v) and the objective for each candidate (m, sigma).

    rows (R,) selects slices; m, sigma (R, P). Returns objective (R, P) and x (R, P, 3).
    exact: score every candidate exactly, from the residuals (the quadratic form cancels
    catastrophically near a perfect fit, which would blind the Newton polish). Otherwise
    (grid screening) only the per-row winner is guaranteed exact: candidates whose
    unconstrained lower bound cannot beat the row's best feasible value keep the value
    of their projection onto the box (an upper bound).
    """
    with np.errstate(all="ignore"):
        return _profile_inner(b, rows, m, sigma, bound, exact, negative_a)


def _profile_inner(
    b: _Batch,
    rows: NDArray[np.intp],
    m: Array,
    sigma: Array,
    bound: float,
    exact: bool,
    negative_a: bool,
) -> tuple[Array, Array]:
    k = b.k[rows]
    om = b.weight[rows]
    tgt = b.target[rows]
    y = (k[:, None, :] - m[:, :, None]) / sigma[:, :, None]
    z = np.sqrt(y * y + 1.0)
    p = 0.5 * (z + y)
    q = z - p
    op = om[:, None, :] * p
    oq = om[:, None, :] * q
    ones_t = b.ones_t[rows]  # (R, n, 2)
    sp_spt = op @ ones_t
    sq_sqt = oq @ ones_t
    shape = m.shape
    n_pts = shape[1]
    s1 = np.repeat(b.s1[rows], n_pts)
    st = np.repeat(b.st[rows], n_pts)
    stt = np.repeat(b.stt[rows], n_pts)
    sp, spt = sp_spt[..., 0].ravel(), sp_spt[..., 1].ravel()
    sq, sqt = sq_sqt[..., 0].ravel(), sq_sqt[..., 1].ravel()
    spp = np.einsum("rpn,rpn->rp", op, p).ravel()
    sqq = np.einsum("rpn,rpn->rp", oq, q).ravel()
    spq = 0.25 * s1
    ne = _Normal([[s1, sp, sq], [sp, spp, spq], [sq, spq, sqq]], [st, spt, sqt], stt)
    # Wing slopes: call b (1 + rho) = u / sigma, put b (1 - rho) = v / sigma.
    upper_u = (np.minimum(bound, b.call_cap[rows])[:, None] * sigma).ravel()
    upper_v = (np.minimum(bound, b.put_cap[rows])[:, None] * sigma).ravel()
    a_floor = np.repeat(b.a_floor[rows], n_pts) if negative_a else np.zeros(upper_u.shape)
    x = ne.solve_all()
    finite = np.isfinite(x[0]) & np.isfinite(x[1]) & np.isfinite(x[2])
    ok = _inside(x, upper_u, upper_v, a_floor) & finite
    bad = ~ok
    if np.any(bad):
        todo = bad
        if not exact:
            # Screening: project the outside candidates onto the box (a feasible upper
            # bound) and solve exactly only those whose lower bound could still win.
            lower = np.where(finite, ne.value(x), -np.inf)
            proj = [
                np.maximum(x[0], 0.0),
                np.clip(x[1], 0.0, upper_u),
                np.clip(x[2], 0.0, upper_v),
            ]
            proj = [np.where(finite, v, 0.0) for v in proj]
            x = [np.where(bad, pv, xv) for pv, xv in zip(proj, x, strict=True)]
            row_best = np.min(ne.value(x).reshape(shape), axis=1)
            todo = bad & (lower < np.repeat(row_best, shape[1]))
        if np.any(todo):
            sub = _box_solve(ne.take(todo), upper_u[todo], upper_v[todo], a_floor[todo], negative_a)
            for i in range(3):
                x[i] = x[i].copy()
                x[i][todo] = sub[i]
    xa = np.stack(x, axis=-1).reshape(*shape, 3)
    if exact:
        resid = xa[..., 0:1] + xa[..., 1:2] * p + xa[..., 2:3] * q - tgt[:, None, :]
        obj = np.einsum("rpn,rpn->rp", om[:, None, :] * resid, resid)
    else:
        obj = ne.value(x).reshape(shape)
    obj = np.where(np.isfinite(obj), obj, np.inf)
    return np.asarray(obj, dtype=np.float64), np.asarray(xa, dtype=np.float64)


def _to_raw(x: Array, m: float, sigma: float) -> RawSvi:
    a, u, v = (float(e) for e in x)
    total = u + v
    if total <= 0.0:
        return RawSvi(a=a, b=0.0, rho=0.0, m=m, sigma=sigma)
    rho = max(-1.0 + 1e-12, min(1.0 - 1e-12, (u - v) / total))
    return RawSvi(a=a, b=0.5 * total / sigma, rho=rho, m=m, sigma=sigma)


@dataclass
class _SearchState:
    centre: Array  # (S, 2) in (m, ln sigma)
    step: Array  # (S, 2)
    best_pt: Array  # (S, 2)
    best_obj: Array  # (S,)
    best_x: Array  # (S, 3)
    iterations: NDArray[np.int64]


def _clip_points(b: _Batch, rows: NDArray[np.intp], pts: Array, cfg: FitConfig) -> Array:
    """Keep (m, ln sigma) in bounds; sigma far below the quote spacing is unidentifiable
    (and makes a needle-sharp vertex), so its floor scales with the quoted range."""
    out = pts.copy()
    out[..., 0] = np.clip(out[..., 0], b.m_lo[rows][:, None], b.m_hi[rows][:, None])
    low = np.log(np.maximum(cfg.sigma_min, cfg.sigma_min_frac * b.span[rows]))[:, None]
    out[..., 1] = np.clip(out[..., 1], low, math.log(cfg.sigma_max))
    return out


def _evaluate(
    b: _Batch, rows: NDArray[np.intp], pts: Array, cfg: FitConfig, exact: bool = True
) -> tuple[Array, Array]:
    return _profile(
        b, rows, pts[..., 0], np.exp(pts[..., 1]), cfg.wing_bound, exact, cfg.negative_a
    )


def _grid_points(b: _Batch, rows: NDArray[np.intp], n_m: int, n_s: int, cfg: FitConfig) -> Array:
    """(m, ln sigma) grid per row: m at evenly spaced quotes (V-shaped smiles have their
    vertex near a quote) plus two points beyond each end of the quoted range; sigma
    log-spaced over [sigma_lo_frac, sigma_hi_frac] x the range. (R, n_m * n_s, 2)."""
    span = b.span[rows]
    inner = max(n_m - 4, 2)
    ms = np.empty((rows.size, inner + 4))
    for i, r in enumerate(rows):
        k_used = np.sort(b.k[r][b.weight[r] > 0.0])
        idx = np.round(np.linspace(0, k_used.size - 1, inner)).astype(np.intp)
        lo, hi = k_used[0], k_used[-1]
        ms[i] = np.concatenate(
            [
                [lo - 0.5 * span[i], lo - 0.15 * span[i]],
                k_used[idx],
                [hi + 0.15 * span[i], hi + 0.5 * span[i]],
            ]
        )
    frac_s = np.linspace(0.0, 1.0, n_s)
    lo_s = np.log(cfg.sigma_lo_frac * span)
    hi_s = np.log(cfg.sigma_hi_frac * span)
    ls = lo_s[:, None] + frac_s[None, :] * (hi_s - lo_s)[:, None]
    n_mm = ms.shape[1]
    return np.stack([np.repeat(ms, n_s, axis=1), np.tile(ls, (1, n_mm))], axis=-1)


def _grid_search(
    b: _Batch, rows: NDArray[np.intp], cfg: FitConfig, n_m: int, n_s: int, n_best: int
) -> tuple[list[tuple[int, Array]], Array]:
    """Up to n_best starting points per row: the best local minima of the grid (screened
    objective). Returns [(row, point (2,))] and the grid steps per row (R, 2)."""
    span = b.span[rows]
    pts = _clip_points(b, rows, _grid_points(b, rows, n_m, n_s, cfg), cfg)
    obj, _ = _evaluate(b, rows, pts, cfg, exact=False)
    n_m = pts.shape[1] // n_s
    grid = obj.reshape(-1, n_m, n_s)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)), constant_values=np.inf)
    neighbours = np.stack(
        [
            padded[:, 1 + di : 1 + di + n_m, 1 + dj : 1 + dj + n_s]
            for di in (-1, 0, 1)
            for dj in (-1, 0, 1)
            if (di, dj) != (0, 0)
        ]
    )
    local_min = np.all(grid <= neighbours, axis=0).reshape(obj.shape) & np.isfinite(obj)
    starts: list[tuple[int, Array]] = []
    for i, row in enumerate(rows):
        cand = np.flatnonzero(local_min[i])
        if cand.size == 0:
            cand = np.array([int(np.argmin(obj[i]))])
        best = cand[np.argsort(obj[i, cand])[:n_best]]
        starts.extend((int(row), pts[i, j]) for j in best)
    steps = np.stack(
        [
            1.5 * span / max(n_m - 1, 1),
            np.full(span.shape, math.log(cfg.sigma_hi_frac / cfg.sigma_lo_frac) / max(n_s - 1, 1)),
        ],
        axis=-1,
    )
    return starts, steps


def _polish(b: _Batch, state: _SearchState, cfg: FitConfig, max_iter: int) -> None:
    """Newton iterations on a 3x3 finite-difference stencil, all slices at once.

    One trust radius per slice in normalised coordinates (m in units of the current
    sigma, ln sigma in units of 1): the stencil spans the radius, a Newton step
    longer than three radii is cut back and the radius doubles, a shorter one is taken
    and the radius follows it down; a step that made things worse is undone and the radius
    quartered. Ill-conditioned valleys (m and sigma trading off on long-dated smiles) are
    followed at a growing pace instead of crawling.
    """
    s_count = state.centre.shape[0]

    def units_at(centre: Array, span: Array) -> Array:
        # m is measured in units of the current sigma (y = (k - m)/sigma is what the fit
        # sees), bounded to a sensible fraction of the quoted range.
        sig = np.clip(np.exp(centre[:, 1]), 0.01 * span, 0.5 * span)
        return np.stack([sig, np.ones(centre.shape[0])], axis=-1)

    radius = np.max(state.step / units_at(state.centre, b.span), axis=1)
    floor = cfg.step_floor
    active = np.ones(s_count, dtype=bool)
    stalls = np.zeros(s_count, dtype=np.int64)
    idle = np.zeros(s_count, dtype=np.int64)
    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        centre = state.centre[rows]
        unit = units_at(centre, b.span[rows])
        r = radius[rows]
        step = r[:, None] * unit
        pts = _clip_points(b, rows, centre[:, None, :] + step[:, None, :] * _STENCIL, cfg)
        obj, x = _evaluate(b, rows, pts, cfg)
        state.iterations[rows] += 1
        idx = np.argmin(obj, axis=1)
        sel = np.arange(rows.size)
        prev_best = state.best_obj[rows].copy()
        improved = obj[sel, idx] < prev_best
        # Gains at rounding level do not count: they only come from noise in F.
        real_gain = obj[sel, idx] < prev_best * (1.0 - 1e-13) - 1e-300
        stalls[rows] = np.where(real_gain, 0, stalls[rows] + 1)
        # Gains below gain_rtol of the objective are far below the quotes' noise.
        meaningful = obj[sel, idx] < prev_best * (1.0 - cfg.gain_rtol) - 1e-300
        idle[rows] = np.where(meaningful, 0, idle[rows] + 1)
        upd = rows[improved]
        state.best_obj[upd] = obj[sel, idx][improved]
        state.best_pt[upd] = pts[sel, idx][improved]
        state.best_x[upd] = x[sel, idx][improved]

        f = obj.reshape(-1, 3, 3)  # [i_m, i_l]
        hm, hl = step[:, 0], step[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            gm = (f[:, 2, 1] - f[:, 0, 1]) / (2.0 * hm)
            gl = (f[:, 1, 2] - f[:, 1, 0]) / (2.0 * hl)
            hmm = (f[:, 2, 1] - 2.0 * f[:, 1, 1] + f[:, 0, 1]) / (hm * hm)
            hll = (f[:, 1, 2] - 2.0 * f[:, 1, 1] + f[:, 1, 0]) / (hl * hl)
            hml = (f[:, 2, 2] - f[:, 2, 0] - f[:, 0, 2] + f[:, 0, 0]) / (4.0 * hm * hl)
            det = hmm * hll - hml * hml
            pd = (hmm > 0.0) & (det > 0.0) & np.isfinite(det) & np.isfinite(gm + gl)
            sm = np.where(pd, -(hll * gm - hml * gl) / det, 0.0)
            sl = np.where(pd, -(hmm * gl - hml * gm) / det, 0.0)
        s_norm = np.maximum(np.abs(sm) / unit[:, 0], np.abs(sl) / unit[:, 1])
        cut = pd & (s_norm > 3.0 * r)
        shrink = np.where(cut, 3.0 * r / np.maximum(s_norm, 1e-300), 1.0)
        sm, sl = sm * shrink, sl * shrink
        predicted_gain = -0.5 * (sm * gm + sl * gl)

        centre_bad = obj[:, _CENTRE] > prev_best * (1.0 + 1e-12) + 1e-300
        use_newton = pd & ~centre_bad
        moved_to_best = ~pd & ~centre_bad & (idx != _CENTRE)
        stuck = ~pd & ~centre_bad & (idx == _CENTRE)
        new_centre = np.where(
            use_newton[:, None], centre + np.stack([sm, sl], axis=-1), state.best_pt[rows]
        )
        new_centre = _clip_points(b, rows, new_centre[:, None, :], cfg)[:, 0, :]
        new_r = np.where(cut, 2.0 * r, np.clip(0.5 * s_norm, floor, r))
        new_r = np.where(moved_to_best, 1.5 * r, new_r)
        new_r = np.where(stuck, 0.5 * r, new_r)
        new_r = np.where(centre_bad, 0.25 * r, new_r)
        new_r = np.clip(new_r, floor, 1.0)
        state.centre[rows] = new_centre
        radius[rows] = new_r

        done = use_newton & ~cut & (s_norm < max(cfg.xtol, floor))
        done |= use_newton & (predicted_gain <= 1e-8 * state.best_obj[rows])
        done |= stuck & (r <= floor * 1.0000001)
        # No real gain for a while: converged once the stencil is fine, or hopeless.
        done |= ((stalls[rows] >= 3) & (new_r <= 1e-4)) | (stalls[rows] >= 8)
        done |= b.warm[rows] & (idle[rows] >= cfg.idle_iter)
        active[rows[done]] = False
    state.step = radius[:, None] * units_at(state.centre, b.span)
    # The last Newton point may not have been evaluated: do it once.
    obj, x = _evaluate(b, np.arange(s_count), state.centre[:, None, :], cfg)
    better = obj[:, 0] < state.best_obj
    state.best_obj = np.where(better, obj[:, 0], state.best_obj)
    state.best_pt = np.where(better[:, None], state.centre, state.best_pt)
    state.best_x = np.where(better[:, None], x[:, 0], state.best_x)


def _polish_starts(
    b: _Batch, starts: list[tuple[int, Array, Array]], cfg: FitConfig, state: _SearchState
) -> None:
    """Polish every (slice row, point, step) start in one batch; each slice keeps the
    best of its current state and its polished starts."""
    if not starts:
        return
    start_rows = np.array([r for r, _, _ in starts], dtype=np.intp)
    points = np.array([pt for _, pt, _ in starts])
    n_starts = start_rows.size
    # The first polish iteration scores the starting points (stencil centres).
    multi = _SearchState(
        centre=points.copy(),
        step=np.array([st for _, _, st in starts]),
        best_pt=points.copy(),
        best_obj=np.full(n_starts, np.inf),
        best_x=np.zeros((n_starts, 3)),
        iterations=np.zeros(n_starts, dtype=np.int64),
    )
    _polish(b.take(start_rows), multi, cfg, cfg.max_iter)
    np.add.at(state.iterations, start_rows, multi.iterations)
    for j, r in enumerate(start_rows):
        if multi.best_obj[j] < state.best_obj[r]:
            state.best_obj[r] = multi.best_obj[j]
            state.best_pt[r] = multi.best_pt[j]
            state.best_x[r] = multi.best_x[j]


def _outside_band(b: _Batch, fitted: Array, tol_vol: float) -> BoolArray:
    """Quotes (live ones) whose fitted vol misses their band by more than tol_vol."""
    # The band edges widened in vol, converted back to total variance.
    lo = (np.sqrt(b.lo / b.t_col) - tol_vol).clip(min=0.0) ** 2 * b.t_col
    hi = (np.sqrt(b.hi / b.t_col) + tol_vol) ** 2 * b.t_col
    out: BoolArray = (b.weight > 0.0) & ((fitted < lo) | (fitted > hi))
    return out


def _band_rounds(b: _Batch, state: _SearchState, cfg: FitConfig) -> None:
    """Majorisation rounds for the bid/ask band, only on slices whose fit leaves some
    quote outside its band (a mid fit inside every band is already optimal: the band
    term is zero and the mid term is minimised)."""
    eps = cfg.band_epsilon
    live = b.weight > 0.0
    fitted = _fitted_w(b, state)
    rows = np.flatnonzero(np.any(_outside_band(b, fitted, cfg.band_tolerance_vol), axis=1))
    for _ in range(cfg.band_rounds):
        if rows.size == 0:
            return
        new = (np.clip(fitted[rows], b.lo[rows], b.hi[rows]) + eps * b.mid[rows]) / (1.0 + eps)
        change = np.max(np.abs(new - b.target[rows]) * live[rows], axis=1)
        moving = change > 1e-7 * np.max(b.mid[rows], axis=1)
        rows, new = rows[moving], new[moving]
        if rows.size == 0:
            return
        target = b.target.copy()
        target[rows] = new
        b.set_target(target)
        sub = b.take(rows)
        all_sub = np.arange(rows.size)
        obj, x = _evaluate(sub, all_sub, state.best_pt[rows][:, None, :], cfg)
        sub_state = _SearchState(
            centre=state.best_pt[rows].copy(),
            step=np.stack([0.01 * sub.span, np.full(rows.size, 0.03)], axis=-1),
            best_pt=state.best_pt[rows].copy(),
            best_obj=obj[:, 0],
            best_x=x[:, 0],
            iterations=state.iterations[rows].copy(),
        )
        _polish(sub, sub_state, cfg, cfg.band_iter)
        state.best_pt[rows] = sub_state.best_pt
        state.best_obj[rows] = sub_state.best_obj
        state.best_x[rows] = sub_state.best_x
        state.iterations[rows] = sub_state.iterations
        fitted = _fitted_w(b, state)


def _fitted_w(b: _Batch, state: _SearchState) -> Array:
    m = state.best_pt[:, 0:1]
    sigma = np.exp(state.best_pt[:, 1:2])
    y = (b.k - m) / sigma
    z = np.sqrt(y * y + 1.0)
    x = state.best_x
    return np.asarray(
        x[:, 0:1] + 0.5 * x[:, 1:2] * (z + y) + 0.5 * x[:, 2:3] * (z - y), dtype=np.float64
    )


def fit_svi_slices(
    datas: Sequence[SliceData],
    warm: Sequence[RawSvi | None] | None = None,
    config: FitConfig | None = None,
    wing_caps: Sequence[WingCaps | None] | None = None,
) -> list[SviFitResult]:
    """Fit raw SVI to each slice (vectorised across slices).

    warm[i], when given, starts slice i's search at its (m, sigma); when that fit leaves
    quotes outside their band, a coarse sentinel grid checks for a better basin.
    wing_caps[i], when given, bounds slice i's wing slopes inside the calibration (the
    inner problem's box), as calendar order against a later slice requires; such a fit
    (a finite cap) starts from a fit of the same quotes (warm) and runs no sentinel grid.
    Raises ValueError on unusable input (fewer than 3 quotes, T <= 0, non-positive vols).
    """
    cfg = config or FitConfig()
    if not datas:
        return []
    started = time.perf_counter()
    b = _batch(datas)
    s_count = len(datas)
    if wing_caps is not None:
        if len(wing_caps) != s_count:
            raise ValueError("wing_caps must have one entry per slice")
        b.put_cap = np.array([np.inf if c is None else c.put for c in wing_caps])
        b.call_cap = np.array([np.inf if c is None else c.call for c in wing_caps])
    warm_list: list[RawSvi | None] = list(warm) if warm is not None else [None] * s_count
    if len(warm_list) != s_count:
        raise ValueError("warm must have one entry per slice")
    is_warm = np.array(
        [
            p is not None and math.isfinite(p.m) and p.sigma > 0.0 and math.isfinite(p.sigma)
            for p in warm_list
        ]
    )
    b.warm = is_warm
    all_rows = np.arange(s_count)
    cold_rows = all_rows[~is_warm]
    warm_rows = all_rows[is_warm]
    state = _SearchState(
        centre=np.zeros((s_count, 2)),
        step=np.zeros((s_count, 2)),
        best_pt=np.zeros((s_count, 2)),
        best_obj=np.full(s_count, np.inf),
        best_x=np.zeros((s_count, 3)),
        iterations=np.zeros(s_count, dtype=np.int64),
    )
    # Starting points: (slice row, (m, ln sigma), initial step).
    starts: list[tuple[int, Array, Array]] = []
    if cold_rows.size:
        found, steps = _grid_search(b, cold_rows, cfg, cfg.grid_m, cfg.grid_sigma, cfg.cold_starts)
        step_of = {int(r): steps[i] for i, r in enumerate(cold_rows)}
        starts.extend((r, pt, step_of[r]) for r, pt in found)
    if warm_rows.size:
        warm_pts = np.array(
            [[p.m, math.log(p.sigma)] for p in (warm_list[i] for i in warm_rows) if p is not None]
        )
        warm_pts = _clip_points(b, warm_rows, warm_pts[:, None, :], cfg)[:, 0, :]
        for i, r in enumerate(warm_rows):
            # Small first stencil: 5% of sigma in m, 0.05 in ln sigma.
            sig = math.exp(warm_pts[i, 1])
            starts.append((int(r), warm_pts[i], np.array([0.05 * sig, 0.05])))
    _polish_starts(b, starts, cfg, state)
    free_rows = warm_rows[~(np.isfinite(b.put_cap) | np.isfinite(b.call_cap))[warm_rows]]
    if free_rows.size:
        # A warm fit inside every quote's band cannot be beaten on the band term; one that
        # is not may sit in a stale basin: a coarse sentinel grid checks, and a better
        # sentinel point is polished too (the market moved to another basin).
        outside = np.any(_outside_band(b, _fitted_w(b, state), cfg.band_tolerance_vol), axis=1)
        check = free_rows[outside[free_rows]]
        if check.size:
            found, steps = _grid_search(b, check, cfg, cfg.sentinel_m, cfg.sentinel_sigma, 1)
            sentinel = np.array([pt for _, pt in found])
            s_obj, _ = _evaluate(b, check, sentinel[:, None, :], cfg)
            better = s_obj[:, 0] < state.best_obj[check]
            _polish_starts(
                b,
                [(int(r), sentinel[i], steps[i] / 2.0) for i, r in enumerate(check) if better[i]],
                cfg,
                state,
            )
    state.centre = state.best_pt.copy()

    if cfg.band_rounds > 0:
        _band_rounds(b, state, cfg)

    # Fitted vols for every slice at once (padding columns are ignored).
    with np.errstate(invalid="ignore"):
        fitted_all = np.sqrt(_fitted_w(b, state) / np.array([d.t for d in datas])[:, None])
    elapsed_ms = (time.perf_counter() - started) * 1e3 / s_count
    results: list[SviFitResult] = []
    for i, d in enumerate(datas):
        params = _to_raw(state.best_x[i], float(state.best_pt[i, 0]), math.exp(state.best_pt[i, 1]))
        fitted = fitted_all[i, : d.n]
        resid_bp = (fitted - d.mid_vol) * 1e4
        r_used = resid_bp[d.vol_weight > 0.0]
        if r_used.size == 0:
            r_used = resid_bp
        results.append(
            SviFitResult(
                params=params,
                t=d.t,
                fitted_vol=fitted,
                residuals_bp=resid_bp,
                rmse_bp=math.sqrt(float(np.dot(r_used, r_used)) / r_used.size),
                max_abs_residual_bp=float(np.max(np.abs(r_used))),
                objective=float(state.best_obj[i]),
                fit_time_ms=elapsed_ms,
                warm_start=bool(is_warm[i]),
                iterations=int(state.iterations[i]),
            )
        )
    return results


def fit_svi_slice(
    data: SliceData, warm: RawSvi | None = None, config: FitConfig | None = None
) -> SviFitResult:
    """Fit one slice; see fit_svi_slices."""
    return fit_svi_slices([data], [warm], config)[0]
