"""Vectorised implied vol: accuracy on the docs/quant.md grid, py_vollib agreement, statuses."""

from __future__ import annotations

import math
import warnings

import numpy as np
from vollib.black import undiscounted_black
from vollib.black.implied_volatility import implied_volatility as vollib_iv

from svc_iv.solver import (
    ABOVE_UPPER_BOUND,
    BAD_INPUT,
    BELOW_INTRINSIC,
    EXPIRED,
    MISSING_PRICE,
    OK,
    bound_status,
    implied_vol,
    ln_normalised_black_call,
    normalised_implied_vol,
)
from volmath import black76
from volstream.v1 import iv_pb2 as iv_pb

DAY = 1.0 / 365.0


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = np.linspace(-1.5, 1.5, 61)
    t = np.geomspace(DAY, 2.0, 25)
    sigma = np.geomspace(0.10, 3.0, 30)
    kk, tt, ss = np.meshgrid(k, t, sigma, indexing="ij")
    return kk.ravel(), tt.ravel(), ss.ravel()


def _in_domain(k: np.ndarray, t: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    beta = np.exp(ln_normalised_black_call(-np.abs(k), sigma * np.sqrt(t)))
    return np.asarray(beta > 1e-12)


def test_status_codes_are_the_proto_enum() -> None:
    assert OK == iv_pb.IV_STATUS_OK
    assert MISSING_PRICE == iv_pb.IV_STATUS_MISSING_PRICE
    assert BELOW_INTRINSIC == iv_pb.IV_STATUS_BELOW_INTRINSIC
    assert ABOVE_UPPER_BOUND == iv_pb.IV_STATUS_ABOVE_UPPER_BOUND
    assert EXPIRED == iv_pb.IV_STATUS_EXPIRED
    assert BAD_INPUT == iv_pb.IV_STATUS_BAD_INPUT


def test_accuracy_grid_out_of_the_money() -> None:
    """docs/quant.md §1: k in [-1.5, 1.5], T in [1 d, 2 y], sigma in [10%, 300%], beta > 1e-12."""
    k, t, sigma = _grid()
    keep = _in_domain(k, t, sigma)
    k, t, sigma = k[keep], t[keep], sigma[keep]
    assert k.size > 25_000  # of 45,750: the cut removes the deep wings (beta <= 1e-12)
    forward = 50_000.0
    strike = forward * np.exp(k)
    is_call = strike >= forward  # price the out-of-the-money side
    price = black76.price(forward, strike, t, sigma, is_call)
    iv, status = implied_vol(price, forward, strike, t, is_call)
    assert np.all(status == OK)
    assert float(np.max(np.abs(iv - sigma))) <= 1e-12


def test_accuracy_random_points_priced_by_lets_be_rational() -> None:
    """Prices from an independent pricer (py_vollib: Jaeckel's normalised Black)."""
    rng = np.random.default_rng(11)
    n = 4000
    k = rng.uniform(-1.5, 1.5, n)
    t = np.exp(rng.uniform(math.log(DAY), math.log(2.0), n))
    sigma = np.exp(rng.uniform(math.log(0.1), math.log(3.0), n))
    keep = _in_domain(k, t, sigma)
    k, t, sigma = k[keep], t[keep], sigma[keep]
    forward = 3_000.0 * np.exp(rng.uniform(-0.2, 0.2, k.size))
    strike = forward * np.exp(k)
    is_call = strike >= forward
    price = np.array(
        [
            undiscounted_black(f, kk, s, tt, "c" if c else "p")
            for f, kk, s, tt, c in zip(forward, strike, sigma, t, is_call, strict=True)
        ]
    )
    iv, status = implied_vol(price, forward, strike, t, is_call)
    assert np.all(status == OK)
    assert float(np.max(np.abs(iv - sigma))) <= 1e-12


def test_agrees_with_py_vollib_on_random_options() -> None:
    """py_vollib (a port of Let's Be Rational) is the oracle: 1e-12 on random options,
    calls and puts on both sides of the money."""
    rng = np.random.default_rng(3)
    n = 30_000  # ~25 us per py_vollib call: under 0.5 s for the ~18,000 kept
    k = rng.uniform(-1.2, 1.2, n)
    t = np.exp(rng.uniform(math.log(DAY), math.log(2.0), n))
    sigma = np.exp(rng.uniform(math.log(0.1), math.log(3.0), n))
    forward = 40_000.0
    strike = forward * np.exp(k)
    is_call = rng.random(n) < 0.5
    price = black76.price(forward, strike, t, sigma, is_call)
    # Keep options whose time value is resolvable in double precision on the quoted side.
    intrinsic = np.where(is_call, np.maximum(forward - strike, 0), np.maximum(strike - forward, 0))
    keep = (price - intrinsic > 1e-9 * forward) & _in_domain(k, t, sigma)
    price, strike, t, is_call = price[keep], strike[keep], t[keep], is_call[keep]
    ours, status = implied_vol(price, forward, strike, t, is_call)
    assert np.all(status == OK)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        oracle = np.array(
            [
                vollib_iv(p, forward, kk, 0.0, tt, "c" if c else "p")  # r before t
                for p, kk, tt, c in zip(price, strike, t, is_call, strict=True)
            ]
        )
    assert price.size > 15_000  # calls and puts, ITM and OTM
    assert float(np.max(np.abs(ours - oracle))) <= 1e-12


def test_in_the_money_quotes_go_through_parity() -> None:
    """An ITM call and the OTM put of the same strike imply the same vol."""
    forward, strike, t, sigma = 60_000.0, 40_000.0, 0.5, 0.7
    put = float(black76.price(forward, strike, t, sigma, False))
    call = put + (forward - strike)
    iv, status = implied_vol([call, put], forward, strike, t, [True, False])
    assert list(status) == [OK, OK]
    assert abs(iv[0] - sigma) <= 1e-11  # the ITM price carries the intrinsic's rounding
    assert abs(iv[1] - sigma) <= 1e-13


def test_bound_violations_give_nan_and_the_reason() -> None:
    f, k, t = 100.0, 120.0, 0.25
    cases = [
        # (price, forward, strike, t, is_call, expected status)
        (5.0, f, k, t, True, OK),
        (math.nan, f, k, t, True, MISSING_PRICE),
        (0.0, f, k, t, True, BAD_INPUT),
        (-1.0, f, k, t, True, BAD_INPUT),
        (math.inf, f, k, t, True, BAD_INPUT),
        (20.0, f, k, t, False, BELOW_INTRINSIC),  # put intrinsic 20
        (19.0, f, k, t, False, BELOW_INTRINSIC),
        (f, f, k, t, True, ABOVE_UPPER_BOUND),  # call worth the forward
        (150.0, f, k, t, True, ABOVE_UPPER_BOUND),
        (k, f, k, t, False, ABOVE_UPPER_BOUND),  # put worth the strike
        (5.0, f, k, 0.0, True, EXPIRED),
        (5.0, f, k, -1.0, True, EXPIRED),
        (5.0, f, k, math.nan, True, BAD_INPUT),
        (5.0, f, k, math.inf, True, BAD_INPUT),
        (5.0, math.nan, k, t, True, BAD_INPUT),
        (5.0, 0.0, k, t, True, BAD_INPUT),
        (5.0, f, -120.0, t, True, BAD_INPUT),
        (5.0, f, math.inf, t, True, BAD_INPUT),
        # Bad forward wins over a missing price; expiry over a missing price.
        (math.nan, math.nan, k, t, True, BAD_INPUT),
        (math.nan, f, k, 0.0, True, EXPIRED),
    ]
    price, fwd, strike, tt, call, expected = (list(c) for c in zip(*cases, strict=True))
    iv, status = implied_vol(price, fwd, strike, tt, call)
    assert status.tolist() == expected
    assert np.isnan(iv[status != OK]).all()
    assert np.isfinite(iv[status == OK]).all()
    assert bound_status(price, fwd, strike, tt, call).tolist() == expected


def test_garbage_never_raises_and_is_consistent() -> None:
    rng = np.random.default_rng(5)
    n = 50_000
    pool = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 5e-324, 1e-300, 1e-9, 1.0, 1e4, 1e300])
    price, fwd, strike = (rng.choice(pool, n) for _ in range(3))
    t = rng.choice(np.array([np.nan, np.inf, -1.0, 0.0, 1e-12, 1e-3, 1.0, 100.0]), n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a RuntimeWarning escapes
        iv, status = implied_vol(price, fwd, strike, t, rng.random(n) < 0.5)
    assert set(np.unique(status).tolist()) <= {1, 2, 3, 4, 5, 6}
    assert np.isnan(iv[status != OK]).all()
    good = iv[status == OK]
    assert good.size > 0 and np.all(np.isfinite(good)) and np.all(good > 0)


def test_shapes_scalars_and_broadcasting() -> None:
    iv, status = implied_vol(5.0, 100.0, 100.0, 0.25, True)
    assert iv.shape == () and status.shape == () and status.dtype == np.int8
    prices = black76.price(100.0, np.array([[90.0], [110.0]]), 0.5, 0.6, [[False], [True]])
    iv, status = implied_vol(
        prices * np.ones((2, 3)), 100.0, [[90.0], [110.0]], 0.5, [[False], [True]]
    )
    assert iv.shape == (2, 3)
    assert np.allclose(iv, 0.6, atol=1e-13, rtol=0)


def test_normalised_solver_far_outside_the_grid() -> None:
    """Far wings and huge/small s still converge with the default step count."""
    rng = np.random.default_rng(8)
    x = -np.abs(rng.uniform(0, 12, 20_000)) * np.exp(rng.uniform(-20, 0, 20_000))
    s = np.exp(rng.uniform(math.log(1e-2), math.log(6.0), 20_000))
    beta = np.exp(ln_normalised_black_call(x, s))
    keep = (beta > 1e-250) & (beta < np.exp(0.5 * x) * (1 - 1e-10))
    recovered = normalised_implied_vol(beta[keep], x[keep])
    assert float(np.max(np.abs(recovered / s[keep] - 1.0))) <= 1e-9


def test_halley_step_count_matters() -> None:
    """One step is not enough from the initial guess: the fixed steps do real work."""
    k, t, sigma = _grid()
    keep = _in_domain(k, t, sigma)
    strike = 100.0 * np.exp(k[keep])
    call = strike >= 100.0
    price = black76.price(100.0, strike, t[keep], sigma[keep], call)
    one, _ = implied_vol(price, 100.0, strike, t[keep], call, halley_steps=1)
    two, _ = implied_vol(price, 100.0, strike, t[keep], call, halley_steps=2)
    zero, _ = implied_vol(price, 100.0, strike, t[keep], call, halley_steps=0)
    err0 = float(np.max(np.abs(zero - sigma[keep])))
    err1 = float(np.max(np.abs(one - sigma[keep])))
    err2 = float(np.max(np.abs(two - sigma[keep])))
    assert err0 > 1e-3 > err1 > 1e-9 > 1e-12 >= err2
