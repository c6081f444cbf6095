"""The whole pipeline under load: exchange -> gRPC client latency, every frame reconciled, CPU
and RSS per service, at a series of total venue message rates; prints the knee.

    .venv/bin/python -m bench.bench_pipeline [--rates 1000,2000,5000,10000,20000,25000,50000]
        [--seconds 20] [--warmup 10] [--burst 5x2s/30s|none] [--bad 0]
        [--venues deribit,okx,bybit,binance] [--stage-lags]

The system is `volstream up --sim` as a user runs it (tests/system/conftest.py::start_up):
an embedded nats-server, every service its own process under the supervisor, the exchange
simulator speaking the four venues' protocols over real websockets and REST. One `up` serves
every rate in turn: the rate is a total over the venues, set on the running simulator
(`POST /control/rate`, per venue = total / venues), so nothing restarts between rates.

Per rate:
1. rate set; `--warmup` seconds;
2. a measured window of `--seconds`: a real gRPC `StreamSurfaces` client (with quotes, one
   stream) records, for every surface it receives, latency = its receive wall time minus the
   surface header's event time (the venue time of the surface's newest input; the simulator's
   clock offset from the wall clock is subtracted, 0 unless a start date is pinned). During
   the window the rate bursts (`--burst 5x2s/30s`: 5 times the rate for 2 s every 30 s, the
   first 5 s into the window) and, with `--bad N`, about N made-up bad frames a second are
   injected (truncated JSON, data fields of the wrong types, unknown channels; the
   simulator's bad-input faults, spread over the venues);
3. the rate is set to 0 and the pipeline drained (the simulator's frames all received, every
   durable consumer with nothing pending or unacknowledged), then every count is reconciled
   between this drained state and the previous one (`reconcile`): frames the simulator sent
   = frames the connectors received = published + dead-lettered + ignored; messages stored
   in each stream = what its producers had acknowledged; every durable (book, IV, surface,
   archive) consumed everything on its filter. Loss is the sum of every difference.

With `--stage-lags` the bench also follows iv.> and surface.> (core NATS subscriptions) and
prints, per stage, the publish lag of what it published in the window: header publish time
minus header event time (the venue time of the newest input). The IV row is connector +
book + IV; the surface rows add the surface stage; the client's latency adds the API and
gRPC. It costs the bench process the IV stream's bytes (a few MB/s).

CPU per service is the process tree's (a service's worker processes included) user + system
time over the window from /proc (psutil), as % of one core; the simulator is the load
generator and is left out of the total (shown beside it: it shares the cores). CPU per venue
message = the services' CPU time / frames the connectors received in the window. RSS per
service (tree) at the window's end.

The knee is the highest rate with p99 <= 500 ms and zero loss (drained, and at least 90% of
the rate received: the simulator shares the cores and may fall short).

Decisions: the load generator is the simulator itself (its protocol code, its books and
sequences), not a replay of pre-encoded frames: a replayed recording loops, and at the loop
the venues' book sequences and OKX's checksums would break unless patched per venue; the
simulator's CPU is measured and excluded instead. The machine's other load is not
controlled: on a shared machine compare rates within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import nats
import psutil
from google.protobuf.message import DecodeError

from bench.bench_api import print_rows
from volstream.bus.credentials import read_credentials
from volstream.bus.permissions import ADMIN_USER
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc
from volstream.wire import read_varint

VENUES = ("deribit", "okx", "bybit", "binance")
DEFAULT_RATES = (1000, 2000, 5000, 10000, 20000, 25000, 50000)
KNEE_P99_MS = 500.0
REACHED = 0.9  # of the rate asked, in frames the connectors received (bursts add to it)
BAD_KINDS = ("malformed", "wrong_types", "unknown_channel")
# Streams, their producers (services, by up.json name prefix) and durable consumers.
STREAM_PRODUCERS = {"MD": "connector.", "BOOK": "book", "IV": "iv", "SURFACE": "surface"}


def progress(text: str) -> None:
    print(f"[bench_pipeline] {text}", file=sys.stderr, flush=True)


# ---- command line ------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    factor: float
    seconds: float
    period_s: float

    def active(self, t: float, offset_s: float = 5.0) -> bool:
        """Whether `t` seconds into a window falls in a burst (the first `offset_s` in)."""
        return t >= offset_s and (t - offset_s) % self.period_s < self.seconds


_BURST = re.compile(r"^(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)s/(\d+(?:\.\d+)?)s$")


def parse_burst(text: str) -> Burst | None:
    if text.strip().lower() in ("none", "off", ""):
        return None
    m = _BURST.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad burst {text!r}: expected e.g. 5x2s/30s or none")
    burst = Burst(float(m[1]), float(m[2]), float(m[3]))
    if burst.factor <= 0 or not 0 < burst.seconds < burst.period_s:
        raise argparse.ArgumentTypeError(
            f"bad burst {text!r}: factor > 0 and 0 < seconds < period required"
        )
    return burst


def parse_rates(text: str) -> list[int]:
    rates: list[int] = []
    for item in text.split(","):
        try:
            rate = int(float(item.replace("_", "")))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad rate {item!r} in {text!r}") from None
        if rate <= 0:
            raise argparse.ArgumentTypeError(f"bad rate {item!r}: must be > 0")
        rates.append(rate)
    return rates


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"bad value {text!r}: must be > 0")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad number {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"bad value {text!r}: must be >= 0")
    return value


def parse_venues(text: str) -> tuple[str, ...]:
    venues = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    bad = [v for v in venues if v not in VENUES]
    if bad or not venues:
        raise argparse.ArgumentTypeError(f"bad venues {text!r}: choose from {','.join(VENUES)}")
    return venues


# ---- the running system --------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Prometheus text -> {name: {labels: value}} (samples only)."""
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)
        with contextlib.suppress(ValueError):
            out.setdefault(name, {})[frozenset(pairs)] = float(value)
    return out


def metric_sum(
    metrics: Mapping[str, Mapping[frozenset[tuple[str, str]], float]],
    name: str,
    where: Callable[[dict[str, str]], bool] = lambda _: True,
) -> float:
    return sum(v for labels, v in metrics.get(name, {}).items() if where(dict(labels)))


@dataclass
class Snapshot:
    """Every count the reconciliation compares, at one moment."""

    sim_frames: dict[str, int] = field(default_factory=dict)  # venue -> frames sent
    connector: dict[str, dict[str, float]] = field(default_factory=dict)  # venue -> name -> n
    events_out: dict[str, float] = field(default_factory=dict)  # service -> acked publishes
    events_in: dict[str, float] = field(default_factory=dict)  # service -> consumed
    duplicates: dict[str, float] = field(default_factory=dict)  # acked, already stored
    dead_letters: dict[str, float] = field(default_factory=dict)
    failures: dict[str, float] = field(default_factory=dict)
    stream_last_seq: dict[str, int] = field(default_factory=dict)
    # durable -> (stream, consumed (ack floor, consumer seq), pending, ack pending)
    durables: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)


class System:
    """A running `volstream up --sim` and the bench's views of it."""

    def __init__(self, up: Any, venues: Sequence[str]) -> None:
        self.up = up
        self.venues = tuple(venues)
        state = up.state()
        self.sim_url = str(state["sim_url"])
        http_port = int(state["http_port"])
        # volstream/supervisor.py::service_specs: metrics ports follow the HTTP port in
        # this order (the simulator and the API have none of their own).
        names = [f"connector.{v}" for v in self.venues] + ["book", "iv", "surface", "archive"]
        self.metrics_ports = {n: http_port + 1 + i for i, n in enumerate(names)}
        self.http: aiohttp.ClientSession | None = None
        self.nc: Any = None
        self.js: Any = None

    async def open(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        state = self.up.state()
        password = read_credentials(Path(state["nats_credentials"]))[ADMIN_USER]
        self.nc = await nats.connect(state["nats_url"], user=ADMIN_USER, password=password)
        self.js = self.nc.jetstream()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    # simulator control
    async def sim_get(self, path: str) -> Any:
        assert self.http is not None
        async with self.http.get(f"{self.sim_url}{path}") as resp:
            return await resp.json()

    async def sim_post(self, path: str, body: Mapping[str, object]) -> Any:
        assert self.http is not None
        async with self.http.post(f"{self.sim_url}{path}", json=dict(body)) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"simulator {path}: {answer}")
            return answer

    async def set_total_rate(self, total: float) -> None:
        await self.sim_post("/control/rate", {"messages_per_second": total / len(self.venues)})

    async def clock_offset_ns(self) -> int:
        """Simulator event time minus wall time (0 unless a start date is pinned)."""
        before = time.time_ns()
        health = await self.sim_get("/control/health")
        after = time.time_ns()
        return int(health["sim_time_ns"]) - (before + after) // 2

    async def inject(self, venue: str, kind: str, count: int) -> int:
        answer = await self.sim_post(
            "/control/fault", {"venue": venue, "kind": kind, "count": count}
        )
        return int(answer.get("injected", 0))

    async def metrics(self, service: str) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        assert self.http is not None
        async with self.http.get(f"http://127.0.0.1:{self.metrics_ports[service]}/metrics") as r:
            return parse_metrics(await r.text())

    def restarts(self) -> dict[str, int]:
        """Services `up` restarted (a restart resets a service's counts: no reconciliation)."""
        services = self.up.state()["services"]
        return {name: s["restarts"] for name, s in services.items() if s.get("restarts")}

    async def snapshot(self) -> Snapshot:
        """Every count now; a service that does not answer is an error naming the restarts."""
        try:
            return await self._snapshot()
        except aiohttp.ClientError as exc:
            raise RuntimeError(
                f"a service did not answer ({exc}); restarts: {self.restarts()}\n"
                + self.up.log()[-3000:]
            ) from exc

    async def _snapshot(self) -> Snapshot:
        snap = Snapshot()
        snap.sim_frames = await self.sim_frames()
        for service in self.metrics_ports:
            m = await self.metrics(service)
            snap.events_out[service] = metric_sum(m, "volstream_events_out_total")
            snap.events_in[service] = metric_sum(m, "volstream_events_in_total")
            snap.duplicates[service] = metric_sum(m, "volstream_publish_duplicates_total")
            snap.dead_letters[service] = metric_sum(m, "volstream_dead_letters_total")
            snap.failures[service] = metric_sum(m, "volstream_failures_total")
            if service.startswith("connector."):
                named: dict[str, float] = {}
                for labels, value in m.get("volstream_connector_counts_total", {}).items():
                    name = dict(labels).get("name", "")
                    named[name] = named.get(name, 0.0) + value
                snap.connector[service.split(".", 1)[1]] = named
        for stream in (*STREAM_PRODUCERS, "DLQ"):
            info = await self.js.stream_info(stream)
            snap.stream_last_seq[stream] = int(info.state.last_seq)
            for ci in await self.js.consumers_info(stream):
                durable = ci.config.durable_name
                if not durable:
                    continue
                snap.durables[durable] = (
                    stream,
                    int(ci.ack_floor.consumer_seq if ci.ack_floor else 0),
                    int(ci.num_pending or 0),
                    int(ci.num_ack_pending or 0),
                )
        return snap

    async def drained(self, timeout_s: float) -> tuple[Snapshot, float, bool]:
        """With the rate at 0: wait until every durable has nothing pending or unacknowledged
        and the streams and publish counts stay the same between two looks, and until, per
        venue, the connector has received (and exported the counts of) every frame the
        simulator sent. The snapshot then, the seconds it took and whether it drained (when
        not, the reconciliation shows the backlog as loss)."""
        started = time.monotonic()
        last: Snapshot | None = None
        # Per venue, the latest moment its frames were all received: the simulator's count
        # read just before and just after the connector's (a paused venue still sends the
        # odd heartbeat, so the venues settle at different moments; each is consistent).
        venue_at: dict[str, tuple[int, dict[str, float]]] = {}
        while True:
            sent_before = await self.sim_frames()
            snap = await self.snapshot()
            sent_after = await self.sim_frames()
            for v in self.venues:
                frames = snap.connector[v].get("frames", 0)
                if sent_before[v] == sent_after[v] == frames:
                    venue_at[v] = (sent_after[v], snap.connector[v])
            idle = all(p == 0 and a == 0 for _, _, p, a in snap.durables.values())
            settled = (
                idle
                and last is not None
                and last.events_out == snap.events_out
                and last.stream_last_seq == snap.stream_last_seq
                and len(venue_at) == len(self.venues)
            )
            last = snap
            elapsed = time.monotonic() - started
            if settled or elapsed > timeout_s:
                for v, (sent, counts) in venue_at.items():
                    snap.sim_frames[v] = sent
                    snap.connector[v] = counts
                return snap, elapsed, settled
            await asyncio.sleep(0.3)

    async def sim_frames(self) -> dict[str, int]:
        stats = await self.sim_get("/control/stats")
        return {v: int(stats["venues"][v]["counters"]["frames_sent"]) for v in self.venues}

    def pids(self) -> dict[str, int]:
        services = self.up.state()["services"]
        return {name: s["pid"] for name, s in services.items() if s.get("pid")}


def tree_cpu_rss(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and RSS bytes of `pid` and its descendants."""
    cpu = rss = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
    return cpu, rss


# ---- where the time goes: lag at each stage's publication -----------------------------------


def header_times(payload: bytes) -> tuple[int, int] | None:
    """(event time, publish time) of a SmileBatch or Surface from its leading header field
    (field 1, written first by both stages), without parsing the rest of the message."""
    if len(payload) < 2 or payload[0] != 0x0A:
        return None
    try:
        length, at = read_varint(payload, 1)
        header = common_pb.EventHeader.FromString(payload[at : at + length])
    except (IndexError, DecodeError):  # truncated
        return None
    return header.event_time_ns, header.publish_time_ns


class StageLags:
    """While `recording`, per published IV batch and surface: its publish time minus its
    event time (the venue time of its newest input), i.e. how late each stage publishes.
    Core NATS subscriptions on iv.> and surface.> (JetStream publishes reach them too)."""

    def __init__(self) -> None:
        self.recording = False
        self.offset_ns = 0
        self.lags_ms: dict[str, list[float]] = {"iv": [], "surface": [], "surface.all": []}
        self._subs: list[Any] = []

    async def start(self, nc: Any) -> None:
        for subject in ("iv.>", "surface.>"):
            self._subs.append(await nc.subscribe(subject, cb=self._on_message))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def reset(self) -> None:
        self.lags_ms = {k: [] for k in self.lags_ms}

    async def _on_message(self, msg: Any) -> None:
        if not self.recording:
            return
        times = header_times(msg.data)
        if times is None or not times[1]:
            return
        stage = msg.subject.split(".", 1)[0]
        if stage == "surface" and msg.subject.split(".")[1] == "all":
            stage = "surface.all"
        if stage in self.lags_ms:
            self.lags_ms[stage].append((times[1] - (times[0] - self.offset_ns)) / 1e6)


# ---- the gRPC client -------------------------------------------------------------------------


class LatencyClient(threading.Thread):
    """One StreamSurfaces stream; while `recording`, the latency of every surface received."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True, name="bench-grpc-client")
        self.target = target
        self.offset_ns = 0
        self.recording = False
        self.latencies_ms: list[float] = []
        self.surfaces = 0
        self.errors = 0
        self._stop_flag = threading.Event()
        self._call: Any = None

    def run(self) -> None:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        while not self._stop_flag.is_set():
            channel = grpc.insecure_channel(self.target, options=options)
            try:
                stub = api_grpc.SurfaceServiceStub(channel)
                self._call = stub.StreamSurfaces(api_pb.StreamSurfacesRequest())
                for message in self._call:
                    now = time.time_ns()
                    if message.is_snapshot or not self.recording:
                        continue
                    for s in message.surfaces:
                        self.latencies_ms.append(
                            (now - (s.header.event_time_ns - self.offset_ns)) / 1e6
                        )
                        self.surfaces += 1
            except grpc.RpcError:
                if not self._stop_flag.is_set():
                    self.errors += 1
                    time.sleep(0.5)
            finally:
                channel.close()

    def stop(self) -> None:
        self._stop_flag.set()
        if self._call is not None:
            self._call.cancel()


# ---- one rate --------------------------------------------------------------------------------


@dataclass
class Reconciliation:
    lines: list[tuple[str, int, int]] = field(default_factory=list)  # (what, expected, got)
    dead_lettered: int = 0
    ignored: dict[str, int] = field(default_factory=dict)

    @property
    def loss(self) -> int:
        return sum(abs(expected - got) for _, expected, got in self.lines)

    def failed(self) -> list[str]:
        return [f"{what}: expected {e}, got {g}" for what, e, g in self.lines if e != g]


def reconcile(a: Snapshot, b: Snapshot, venues: Sequence[str]) -> Reconciliation:
    """What happened between two drained snapshots: every difference is a loss."""
    r = Reconciliation()

    def conn(v: str, name: str) -> int:
        return int(b.connector[v].get(name, 0) - a.connector.get(v, {}).get(name, 0))

    for v in venues:
        frames = conn(v, "frames")
        r.lines.append((f"{v}: frames sent -> received", b.sim_frames[v] - a.sim_frames[v], frames))
        ignored = {
            name: int(b.connector[v][name] - a.connector.get(v, {}).get(name, 0))
            for name in b.connector[v]
            if name.startswith("frames.ignored.")
        }
        accounted = (
            conn(v, "frames.published") + conn(v, "frames.dead_lettered") + sum(ignored.values())
        )
        r.lines.append((f"{v}: frames received -> published/dead/ignored", frames, accounted))
        r.dead_lettered += conn(v, "frames.dead_lettered")
        for name, n in ignored.items():
            if n:
                short = name.removeprefix("frames.ignored.")
                r.ignored[short] = r.ignored.get(short, 0) + n

    def delta(field_of: Callable[[Snapshot], Mapping[str, float]], service: str) -> float:
        return field_of(b).get(service, 0) - field_of(a).get(service, 0)

    def stored(stream: str) -> int:
        return b.stream_last_seq[stream] - a.stream_last_seq.get(stream, 0)

    # Every acknowledged publish is stored once: events_out counts a retry JetStream
    # answered "duplicate" too, and dead letters go to DLQ through the same publisher.
    for stream, producer in STREAM_PRODUCERS.items():
        produced = sum(
            delta(lambda x: x.events_out, s)
            - delta(lambda x: x.duplicates, s)
            - delta(lambda x: x.dead_letters, s)
            for s in b.events_out
            if s.startswith(producer)
        )
        r.lines.append((f"{stream}: acked publishes -> stored", int(produced), stored(stream)))
    dead = sum(delta(lambda x: x.dead_letters, s) for s in b.dead_letters)
    r.lines.append(("DLQ: dead letters -> stored", int(dead), stored("DLQ")))
    # A durable with nothing pending or unacknowledged consumed everything stored on its
    # filter (its consumer sequence is no count: a rewind after lost deliveries renumbers).
    for durable, (stream, _, pending, ack_pending) in sorted(b.durables.items()):
        r.lines.append((f"{durable} on {stream}: pending + unacked", 0, pending + ack_pending))
    for service in b.failures:
        if not service.startswith("connector."):
            bad = delta(lambda x: x.dead_letters, service) + delta(lambda x: x.failures, service)
            r.lines.append((f"{service}: dead letters + failures", 0, int(bad)))
    return r


@dataclass
class RateResult:
    rate: int
    seconds: float = 0.0
    frames: int = 0  # frames the connectors received in the window
    latencies_ms: list[float] = field(default_factory=list)
    cpu_pct: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, tuple[float, float]] = field(default_factory=dict)  # window start, end
    recon: Reconciliation = field(default_factory=Reconciliation)
    drain_s: float = 0.0
    drained: bool = False
    bad_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_KINDS, 0))
    # StageLags: per stage, publish time minus event time of every message (--stage-lags).
    stage_lags_ms: dict[str, list[float]] = field(default_factory=dict)

    def unknown_channels_ignored(self) -> int:
        return sum(n for k, n in self.recon.ignored.items() if k.startswith("unknown_channel"))

    def pct(self, q: float, values: Sequence[float] | None = None) -> float:
        values = self.latencies_ms if values is None else values
        if not values:
            return math.nan
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def services_cpu(self) -> float:
        return sum(v for k, v in self.cpu_pct.items() if k != "sim")


async def measure_rate(
    system: System,
    client: LatencyClient,
    rate: int,
    args: argparse.Namespace,
    before: Snapshot,
    lags: StageLags | None = None,
) -> tuple[RateResult, Snapshot]:
    result = RateResult(rate)
    await system.set_total_rate(rate)
    await asyncio.sleep(args.warmup)
    pids = system.pids()
    client.offset_ns = await system.clock_offset_ns()
    start_snap = await system.snapshot()
    at_start = {name: tree_cpu_rss(pid) for name, pid in pids.items()}
    client.latencies_ms = []
    client.recording = True
    if lags is not None:
        lags.offset_ns = client.offset_ns
        lags.reset()
        lags.recording = True
    started = time.monotonic()
    bursting = False
    next_bad = started
    connections: dict[str, int] = {}
    if args.bad:
        stats = await system.sim_get("/control/stats")
        connections = {
            v: max(1, int(stats["venues"][v]["connections_open"])) for v in system.venues
        }
    while (t := time.monotonic() - started) < args.seconds:
        want = args.burst is not None and args.burst.active(t)
        if want != bursting:
            bursting = want
            await system.set_total_rate(rate * (args.burst.factor if want else 1.0))
        if args.bad and time.monotonic() >= next_bad:
            # Every connection of a venue gets `count` of each kind: about args.bad a second.
            next_bad += 1.0
            for v in system.venues:
                per = args.bad / len(system.venues) / len(BAD_KINDS) / connections[v]
                count = max(1, round(per))
                for kind in BAD_KINDS:
                    result.bad_sent[kind] += await system.inject(v, kind, count)
        await asyncio.sleep(0.05)
    client.recording = False
    if lags is not None:
        lags.recording = False
        result.stage_lags_ms = {k: list(v) for k, v in lags.lags_ms.items()}
    result.seconds = time.monotonic() - started
    for name, pid in pids.items():
        cpu, rss = tree_cpu_rss(pid)
        cpu0, rss0 = at_start.get(name, (cpu, rss))
        result.cpu_pct[name] = 100 * (cpu - cpu0) / result.seconds
        result.rss_mb[name] = (rss0 / 2**20, rss / 2**20)
    end_snap = await system.snapshot()
    result.frames = sum(
        int(end_snap.connector[v].get("frames", 0) - start_snap.connector[v].get("frames", 0))
        for v in system.venues
    )
    result.latencies_ms = list(client.latencies_ms)
    await system.set_total_rate(0)
    after, result.drain_s, result.drained = await system.drained(args.drain_timeout)
    result.recon = reconcile(before, after, system.venues)
    return result, after


# ---- output ----------------------------------------------------------------------------------


def short(service: str) -> str:
    return service.replace("connector.", "conn.")


def print_tables(results: Sequence[RateResult]) -> None:
    services = sorted(
        {k for r in results for k in r.cpu_pct if k != "sim"},
        key=lambda s: (not s.startswith("connector."), s),
    )
    rows: list[tuple[str, ...]] = [("venue msg/s (total)", *(f"{r.rate:,}" for r in results))]
    rows += [
        ("frames received/s", *(f"{r.frames / r.seconds:,.0f}" for r in results)),
        ("surfaces received", *(str(len(r.latencies_ms)) for r in results)),
        ("latency p50 ms", *(f"{r.pct(0.5):.0f}" for r in results)),
        ("latency p99 ms", *(f"{r.pct(0.99):.0f}" for r in results)),
        ("latency max ms", *(f"{r.pct(1.0):.0f}" for r in results)),
        *(
            (
                f"  lag at {stage} publish p50/p99 ms",
                *(
                    f"{r.pct(0.5, r.stage_lags_ms[stage]):.0f}/"
                    f"{r.pct(0.99, r.stage_lags_ms[stage]):.0f}"
                    if r.stage_lags_ms.get(stage)
                    else "-"
                    for r in results
                ),
            )
            for stage in ("iv", "surface", "surface.all")
            if any(r.stage_lags_ms.get(stage) for r in results)
        ),
        ("loss (frames + messages)", *(str(r.recon.loss) for r in results)),
        (
            "bad: truncated + wrong types sent",
            *(str(r.bad_sent["malformed"] + r.bad_sent["wrong_types"]) for r in results),
        ),
        ("  frames dead-lettered", *(str(r.recon.dead_lettered) for r in results)),
        ("bad: unknown channels sent", *(str(r.bad_sent["unknown_channel"]) for r in results)),
        ("  ignored as unknown channel", *(str(r.unknown_channels_ignored()) for r in results)),
        ("drained after s", *(f"{r.drain_s:.1f}" if r.drained else "NOT" for r in results)),
        ("CPU % services (of 200)", *(f"{r.services_cpu():.0f}" for r in results)),
        (
            "CPU us per venue msg",
            *(f"{1e4 * r.services_cpu() * r.seconds / max(r.frames, 1):.0f}" for r in results),
        ),
        ("CPU % simulator (excl.)", *(f"{r.cpu_pct.get('sim', 0):.0f}" for r in results)),
    ]
    rows += [
        (f"CPU % {short(s)}", *(f"{r.cpu_pct.get(s, 0):.0f}" for r in results)) for s in services
    ]
    rows += [
        (
            f"RSS MB {short(s)} start/end",
            *("{:.0f}/{:.0f}".format(*r.rss_mb.get(s, (0.0, 0.0))) for r in results),
        )
        for s in services
    ]
    print_rows(rows)
    for r in results:
        merged: dict[str, int] = {}
        for k, v in r.recon.ignored.items():
            # Binance names an unknown channel's counter after the stream: one line for all.
            k = "unknown_channel.*" if k.startswith("unknown_channel") else k
            merged[k] = merged.get(k, 0) + v
        ignored = ", ".join(f"{k} {v}" for k, v in sorted(merged.items()))
        print(f"\n{r.rate:,} msg/s: ignored frames: {ignored or 'none'}")
        for line in r.recon.failed():
            print(f"  LOSS {line}")
    # A rate counts only if the simulator delivered it (it shares the cores).
    knee = [
        r.rate
        for r in results
        if r.pct(0.99) <= KNEE_P99_MS
        and r.recon.loss == 0
        and r.drained
        and r.frames / r.seconds >= REACHED * r.rate
    ]
    print(
        f"\nknee (highest rate with p99 <= {KNEE_P99_MS:.0f} ms and zero loss): "
        + (f"{max(knee):,} msg/s" if knee else "none of the rates run")
    )
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


# ---- main ------------------------------------------------------------------------------------


async def open_system(up: Any, venues: Sequence[str], timeout_s: float = 60.0) -> System:
    """The System of a starting `up` (tests/system/conftest.py::start_up), once it has
    written its state."""
    deadline = time.monotonic() + timeout_s
    while not (up.data_dir / "up.json").exists() or "sim_url" not in up.state():
        if up.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("volstream up did not start:\n" + up.log()[-4000:])
        await asyncio.sleep(0.2)
    system = System(up, venues)
    await system.open()
    return system


async def wait_endpoints(system: System, timeout_s: float = 120.0) -> None:
    """Until the simulator and every service's metrics endpoint answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = "the simulator"
        try:
            await system.sim_get("/control/health")
            for service in system.metrics_ports:
                waiting = f"{service}'s metrics endpoint"
                await system.metrics(service)
            return
        except aiohttp.ClientError as exc:
            if time.monotonic() > deadline:
                log = system.up.log()[-4000:]
                message = f"{waiting} did not answer in {timeout_s:.0f} s ({exc})"
                raise RuntimeError(f"{message}\n{log}") from exc
            await asyncio.sleep(0.5)


async def wait_ready(system: System, timeout_s: float = 300.0) -> None:
    """Until every metrics endpoint answers and some venue's surface is served (the pipeline
    works end to end; on a loaded machine the first surfaces take minutes)."""
    deadline = time.monotonic() + timeout_s
    await wait_endpoints(system, timeout_s)
    while True:
        for venue in system.venues:
            try:
                await asyncio.to_thread(system.up.wait_surface, venue, "BTC", 1, 1.0)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise


async def bench_main(args: argparse.Namespace) -> None:
    from tests.system.conftest import start_up, stop_up

    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    first = args.rates[0] / len(args.venues)
    up = start_up(tmp, "--sim", "--sim-rate", str(first), "--venues", ",".join(args.venues))
    progress(f"volstream up --sim in {tmp} (log {up.log_path})")
    system: System | None = None
    client: LatencyClient | None = None
    lags: StageLags | None = None
    results: list[RateResult] = []
    try:
        system = await open_system(up, args.venues)
        await wait_ready(system)
        if args.stage_lags:
            lags = StageLags()
            await lags.start(system.nc)
        client = LatencyClient(f"127.0.0.1:{up.grpc_port}")
        client.start()
        progress("surfaces served; settling the first state")
        await system.set_total_rate(0)
        before, _, _ = await system.drained(args.drain_timeout)
        for rate in args.rates:
            progress(f"{rate:,} msg/s: {args.warmup:.0f} s warm-up, {args.seconds:.0f} s measured")
            result, before = await measure_rate(system, client, rate, args, before, lags)
            results.append(result)
            progress(
                f"{rate:,} msg/s: p99 {result.pct(0.99):.0f} ms, loss {result.recon.loss}, "
                f"services CPU {result.services_cpu():.0f}%"
            )
    finally:
        if client is not None:
            client.stop()
        if lags is not None:
            await lags.stop()
        if system is not None:
            await system.close()
        stop_up(up, timeout_s=30)
    # The data directory (NATS store, archive) goes; after a failure it stays, for its log.
    shutil.rmtree(tmp, ignore_errors=True)
    print_tables(results)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--rates", type=parse_rates, default=list(DEFAULT_RATES))
    p.add_argument("--seconds", type=positive, default=20.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=non_negative, default=10.0, help="seconds before each window")
    p.add_argument("--burst", type=parse_burst, default=parse_burst("5x2s/30s"))
    p.add_argument("--bad", type=non_negative, default=0.0, help="bad frames/s injected")
    p.add_argument("--venues", type=parse_venues, default=VENUES)
    p.add_argument(
        "--stage-lags",
        action="store_true",
        help="also record each stage's publish lag (subscribes to iv.> and surface.>)",
    )
    p.add_argument(
        "--drain-timeout", type=positive, default=180.0, help="seconds to wait for a drain"
    )
    args = p.parse_args(argv)
    asyncio.run(bench_main(args))


if __name__ == "__main__":
    main()
