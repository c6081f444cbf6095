"""Our IVs against the venues' own on every recorded Deribit, Bybit and Binance ticker,
through the IV stage as it runs (venue parse -> IvStage), under both forward policies
(bench/bench_iv_venues.py prints the table)."""

from __future__ import annotations

import pytest

from bench.bench_iv_venues import (
    EXPLAIN_ABOVE,
    MEDIAN_TARGET,
    RECORDINGS,
    Diff,
    summarise,
    venue_diffs,
)

# Sides carrying a venue IV in the recordings (bid, ask, mark): Deribit 89 tickers,
# Bybit 3 tickers, Binance 2.
MIN_SIDES = {"deribit": 220, "bybit": 7, "binance": 6}


@pytest.fixture(scope="module")
def diffs() -> dict[str, dict[str, list[Diff]]]:
    return {
        policy: {venue: venue_diffs(venue, policy) for venue in RECORDINGS}
        for policy in ("current", "quote")
    }


@pytest.mark.parametrize("policy", ["current", "quote"])
def test_median_within_target_and_every_large_diff_explained_by_the_tick(
    diffs: dict[str, dict[str, list[Diff]]], policy: str
) -> None:
    every = []
    for venue, found in diffs[policy].items():
        assert len(found) >= MIN_SIDES[venue], venue
        assert {d.side for d in found} == {"bid", "ask", "mark"}, venue
        every += found
    summary = summarise(every)
    assert summary.median <= MEDIAN_TARGET
    unexplained = [d for d in every if not d.explained]
    assert not unexplained, unexplained[:5]
    # The tick rule is a real test: large diffs exist, and each is checked against it.
    big = [d for d in every if d.diff > EXPLAIN_ABOVE]
    assert big and all(d.tick_move >= d.diff for d in big)


def test_current_agrees_with_the_venue_better_than_quote(
    diffs: dict[str, dict[str, list[Diff]]],
) -> None:
    """Deribit bid/ask: the venue solves on the forward of the moment."""
    quoted = {
        policy: [d for d in diffs[policy]["deribit"] if d.side != "mark"]
        for policy in ("current", "quote")
    }
    current, quote = (summarise(quoted[p]) for p in ("current", "quote"))
    assert current.median < quote.median
    assert current.worst < 0.2 < quote.worst
