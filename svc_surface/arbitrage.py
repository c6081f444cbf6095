"""Static-arbitrage checks and repairs for raw SVI slices (docs/quant.md section 4).

Butterfly: Durrleman's g(k) >= 0 on a dense grid (uniform over the check range plus a
fine grid around each slice's vertex m, where g has structure on the scale sigma), the
minimum refined by two zooms, w > 0, and Lee's wing-slope bound b (1 + |rho|) <= 2 (the
analytic far-wing condition no finite grid can see).
Calendar: w(k, T2) >= w(k, T1) for consecutive expiries on the union of both grids.

Repair primitives: the Gatheral-Jacquier jump-wings butterfly repair and the minimal
parallel lift for a calendar crossing. Constrained refits live in svc_surface.refit and
the surface-level repair policy (what to change, in which order) in svc_surface.repair.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from volmath.svi import (
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


# Check results by parameters: a slice (or pair) whose parameters did not change since
# the last revision is not checked again (every row's minimum depends on its own
# parameters and the range only, so a remembered one is exactly what a new pass gives).
# Bounded: cleared when full (a few revisions of every partition fit easily).
_MEMO_LIMIT = 8192
_MemoKey = tuple[tuple[float, ...], ...]
_BUTTERFLY_MEMO: dict[_MemoKey, tuple[float, float]] = {}
_CALENDAR_MEMO: dict[_MemoKey, tuple[float, float]] = {}


def _memoised(
    memo: dict[_MemoKey, tuple[float, float]],
    keys: Sequence[_MemoKey],
    compute: Callable[[list[int]], tuple[Array, Array]],
) -> tuple[Array, Array]:
    """(value, k) per key: remembered ones looked up, the others computed in one batch.
    (Single dict operations only: safe when fits run in threads.)"""
    found: list[tuple[float, float] | None] = [memo.get(key) for key in keys]
    missing = [i for i, hit in enumerate(found) if hit is None]
    if missing:
        values, ks = compute(missing)
        if len(memo) + len(missing) > _MEMO_LIMIT:
            memo.clear()
        for i, v, kv in zip(missing, values.tolist(), ks.tolist(), strict=True):
            found[i] = memo[keys[i]] = (v, kv)
    return (
        np.array([hit[0] for hit in found if hit is not None], dtype=np.float64),
        np.array([hit[1] for hit in found if hit is not None], dtype=np.float64),
    )


def butterfly_min_batch(
    params: Sequence[RawSvi], k_range: tuple[float, float] = K_CHECK_RANGE
) -> tuple[Array, Array]:
    """(min g, k at min) per slice over the check grid; -inf where w <= 0 somewhere."""
    span = (float(k_range[0]), float(k_range[1]))

    def compute(rows: list[int]) -> tuple[Array, Array]:
        p = _rows([params[i] for i in rows])
        grid, steps = _row_grids([p[:, 3:5]], span)
        k, g = _min_rows(_GRows(p), grid, steps, span)
        return g, k

    return _memoised(_BUTTERFLY_MEMO, [(tuple(p), span) for p in params], compute)


def calendar_gap_batch(
    shorts: Sequence[RawSvi],
    longs: Sequence[RawSvi],
    k_range: tuple[float, float] = K_CHECK_RANGE,
) -> tuple[Array, Array]:
    """(min of w_long - w_short, k at min) per pair over the union of both check grids."""
    span = (float(k_range[0]), float(k_range[1]))

    def compute(rows: list[int]) -> tuple[Array, Array]:
        ps, pl = _rows([shorts[i] for i in rows]), _rows([longs[i] for i in rows])
        grid, steps = _row_grids([ps[:, 3:5], pl[:, 3:5]], span)
        k, gap = _min_rows(_GapRows(ps, pl), grid, steps, span)
        return gap, k

    keys = [(tuple(s), tuple(lg), span) for s, lg in zip(shorts, longs, strict=True)]
    return _memoised(_CALENDAR_MEMO, keys, compute)


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


def valid_params(p: RawSvi) -> bool:
    """Finite, b >= 0, |rho| < 1, sigma > 0 (the shape is a raw SVI slice at all)."""
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
    if not valid_params(p):
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
    return calendar_reports(sorted(slices, key=lambda s: s[0]), k_range)


def calendar_reports(
    slices: Sequence[tuple[float, RawSvi]], k_range: tuple[float, float] = K_CHECK_RANGE
) -> list[CalendarReport]:
    """calendar_check for each consecutive pair in the order given, in one batched pass."""
    if len(slices) < 2:
        return []
    gap, gap_k = calendar_gap_batch(
        [p for _, p in slices[:-1]], [p for _, p in slices[1:]], k_range
    )
    return [
        _calendar_report(t0, p0, t1, p1, float(g), float(k))
        for ((t0, p0), (t1, p1)), g, k in zip(
            itertools.pairwise(slices), gap.tolist(), gap_k.tolist(), strict=True
        )
    ]


def butterfly_reports(
    params: Sequence[RawSvi],
    k_range: tuple[float, float] = K_CHECK_RANGE,
    wing_bound: float = LEE_WING_BOUND,
) -> list[ButterflyReport]:
    """butterfly_check for many slices in one batched pass (an invalid slice gets a
    report with NaN minimum that is not arbitrage-free)."""
    if not params:
        return []
    valid = [valid_params(p) for p in params]
    safe = [
        p if ok else RawSvi(0.0, 0.0, 0.0, 0.0, 1.0) for p, ok in zip(params, valid, strict=True)
    ]
    g, k = butterfly_min_batch(safe, k_range)
    return [
        _butterfly_report(p, float(gv), float(kv), k_range, wing_bound)
        if ok
        else ButterflyReport(float("nan"), float("nan"), False, False, ())
        for p, gv, kv, ok in zip(safe, g.tolist(), k.tolist(), valid, strict=True)
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
