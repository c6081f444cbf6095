"""Market makers as the venues' behave (docs/simulator.md): a move that shifts a price by a
tick is requoted after a drawn latency, prices sit on the venue's tick, a deep OTM ask at
the minimum tick, spreads widen in a fast market; the scenarios' moves happen. Pure: the
truth and one venue market driven by hand, no server."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from simulator.bybit import BybitNaming, bybit_style
from simulator.deribit import DeribitNaming, deribit_style
from simulator.market import MAX_LATENCY_MS, Naming, QuoteStyle, VenueMarket
from simulator.truth import SECONDS_PER_YEAR, TruthConfig, TruthMarket
from volmath import black76
from volstream.scenario import SCENARIOS, Scenario

START = 1_773_057_600 * 1_000_000_000  # 2026-03-09T12:00:00Z
TICK = 100_000_000


def market(
    scenario: Scenario, naming: Naming, style: QuoteStyle
) -> tuple[TruthMarket, VenueMarket]:
    truth = TruthMarket(
        TruthConfig(
            currencies=("BTC",),
            surface_drift=0.0,
            max_expiries=4,
            min_time_to_expiry_s=7 * 86_400.0,
            scenario=scenario,
        ),
        START,
    )
    m = VenueMarket("v", truth.currencies["BTC"], style, naming, 5, START)
    options = m.open_instruments("option")
    for inst in options:
        m.set_watched(inst, +1)
    m.ensure_books(options, START)
    return truth, m


def still(**kw: Any) -> Scenario:
    """The quiet scenario with the index held still unless a move is asked for."""
    return replace(SCENARIOS["quiet"], index_vol=0.0, **kw)


def run_requotes(truth: TruthMarket, m: VenueMarket, now: int, ticks: int) -> tuple[int, int, int]:
    """Tick the market makers `ticks` times: (scheduled, requoted, final time). Every
    requote goes out on the first tick at or after its due time."""
    scheduled = requoted = 0
    for _ in range(ticks):
        now += TICK
        truth.step(now)
        scheduled += m.reprice(now)
        due = m.due(now)
        for inst in due:
            assert now - TICK < m._a["due_ns"][inst.slot] <= now
        requoted += len(due)
        if due:
            m.update(due, now, requote=True)
    return scheduled, requoted, now


def book_ticks(m: VenueMarket) -> tuple[np.ndarray, np.ndarray]:
    bid = [max(i.book.bids) if i.book.bids else 0 for i in m._opts]
    ask = [min(i.book.asks) if i.book.asks else 0 for i in m._opts]
    return np.array(bid), np.array(ask)


@pytest.mark.parametrize(
    ("naming", "style"),
    [(DeribitNaming(), deribit_style("BTC")), (BybitNaming(), bybit_style("BTC"))],
)
def test_index_move_is_requoted_within_the_latency(naming: Naming, style: QuoteStyle) -> None:
    truth, m = market(still(jump_size=0.01, jump_at_s=0.2, jump_duration_s=0.1), naming, style)
    n = len(m._opts)
    now = START + TICK
    truth.step(now)
    # A tenth of a second of time decay moves (almost) no price by a tick.
    assert m.reprice(now) <= 0.01 * n
    run_requotes(truth, m, now, 1)
    now += 2 * TICK
    truth.step(now)
    held = book_ticks(m)
    scheduled = m.reprice(now)
    assert scheduled > 0.3 * n, "a 1% index move shifts most prices by a tick"
    delay_ms = (m._a["due_ns"][m._a["due_ns"] > 0] - now) / 1e6
    assert delay_ms.min() > 0 and delay_ms.max() <= MAX_LATENCY_MS
    # Until its latency has passed a maker's quote stays where it was.
    assert all((a == b).all() for a, b in zip(held, book_ticks(m), strict=True))
    _, requoted, now = run_requotes(truth, m, now - TICK, 60)
    assert requoted >= scheduled
    # Six seconds on, every book that is not waiting for a (new) requote quotes the truth.
    pending = m._a["due_ns"] > 0
    assert pending.sum() <= 0.05 * n
    idx = np.arange(n)
    target = m._quote_ticks(idx, truth.snapshot("BTC"), now // 1_000_000, fresh=False)
    bid, ask = book_ticks(m)
    stale = ((bid != target[0]) | (ask != target[1])) & ~pending
    assert not stale.any(), [m._opts[i].symbol for i in np.nonzero(stale)[0]]


def test_latency_distribution_matches_its_parameters() -> None:
    _, m = market(
        still(latency_ms=60.0, latency_sigma=0.6, lag_fraction=0.0),
        DeribitNaming(),
        deribit_style("BTC"),
    )
    ms = m.latency_ns(20_000) / 1e6
    assert 55.0 < float(np.median(ms)) < 65.0
    assert 0.55 < float(np.std(np.log(ms))) < 0.65
    _, m = market(
        still(lag_fraction=0.25, lag_latency_ms=400.0), DeribitNaming(), deribit_style("BTC")
    )
    ms = m.latency_ns(20_000) / 1e6
    # Slow makers: a quarter of the requotes, median 400 ms (fast ones rarely pass 250 ms).
    assert 0.2 < float(np.mean(ms > 250.0)) < 0.3


@pytest.mark.parametrize(
    ("naming", "style"),
    [(DeribitNaming(), deribit_style("BTC")), (BybitNaming(), bybit_style("BTC"))],
)
def test_prices_sit_on_the_tick_and_deep_otm_asks_at_the_minimum(
    naming: Naming, style: QuoteStyle
) -> None:
    truth, m = market(still(jump_size=0.02, jump_at_s=0.0), naming, style)
    _, _, now = run_requotes(truth, m, START, 40)
    snap = truth.snapshot("BTC")
    tick = style.option_tick
    min_tick_asks = 0
    for inst in m.open_instruments("option"):
        for price, _ in inst.book.side_levels(True) + inst.book.side_levels(False):
            assert abs(price / tick - round(price / tick)) < 1e-6, (inst.symbol, price)
        ask = inst.book.best(False)
        s = snap.slice_for(inst.expiry_ns)
        assert s is not None
        fwd = m.forward_published(s)
        t = (inst.expiry_ms - now // 1_000_000) / 1000.0 / SECONDS_PER_YEAR
        value = float(black76.price(fwd, inst.strike, t, float(s.vol(inst.strike)), inst.is_call))
        value = value / fwd if style.inverse else value * style.premium_coins
        if ask is not None and value < 0.4 * tick:
            # Worth less than a tick: offered at the minimum tick, never at zero.
            assert ask[0] == pytest.approx(tick), inst.symbol
            min_tick_asks += 1
    if style.inverse:
        assert min_tick_asks > 0


def test_spreads_widen_in_a_fast_market() -> None:
    truth, m = market(
        still(jump_size=0.03, jump_at_s=1.0, spread_widening=1.0),
        DeribitNaming(),
        deribit_style("BTC"),
    )
    now = START
    widths = []
    for _ in range(30):
        now += TICK
        truth.step(now)
        m.reprice(now)
        widths.append(m.widen)
    assert widths[5] == 1.0, "quiet before the jump"
    assert max(widths) == 2.0, "fully widened during a 3%/s move"


def test_jump_happens_within_its_second() -> None:
    truth = TruthMarket(
        TruthConfig(currencies=("BTC",), scenario=still(jump_size=0.03, jump_at_s=5.0)), START
    )
    start = truth.currencies["BTC"].index
    path = []
    for n in range(1, 81):
        truth.step(START + n * TICK)
        path.append(truth.currencies["BTC"].index)
    assert path[48] == pytest.approx(start), "before the jump"
    assert path[59] == pytest.approx(start * math.exp(0.03)), "3% after one second"
    assert all(b >= a for a, b in itertools.pairwise(path))


def test_vol_shock_raises_atm_by_its_points_over_its_duration() -> None:
    cfg = TruthConfig(
        currencies=("BTC",),
        surface_drift=0.0,
        scenario=still(shock_vol_pts=10.0, shock_at_s=2.0, shock_duration_s=60.0),
    )
    truth = TruthMarket(cfg, START)
    atm0 = [s.atm_vol for s in truth.snapshot("BTC").slices]
    truth.step(START + 32 * 1_000_000_000)
    mid = [s.atm_vol for s in truth.snapshot("BTC").slices]
    truth.step(START + 70 * 1_000_000_000)
    end = [s.atm_vol for s in truth.snapshot("BTC").slices]
    for a, b, c in zip(atm0, mid, end, strict=True):
        assert b - a == pytest.approx(0.05, abs=2e-3)
        assert c - a == pytest.approx(0.10, abs=2e-3)


def test_trending_index_drifts_by_its_rate() -> None:
    truth = TruthMarket(
        TruthConfig(currencies=("BTC",), scenario=replace(SCENARIOS["trending"], index_vol=0.0)),
        START,
    )
    start = truth.currencies["BTC"].index
    for minute in range(1, 61):
        truth.step(START + minute * 60 * 1_000_000_000)
    assert truth.currencies["BTC"].index == pytest.approx(start * math.exp(0.02))
