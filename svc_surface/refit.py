"""Constrained refits of raw SVI slices to their quotes (the repair's workhorse).

A chain of consecutive slices (one or two) is refitted to the band-aware objective of
the quasi-explicit fit (distance outside each quote's bid/ask band plus epsilon times the
distance to the mid) subject to Durrleman's g >= margin, total variance non-decreasing
in T between fixed neighbours, Lee's bound and w > 0. Solver: damped Gauss-Newton steps
with linearised constraints (a least-distance problem solved by NNLS), falling back to
SLSQP; constraints on a screened sparse grid, refined by cutting planes from the dense
checks of svc_surface.arbitrage.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize, nnls

from svc_surface.arbitrage import (
    CALENDAR_MARGIN,
    G_MARGIN,
    K_CHECK_RANGE,
    butterfly_check,
    butterfly_reports,
    calendar_gap_batch,
    valid_params,
)
from volmath.svi import LEE_WING_BOUND, RawSvi, durrleman_g, total_variance

Array = NDArray[np.float64]
IndexArray = NDArray[np.intp]


@dataclass(frozen=True)
class RefitData:
    """A slice's quotes for a constrained refit: log-moneyness, target (mid) total
    variance, weights, and optionally each quote's bid/ask band in total variance.

    With a band the refit objective is the one of the quasi-explicit fit: the squared
    distance outside the band plus band_epsilon times the squared distance to the mid, so
    a refit inside every band costs (almost) nothing; without one it is plain weighted
    least squares on the mid."""

    k: Array
    target_w: Array
    weight: Array
    lo_w: Array | None = None
    hi_w: Array | None = None
    band_epsilon: float = 0.1

    @property
    def has_band(self) -> bool:
        return self.lo_w is not None and self.hi_w is not None

    @functools.cached_property
    def key(self) -> bytes:
        """Identity of the content (equal keys: the same refit problem)."""
        h = hashlib.blake2b(digest_size=16)
        for arr in (self.k, self.target_w, self.weight, self.lo_w, self.hi_w):
            h.update(b"-" if arr is None else np.ascontiguousarray(arr).tobytes())
        h.update(np.float64(self.band_epsilon).tobytes())
        return h.digest()

    def quoted_range(self) -> tuple[float, float]:
        """The k range the quotes pin down."""
        k = self.k[self.weight > 0.0]
        if k.size == 0:
            return (math.inf, -math.inf)
        return (float(k.min()), float(k.max()))

    def _bounds(self) -> tuple[Array, Array]:
        if self.lo_w is None or self.hi_w is None:
            return self.target_w, self.target_w
        return self.lo_w, self.hi_w

    def objective(self, w: Array) -> Array:
        """Objective per row of fitted total variance w (R, n), in units of every quote
        missing by 1% of its total variance (band-aware when there is a band)."""
        weight = self.weight / max(float(np.sum(self.weight)), 1e-300)
        unit = max(float(np.sum(weight * (0.01 * self.target_w) ** 2)), 1e-300)
        lo, hi = self._bounds()
        out = w - np.clip(w, lo, hi)
        mid = w - self.target_w
        eps = self.band_epsilon if self.has_band else 0.0
        return np.asarray(
            (np.sum(weight * out * out, axis=-1) + eps * np.sum(weight * mid * mid, axis=-1))
            / unit,
            dtype=np.float64,
        )

    def band_miss(self, w: Array) -> Array:
        """The band term of objective() alone, per row of w."""
        weight = self.weight / max(float(np.sum(self.weight)), 1e-300)
        unit = max(float(np.sum(weight * (0.01 * self.target_w) ** 2)), 1e-300)
        lo, hi = self._bounds()
        out = w - np.clip(w, lo, hi)
        return np.asarray(np.sum(weight * out * out, axis=-1) / unit, dtype=np.float64)

    def atm_band(self, t: float) -> tuple[float, float] | None:
        """(bid, ask) vol at k = 0, interpolated linearly in k between the quotes that
        bracket the money (the nearest quote's band when none does); None without bands."""
        if self.lo_w is None or self.hi_w is None or not t > 0.0:
            return None
        live = (self.weight > 0.0) & np.isfinite(self.lo_w) & np.isfinite(self.hi_w)
        if not np.any(live):
            return None
        k = self.k[live]
        lo = np.sqrt(np.maximum(self.lo_w[live], 0.0) / t)
        hi = np.sqrt(np.maximum(self.hi_w[live], 0.0) / t)
        left, right = np.flatnonzero(k <= 0.0), np.flatnonzero(k >= 0.0)
        if left.size and right.size:
            i = left[np.argmax(k[left])]
            j = right[np.argmin(k[right])]
            span = float(k[j] - k[i])
            x = 0.0 if span <= 0.0 else float(-k[i]) / span
            return (
                float((1.0 - x) * lo[i] + x * lo[j]),
                float((1.0 - x) * hi[i] + x * hi[j]),
            )
        n = int(np.argmin(np.abs(k)))
        return (float(lo[n]), float(hi[n]))


def _candidate_grid(params: Sequence[RawSvi], k_range: tuple[float, float]) -> Array:
    """Where constraints may be placed: 41 uniform points plus 13 around each slice's
    vertex (+-3 sigma)."""
    lo, hi = k_range
    parts = [np.linspace(lo, hi, 41)]
    for p in params:
        parts.append(np.clip(p.m + p.sigma * np.linspace(-3.0, 3.0, 13), lo, hi))
    return np.unique(np.concatenate(parts))


# Families of chain constraints: ("g", j) is slice j's butterfly function; ("cal", i, j)
# is w_j - w_i for consecutive members, i = -1 standing for the fixed lower neighbour
# and j = n for the fixed upper one.
_Family = tuple[str, int, int]


def _chain_failures(
    chain: Sequence[RawSvi],
    lower: RawSvi | None,
    upper: RawSvi | None,
    k_range: tuple[float, float],
    wing_bound: float,
) -> tuple[bool, dict[_Family, float], list[tuple[int, float]]]:
    """Dense checks of a chain (ordered in T) between fixed neighbours. Returns (all ok,
    the k where each failing family is worst, calendar gaps as (pair, gap) with pair i
    meaning (member i, member i + 1), -1 the lower neighbour's pair)."""
    fails: dict[_Family, float] = {}
    if not all(valid_params(p) for p in chain):
        return False, fails, []
    ok = True
    for j, rep in enumerate(butterfly_reports(chain, k_range, wing_bound)):
        if not rep.arbitrage_free:
            ok = False
            if math.isfinite(rep.k_at_min_g):
                fails[("g", j, 0)] = rep.k_at_min_g
    members: list[RawSvi] = ([lower] if lower is not None else []) + list(chain)
    members += [upper] if upper is not None else []
    first = -1 if lower is not None else 0
    gaps: list[tuple[int, float]] = []
    if len(members) > 1:
        gap, gap_k = calendar_gap_batch(members[:-1], members[1:], k_range)
        for i, (gv, kv) in enumerate(zip(gap.tolist(), gap_k.tolist(), strict=True)):
            pair = first + i
            gaps.append((pair, gv))
            if not gv >= 0.0:
                ok = False
                fails[("cal", pair, pair + 1)] = kv
    return ok, fails, gaps


class _ChainProblem:
    """SLSQP pieces for chain_refit in scaled variables: a in units of the slice's ATM
    total variance W; b, m and sigma in units of sqrt(W) (everything of order one)."""

    # Constraint screening: per family, a coarse uniform subset plus the points where
    # the constraint is tightest (SLSQP's cost grows quickly with the constraint count).
    _COARSE_STEP = 4
    _TIGHTEST = 10

    def __init__(
        self,
        starts: Sequence[RawSvi],
        datas: Sequence[RefitData],
        lower: RawSvi | None,
        upper: RawSvi | None,
        k_range: tuple[float, float],
        wing_bound: float,
    ) -> None:
        self.n = n = len(starts)
        self.datas = datas
        self.lower, self.upper = lower, upper
        self.wing_bound = wing_bound
        self.k_range = k_range
        fixed = [p for p in (lower, upper) if p is not None]
        self.grid = _candidate_grid([*starts, *fixed], k_range)
        self.atm_w = np.array([max(float(total_variance(p, 0.0)), 1e-8) for p in starts])
        root = np.sqrt(self.atm_w)
        ones = np.ones(n)
        self.scale = np.stack([self.atm_w, root, ones, root, root], axis=1).ravel()
        lo, hi = k_range
        self.bounds: list[tuple[float | None, float | None]] = []
        for r in root.tolist():
            self.bounds += [
                (None, None),
                (0.0, wing_bound / r),
                (-0.999, 0.999),
                (lo / r, hi / r),
                (1e-4 / r, 10.0 / r),
            ]
        self.weights = [d.weight / max(float(np.sum(d.weight)), 1e-300) for d in datas]
        self.units = [
            max(float(np.sum(wt * (0.01 * d.target_w) ** 2)), 1e-300)
            for wt, d in zip(self.weights, datas, strict=True)
        ]
        self.families: list[_Family] = [("g", j, 0) for j in range(n)]
        first = -1 if lower is not None else 0
        last = n if upper is not None else n - 1
        self.families += [("cal", i, i + 1) for i in range(first, last)]
        self.cuts: dict[_Family, list[float]] = {f: [] for f in self.families}
        # Set by screen(): per slice the union of its families' points, and per family
        # the indices into the members' unions (and fixed neighbours' w there).
        self.points: list[Array] = []
        self.layout: list[tuple[_Family, IndexArray, IndexArray, Array | None]] = []

    def theta(self, xs: Array) -> Array:
        return np.asarray((xs * self.scale).reshape(self.n, 5), dtype=np.float64)

    def feasible(self, xs: Array) -> bool:
        """Every screened constraint holds at xs (to rounding)."""
        c, _ = self.constraints(xs, with_jac=False)
        return bool(np.all(c >= -1e-9))

    def residuals(self, xs: Array) -> tuple[Array, Array]:
        """Least-squares residuals whose squares sum to the objective, and their
        Jacobian in xs (Gauss-Newton: the band term's kink is taken as it comes)."""
        theta = self.theta(xs)
        n = self.n
        parts: list[Array] = []
        jacs: list[Array] = []
        for j, d in enumerate(self.datas):
            x = d.k - theta[j, 3]
            r = np.sqrt(x * x + theta[j, 4] ** 2)
            a, b, rho = theta[j, 0], theta[j, 1], theta[j, 2]
            w = a + b * (rho * x + r)
            dw = np.stack(
                [np.ones_like(x), rho * x + r, b * x, -b * (rho + x / r), b * theta[j, 4] / r],
                axis=-1,
            )
            blo, bhi = d._bounds()
            root_w = np.sqrt(self.weights[j] / self.units[j])
            outside = (w < blo) | (w > bhi)
            eps = d.band_epsilon if d.has_band else 0.0
            jac = np.zeros((2 * w.size, 5 * n))
            parts.append(root_w * (w - np.clip(w, blo, bhi)))
            jac[: w.size, 5 * j : 5 * j + 5] = (root_w * outside)[:, None] * dw
            parts.append(math.sqrt(eps) * root_w * (w - d.target_w))
            jac[w.size :, 5 * j : 5 * j + 5] = (math.sqrt(eps) * root_w)[:, None] * dw
            jacs.append(jac)
        return np.concatenate(parts), np.vstack(jacs) * self.scale

    def objective(self, xs: Array) -> tuple[float, Array]:
        theta = self.theta(xs)
        total = 0.0
        grad = np.zeros(5 * self.n)
        for j, d in enumerate(self.datas):
            x = d.k - theta[j, 3]
            r = np.sqrt(x * x + theta[j, 4] ** 2)
            a, b, rho = theta[j, 0], theta[j, 1], theta[j, 2]
            w = a + b * (rho * x + r)
            dw = np.stack(
                [np.ones_like(x), rho * x + r, b * x, -b * (rho + x / r), b * theta[j, 4] / r],
                axis=-1,
            )
            blo, bhi = d._bounds()
            out = w - np.clip(w, blo, bhi)
            mid = w - d.target_w
            eps = d.band_epsilon if d.has_band else 0.0
            wt = self.weights[j]
            total += float(np.sum(wt * (out * out + eps * mid * mid))) / self.units[j]
            grad[5 * j : 5 * j + 5] = (2.0 * wt * (out + eps * mid)) @ dw / self.units[j]
        return total, grad * self.scale

    def screen(self, xs: Array) -> None:
        """Pick each family's constraint points for the next solve at xs: a coarse
        uniform subset, the tightest points on the candidate grid and the cuts."""
        theta = self.theta(xs)
        n = self.n
        grid = self.grid
        w_all = [total_variance(RawSvi(*theta[j]), grid) for j in range(n)]
        coarse = np.linspace(self.k_range[0], self.k_range[1], 41)[:: self._COARSE_STEP]
        chosen: dict[_Family, Array] = {}
        for fam in self.families:
            if fam[0] == "g":
                with np.errstate(all="ignore"):
                    values = np.nan_to_num(durrleman_g(RawSvi(*theta[fam[1]]), grid), nan=-1.0)
            else:
                values = self._fixed_or(fam[2], grid, w_all) - self._fixed_or(fam[1], grid, w_all)
            tight = grid[np.argsort(values)[: self._TIGHTEST]]
            cuts = np.asarray(self.cuts[fam], dtype=np.float64)
            chosen[fam] = np.unique(np.concatenate([coarse, tight, cuts]))
        # One evaluation per slice: the union of the points of its families.
        per_slice: list[list[Array]] = [[] for _ in range(n)]
        for fam, k in chosen.items():
            for j in self._members(fam):
                per_slice[j].append(k)
        self.points = [
            np.unique(np.concatenate(parts)) if parts else np.zeros(0) for parts in per_slice
        ]
        self.layout = []
        for fam, k in chosen.items():
            idx: list[IndexArray] = [
                np.asarray(np.searchsorted(self.points[j], k), dtype=np.intp)
                if 0 <= j < n
                else np.zeros(0, np.intp)
                for j in (fam[1], fam[2])
            ]
            fixed_w: Array | None = None
            if fam[0] == "cal" and (fam[1] < 0 or fam[2] >= n):
                neighbour = self.lower if fam[1] < 0 else self.upper
                assert neighbour is not None
                fixed_w = total_variance(neighbour, k)
            self.layout.append((fam, idx[0], idx[1], fixed_w))

    def _members(self, fam: _Family) -> list[int]:
        if fam[0] == "g":
            return [fam[1]]
        return [j for j in (fam[1], fam[2]) if 0 <= j < self.n]

    def _fixed_or(self, j: int, k: Array, w_all: list[Array]) -> Array:
        if j < 0:
            assert self.lower is not None
            return total_variance(self.lower, k)
        if j >= self.n:
            assert self.upper is not None
            return total_variance(self.upper, k)
        return w_all[j]

    def add_cut(self, fam: _Family, k: float) -> None:
        lo, hi = self.k_range
        self.cuts[fam].extend(np.clip(k + 0.02 * np.linspace(-1.0, 1.0, 3), lo, hi).tolist())

    def constraints(self, xs: Array, with_jac: bool) -> tuple[Array, Array | None]:
        """Constraint values (>= 0 feasible) and, if asked, their Jacobian in xs."""
        theta = self.theta(xs)
        n = self.n
        evals = [_w_g_eval(theta[j], self.points[j], with_jac) for j in range(n)]
        values: list[Array] = []
        jacs: list[Array] = []
        for fam, i0, i1, fixed_w in self.layout:
            if fam[0] == "g":
                j = fam[1]
                w, g, _, dg = evals[j]
                w, g = w[i0], g[i0]
                bad = ~np.isfinite(g) | (w <= 0.0)
                values.append(np.where(bad, -1.0, g) - 100.0 * G_MARGIN)
                if with_jac:
                    assert dg is not None
                    jac = np.zeros((i0.size, 5 * n))
                    jac[:, 5 * j : 5 * j + 5] = np.where(bad[:, None], 0.0, dg[i0])
                    jacs.append(jac)
                continue
            lo_j, hi_j = fam[1], fam[2]
            unit = self.atm_w[min(hi_j, n - 1)]
            w_lo = evals[lo_j][0][i0] if lo_j >= 0 else fixed_w
            w_hi = evals[hi_j][0][i1] if hi_j < n else fixed_w
            assert w_lo is not None and w_hi is not None
            values.append((w_hi - w_lo - 1e-7) / unit)
            if with_jac:
                rows = w_lo.size
                jac = np.zeros((rows, 5 * n))
                if lo_j >= 0:
                    dw_lo = evals[lo_j][2]
                    assert dw_lo is not None
                    jac[:, 5 * lo_j : 5 * lo_j + 5] = -dw_lo[i0] / unit
                if hi_j < n:
                    dw_hi = evals[hi_j][2]
                    assert dw_hi is not None
                    jac[:, 5 * hi_j : 5 * hi_j + 5] = dw_hi[i1] / unit
                jacs.append(jac)
        wb = self.wing_bound
        for j in range(n):
            a, b, rho, _, sig = theta[j]
            root = math.sqrt(max(1.0 - rho * rho, 0.0))
            values.append(
                np.array(
                    [
                        wb - b * (1.0 + rho),
                        wb - b * (1.0 - rho),
                        (a + b * sig * root - 1e-9) / self.atm_w[j],
                    ]
                )
            )
            if with_jac:
                block = np.zeros((3, 5 * n))
                block[0, 5 * j : 5 * j + 5] = [0.0, -(1.0 + rho), -b, 0.0, 0.0]
                block[1, 5 * j : 5 * j + 5] = [0.0, -(1.0 - rho), b, 0.0, 0.0]
                block[2, 5 * j : 5 * j + 5] = (
                    np.array([1.0, sig * root, -b * sig * rho / max(root, 1e-12), 0.0, b * root])
                    / self.atm_w[j]
                )
                jacs.append(block)
        return np.concatenate(values), (np.vstack(jacs) * self.scale if with_jac else None)


def _w_g_jacobians(p: Array, k: Array) -> tuple[Array, Array, Array, Array]:
    """w(k), g(k) of one raw row p (5,) on k (G,) and their derivatives with respect to
    (a, b, rho, m, sigma), each (G, 5). g is finite only where w > 0."""
    a, b, rho, m, sig = (float(v) for v in p)
    x = k - m
    r2 = x * x + sig * sig
    r = np.sqrt(r2)
    r3 = r2 * r
    r5 = r3 * r2
    w = a + b * (rho * x + r)
    w1 = b * (rho + x / r)
    w2 = b * sig * sig / r3
    ones, zeros = np.ones_like(k), np.zeros_like(k)
    dw = np.stack([ones, rho * x + r, b * x, -b * (rho + x / r), b * sig / r], axis=-1)
    dw1 = np.stack([zeros, rho + x / r, b * ones, -b * sig * sig / r3, -b * x * sig / r3], axis=-1)
    dw2 = np.stack(
        [
            zeros,
            sig * sig / r3,
            zeros,
            3.0 * b * sig * sig * x / r5,
            b * (2.0 * sig / r3 - 3.0 * sig**3 / r5),
        ],
        axis=-1,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        lead = 1.0 - k * w1 / (2.0 * w)
        g = lead * lead - 0.25 * w1 * w1 * (1.0 / w + 0.25) + 0.5 * w2
        d_lead = (-0.5 * k / (w * w))[:, None] * (dw1 * w[:, None] - w1[:, None] * dw)
        dg = (
            2.0 * lead[:, None] * d_lead
            - (0.5 * w1 * (1.0 / w + 0.25))[:, None] * dw1
            + (0.25 * w1 * w1 / (w * w))[:, None] * dw
            + 0.5 * dw2
        )
    return w, g, dw, dg


def _w_g_eval(
    p: Array, k: Array, with_jac: bool
) -> tuple[Array, Array, Array | None, Array | None]:
    """w and g on k, with their parameter derivatives when asked."""
    if with_jac:
        return _w_g_jacobians(p, k)
    a, b, rho, m, sig = (float(v) for v in p)
    x = k - m
    r2 = x * x + sig * sig
    r = np.sqrt(r2)
    w = a + b * (rho * x + r)
    w1 = b * (rho + x / r)
    w2 = b * sig * sig / (r2 * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (1.0 - k * w1 / (2.0 * w)) ** 2 - 0.25 * w1 * w1 * (1.0 / w + 0.25) + 0.5 * w2
    return w, g, None, None


def chain_refit(
    starts: Sequence[RawSvi],
    datas: Sequence[RefitData],
    lower: RawSvi | None = None,
    upper: RawSvi | None = None,
    k_range: tuple[float, float] = K_CHECK_RANGE,
    wing_bound: float = LEE_WING_BOUND,
    max_iter: int = 100,
    rounds: int = 6,
) -> list[RawSvi] | None:
    """Refit consecutive slices (ordered in T) together: the sum of their data
    objectives (RefitData.objective) subject to g >= margin for each, total variance
    non-decreasing along lower <= chain[0] <= ... <= chain[-1] <= upper (fixed
    neighbours, optional), Lee's bound and w > 0.

    Damped Gauss-Newton steps with linearised constraints (SLSQP when those stall), with
    analytic derivatives in scaled variables, each constraint family on a screened
    sparse grid (coarse points plus the tightest ones); after each solve the dense
    checks run and the points where they fail join their family (cutting planes), up to
    `rounds` times, each round starting where the last one ended. A touching calendar
    constraint can leave a gap of rounding size between grid points: a parallel shift
    within the slack of the other side closes it. max_iter bounds the SLSQP fallback.
    None when no arbitrage-free chain was found."""
    n = len(starts)
    if n == 0 or len(datas) != n or not all(valid_params(p) for p in starts):
        return None
    prob = _ChainProblem(starts, datas, lower, upper, k_range, wing_bound)
    xs = np.concatenate([np.array(tuple(p), dtype=np.float64) for p in starts]) / prob.scale

    def values(x: Array) -> Array:
        return prob.constraints(x, with_jac=False)[0]

    def jacobian(x: Array) -> Array:
        jac = prob.constraints(x, with_jac=True)[1]
        assert jac is not None
        return jac

    for _ in range(rounds):
        with np.errstate(all="ignore"):
            prob.screen(xs)
            found = _gauss_newton_sqp(prob, xs)
            if found is not None and not prob.feasible(found):
                found = None
        solved = True
        if found is None:
            # The Gauss-Newton steps stalled (incompatible linearisation far from the
            # feasible set): SLSQP's own relaxation handles such starts.
            try:
                with np.errstate(all="ignore"):
                    res = minimize(
                        prob.objective,
                        xs,
                        jac=True,
                        method="SLSQP",
                        bounds=prob.bounds,
                        constraints=[{"type": "ineq", "fun": values, "jac": jacobian}],
                        options={"maxiter": max_iter, "ftol": 1e-6},
                    )
            except (ValueError, ArithmeticError):
                return None
            found = np.asarray(res.x, dtype=np.float64)
            # A failed line search or an exhausted budget does not improve with more
            # constraints; a solve that merely missed points between the grid does.
            solved = res.status in (0, 9)
        if not np.all(np.isfinite(found)):
            return None
        xs = found
        chain = [RawSvi(*(float(v) for v in row)) for row in prob.theta(xs)]
        ok, fails, gaps = _chain_failures(chain, lower, upper, k_range, wing_bound)
        if ok:
            return chain
        nudged = _close_touching_gaps(chain, gaps, k_range, wing_bound)
        if nudged is not None and _chain_failures(nudged, lower, upper, k_range, wing_bound)[0]:
            return nudged
        if not fails or not solved:
            return None
        for fam, k in fails.items():
            prob.add_cut(fam, k)
    return None


# Gauss-Newton SQP: the penalty on constraint violation in the line search merit.
_MERIT_PENALTY = 1e3


def _lsi_step(
    jac: Array, resid: Array, damping: float, con_jac: Array, con: Array, lo: Array, hi: Array
) -> Array | None:
    """The damped Gauss-Newton step under linearised constraints:
    min |J d + r|^2 + damping |d|^2 subject to A d >= -c, lo <= d <= hi. Solved as a
    least-distance problem by NNLS (Lawson and Hanson, ch. 23). None when the
    linearised constraints are incompatible."""
    n = jac.shape[1]
    e = np.vstack([jac, math.sqrt(damping) * np.eye(n)])
    f = np.concatenate([-resid, np.zeros(n)])
    q, r = np.linalg.qr(e)
    f1 = q.T @ f
    try:
        r_inv = np.linalg.inv(r)
    except np.linalg.LinAlgError:
        return None
    eye = np.eye(n)
    lo_ok, hi_ok = np.isfinite(lo), np.isfinite(hi)
    g = np.vstack([con_jac, eye[lo_ok], -eye[hi_ok]])
    h = np.concatenate([-con, lo[lo_ok], -hi[hi_ok]])
    g_hat = g @ r_inv
    h_hat = h - g_hat @ f1
    if np.all(h_hat <= 0.0):
        z = np.zeros(n)
    else:
        e_ldp = np.vstack([g_hat.T, h_hat[None, :]])
        f_ldp = np.zeros(n + 1)
        f_ldp[-1] = 1.0
        try:
            u, _ = nnls(e_ldp, f_ldp, maxiter=20 * (n + 1) + 3 * g.shape[0])
        except RuntimeError:
            return None
        res = e_ldp @ u - f_ldp
        if not abs(res[-1]) > 1e-12:
            return None
        z = -res[:n] / res[-1]
    step = r_inv @ (z + f1)
    return step if np.all(np.isfinite(step)) else None


def _gauss_newton_sqp(prob: _ChainProblem, xs: Array, max_iter: int = 30) -> Array | None:
    """Minimise the chain objective under the screened constraints by damped
    Gauss-Newton steps with linearised constraints and a penalty-merit backtracking
    line search (the objective is a sum of squares: a few steps suffice where SLSQP,
    learning curvature from scratch, takes tens). None if a step cannot be found."""
    lo = np.array([-np.inf if b[0] is None else b[0] for b in prob.bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in prob.bounds])
    x = np.clip(xs, lo, hi)

    def merit(point: Array) -> tuple[float, float, Array, Array]:
        r, jac = prob.residuals(point)
        c, _ = prob.constraints(point, with_jac=False)
        viol = float(np.sum(np.maximum(-c, 0.0)))
        return float(r @ r) + _MERIT_PENALTY * viol, viol, r, jac

    phi, viol, r, jac = merit(x)
    damping = 1e-6 * max(float(np.max(np.sum(jac * jac, axis=0))), 1e-12)
    for _ in range(max_iter):
        c, con_jac = prob.constraints(x, with_jac=True)
        assert con_jac is not None
        d = _lsi_step(jac, r, damping, con_jac, c, lo - x, hi - x)
        if d is None:
            return None
        # Backtrack until the merit falls; once feasible, stay feasible (a shorter
        # step shrinks the curvature-driven violation quadratically).
        t = 1.0
        while True:
            trial = x + t * d
            phi_t, viol_t, r_t, jac_t = merit(trial)
            if (phi_t < phi and viol_t <= max(viol, 1e-12)) or t < 1e-3:
                break
            t *= 0.5
        if not (phi_t < phi and viol_t <= max(viol, 1e-12)):
            # No acceptable descent along the step: converged as far as it goes.
            return x
        gain = phi - phi_t
        x, phi, viol, r, jac = trial, phi_t, viol_t, r_t, jac_t
        damping = damping / 3.0 if t == 1.0 else damping * 4.0
        # Objective units: every quote off by 1% of its total variance; a gain of 1e-6
        # of that is invisible in any vol.
        if float(np.max(np.abs(t * d))) < 1e-7 or gain < 1e-6 * (1.0 + phi):
            return x
    return x


def _close_touching_gaps(
    chain: Sequence[RawSvi],
    gaps: Sequence[tuple[int, float]],
    k_range: tuple[float, float],
    wing_bound: float,
) -> list[RawSvi] | None:
    """Shift single chain members by tiny calendar deficits (a touching constraint that
    dips below zero between grid points) when the gap on the member's other side has
    room. Pair i is (member i, member i + 1); member -1 is the fixed lower neighbour and
    member n the fixed upper one."""
    tiny = 1e-6
    out = list(chain)
    n = len(out)
    room = dict(gaps)
    for pair, g in gaps:
        if g >= 0.0:
            continue
        if g < -tiny:
            return None
        shift = -g + CALENDAR_MARGIN
        later, earlier = pair + 1, pair
        if later < n and room.get(later, math.inf) > shift + CALENDAR_MARGIN:
            out[later] = out[later]._replace(a=out[later].a + shift)
            room[later] = room.get(later, math.inf) - shift
        elif earlier >= 0 and room.get(earlier - 1, math.inf) > shift + CALENDAR_MARGIN:
            out[earlier] = out[earlier]._replace(a=out[earlier].a - shift)
            room[earlier - 1] = room.get(earlier - 1, math.inf) - shift
        else:
            return None
        room[pair] = CALENDAR_MARGIN
    if not all(butterfly_check(p, k_range, wing_bound).arbitrage_free for p in out):
        return None
    return out


def constrained_refit(
    start: RawSvi,
    data: RefitData,
    previous: RawSvi | None = None,
    k_range: tuple[float, float] = K_CHECK_RANGE,
    wing_bound: float = LEE_WING_BOUND,
    max_iter: int = 100,
    rounds: int = 6,
    upper: RawSvi | None = None,
) -> RawSvi | None:
    """One slice refitted to its data subject to g >= margin, Lee's bound, w > 0 and,
    given neighbours, w_previous <= w <= w_upper on the check range (see chain_refit).
    None when no arbitrage-free slice was found."""
    out = chain_refit([start], [data], previous, upper, k_range, wing_bound, max_iter, rounds)
    return out[0] if out is not None else None


class RefitMemo:
    """Constrained refits already solved, by their exact inputs: a surface repaired
    twice in one fit job (after dropping outliers) re-solves only what changed."""

    def __init__(self) -> None:
        self._done: dict[tuple[object, ...], list[RawSvi] | None] = {}

    def chain(
        self,
        starts: Sequence[RawSvi],
        datas: Sequence[RefitData],
        lower: RawSvi | None,
        upper: RawSvi | None,
        k_range: tuple[float, float],
        wing_bound: float,
    ) -> list[RawSvi] | None:
        key = (tuple(starts), tuple(d.key for d in datas), lower, upper, k_range, wing_bound)
        if key not in self._done:
            self._done[key] = chain_refit(starts, datas, lower, upper, k_range, wing_bound)
        return self._done[key]

    def single(
        self,
        start: RawSvi,
        data: RefitData,
        lower: RawSvi | None,
        upper: RawSvi | None,
        k_range: tuple[float, float],
        wing_bound: float,
    ) -> RawSvi | None:
        out = self.chain([start], [data], lower, upper, k_range, wing_bound)
        return out[0] if out is not None else None
