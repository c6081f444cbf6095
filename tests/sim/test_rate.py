"""Configured message rate vs what a client subscribed to everything receives (loose)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from typing import Any

from simulator import SimConfig, run_simulator
from tests.sim.conftest import RpcClient, get_instruments

# Seconds of event time counted, after the same of subscription snapshots and first tickers.
WARMUP_S = 0.8
WINDOW_S = 2.0


async def test_client_sees_roughly_the_configured_rate() -> None:
    rate = 5_000.0
    config = SimConfig(messages_per_second=rate, seed=3)
    handle = await run_simulator(config)
    try:
        names: list[str] = []
        for ccy in ("BTC", "ETH"):
            _, body = await get_instruments(handle, ccy, None)
            names += [i["instrument_name"] for i in body["result"]]
        assert len(names) > 1_000
        client = await RpcClient.connect(handle.urls["deribit"].ws_url)
        channels = [f"{kind}.{n}.100ms" for n in names for kind in ("book", "ticker")]
        for i in range(0, len(channels), 1_000):
            await client.call("public/subscribe", {"channels": channels[i : i + 1_000]})
        # Counted by the notifications' own event times (each tick's, in ms), not by when
        # they arrive: a client slowed down by a busy machine gets them later, not fewer.
        notes: list[dict[str, Any]] = []
        per_ms: Counter[int] = Counter()
        cap_ms = 2000 * config.tick_interval_s
        ticks: list[int] = []
        span_s = 0.0
        deadline = time.monotonic() + 15 * (WARMUP_S + WINDOW_S)  # bounds a hang only
        while span_s < WINDOW_S:
            assert time.monotonic() < deadline, f"{len(notes)} notifications"
            batch = await client.notifications(0.5)
            notes += batch
            per_ms.update(m["params"]["data"]["timestamp"] for m in batch)
            if not per_ms:
                continue
            stamps = sorted(per_ms)
            start = next((s for s in stamps if s >= stamps[0] + 1000 * WARMUP_S), stamps[-1])
            # Ticks after `start`, up to the one before the last seen (complete: frames arrive
            # in order). A tick makes rate x the time since the previous one, at most two tick
            # intervals' worth (a late tick does not burst).
            ticks = [s for s in stamps if start < s < stamps[-1]]
            span_s = sum(min(b - a, cap_ms) for a, b in itertools.pairwise([start, *ticks])) / 1000
        measured = sum(per_ms[s] for s in ticks) / span_s
        assert 0.5 * rate < measured < 1.4 * rate, measured
        kinds = {m["params"]["channel"].split(".")[0] for m in notes}
        assert kinds == {"book", "ticker"}
        await client.close()
    finally:
        await handle.stop()
