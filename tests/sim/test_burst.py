"""Requotes burst above the steady message rate (docs/simulator.md section 1): the venue's
message budget is a token bucket, so a jump's requotes go out within the makers' latency
while the rate still caps the average."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simulator import SimConfig, SimHandle
from simulator.streaming import MessageBudget, PushVenue
from volstream.scenario import SCENARIOS

START = 1_773_057_600 * 1_000_000_000  # 2026-03-09T12:00:00Z
TICK_S = 0.1


def test_budget_builds_up_from_unused_rate_and_refills_at_the_steady_rate() -> None:
    b = MessageBudget()
    for _ in range(50):
        b.refill(100.0, TICK_S, burst_s=5.0)
    assert b.tokens == pytest.approx(500.0)
    assert b.take(450, 0.0) == 450
    b.refill(100.0, TICK_S, burst_s=5.0)
    assert b.tokens == pytest.approx(60.0)
    assert b.take(1_000, 0.0) == 60
    # Emptied, it gives the steady rate: 10 updates a tick.
    sent = 0
    for _ in range(100):
        b.refill(100.0, TICK_S, burst_s=5.0)
        sent += b.take(1_000, 0.5)
    assert 990 <= sent <= 1_010


def test_a_market_needing_more_than_the_rate_from_the_start_gets_the_rate() -> None:
    b = MessageBudget()
    sent = 0
    for _ in range(100):
        b.refill(100.0, TICK_S, burst_s=30.0)
        sent += b.take(25, 0.5)
    assert 990 <= sent <= 1_010


def test_budget_never_holds_more_than_its_burst() -> None:
    b = MessageBudget()
    for _ in range(1_000):
        b.refill(100.0, TICK_S, burst_s=2.0)
    assert b.tokens == pytest.approx(200.0)
    # A lower rate (POST /control/rate) lowers the capacity at once.
    b.refill(10.0, TICK_S, burst_s=2.0)
    assert b.tokens == pytest.approx(20.0)


def test_zero_burst_is_a_hard_cap_and_zero_rate_sends_nothing() -> None:
    b = MessageBudget()
    sent = [0, 0]
    for n in range(1_000):
        b.refill(100.0, TICK_S, burst_s=0.0)
        sent[0] += b.take(1_000, (n * 0.618) % 1.0)
    assert 9_900 <= sent[0] <= 10_100
    paused = MessageBudget()
    for _ in range(10):
        paused.refill(0.0, TICK_S, burst_s=30.0)
        sent[1] += paused.take(50, 0.999)
    assert sent[1] == 0


def _venue_after_jump(burst_s: float) -> tuple[int, list[int], list[int]]:
    """Deribit at 400 messages/s (200 updates/s: two notifications an update), every BTC
    option watched, a 3% jump 20 s in (the budget builds up from the rate the quiet market
    leaves unused): (options, updates sent per tick, requotes waiting for the budget per
    tick) over 24 s."""
    config = SimConfig(
        venues=("deribit",),
        currencies=("BTC",),
        clock="manual",
        start_time_ns=START,
        max_expiries=3,
        surface_drift=0.0,
        min_time_to_expiry_s=7 * 86_400.0,
        messages_per_second=400.0,
        burst_s=burst_s,
        scenario=replace(SCENARIOS["jump"], index_vol=0.0, jump_at_s=20.0),
    )
    handle = SimHandle(config)
    venue = handle.venues["deribit"]
    assert isinstance(venue, PushVenue)
    market = venue.markets["BTC"]
    options = market.open_instruments("option")
    for inst in options:
        market.set_watched(inst, +1)
    market.ensure_books(options, START)
    sent, waiting = [], []
    for n in range(1, 241):
        now = START + int(n * TICK_S * 1e9)
        handle.truth.step(now)
        before = venue.counters["updates"]
        venue.on_tick(now, TICK_S)
        sent.append(venue.counters["updates"] - before)
        waiting.append(venue.requotes_waiting["BTC"])
    return len(options), sent, waiting


async def test_a_jump_is_requoted_in_a_burst_above_the_rate() -> None:
    n, sent, waiting = _venue_after_jump(burst_s=30.0)
    # Quiet, the steady 20 updates a tick (the makers' activity fills them).
    assert 150 <= sum(sent[150:160]) <= 250, sent[150:160]
    # The jump (20 s to 21 s) requotes every option several times: far above the rate,
    # and nothing waits for the gateway.
    assert sum(sent[200:220]) > 3 * n > 10 * 20 * 2, sent[200:220]
    assert max(waiting) == 0, waiting
    _, capped_sent, capped_waiting = _venue_after_jump(burst_s=0.0)
    assert sum(capped_sent[200:220]) <= 1.15 * 20 * 20, "a hard cap at the steady rate"
    assert max(capped_waiting) > n / 3, "with a hard cap the requotes queue"
