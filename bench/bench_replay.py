"""Replay speed: how many times faster than real time `volstream replay` runs market data
through book -> IV -> surface, on the real path (MD read from a nats-server with an
ephemeral consumer, outputs published into a namespace's streams).

    .venv/bin/python -m bench.bench_replay [--seconds 120] [--venues deribit,okx,bybit,binance]
        [--workers 1,2] [--base ../other-checkout]

Workload: the simulator at its default rate (2,000 msg/s per venue) and the connectors run
for ``--seconds`` on a private nats-server, filling MD; then the whole range is replayed
with the live settings, once per configuration, each by the `volstream replay` CLI in a
process of its own, one after the other on the same data: this checkout with each
``--workers`` count, and with ``--base DIR`` the code of another checkout (e.g. a worktree
of main at an earlier commit) run the same way, so before and after are side by side.

Per run: wall time and speed (span of the data / the CLI's own replay time), the CPU of the
replay's process tree (workers included) and of the nats-server meanwhile, as CPU seconds
per second of data, the load average, and the CPU per stage this checkout reports. The
replay does exactly the live stages' work (that is what makes it byte-identical to live),
so its speed is bounded by what those stages cost per second of data, divided by the cores
it gets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.golden_stages import fill_md
from replay.source import retained, short_time
from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.config import parse_list
from volstream.subjects import Subjects

HERE = Path(__file__).resolve().parent.parent
_DONE = re.compile(r"replayed (\d+) MD messages in ([\d.]+) s .*?: (\d+) surfaces on")
_STAGES = re.compile(r"stage CPU \([^)]*\): (.*)")


@dataclass
class Run:
    label: str
    wall_s: float = 0.0
    inputs: int = 0
    surfaces: int = 0
    cpu_s: float = 0.0
    nats_cpu_s: float = 0.0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stages: dict[str, float] = field(default_factory=dict)
    surface_bytes: float = 0.0
    failed: bool = False


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float:
    """utime + stime of a running process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replay_once(
    label: str, tree: Path, url: str, start: str, venues: str, namespace: str, extra: list[str]
) -> Run:
    command = [sys.executable, "-m", "volstream.cli", "replay", "--from", start]
    command += ["--nats", url, "--namespace", namespace, "--venues", venues, "--quiet", *extra]
    cpu0 = children_cpu_s()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, check=False)
    run = Run(label, cpu_s=children_cpu_s() - cpu0, load=os.getloadavg())
    match = _DONE.search(done.stdout)
    if done.returncode != 0 or match is None:
        print(f"{label}: replay failed ({done.returncode}):\n{done.stderr[-3000:]}", flush=True)
        run.failed = True
        return run
    run.inputs, run.wall_s, run.surfaces = int(match[1]), float(match[2]), int(match[3])
    stages = _STAGES.search(done.stdout)
    if stages is not None:
        for part in stages[1].split(", "):
            name, seconds, _unit = part.rsplit(" ", 2)
            run.stages[name] = float(seconds)
    return run


async def surface_bytes(url: str, namespace: str) -> float:
    """Bytes per message the namespace's SURFACE stream holds (it may have dropped the
    oldest: replay namespaces have compact limits)."""
    nc = await connect(url, "bench-replay")
    try:
        stream = Subjects(namespace).stream_name("SURFACE")
        info = await nc.jetstream().stream_info(stream)
    finally:
        await nc.drain()
    return info.state.bytes / max(info.state.messages, 1)


async def md_span(url: str) -> tuple[str, float, int, float]:
    """The MD range's start (as the CLI takes it), span in s, messages and MB."""
    nc = await connect(url, "bench-replay")
    try:
        have = await retained(nc.jetstream(), "MD")
        assert have is not None, "the connectors published nothing"
        info = await nc.jetstream().stream_info("MD")
    finally:
        await nc.drain()
    span_s = (have.last_ns - have.first_ns) / 1e9
    return short_time(have.first_ns), span_s, info.state.messages, info.state.bytes / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_replay")
    parser.add_argument("--seconds", type=float, default=120.0, help="live data to record")
    parser.add_argument("--venues", default="deribit,okx,bybit,binance")
    parser.add_argument(
        "--workers", default="1,2", help="comma list of --workers values to run this tree with"
    )
    parser.add_argument("--base", type=Path, help="another checkout to replay the same data with")
    args = parser.parse_args(argv)
    venues = parse_list(args.venues)
    currencies = ("BTC", "ETH")
    runs: list[Run] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp,
        EmbeddedNats(Path(tmp)) as nats,
    ):
        asyncio.run(fill_md(nats.url, args.seconds, venues, currencies))
        start, span_s, messages, mb = asyncio.run(md_span(nats.url))
        assert nats.proc is not None
        plan: list[tuple[str, Path, list[str]]] = []
        if args.base is not None:
            plan.append((f"base ({args.base})", args.base.resolve(), []))
        for w in parse_list(args.workers):
            plan.append((f"this tree, --workers {w}", HERE, ["--workers", w]))
        for n, (label, tree, extra) in enumerate(plan):
            nats0 = process_cpu_s(nats.proc.pid)
            run = replay_once(label, tree, nats.url, start, args.venues, f"bench.r{n}", extra)
            run.nats_cpu_s = process_cpu_s(nats.proc.pid) - nats0
            if run.failed:
                continue
            run.surface_bytes = asyncio.run(surface_bytes(nats.url, f"bench.r{n}"))
            runs.append(run)
            print(f"{label}: {span_s / run.wall_s:.2f}x, load {run.load[0]:.2f}", flush=True)
    if not runs:
        raise SystemExit("every replay failed")
    print(
        f"\n{len(venues)} venues x {len(currencies)} currencies: {span_s:.0f} s of market data, "
        f"{messages:,} MD messages, {mb:.1f} MB (target >= 20x real time)"
    )
    print(
        f"{'run':<34} {'wall s':>7} {'speed':>7} {'CPU s/s data':>13} {'nats CPU s/s':>13} "
        f"{'surfaces':>9} {'load 1m':>8}"
    )
    for run in runs:
        print(
            f"{run.label:<34} {run.wall_s:>7.1f} {span_s / run.wall_s:>6.2f}x "
            f"{run.cpu_s / span_s:>13.3f} {run.nats_cpu_s / span_s:>13.3f} "
            f"{run.surfaces:>9,} {run.load[0]:>8.2f}"
        )
    for run in runs:
        if run.stages:
            split = ", ".join(f"{k} {v / span_s:.3f}" for k, v in run.stages.items())
            print(f"{run.label}: CPU s per s of data by stage: {split}")
    base = next((r for r in runs if r.label.startswith("base")), None)
    if base is not None:
        for run in runs:
            if run is not base:
                print(f"{run.label}: {base.wall_s / run.wall_s:.2f}x the base's speed")
    best = min(r.wall_s for r in runs)
    print(f"an hour of data at the best speed: {3600 / span_s * best / 60:.0f} min")
    if runs[-1].surface_bytes:
        print(f"surface bytes per revision (stream): {runs[-1].surface_bytes:,.0f}")


if __name__ == "__main__":
    main()
