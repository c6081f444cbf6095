"""Quasi-explicit SVI calibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from svc_surface.fit import (
    FitConfig,
    SliceData,
    WingCaps,
    fit_svi_slice,
    fit_svi_slices,
    wing_slopes,
)
from volmath.svi import RawSvi, implied_vol, min_total_variance, total_variance

TRUTH = RawSvi(a=0.018, b=0.09, rho=-0.10, m=0.0, sigma=0.08)
T = 30 / 365
K = np.linspace(-0.45, 0.45, 31)
NO_BAND = np.full(K.size, np.nan)


def mid_only(vols: np.ndarray, k: np.ndarray = K, t: float = T) -> SliceData:
    nan = np.full(k.size, np.nan)
    return SliceData(t=t, k=k, mid_vol=vols, bid_vol=nan, ask_vol=nan, vol_weight=np.ones(k.size))


def test_noise_free_recovery_to_1e8() -> None:
    result = fit_svi_slice(mid_only(implied_vol(TRUTH, K, T)))
    for got, want in zip(result.params, TRUTH, strict=True):
        assert got == pytest.approx(want, abs=1e-8)
    assert result.rmse_bp < 1e-6
    assert not result.warm_start


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_20bp_noise_rmse_within_25bp(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth_vol = implied_vol(TRUTH, K, T)
    noisy = truth_vol + rng.normal(0.0, 0.0020, K.size)
    result = fit_svi_slice(mid_only(noisy))
    assert result.rmse_bp <= 25.0
    # And the fit is closer to the truth than the quotes are.
    assert np.sqrt(np.mean((result.fitted_vol - truth_vol) ** 2)) * 1e4 < 20.0
    # Residuals are reported per quote as fitted - mid in basis points.
    np.testing.assert_allclose(result.residuals_bp, (result.fitted_vol - noisy) * 1e4)


def test_matches_a_local_least_squares_optimum() -> None:
    rng = np.random.default_rng(7)
    noisy = implied_vol(TRUTH, K, T) + rng.normal(0.0, 0.003, K.size)
    ours = fit_svi_slice(mid_only(noisy))
    w = noisy**2 * T
    sqrt_om = 1.0 / (2.0 * noisy * T)

    def resid(x: np.ndarray) -> np.ndarray:
        return sqrt_om * (total_variance(RawSvi(*x), K) - w)

    polished = least_squares(resid, np.array(ours.params), method="lm", xtol=1e-15)
    ours_cost = float(np.sum(resid(np.array(ours.params)) ** 2))
    assert ours_cost <= float(np.sum(polished.fun**2)) * (1 + 1e-9)


def test_fit_stays_in_the_constrained_domain() -> None:
    # Quotes from a smile whose wings are steeper than Lee allows: the fit must clip.
    steep = RawSvi(a=0.01, b=1.5, rho=0.6, m=0.0, sigma=0.05)
    k = np.linspace(-0.6, 0.6, 25)
    result = fit_svi_slice(mid_only(implied_vol(steep, k, 1.0), k, 1.0))
    p = result.params
    assert p.b * (1 + abs(p.rho)) <= 2.0 + 1e-9
    assert min_total_variance(p) >= -1e-12 and p.b >= 0 and abs(p.rho) < 1 and p.sigma > 0


def test_negative_a_is_allowed_while_variance_stays_positive() -> None:
    # A sharp short-dated smile whose truth has a < 0 (min w > 0): recovered exactly,
    # whereas Zeliade's a >= 0 domain cannot reach it.
    truth = RawSvi(a=-0.0055, b=0.164, rho=0.51, m=-0.196, sigma=0.0545)
    t = 9.5 / 365
    k = np.linspace(-0.9, 0.8, 30)
    data = mid_only(implied_vol(truth, k, t), k, t)
    result = fit_svi_slice(data)
    for got, want in zip(result.params, truth, strict=True):
        assert got == pytest.approx(want, abs=1e-7)
    zeliade = fit_svi_slice(data, config=FitConfig(negative_a=False))
    assert zeliade.params.a >= 0.0 and zeliade.rmse_bp > 50.0


def test_warm_start_is_cheaper_and_lands_on_the_same_fit() -> None:
    rng = np.random.default_rng(3)
    noisy = implied_vol(TRUTH, K, T) + rng.normal(0.0, 0.002, K.size)
    cold = fit_svi_slice(mid_only(noisy))
    moved = noisy + rng.normal(0.0, 0.0005, K.size)
    warm = fit_svi_slice(mid_only(moved), warm=cold.params)
    cold_again = fit_svi_slice(mid_only(moved))
    assert warm.warm_start and not cold_again.warm_start
    assert warm.iterations < cold_again.iterations
    assert warm.objective == pytest.approx(cold_again.objective, rel=1e-6)


def test_warm_start_from_a_bad_place_still_finds_the_fit() -> None:
    vols = implied_vol(TRUTH, K, T)
    far = RawSvi(a=0.0, b=0.01, rho=0.5, m=0.4, sigma=0.002)
    result = fit_svi_slice(mid_only(vols), warm=far)
    assert result.rmse_bp < 1e-3


def test_inside_the_band_counts_as_perfect() -> None:
    # Mids scattered inside wide bands around a smooth smile: the band-aware fit stays
    # inside every band, while the residual to the mid stays non-zero.
    rng = np.random.default_rng(5)
    truth_vol = implied_vol(TRUTH, K, T)
    mids = truth_vol + rng.uniform(-0.004, 0.004, K.size)
    data = SliceData(
        t=T,
        k=K,
        mid_vol=mids,
        bid_vol=truth_vol - 0.006,
        ask_vol=truth_vol + 0.006,
        vol_weight=np.ones(K.size),
    )
    result = fit_svi_slice(data)
    assert np.all(result.fitted_vol >= data.bid_vol - 1e-9)
    assert np.all(result.fitted_vol <= data.ask_vol + 1e-9)
    no_band = fit_svi_slice(data, config=FitConfig(band_rounds=0))
    assert result.rmse_bp > 0.0 and no_band.rmse_bp > 0.0


def test_band_pulls_the_fit_inside_when_the_mid_fit_is_outside() -> None:
    # One quote with a tight band far from where the other quotes put the smile: the
    # band-aware fit moves toward that band compared with the mid-only fit.
    vols = implied_vol(TRUTH, K, T).copy()
    bid = vols - 0.02
    ask = vols + 0.02
    i = 15
    bid[i], ask[i] = vols[i] + 0.010, vols[i] + 0.012
    vols[i] = vols[i] + 0.011
    data = SliceData(t=T, k=K, mid_vol=vols, bid_vol=bid, ask_vol=ask, vol_weight=np.ones(K.size))
    banded = fit_svi_slice(data)
    mid_fit = fit_svi_slice(data, config=FitConfig(band_rounds=0))
    dist_banded = max(bid[i] - banded.fitted_vol[i], 0.0)
    dist_mid = max(bid[i] - mid_fit.fitted_vol[i], 0.0)
    assert dist_banded < dist_mid


def test_batched_fit_equals_one_by_one() -> None:
    rng = np.random.default_rng(9)
    datas = []
    for t, n in ((7 / 365, 12), (30 / 365, 31), (0.5, 20)):
        k = np.linspace(-0.3, 0.3, n) * np.sqrt(t / T)
        vols = implied_vol(TRUTH, k * np.sqrt(T / t), T) + rng.normal(0, 0.002, n)
        datas.append(mid_only(vols, k, t))
    batched = fit_svi_slices(datas)
    for data, b in zip(datas, batched, strict=True):
        single = fit_svi_slice(data)
        assert b.objective == pytest.approx(single.objective, rel=1e-7, abs=1e-18)


def test_rejects_unusable_input() -> None:
    with pytest.raises(ValueError):
        fit_svi_slice(mid_only(np.array([0.5, 0.6]), np.array([0.0, 0.1])))
    with pytest.raises(ValueError):
        fit_svi_slice(mid_only(implied_vol(TRUTH, K, T), K, 0.0))
    bad = implied_vol(TRUTH, K, T).copy()
    bad[3] = np.nan
    with pytest.raises(ValueError):
        fit_svi_slice(mid_only(bad))


def test_wing_caps_bound_the_slopes_inside_the_fit() -> None:
    # A slice whose call wing is steeper than a later expiry allows: capped inside the
    # calibration (the inner problem's box), the fit honours the caps exactly and fits
    # the quotes as well as the caps let it; a cap that does not bind changes nothing.
    rng = np.random.default_rng(3)
    vols = implied_vol(TRUTH, K, T) + rng.normal(0.0, 0.001, K.size)
    data = mid_only(vols)
    free = fit_svi_slice(data)
    put_free = free.params.b * (1 - free.params.rho)
    call_free = free.params.b * (1 + free.params.rho)
    caps = WingCaps(put=put_free * 1.5, call=call_free * 0.8)
    capped = fit_svi_slices([data], [free.params], wing_caps=[caps])[0]
    p = capped.params
    assert p.b * (1 + p.rho) <= caps.call * (1 + 1e-9)
    assert p.b * (1 - p.rho) <= caps.put * (1 + 1e-9)
    assert p.b * (1 + p.rho) == pytest.approx(caps.call, rel=1e-6)  # it binds
    # A calibration under the caps, not a projection: it beats the free fit scaled down
    # to the cap by far.
    scaled = free.params._replace(b=free.params.b * caps.call / call_free)
    scaled_rmse = float(np.sqrt(np.mean((implied_vol(scaled, K, T) - vols) ** 2))) * 1e4
    assert capped.rmse_bp < 0.5 * scaled_rmse
    loose = WingCaps(put=put_free * 2.0, call=call_free * 2.0)
    same = fit_svi_slices([data], [free.params], wing_caps=[loose])[0]
    assert total_variance(same.params, K) == pytest.approx(
        total_variance(free.params, K), rel=1e-6, abs=1e-9
    )
    assert wing_slopes(p) == (p.b * (1 - p.rho), p.b * (1 + p.rho))
