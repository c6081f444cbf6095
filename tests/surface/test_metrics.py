"""Smile metrics, delta strikes, tenors, nodes and the 30-day index."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from svc_surface.metrics import (
    FORWARD,
    PREMIUM_ADJUSTED,
    SmileSet,
    delta_nodes_batch,
    interpolate_tenors,
    k_at_delta,
    node_layout,
    smile_metrics,
    strike_at_delta,
    variance_swap_vol,
    vol_index,
)
from volmath import black76
from volmath.svi import RawSvi, implied_vol

SLICE = RawSvi(a=0.018, b=0.09, rho=-0.10, m=0.0, sigma=0.08)
T = 30 / 365
F = 60_000.0


def flat(vol: float, t: float) -> RawSvi:
    return RawSvi(a=vol * vol * t, b=0.0, rho=0.0, m=0.0, sigma=0.1)


def test_quant_reference_forward_delta() -> None:
    assert strike_at_delta(SLICE, T, F, 0.25) == pytest.approx(68_592.78, abs=0.01)
    assert strike_at_delta(SLICE, T, F, -0.25) == pytest.approx(54_141.08, abs=0.01)
    m = smile_metrics(SLICE, T, FORWARD)
    assert m.atm_vol == pytest.approx(0.553715, abs=1e-6)
    assert m.rr25 == pytest.approx(0.001833, abs=1e-6)
    assert m.bf25 == pytest.approx(0.057812, abs=1e-6)
    assert m.convention == FORWARD


def test_quant_reference_premium_adjusted() -> None:
    m = smile_metrics(SLICE, T, PREMIUM_ADJUSTED)
    assert m.rr25 == pytest.approx(-0.023022, abs=1e-6)
    assert m.atm_vol == pytest.approx(0.553715, abs=1e-6)
    assert m.convention == PREMIUM_ADJUSTED


def _vol(k: float) -> float:
    return float(implied_vol(SLICE, k, T))


def _fwd_delta(k: float, call: bool) -> float:
    return float(black76.forward_delta(F, F * math.exp(k), T, _vol(k), call))


def _pa_delta(k: float, call: bool) -> float:
    return float(black76.premium_adjusted_delta(F, F * math.exp(k), T, _vol(k), call))


@pytest.mark.parametrize("delta", [0.05, 0.10, 0.25, 0.45, -0.05, -0.10, -0.25, -0.45])
def test_delta_strikes_against_brent_and_black76(delta: float) -> None:
    call = delta > 0
    k_fwd = k_at_delta(SmileSet.from_slices([SLICE], [T]), [delta], FORWARD)[0]
    oracle = brentq(lambda k: _fwd_delta(k, call) - delta, -3.0, 3.0, xtol=1e-14)
    assert k_fwd == pytest.approx(oracle, abs=1e-10)
    k_pa = k_at_delta(SmileSet.from_slices([SLICE], [T]), [delta], PREMIUM_ADJUSTED)[0]
    assert _pa_delta(k_pa, call) == pytest.approx(delta, abs=1e-12)
    if call and delta <= 0.25:
        assert k_pa > 0.0  # solved on K > F (the PA call delta is not monotone)


def test_premium_adjusted_call_picks_the_right_branch() -> None:
    # High vol, long maturity: the PA call delta peaks (~0.274) at K < F; 0.25 is
    # reached on both sides of the peak.
    p = flat(1.2, 1.0)
    ks = np.linspace(-4, 3, 70_001)
    pa = black76.premium_adjusted_delta(1.0, np.exp(ks), 1.0, 1.2, True)
    peak = ks[np.argmax(pa)]
    assert peak < 0.0
    assert float(np.max(pa)) == pytest.approx(0.2743, abs=1e-3)
    left = ks[(ks < peak) & (pa > 0.25)][0]
    k = k_at_delta(SmileSet.from_slices([p], [1.0]), [0.25], PREMIUM_ADJUSTED)[0]
    assert k > peak > left
    assert float(black76.premium_adjusted_delta(1.0, math.exp(k), 1.0, 1.2, True)) == (
        pytest.approx(0.25, abs=1e-12)
    )
    # Above the maximum there is no such strike.
    too_high = k_at_delta(SmileSet.from_slices([p], [1.0]), [0.28], PREMIUM_ADJUSTED)[0]
    assert math.isnan(too_high)


def test_thirty_day_interpolation_in_total_variance() -> None:
    tenors, smiles = interpolate_tenors(
        [28 / 365, 35 / 365], [flat(0.55, 28 / 365), flat(0.58, 35 / 365)], [F, F], [30]
    )
    assert tenors[0].available
    assert float(smiles.vol(np.zeros(1))[0]) == pytest.approx(0.560179, abs=1e-6)


def test_tenors_are_never_extrapolated() -> None:
    ts = [7 / 365, 30 / 365]
    tenors, smiles = interpolate_tenors(
        ts, [flat(0.5, ts[0]), flat(0.6, ts[1])], [F, F * 1.01], [1, 7, 14, 30, 60], spot=F
    )
    assert [t.available for t in tenors] == [False, True, True, True, False]
    assert len(smiles) == 3
    assert math.isnan(tenors[0].forward)
    # The forward interpolates the annualised basis: exact at the expiries.
    assert tenors[3].forward == pytest.approx(F * 1.01, rel=1e-12)
    assert tenors[1].forward == pytest.approx(F, rel=1e-12)
    basis = math.log(1.01) / (30 / 365)
    b14 = 0.0 + (basis - 0.0) * (14 - 7) / (30 - 7)
    assert tenors[2].forward == pytest.approx(F * math.exp(b14 * 14 / 365), rel=1e-12)


def test_delta_nodes_layout_and_values() -> None:
    labels = [label for label, _ in node_layout()]
    assert labels[0] == "5P" and labels[9] == "ATM" and labels[-1] == "5C" and len(labels) == 19
    nodes = delta_nodes_batch(SmileSet.from_slices([SLICE], [T]), [F], FORWARD)[0]
    for node in nodes:
        if node.label == "ATM":
            assert node.strike == pytest.approx(F)
            assert node.vol == pytest.approx(_vol(0.0), abs=1e-12)
            continue
        call = node.delta > 0
        k = math.log(node.strike / F)
        assert node.vol == pytest.approx(_vol(k), abs=1e-12)
        assert _fwd_delta(k, call) == pytest.approx(node.delta, abs=1e-10)
    strikes = [n.strike for n in nodes]
    assert strikes == sorted(strikes)


def test_variance_swap_of_a_flat_smile_is_its_vol() -> None:
    s = SmileSet.from_slices([flat(0.6, T)], [T])
    sd = 0.6 * math.sqrt(T)
    wide = variance_swap_vol(s, [-12 * sd], [12 * sd], points=4001)[0]
    assert wide == pytest.approx(0.6, abs=1e-4)
    narrow = variance_swap_vol(s, [-1 * sd], [1 * sd])[0]
    assert narrow < 0.6  # truncated strike range under-replicates, like the VIX


def test_vol_index_brackets_thirty_days() -> None:
    sd = 0.7 * math.sqrt(0.2)
    rng = (-10 * sd, 10 * sd)
    ts = [21 / 365, 35 / 365, 60 / 365]
    ps = [flat(0.50, ts[0]), flat(0.60, ts[1]), flat(0.70, ts[2])]
    idx = vol_index(ts, ps, [rng] * 3)
    w21, w35 = 0.5**2 * ts[0], 0.6**2 * ts[1]
    expected = math.sqrt((w21 + (w35 - w21) * (30 - 21) / (35 - 21)) / (30 / 365))
    assert idx == pytest.approx(expected, abs=2e-4)
    assert math.isnan(vol_index(ts[1:], ps[1:], [rng] * 2))  # nothing below 30 days
    assert math.isnan(vol_index(ts[:1], ps[:1], [rng]))  # nothing above


def test_skewed_smile_metrics_signs() -> None:
    put_skew = RawSvi(a=0.02, b=0.1, rho=-0.6, m=0.0, sigma=0.1)
    m = smile_metrics(put_skew, T)
    assert m.rr25 < 0 and m.rr10 < m.rr25 and m.bf25 > 0


def test_forward_delta_oracle_with_scipy_norm() -> None:
    # Independent check of the call strike at 25 delta: N(d1) = 0.25 with the smile vol.
    k = math.log(strike_at_delta(SLICE, T, F, 0.25) / F)
    v = _vol(k)
    d1 = (-k + 0.5 * v * v * T) / (v * math.sqrt(T))
    assert norm.cdf(d1) == pytest.approx(0.25, abs=1e-12)
