"""Black-76 kernels: the docs/quant.md section 2/3 reference numbers and the greeks' definitions."""

from __future__ import annotations

import numpy as np
import pytest

from svc_iv.solver import implied_vol
from volmath import black76

# docs/quant.md section 2: F = 60,000, K = 70,000, T = 30/365, sigma = 0.60.
F, K, T, SIGMA = 60_000.0, 70_000.0, 30.0 / 365.0, 0.60


def test_inverse_option_reference_numbers() -> None:
    call = float(black76.price(F, K, T, SIGMA, True))
    put = float(black76.price(F, K, T, SIGMA, False))
    assert call == pytest.approx(1124.963284, abs=1e-6)
    assert put == pytest.approx(11124.963284, abs=1e-6)
    call_coin, put_coin = call / F, put / F
    assert call_coin == pytest.approx(0.01874939, abs=1e-8)
    assert put_coin == pytest.approx(0.18541605, abs=1e-8)
    # USD premium of an inverse option = coin premium x forward; its IV is the model's.
    iv, status = implied_vol(call_coin * F, F, K, T, True)
    assert status == 1
    assert abs(float(iv) - SIGMA) <= 1e-12
    # Parity in coin units: F = K / (1 - C + P).
    assert K / (1.0 - call_coin + put_coin) == pytest.approx(F, abs=1e-6)
    # The 8-decimal coin prices (as a venue prints them) still give the forward to 1e-8.
    assert pytest.approx(F, rel=1e-8) == K / (1.0 - 0.01874939 + 0.18541605)
    # ... and the vol to within what an 8th-decimal rounding can move it.
    rounding = 0.5e-8 * F / float(black76.vega(F, K, T, SIGMA))
    iv_rounded, _ = implied_vol(0.01874939 * F, F, K, T, True)
    assert abs(float(iv_rounded) - SIGMA) <= rounding


def test_delta_reference_numbers() -> None:
    assert float(black76.forward_delta(F, K, T, SIGMA, True)) == pytest.approx(0.20892951, abs=1e-8)
    pa = float(black76.premium_adjusted_delta(F, K, T, SIGMA, True))
    assert pa == pytest.approx(0.19018012, abs=1e-8)
    # Premium-adjusted call delta = N(d1) - C/F.
    call = float(black76.price(F, K, T, SIGMA, True))
    assert pa == pytest.approx(
        float(black76.forward_delta(F, K, T, SIGMA, True)) - call / F, abs=1e-14
    )
    # Put deltas: forward N(d1) - 1, premium-adjusted N(d1) - 1 - P/F.
    put = float(black76.price(F, K, T, SIGMA, False))
    assert float(black76.forward_delta(F, K, T, SIGMA, False)) == pytest.approx(
        0.20892951 - 1.0, abs=1e-8
    )
    assert float(black76.premium_adjusted_delta(F, K, T, SIGMA, False)) == pytest.approx(
        0.20892951 - 1.0 - put / F, abs=1e-8
    )


@pytest.mark.parametrize("is_call", [True, False])
@pytest.mark.parametrize("strike", [30_000.0, 60_000.0, 95_000.0])
def test_greeks_are_the_derivatives_of_the_price(is_call: bool, strike: float) -> None:
    f, t, s = 60_000.0, 45.0 / 365.0, 0.8
    h_f, h_s, h_t = 1e-2, 1e-6, 1e-7

    def px(ff: float = f, tt: float = t, ss: float = s) -> float:
        return float(black76.price(ff, strike, tt, ss, is_call))

    def dlt(ff: float) -> float:
        return float(black76.forward_delta(ff, strike, t, s, is_call))

    assert float(black76.forward_delta(f, strike, t, s, is_call)) == pytest.approx(
        (px(ff=f + h_f) - px(ff=f - h_f)) / (2 * h_f), abs=1e-7
    )
    assert float(black76.gamma(f, strike, t, s)) == pytest.approx(
        (dlt(f + h_f) - dlt(f - h_f)) / (2 * h_f), rel=1e-6
    )
    assert float(black76.vega(f, strike, t, s)) == pytest.approx(
        (px(ss=s + h_s) - px(ss=s - h_s)) / (2 * h_s), rel=1e-6
    )
    # Theta: value change per calendar day as T shrinks.
    per_year = -(px(tt=t + h_t) - px(tt=t - h_t)) / (2 * h_t)
    assert float(black76.theta(f, strike, t, s)) == pytest.approx(per_year / 365.0, rel=1e-6)


def test_greeks_vectorise() -> None:
    strikes = np.array([40_000.0, 60_000.0, 80_000.0])
    vega = black76.vega(60_000.0, strikes, 0.25, np.array([0.9, 0.7, 0.8]))
    assert vega.shape == (3,)
    assert np.all(vega > 0) and int(np.argmax(vega)) == 1
