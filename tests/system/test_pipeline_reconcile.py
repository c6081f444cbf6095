"""Issue 16: the whole pipeline (`volstream up --sim`, every service its own process) at a
moderate rate reconciles every frame: each one the simulator sent was received, and
published, dead-lettered or ignored at the connector; every acknowledged publication is
stored once; every durable (book, IV, surface, archive) consumed everything stored for it.
Bad frames injected under load (truncated JSON, wrong types, unknown channels) are
dead-lettered or ignored, each counted. Counts, never times: the bench is
bench/bench_pipeline.py, whose reconciliation this test runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.bench_pipeline import BAD_KINDS, open_system, reconcile, wait_endpoints
from tests.system.conftest import SIM_START, start_up, stop_up

pytestmark = pytest.mark.slow

VENUES = ("deribit", "okx", "bybit", "binance")
# Total over the venues (per venue: / 4); BTC only, to keep the surface stage's share of a
# loaded 2-core machine small.
RATE = 800
LOAD_S = 8.0
# Until the load starts: little market data for the stages to catch up with at the first
# drain (the books' snapshots at subscription come whatever the rate).
START_RATE = 40
# A drain waits for the slowest stage; bounds a hang only.
DRAIN_TIMEOUT_S = 120.0


async def run(up: object) -> None:
    system = await open_system(up, VENUES)
    try:
        await wait_endpoints(system)
        await system.set_total_rate(0)
        before, _, drained = await system.drained(DRAIN_TIMEOUT_S)
        assert drained, "the pipeline did not settle before the load"
        await system.set_total_rate(RATE)
        await asyncio.sleep(LOAD_S / 2)
        injected = dict.fromkeys(BAD_KINDS, 0)
        for venue in VENUES:
            for kind in BAD_KINDS:
                injected[kind] += await system.inject(venue, kind, 2)
        await asyncio.sleep(LOAD_S / 2)
        await system.set_total_rate(0)
        after, _, drained = await system.drained(DRAIN_TIMEOUT_S)
        assert drained, "the pipeline did not drain"
    finally:
        await system.close()
    recon = reconcile(before, after, VENUES)
    assert recon.loss == 0, "\n".join(recon.failed())
    # The load reached every venue and every stage, as far as the surface stage's input.
    sent = {v: after.sim_frames[v] - before.sim_frames[v] for v in VENUES}
    assert all(n > 100 for n in sent.values()), sent
    consumed = {s: after.events_in[s] - before.events_in[s] for s in ("book", "iv", "surface")}
    assert all(n > 0 for n in consumed.values()), consumed
    # Every injected bad frame: truncated JSON and wrong types dead-lettered, an unknown
    # channel ignored (every one of the injected kinds was sent on some connection).
    assert all(n > 0 for n in injected.values()), injected
    assert recon.dead_lettered == injected["malformed"] + injected["wrong_types"]
    unknown = sum(n for what, n in recon.ignored.items() if what.startswith("unknown_channel"))
    assert unknown == injected["unknown_channel"], recon.ignored


def test_every_frame_is_accounted_for_under_load_with_bad_input(tmp_path: Path) -> None:
    up = start_up(
        tmp_path,
        "--sim",
        "--sim-start",
        SIM_START,
        "--sim-rate",
        str(START_RATE / len(VENUES)),
        "--currencies",
        "BTC",
    )
    try:
        asyncio.run(run(up))
        restarts = {n: s["restarts"] for n, s in up.state()["services"].items()}
        assert not any(restarts.values()), restarts  # a restart resets a service's counts
    finally:
        stop_up(up, timeout_s=30)
