"""Static-arbitrage checks and repairs for raw SVI slices (quant.md section 4).

Butterfly: Durrleman's g(k) >= 0 on a dense grid (uniform over the check range plus a
fine grid around each slice's vertex m, where g has structure on the scale sigma), the
minimum refined by two zooms, w > 0, and Lee's wing-slope bound b (1 + |rho|) <= 2 (the
analytic far-wing condition no finite grid can see).
Calendar: w(k, T2) >= w(k, T1) for consecutive expiries on the union of both grids.

Repairs, in order of preference: Gatheral-Jacquier jump-wings repair for butterfly; a
minimal lift of a for calendar; a constrained refit (SLSQP, g and calendar constraints on a
grid) when those fail; a shift of the previous slice as last resort before dropping.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from svc_surface.svi import (
    LEE_WING_BOUND,
    JwSvi,
    RawSvi,
    durrleman_g,
    jw_to_raw,
    min_total_variance,
    raw_to_jw,
    total_variance,
)

Array = NDArray[np.float64]

K_CHECK_RANGE = (-3.0, 3.0)
_UNIFORM_POINTS = 801
_LOCAL_POINTS = 121
_LOCAL_HALF_WIDTH = 20.0  # in units of sigma
# Margins the repairs aim for, so an independent finer grid cannot find a violation.
G_MARGIN = 1e-6
CALENDAR_MARGIN = 1e-9


def check_grid(params: Sequence[RawSvi], k_range: tuple[float, float] = K_CHECK_RANGE) -> Array:
    """Uniform grid on k_range plus a fine grid around each slice's vertex m."""
    lo, hi = k_range
    parts = [np.linspace(lo, hi, _UNIFORM_POINTS)]
    for p in params:
        if math.isfinite(p.m) and math.isfinite(p.sigma) and p.sigma > 0.0:
            local = p.m + p.sigma * np.linspace(
                -_LOCAL_HALF_WIDTH, _LOCAL_HALF_WIDTH, _LOCAL_POINTS
            )
            parts.append(local[(local > lo) & (local < hi)])
    return np.unique(np.concatenate(parts))


def _rows(params: Sequence[RawSvi]) -> Array:
    return np.array([tuple(p) for p in params], dtype=np.float64).reshape(-1, 5)


def _w_rows(p: Array, k: Array) -> Array:
    """Total variance for row-wise parameters p (S, 5) on k (S, G)."""
    x = k - p[:, 3:4]
    s2 = p[:, 4:5] ** 2
    return np.asarray(p[:, 0:1] + p[:, 1:2] * (p[:, 2:3] * x + np.sqrt(x * x + s2)), np.float64)


def _g_rows(p: Array, k: Array) -> Array:
    """Durrleman's g for row-wise parameters (NaN where w <= 0)."""
    x = k - p[:, 3:4]
    s2 = p[:, 4:5] ** 2
    r2 = x * x + s2
    r = np.sqrt(r2)
    b = p[:, 1:2]
    w = p[:, 0:1] + b * (p[:, 2:3] * x + r)
    w1 = b * (p[:, 2:3] + x / r)
    w2 = b * s2 / (r2 * r)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (1.0 - k * w1 / (2.0 * w)) ** 2 - 0.25 * w1 * w1 * (1.0 / w + 0.25) + 0.5 * w2
    return np.asarray(np.where(w > 0.0, g, np.nan), dtype=np.float64)


def _row_grids(vertices: Sequence[Array], k_range: tuple[float, float]) -> tuple[Array, Array]:
    """Per row: the uniform grid plus local grids around each given (m, sigma) row set.
    Returns points (S, G) and the spacing each point was laid out with (S, G)."""
    lo, hi = k_range
    s_count = vertices[0].shape[0]
    uniform = np.linspace(lo, hi, _UNIFORM_POINTS)
    du = (hi - lo) / (_UNIFORM_POINTS - 1)
    parts = [np.broadcast_to(uniform, (s_count, _UNIFORM_POINTS))]
    steps = [np.full((s_count, _UNIFORM_POINTS), du)]
    unit = np.linspace(-_LOCAL_HALF_WIDTH, _LOCAL_HALF_WIDTH, _LOCAL_POINTS)
    for ms in vertices:
        m, sig = ms[:, 0:1], np.maximum(ms[:, 1:2], 1e-12)
        local = np.clip(m + sig * unit, lo, hi)
        parts.append(local)
        steps.append(np.broadcast_to(np.minimum(sig * (unit[1] - unit[0]), du), local.shape))
    return np.concatenate(parts, axis=1), np.concatenate(steps, axis=1)


def _zoom(
    fn: _RowFn, k0: Array, v0: Array, h: Array, k_range: tuple[float, float]
) -> tuple[Array, Array]:
    """Refine row-wise minima at k0 (values v0) by two 41-point zooms of half-width h."""
    rows = np.arange(k0.shape[0])
    best_k, best_v = k0.copy(), v0.copy()
    unit = np.linspace(-1.0, 1.0, 41)
    for _ in range(2):
        ks = np.clip(best_k[:, None] + h[:, None] * unit, k_range[0], k_range[1])
        vs = fn(ks)
        vs = np.where(np.isnan(vs), -np.inf, vs)
        j = np.argmin(vs, axis=1)
        better = vs[rows, j] < best_v
        best_k = np.where(better, ks[rows, j], best_k)
        best_v = np.where(better, vs[rows, j], best_v)
        h = h / 20.0
    return best_k, best_v


def _min_rows(
    fn: _RowFn, grid: Array, steps: Array, k_range: tuple[float, float]
) -> tuple[Array, Array]:
    """Row-wise minimum of fn over the grid. Candidates: the two lowest local minima of
    the uniform part and the lowest point of each local (vertex) part, each refined by
    zooming; the lowest refined value wins. Several candidates because a kink-like vertex
    and a broad wing minimum can be close in value and only refinement tells them apart."""
    vals = fn(grid)
    vals = np.where(np.isnan(vals), -np.inf, vals)  # NaN (w <= 0) is the worst case
    rows = np.arange(grid.shape[0])
    uni = vals[:, :_UNIFORM_POINTS]
    padded = np.pad(uni, ((0, 0), (1, 1)), constant_values=np.inf)
    is_local = (uni <= padded[:, :-2]) & (uni <= padded[:, 2:])
    ranked = np.argsort(np.where(is_local, uni, np.inf), axis=1)[:, :2]
    candidates = [ranked[:, 0], ranked[:, 1]]
    for start in range(_UNIFORM_POINTS, grid.shape[1], _LOCAL_POINTS):
        candidates.append(start + np.argmin(vals[:, start : start + _LOCAL_POINTS], axis=1))
    # Zoom all candidates in one batch: rows repeated once per candidate.
    n_rows, n_cand = grid.shape[0], len(candidates)
    idx = np.stack(candidates, axis=1)  # (S, C)
    flat_rows = np.repeat(rows, n_cand)
    flat_idx = idx.ravel()
    k, v = _zoom(
        fn.take(flat_rows),
        grid[flat_rows, flat_idx],
        vals[flat_rows, flat_idx],
        steps[flat_rows, flat_idx],
        k_range,
    )
    best = np.argmin(v.reshape(n_rows, n_cand), axis=1)
    pick = rows * n_cand + best
    return k[pick], v[pick]


class _RowFn:
    """A function of k with one parameter row per grid row."""

    def __call__(self, k: Array) -> Array:  # pragma: no cover - interface
        raise NotImplementedError

    def take(self, rows: NDArray[np.intp]) -> _RowFn:  # pragma: no cover - interface
        raise NotImplementedError


class _GRows(_RowFn):
    def __init__(self, p: Array) -> None:
        self.p = p

    def __call__(self, k: Array) -> Array:
        return _g_rows(self.p, k)

    def take(self, rows: NDArray[np.intp]) -> _GRows:
        return _GRows(self.p[rows])


class _GapRows(_RowFn):
    def __init__(self, short: Array, long: Array) -> None:
        self.short, self.long = short, long

    def __call__(self, k: Array) -> Array:
        return _w_rows(self.long, k) - _w_rows(self.short, k)

    def take(self, rows: NDArray[np.intp]) -> _GapRows:
        return _GapRows(self.short[rows], self.long[rows])


def butterfly_min_batch(
    params: Sequence[RawSvi], k_range: tuple[float, float] = K_CHECK_RANGE
) -> tuple[Array, Array]:
    """(min g, k at min) per slice over the check grid; -inf where w <= 0 somewhere."""
    p = _rows(params)
    grid, steps = _row_grids([p[:, 3:5]], k_range)
    k, g = _min_rows(_GRows(p), grid, steps, k_range)
    return g, k


def calendar_gap_batch(
    shorts: Sequence[RawSvi],
    longs: Sequence[RawSvi],
    k_range: tuple[float, float] = K_CHECK_RANGE,
) -> tuple[Array, Array]:
    """(min of w_long - w_short, k at min) per pair over the union of both check grids."""
    ps, pl = _rows(shorts), _rows(longs)
    grid, steps = _row_grids([ps[:, 3:5], pl[:, 3:5]], k_range)
    k, gap = _min_rows(_GapRows(ps, pl), grid, steps, k_range)
    return gap, k


@dataclass(frozen=True)
class ButterflyReport:
    min_g: float
    k_at_min_g: float
    # Lee's bound b (1 + |rho|) <= 2: the far wings beyond any grid.
    wing_ok: bool
    # min_k w > 0 (no density otherwise).
    positive_variance: bool
    negative_intervals: tuple[tuple[float, float], ...]

    @property
    def arbitrage_free(self) -> bool:
        return self.wing_ok and self.positive_variance and self.min_g >= 0.0


def _negative_intervals(grid: Array, values: Array) -> tuple[tuple[float, float], ...]:
    """Intervals where values < 0, ends located by linear interpolation between points."""
    neg = values < 0.0
    if not np.any(neg):
        return ()
    out: list[tuple[float, float]] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], neg.astype(np.int8), [0]])))

    def cross(i: int, j: int) -> float:
        vi, vj = float(values[i]), float(values[j])
        return float(grid[i] + (grid[j] - grid[i]) * vi / (vi - vj))

    for start, stop in zip(edges[0::2], edges[1::2], strict=True):
        left = cross(start - 1, start) if start > 0 else float(grid[0])
        right = cross(stop - 1, stop) if stop < grid.size else float(grid[-1])
        out.append((left, right))
    return tuple(out)


def _valid_params(p: RawSvi) -> bool:
    return all(math.isfinite(x) for x in p) and p.sigma > 0.0 and p.b >= 0.0 and abs(p.rho) < 1


def _butterfly_report(
    p: RawSvi, min_g: float, k_min: float, k_range: tuple[float, float], wing_bound: float
) -> ButterflyReport:
    positive = min_total_variance(p) > 0.0 and math.isfinite(min_g)
    intervals: tuple[tuple[float, float], ...] = ()
    if not min_g >= 0.0:
        grid = check_grid([p], k_range)
        intervals = _negative_intervals(grid, np.nan_to_num(durrleman_g(p, grid), nan=-1.0))
    return ButterflyReport(
        min_g=min_g if math.isfinite(min_g) else float("nan"),
        k_at_min_g=k_min,
        wing_ok=p.b * (1.0 + abs(p.rho)) <= wing_bound * (1.0 + 1e-12),
        positive_variance=positive,
        negative_intervals=intervals,
    )


def butterfly_check(
    p: RawSvi,
    k_range: tuple[float, float] = K_CHECK_RANGE,
    wing_bound: float = LEE_WING_BOUND,
) -> ButterflyReport:
    if not _valid_params(p):
        return ButterflyReport(float("nan"), float("nan"), False, False, ())
    g, k = butterfly_min_batch([p], k_range)
    return _butterfly_report(p, float(g[0]), float(k[0]), k_range, wing_bound)


@dataclass(frozen=True)
class CalendarReport:
    t_short: float
    t_long: float
    # min over k of w(k, T_long) - w(k, T_short): negative is calendar arbitrage.
    min_gap: float
    k_at_min_gap: float
    # The far wings: total variance slopes must not cross beyond the grid either
    # (reported, not required: the published domain is the check range).
    wings_ordered: bool

    @property
    def arbitrage_free(self) -> bool:
        return self.min_gap >= 0.0


def _calendar_report(
    t_short: float, short: RawSvi, t_long: float, long: RawSvi, gap: float, k_min: float
) -> CalendarReport:
    put_s, call_s = short.b * (1.0 - short.rho), short.b * (1.0 + short.rho)
    put_l, call_l = long.b * (1.0 - long.rho), long.b * (1.0 + long.rho)
    return CalendarReport(
        t_short=t_short,
        t_long=t_long,
        min_gap=gap,
        k_at_min_gap=k_min,
        wings_ordered=put_l >= put_s and call_l >= call_s,
    )


def calendar_check(
    t_short: float,
    short: RawSvi,
    t_long: float,
    long: RawSvi,
    k_range: tuple[float, float] = K_CHECK_RANGE,
) -> CalendarReport:
    gap, k = calendar_gap_batch([short], [long], k_range)
    return _calendar_report(t_short, short, t_long, long, float(gap[0]), float(k[0]))


def calendar_check_surface(
    slices: Sequence[tuple[float, RawSvi]], k_range: tuple[float, float] = K_CHECK_RANGE
) -> list[CalendarReport]:
    """One report per consecutive pair of (T, params), sorted by T."""
    ordered = sorted(slices, key=lambda s: s[0])
    return [
        calendar_check(t0, p0, t1, p1, k_range)
        for (t0, p0), (t1, p1) in itertools.pairwise(ordered)
    ]


def gj_butterfly_repair(p: RawSvi, t: float) -> RawSvi | None:
    """Gatheral-Jacquier (2014, section 5.1): keep v, psi, p; c' = p + 2 psi;
    v~' = 4 p c' v / (p + c')^2. The ATM variance and skew are unchanged.
    None when the repaired jump-wings values map to no valid raw slice."""
    jw = raw_to_jw(p, t)
    c_new = jw.p + 2.0 * jw.psi
    if not (c_new > 0.0 and jw.p > 0.0 and jw.v > 0.0):
        return None
    v_tilde = 4.0 * jw.p * c_new * jw.v / (jw.p + c_new) ** 2
    try:
        return jw_to_raw(JwSvi(v=jw.v, psi=jw.psi, p=jw.p, c=c_new, v_tilde=v_tilde), t)
    except ValueError:
        return None


def lift_for_calendar(
    short: RawSvi, long: RawSvi, k_range: tuple[float, float] = K_CHECK_RANGE
) -> RawSvi:
    """The later slice shifted up by the calendar deficit (plus a margin): the smallest
    parallel move of w that removes the crossing on the check range."""
    gaps, _ = calendar_gap_batch([short], [long], k_range)
    gap = float(gaps[0])
    if gap >= CALENDAR_MARGIN:
        return long
    lift = -gap + CALENDAR_MARGIN + 1e-9 * max(float(total_variance(long, 0.0)), 0.0)
    return long._replace(a=long.a + lift)


@dataclass(frozen=True)
class RefitData:
    """Quotes for a constrained refit: log-moneyness, target total variance, weights."""

    k: Array
    target_w: Array
    weight: Array


def constrained_refit(
    start: RawSvi,
    data: RefitData,
    previous: RawSvi | None = None,
    k_range: tuple[float, float] = K_CHECK_RANGE,
    wing_bound: float = LEE_WING_BOUND,
    max_iter: int = 100,
    rounds: int = 6,
) -> RawSvi | None:
    """Weighted least squares on total variance subject to g(k) >= margin and (with a
    previous slice) w(k) >= w_previous(k) + margin, Lee's bound and w > 0.

    SLSQP on a sparse constraint grid; after each solve the dense checks run and the
    point where they fail joins the constraint grid (cutting planes), up to `rounds`
    times. Returns None when no arbitrage-free slice was found.
    """
    lo, hi = k_range
    # Few constraints keep SLSQP fast (its cost grows quickly with their number).
    con_k = [np.linspace(lo, hi, 41)]
    for p in [start] + ([previous] if previous is not None else []):
        con_k.append(np.clip(p.m + p.sigma * np.linspace(-3.0, 3.0, 13), lo, hi))
    grid = np.unique(np.concatenate(con_k))
    weight = data.weight / max(float(np.sum(data.weight)), 1e-300)
    # Objective unit: a 1% relative error on every quote's total variance.
    f0 = max(float(np.sum(weight * (0.01 * data.target_w) ** 2)), 1e-300)

    def objective(x: Array) -> float:
        r = _w_rows(x[None, :], data.k[None, :])[0] - data.target_w
        return float(np.sum(weight * r * r) / f0)

    x0 = np.array(tuple(start), dtype=np.float64)
    bounds = [(None, None), (0.0, wing_bound), (-0.999, 0.999), (lo, hi), (1e-4, 10.0)]
    for _ in range(rounds):
        con_grid = grid
        prev_w = total_variance(previous, con_grid) if previous is not None else None

        def constraints(
            x: Array, con_grid: Array = con_grid, prev_w: Array | None = prev_w
        ) -> Array:
            p = x[None, :]
            kk = con_grid[None, :]
            b, rho = x[1], x[2]
            min_w = x[0] + b * x[4] * math.sqrt(max(1.0 - rho * rho, 0.0))
            parts = [
                np.nan_to_num(_g_rows(p, kk)[0], nan=-1.0) - 100.0 * G_MARGIN,
                np.array(
                    [wing_bound - b * (1.0 + rho), wing_bound - b * (1.0 - rho), min_w - 1e-9]
                ),
            ]
            if prev_w is not None:
                parts.append(_w_rows(p, kk)[0] - prev_w - 1e-7)
            return np.concatenate(parts)

        try:
            with np.errstate(all="ignore"):
                # Each round restarts from the start point: SLSQP's line search tends to
                # stall when started where the newly added constraints are violated.
                res = minimize(
                    objective,
                    x0,
                    method="SLSQP",
                    bounds=bounds,
                    constraints=[{"type": "ineq", "fun": constraints}],
                    options={"maxiter": max_iter, "ftol": 1e-6},
                )
        except (ValueError, ArithmeticError):
            return None
        if not np.all(np.isfinite(res.x)):
            return None
        p = RawSvi(*(float(v) for v in res.x))
        if not _valid_params(p):
            return None
        if previous is not None:
            # The calendar constraint holds on the grid; a curve touching the previous
            # slice there can dip below it in between: a minimal lift closes that gap.
            p = lift_for_calendar(previous, p, k_range)
        bf = butterfly_check(p, k_range, wing_bound)
        cal = calendar_check(0.0, previous, 1.0, p, k_range) if previous is not None else None
        if bf.arbitrage_free and (cal is None or cal.arbitrage_free):
            return p
        if bf.min_g >= 0.0 or not math.isfinite(bf.k_at_min_g):
            return None
        extra = bf.k_at_min_g + p.sigma * np.linspace(-0.5, 0.5, 5)
        grid = np.unique(np.concatenate([grid, np.clip(extra, lo, hi)]))
    return None


@dataclass(frozen=True)
class SliceToRepair:
    t: float
    params: RawSvi
    data: RefitData | None = None
    label: str = ""


@dataclass(frozen=True)
class RepairOutcome:
    """The publishable slice (None: could not be made arbitrage-free, not published)."""

    t: float
    params: RawSvi | None
    repaired: bool
    methods: tuple[str, ...]
    butterfly: ButterflyReport | None
    # Against the previous published slice (None for the first).
    calendar: CalendarReport | None
    raw_min_g: float
    raw_calendar_gap: float = float("nan")
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def method(self) -> str:
        return "+".join(self.methods)


def _butterfly_ok(p: RawSvi, k_range: tuple[float, float], wing_bound: float) -> bool:
    return butterfly_check(p, k_range, wing_bound).arbitrage_free


def repair_surface(
    slices: Sequence[SliceToRepair],
    k_range: tuple[float, float] = K_CHECK_RANGE,
    wing_bound: float = LEE_WING_BOUND,
) -> list[RepairOutcome]:
    """Make a set of slices free of butterfly and calendar arbitrage on k_range.

    Forward pass in T: each slice is first made butterfly-free, then checked against the
    previous *published* slice, so consecutive published pairs (hence all pairs, on the
    grid) are calendar-free. Outcomes are in input order. The common case (nothing to
    repair) costs one batched butterfly pass and one batched calendar pass.
    """
    if not slices:
        return []
    order = sorted(range(len(slices)), key=lambda i: slices[i].t)
    ordered = [slices[i] for i in order]
    valid = [_valid_params(s.params) for s in ordered]
    safe = [
        s.params if ok else RawSvi(0.0, 0.0, 0.0, 0.0, 1.0)
        for s, ok in zip(ordered, valid, strict=True)
    ]
    g_min, g_k = butterfly_min_batch(safe, k_range)
    first_bf = [
        _butterfly_report(p, float(g), float(k), k_range, wing_bound)
        if ok
        else ButterflyReport(float("nan"), float("nan"), False, False, ())
        for p, g, k, ok in zip(safe, g_min, g_k, valid, strict=True)
    ]
    if len(ordered) > 1:
        gaps, gap_k = calendar_gap_batch(safe[:-1], safe[1:], k_range)
    else:
        gaps, gap_k = np.zeros(0), np.zeros(0)
    if all(r.arbitrage_free for r in first_bf) and bool(np.all(gaps >= 0.0)):
        fast: list[RepairOutcome] = []
        for j, s in enumerate(ordered):
            cal = (
                _calendar_report(
                    ordered[j - 1].t,
                    safe[j - 1],
                    s.t,
                    s.params,
                    float(gaps[j - 1]),
                    float(gap_k[j - 1]),
                )
                if j > 0
                else None
            )
            fast.append(
                RepairOutcome(
                    t=s.t,
                    params=s.params,
                    repaired=False,
                    methods=(),
                    butterfly=first_bf[j],
                    calendar=cal,
                    raw_min_g=first_bf[j].min_g,
                    raw_calendar_gap=float(gaps[j - 1]) if j > 0 else float("nan"),
                )
            )
        by_input = dict(zip(order, fast, strict=True))
        return [by_input[i] for i in range(len(slices))]

    outcomes: dict[int, RepairOutcome] = {}
    prev: tuple[float, RawSvi] | None = None
    for pos, i in enumerate(order):
        s = slices[i]
        methods: list[str] = []
        notes: list[str] = []
        p: RawSvi | None = s.params
        first = first_bf[pos]
        raw_min_g = first.min_g
        if not first.arbitrage_free:
            notes.append(f"raw min g {first.min_g:.3g} at k={first.k_at_min_g:.3f}")
            fixed = gj_butterfly_repair(s.params, s.t) if valid[pos] else None
            if fixed is not None and _butterfly_ok(fixed, k_range, wing_bound):
                p, methods = fixed, ["butterfly_jw"]
            else:
                p = None
                if s.data is not None:
                    for start in [x for x in (fixed, s.params if valid[pos] else None) if x]:
                        p = constrained_refit(start, s.data, None, k_range, wing_bound)
                        if p is not None:
                            methods = ["butterfly_refit"]
                            break
        raw_gap = float("nan")
        if p is not None and prev is not None:
            cal = calendar_check(prev[0], prev[1], s.t, p, k_range)
            raw_gap = cal.min_gap
            if not cal.arbitrage_free:
                notes.append(f"calendar gap {cal.min_gap:.3g} at k={cal.k_at_min_gap:.3f}")
                p = _calendar_repair(prev[1], p, s, k_range, wing_bound, methods)
        if p is None:
            outcomes[i] = RepairOutcome(
                t=s.t,
                params=None,
                repaired=True,
                methods=(*methods, "dropped"),
                butterfly=None,
                calendar=None,
                raw_min_g=raw_min_g,
                raw_calendar_gap=raw_gap,
                notes=tuple(notes),
            )
            continue
        final_bf = butterfly_check(p, k_range, wing_bound) if methods else first
        final_cal = calendar_check(prev[0], prev[1], s.t, p, k_range) if prev is not None else None
        outcomes[i] = RepairOutcome(
            t=s.t,
            params=p,
            repaired=bool(methods),
            methods=tuple(methods),
            butterfly=final_bf,
            calendar=final_cal,
            raw_min_g=raw_min_g,
            raw_calendar_gap=raw_gap,
            notes=tuple(notes),
        )
        prev = (s.t, p)
    return [outcomes[i] for i in range(len(slices))]


def _calendar_repair(
    short: RawSvi,
    long: RawSvi,
    s: SliceToRepair,
    k_range: tuple[float, float],
    wing_bound: float,
    methods: list[str],
) -> RawSvi | None:
    """Lift, else constrained refit, else a shifted copy of the previous slice."""
    lifted = lift_for_calendar(short, long, k_range)
    if _butterfly_ok(lifted, k_range, wing_bound) and (
        calendar_check(0.0, short, 1.0, lifted, k_range).arbitrage_free
    ):
        candidate: RawSvi | None = lifted
        method = "calendar_lift"
        if s.data is not None:
            # A lift repairs the crossing but moves the whole smile; a constrained refit
            # usually fits the quotes better. Keep whichever fits better.
            refit = constrained_refit(lifted, s.data, short, k_range, wing_bound)
            if refit is not None and _fit_error(refit, s.data) < _fit_error(lifted, s.data):
                candidate, method = refit, "calendar_refit"
        methods.append(method)
        return candidate
    if s.data is not None:
        for start in (lifted, long):
            refit = constrained_refit(start, s.data, short, k_range, wing_bound)
            if refit is not None:
                methods.append("calendar_refit")
                return refit
    shifted = short._replace(a=short.a + 2.0 * CALENDAR_MARGIN)
    if _butterfly_ok(shifted, k_range, wing_bound) and (
        calendar_check(0.0, short, 1.0, shifted, k_range).arbitrage_free
    ):
        methods.append("calendar_copy_previous")
        return shifted
    return None


def _fit_error(p: RawSvi, data: RefitData) -> float:
    r = total_variance(p, data.k) - data.target_w
    return float(np.sum(data.weight * r * r))
