"""Chaos: the pipeline under SIGKILLs and stalls gives the same history as a fault-free run.

    .venv/bin/python -m bench.chaos     # 5 min: 20 stage kills, 3 nats-server kills, 2 stalls
    .venv/bin/python -m bench.chaos --duration 60 --service-kills 4 --nats-kills 1 --stalls 1

Input: fixed-seed market data recorded once (the simulator and the connector on a private
nats-server for ``--record-s`` seconds, as ``bench.golden_stages`` records it), then
published into the MD stream of a fresh system at an even pace over the run, each message
with its own ``Nats-Msg-Id``. The system: the embedded nats-server with the least-privilege
users ``volstream up`` creates, and the real book, IV and surface services, each its own
process, kept running by ``up``'s supervisor (restart with backoff) and the nats-server by
``up``'s watcher (restart on the same port and store). The stages run with
``VOLSTREAM_REBUILD=replay`` (``--rebuild``; volstream/bus/rebuild.py, docs/chaos.md).

Faults, at seeded random times over the first 85 % of the run: SIGKILL of a random stage
process (its process group: the surface's fit worker too), SIGKILL of nats-server,
SIGSTOP of a random process (a stage or nats-server) for ``--stall-s`` then SIGCONT.

Verdict: once the input is all published and every durable has caught up, every message of
BOOK, IV and SURFACE is compared with the fault-free reference: the production stage
handlers run in one process over the MD stream as stored (``volstream.bus.inprocess``, which
reproduces live byte for byte). Per subject and header sequence: identical (payload bytes
equal with the wall-clock stamps cleared: publish, receive and fit times), different,
missing (a gap), stored twice (a duplicate), or not in the reference (extra).

Recovery time of a fault: from the fault's end (the kill, or the SIGCONT) until SURFACE holds
the first surface that needs input published after that instant, i.e. until output made
from post-fault input comes out again. The same measure at instants 5 s before each fault
(the "fault-free" column) is what the pipeline takes without a fault: the pacing of the
input (a surface per 500 ms of event time) and the pipeline's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from google.protobuf.message import Message
from nats.aio.client import Client

from bench.golden_stages import fill_md, read_records, write_records
from replay.compare import WALL_CLOCK_FIELDS, clear_fields
from replay.stages import ReplayEnv, close_stages, local_stages
from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.inprocess import InProcessBus, Published
from volstream.bus.permissions import ADMIN_USER
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.rebuild import direct_batch
from volstream.bus.streams import StreamLimits, default_stream_specs, ensure_streams
from volstream.config import Config, durable_name
from volstream.subjects import Subjects, parse_partition
from volstream.supervisor import (
    Child,
    Supervisor,
    keep_nats_running,
    service_specs,
    start_embedded_nats,
)
from volstream.telemetry import setup_telemetry
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger("bench.chaos")

STAGES = ("book", "iv", "surface")
OUTPUT_STREAMS = ("BOOK", "IV", "SURFACE")
FAULT_WINDOW = (0.05, 0.85)  # faults happen within these fractions of the run
INPUT_SPAN = 0.9  # the input is published over this fraction of the run


@dataclass
class ChaosOptions:
    duration_s: float = 300.0
    service_kills: int = 20
    nats_kills: int = 3
    stalls: int = 2
    stall_s: float = 10.0
    record_s: float = 40.0
    # Two venues and one currency (two venue surfaces and the consolidated one): what the
    # stages keep up with on a shared 2-core machine while rebuilding after kills.
    venues: tuple[str, ...] = ("deribit", "okx")
    currencies: tuple[str, ...] = ("BTC",)
    seed: int = 1
    rebuild: str = "replay"
    md_path: Path | None = None
    drain_timeout_s: float = 180.0
    work_dir: Path | None = None
    log_path: Path | None = None  # the services' output (default: a temporary file)


@dataclass
class Fault:
    kind: str  # "kill", "nats-kill", "stall"
    target: str
    planned_s: float
    at_s: float = 0.0  # when it happened (since the run's start)
    end_s: float = 0.0  # the kill, or the SIGCONT
    md_published: int = 0  # input messages handed to the publisher by end_s
    recovery_s: float | None = None


@dataclass
class Verdict:
    """Per output stream: counts of the comparison with the reference."""

    reference: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stored: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    identical: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    different: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gaps: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    duplicates: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    extra: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: list[str] = field(default_factory=list)

    def clean(self) -> bool:
        return all(
            self.identical[s] == self.reference[s]
            and not (self.different[s] or self.gaps[s] or self.duplicates[s] or self.extra[s])
            for s in OUTPUT_STREAMS
        )


@dataclass
class ChaosResult:
    faults: list[Fault]
    verdict: Verdict
    baseline_s: list[float]
    md_records: int
    md_stored: int
    md_duplicates: int
    drained: bool
    restarts: dict[str, int]
    nats_restarts: int
    elapsed_s: float
    rebuild: str

    @property
    def recovered(self) -> int:
        return sum(1 for f in self.faults if f.recovery_s is not None)

    def ok(self) -> bool:
        return (
            self.drained
            and self.recovered == len(self.faults)
            and self.verdict.clean()
            and self.md_stored == self.md_records
            and self.md_duplicates == 0
        )


# --- input ------------------------------------------------------------------------------


async def record_md(
    path: Path, seconds: float, seed: int, venues: tuple[str, ...], currencies: tuple[str, ...]
) -> int:
    """Fixed-seed market data: the simulator and connector for ``seconds``, the MD stream
    written to ``path`` in stream order (bench.golden_stages' file format)."""
    with tempfile.TemporaryDirectory(prefix="chaos-record-") as tmp, EmbeddedNats(Path(tmp)) as ns:
        await fill_md(ns.url, seconds, venues, currencies, seed)
        nc = await connect(ns.url, "chaos-record")
        try:
            records = [(m.subject, m.payload) for m in await read_stream(nc, "MD")]
        finally:
            await nc.drain()
    write_records(path, records)
    return len(records)


async def read_stream(nc: Client, stream: str) -> list[Published]:
    """Every message of ``stream``, in stream order."""
    out: list[Published] = []
    seq = 1
    while True:
        batch = await direct_batch(nc, stream, seq, 512)
        if not batch:
            return out
        out.extend(Published(stream, m.stream_seq, m.subject, m.data, m.headers) for m in batch)
        seq = batch[-1].stream_seq + 1


# --- comparison ---------------------------------------------------------------------------

_DECODERS: dict[str, type[Message]] = {
    "book": book_pb.TopOfBookBatch,
    "iv": iv_pb.SmileBatch,
    "surface": surface_pb.Surface,
}


def keyed(subject: str, payload: bytes) -> tuple[str, bytes]:
    """(identity, payload bytes without wall-clock stamps) of an output message. A stage's
    own message is identified by its header sequence; relayed market data keeps the
    connector's header, whose sequence is not unique on the relay subject (every kind is
    relayed there), so it is identified by its content."""
    stage, _venue, _ccy, rest = parse_partition(subject)
    decoder = md_pb.MarketDataBatch if rest == "md" else _DECODERS[stage]
    message = decoder.FromString(payload)
    clear_fields(message, WALL_CLOCK_FIELDS)
    data = message.SerializeToString(deterministic=True)
    if rest == "md":
        return "relay " + hashlib.sha256(data).hexdigest()[:16], data
    return f"sequence {message.header.sequence}", data  # type: ignore[attr-defined]


def compare(reference: list[Published], live: list[Published]) -> Verdict:
    """Line up live and reference messages by subject and identity (:func:`keyed`); see the
    module docstring."""
    verdict = Verdict()
    live_by_key: dict[tuple[str, str], list[bytes]] = defaultdict(list)
    for m in live:
        verdict.stored[m.stream] += 1
        seq, data = keyed(m.subject, m.payload)
        live_by_key[(m.subject, seq)].append(data)
    stream_of: dict[tuple[str, str], str] = {}
    for m in reference:
        stream = m.stream
        verdict.reference[stream] += 1
        seq, data = keyed(m.subject, m.payload)
        key = (m.subject, seq)
        stream_of[key] = stream
        copies = live_by_key.get(key)
        if not copies:
            verdict.gaps[stream] += 1
            if len(verdict.examples) < 5:
                verdict.examples.append(f"missing {m.subject} {seq}")
        elif copies[0] == data:
            verdict.identical[stream] += 1
            verdict.duplicates[stream] += len(copies) - 1
        else:
            verdict.different[stream] += 1
            verdict.duplicates[stream] += len(copies) - 1
            if len(verdict.examples) < 5:
                verdict.examples.append(f"different {m.subject} {seq}")
    for key, copies in live_by_key.items():
        if key not in stream_of:
            stream = {"book": "BOOK", "iv": "IV", "surface": "SURFACE"}[key[0].split(".")[0]]
            verdict.extra[stream] += len(copies)
            if len(verdict.examples) < 5:
                verdict.examples.append(f"extra {key[0]} {key[1]}")
    return verdict


async def reference_run(cfg: Config, md: list[Published]) -> tuple[list[Published], list[int]]:
    """The fault-free reference over ``md``: every output message, and after each input
    message the number of SURFACE messages so far."""
    env = ReplayEnv(cfg, Subjects(cfg.namespace), setup_telemetry("chaos-reference"))
    stages = local_stages(env)
    outputs: list[Published] = []
    surfaces = 0

    def on_publish(message: Published) -> None:
        nonlocal surfaces
        if message.stream != "MD":
            outputs.append(message)
        if message.stream == "SURFACE":
            surfaces += 1

    streams = {"md": "MD", "book": "BOOK", "iv": "IV", "surface": "SURFACE"}
    bus = InProcessBus(stages, lambda s: streams.get(s.split(".", 1)[0]), on_publish=on_publish)
    after: list[int] = []
    try:
        for m in md:
            await bus.publish(m.subject, m.payload)
            after.append(surfaces)
    finally:
        await close_stages(stages)
    return outputs, after


# --- the run ------------------------------------------------------------------------------


async def provision_long_streams(url: str, admin: tuple[str, str], duration_s: float) -> None:
    """The streams with every message kept for the whole run (IV keeps 85 s by default): the
    verdict is about restarts, and a rebuild is exact only over an input stream that still
    holds the stage's whole input (docs/chaos.md section 7)."""
    keep_s = max(3600.0, 4 * duration_s)
    limits = replace(
        StreamLimits.compact(512 * 1024 * 1024),
        md_max_age_s=keep_s,
        book_max_age_s=keep_s,
        iv_max_age_s=keep_s,
        surface_max_age_s=keep_s,
    )
    nc = await connect(url, "chaos-provision", user=admin[0], password=admin[1])
    try:
        await ensure_streams(nc.jetstream(), default_stream_specs(Subjects(), limits))
    finally:
        await nc.drain()


class QuietSupervisor(Supervisor):
    """``up``'s supervisor, with the services' output going to a file instead of stdout."""

    def __init__(self, specs: list, log_path: Path) -> None:  # type: ignore[type-arg]
        super().__init__(specs)
        self._log = log_path.open("ab")

    async def _pump(self, child: Child) -> None:
        assert child.proc and child.proc.stdout
        tag = child.spec.name.encode() + b" | "
        while True:
            line = await child.proc.stdout.readline()
            if not line:
                return
            self._log.write(tag + line)
            self._log.flush()


def plan_faults(opts: ChaosOptions, rng: random.Random) -> list[Fault]:
    lo, hi = (opts.duration_s * f for f in FAULT_WINDOW)
    kinds = (
        ["kill"] * opts.service_kills + ["nats-kill"] * opts.nats_kills + ["stall"] * opts.stalls
    )
    times = sorted(rng.uniform(lo, hi) for _ in kinds)
    rng.shuffle(kinds)
    return [Fault(kind, "", t) for kind, t in zip(kinds, times, strict=True)]


def _alive(child: Child) -> bool:
    return child.proc is not None and child.proc.returncode is None


class Run:
    def __init__(self, opts: ChaosOptions, work: Path) -> None:
        self.opts = opts
        self.work = work
        self.rng = random.Random(opts.seed)
        self.t0 = 0.0
        self.published = 0  # input messages handed to the publisher
        self.publish_times: list[float] = []  # since t0, per input message
        self.samples: list[tuple[float, int]] = []  # (since t0, SURFACE last seq)
        self.input_done = asyncio.Event()
        self.kills: dict[str, int] = defaultdict(int)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def publish_input(
        self, url: str, admin: tuple[str, str], records: list[tuple[str, bytes]]
    ) -> None:
        nc = await connect(url, "chaos-md", user=admin[0], password=admin[1])
        publisher = JetStreamPublisher(nc, ack_timeout_s=2.0)
        span = self.opts.duration_s * INPUT_SPAN
        step = span / max(1, len(records))
        try:
            for i, (subject, payload) in enumerate(records):
                delay = i * step - self.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                await publisher.publish(subject, payload, f"chaos.md.{i}")
                self.published = i + 1
                self.publish_times.append(self.now())
            while True:  # a nats-server kill at the end must not fail the run
                try:
                    await publisher.flush(30.0)
                    break
                except (TimeoutError, RuntimeError) as exc:
                    log.warning("input flush: %s; again", exc)
        finally:
            await publisher.close(10.0)
            await nc.close()
            self.input_done.set()

    async def sample_surfaces(self, nc: Client, stream: str, stop: asyncio.Event) -> None:
        js = nc.jetstream()
        while not stop.is_set():
            with contextlib.suppress(Exception):
                info = await js.stream_info(stream, subjects_filter=None)
                self.samples.append((self.now(), int(info.state.last_seq)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async def inject(self, faults: list[Fault], supervisor: Supervisor, nats: EmbeddedNats) -> None:
        for fault in faults:
            delay = fault.planned_s - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            fault.at_s = self.now()
            if fault.kind == "nats-kill":
                await self._wait(lambda: nats.proc is not None and nats.proc.poll() is None)
                assert nats.proc is not None
                fault.target = "nats-server"
                os.kill(nats.proc.pid, signal.SIGKILL)
            elif fault.kind == "kill":
                child = await self._pick(supervisor)
                assert child.proc is not None
                fault.target = child.spec.name
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
            else:
                targets = [c for c in supervisor.children if _alive(c)]
                nats_up = nats.proc is not None and nats.proc.poll() is None
                choice = self.rng.randrange(len(targets) + (1 if nats_up else 0))
                if choice < len(targets):
                    proc = targets[choice].proc
                    assert proc is not None
                    pid, fault.target = proc.pid, targets[choice].spec.name
                else:
                    assert nats.proc is not None
                    pid, fault.target = nats.proc.pid, "nats-server"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGSTOP)
                await asyncio.sleep(self.opts.stall_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)
            fault.end_s = self.now()
            fault.md_published = self.published
            log.info("fault %s %s at %.1fs", fault.kind, fault.target, fault.at_s)

    async def _pick(self, supervisor: Supervisor) -> Child:
        """A running stage, among those killed least so far (every stage gets its share)."""
        await self._wait(lambda: any(_alive(c) for c in supervisor.children))
        alive = [c for c in supervisor.children if _alive(c)]
        fewest = min(self.kills[c.spec.name] for c in alive)
        least = [c for c in alive if self.kills[c.spec.name] == fewest]
        child = least[self.rng.randrange(len(least))]
        self.kills[child.spec.name] += 1
        return child

    @staticmethod
    async def _wait(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a process)
            await asyncio.sleep(0.05)

    async def drain(self, nc: Client, cfg: Config, supervisor: Supervisor) -> bool:
        """After the input: wait until every durable has handled everything and the output
        streams have stopped growing."""
        js = nc.jetstream()
        durables = [
            ("MD", durable_name("book", cfg)),
            ("BOOK", durable_name("iv", cfg)),
            ("IV", durable_name("surface", cfg)),
        ]
        deadline = time.monotonic() + self.opts.drain_timeout_s
        last: tuple[int, ...] = ()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                pending = 0
                for stream, durable in durables:
                    info = await js.consumer_info(stream, durable)
                    pending += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
                sizes = tuple(
                    [int((await js.stream_info(s)).state.last_seq) for s in OUTPUT_STREAMS]
                )
            except Exception:
                continue
            if pending or sizes != last or not all(_alive(c) for c in supervisor.children):
                last = sizes
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 2.0:
                return True
        return False


def _recovery(
    start_s: float,
    published: int,
    after: list[int],
    publish_times: list[float],
    samples: list[tuple[float, int]],
) -> float | None:
    """Seconds from ``start_s`` until SURFACE holds the first surface made from input
    published after ``published`` messages (module docstring)."""
    target = None
    for k in range(published, len(after)):
        if after[k] > (after[published - 1] if published else 0):
            target = after[k]
            break
    if target is None:
        return 0.0  # no surface depends on later input
    times = [t for t, _ in samples]
    for t, last_seq in samples[bisect.bisect_left(times, start_s) :]:
        if last_seq >= target:
            return t - start_s
    return None


async def run_chaos(opts: ChaosOptions) -> ChaosResult:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-", dir=opts.work_dir) as tmp:
        work = Path(tmp)
        md_path = opts.md_path or work / "md.bin"
        if opts.md_path is None:
            n = await record_md(md_path, opts.record_s, 7, opts.venues, opts.currencies)
            log.info("recorded %d MD messages in %.0f s", n, opts.record_s)
        records = list(read_records(md_path))
        cfg = Config(
            venues=opts.venues,
            currencies=opts.currencies,
            data_dir=work / "data",
            http_port=0,
            rebuild=opts.rebuild,
        ).validated()
        cfg.data_dir.mkdir(parents=True)
        nats, passwords, _ = start_embedded_nats(cfg)
        admin = (ADMIN_USER, passwords[ADMIN_USER])
        cfg = replace(cfg, nats_url=nats.url)
        run = Run(opts, work)
        stop = asyncio.Event()
        try:
            await provision_long_streams(nats.url, admin, opts.duration_s)
            specs = [s for s in service_specs(cfg, False, None, passwords) if s.name in STAGES]
            supervisor = QuietSupervisor(specs, opts.log_path or work / "services.log")
            nc = await connect(nats.url, "chaos-admin", user=admin[0], password=admin[1])
            run.t0 = time.monotonic()
            log.info("system up at %.1f s", run.t0 - started)
            tasks = [
                asyncio.create_task(supervisor.run(stop)),
                asyncio.create_task(keep_nats_running(nats, stop, supervisor)),
            ]
            sampler_stop = asyncio.Event()
            sampler = asyncio.create_task(run.sample_surfaces(nc, "SURFACE", sampler_stop))
            faults = plan_faults(opts, run.rng)
            publisher = asyncio.create_task(run.publish_input(nats.url, admin, records))
            await run.inject(faults, supervisor, nats)
            await publisher
            log.info("input published at %.1f s", run.now())
            drained = await run.drain(nc, cfg, supervisor)
            log.info("drained (%s) at %.1f s", drained, run.now())
            sampler_stop.set()
            await sampler
            restarts = {c.spec.name: c.restarts for c in supervisor.children}
            nats_restarts = int(supervisor.external.get("nats", {}).get("restarts") or 0)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            md = await read_stream(nc, "MD")
            live = [m for s in OUTPUT_STREAMS for m in await read_stream(nc, s)]
            await nc.close()
        finally:
            stop.set()
            nats.stop()
    md_ids = {m.headers.get("Nats-Msg-Id") if m.headers else None for m in md}
    log.info("streams read at %.1f s", time.monotonic() - started)
    reference, after = await reference_run(cfg, md)
    log.info("reference at %.1f s", time.monotonic() - started)
    verdict = compare(reference, live)
    for fault in faults:
        fault.recovery_s = _recovery(
            fault.end_s, fault.md_published, after, run.publish_times, run.samples
        )
    baseline = []
    for fault in faults:
        at = fault.at_s - 5.0
        earlier = [f for f in faults if f.at_s < fault.at_s]
        if at <= 0 or any(f.end_s > at - 5.0 for f in earlier):
            continue  # only instants well clear of another fault
        k = bisect.bisect_right(run.publish_times, at)
        value = _recovery(at, k, after, run.publish_times, run.samples)
        if value is not None:
            baseline.append(value)
    return ChaosResult(
        faults=faults,
        verdict=verdict,
        baseline_s=baseline,
        md_records=len(records),
        md_stored=len(md),
        md_duplicates=len(md) - len(md_ids),
        drained=drained,
        restarts=restarts,
        nats_restarts=nats_restarts,
        elapsed_s=time.monotonic() - started,
        rebuild=opts.rebuild,
    )


# --- report ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(result: ChaosResult) -> str:
    v = result.verdict
    lines = [
        f"rebuild mode: {result.rebuild}; {result.elapsed_s:.0f} s in all; input "
        f"{result.md_records} MD messages, {result.md_stored} stored, "
        f"{result.md_duplicates} duplicates; drained: {result.drained}",
        "restarts: "
        + ", ".join(f"{k} {n}" for k, n in sorted(result.restarts.items()))
        + f", nats-server {result.nats_restarts}",
        "",
        f"{'fault':<10} {'injected':>8} {'recovered':>9} {'p50 s':>7} {'p90 s':>7} {'max s':>7}",
    ]
    kinds = ("kill", "nats-kill", "stall")
    for kind in (*kinds, "all"):
        group = [f for f in result.faults if kind in ("all", f.kind)]
        times = [f.recovery_s for f in group if f.recovery_s is not None]
        lines.append(
            f"{kind:<10} {len(group):>8} {len(times):>9} {_pct(times, 0.5):>7.2f} "
            f"{_pct(times, 0.9):>7.2f} {max(times, default=float('nan')):>7.2f}"
        )
    base = result.baseline_s
    lines.append(
        f"{'fault-free':<10} {len(base):>8} {'':>9} {_pct(base, 0.5):>7.2f} "
        f"{_pct(base, 0.9):>7.2f} {max(base, default=float('nan')):>7.2f}"
    )
    lines += [
        "",
        f"{'stream':<8} {'reference':>9} {'stored':>7} {'identical':>9} {'different':>9} "
        f"{'gaps':>5} {'dups':>5} {'extra':>5}",
    ]
    for s in OUTPUT_STREAMS:
        lines.append(
            f"{s:<8} {v.reference[s]:>9} {v.stored[s]:>7} {v.identical[s]:>9} "
            f"{v.different[s]:>9} {v.gaps[s]:>5} {v.duplicates[s]:>5} {v.extra[s]:>5}"
        )
    lines += [f"  e.g. {e}" for e in v.examples]
    lines.append("")
    lines.append("faults (s since start: kind target -> recovery s):")
    lines.append(
        "  "
        + "; ".join(
            f"{f.at_s:.0f} {f.kind} {f.target} -> "
            + ("never" if f.recovery_s is None else f"{f.recovery_s:.1f}")
            for f in result.faults
        )
    )
    lines.append("VERDICT: " + ("identical history" if result.ok() else "DIFFERS"))
    return "\n".join(lines)


def _positive(kind: type[int] | type[float], allow_zero: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}") from None
        if value < 0 or (value == 0 and not allow_zero) or value != value:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: out of range")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=_positive(float, False), default=300.0, help="seconds")
    parser.add_argument("--service-kills", type=_positive(int, True), default=20)
    parser.add_argument("--nats-kills", type=_positive(int, True), default=3)
    parser.add_argument("--stalls", type=_positive(int, True), default=2)
    parser.add_argument("--stall-s", type=_positive(float, False), default=10.0)
    parser.add_argument("--record-s", type=_positive(float, False), default=40.0)
    parser.add_argument("--venues", default="deribit,okx")
    parser.add_argument("--currencies", default="BTC")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rebuild", choices=("replay", "resume"), default="replay")
    parser.add_argument("--md", type=Path, help="a recording (bench.golden_stages record)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--log", type=Path, help="write the services' output here")
    args = parser.parse_args(argv)  # exits 2 naming a bad value
    if args.md is not None and not args.md.is_file():
        parser.error(f"--md: no recording at {args.md}")
    venues = tuple(v.strip() for v in args.venues.split(",") if v.strip())
    currencies = tuple(c.strip().upper() for c in args.currencies.split(",") if c.strip())
    try:
        Config(venues=venues, currencies=currencies).validated()
    except Exception as exc:
        parser.error(str(exc))
    opts = ChaosOptions(
        duration_s=args.duration,
        service_kills=int(args.service_kills),
        nats_kills=int(args.nats_kills),
        stalls=int(args.stalls),
        stall_s=args.stall_s,
        record_s=args.record_s,
        venues=venues,
        currencies=currencies,
        seed=args.seed,
        rebuild=args.rebuild,
        md_path=args.md,
        log_path=args.log,
    )
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    result = asyncio.run(run_chaos(opts))
    print(report(result))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "ok": result.ok(),
                    "faults": [f.__dict__ for f in result.faults],
                    "baseline_s": result.baseline_s,
                    "streams": {
                        k: dict(getattr(result.verdict, k))
                        for k in (
                            "reference",
                            "stored",
                            "identical",
                            "different",
                            "gaps",
                            "duplicates",
                            "extra",
                        )
                    },
                },
                indent=2,
            )
        )
    return 0 if result.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
