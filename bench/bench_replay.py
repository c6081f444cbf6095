"""Replay speed: how many times faster than real time `volstream replay` runs market data
through book -> IV -> surface, on the real path (MD read from a nats-server with an
ephemeral consumer, outputs published into a namespace's streams).

    .venv/bin/python -m bench.bench_replay [--seconds 120] [--venues deribit,okx,bybit,binance]

Workload: the simulator at its default rate (2,000 msg/s per venue) and the connectors run
for ``--seconds`` on a private nats-server, filling MD; then the whole range is replayed
with the live settings. The replay does exactly the live stages' work (that is what makes it
byte-identical to live), so its speed is bounded by what those stages cost per second of
data: the table also shows that cost, as CPU seconds per second of data.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from pathlib import Path

from bench.golden_stages import fill_md
from replay.run import replay
from replay.source import retained
from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.config import Config, parse_list


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(seconds: float, venues: tuple[str, ...]) -> None:
    currencies = ("BTC", "ETH")
    with (
        tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp,
        EmbeddedNats(Path(tmp)) as nats,
    ):
        await fill_md(nats.url, seconds, venues, currencies)
        nc = await connect(nats.url, "bench-replay")
        try:
            have = await retained(nc.jetstream(), "MD")
            assert have is not None, "the connectors published nothing"
            info = await nc.jetstream().stream_info("MD")
            cpu0, wall0 = cpu_s(), time.perf_counter()
            stats = await replay(
                nc,
                Config(venues=venues, currencies=currencies, namespace="bench.replay"),
                have.first_ns,
                have.last_ns,
            )
            cpu, wall = cpu_s() - cpu0, time.perf_counter() - wall0
            surface_info = await nc.jetstream().stream_info("SURFACE_BENCH_REPLAY")
        finally:
            await nc.drain()
    span_s = (have.last_ns - have.first_ns) / 1e9
    surfaces = max(stats.outputs.get("surface", 0), 1)
    rows = [
        ("venues x currencies", f"{len(venues)} x {len(currencies)}"),
        (
            "market data replayed",
            f"{span_s:.0f} s, {stats.inputs:,} MD messages, {info.state.bytes / 1e6:.1f} MB",
        ),
        ("outputs", ", ".join(f"{k} {v:,}" for k, v in sorted(stats.outputs.items()))),
        ("replay wall time", f"{wall:.1f} s"),
        ("replay CPU (this process)", f"{cpu:.1f} s = {cpu / span_s:.2f} CPU s per s of data"),
        ("speed", f"{span_s / wall:.2f}x real time (target >= 20x)"),
        ("an hour of data would take", f"{3600 / (span_s / wall) / 60:.0f} min"),
        ("surface bytes per revision (stream)", f"{surface_info.state.bytes / surfaces:,.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\n{'replay':<{width}}  value")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_replay")
    parser.add_argument("--seconds", type=float, default=120.0, help="live data to record")
    parser.add_argument("--venues", default="deribit,okx,bybit,binance")
    args = parser.parse_args(argv)
    asyncio.run(run(args.seconds, parse_list(args.venues)))


if __name__ == "__main__":
    main()
