"""`volstream svc sim`: the exchange simulator as a service (used by `volstream up --sim`)."""

from __future__ import annotations

import asyncio
import logging
import signal

from simulator.server import VENUE_FACTORIES, SimConfig, run_simulator
from volstream.config import Config, parse_utc_ns
from volstream.scenario import parse_scenario

log = logging.getLogger("simulator")


async def run(cfg: Config, port: int = 0) -> None:
    venues = tuple(v for v in cfg.venues if v in VENUE_FACTORIES)
    for missing in sorted(set(cfg.venues) - set(venues)):
        log.warning("the simulator does not speak %s yet: not simulated", missing)
    handle = await run_simulator(
        SimConfig(
            host="127.0.0.1",
            port=port,
            venues=venues or ("deribit",),
            currencies=cfg.currencies,
            seed=cfg.sim_seed,
            messages_per_second=cfg.sim_rate,
            start_time_ns=parse_utc_ns(cfg.sim_start, "sim_start") if cfg.sim_start else None,
            scenario=parse_scenario(cfg.sim_scenario),
            nats_url=cfg.nats_url,
            nats_user=cfg.nats_user,
            nats_password=cfg.nats_password,
            namespace=cfg.namespace,
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("simulator on port %s for %s", handle.port, ", ".join(venues))
    await stop.wait()
    await handle.stop()
