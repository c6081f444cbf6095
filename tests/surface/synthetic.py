"""Smiles built from a known SVI truth, with noise, spreads and bad quotes: test and bench
inputs whose right answer is known."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from volmath import black76
from volmath.svi import RawSvi, implied_vol
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb

NS_PER_DAY = 86_400 * 1_000_000_000
NS_PER_YEAR = 365 * NS_PER_DAY


def crypto_like_slice(t: float, atm_vol: float = 0.6, skew: float = -0.15) -> RawSvi:
    """A plausible crypto slice at maturity t: ATM vol about atm_vol, wings scaling
    with sqrt(t) so short expiries are sharp and long ones flat."""
    sqrt_t = math.sqrt(t)
    sigma = 0.3 * sqrt_t + 0.02
    b = 0.25 * sqrt_t * atm_vol
    m = 0.02 * sqrt_t
    rho = skew
    w_atm = atm_vol * atm_vol * t
    a = w_atm - b * (-rho * m + math.sqrt(m * m + sigma * sigma))
    return RawSvi(a=a, b=b, rho=rho, m=m, sigma=sigma)


@dataclass(frozen=True)
class QuoteFaults:
    """Fractions of strikes with each defect (applied independently per quote)."""

    one_sided: float = 0.0
    crossed: float = 0.0
    zero_bid: float = 0.0
    stale: float = 0.0
    min_tick: float = 0.0
    outlier: float = 0.0
    outlier_size_vol: float = 0.15


def make_smile(
    *,
    venue: str,
    currency: str,
    now_ns: int,
    expiry_ns: int,
    forward: float,
    truth: RawSvi,
    n_strikes: int = 20,
    span_sd: tuple[float, float] = (-3.0, 2.5),
    noise_vol: float = 0.0,
    spread_vol: float = 0.01,
    wing_spread_vol: float = 0.02,
    rng: np.random.Generator | None = None,
    faults: QuoteFaults | None = None,
    index_price: float | None = None,
    sequence: int = 1,
    both_sides: bool = True,
) -> iv_pb.Smile:
    """Call and put quotes on n_strikes strikes spread over span_sd standard deviations
    (ATM vol sqrt(w(0)/T)); mid vols = truth + i.i.d. noise; spreads widen in the wings."""
    gen = rng or np.random.default_rng(0)
    f = faults or QuoteFaults()
    t = (expiry_ns - now_ns) / NS_PER_YEAR
    sd = math.sqrt(max(float(implied_vol(truth, 0.0, t)) ** 2 * t, 1e-12))
    ks = np.linspace(span_sd[0] * sd, span_sd[1] * sd, n_strikes)
    strikes = np.round(forward * np.exp(ks), 2)
    ks = np.log(strikes / forward)
    true_vol = implied_vol(truth, ks, t)
    smile = iv_pb.Smile(
        venue=venue,
        currency=currency,
        expiry_time_ns=expiry_ns,
        expiry_label=_label(expiry_ns),
        time_to_expiry_years=t,
        forward_usd=forward,
        forward_source=common_pb.FORWARD_SOURCE_TRUTH,
        index_price_usd=index_price if index_price is not None else forward,
    )
    smile.header.event_time_ns = now_ns
    smile.header.source = f"synthetic.{venue}"
    smile.header.sequence = sequence
    kinds = [common_pb.OPTION_KIND_CALL, common_pb.OPTION_KIND_PUT] if both_sides else [0]
    for strike, k, vol in zip(strikes, ks, true_vol, strict=True):
        for kind in kinds:
            if kind == 0:
                kind = common_pb.OPTION_KIND_CALL if k >= 0 else common_pb.OPTION_KIND_PUT
            is_call = kind == common_pb.OPTION_KIND_CALL
            half = 0.5 * (spread_vol + wing_spread_vol * abs(k) / max(sd, 1e-9))
            if (not is_call and k >= 0) or (is_call and k < 0):
                half *= 1.5  # ITM quotes trade wider
            mid = max(float(vol) + gen.normal(0.0, noise_vol), 0.05)
            if gen.random() < f.outlier:
                mid += f.outlier_size_vol * (1 if gen.random() < 0.5 else -1)
                mid = max(mid, 0.05)
            bid_iv, ask_iv = max(mid - half, 0.01), mid + half
            bid_p = float(black76.price(forward, strike, t, bid_iv, is_call))
            ask_p = float(black76.price(forward, strike, t, ask_iv, is_call))
            mark_p = float(black76.price(forward, strike, t, mid, is_call))
            q = smile.quotes.add(
                symbol=f"{currency}-{_label(expiry_ns)}-{int(strike)}-{'C' if is_call else 'P'}",
                option_kind=kind,
                strike_usd=float(strike),
                log_moneyness=float(k),
                bid_price_usd_per_coin=bid_p,
                ask_price_usd_per_coin=ask_p,
                mark_price_usd_per_coin=mark_p,
                bid_size_native=1.0,
                ask_size_native=1.0,
                bid_iv=bid_iv,
                ask_iv=ask_iv,
                mid_iv=0.5 * (bid_iv + ask_iv),
                mark_iv=mid,
                bid_iv_status=1,
                ask_iv_status=1,
                mark_iv_status=1,
                venue_bid_iv=math.nan,
                venue_ask_iv=math.nan,
                venue_mark_iv=math.nan,
                delta_forward=float(black76.forward_delta(forward, strike, t, mid, is_call)),
                delta_premium_adjusted=float(
                    black76.premium_adjusted_delta(forward, strike, t, mid, is_call)
                ),
                vega_usd_per_vol=float(
                    forward
                    * math.exp(-0.5 * ((-k + 0.5 * mid * mid * t) / (mid * math.sqrt(t))) ** 2)
                    / math.sqrt(2 * math.pi)
                    * math.sqrt(t)
                ),
                quote_time_ns=now_ns,
            )
            _apply_faults(q, gen, f)
    return smile


def _apply_faults(q: iv_pb.SmileQuote, gen: np.random.Generator, f: QuoteFaults) -> None:
    if gen.random() < f.one_sided:
        q.ask_price_usd_per_coin = math.nan
        q.ask_iv = math.nan
        q.ask_iv_status = iv_pb.IV_STATUS_MISSING_PRICE
        q.mid_iv = math.nan
        q.one_sided = True
    if gen.random() < f.crossed:
        q.bid_iv, q.ask_iv = q.ask_iv + 0.01, q.bid_iv
        q.bid_price_usd_per_coin, q.ask_price_usd_per_coin = (
            q.ask_price_usd_per_coin * 1.05,
            q.bid_price_usd_per_coin,
        )
        q.crossed = True
    if gen.random() < f.zero_bid:
        q.bid_price_usd_per_coin = 0.0
        q.bid_iv = math.nan
        q.bid_iv_status = iv_pb.IV_STATUS_BELOW_INTRINSIC
    if gen.random() < f.stale:
        q.stale = True
    if gen.random() < f.min_tick:
        q.at_min_tick = True


def _label(expiry_ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(expiry_ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d")
