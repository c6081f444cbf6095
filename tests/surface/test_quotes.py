"""Quote selection: one side per strike, every drop with its reason, weights, outliers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svc_surface.quotes import QuoteConfig, flag_outliers, select_quotes
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

CALL, PUT = common_pb.OPTION_KIND_CALL, common_pb.OPTION_KIND_PUT
F = 100.0


def quote(
    strike: float,
    kind: common_pb.OptionKind,
    bid_iv: float = 0.5,
    ask_iv: float = 0.52,
    **kw,
) -> iv_pb.SmileQuote:
    q = iv_pb.SmileQuote(
        symbol=f"X-{strike:g}-{'C' if kind == CALL else 'P'}",
        option_kind=kind,
        strike_usd=strike,
        log_moneyness=math.log(strike / F),
        bid_price_usd_per_coin=1.0,
        ask_price_usd_per_coin=1.1,
        bid_iv=bid_iv,
        ask_iv=ask_iv,
        mid_iv=0.5 * (bid_iv + ask_iv),
        bid_iv_status=iv_pb.IV_STATUS_OK,
        ask_iv_status=iv_pb.IV_STATUS_OK,
        quote_time_ns=1_000,
    )
    for name, value in kw.items():
        setattr(q, name, value)
    return q


def smile(*quotes: iv_pb.SmileQuote, forward: float = F) -> iv_pb.Smile:
    s = iv_pb.Smile(venue="deribit", currency="BTC", forward_usd=forward)
    s.quotes.extend(quotes)
    return s


def reasons(sel) -> dict[str, int]:
    return {sym: int(r) for sym, r in zip(sel.symbol, sel.drop_reason, strict=True)}


def test_every_defect_has_its_reason() -> None:
    sel = select_quotes(
        [
            smile(
                quote(80, PUT, stale=True),
                quote(85, PUT, bid_price_usd_per_coin=0.0),
                quote(90, PUT, ask_price_usd_per_coin=math.nan, ask_iv=math.nan),
                quote(95, PUT, bid_iv=0.55, ask_iv=0.50),
                quote(105, CALL, at_min_tick=True),
                quote(110, CALL, bid_iv=math.nan, bid_iv_status=iv_pb.IV_STATUS_BELOW_INTRINSIC),
                quote(115, CALL, one_sided=True),
                quote(120, CALL),
            )
        ],
        t=0.1,
    )
    assert reasons(sel) == {
        "X-80-P": surface_pb.DROP_REASON_STALE,
        "X-85-P": surface_pb.DROP_REASON_ZERO_BID,
        "X-90-P": surface_pb.DROP_REASON_ONE_SIDED,
        "X-95-P": surface_pb.DROP_REASON_CROSSED,
        "X-105-C": surface_pb.DROP_REASON_MIN_TICK,
        "X-110-C": surface_pb.DROP_REASON_NO_IV,
        "X-115-C": surface_pb.DROP_REASON_ONE_SIDED,
        "X-120-C": surface_pb.DROP_REASON_UNSPECIFIED,
    }
    assert sel.used.tolist() == [False] * 7 + [True]
    assert sel.weight[:7].tolist() == [0.0] * 7 and sel.weight[7] > 0


def test_stale_by_age_when_configured() -> None:
    sel = select_quotes(
        [smile(quote(120, CALL, quote_time_ns=1_000), quote(125, CALL, quote_time_ns=9_000))],
        t=0.1,
        now_ns=10_000,
        config=QuoteConfig(stale_after_ns=5_000),
    )
    assert sel.drop_reason.tolist() == [
        surface_pb.DROP_REASON_STALE,
        surface_pb.DROP_REASON_UNSPECIFIED,
    ]


def test_a_quote_behind_the_forward_is_left_out_until_it_moves() -> None:
    behind = smile(quote(120, CALL, behind_forward=True), quote(125, CALL))
    assert select_quotes([behind], t=0.1).drop_reason.tolist() == [
        surface_pb.DROP_REASON_BEHIND_FORWARD,
        surface_pb.DROP_REASON_UNSPECIFIED,
    ]


def test_out_of_the_money_side_wins_per_strike() -> None:
    sel = select_quotes(
        [
            smile(
                quote(90, CALL),
                quote(90, PUT),  # put is OTM below the forward
                quote(110, CALL),
                quote(110, PUT),  # call is OTM above
                quote(95, CALL),
                quote(95, PUT, crossed=True),  # only the ITM call usable
            )
        ],
        t=0.1,
    )
    assert reasons(sel) == {
        "X-90-C": surface_pb.DROP_REASON_ITM_DUPLICATE,
        "X-90-P": surface_pb.DROP_REASON_UNSPECIFIED,
        "X-110-C": surface_pb.DROP_REASON_UNSPECIFIED,
        "X-110-P": surface_pb.DROP_REASON_ITM_DUPLICATE,
        "X-95-C": surface_pb.DROP_REASON_UNSPECIFIED,
        "X-95-P": surface_pb.DROP_REASON_CROSSED,
    }


def test_moneyness_is_each_quotes_own() -> None:
    # The IV service's log-moneyness is against the forward the quote was solved on (its
    # venue's, at its price time); without one, the smile's forward.
    a = smile(quote(110, CALL), forward=100.0)
    stale = quote(110, CALL)
    stale.log_moneyness = math.log(110 / 104)  # priced when the forward was 104
    fresh = quote(120, CALL)
    fresh.log_moneyness = math.nan
    b = smile(stale, fresh, forward=105.0)
    b.venue = "okx"
    sel = select_quotes([a, b], t=0.1)
    np.testing.assert_allclose(
        sel.k, [math.log(1.1), math.log(110 / 104), math.log(120 / 105)], rtol=1e-14
    )
    assert sel.venue == ("deribit", "okx", "okx")


def test_weights_follow_the_spread_with_a_floor() -> None:
    sel = select_quotes(
        [
            smile(
                quote(110, CALL, bid_iv=0.50, ask_iv=0.52),
                quote(120, CALL, bid_iv=0.50, ask_iv=0.54),
                quote(130, CALL, bid_iv=0.50, ask_iv=0.5001),
            )
        ],
        t=0.1,
    )
    w = sel.weight
    # Inverse variance: a mid's noise scales with its spread, so weight = 1 / spread^2.
    assert w[0] / w[1] == pytest.approx(4.0, rel=1e-12)
    # The 1 bp spread is floored at a quarter of the median spread (0.02): weight 1/0.005^2.
    assert w[2] == pytest.approx(1 / 0.005**2, rel=1e-12)


def test_outliers_are_flagged_against_a_robust_scale() -> None:
    strikes = np.linspace(80, 120, 21)
    quotes = [quote(float(k), PUT if k < F else CALL, bid_iv=0.49, ask_iv=0.51) for k in strikes]
    quotes[5].bid_iv, quotes[5].ask_iv, quotes[5].mid_iv = 0.79, 0.81, 0.80
    sel = select_quotes([smile(*quotes)], t=0.1)
    fitted = np.full(sel.n_used, 0.5) + np.random.default_rng(0).normal(0, 0.002, sel.n_used)
    flags = flag_outliers(sel, fitted, min_keep=6)
    assert np.flatnonzero(flags).tolist() == [5]
    dropped = sel.drop_outliers(flags)
    assert dropped.drop_reason[5] == surface_pb.DROP_REASON_OUTLIER
    assert dropped.n_used == sel.n_used - 1
    # Never below min_keep.
    assert not np.any(flag_outliers(sel, fitted, min_keep=21))


def test_itm_quote_contradicted_by_its_twin_is_dropped() -> None:
    # Put-call parity gives both sides of a strike one vol: an in-the-money quote kept
    # because its out-of-the-money twin is unusable must still agree with the twin's
    # orders (a one-sided ask is still an offer; a one-tick bid is still a bid).
    nan = math.nan
    sel = select_quotes(
        [
            smile(
                quote(110, CALL, bid_iv=nan, ask_iv=0.50, one_sided=True),
                quote(110, PUT, bid_iv=0.60, ask_iv=0.62),  # bid above the call's offer
                quote(120, CALL, bid_iv=nan, ask_iv=0.55, one_sided=True),
                quote(120, PUT, bid_iv=0.50, ask_iv=0.53),  # consistent: kept
                quote(90, PUT, bid_iv=0.40, ask_iv=0.45, at_min_tick=True),
                quote(90, CALL, bid_iv=0.30, ask_iv=0.35),  # offer below the put's bid
                quote(80, PUT, crossed=True, bid_iv=0.40, ask_iv=0.30),
                quote(80, CALL, bid_iv=0.32, ask_iv=0.35),  # a crossed twin bounds nothing
            )
        ],
        t=0.1,
    )
    assert reasons(sel) == {
        "X-110-C": surface_pb.DROP_REASON_ONE_SIDED,
        "X-110-P": surface_pb.DROP_REASON_CROSSED,
        "X-120-C": surface_pb.DROP_REASON_ONE_SIDED,
        "X-120-P": surface_pb.DROP_REASON_UNSPECIFIED,
        "X-90-P": surface_pb.DROP_REASON_MIN_TICK,
        "X-90-C": surface_pb.DROP_REASON_CROSSED,
        "X-80-P": surface_pb.DROP_REASON_CROSSED,
        "X-80-C": surface_pb.DROP_REASON_UNSPECIFIED,
    }
