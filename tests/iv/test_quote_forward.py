"""The forward policies: "quote" solves each price on the forward that held when it last
changed (its own forward); "current" (the default) on the expiry's current forward."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from svc_iv.core import IvConfig, IvCore
from svc_iv.forward import ForwardHistory
from svc_iv.solver import implied_vol
from tests.iv.test_core import (
    EXP1,
    NOW,
    NS,
    YEAR_NS,
    F,
    by_symbol,
    coin_price,
    inst,
    iset,
    name,
    ticker,
    top,
)
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb

K = 45_000.0
CALL = name(K, True)
CARRIER = name(40_000, True)  # the ticker that carries the venue forward
# Time updates always applied (never kept): IVs exact to compare at 1e-10.
EXACT = IvConfig(skip_iv_bp=0.0, forward_policy="quote")
CURRENT = IvConfig(skip_iv_bp=0.0, forward_policy="current")


def _core(config: IvConfig = EXACT) -> IvCore:
    core = IvCore("deribit", "BTC", config)
    core.on_instruments(iset(inst(k, c) for k in (40_000.0, K) for c in (True, False)))
    core.on_ticker(ticker(CARRIER, forward_usd=F))
    return core


def _t(now: int) -> float:
    return (EXP1 - now) / YEAR_NS


def _iv(native: float, forward: float, now: int) -> float:
    iv, _ = implied_vol(native * forward, forward, K, _t(now), True)
    return float(iv)


def _quote(core: IvCore, now: int) -> tuple[iv_pb.Smile, iv_pb.SmileQuote]:
    (smile,) = core.flush(now)
    return smile, by_symbol(smile)[CALL]


@pytest.mark.filterwarnings("error")
def test_a_price_stays_on_its_forward_until_it_changes() -> None:
    core = _core()
    bid, ask = coin_price(K, True, 0.78), coin_price(K, True, 0.82)
    core.on_top(top(CALL, bid, ask, t=NOW))
    smile, q = _quote(core, NOW)
    assert q.bid_iv == pytest.approx(0.78, abs=1e-12)

    # The forward moves 1%, the call's price does not: still a price at F.
    f2 = F * 1.01
    later = NOW + 2 * NS
    core.on_ticker(ticker(CARRIER, t=NOW + NS, forward_usd=f2))
    smile, q = _quote(core, later)
    assert smile.forward_usd == f2
    assert q.bid_iv == pytest.approx(_iv(bid, F, later), abs=1e-10)
    assert q.ask_iv == pytest.approx(_iv(ask, F, later), abs=1e-10)
    assert q.log_moneyness == pytest.approx(math.log(K / F), abs=1e-15)
    assert q.bid_price_usd_per_coin == pytest.approx(bid * F, rel=1e-15)
    # Solved on F2 it would be far off: the test can tell the two apart.
    assert abs(q.bid_iv - _iv(bid, f2, later)) > 1e-3

    # A fresh price after the move is solved on F2.
    bid2, ask2 = coin_price(K, True, 0.79, forward=f2), coin_price(K, True, 0.83, forward=f2)
    core.on_top(top(CALL, bid2, ask2, t=later + NS))
    smile, q = _quote(core, later + NS)
    assert q.bid_iv == pytest.approx(_iv(bid2, f2, later + NS), abs=1e-10)
    assert q.ask_iv == pytest.approx(_iv(ask2, f2, later + NS), abs=1e-10)
    assert q.log_moneyness == pytest.approx(math.log(K / f2), abs=1e-15)


def test_a_price_takes_the_forward_in_force_at_its_event_time() -> None:
    """Several forward moves between two flushes: the one before the price change counts."""
    core = _core()
    core.flush(NOW)
    forwards = {NOW + NS: F * 1.001, NOW + 3 * NS: F * 1.002, NOW + 5 * NS: F * 1.003}
    for t_ns, f in forwards.items():
        core.on_ticker(ticker(CARRIER, t=t_ns, forward_usd=f))
    bid = coin_price(K, True, 0.8, forward=F * 1.002)
    core.on_top(top(CALL, bid, bid + 0.001, t=NOW + 4 * NS))
    later = NOW + 6 * NS
    smile, q = _quote(core, later)
    assert smile.forward_usd == F * 1.003
    assert q.bid_iv == pytest.approx(_iv(bid, F * 1.002, later), abs=1e-10)
    # A price older than every forward seen gets the oldest.
    put = by_symbol(smile)[name(K, False)]
    assert math.isnan(put.bid_iv)
    core.on_top(top(name(K, False), 0.05, 0.06, t=NOW - 10 * NS))
    (smile,) = core.flush(later)
    assert by_symbol(smile)[name(K, False)].log_moneyness == pytest.approx(math.log(K / F))


def test_a_repeated_ticker_does_not_refresh_the_price_time() -> None:
    """Ticker-only symbol: the same bid/ask/mark again later is no re-pricing; quote_time_ns
    still says when the quote was last seen."""
    core = _core()
    bid, ask, mark = (coin_price(K, True, s) for s in (0.78, 0.82, 0.8))
    prices = {
        "best_bid_price_native": bid,
        "best_ask_price_native": ask,
        "mark_price_native": mark,
    }
    core.on_ticker(ticker(CALL, t=NOW, **prices))
    core.flush(NOW)
    f2 = F * 1.01
    core.on_ticker(ticker(CARRIER, t=NOW + NS, forward_usd=f2))
    repeat = NOW + 2 * NS
    core.on_ticker(ticker(CALL, t=repeat, **prices))
    _, q = _quote(core, repeat)
    assert q.quote_time_ns == repeat
    assert q.log_moneyness == pytest.approx(math.log(K / F), abs=1e-15)
    assert q.bid_iv == pytest.approx(_iv(bid, F, repeat), abs=1e-10)
    assert q.mark_iv == pytest.approx(_iv(mark, F, repeat), abs=1e-10)
    # A size-only book update is no re-pricing either.
    core.on_top(top(CALL, bid, ask, t=repeat + NS))
    core.on_top(top(CALL, bid, ask, t=repeat + 2 * NS))
    _, q = _quote(core, repeat + 2 * NS)
    assert q.bid_iv == pytest.approx(_iv(bid, F, repeat + 2 * NS), abs=1e-10)
    # The mark alone moves: the mark is on F2, bid and ask stay on F.
    mark2 = coin_price(K, True, 0.8, forward=f2)
    core.on_ticker(ticker(CALL, t=repeat + 3 * NS, **{**prices, "mark_price_native": mark2}))
    _, q = _quote(core, repeat + 3 * NS)
    assert q.mark_iv == pytest.approx(_iv(mark2, f2, repeat + 3 * NS), abs=1e-10)
    assert q.bid_iv == pytest.approx(_iv(bid, F, repeat + 3 * NS), abs=1e-10)
    assert q.log_moneyness == pytest.approx(math.log(K / F), abs=1e-15)


def test_a_new_forward_input_re_pins_every_quote() -> None:
    """Index first, then the venue forward: inputs may differ by a basis, so every quote is
    re-solved on the new input (its oldest entry for prices older than it)."""
    core = IvCore("deribit", "BTC", EXACT)
    core.on_instruments(iset(inst(k, c) for k in (40_000.0, K) for c in (True, False)))
    index = md_pb.IndexPrice(header=common_pb.EventHeader(event_time_ns=NOW), price_usd=F - 100)
    core.on_index(index)
    bid = coin_price(K, True, 0.8)
    core.on_top(top(CALL, bid, bid + 0.001, t=NOW))
    smile, q = _quote(core, NOW)
    assert smile.forward_source == common_pb.FORWARD_SOURCE_INDEX
    assert q.log_moneyness == pytest.approx(math.log(K / (F - 100)))
    core.on_ticker(ticker(CARRIER, t=NOW + NS, forward_usd=F))
    solved = core.stats.quotes_solved
    smile, q = _quote(core, NOW + NS)
    assert smile.forward_source == common_pb.FORWARD_SOURCE_VENUE
    assert core.stats.quotes_solved - solved == 4
    assert q.bid_iv == pytest.approx(_iv(bid, F, NOW + NS), abs=1e-10)


# --------------------------------------------------------------------------------------
# "current": every price on the expiry's current forward
# --------------------------------------------------------------------------------------
def test_current_is_the_default_and_unknown_policies_are_refused() -> None:
    assert IvConfig().forward_policy == "current"
    with pytest.raises(ValueError, match=r"'spot'.*current, quote"):
        IvConfig(forward_policy="spot")


@pytest.mark.filterwarnings("error")
def test_current_re_solves_every_quote_on_a_forward_move() -> None:
    core = _core(CURRENT)
    bid, ask = coin_price(K, True, 0.78), coin_price(K, True, 0.82)
    core.on_top(top(CALL, bid, ask, t=NOW))
    _, q = _quote(core, NOW)
    assert q.bid_iv == pytest.approx(0.78, abs=1e-12)

    # The forward moves 1%, the call's price does not: solved on F2 like the venue does.
    f2 = F * 1.01
    later = NOW + 2 * NS
    core.on_ticker(ticker(CARRIER, t=NOW + NS, forward_usd=f2))
    solved = core.stats.quotes_solved
    smile, q = _quote(core, later)
    assert smile.forward_usd == f2
    assert core.stats.quotes_solved - solved == 4  # every quote of the expiry
    assert q.bid_iv == pytest.approx(_iv(bid, f2, later), abs=1e-10)
    assert q.ask_iv == pytest.approx(_iv(ask, f2, later), abs=1e-10)
    assert q.log_moneyness == pytest.approx(math.log(K / f2), abs=1e-15)
    assert q.bid_price_usd_per_coin == pytest.approx(bid * f2, rel=1e-15)
    assert abs(q.bid_iv - _iv(bid, F, later)) > 1e-3  # the policies differ here

    # Only time moves: nothing is re-solved, the IVs follow s / sqrt(T) exactly.
    solved = core.stats.quotes_solved
    core.on_top(top(CALL, bid, ask, t=later + NS))  # size-only: no re-pricing
    _, q = _quote(core, later + 10 * NS)
    assert core.stats.quotes_solved == solved
    assert q.bid_iv == pytest.approx(_iv(bid, f2, later + 10 * NS), abs=1e-10)


def test_current_index_move_re_solves_only_the_expiries_priced_on_it() -> None:
    """The work-saving rule holds for "current": an index move cannot change an expiry
    priced on a venue forward, so only the index-priced expiry is re-solved."""
    core = IvCore("deribit", "BTC", CURRENT)
    other = EXP1 + 7 * 86_400 * NS
    strikes = (40_000.0, K)
    core.on_instruments(
        iset(
            [inst(k, c) for k in strikes for c in (True, False)]
            + [inst(k, c, expiry=other) for k in strikes for c in (True, False)]
        )
    )
    core.on_ticker(ticker(CARRIER, forward_usd=F))  # EXP1 on the venue forward
    core.on_index(md_pb.IndexPrice(header=common_pb.EventHeader(event_time_ns=NOW), price_usd=F))
    core.on_top(top(CALL, 0.05, 0.06, t=NOW))
    core.on_top(top(name(K, True, other), 0.07, 0.08, t=NOW))
    first = {s.expiry_time_ns: s for s in core.flush(NOW)}
    assert first[other].forward_source == common_pb.FORWARD_SOURCE_INDEX
    solved = core.stats.quotes_solved
    core.on_index(
        md_pb.IndexPrice(header=common_pb.EventHeader(event_time_ns=NOW + NS), price_usd=F + 400)
    )
    (smile,) = core.flush(NOW + NS)
    assert smile.expiry_time_ns == other and smile.forward_usd == F + 400
    assert core.stats.quotes_solved - solved == 4
    q = by_symbol(smile)[name(K, True, other)]
    assert q.log_moneyness == pytest.approx(math.log(K / (F + 400)), abs=1e-15)


# --------------------------------------------------------------------------------------
# History bounds
# --------------------------------------------------------------------------------------
def test_history_lookup_and_bounds() -> None:
    h = ForwardHistory(window_ns=10 * NS, max_entries=4)
    assert math.isnan(float(h.at(NOW)))
    h.record(NOW, 100.0)
    h.record(NOW + NS, 100.0)  # a repeat is no entry
    h.record(NOW + 2 * NS, math.nan)  # nor is an unusable value
    assert len(h) == 1
    h.record(NOW + 2 * NS, 101.0)
    h.record(NOW + NS, 102.0)  # late: taken as the latest time, times stay sorted
    assert h.times().tolist() == [NOW, NOW + 2 * NS, NOW + 2 * NS]
    at = h.at([NOW - NS, NOW, NOW + NS, NOW + 2 * NS, NOW + 9 * NS])
    assert at.tolist() == [100.0, 100.0, 100.0, 102.0, 102.0]

    # Time bound: the entry in force at the window's start stays.
    h = ForwardHistory(window_ns=10 * NS, max_entries=100)
    for s in range(30):
        h.record(NOW + s * NS, 100.0 + s)
    assert h.times()[0] == NOW + 19 * NS
    assert float(h.at(NOW + 19 * NS)) == 119.0
    assert float(h.at(NOW)) == 119.0  # older than the history: the oldest entry
    # Count bound, and appends past the buffer's end (compaction) keep the order.
    h = ForwardHistory(window_ns=10**18, max_entries=4)
    for s in range(11):
        h.record(NOW + s * NS, 100.0 + s)
    assert h.values().tolist() == [107.0, 108.0, 109.0, 110.0]
    assert float(h.at(NOW + 8 * NS + 1)) == 108.0
    assert h.latest == 110.0 and h.latest_time == NOW + 10 * NS


def test_a_pinned_quote_outlives_the_history() -> None:
    """Once solved, a quote keeps its forward however far the history moves on; a quote
    first seen after its price time left the history gets the oldest entry kept."""
    config = dataclasses.replace(EXACT, forward_history_s=10.0, forward_history_entries=8)
    core = _core(config)
    bid = coin_price(K, True, 0.8)
    core.on_top(top(CALL, bid, bid + 0.001, t=NOW))
    core.flush(NOW)
    put_bid = coin_price(K, False, 0.8)
    core.on_top(top(name(K, False), put_bid, put_bid + 0.001, t=NOW))  # not flushed yet
    for s in range(1, 31):
        core.on_ticker(ticker(CARRIER, t=NOW + s * NS, forward_usd=F + s))
    later = NOW + 31 * NS
    before = dataclasses.replace(core.stats)
    smile, q = _quote(core, later)
    assert smile.forward_usd == F + 30
    assert q.bid_iv == pytest.approx(_iv(bid, F, later), abs=1e-10)
    put = by_symbol(smile)[name(K, False)]
    # The oldest entry kept: the 10 s window would keep 11 entries (from F + 20), the
    # count bound keeps the last 8 (from F + 23).
    assert put.log_moneyness == pytest.approx(math.log(K / (F + 23)), abs=1e-15)
    # The call was not re-solved, only its time moved.
    assert core.stats.quotes_solved - before.quotes_solved == 1
    assert np.isfinite(put.bid_iv)
