"""Raw SVI kernels: derivatives, Durrleman's g, jump-wings, domain, QuantLib cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from volmath.svi import (
    JwSvi,
    RawSvi,
    d2w_dk2,
    domain_violations,
    durrleman_g,
    dw_dk,
    implied_vol,
    is_valid,
    jw_to_raw,
    raw_to_jw,
    total_variance,
)

VOGT = RawSvi(a=-0.0410, b=0.1331, rho=0.3060, m=0.3586, sigma=0.4153)
CHECK_SLICE = RawSvi(a=0.018, b=0.09, rho=-0.10, m=0.0, sigma=0.08)


def test_derivatives_match_finite_differences() -> None:
    k = np.linspace(-2.0, 2.0, 41)
    h = 1e-5
    w_plus, w_minus = total_variance(VOGT, k + h), total_variance(VOGT, k - h)
    fd1 = (w_plus - w_minus) / (2 * h)
    fd2 = (w_plus - 2 * total_variance(VOGT, k) + w_minus) / (h * h)
    np.testing.assert_allclose(dw_dk(VOGT, k), fd1, atol=1e-9)
    np.testing.assert_allclose(d2w_dk2(VOGT, k), fd2, atol=1e-5)


def test_durrleman_g_uses_w_second_linearly() -> None:
    # Independent evaluation of the formula; a squared w'' would differ by ~w''/2 here.
    k = np.array([-0.5, 0.0, 0.879, 1.5])
    w = total_variance(VOGT, k)
    w1 = dw_dk(VOGT, k)
    w2 = d2w_dk2(VOGT, k)
    expected = (1 - k * w1 / (2 * w)) ** 2 - w1**2 / 4 * (1 / w + 0.25) + w2 / 2
    squared_bug = (1 - k * w1 / (2 * w)) ** 2 - w1**2 / 4 * (1 / w + 0.25) + w2**2 / 2
    got = durrleman_g(VOGT, k)
    np.testing.assert_allclose(got, expected, rtol=1e-13)
    assert np.all(np.abs(got - squared_bug) > 1e-3)


def test_vogt_slice_negative_g_region() -> None:
    k = np.linspace(-1.0, 2.0, 300_001)
    g = durrleman_g(VOGT, k)
    i = int(np.argmin(g))
    assert g[i] == pytest.approx(-0.03286, abs=5e-4)
    assert k[i] == pytest.approx(0.879, abs=0.01)
    negative = k[g < 0]
    assert negative.min() == pytest.approx(0.642, abs=0.01)
    assert negative.max() == pytest.approx(1.257, abs=0.01)


def test_jump_wings_reference_numbers() -> None:
    jw = raw_to_jw(VOGT, 1.0)
    expected = (0.017426, -0.175211, 0.699738, 1.316798, 0.011625)
    for got, want in zip(jw, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize(
    ("params", "t"),
    [
        (VOGT, 1.0),
        (CHECK_SLICE, 30 / 365),  # m = 0: the textbook inverse is singular there
        (RawSvi(0.001, 0.02, -0.7, -0.05, 0.01), 2 / 365),
        (RawSvi(0.2, 0.3, 0.4, 0.1, 0.3), 1.5),
    ],
)
def test_jump_wings_round_trip(params: RawSvi, t: float) -> None:
    back = jw_to_raw(raw_to_jw(params, t), t)
    for got, want in zip(back, params, strict=True):
        assert got == pytest.approx(want, abs=1e-12)


def test_jump_wings_round_trip_random() -> None:
    # When the ATM point sits at the smile's minimum (v ~ v~), v - v~ carries few digits
    # in the jump-wings floats themselves and m, sigma are ill-conditioned: no inverse
    # can recover them to 1e-12 there. Everywhere else the closed form does.
    rng = np.random.default_rng(11)
    worst, tested = 0.0, 0
    for _ in range(1000):
        p = RawSvi(
            a=rng.uniform(0.0, 0.2),
            b=rng.uniform(0.01, 0.5),
            rho=rng.uniform(-0.9, 0.9),
            m=rng.uniform(-0.5, 0.5),
            sigma=rng.uniform(0.01, 1.0),
        )
        t = rng.uniform(1 / 365, 2.0)
        jw = raw_to_jw(p, t)
        if (jw.v - jw.v_tilde) / jw.v < 1e-2:
            continue
        tested += 1
        back = jw_to_raw(jw, t)
        worst = max(worst, max(abs(x - y) for x, y in zip(back, p, strict=True)))
    assert tested > 700
    assert worst < 1e-12


def test_jump_wings_without_raw_preimage_raise() -> None:
    with pytest.raises(ValueError):
        jw_to_raw(JwSvi(v=0.04, psi=0.0, p=0.5, c=0.5, v_tilde=0.04), 1.0)
    with pytest.raises(ValueError):
        jw_to_raw(JwSvi(v=-0.04, psi=0.0, p=0.5, c=0.5, v_tilde=0.01), 1.0)


def test_domain_checks() -> None:
    assert is_valid(CHECK_SLICE)
    assert is_valid(VOGT)  # in the domain, yet has butterfly arbitrage
    assert any("Lee" in r for r in domain_violations(RawSvi(0.01, 1.8, 0.3, 0.0, 0.1)))
    assert any("b =" in r for r in domain_violations(RawSvi(0.01, -0.1, 0.0, 0.0, 0.1)))
    assert any("rho" in r for r in domain_violations(RawSvi(0.01, 0.1, 1.0, 0.0, 0.1)))
    assert any("sigma" in r for r in domain_violations(RawSvi(0.01, 0.1, 0.0, 0.0, 0.0)))
    assert any("sqrt" in r for r in domain_violations(RawSvi(-0.5, 0.1, 0.0, 0.0, 0.1)))
    assert domain_violations(RawSvi(math.nan, 0.1, 0.0, 0.0, 0.1)) == ["non-finite parameter"]


def test_quantlib_cross_check() -> None:
    ql = pytest.importorskip("QuantLib", reason="QuantLib not installed in .venv")
    # QuantLib's parameter order is (a, b, sigma, rho, m).
    section = ql.SviSmileSection(1.0, 100.0, [VOGT.a, VOGT.b, VOGT.sigma, VOGT.rho, VOGT.m])
    reference = {60: 0.227671506031, 100: 0.132008532130, 150: 0.128592458639, 240: 0.261347469935}
    for strike, vol in reference.items():
        ours = float(implied_vol(VOGT, math.log(strike / 100.0), 1.0))
        assert ours == pytest.approx(vol, abs=1e-11)
        assert section.volatility(float(strike)) == pytest.approx(ours, abs=1e-12)
