"""Configured message rate vs what a client subscribed to everything receives (loose)."""

from __future__ import annotations

import time

from simulator import SimConfig, run_simulator
from tests.sim.conftest import RpcClient, get_instruments


async def test_client_sees_roughly_the_configured_rate() -> None:
    rate = 5_000.0
    handle = await run_simulator(SimConfig(messages_per_second=rate, seed=3))
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
        await client.notifications(0.8)  # snapshots and first tickers
        start = time.monotonic()
        notes = await client.notifications(2.0)
        measured = len(notes) / (time.monotonic() - start)
        assert 0.5 * rate < measured < 1.4 * rate, measured
        kinds = {m["params"]["channel"].split(".")[0] for m in notes}
        assert kinds == {"book", "ticker"}
        await client.close()
    finally:
        await handle.stop()
