"""Butterfly and calendar checks and repairs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from svc_surface.arbitrage import (
    RefitData,
    SliceToRepair,
    butterfly_check,
    calendar_check,
    calendar_check_surface,
    constrained_refit,
    gj_butterfly_repair,
    lift_for_calendar,
    repair_surface,
)
from svc_surface.svi import RawSvi, raw_to_jw, total_variance

VOGT = RawSvi(a=-0.0410, b=0.1331, rho=0.3060, m=0.3586, sigma=0.4153)


def g_independent(p: RawSvi, k: np.ndarray) -> np.ndarray:
    """Durrleman's g written out again, not through svc_surface.svi."""
    x = k - p.m
    r = np.sqrt(x * x + p.sigma**2)
    w = p.a + p.b * (p.rho * x + r)
    w1 = p.b * (p.rho + x / r)
    w2 = p.b * p.sigma**2 / r**3
    return (1 - k * w1 / (2 * w)) ** 2 - w1**2 / 4 * (1 / w + 0.25) + w2 / 2


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


def test_repair_surface_publishes_only_arbitrage_free_slices() -> None:
    short = RawSvi(0.02, 0.1, -0.3, 0.0, 0.1)
    crossing = RawSvi(0.015, 0.12, -0.3, 0.0, 0.12)
    k = np.linspace(-0.5, 0.5, 21)
    data = RefitData(k=k, target_w=total_variance(crossing, k), weight=np.ones_like(k))
    outcomes = repair_surface(
        [
            SliceToRepair(t=1.0, params=VOGT),
            SliceToRepair(t=0.1, params=short),
            SliceToRepair(t=0.2, params=crossing, data=data),
        ]
    )
    # Input order is kept; the Vogt slice (T = 1) gets the jump-wings repair.
    assert outcomes[0].repaired and outcomes[0].methods[0] == "butterfly_jw"
    assert not outcomes[1].repaired
    assert outcomes[2].repaired and outcomes[2].methods[0].startswith("calendar_")
    published = sorted(
        ((o.t, o.params) for o in outcomes if o.params is not None), key=lambda x: x[0]
    )
    assert len(published) == 3
    grid = np.linspace(-3, 3, 20_001)
    for _, p in published:
        assert g_independent(p, grid).min() >= 0.0
    for (_, p0), (_, p1) in itertools.pairwise(published):
        assert (total_variance(p1, grid) - total_variance(p0, grid)).min() >= 0.0


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
