"""SSVI: slices as raw SVI, no-arbitrage conditions, the surface fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svc_surface.fit import SliceData
from svc_surface.ssvi import (
    HestonPhi,
    PowerLawPhi,
    fit_ssvi_surface,
    phi_value,
    ssvi_check,
    ssvi_slice_to_raw,
    ssvi_total_variance,
    theta_phi_derivative,
)
from volmath.svi import durrleman_g, implied_vol, total_variance


def test_slice_to_raw_reference_numbers() -> None:
    raw = ssvi_slice_to_raw(0.0249, -0.2, 6.044277018556583)
    expected = (0.011952, 0.0752512489, -0.2, 0.0330891518, 0.1621030760)
    for got, want in zip(raw, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-10)
    k = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(
        total_variance(raw, k),
        ssvi_total_variance(0.0249, -0.2, 6.044277018556583, k),
        rtol=1e-13,
    )


@pytest.mark.parametrize("phi", [PowerLawPhi(1.2, 0.35), HestonPhi(0.8)])
def test_theta_phi_derivative_matches_finite_differences(phi: PowerLawPhi | HestonPhi) -> None:
    theta = np.array([1e-4, 0.003, 0.05, 0.4, 2.0])
    h = 1e-7 * theta
    tp = lambda th: th * phi_value(phi, th)  # noqa: E731
    fd = (tp(theta + h) - tp(theta - h)) / (2 * h)
    np.testing.assert_allclose(theta_phi_derivative(phi, theta), fd, rtol=1e-5)


def test_power_law_in_the_safe_region_is_arbitrage_free() -> None:
    rho = -0.4
    phi = PowerLawPhi(eta=2.0 / (1 + abs(rho)) * 0.95, gamma=0.45)
    thetas = [0.002, 0.01, 0.05, 0.2, 0.6]
    report = ssvi_check(thetas, rho, phi)
    assert report.butterfly_arbitrage_free and report.calendar_arbitrage_free
    assert report.min_g >= 0.0


def test_far_wing_violation_is_found_analytically() -> None:
    # theta phi (1 + |rho|) = 4.25 > 4 but theta phi^2 (1 + |rho|) = 3.61 <= 4: g >= 0.16
    # on [-3, 3], yet the wing slope 2.125 exceeds Lee's 2 and g < 0 far out.
    theta, phi_target = 5.0, 0.85
    phi = PowerLawPhi(eta=phi_target * (1 + theta), gamma=0.0)
    assert float(phi_value(phi, theta)) == pytest.approx(phi_target)
    report = ssvi_check([theta], 0.0, phi)
    assert report.min_g > 0.1 and not report.g_negative_found
    assert not report.far_wing_ok
    assert not report.condition_theta_phi and report.condition_theta_phi_squared
    assert report.sufficient_condition_violated
    assert not report.butterfly_arbitrage_free
    raw = ssvi_slice_to_raw(theta, 0.0, phi_target)
    far = np.geomspace(10.0, 1000.0, 2000)
    assert float(np.min(durrleman_g(raw, far))) < 0.0  # it really is there


def test_sufficient_condition_violated_without_arbitrage() -> None:
    # Small theta: theta phi^2 (1 + |rho|) = 8.1 > 4 (conservative condition fails) while
    # g stays positive everywhere we look.
    theta, phi_target, rho = 0.01, 25.0, -0.3
    phi = PowerLawPhi(eta=phi_target * (1 + theta), gamma=0.0)
    report = ssvi_check([theta], rho, phi)
    assert report.sufficient_condition_violated
    assert not report.condition_theta_phi_squared and report.condition_theta_phi
    assert not report.g_negative_found and report.far_wing_ok
    assert report.butterfly_arbitrage_free


def test_calendar_conditions() -> None:
    phi = PowerLawPhi(0.8, 0.4)
    assert not ssvi_check([0.05, 0.04], -0.2, phi).theta_non_decreasing
    assert ssvi_check([0.04, 0.05], -0.2, phi).calendar_arbitrage_free
    # gamma > 1 makes theta phi decrease in theta: negative derivative.
    assert not ssvi_check([0.04, 0.05], -0.2, PowerLawPhi(0.8, 1.5)).calendar_derivative_ok


def _slices(
    rho: float, phi: PowerLawPhi | HestonPhi, noise: float, seed: int
) -> tuple[list[SliceData], np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = np.array([7, 14, 30, 60, 90, 180, 365]) / 365
    thetas = 0.5**2 * ts * (1 + 0.3 * ts)
    datas = []
    for t, theta in zip(ts, thetas, strict=True):
        raw = ssvi_slice_to_raw(float(theta), rho, float(phi_value(phi, theta)))
        sd = math.sqrt(theta)
        k = np.linspace(-3 * sd, 2 * sd, 25)
        vol = implied_vol(raw, k, float(t)) + rng.normal(0.0, noise, k.size)
        nan = np.full(k.size, np.nan)
        datas.append(SliceData(float(t), k, vol, nan, nan, np.ones(k.size)))
    return datas, thetas


def test_power_law_fit_recovers_a_power_law_surface() -> None:
    truth_phi = PowerLawPhi(0.8, 0.4)
    datas, thetas = _slices(-0.3, truth_phi, 0.0, 1)
    fit = fit_ssvi_surface(datas, "power_law")
    assert fit.params.rho == pytest.approx(-0.3, abs=1e-4)
    assert isinstance(fit.params.phi, PowerLawPhi)
    assert fit.params.phi.eta == pytest.approx(0.8, abs=1e-3)
    assert fit.params.phi.gamma == pytest.approx(0.4, abs=1e-3)
    np.testing.assert_allclose(fit.params.thetas, thetas, rtol=1e-4)
    assert max(s.rmse_bp for s in fit.slices) < 1.0
    report = ssvi_check(fit.params.thetas, fit.params.rho, fit.params.phi)
    assert report.butterfly_arbitrage_free and report.calendar_arbitrage_free


def test_noisy_fit_and_warm_start() -> None:
    datas, _ = _slices(-0.3, PowerLawPhi(0.8, 0.4), 0.002, 2)
    cold = fit_ssvi_surface(datas, "power_law")
    assert max(s.rmse_bp for s in cold.slices) < 30.0
    warm = fit_ssvi_surface(datas, "power_law", warm=cold.params)
    assert warm.warm_start and not cold.warm_start
    assert warm.slices[0].iterations < cold.slices[0].iterations
    assert warm.slices[0].objective == pytest.approx(cold.slices[0].objective, rel=1e-6)


def test_heston_like_fit() -> None:
    rho = -0.2
    truth = HestonPhi(lam=(1 + abs(rho)) / 4 * 3.0)
    datas, _ = _slices(rho, truth, 0.0, 3)
    fit = fit_ssvi_surface(datas, "heston")
    assert isinstance(fit.params.phi, HestonPhi)
    assert fit.params.phi.lam == pytest.approx(truth.lam, rel=1e-3)
    assert max(s.rmse_bp for s in fit.slices) < 1.0
    assert fit.params.phi.lam >= (1 + abs(fit.params.rho)) / 4
