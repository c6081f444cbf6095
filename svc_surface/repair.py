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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum, auto
from typing import NamedTuple

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
    # Builds `data` when it is None and a repair needs it (most surfaces need none).
    data_of: Callable[[], RefitData] | None = None

    def with_data(self) -> SliceToRepair:
        if self.data is not None or self.data_of is None:
            return self
        return replace(self, data=self.data_of(), data_of=None)


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


class _Crossing(Enum):
    """Where a calendar crossing of a (earlier) below b (later) lies; the value names it in
    a dropped slice's reason."""

    SHORT_WING = "short_wing"  # outside a's quoted range: a's wing is extrapolation
    LONG_WING = "long_wing"  # inside a's quotes, beyond b's last quote
    CONFLICT = "conflict"  # inside both quoted ranges: the data disagree


class _Verdict(Enum):
    """What _resolve_calendar did with the pair."""

    RESOLVED = auto()  # the params of a and/or b were updated: the pair no longer crosses
    DROP_A = auto()  # a is not published (its reason is set)
    DROP_B = auto()  # b is not published (its reason is set)


class _Move(NamedTuple):
    """A candidate resolution: new params of a and of b (None: unchanged)."""

    a: RawSvi | None
    b: RawSvi | None


@dataclass
class _Pair:
    """The inputs every candidate resolution of one crossing shares. pa, pb, pc: the
    params of a, b and b's later published neighbour c (b and c are final)."""

    a: _Slice
    b: _Slice
    pa: RawSvi
    pb: RawSvi
    pc: RawSvi | None
    gap: float
    k_range: tuple[float, float]
    wb: float
    memo: RefitMemo
    # Feasible starting points help the solver: b scaled down to a's ATM variance lies
    # below b everywhere; a scaled up to b's lies above a.
    scaled_a: RawSvi | None
    scaled_b: RawSvi | None
    # a's refit under b once _refit_a found one: the joint refit starts from it.
    refit_a: RawSvi | None = None


def _crossing(pair: _Pair, gap_k: float) -> _Crossing:
    viol = _violation_k(pair.pa, pair.pb, pair.k_range)
    if viol.size == 0:
        viol = np.array([gap_k])
    a, b = pair.a, pair.b
    both = (max(a.quoted[0], b.quoted[0]), min(a.quoted[1], b.quoted[1]))
    if np.any(_inside(viol, both)):
        return _Crossing.CONFLICT
    if np.any(_inside(viol, a.quoted)):
        return _Crossing.LONG_WING
    return _Crossing.SHORT_WING


def _refit_a(x: _Pair) -> _Move | None:
    """a refitted under b."""
    data = x.a.src.data
    if data is None:
        return None
    for start in [s for s in (x.a.src.warm, x.pa, x.scaled_b) if s is not None]:
        p = x.memo.single(start, data, None, x.pb, x.k_range, x.wb)
        if p is not None and x.a.atm_ok(p):
            x.refit_a = p
            return _Move(p, None)
    return None


def _refit_b(x: _Pair) -> _Move | None:
    """b refitted above a and below c."""
    data = x.b.src.data
    if data is None or (x.pc is not None and not _pair_ok(x.pa, x.pc, x.k_range)):
        return None  # nothing fits between a and c when a crosses c
    for start in [s for s in (x.b.src.warm, x.pb, x.scaled_a) if s is not None]:
        p = x.memo.single(start, data, x.pa, x.pc, x.k_range, x.wb)
        if p is not None and x.b.atm_ok(p):
            return _Move(None, p)
    return None


def _joint_refit(x: _Pair) -> _Move | None:
    """a and b refitted together (below c)."""
    if x.a.src.data is None or x.b.src.data is None:
        return None
    # Starting from a's flattened refit keeps the solve from raising b's unquoted
    # wings to meet a's unquoted ones (both cost the quotes nothing).
    starts: list[tuple[RawSvi, RawSvi]] = []
    if x.a.src.warm is not None and x.b.src.warm is not None:
        starts.append((x.a.src.warm, x.b.src.warm))
    starts.append((x.refit_a if x.refit_a is not None else x.pa, x.pb))
    datas = [x.a.src.data, x.b.src.data]
    for start_a, start_b in starts:
        out = x.memo.chain([start_a, start_b], datas, None, x.pc, x.k_range, x.wb)
        if out is not None and x.a.atm_ok(out[0]) and x.b.atm_ok(out[1]):
            return _Move(out[0], out[1])
    return None


# A parallel shift is not driven by the data: only where a quoted band bounds it.
def _shift_a(x: _Pair) -> _Move | None:
    """a shifted down in total variance until it clears b."""
    if x.a.band is None:
        return None
    p = x.pa._replace(a=x.pa.a - (-x.gap + CALENDAR_MARGIN))
    ok = valid_params(p) and min_total_variance(p) > 0.0 and x.a.atm_ok(p)
    if ok and _butterfly_ok(p, x.k_range, x.wb) and _pair_ok(p, x.pb, x.k_range):
        return _Move(p, None)
    return None


def _lift_b(x: _Pair) -> _Move | None:
    """b lifted above a (and still below c)."""
    if x.b.band is None:
        return None
    p = lift_for_calendar(x.pa, x.pb, x.k_range)
    if not (x.b.atm_ok(p) and _butterfly_ok(p, x.k_range, x.wb) and _pair_ok(x.pa, p, x.k_range)):
        return None
    if x.pc is not None and not _pair_ok(p, x.pc, x.k_range):
        return None
    return _Move(None, p)


_Plan = Callable[[_Pair], _Move | None]

# The refits tried for each kind of crossing, preferred first, and the method each
# reports. A crossing in a's extrapolation never raises b alone: b's unquoted wing would
# be made to follow a's unquoted one.
_REFITS: dict[_Crossing, tuple[tuple[_Plan, str], ...]] = {
    _Crossing.SHORT_WING: (
        (_refit_a, "calendar_wing_refit"),
        (_joint_refit, "calendar_joint_refit"),
    ),
    _Crossing.LONG_WING: (
        (_refit_b, "calendar_wing_refit"),
        (_joint_refit, "calendar_joint_refit"),
        (_refit_a, "calendar_refit"),
    ),
    _Crossing.CONFLICT: (
        (_joint_refit, "calendar_joint_refit"),
        (_refit_a, "calendar_refit"),
        (_refit_b, "calendar_refit"),
    ),
}
# The last resort when no refit works: the first parallel shift that does.
_SHIFTS: dict[_Crossing, tuple[tuple[_Plan, str], ...]] = {
    _Crossing.SHORT_WING: ((_shift_a, "calendar_shift"), (_lift_b, "calendar_lift")),
    _Crossing.LONG_WING: ((_lift_b, "calendar_lift"), (_shift_a, "calendar_shift")),
    _Crossing.CONFLICT: ((_shift_a, "calendar_shift"), (_lift_b, "calendar_lift")),
}


def _cost(x: _Pair, move: _Move) -> float:
    """What a move costs the quotes: the change of the data objectives."""
    total = 0.0
    for s, p, new in ((x.a, x.pa, move.a), (x.b, x.pb, move.b)):
        if new is not None and s.src.data is not None:
            total += _objective(new, s.src.data) - _objective(p, s.src.data)
    return total


def _keeps_bands(x: _Pair, move: _Move) -> bool:
    """No quote ends up further outside its bid/ask band than before (moves inside the
    bands are free: a fit inside the band is perfect)."""
    for s, p, new in ((x.a, x.pa, move.a), (x.b, x.pb, move.b)):
        if new is not None and s.src.data is not None:
            before, after = _band_miss(p, s.src.data), _band_miss(new, s.src.data)
            if after > before + 0.01 * (1.0 + before):
                return False
    return True


def _choose(x: _Pair, kind: _Crossing) -> tuple[str, _Move] | None:
    """The preferred refit when it keeps the quotes inside their bands; otherwise every
    refit competes and the one that costs the quotes least wins (minimal change weighted
    by the data); failing every refit, the first parallel shift that works; None when
    nothing does. Returns the method and the move."""
    found: list[tuple[float, str, _Move]] = []
    for n_tried, (plan, method) in enumerate(_REFITS[kind]):
        move = plan(x)
        if move is None:
            continue
        found.append((_cost(x, move), method, move))
        if n_tried == 0 and _keeps_bands(x, move):
            break
    if found:
        _, method, move = min(found, key=lambda f: f[0])
        return method, move
    for plan, method in _SHIFTS[kind]:
        move = plan(x)
        if move is not None:
            return method, move
    return None


def _describe(kind: _Crossing, a: _Slice, b: _Slice) -> str:
    if kind is _Crossing.SHORT_WING:
        return f"crossing outside its quotes {_fmt_range(a.quoted)}"
    if kind is _Crossing.LONG_WING:
        return f"crossing beyond {b.label}'s quotes {_fmt_range(b.quoted)}"
    return "crossing inside both quoted ranges (data conflict)"


def _weakness(s: _Slice) -> tuple[int, float]:
    """Larger: less informed (fewer quotes; then the wider ATM band)."""
    width = s.band[1] - s.band[0] if s.band is not None else math.inf
    return (-s.n_quotes(), width)


def _resolve_calendar(
    a: _Slice,
    b: _Slice,
    c: _Slice | None,
    gap: float,
    gap_k: float,
    k_range: tuple[float, float],
    wb: float,
    memo: RefitMemo,
) -> _Verdict:
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
    within its quotes' band (_REFITS, _SHIFTS, _choose). When nothing is, the less
    informed slice is dropped, with the reason."""
    pa, pb = a.params, b.params
    assert pa is not None and pb is not None
    w_a0, w_b0 = float(total_variance(pa, 0.0)), float(total_variance(pb, 0.0))
    scalable = 0.0 < w_a0 < w_b0
    pair = _Pair(
        a=a,
        b=b,
        pa=pa,
        pb=pb,
        pc=c.params if c is not None else None,
        gap=gap,
        k_range=k_range,
        wb=wb,
        memo=memo,
        scaled_a=_scaled(pa, w_b0 / w_a0) if scalable else None,
        scaled_b=_scaled(pb, w_a0 / w_b0) if scalable else None,
    )
    kind = _crossing(pair, gap_k)
    chosen = _choose(pair, kind)
    if chosen is None:
        # Nothing arbitrage-free keeps both within their quotes.
        weaker, other = (a, b) if _weakness(a) >= _weakness(b) else (b, a)
        weaker.reason = (
            f"calendar crossing with {other.label} ({kind.value}, gap {gap:.3g} at "
            f"k={gap_k:.3f}) cannot be removed within the quotes' ATM band"
        )
        return _Verdict.DROP_A if weaker is a else _Verdict.DROP_B
    method, move = chosen
    desc = _describe(kind, a, b)
    for s, other, new in ((a, b, move.a), (b, a, move.b)):
        if new is not None:
            s.methods.append(method)
            s.notes.append(
                f"calendar vs {other.label} gap {gap:.3g} at k={gap_k:.3f}: {desc}; "
                f"{_move_note(s, new)}"
            )
            s.params = new
    return _Verdict.RESOLVED


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
    ordered = [s.with_data() for s in ordered]
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
            if verdict is _Verdict.RESOLVED:
                published.append(pos)
                break
            if verdict is _Verdict.DROP_A:
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
