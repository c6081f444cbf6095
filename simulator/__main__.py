"""python -m simulator --port 0 --nats URL --rate 2000 ...: run the simulator until
interrupted; prints one JSON line with the bound port and the venue URLs."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys

import orjson

from simulator.clock import CLOCK_MODES, START_ENV, start_from_env
from simulator.server import VENUE_FACTORIES, SimConfig, run_simulator
from volstream.config import ConfigError, parse_utc_ns
from volstream.scenario import parse_scenario


def parse_args(argv: list[str] | None = None) -> SimConfig:
    p = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--venues", default="deribit", help=f"comma list of {sorted(VENUE_FACTORIES)}")
    p.add_argument("--currencies", default="BTC,ETH")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=2000.0, help="messages per second per venue")
    p.add_argument(
        "--venue-rates", default="", help="per-venue overrides of --rate: okx=5000,bybit=3000"
    )
    p.add_argument(
        "--burst-s",
        type=float,
        default=30.0,
        help="seconds of --rate that requotes after a move may burst above it (0: hard cap)",
    )
    p.add_argument("--tick", type=float, default=0.1, help="tick interval in seconds")
    p.add_argument("--clock", choices=CLOCK_MODES, default="realtime")
    p.add_argument(
        "--start",
        default=None,
        help=f"event time at start, ISO-8601 UTC (default ${START_ENV}, else now)",
    )
    p.add_argument("--speed", type=float, default=10.0, help="fast clock: sim s per wall s")
    p.add_argument("--nats", default=None, help="NATS URL for the truth (sim.truth.<venue>.<ccy>)")
    p.add_argument("--namespace", default="")
    p.add_argument("--truth-interval", type=float, default=1.0)
    p.add_argument("--min-heartbeat", type=float, default=10.0)
    p.add_argument("--max-expiries", type=int, default=None)
    p.add_argument(
        "--min-expiry-days", type=float, default=0.5, help="list only expiries this far away"
    )
    p.add_argument(
        "--surface-drift", type=float, default=1.0, help="random drift of the smile (0: none)"
    )
    p.add_argument("--index-interval", type=float, default=1.0, help="index push period (s)")
    p.add_argument(
        "--scenario",
        default="quiet",
        help="market scenario NAME[:key=value,...]: quiet, trending, jump, volshock "
        "(docs/simulator.md section 2)",
    )
    a = p.parse_args(argv)
    try:
        start_ns = parse_utc_ns(a.start, "--start") if a.start else start_from_env()
        scenario = parse_scenario(a.scenario, "--scenario")
        if not (0.0 <= a.burst_s <= 3_600.0):
            raise ConfigError(f"--burst-s: {a.burst_s:g} is outside [0, 3600]")
    except ConfigError as exc:
        p.error(str(exc))
    return SimConfig(
        host=a.host,
        port=a.port,
        venues=tuple(v.strip() for v in a.venues.split(",") if v.strip()),
        currencies=tuple(c.strip().upper() for c in a.currencies.split(",") if c.strip()),
        seed=a.seed,
        messages_per_second=a.rate,
        burst_s=a.burst_s,
        tick_interval_s=a.tick,
        clock=a.clock,
        start_time_ns=start_ns,
        speed=a.speed,
        nats_url=a.nats,
        namespace=a.namespace,
        truth_interval_s=a.truth_interval,
        min_heartbeat_interval_s=a.min_heartbeat,
        max_expiries=a.max_expiries,
        min_time_to_expiry_s=a.min_expiry_days * 86_400.0,
        surface_drift=a.surface_drift,
        index_interval_s=a.index_interval,
        venue_rates=parse_venue_rates(a.venue_rates),
        scenario=scenario,
    )


def parse_venue_rates(text: str) -> dict[str, float]:
    rates: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        venue, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--venue-rates: expected venue=rate, got {item!r}")
        rates[venue.strip()] = float(value)
    return rates


async def main(config: SimConfig) -> None:
    handle = await run_simulator(config)
    # A process of its own: the instruments and books built at start live until exit, so
    # take them out of the cyclic collector's way and collect young objects less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
    info = {
        "host": handle.host,
        "port": handle.port,
        "venues": {
            name: {"rest_base": u.rest_base, "ws_url": u.ws_url} for name, u in handle.urls.items()
        },
        "control": f"{handle.base_url}/control",
    }
    sys.stdout.write(orjson.dumps(info).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await handle.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(main(parse_args()))
