"""Simulator throughput: configured message rate vs what a client subscribed to everything
receives, per venue and for all four venues at once.

    .venv/bin/python -m bench.bench_sim [--seconds 3] [--warmup 1.5]
        [--rates 5000,20000] [--combined 20000] [--venues deribit,okx,bybit,binance]

For each venue alone at each rate, then all venues together sharing `--combined` equally,
one simulator (BTC + ETH, every expiry) is started and one client subscribes to every book
and quote channel of every instrument (Deribit book + ticker; OKX books + opt-summary +
index-tickers; Bybit orderbook.25 + tickers, 2,000 topics per connection; Binance depth20,
200 streams per connection, + mark prices + index) and counts frames after a warm-up. The
reference column is the configured rate (what such a client should see); the sim's frames
sent and tick CPU time are shown beside it. Client and simulator share one process and event
loop, as in the tests (a lower bound: a real connector runs elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
import websockets

from simulator import SimConfig, VenueUrls, run_simulator

VENUES = ("deribit", "okx", "bybit", "binance")


async def subscribe_all(
    urls: Mapping[str, VenueUrls], currencies: tuple[str, ...], venues: tuple[str, ...]
) -> list[websockets.ClientConnection]:
    """Connections of a client subscribed to every book and quote channel of `venues`."""
    conns: list[websockets.ClientConnection] = []
    ccys = currencies

    async def connect(url: str) -> websockets.ClientConnection:
        ws = await websockets.connect(url, max_size=2**26, max_queue=None, ping_interval=None)
        conns.append(ws)
        return ws

    async with aiohttp.ClientSession() as http:

        async def get(url: str, params: dict[str, str] | None = None) -> object:
            async with http.get(url, params=params) as resp:
                return orjson.loads(await resp.read())

        if "deribit" in venues:
            at = urls["deribit"]
            names: list[str] = []
            for ccy in ccys:
                body = await get(
                    f"{at.rest_base}/public/get_instruments",
                    {"currency": ccy, "expired": "false"},
                )
                names += [i["instrument_name"] for i in body["result"]]  # type: ignore[index]
            ws = await connect(at.ws_url)
            channels = [f"{k}.{n}.100ms" for n in names for k in ("book", "ticker")]
            for i in range(0, len(channels), 1_000):
                req = {"jsonrpc": "2.0", "id": i, "method": "public/subscribe"}
                batch = {"channels": channels[i : i + 1_000]}
                await ws.send(orjson.dumps({**req, "params": batch}).decode())

        if "okx" in venues:
            at = urls["okx"]
            args: list[dict[str, str]] = []
            for ccy in ccys:
                for inst_type in ("OPTION", "FUTURES"):
                    body = await get(
                        f"{at.rest_base}/api/v5/public/instruments",
                        {"instType": inst_type, "instFamily": f"{ccy}-USD"},
                    )
                    args += [
                        {"channel": "books", "instId": d["instId"]}
                        for d in body["data"]  # type: ignore[index]
                    ]
                args.append({"channel": "opt-summary", "instFamily": f"{ccy}-USD"})
                args.append({"channel": "index-tickers", "instId": f"{ccy}-USD"})
            ws = await connect(at.ws_url)
            await ws.send(orjson.dumps({"id": "1", "op": "subscribe", "args": args}).decode())

        if "bybit" in venues:
            at = urls["bybit"]
            topics: list[str] = []
            for ccy in ccys:
                cursor = ""
                while True:
                    params = {"category": "option", "baseCoin": ccy, "limit": "1000"}
                    if cursor:
                        params["cursor"] = cursor
                    body = await get(f"{at.rest_base}/v5/market/instruments-info", params)
                    result = body["result"]  # type: ignore[index]
                    topics += [
                        f"{k}.{d['symbol']}"
                        for d in result["list"]
                        for k in ("orderbook.25", "tickers")
                    ]
                    cursor = result["nextPageCursor"]
                    if not cursor:
                        break
            for i in range(0, len(topics), 2_000):
                ws = await connect(at.ws_url)
                req = {"req_id": str(i), "op": "subscribe", "args": topics[i : i + 2_000]}
                await ws.send(orjson.dumps(req).decode())

        if "binance" in venues:
            at = urls["binance"]
            body = await get(f"{at.rest_base}/eapi/v1/exchangeInfo")
            symbols = [s["symbol"].lower() for s in body["optionSymbols"]]  # type: ignore[index]
            streams = [f"{s}@depth20@100ms" for s in symbols]
            for ccy in ccys:
                streams += [f"{ccy.lower()}usdt@optionMarkPrice", f"{ccy.lower()}usdt@index"]
            base = at.ws_url.rsplit("/ws", 1)[0]
            for i in range(0, len(streams), 200):
                ws = await connect(f"{base}/stream")
                req = {"method": "SUBSCRIBE", "params": streams[i : i + 200], "id": i}
                await ws.send(orjson.dumps(req).decode())
    return conns


@dataclass
class Measured:
    received_per_s: float
    sent_per_s: float
    tick_ms: float
    connections: int


@dataclass
class SimStats:
    frames_sent: int
    tick_cpu_ms_avg: float
    ticks: int


@contextlib.asynccontextmanager
async def simulator_process(
    venues: tuple[str, ...], rate_per_venue: float, seed: int = 11
) -> AsyncIterator[tuple[dict[str, VenueUrls], str]]:
    """`python -m simulator` in its own process (its own core): (urls, control URL)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "simulator",
        "--venues",
        ",".join(venues),
        "--rate",
        str(rate_per_venue),
        "--seed",
        str(seed),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        info = orjson.loads(line)
        urls = {
            name: VenueUrls(rest_base=v["rest_base"], ws_url=v["ws_url"])
            for name, v in info["venues"].items()
        }
        yield urls, str(info["control"])
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def sim_stats(control: str) -> SimStats:
    async with aiohttp.ClientSession() as http, http.get(f"{control}/stats") as resp:
        body = orjson.loads(await resp.read())
    frames = sum(int(v["counters"]["frames_sent"]) for v in body["venues"].values())
    return SimStats(frames, float(body["tick_cpu_ms_avg"]), int(body["ticks"]))


async def count_frames(
    conns: list[websockets.ClientConnection], warmup: float, seconds: float
) -> float:
    """Frames per second over all `conns`, counted for `seconds` after `warmup`."""
    counts = [0] * len(conns)
    counting = False

    async def drain(k: int, ws: websockets.ClientConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in ws:
                if counting:
                    counts[k] += 1

    tasks = [asyncio.create_task(drain(k, ws)) for k, ws in enumerate(conns)]
    try:
        await asyncio.sleep(warmup)
        counting = True
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        counting = False
        return sum(counts) / (time.perf_counter() - started)
    finally:
        for t in tasks:
            t.cancel()
        for ws in conns:
            await ws.close()


async def measure_in_process(
    venues: tuple[str, ...], rate_per_venue: float, seconds: float, warmup: float
) -> Measured:
    """Simulator and client on one event loop (the tests' setting)."""
    handle = await run_simulator(
        SimConfig(venues=venues, messages_per_second=rate_per_venue, seed=11)
    )
    try:
        conns = await subscribe_all(handle.urls, tuple(handle.truth.currencies), venues)

        def frames_sent() -> int:
            total = 0
            for v in handle.venues.values():
                counters = v.stats()["counters"]
                assert isinstance(counters, dict)
                total += int(counters["frames_sent"])
            return total

        task = asyncio.create_task(count_frames(conns, warmup, seconds))
        await asyncio.sleep(warmup)
        sent_before = frames_sent()
        cpu_before, ticks_before = handle.tick_time_s, handle.ticks
        started = time.perf_counter()
        received = await task
        elapsed = time.perf_counter() - started
        return Measured(
            received_per_s=received,
            sent_per_s=(frames_sent() - sent_before) / elapsed,
            tick_ms=1e3 * (handle.tick_time_s - cpu_before) / max(handle.ticks - ticks_before, 1),
            connections=len(conns),
        )
    finally:
        await handle.stop()


async def measure_separate(
    venues: tuple[str, ...], rate_per_venue: float, seconds: float, warmup: float
) -> Measured:
    """Simulator in its own process, client here: what a connector elsewhere would see."""
    async with simulator_process(venues, rate_per_venue) as (urls, control):
        conns = await subscribe_all(urls, ("BTC", "ETH"), venues)
        task = asyncio.create_task(count_frames(conns, warmup, seconds))
        await asyncio.sleep(warmup)
        before = await sim_stats(control)
        started = time.perf_counter()
        received = await task
        elapsed = time.perf_counter() - started
        after = await sim_stats(control)
        return Measured(
            received_per_s=received,
            sent_per_s=(after.frames_sent - before.frames_sent) / elapsed,
            tick_ms=after.tick_cpu_ms_avg,
            connections=len(conns),
        )


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rates", default="5000,20000", help="per-venue rates, each venue alone")
    p.add_argument("--combined", type=float, default=20_000.0, help="all venues, shared equally")
    p.add_argument("--venues", default=",".join(VENUES))
    a = p.parse_args()
    venues = tuple(v for v in a.venues.split(",") if v)
    rates = [float(r) for r in a.rates.split(",") if r]
    print(
        f"{'venues':<28} {'setting':<10} {'configured/s':>13} {'received/s':>11} {'ratio':>6}"
        f" {'sent/s':>9} {'tick ms':>8} {'conns':>6}"
    )
    runs: list[tuple[tuple[str, ...], float, float, str]] = [
        ((v,), r, r, "1 process") for v in venues for r in rates
    ]
    if a.combined > 0 and len(venues) > 1:
        per_venue = a.combined / len(venues)
        runs.append((venues, per_venue, a.combined, "1 process"))
        runs.append((venues, per_venue, a.combined, "sim apart"))
    for run_venues, per_venue, configured, setting in runs:
        measure = measure_in_process if setting == "1 process" else measure_separate
        r = await measure(run_venues, per_venue, a.seconds, a.warmup)
        print(
            f"{'+'.join(run_venues):<28} {setting:<10} {configured:>13,.0f}"
            f" {r.received_per_s:>11,.0f} {r.received_per_s / configured:>6.2f}"
            f" {r.sent_per_s:>9,.0f} {r.tick_ms:>8.2f} {r.connections:>6}"
        )
    print(
        "configured: what a client subscribed to everything should receive; sent: frames the"
        " simulator wrote; tick ms: simulator time per 100 ms tick (wall, incl. frame building);"
        " 'sim apart': simulator in its own process (python -m simulator)."
    )


if __name__ == "__main__":
    asyncio.run(main())
