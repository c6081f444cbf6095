"""Butterfly and calendar checks, the repair primitives and the constrained refit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from svc_surface import arbitrage
from svc_surface.arbitrage import (
    butterfly_check,
    calendar_check_surface,
    gj_butterfly_repair,
    lift_for_calendar,
)
from svc_surface.refit import RefitData, constrained_refit
from tests.surface.builders import g_independent
from volmath.svi import RawSvi, raw_to_jw, total_variance

Array = NDArray[np.float64]

VOGT = RawSvi(a=-0.0410, b=0.1331, rho=0.3060, m=0.3586, sigma=0.4153)


def test_detects_vogt_butterfly() -> None:
    report = butterfly_check(VOGT)
    assert not report.arbitrage_free
    assert report.wing_ok and report.positive_variance
    assert report.min_g == pytest.approx(-0.03286, abs=5e-4)
    assert report.k_at_min_g == pytest.approx(0.879, abs=0.01)
    assert len(report.negative_intervals) == 1
    left, right = report.negative_intervals[0]
    assert left == pytest.approx(0.642, abs=0.01)
    assert right == pytest.approx(1.257, abs=0.01)


def test_gatheral_jacquier_repair_of_vogt() -> None:
    repaired = gj_butterfly_repair(VOGT, 1.0)
    assert repaired is not None
    k = np.linspace(-5.0, 5.0, 200_001)
    assert float(np.min(g_independent(repaired, k))) >= 0.0
    assert float(total_variance(repaired, 0.0)) == pytest.approx(
        float(total_variance(VOGT, 0.0)), abs=1e-14
    )
    before, after = raw_to_jw(VOGT, 1.0), raw_to_jw(repaired, 1.0)
    assert after.psi == pytest.approx(before.psi, abs=1e-12)
    assert after.p == pytest.approx(before.p, abs=1e-12)
    assert after.c == pytest.approx(before.p + 2 * before.psi, abs=1e-12)
    assert butterfly_check(repaired, (-5.0, 5.0)).arbitrage_free


def test_wing_bound_is_checked_analytically() -> None:
    # g >= 0 on [-3, 3] but the call wing slope b (1 + rho) = 2.2 > 2 breaks Lee's bound.
    steep = RawSvi(a=0.5, b=1.1, rho=1.0 - 1e-9, m=10.0, sigma=0.5)
    report = butterfly_check(steep)
    assert report.min_g >= 0.0
    assert not report.wing_ok
    assert not report.arbitrage_free


def test_calendar_violation_per_pair() -> None:
    short = RawSvi(0.02, 0.1, -0.3, 0.0, 0.1)
    long_ok = RawSvi(0.04, 0.12, -0.3, 0.0, 0.12)
    long_bad = RawSvi(0.01, 0.2, -0.3, 0.0, 0.12)  # below long_ok near the money only
    reports = calendar_check_surface([(0.1, short), (0.2, long_ok), (0.3, long_bad)])
    assert [r.arbitrage_free for r in reports] == [True, False]
    bad = reports[1]
    k = np.linspace(-3, 3, 60_001)
    gap = total_variance(long_bad, k) - total_variance(long_ok, k)
    assert bad.min_gap == pytest.approx(float(gap.min()), abs=1e-9)
    assert bad.k_at_min_gap == pytest.approx(float(k[np.argmin(gap)]), abs=1e-3)


def test_lift_removes_the_calendar_crossing_minimally() -> None:
    short = RawSvi(0.02, 0.1, -0.3, 0.0, 0.1)
    long = RawSvi(0.015, 0.12, -0.3, 0.0, 0.12)
    lifted = lift_for_calendar(short, long)
    k = np.linspace(-3, 3, 60_001)
    gap = total_variance(lifted, k) - total_variance(short, k)
    assert gap.min() >= 0.0
    assert gap.min() < 1e-6  # minimal: touches the earlier slice
    assert lifted._replace(a=long.a) == long


def test_constrained_refit_fixes_vogt_and_stays_close() -> None:
    k = np.linspace(-0.8, 1.6, 25)
    data = RefitData(k=k, target_w=total_variance(VOGT, k), weight=np.ones_like(k))
    fixed = constrained_refit(VOGT, data)
    assert fixed is not None
    grid = np.linspace(-3, 3, 60_001)
    assert g_independent(fixed, grid).min() >= 0.0
    # Arbitrage costs some fit, but far less than the ATM-preserving jump-wings repair.
    gj = gj_butterfly_repair(VOGT, 1.0)
    assert gj is not None

    def rmse(p: RawSvi) -> float:
        return float(np.sqrt(np.mean((total_variance(p, k) - data.target_w) ** 2)))

    assert rmse(fixed) < 0.25 * rmse(gj)
    assert rmse(fixed) < 3e-3


def test_atm_band_interpolates_the_quotes_around_the_money() -> None:
    t = 0.1
    k = np.array([-0.2, -0.05, 0.05, 0.2])
    vol = np.array([0.7, 0.6, 0.58, 0.65])
    half = np.array([0.02, 0.01, 0.03, 0.02])
    data = RefitData(
        k=k,
        target_w=vol**2 * t,
        weight=np.ones(4),
        lo_w=(vol - half) ** 2 * t,
        hi_w=(vol + half) ** 2 * t,
    )
    lo, hi = data.atm_band(t) or (math.nan, math.nan)
    assert lo == pytest.approx(0.5 * (0.59 + 0.55))
    assert hi == pytest.approx(0.5 * (0.61 + 0.61))
    assert data.quoted_range() == (-0.2, 0.2)
    assert RefitData(k=k, target_w=vol**2 * t, weight=np.ones(4)).atm_band(t) is None


def test_remembered_checks_equal_fresh_ones_and_only_moved_slices_are_rechecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slices = [
        RawSvi(0.01 * (1 + i), 0.1, -0.3 + 0.1 * i, 0.02 * i, 0.1 + 0.05 * i) for i in range(4)
    ]
    arbitrage._BUTTERFLY_MEMO.clear()
    arbitrage._CALENDAR_MEMO.clear()
    g_fresh, k_fresh = arbitrage.butterfly_min_batch(slices)
    gap_fresh, gk_fresh = arbitrage.calendar_gap_batch(slices[:-1], slices[1:])
    computed: list[int] = []
    inner = arbitrage._min_rows

    def counting(
        fn: arbitrage._RowFn, grid: Array, steps: Array, k_range: tuple[float, float]
    ) -> tuple[Array, Array]:
        computed.append(grid.shape[0])
        return inner(fn, grid, steps, k_range)

    monkeypatch.setattr(arbitrage, "_min_rows", counting)
    g, k = arbitrage.butterfly_min_batch(slices)
    gap, gk = arbitrage.calendar_gap_batch(slices[:-1], slices[1:])
    assert computed == []  # nothing moved: all remembered
    np.testing.assert_array_equal(g, g_fresh)
    np.testing.assert_array_equal(k, k_fresh)
    np.testing.assert_array_equal(gap, gap_fresh)
    np.testing.assert_array_equal(gk, gk_fresh)
    moved = [*slices[:2], slices[2]._replace(a=slices[2].a + 1e-4), slices[3]]
    g2, _ = arbitrage.butterfly_min_batch(moved)
    gap2, _ = arbitrage.calendar_gap_batch(moved[:-1], moved[1:])
    assert computed == [1, 2]  # the moved slice, and the two pairs it is part of
    arbitrage._BUTTERFLY_MEMO.clear()
    arbitrage._CALENDAR_MEMO.clear()
    monkeypatch.setattr(arbitrage, "_min_rows", inner)
    g3, _ = arbitrage.butterfly_min_batch(moved)
    gap3, _ = arbitrage.calendar_gap_batch(moved[:-1], moved[1:])
    np.testing.assert_array_equal(g2, g3)
    np.testing.assert_array_equal(gap2, gap3)
