"""Premium units, time to expiry, and the forward's order of preference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svc_iv.forward import NO_FORWARD, choose_forward, parity_forward
from svc_iv.normalise import (
    NS_PER_YEAR,
    d_usd_per_coin_d_forward,
    premium_usd_per_coin,
    usd_per_coin_to_native,
    years_to_expiry,
)
from volmath import black76
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

COIN = md_pb.PREMIUM_UNIT_COIN_PER_COIN
USD = md_pb.PREMIUM_UNIT_USD_PER_COIN
CONTRACT = md_pb.PREMIUM_UNIT_USD_PER_CONTRACT
UNSPECIFIED = md_pb.PREMIUM_UNIT_UNSPECIFIED


def test_premium_units() -> None:
    native = np.array([0.0185, 1124.96, 1124.96, 19.0314, 5.0, 5.0, 0.01, 0.01])
    unit = np.array([COIN, USD, CONTRACT, CONTRACT, UNSPECIFIED, 99, COIN, CONTRACT])
    forward = np.array([60_000.0] * 6 + [math.nan, 60_000.0])
    size = np.array([1.0, 1.0, 0.1, 100.0, 1.0, 1.0, 1.0, 0.0])
    usd = premium_usd_per_coin(native, unit, forward, size)
    assert usd[0] == pytest.approx(0.0185 * 60_000.0, rel=1e-15)  # inverse: x forward
    assert usd[1] == 1124.96  # linear per coin: as is
    assert usd[2] == pytest.approx(11249.6, rel=1e-15)  # per 0.1-coin contract
    assert usd[3] == pytest.approx(0.190314, rel=1e-15)  # Binance XRP: unit 100
    assert np.isnan(usd[4:]).all()  # unknown unit, no forward, zero contract size
    back = usd_per_coin_to_native(usd[:4], unit[:4], forward[:4], size[:4])
    assert np.allclose(back, native[:4], rtol=1e-15, atol=0)
    assert d_usd_per_coin_d_forward(native[:3], unit[:3]).tolist() == [0.0185, 0.0, 0.0]


def test_years_to_expiry_uses_a_365_day_year_and_exact_nanoseconds() -> None:
    expiry = 1_627_632_000_000_000_000  # 2021-07-30 08:00 UTC
    assert years_to_expiry(expiry, expiry - NS_PER_YEAR // 365) == pytest.approx(1 / 365, rel=1e-15)
    # One nanosecond is not lost to float rounding of 1.6e18.
    assert float(years_to_expiry(expiry, expiry - 1)) == pytest.approx(1 / NS_PER_YEAR, rel=1e-12)
    assert float(years_to_expiry(expiry, expiry + 10)) < 0
    assert years_to_expiry(np.array([expiry, expiry + 1]), expiry).tolist() == [
        0.0,
        1 / NS_PER_YEAR,
    ]


def test_parity_forward_linear_and_inverse() -> None:
    forward, t = 60_000.0, 30 / 365
    strikes = np.array([40_000.0, 55_000.0, 60_000.0, 65_000.0, 80_000.0])
    calls = black76.price(forward, strikes, t, 0.6, True)
    puts = black76.price(forward, strikes, t, 0.6, False)
    assert parity_forward(strikes, calls, puts, inverse=False) == pytest.approx(forward, rel=1e-12)
    assert parity_forward(strikes, calls / forward, puts / forward, inverse=True) == pytest.approx(
        forward, rel=1e-12
    )


def test_parity_forward_ignores_a_stray_quote_and_far_strikes() -> None:
    forward = 2_000.0
    strikes = np.array([1_000.0, 1_900.0, 1_950.0, 2_000.0, 2_050.0, 2_100.0, 3_000.0])
    calls = black76.price(forward, strikes, 0.1, 0.9, True)
    puts = black76.price(forward, strikes, 0.1, 0.9, False)
    calls[4] += 30.0  # a stray near-ATM quote
    calls[0] += 500.0  # a bad far strike: not among the nearest
    estimate = parity_forward(strikes, calls, puts, inverse=False, strikes_used=5)
    assert estimate == pytest.approx(forward, rel=1e-12)
    # Nothing usable: NaN, never an exception.
    assert math.isnan(parity_forward([1.0], [math.nan], [0.1], inverse=False))
    assert math.isnan(parity_forward([], [], [], inverse=True))
    assert math.isnan(parity_forward([100.0], [2.0], [0.5], inverse=True))  # 1 - C + P < 0


def test_choose_forward_order_of_preference() -> None:
    assert choose_forward(venue=1.0, future_mid=2.0, parity=3.0, index=4.0).source == (
        common_pb.FORWARD_SOURCE_VENUE
    )
    got = choose_forward(venue=math.nan, future_mid=2.0, parity=3.0, index=4.0)
    assert (got.value_usd, got.source) == (2.0, common_pb.FORWARD_SOURCE_FUTURE)
    got = choose_forward(venue=None, future_mid=-1.0, parity=3.0, index=4.0)
    assert (got.value_usd, got.source) == (3.0, common_pb.FORWARD_SOURCE_PUT_CALL_PARITY)
    got = choose_forward(parity=math.inf, index=4.0)
    assert (got.value_usd, got.source) == (4.0, common_pb.FORWARD_SOURCE_INDEX)
    assert choose_forward(index=0.0) == NO_FORWARD
    assert not NO_FORWARD.is_valid
