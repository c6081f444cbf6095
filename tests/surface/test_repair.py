"""The surface repair policy: what a crossing or a negative g changes, and what not."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import least_squares

from svc_surface.arbitrage import butterfly_check, calendar_check, gj_butterfly_repair
from svc_surface.refit import RefitData
from svc_surface.repair import RepairOutcome, SliceToRepair, repair_surface
from tests.surface.builders import g_independent
from tests.surface.synthetic import crypto_like_slice
from volmath.svi import RawSvi, total_variance

VOGT = RawSvi(a=-0.0410, b=0.1331, rho=0.3060, m=0.3586, sigma=0.4153)


def quoted(p: RawSvi, t: float, k: np.ndarray, half_spread: float = 0.01) -> RefitData:
    """Quotes on p at k with a bid/ask band of +-half_spread in vol."""
    vol = np.sqrt(total_variance(p, k) / t)
    return RefitData(
        k=k,
        target_w=vol * vol * t,
        weight=np.ones_like(k),
        lo_w=(vol - half_spread) ** 2 * t,
        hi_w=(vol + half_spread) ** 2 * t,
    )


def atm_vol(p: RawSvi, t: float) -> float:
    return float(np.sqrt(total_variance(p, 0.0) / t))


def outside_band_vol(p: RawSvi, t: float, data: RefitData) -> float:
    """Largest distance of the slice's vol outside a quote's band."""
    assert data.lo_w is not None and data.hi_w is not None
    vol = np.sqrt(total_variance(p, data.k) / t)
    lo, hi = np.sqrt(data.lo_w / t), np.sqrt(data.hi_w / t)
    return float(np.max(np.maximum(lo - vol, 0.0) + np.maximum(vol - hi, 0.0)))


def assert_arbitrage_free(outcomes: list[RepairOutcome]) -> None:
    published = sorted(
        ((o.t, o.params) for o in outcomes if o.params is not None), key=lambda x: x[0]
    )
    grid = np.linspace(-3, 3, 20_001)
    for _, p in published:
        assert g_independent(p, grid).min() >= 0.0
    for (_, p0), (_, p1) in itertools.pairwise(published):
        assert (total_variance(p1, grid) - total_variance(p0, grid)).min() >= 0.0


def test_repair_surface_publishes_only_arbitrage_free_slices() -> None:
    short = RawSvi(0.004, 0.01, -0.3, 0.0, 0.1)
    crossing = RawSvi(0.003, 0.012, -0.3, 0.0, 0.12)  # below `short` near the money
    k = np.linspace(-0.3, 0.3, 13)
    outcomes = repair_surface(
        [
            SliceToRepair(t=1.0, params=VOGT),
            SliceToRepair(t=0.1, params=short, data=quoted(short, 0.1, k, 0.02)),
            SliceToRepair(t=0.2, params=crossing, data=quoted(crossing, 0.2, k, 0.02)),
        ]
    )
    # Input order is kept; the Vogt slice (T = 1, no quotes) gets the jump-wings repair.
    assert outcomes[0].repaired and outcomes[0].methods[0] == "butterfly_jw"
    # The crossing sits where both are quoted: a data conflict, resolved by refitting.
    for o in outcomes[1:]:
        assert o.repaired and all(m.startswith("calendar_") for m in o.methods), o.methods
        assert any("data conflict" in n for n in o.notes), o.notes
    assert all(o.params is not None for o in outcomes)
    assert_arbitrage_free(outcomes)


def steep_wing_fit(k: np.ndarray, t: float, truth: RawSvi) -> RawSvi:
    """A slice that matches truth's quotes on k to within 1 vol point but extrapolates a
    steep call wing (what a 5-parameter fit to a narrow range of quotes can do)."""
    target = np.sqrt(total_variance(truth, k) / t)

    def resid(x: np.ndarray) -> np.ndarray:
        w = total_variance(RawSvi(*(float(v) for v in x)), k)
        return np.asarray(np.sqrt(np.maximum(w, 1e-12) / t) - target)

    x0 = np.array([*truth[:2], 0.7, *truth[3:]])
    fit = least_squares(resid, x0, bounds=([-1, 0, 0.6, -0.5, 0.01], [1, 2, 0.95, 0.5, 1]))
    assert float(np.max(np.abs(resid(fit.x)))) < 0.01
    return RawSvi(*(float(v) for v in fit.x))


def test_far_wing_crossing_flattens_the_earlier_slices_wing_only() -> None:
    t1, t2 = 2 / 365, 3 / 365
    long = crypto_like_slice(t2, 0.52)
    k1, k2 = np.linspace(-0.1, 0.1, 21), np.linspace(-0.12, 0.12, 25)
    short = steep_wing_fit(k1, t1, crypto_like_slice(t1, 0.50))
    # Calendar-free where quoted, crossing far out in the call wing.
    assert calendar_check(t1, short, t2, long, (-0.12, 0.12)).arbitrage_free
    crossing = calendar_check(t1, short, t2, long)
    assert not crossing.arbitrage_free and crossing.k_at_min_gap > 0.5
    d1, d2 = quoted(short, t1, k1), quoted(long, t2, k2)
    out = repair_surface([SliceToRepair(t1, short, d1, "2d"), SliceToRepair(t2, long, d2, "3d")])
    assert out[1].params == long and not out[1].repaired  # the later slice is untouched
    assert out[0].params is not None and "calendar_wing_refit" in out[0].methods
    assert any("outside its quotes" in n for n in out[0].notes), out[0].notes
    # The repair moved what the quotes do not pin down: still inside every band, ATM
    # within a fraction of the half spread.
    assert outside_band_vol(out[0].params, t1, d1) < 1e-4
    assert abs(out[0].atm_move) < 0.005
    assert out[0].atm_move == pytest.approx(atm_vol(out[0].params, t1) - atm_vol(short, t1))
    assert_arbitrage_free(out)


def test_crossing_beyond_the_later_slices_last_quote_raises_that_wing() -> None:
    t1, t2 = 20 / 365, 27 / 365
    short = crypto_like_slice(t1, 0.60)
    # The later slice's quotes stop at k = 0.15; its fit bends flat beyond them, below
    # the earlier slice's quotes around k = 0.4.
    long = RawSvi(0.0254351, 0.03, -0.8, 0.0, 0.1)
    k1, k2 = np.linspace(-0.45, 0.45, 19), np.linspace(-0.15, 0.15, 13)
    assert calendar_check(t1, short, t2, long, (-0.15, 0.15)).arbitrage_free
    report = calendar_check(t1, short, t2, long, (-0.45, 0.45))
    assert not report.arbitrage_free and report.k_at_min_gap > 0.3
    d1, d2 = quoted(short, t1, k1), quoted(long, t2, k2)
    # (Checked on |k| <= 0.5 here: further out both wings are unquoted extrapolation.)
    out = repair_surface(
        [SliceToRepair(t1, short, d1, "a"), SliceToRepair(t2, long, d2, "b")], (-0.5, 0.5)
    )
    assert out[0].params == short and not out[0].repaired  # pinned by its quotes
    assert out[1].params is not None and "calendar_wing_refit" in out[1].methods
    assert any("beyond b's quotes" in n for n in out[1].notes), out[1].notes
    assert outside_band_vol(out[1].params, t2, d2) < 1e-4
    assert abs(out[1].atm_move) < 0.005
    grid = np.linspace(-0.5, 0.5, 10_001)
    assert g_independent(out[1].params, grid).min() >= 0.0
    assert (total_variance(out[1].params, grid) - total_variance(short, grid)).min() >= 0.0


def test_no_constant_lift_beyond_the_atm_band_the_worse_slice_is_dropped() -> None:
    # Quotes that contradict each other at the money: the earlier expiry's ATM total
    # variance is above the later one's, both with tight bands. Anything arbitrage-free
    # moves an ATM vol out of its band, so one slice is not published, with the reason.
    t1, t2 = 10 / 365, 12 / 365
    early = crypto_like_slice(t1, 0.70)
    late = crypto_like_slice(t2, 0.55)
    k1, k2 = np.linspace(-0.2, 0.2, 11), np.linspace(-0.2, 0.2, 21)
    d1, d2 = quoted(early, t1, k1, 0.002), quoted(late, t2, k2, 0.002)
    out = repair_surface([SliceToRepair(t1, early, d1, "a"), SliceToRepair(t2, late, d2, "b")])
    dropped = [o for o in out if o.params is None]
    assert len(dropped) == 1 and out[0].params is None  # fewer quotes: the worse slice
    assert "ATM band" in dropped[0].reason and "b" in dropped[0].reason
    assert out[1].params == late
    for o, d, t in ((out[1], d2, t2),):
        band = d.atm_band(t)
        assert band is not None and o.params is not None
        assert band[0] <= atm_vol(o.params, t) <= band[1]


def test_butterfly_repair_of_a_one_day_slice_keeps_its_quotes() -> None:
    # A one-day fit that matches its quotes but has a steep call wing with g < 0 just
    # beyond them (seen on simulator data). The jump-wings repair keeps v, psi and p and
    # would drag the smile off its quotes; the constrained refit stays on them.
    t = 1.04 / 365
    fit = RawSvi(-0.0014945, 0.0966305, 0.8457529, 0.0788613, 0.0411157)
    k = np.linspace(-0.05, 0.038, 21)
    data = quoted(fit, t, k, 0.04)
    assert not butterfly_check(fit).arbitrage_free

    def rmse_bp(p: RawSvi) -> float:
        vol, mid = np.sqrt(total_variance(p, k) / t), np.sqrt(data.target_w / t)
        return float(np.sqrt(np.mean((vol - mid) ** 2))) * 1e4

    gj = gj_butterfly_repair(fit, t)
    assert gj is not None and rmse_bp(gj) > 100.0
    [out] = repair_surface([SliceToRepair(t, fit, data, "1d")])
    assert out.params is not None and out.methods == ("butterfly_refit",)
    assert butterfly_check(out.params).arbitrage_free
    assert rmse_bp(out.params) < 20.0 and outside_band_vol(out.params, t, data) < 1e-4
    assert abs(out.atm_move) < 0.005
    assert_arbitrage_free([out])


def test_clean_surface_is_not_touched() -> None:
    slices = [
        SliceToRepair(t=0.1, params=RawSvi(0.02, 0.1, -0.3, 0.0, 0.1)),
        SliceToRepair(t=0.2, params=RawSvi(0.04, 0.12, -0.3, 0.0, 0.12)),
    ]
    outcomes = repair_surface(slices)
    assert [o.repaired for o in outcomes] == [False, False]
    assert [o.params for o in outcomes] == [s.params for s in slices]
    assert outcomes[1].calendar is not None and outcomes[1].calendar.arbitrage_free
    direct = calendar_check(0.1, slices[0].params, 0.2, slices[1].params)
    assert outcomes[1].calendar.min_gap == pytest.approx(direct.min_gap, abs=1e-15)
