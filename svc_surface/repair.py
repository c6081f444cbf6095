"""Making a surface's slices free of static arbitrage while changing what the quotes
do not pin down before what they do (docs/quant.md section 4).

Butterfly: the Gatheral-Jacquier jump-wings repair when it keeps the slice on its
quotes, otherwise a refit with g >= 0 (svc_surface.refit).
Calendar, in a backward pass over expiries (the longest have the widest quoted ranges),
by where the crossing lies:
- outside the earlier slice's quoted range: its wing is extrapolation and is refitted
  under the later slice (its fit inside the quotes barely moves);
- inside the earlier slice's quotes but beyond the later slice's last quote: the later
  slice's wing is refitted above it;
- inside both quoted ranges: a genuine data conflict; both slices are refitted together
  to stay inside their bid/ask bands as far as possible, and it is reported.
A parallel shift is the last resort and only within the bid/ask band at the money; no
repair may move a slice's ATM vol further than its quotes allow. A slice that cannot be
repaired that way is not published, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from svc_surface.arbitrage import (
    CALENDAR_MARGIN,
    K_CHECK_RANGE,
    ButterflyReport,
    CalendarReport,
    butterfly_check,
    butterfly_reports,
    calendar_check,
    calendar_gap_batch,
    calendar_reports,
    check_grid,
    gj_butterfly_repair,
    lift_for_calendar,
    valid_params,
)
from svc_surface.refit import RefitData, RefitMemo
from volmath.svi import LEE_WING_BOUND, RawSvi, min_total_variance, total_variance

Array = NDArray[np.float64]


def _atm_vol(p: RawSvi, t: float) -> float:
    w = float(total_variance(p, 0.0))
    return math.sqrt(w / t) if w > 0.0 and t > 0.0 else float("nan")


@dataclass(frozen=True)
class SliceToRepair:
    t: float
    params: RawSvi
    data: RefitData | None = None
    label: str = ""
    # The slice's last repaired (published) params: constrained refits try them first
    # as their starting point (a surface that barely moved re-solves in a few steps).
    warm: RawSvi | None = None


@dataclass(frozen=True)
class RepairOutcome:
    """The publishable slice (None: not published, `reason` says why)."""

    t: float
    params: RawSvi | None
    repaired: bool
    methods: tuple[str, ...]
    butterfly: ButterflyReport | None
    # Against the previous published slice (None for the first).
    calendar: CalendarReport | None
    raw_min_g: float
    # Raw (unrepaired) gap against the previous input slice.
    raw_calendar_gap: float = float("nan")
    notes: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""
    # ATM vol published minus ATM vol of the unrepaired fit.
    atm_move: float = 0.0

    @property
    def method(self) -> str:
        return "+".join(self.methods)


def _butterfly_ok(p: RawSvi, k_range: tuple[float, float], wing_bound: float) -> bool:
    return butterfly_check(p, k_range, wing_bound).arbitrage_free


# A jump-wings butterfly repair is kept when its data objective (units: every quote off
# by 1% of its total variance) stays within this factor and allowance of the
# unrepaired fit's; otherwise the constrained refit competes with it.
_GJ_KEEP_FACTOR = 1.25
_GJ_KEEP_ALLOWANCE = 0.05


@dataclass
class _Slice:
    """Mutable repair state of one slice."""

    src: SliceToRepair
    params: RawSvi | None
    methods: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw_min_g: float = float("nan")
    raw_gap: float = float("nan")
    reason: str = ""
    atm_ref: float = float("nan")
    band: tuple[float, float] | None = None
    quoted: tuple[float, float] = (-math.inf, math.inf)

    @property
    def label(self) -> str:
        return self.src.label or f"T={self.src.t:.4g}"

    def n_quotes(self) -> int:
        d = self.src.data
        return int(np.count_nonzero(d.weight > 0.0)) if d is not None else 0

    def atm_ok(self, p: RawSvi) -> bool:
        """A repair may move the ATM vol only within what the quotes allow: inside the
        bid/ask band at the money (or no further out than the unrepaired fit) and by no
        more than the band's width."""
        if self.band is None:
            return True
        lo, hi = self.band
        atm = _atm_vol(p, self.src.t)
        if not math.isfinite(atm):
            return False
        ref = self.atm_ref
        tol = 1e-9 + 1e-9 * abs(ref)
        inside = min(lo, ref) - tol <= atm <= max(hi, ref) + tol
        return inside and abs(atm - ref) <= (hi - lo) + tol


def _objective(p: RawSvi, data: RefitData) -> float:
    return float(data.objective(total_variance(p, data.k)[None, :])[0])


def _band_miss(p: RawSvi, data: RefitData) -> float:
    """The objective's band term alone (distance outside the bid/ask bands)."""
    if not data.has_band:
        return _objective(p, data)
    return float(data.band_miss(total_variance(p, data.k)[None, :])[0])


def _repair_butterfly(
    s: _Slice,
    first: ButterflyReport,
    valid: bool,
    k_range: tuple[float, float],
    wb: float,
    memo: RefitMemo,
) -> None:
    """Jump-wings repair when it keeps the fit, else (or when it fails) the constrained
    refit with g >= 0; the better fit of the arbitrage-free candidates that respect the
    ATM band wins."""
    src = s.src
    s.notes.append(f"raw min g {first.min_g:.3g} at k={first.k_at_min_g:.3f}")
    gj = gj_butterfly_repair(src.params, src.t) if valid else None
    if gj is not None and not (_butterfly_ok(gj, k_range, wb) and s.atm_ok(gj)):
        gj = None
    data = src.data
    if data is None:
        s.params, s.methods = (gj, ["butterfly_jw"]) if gj is not None else (None, [])
        return
    base = _objective(src.params, data) if valid else math.inf
    candidates: list[tuple[float, str, RawSvi]] = []
    if gj is not None:
        gj_obj = _objective(gj, data)
        candidates.append((gj_obj, "butterfly_jw", gj))
        if gj_obj <= _GJ_KEEP_FACTOR * base + _GJ_KEEP_ALLOWANCE:
            s.params, s.methods = gj, ["butterfly_jw"]
            return
    starts = (src.warm, src.params if valid else None, gj)
    for start in [x for x in starts if x is not None and valid_params(x)]:
        refit = memo.single(start, data, None, None, k_range, wb)
        if refit is not None and s.atm_ok(refit):
            candidates.append((_objective(refit, data), "butterfly_refit", refit))
            break
    if not candidates:
        s.params, s.methods = None, []
        s.reason = "butterfly arbitrage could not be repaired within the quotes' ATM band"
        return
    _, method, p = min(candidates, key=lambda c: c[0])
    s.params, s.methods = p, [method]


def _violation_k(short: RawSvi, long: RawSvi, k_range: tuple[float, float]) -> Array:
    grid = check_grid([short, long], k_range)
    gap = total_variance(long, grid) - total_variance(short, grid)
    return np.asarray(grid[gap < 0.0], dtype=np.float64)


def _inside(k: Array, quoted: tuple[float, float]) -> NDArray[np.bool_]:
    return np.asarray((k >= quoted[0]) & (k <= quoted[1]), dtype=np.bool_)


def _fmt_range(q: tuple[float, float]) -> str:
    if not math.isfinite(q[0]):
        return "[unquoted]"
    return f"[{q[0]:.3f}, {q[1]:.3f}]"


def _resolve_calendar(
    a: _Slice,
    b: _Slice,
    c: _Slice | None,
    gap: float,
    gap_k: float,
    k_range: tuple[float, float],
    wb: float,
    memo: RefitMemo,
) -> str:
    """Remove the crossing of a (earlier) below b (later, already final; c: b's later
    published neighbour, final). Changes what the data does not pin down first:

    - every violation outside a's quoted range: a's wings are extrapolation, so a is
      refitted under b (its fit inside the quotes barely moves);
    - violations inside a's quotes but outside b's: b's wing beyond its last quote is
      refitted above a (and below c);
    - a violation inside both quoted ranges is a genuine data conflict: a and b are
      refitted together, minimising their combined distance to their bid/ask bands.

    Then the other refits, then parallel shifts (a down or b up), each accepted only if
    arbitrage-free against the neighbours and keeping every changed slice's ATM vol
    within its quotes' band. Returns "ok" (params updated), "drop_a" or "drop_b"."""
    pa, pb = a.params, b.params
    assert pa is not None and pb is not None
    pc = c.params if c is not None else None
    viol = _violation_k(pa, pb, k_range)
    if viol.size == 0:
        viol = np.array([gap_k])
    both = (max(a.quoted[0], b.quoted[0]), min(a.quoted[1], b.quoted[1]))
    if np.any(_inside(viol, both)):
        kind = "conflict"
    elif np.any(_inside(viol, a.quoted)):
        kind = "long_wing"
    else:
        kind = "short_wing"
    where = f"vs {b.label} gap {gap:.3g} at k={gap_k:.3f}"

    # Feasible starting points help the solver: b scaled down to a's ATM variance lies
    # below b everywhere; a scaled up to b's lies above a.
    w_a0, w_b0 = float(total_variance(pa, 0.0)), float(total_variance(pb, 0.0))
    scaled_b = _scaled(pb, w_a0 / w_b0) if 0.0 < w_a0 < w_b0 else None
    scaled_a = _scaled(pa, w_b0 / w_a0) if 0.0 < w_a0 < w_b0 else None
    solved_a: list[RawSvi] = []

    def refit_a() -> tuple[RawSvi | None, RawSvi | None]:
        data = a.src.data
        if data is None:
            return None, None
        for start in [x for x in (a.src.warm, pa, scaled_b) if x is not None]:
            p = memo.single(start, data, None, pb, k_range, wb)
            if p is not None and a.atm_ok(p):
                solved_a.append(p)
                return p, None
        return None, None

    def refit_b() -> tuple[RawSvi | None, RawSvi | None]:
        data = b.src.data
        if data is None or (pc is not None and not _pair_ok(pa, pc, k_range)):
            return None, None  # nothing fits between a and c when a crosses c
        for start in [x for x in (b.src.warm, pb, scaled_a) if x is not None]:
            p = memo.single(start, data, pa, pc, k_range, wb)
            if p is not None and b.atm_ok(p):
                return None, p
        return None, None

    def joint() -> tuple[RawSvi | None, RawSvi | None]:
        if a.src.data is None or b.src.data is None:
            return None, None
        # Starting from a's flattened refit keeps the solve from raising b's unquoted
        # wings to meet a's unquoted ones (both cost the quotes nothing).
        starts: list[tuple[RawSvi, RawSvi]] = []
        if a.src.warm is not None and b.src.warm is not None:
            starts.append((a.src.warm, b.src.warm))
        starts.append((solved_a[0] if solved_a else pa, pb))
        for start_a, start_b in starts:
            out = memo.chain([start_a, start_b], [a.src.data, b.src.data], None, pc, k_range, wb)
            if out is not None and a.atm_ok(out[0]) and b.atm_ok(out[1]):
                return out[0], out[1]
        return None, None

    # A parallel shift is not driven by the data: only where a quoted band bounds it.
    def shift_a() -> tuple[RawSvi | None, RawSvi | None]:
        if a.band is None:
            return None, None
        p = pa._replace(a=pa.a - (-gap + CALENDAR_MARGIN))
        ok = valid_params(p) and min_total_variance(p) > 0.0 and a.atm_ok(p)
        if ok and _butterfly_ok(p, k_range, wb) and _pair_ok(p, pb, k_range):
            return p, None
        return None, None

    def lift_b() -> tuple[RawSvi | None, RawSvi | None]:
        if b.band is None:
            return None, None
        p = lift_for_calendar(pa, pb, k_range)
        if not (b.atm_ok(p) and _butterfly_ok(p, k_range, wb) and _pair_ok(pa, p, k_range)):
            return None, None
        if pc is not None and not _pair_ok(p, pc, k_range):
            return None, None
        return None, p

    refit_names = {
        "short_wing": "calendar_wing_refit" if kind == "short_wing" else "calendar_refit",
        "long_wing": "calendar_wing_refit" if kind == "long_wing" else "calendar_refit",
    }
    # A crossing in a's extrapolation never raises b alone: b's unquoted wing would be
    # made to follow a's unquoted one.
    refits = {
        "short_wing": [(refit_a, refit_names["short_wing"]), (joint, "calendar_joint_refit")],
        "long_wing": [
            (refit_b, refit_names["long_wing"]),
            (joint, "calendar_joint_refit"),
            (refit_a, refit_names["short_wing"]),
        ],
        "conflict": [
            (joint, "calendar_joint_refit"),
            (refit_a, refit_names["short_wing"]),
            (refit_b, refit_names["long_wing"]),
        ],
    }[kind]
    shifts = [(shift_a, "calendar_shift"), (lift_b, "calendar_lift")]
    if kind == "long_wing":
        shifts.reverse()

    def cost(new_a: RawSvi | None, new_b: RawSvi | None) -> float:
        total = 0.0
        for s, p, new in ((a, pa, new_a), (b, pb, new_b)):
            if new is not None and s.src.data is not None:
                total += _objective(new, s.src.data) - _objective(p, s.src.data)
        return total

    def keeps_bands(new_a: RawSvi | None, new_b: RawSvi | None) -> bool:
        """No quote ends up further outside its bid/ask band than before (moves inside
        the bands are free: a fit inside the band is perfect)."""
        for s, p, new in ((a, pa, new_a), (b, pb, new_b)):
            if new is not None and s.src.data is not None:
                before, after = _band_miss(p, s.src.data), _band_miss(new, s.src.data)
                if after > before + 0.01 * (1.0 + before):
                    return False
        return True

    # The preferred refit is taken when it keeps the quotes inside their bands;
    # otherwise every refit competes and the one that costs the quotes least wins
    # (minimal change weighted by the data).
    found: list[tuple[float, str, RawSvi | None, RawSvi | None]] = []
    for n_tried, (plan, method) in enumerate(refits):
        new_a, new_b = plan()
        if new_a is None and new_b is None:
            continue
        found.append((cost(new_a, new_b), method, new_a, new_b))
        if n_tried == 0 and keeps_bands(new_a, new_b):
            break
    if not found:
        for plan, method in shifts:
            new_a, new_b = plan()
            if new_a is not None or new_b is not None:
                found.append((cost(new_a, new_b), method, new_a, new_b))
                break
    if found:
        _, method, new_a, new_b = min(found, key=lambda f: f[0])
        desc = {
            "short_wing": f"crossing outside its quotes {_fmt_range(a.quoted)}",
            "long_wing": f"crossing beyond {b.label}'s quotes {_fmt_range(b.quoted)}",
            "conflict": "crossing inside both quoted ranges (data conflict)",
        }[kind]
        if new_a is not None:
            a.methods.append(method)
            a.notes.append(f"calendar {where}: {desc}; {_move_note(a, new_a)}")
            a.params = new_a
        if new_b is not None:
            b.methods.append(method)
            b.notes.append(
                f"calendar vs {a.label} gap {gap:.3g} at k={gap_k:.3f}: {desc}; "
                f"{_move_note(b, new_b)}"
            )
            b.params = new_b
        return "ok"

    # Nothing arbitrage-free keeps both within their quotes: drop the less informed
    # slice (fewer quotes; then the wider ATM band).

    def weakness(s: _Slice) -> tuple[int, float]:
        width = s.band[1] - s.band[0] if s.band is not None else math.inf
        return (-s.n_quotes(), width)

    reason = (
        f"calendar crossing with {{other}} ({kind}, gap {gap:.3g} at k={gap_k:.3f}) "
        "cannot be removed within the quotes' ATM band"
    )
    if weakness(a) >= weakness(b):
        a.reason = reason.format(other=b.label)
        return "drop_a"
    b.reason = reason.format(other=a.label)
    return "drop_b"


def _scaled(p: RawSvi, factor: float) -> RawSvi:
    """The slice with its total variance multiplied by factor."""
    return p._replace(a=p.a * factor, b=p.b * factor)


def _pair_ok(short: RawSvi, long: RawSvi, k_range: tuple[float, float]) -> bool:
    gap, _ = calendar_gap_batch([short], [long], k_range)
    return bool(gap[0] >= 0.0)


def _move_note(s: _Slice, p: RawSvi) -> str:
    atm = _atm_vol(p, s.src.t)
    note = f"ATM vol {atm - s.atm_ref:+.4f}"
    data = s.src.data
    if data is not None and s.src.params is not None:
        before, after = _objective(s.src.params, data), _objective(p, data)
        note += f", data objective {before:.3g} -> {after:.3g}"
    return note


def repair_surface(
    slices: Sequence[SliceToRepair],
    k_range: tuple[float, float] = K_CHECK_RANGE,
    wing_bound: float = LEE_WING_BOUND,
    memo: RefitMemo | None = None,
) -> list[RepairOutcome]:
    """Make a set of slices free of butterfly and calendar arbitrage on k_range,
    changing what the quotes do not pin down before what they do.

    Each slice is first made butterfly-free (jump-wings repair if it keeps the fit, else
    a refit with g >= 0). Then a backward pass in T (longest first: the longest slices
    have the widest quoted ranges) checks each slice against the next published one and
    resolves crossings (_resolve_calendar); a slice that cannot be repaired within its
    quotes' ATM band is not published, with the reason. Outcomes are in input order. The
    common case (nothing to repair) costs one batched butterfly pass and one batched
    calendar pass.
    """
    if not slices:
        return []
    order = sorted(range(len(slices)), key=lambda i: slices[i].t)
    ordered = [slices[i] for i in order]
    valid = [valid_params(s.params) for s in ordered]
    safe = [
        s.params if ok else RawSvi(0.0, 0.0, 0.0, 0.0, 1.0)
        for s, ok in zip(ordered, valid, strict=True)
    ]
    first_bf = butterfly_reports(safe, k_range, wing_bound)
    for j, ok in enumerate(valid):
        if not ok:
            first_bf[j] = ButterflyReport(float("nan"), float("nan"), False, False, ())
    first_cal = calendar_reports([(s.t, p) for s, p in zip(ordered, safe, strict=True)], k_range)
    gaps = np.array([c.min_gap for c in first_cal])
    if all(r.arbitrage_free for r in first_bf) and bool(np.all(gaps >= 0.0)):
        fast: list[RepairOutcome] = []
        for j, s in enumerate(ordered):
            cal = first_cal[j - 1] if j > 0 else None
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

    memo = memo if memo is not None else RefitMemo()
    states: list[_Slice] = []
    for j, s in enumerate(ordered):
        st = _Slice(src=s, params=s.params if valid[j] else None, raw_min_g=first_bf[j].min_g)
        st.raw_gap = float(gaps[j - 1]) if j > 0 else float("nan")
        st.atm_ref = _atm_vol(s.params, s.t) if valid[j] else float("nan")
        if s.data is not None:
            st.band = s.data.atm_band(s.t)
            st.quoted = s.data.quoted_range()
        else:
            st.quoted = k_range  # no quotes given: the slice is taken as pinned
        if not first_bf[j].arbitrage_free:
            _repair_butterfly(st, first_bf[j], valid[j], k_range, wing_bound, memo)
            if st.params is None and not st.reason:
                st.reason = "could not be made butterfly-free"
        states.append(st)

    published: list[int] = []  # positions, longest first
    for pos in reversed(range(len(states))):
        st = states[pos]
        if st.params is None:
            continue
        while True:
            if not published:
                published.append(pos)
                break
            up = states[published[-1]]
            upper_up = states[published[-2]] if len(published) > 1 else None
            assert up.params is not None
            report = calendar_check(st.src.t, st.params, up.src.t, up.params, k_range)
            if report.arbitrage_free:
                published.append(pos)
                break
            verdict = _resolve_calendar(
                st, up, upper_up, report.min_gap, report.k_at_min_gap, k_range, wing_bound, memo
            )
            if verdict == "ok":
                published.append(pos)
                break
            if verdict == "drop_a":
                st.params = None
                break
            up.params = None
            published.pop()
    _final_safety(states, published, k_range, wing_bound)
    return _outcomes(states, order, k_range, wing_bound)


def _final_safety(
    states: list[_Slice], published: list[int], k_range: tuple[float, float], wb: float
) -> None:
    """Whatever was accepted is checked once more as a whole: a slice that is not
    butterfly-free, or the shorter slice of a pair that still crosses, is not published
    (neither should happen), so nothing arbitrageable goes out."""
    live = sorted(p for p in published if states[p].params is not None)
    accepted = [p for p in (states[pos].params for pos in live) if p is not None]
    for pos, report in zip(live, butterfly_reports(accepted, k_range, wb), strict=True):
        if not report.arbitrage_free:
            states[pos].params = None
            states[pos].reason = "butterfly arbitrage left after repair"
    while True:
        live = sorted(p for p in published if states[p].params is not None)
        params = [p for p in (states[pos].params for pos in live) if p is not None]
        if len(params) < 2:
            return
        gap, _ = calendar_gap_batch(params[:-1], params[1:], k_range)
        bad = np.flatnonzero(~(gap >= 0.0))
        if bad.size == 0:
            return
        victim = states[live[int(bad[0])]]
        victim.params = None
        victim.reason = "calendar arbitrage left after repair"


def _outcomes(
    states: list[_Slice], order: list[int], k_range: tuple[float, float], wb: float
) -> list[RepairOutcome]:
    """Final reports (one batched butterfly and one batched calendar pass over what is
    published), in input order."""
    live = [(j, s.src.t, s.params) for j, s in enumerate(states) if s.params is not None]
    bf_reports: dict[int, ButterflyReport] = dict(
        zip(
            [j for j, _, _ in live],
            butterfly_reports([p for _, _, p in live], k_range, wb),
            strict=True,
        )
    )
    cal_reports: dict[int, CalendarReport] = dict(
        zip(
            [j for j, _, _ in live[1:]],
            calendar_reports([(t, p) for _, t, p in live], k_range),
            strict=True,
        )
    )
    by_input: dict[int, RepairOutcome] = {}
    for j, (i, st) in enumerate(zip(order, states, strict=True)):
        final = st.params
        if final is None:
            by_input[i] = RepairOutcome(
                t=st.src.t,
                params=None,
                repaired=True,
                methods=(*st.methods, "dropped"),
                butterfly=None,
                calendar=None,
                raw_min_g=st.raw_min_g,
                raw_calendar_gap=st.raw_gap,
                notes=tuple(st.notes),
                reason=st.reason or "could not be made arbitrage-free",
            )
            continue
        atm = _atm_vol(final, st.src.t)
        by_input[i] = RepairOutcome(
            t=st.src.t,
            params=final,
            repaired=bool(st.methods),
            methods=tuple(st.methods),
            butterfly=bf_reports[j],
            calendar=cal_reports.get(j),
            raw_min_g=st.raw_min_g,
            raw_calendar_gap=st.raw_gap,
            notes=tuple(st.notes),
            atm_move=atm - st.atm_ref if math.isfinite(st.atm_ref) else 0.0,
        )
    return [by_input[i] for i in range(len(by_input))]
