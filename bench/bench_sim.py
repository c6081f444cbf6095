"""Simulator throughput: configured message rate vs what one websocket client receives.

    .venv/bin/python -m bench.bench_sim [--seconds 3] [--rates 2000,5000,10000,20000,30000]

One simulator (Deribit, BTC+ETH, ~2,200 instruments) per rate; one client subscribes to the
book.{inst}.100ms and ticker.{inst}.100ms channels of every instrument and counts frames
after a warm-up. The reference column is the configured rate (what a client subscribed to
everything should see); the sim's own tick CPU time and frames sent are shown beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import orjson
import websockets

from svc_connector.sim import SimConfig, run_simulator
from svc_connector.sim.deribit import DeribitVenue


async def measure(rate: float, seconds: float, warmup: float) -> dict[str, float]:
    handle = await run_simulator(SimConfig(messages_per_second=rate, seed=11))
    urls = handle.urls["deribit"]
    venue = handle.venues["deribit"]
    assert isinstance(venue, DeribitVenue)
    try:
        names: list[str] = []
        async with aiohttp.ClientSession() as http:
            for ccy in handle.truth.currencies:
                async with http.get(
                    f"{urls.rest_base}/public/get_instruments",
                    params={"currency": ccy, "expired": "false"},
                ) as resp:
                    body = await resp.json()
                names += [i["instrument_name"] for i in body["result"]]
        channels = [f"book.{n}.100ms" for n in names] + [f"ticker.{n}.100ms" for n in names]
        async with websockets.connect(urls.ws_url, max_size=2**24, max_queue=None) as ws:
            for i in range(0, len(channels), 500):
                req = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "public/subscribe",
                    "params": {"channels": channels[i : i + 500]},
                }
                await ws.send(orjson.dumps(req).decode())
            start = time.perf_counter()
            counted = 0
            frames_before = 0
            cpu_before = 0.0
            ticks_before = 0
            measuring = False
            while True:
                raw = await ws.recv()
                now = time.perf_counter()
                if not measuring and now - start >= warmup:
                    measuring = True
                    t0 = now
                    counted = 0
                    frames_before = venue.counters["frames_sent"]
                    cpu_before = handle.tick_time_s
                    ticks_before = handle.ticks
                msg = orjson.loads(raw)
                if msg.get("method") == "subscription":
                    counted += 1
                if measuring and now - t0 >= seconds:
                    break
            elapsed = time.perf_counter() - t0
            frames = venue.counters["frames_sent"] - frames_before
            ticks = max(handle.ticks - ticks_before, 1)
            return {
                "instruments": float(len(names)),
                "received_per_s": counted / elapsed,
                "sent_per_s": frames / elapsed,
                "tick_ms": 1e3 * (handle.tick_time_s - cpu_before) / ticks,
            }
    finally:
        await handle.stop()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--rates", default="2000,5000,10000,20000,30000")
    a = p.parse_args()
    rates = [float(r) for r in a.rates.split(",")]
    print(f"{'configured/s':>13} {'received/s':>11} {'ratio':>6} {'sent/s':>9} {'tick ms':>8}")
    for rate in rates:
        r = await measure(rate, a.seconds, a.warmup)
        print(
            f"{rate:>13,.0f} {r['received_per_s']:>11,.0f} {r['received_per_s'] / rate:>6.2f}"
            f" {r['sent_per_s']:>9,.0f} {r['tick_ms']:>8.2f}"
        )
    print(f"instruments subscribed: {r['instruments']:.0f} (book + ticker each)")


if __name__ == "__main__":
    asyncio.run(main())
