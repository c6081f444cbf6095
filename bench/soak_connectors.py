"""Connector soak: the simulator (own process) at --rate messages/s across all four venues, the
connector service (own process) publishing to a real nats-server, a fault injected every few
seconds (every kind in turn, venues in turn), then a report.

    .venv/bin/python -m bench.soak_connectors --minutes 10 --rate 5000 [--fault-every 3]

Report: crash count (the connector process is restarted if it dies; must be 0), RSS of the
connector process sampled over the run (memory must stay flat after warm-up), and per
venue a reconciliation of every frame the connector received:

    frames received = frames published (made events) + dead-lettered + ignored (by kind)

from the connector's own counters (``connector_counts`` on its Prometheus endpoint: the
``frames.*`` outcome counted once per frame, ``frames`` counted by the parsers), checked
against NATS: events published (``connector_events``) == events in the MD stream (every
MarketDataBatch decoded), dead letters counted == messages in the DLQ stream, and against
the simulator: frames it sent minus frames the connector received (lost in flight when a
connection is cut). Not part of the pytest suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.config import Config, to_env
from volstream.subjects import Subjects
from volstream.v1 import market_data_pb2 as md_pb

VENUES = ("deribit", "okx", "bybit", "binance")
# Every fault kind the simulator knows, in the order they are injected.
FAULTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("sequence_gap", {"count": 1}),
    ("malformed", {"count": 1}),
    ("duplicate", {"count": 2}),
    ("out_of_order", {"count": 1}),
    ("unknown_fields", {"count": 20}),
    ("missing_fields", {"count": 20}),
    ("disconnect", {}),
    ("heartbeat_stall", {"duration_s": 1.5}),
    ("stale_quotes", {"duration_s": 2.0}),
    ("list", {"currency": "BTC"}),
    ("expire", {"currency": "ETH"}),
)
WARMUP_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


@dataclass
class Soak:
    args: argparse.Namespace
    nats_url: str
    workdir: Path
    sim: subprocess.Popen[bytes] | None = None
    sim_url: str = ""
    connector: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    crashes: int = 0
    rss: list[tuple[float, float]] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    fault_errors: Counter[str] = field(default_factory=Counter)

    # -- processes --------------------------------------------------------------------------
    def start_sim(self) -> None:
        per_venue = self.args.rate / len(VENUES)
        cmd = [
            sys.executable,
            "-m",
            "simulator",
            "--venues",
            ",".join(VENUES),
            "--rate",
            str(per_venue),
            "--max-expiries",
            str(self.args.max_expiries),
        ]
        self.sim = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=(self.workdir / "sim.log").open("wb"),
        )
        assert self.sim.stdout is not None
        info = orjson.loads(self.sim.stdout.readline())
        self.sim_url = f"http://{info['host']}:{info['port']}"

    def start_connector(self) -> None:
        self.metrics_port = free_port()
        cfg = Config(
            nats_url=self.nats_url,
            venues=VENUES,
            sim_url=self.sim_url,
            metrics_port=self.metrics_port,
            log_level="WARNING",
        )
        env = {**os.environ, **to_env(cfg)}
        log = (self.workdir / "connector.log").open("ab")
        self.connector = subprocess.Popen(
            [sys.executable, "-c", "from volstream.cli import main; main()", "svc", "connector"],
            env=env,
            stdout=log,
            stderr=log,
        )

    def check_connector(self) -> None:
        assert self.connector is not None
        if self.connector.poll() is not None:
            self.crashes += 1
            print(f"connector exited with {self.connector.returncode}: restarting", flush=True)
            self.start_connector()

    def stop(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    # -- probes -------------------------------------------------------------------------------
    async def metrics(self, http: aiohttp.ClientSession) -> dict[tuple[str, str, str], float]:
        """(metric, venue, name-or-subject) -> value of the connector's counters."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with http.get(url) as resp:
            text = await resp.text()
        out: dict[tuple[str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            if family.name not in ("volstream_connector_counts", "volstream_connector_events"):
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = sample.labels.get("name") or sample.labels.get("subject", "")
                out[(family.name, sample.labels.get("venue", ""), key)] = sample.value
        return out

    async def sim_stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.sim_url}/control/stats") as resp:
            stats: dict[str, Any] = await resp.json()
        return stats

    async def fault(self, http: aiohttp.ClientSession, venue: str, kind: str, **kw: Any) -> None:
        body = {"venue": venue, "kind": kind, **kw}
        async with http.post(f"{self.sim_url}/control/fault", json=body) as resp:
            if resp.status == 200:
                self.faults[kind] += 1
            else:
                self.fault_errors[f"{kind}: {(await resp.text())[:80]}"] += 1

    # -- run ----------------------------------------------------------------------------------
    async def run(self) -> None:
        self.start_sim()
        self.start_connector()
        assert self.connector is not None
        started = time.monotonic()
        end = started + self.args.minutes * 60.0
        schedule = itertools.cycle(itertools.product(FAULTS, VENUES))
        next_fault = started + WARMUP_S
        next_rss = started
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < end:
                await asyncio.sleep(0.25)
                self.check_connector()
                now = time.monotonic()
                if now >= next_rss:
                    self.rss.append((now - started, rss_mb(self.connector.pid)))
                    next_rss = now + 15.0
                if now >= next_fault:
                    (kind, kw), venue = next(schedule)
                    try:
                        await self.fault(http, venue, kind, **kw)
                    except aiohttp.ClientError as exc:
                        self.fault_errors[f"{kind}: {exc}"] += 1
                    next_fault = now + self.args.fault_every
            self.rss.append((time.monotonic() - started, rss_mb(self.connector.pid)))
            sim = await self.sim_stats(http)
            # Stop the source first; the connector then flushes what it holds and exports
            # its counters (once a second) before they are read.
            self.stop(self.sim)
            await asyncio.sleep(3.0)
            self.check_connector()
            counters = await self.metrics(http)
        self.stop(self.connector)
        md, dlq = await stream_counts(self.nats_url)
        self.report(sim, counters, md, dlq, time.monotonic() - started)

    def report(
        self,
        sim: dict[str, Any],
        counters: dict[tuple[str, str, str], float],
        md_events: Counter[str],
        dlq_msgs: Counter[str],
        elapsed_s: float,
    ) -> None:
        named: dict[str, Counter[str]] = defaultdict(Counter)
        published: Counter[str] = Counter()
        for (metric, venue, key), value in counters.items():
            if metric == "volstream_connector_counts":
                named[venue][key] = int(value)
            else:
                published[venue] += int(value)
        print(f"\nconnector soak: {elapsed_s / 60:.1f} min, sim rate {self.args.rate:.0f} msg/s")
        print(f"crashes: {self.crashes}")
        first = next((r for t, r in self.rss if t >= WARMUP_S), self.rss[0][1])
        print(
            f"connector RSS MB: start(after {WARMUP_S:.0f}s) {first:.1f}, "
            f"end {self.rss[-1][1]:.1f}; samples "
            + " ".join(f"{t:.0f}s:{r:.0f}" for t, r in self.rss)
        )
        print(
            "faults injected: "
            + ", ".join(f"{k}={v}" for k, v in sorted(self.faults.items()))
            + (f"; refused: {dict(self.fault_errors)}" if self.fault_errors else "")
        )
        header = (
            f"{'venue':<8} {'sim sent*':>9} {'received':>9} {'parsed':>9} {'published':>9} "
            f"{'dead':>5} {'ignored':>8} {'unacct':>6} {'events':>9} {'MD evts':>9} "
            f"{'DLQ cnt':>7} {'DLQ msgs':>8} {'reconnects':>10}  verdict"
        )
        print(header)
        ignored_kinds: dict[str, Counter[str]] = {}
        all_ok = self.crashes == 0
        for venue in VENUES:
            c = named.get(venue, Counter())
            sent = int(sim["venues"][venue]["counters"]["frames_sent"])
            pub = c["frames.published"]
            dead = c["frames.dead_lettered"]
            ignored = Counter(
                {
                    k.removeprefix("frames.ignored."): v
                    for k, v in c.items()
                    if k.startswith("frames.ignored.")
                }
            )
            received = pub + dead + sum(ignored.values())
            parsed = c["frames"]
            unaccounted = parsed - received
            ignored_kinds[venue] = ignored
            events = published[venue]
            ok = (
                events == md_events[venue]
                and c["dead_letters"] == dlq_msgs[venue]
                and unaccounted == 0
            )
            all_ok &= ok
            print(
                f"{venue:<8} {sent:>9} {received:>9} {parsed:>9} {pub:>9} {dead:>5} "
                f"{sum(ignored.values()):>8} {unaccounted:>6} {events:>9} {md_events[venue]:>9} "
                f"{c['dead_letters']:>7} {dlq_msgs[venue]:>8} {c['connection.reconnect']:>10}  "
                f"{'ok' if ok else 'MISMATCH'}"
            )
        print("ignored frames by kind:")
        for venue, kinds in ignored_kinds.items():
            print(f"  {venue}: " + ", ".join(f"{k}={v}" for k, v in kinds.most_common(8)))
        print(
            "* sim sent: the simulator's own frame count when it was asked, before it stopped "
            "(venues count differently; frames queued or in flight at a cut are not received)"
        )
        print(f"\nresult: {'PASS' if all_ok else 'FAIL'}")


async def stream_counts(nats_url: str) -> tuple[Counter[str], Counter[str]]:
    """Events per venue in the MD stream (every batch decoded) and DLQ messages per venue."""
    subjects = Subjects("")
    nc = await connect(nats_url, "soak-reader")
    js = nc.jetstream()
    md: Counter[str] = Counter()
    dlq: Counter[str] = Counter()
    try:
        for venue in VENUES:
            info = await js.stream_info(subjects.stream_name("MD"), subjects_filter=f"md.{venue}.>")
            wanted = sum((info.state.subjects or {}).values())
            done = asyncio.Event()
            seen = 0

            async def on_md(
                msg: Any, venue: str = venue, wanted: int = wanted, done: asyncio.Event = done
            ) -> None:
                nonlocal seen
                md[venue] += len(md_pb.MarketDataBatch.FromString(msg.data).events)
                seen += 1
                if seen >= wanted:
                    done.set()

            seen = 0
            if wanted:
                sub = await js.subscribe(f"md.{venue}.>", ordered_consumer=True, cb=on_md)
                await asyncio.wait_for(done.wait(), 300)
                await sub.unsubscribe()
            dinfo = await js.stream_info(
                subjects.stream_name("DLQ"), subjects_filter=subjects.dlq("connector", venue)
            )
            dlq[venue] = sum((dinfo.state.subjects or {}).values())
    finally:
        await nc.drain()
    return md, dlq


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        soak = Soak(args, nats.url, Path(tmp))
        try:
            await soak.run()
        finally:
            soak.stop(soak.connector)
            soak.stop(soak.sim)
            if args.keep_logs:
                keep_logs(Path(tmp), Path(args.keep_logs))


def keep_logs(source: Path, target: Path) -> None:
    for name in ("sim.log", "connector.log"):
        with contextlib.suppress(OSError):
            (target / name).write_bytes((source / name).read_bytes())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak_connectors", description=__doc__)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=5000.0, help="simulator msg/s, all venues")
    p.add_argument("--fault-every", type=float, default=3.0, help="seconds between faults")
    p.add_argument("--max-expiries", type=int, default=4)
    p.add_argument("--keep-logs", default="", help="copy sim/connector logs to this directory")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
