"""Simulator clocks: virtual event time, fast pacing, and reproducible runs per seed."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from simulator import run_simulator
from tests.sim.conftest import RpcClient, get_instruments, near_money, option_names, small_config

START = int(datetime(2026, 3, 10, 10, 30, tzinfo=UTC).timestamp()) * 1_000_000_000
TICK_MS = 100
SPEED = 20.0


async def test_fast_clock_runs_ahead_of_the_wall_on_exact_ticks() -> None:
    handle = await run_simulator(small_config(clock="fast", speed=SPEED, start_time_ns=START))
    try:
        _, body = await get_instruments(handle, "BTC", "option")
        first_expiry = min(i["expiration_timestamp"] for i in body["result"])
        assert first_expiry > START // 1_000_000, "listings follow the virtual start"
        client = await RpcClient.connect(handle.urls["deribit"].ws_url)
        await client.call("public/subscribe", {"channels": ["deribit_price_index.btc_usd"]})
        wall0 = time.monotonic()
        notes = await client.notifications(1.0)
        wall = time.monotonic() - wall0
        stamps = [m["params"]["data"]["timestamp"] for m in notes]
        assert len(stamps) >= 5
        assert all((s - START // 1_000_000) % TICK_MS == 0 for s in stamps)
        sim_elapsed = (stamps[-1] - stamps[0]) / 1000
        # Paced at SPEED simulated seconds per wall second; a starved loop skips ticks
        # rather than catching up, so an eighth of SPEED is the slack for a loaded machine.
        assert sim_elapsed > SPEED / 8 * wall, f"{sim_elapsed / wall:.1f}x, not about {SPEED}x"
        now = (await client.call("public/get_time"))["result"]
        assert now >= stamps[-1] and now < START // 1_000_000 + 3_600_000
        await client.close()
    finally:
        await handle.stop()


async def run_manual(seed: int) -> list[Any]:
    handle = await run_simulator(
        small_config(clock="manual", start_time_ns=START, seed=seed, messages_per_second=8_000)
    )
    try:
        names = near_money(handle, await option_names(handle), 15)
        client = await RpcClient.connect(handle.urls["deribit"].ws_url)
        channels = [f"{k}.{n}.100ms" for n in names for k in ("book", "ticker")]
        await client.call("public/subscribe", {"channels": channels})
        frames: list[Any] = []
        for _ in range(6):
            await handle.step(1)
            frames.extend(await client.drain())
        await client.close()
        return [orjson.dumps(f["params"]) for f in frames if "params" in f]
    finally:
        await handle.stop()


async def test_same_seed_and_steps_give_the_same_messages() -> None:
    a, b = await asyncio.gather(run_manual(4), run_manual(4))
    c = await run_manual(5)
    assert len(a) > 40
    assert a == b
    assert a != c


async def test_an_expiry_passing_delists_its_instruments_and_lists_new_ones() -> None:
    # 30 s before a daily expiry; the manual clock walks through 08:00 UTC.
    start = int(datetime(2026, 3, 10, 7, 59, 30, tzinfo=UTC).timestamp()) * 1_000_000_000
    handle = await run_simulator(
        small_config(clock="manual", start_time_ns=start, min_time_to_expiry_s=10.0, max_expiries=4)
    )
    try:
        _, before = await get_instruments(handle, "BTC", "option")
        expiries = sorted({i["expiration_timestamp"] for i in before["result"]})
        first = expiries[0]
        assert first == start // 1_000_000 + 30_000
        doomed = [
            i["instrument_name"] for i in before["result"] if i["expiration_timestamp"] == first
        ]
        client = await RpcClient.connect(handle.urls["deribit"].ws_url)
        await client.call(
            "public/subscribe",
            {"channels": [f"ticker.{doomed[0]}.100ms", "instrument.state.any.btc"]},
        )
        await handle.step(310)
        notes = await client.notifications(0.5)
        closed = {
            m["params"]["data"]["instrument_name"]
            for m in notes
            if m["params"]["channel"].startswith("instrument.state")
            and m["params"]["data"]["state"] == "closed"
        }
        assert set(doomed) <= closed
        last_ticker = [m for m in notes if m["params"]["channel"].startswith("ticker")][-1]
        assert last_ticker["params"]["data"]["state"] == "closed"
        _, after = await get_instruments(handle, "BTC", "option")
        live = {i["expiration_timestamp"] for i in after["result"]}
        assert first not in live
        assert len(live) == 4, "the schedule lists a new expiry in place of the old one"
        _, gone = await get_instruments(handle, "BTC", "option", expired=True)
        assert {i["instrument_name"] for i in gone["result"]} == set(doomed)
        await client.close()
    finally:
        await handle.stop()
