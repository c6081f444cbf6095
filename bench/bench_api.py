"""gRPC fan-out: N concurrent StreamSurfaces clients on one API process, against a naive server.

    .venv/bin/python -m bench.bench_api [--clients 1000] [--duration 15] [--surfaces 8]
        [--hz 4] [--client-procs 2] [--streams-per-channel 1] [--quotes] [--aligned]
        [--only volstream|naive]

Workload: an embedded nats-server with a SURFACE stream; this process publishes `--surfaces`
surfaces (venue x currency) at `--hz` each, phases staggered evenly (independent partitions,
the worst case for coalescing) or `--aligned`. The API server runs in its own process, fed
from NATS exactly as in production; `--client-procs` processes open `--clients` streams in
total (each stream on its own channel unless --streams-per-channel) and measure, per
surface received, the delivery latency = receive wall time - header.publish_time_ns (same
machine clock): publisher -> NATS -> API -> gRPC -> client.

Reference: the obvious fan-out, run with the same feed and clients: one stream message per
surface update, serialised per client, through an unbounded per-client queue.

Figures over the measured window (after every client got its snapshot and a warm-up):
latency p50/p99/max, surfaces and messages delivered (and the share of published updates
that reached clients: below 100% means conflation), server CPU (% of one core) and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VENUES = ("deribit", "okx", "bybit", "binance", "all")
CURRENCIES = ("BTC", "ETH", "SOL")


def progress(text: str) -> None:
    print(f"[bench_api] {text}", file=sys.stderr, flush=True)


def partitions(n: int) -> list[tuple[str, str]]:
    keys = [(v, c) for c in CURRENCIES for v in VENUES]
    return keys[:n]


def build_surface(venue: str, currency: str, revision: int, quotes: int) -> Any:
    from volstream.v1 import surface_pb2 as surface_pb

    s = surface_pb.Surface(venue=venue, currency=currency, revision=revision)
    s.model = surface_pb.SURFACE_MODEL_SVI
    s.index_price_usd = 60_000.0 + revision
    for i in range(8):
        sl = s.slices.add(expiry_time_ns=1_900_000_000_000_000_000 + i * 604_800_000_000_000)
        sl.expiry_label = f"2030-02-{i + 1:02d}"
        sl.forward_usd = 60_000.0 * (1 + 0.005 * i)
        sl.raw.a, sl.raw.b, sl.raw.rho, sl.raw.m, sl.raw.sigma = 0.04, 0.1, -0.3, 0.0, 0.2
        sl.metrics.atm_vol, sl.metrics.rr25, sl.metrics.bf25 = 0.55 + 0.01 * i, -0.03, 0.006
        sl.diagnostics.quotes_used = quotes
        for j in range(quotes):
            q = sl.quotes.add(symbol=f"{currency}-{i}-{j}", strike_usd=40_000.0 + 1_000.0 * j)
            q.bid_iv, q.ask_iv, q.mid_iv, q.fitted_iv = 0.54, 0.56, 0.55, 0.551
    for days in (1, 7, 30, 60, 90, 180):
        t = s.tenors.add(tenor_days=days, available=True, forward_usd=60_000.0)
        t.metrics.atm_vol = 0.55
        for label, delta in (("10P", -0.1), ("25P", -0.25), ("ATM", 0.5), ("25C", 0.25)):
            t.nodes.add(label=label, delta=delta, vol=0.55)
    return s


# naive reference server --------------------------------------------------------------------
async def serve_naive(nats_url: str) -> tuple[Any, int, Any]:
    """One message per surface update, serialised per client, unbounded queue per client."""
    import grpc.aio

    from svc_api.feed import SurfaceFeed
    from svc_api.hub import SurfaceHub
    from svc_api.store import without_quotes
    from volstream.v1 import surface_service_pb2 as api_pb
    from volstream.v1 import surface_service_pb2_grpc as api_grpc

    queues: set[asyncio.Queue[Any]] = set()

    class ListeningHub(SurfaceHub):
        def apply_surface(self, surface: Any, *, sequence: int = 0, stored_time_ns: int = 0) -> Any:
            outcome = super().apply_surface(
                surface, sequence=sequence, stored_time_ns=stored_time_ns
            )
            if outcome.accepted:
                light = without_quotes(surface)
                for q in queues:
                    q.put_nowait((surface, light))
            return outcome

    hub = ListeningHub()

    class Naive(api_grpc.SurfaceServiceServicer):
        async def StreamSurfaces(self, request: Any, context: Any) -> Any:
            q: asyncio.Queue[Any] = asyncio.Queue()
            queues.add(q)
            try:
                omit = request.omit_quotes
                snapshot = [e.surface for e in hub.store.list()]
                yield api_pb.StreamSurfacesResponse(
                    surfaces=[without_quotes(s) for s in snapshot] if omit else snapshot,
                    is_snapshot=True,
                )
                while True:
                    full, light = await q.get()
                    yield api_pb.StreamSurfacesResponse(surfaces=[light if omit else full])
            finally:
                queues.discard(q)

    import nats

    nc = await nats.connect(nats_url, max_reconnect_attempts=-1)
    feed = SurfaceFeed(hub, nc, follow_iv=False)
    await feed.start()
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 100_000)]
    )
    api_grpc.add_SurfaceServiceServicer_to_server(Naive(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port, nc


async def server_main(variant: str, nats_url: str, port_file: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if variant == "volstream":
        from svc_api.config import ApiConfig
        from svc_api.server import serve

        handle = await serve(
            ApiConfig(host="127.0.0.1", port=0, max_concurrent_streams=100_000),
            nats_url,
            follow_iv=False,
        )
        await asyncio.to_thread(port_file.write_text, str(handle.port))
        await stop.wait()
        await handle.stop(grace_s=0.5)
    else:
        server, port, nc = await serve_naive(nats_url)
        await asyncio.to_thread(port_file.write_text, str(port))
        await stop.wait()
        await server.stop(0.5)
        await nc.close()


# clients -----------------------------------------------------------------------------------
async def clients_main(
    target: str, streams: int, per_channel: int, omit_quotes: bool, min_interval_ms: int
) -> None:
    """Open streams; READY once every stream has its snapshot; GO: warm-up starts;
    START/STOP: the measured window. Streams always read (an unread stream holds its flow
    control window, and many of them stall the whole client process)."""
    import grpc.aio

    from volstream.v1 import surface_service_pb2 as api_pb
    from volstream.v1 import surface_service_pb2_grpc as api_grpc

    recording = False
    latencies_us: list[int] = []
    counters = {"messages": 0, "surfaces": 0, "errors": 0}
    snapshots = 0
    all_snapshots = asyncio.Event()
    go = asyncio.Event()
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        # A connect storm must not leave channels in long reconnect backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # One TCP connection per channel, like separate client machines (gRPC otherwise
        # shares one connection between identical channels of a process).
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [
        grpc.aio.insecure_channel(target, options=options)
        for _ in range(math.ceil(streams / per_channel))
    ]

    async def one(i: int) -> None:
        nonlocal snapshots
        stub = api_grpc.SurfaceServiceStub(channels[i // per_channel])
        call = stub.StreamSurfaces(
            api_pb.StreamSurfacesRequest(omit_quotes=omit_quotes, min_interval_ms=min_interval_ms)
        )
        try:
            async for message in call:
                if message.is_snapshot:
                    snapshots += 1
                    if snapshots == streams:
                        all_snapshots.set()
                    continue
                if recording:
                    now = time.time_ns()
                    counters["messages"] += 1
                    counters["surfaces"] += len(message.surfaces)
                    for s in message.surfaces:
                        latencies_us.append((now - s.header.publish_time_ns) // 1000)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                counters["errors"] += 1
                if counters["errors"] <= 3:
                    progress(f"stream {i}: {exc.code().name} {exc.details()}")

    tasks = []
    for i in range(streams):  # ramp up: 200 new streams per 100 ms
        tasks.append(asyncio.create_task(one(i)))
        if i % 200 == 199:
            await asyncio.sleep(0.1)
    started = time.monotonic()
    while not all_snapshots.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_snapshots.wait(), 5)
        if counters["errors"] and snapshots + counters["errors"] >= streams:
            break
        if not all_snapshots.is_set():
            progress(
                f"clients pid {os.getpid()}: {snapshots}/{streams} snapshots, "
                f"{counters['errors']} errors after {time.monotonic() - started:.0f}s"
            )
    print("READY", flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    assert (await reader.readline()).strip() == b"GO"
    go.set()
    assert (await reader.readline()).strip() == b"START"
    recording = True
    cpu0 = time.process_time()
    assert (await reader.readline()).strip() == b"STOP"
    recording = False
    cpu_s = time.process_time() - cpu0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({**counters, "latencies_us": latencies_us, "cpu_s": cpu_s}), flush=True)
    for ch in channels:
        await ch.close(None)


# orchestration -----------------------------------------------------------------------------
@dataclass
class RunResult:
    variant: str
    latencies_ms: list[float] = field(default_factory=list)
    messages: int = 0
    surfaces: int = 0
    published: int = 0
    errors: int = 0
    seconds: float = 0.0
    server_cpu_pct: float = 0.0
    server_rss_mb_max: float = 0.0
    server_rss_mb_start: float = 0.0
    client_cpu_pct: float = 0.0
    connect_s: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def publish_loop(
    js: Any,
    keys: list[tuple[str, str]],
    hz: float,
    aligned: bool,
    quotes: int,
    stop: asyncio.Event,
    counter: list[int],
) -> None:
    period = 1.0 / hz
    revisions = dict.fromkeys(keys, 0)
    templates = {k: build_surface(k[0], k[1], 0, quotes) for k in keys}
    slots = [(0.0 if aligned else period * i / len(keys), k) for i, k in enumerate(keys)]
    start = time.monotonic()
    tick = 0
    while not stop.is_set():
        for offset, key in slots:
            due = start + tick * period + offset
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                return
            revisions[key] += 1
            surface = templates[key]
            surface.revision = revisions[key]
            surface.header.publish_time_ns = time.time_ns()
            surface.header.event_time_ns = surface.header.publish_time_ns
            await js.publish(f"surface.{key[0]}.{key[1].lower()}", surface.SerializeToString())
            counter[0] += 1
        tick += 1


async def run_variant(variant: str, args: argparse.Namespace, nats_url: str) -> RunResult:
    import nats
    import psutil

    result = RunResult(variant)
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    port_file = tmp / "port"
    me = [sys.executable, "-m", "bench.bench_api"]
    server = await asyncio.create_subprocess_exec(
        *me,
        "--role",
        "server",
        "--variant",
        variant,
        "--nats",
        nats_url,
        "--port-file",
        str(port_file),
    )
    clients: list[asyncio.subprocess.Process] = []
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() or not port_file.read_text():
            if server.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{variant} server did not start")
            await asyncio.sleep(0.05)
        target = f"127.0.0.1:{port_file.read_text()}"
        proc = psutil.Process(server.pid)
        result.server_rss_mb_start = proc.memory_info().rss / 2**20

        # One round first so that snapshots carry every surface; the steady publishing
        # starts once every client is connected (a connect storm under full fan-out load
        # measures the accept queue, not delivery).
        js = nc.jetstream()
        stop = asyncio.Event()
        published = [0]
        keys = partitions(args.surfaces)
        for venue, currency in keys:
            first = build_surface(venue, currency, 0, args.quotes_per_expiry)
            first.header.publish_time_ns = time.time_ns()
            await js.publish(f"surface.{venue}.{currency.lower()}", first.SerializeToString())
        t0 = time.monotonic()
        per_proc = [args.clients // args.client_procs] * args.client_procs
        per_proc[0] += args.clients - sum(per_proc)
        for n in per_proc:
            clients.append(
                await asyncio.create_subprocess_exec(
                    *me,
                    "--role",
                    "clients",
                    "--target",
                    target,
                    "--streams",
                    str(n),
                    "--streams-per-channel",
                    str(args.streams_per_channel),
                    "--min-interval-ms",
                    str(args.min_interval_ms),
                    *(["--quotes"] if args.quotes else []),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 28,  # the report is one long JSON line
                )
            )
        for c in clients:
            assert c.stdout is not None
            line = await asyncio.wait_for(c.stdout.readline(), 120)
            if line.strip() != b"READY":
                raise RuntimeError(f"client process said {line!r}")
        result.connect_s = time.monotonic() - t0
        progress(
            f"{variant}: {args.clients} streams got their snapshots in {result.connect_s:.1f}s"
        )
        publisher = asyncio.create_task(
            publish_loop(js, keys, args.hz, args.aligned, args.quotes_per_expiry, stop, published)
        )
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(b"GO\n")
            await c.stdin.drain()
        await asyncio.sleep(args.warmup)

        cpu0 = sum(proc.cpu_times()[:2])
        published0 = published[0]
        started = time.monotonic()
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(b"START\n")
            await c.stdin.drain()
        rss_max = 0.0
        while time.monotonic() - started < args.duration:
            rss_max = max(rss_max, proc.memory_info().rss / 2**20)
            await asyncio.sleep(0.25)
        for c in clients:
            assert c.stdin is not None
            c.stdin.write(b"STOP\n")
            await c.stdin.drain()
        result.seconds = time.monotonic() - started
        progress(f"{variant}: measured {result.seconds:.1f}s; collecting client reports")
        result.server_cpu_pct = 100 * (sum(proc.cpu_times()[:2]) - cpu0) / result.seconds
        result.published = published[0] - published0
        result.server_rss_mb_max = max(rss_max, proc.memory_info().rss / 2**20)
        stop.set()
        await publisher
        client_cpu = 0.0
        for c in clients:
            assert c.stdout is not None
            report = json.loads(await asyncio.wait_for(c.stdout.readline(), 120))
            result.latencies_ms.extend(us / 1000 for us in report["latencies_us"])
            result.messages += report["messages"]
            result.surfaces += report["surfaces"]
            result.errors += report["errors"]
            client_cpu += report["cpu_s"]
            await c.wait()
        result.client_cpu_pct = 100 * client_cpu / result.seconds
    finally:
        await stop_processes(clients, server)
        await nc.close()
    return result


async def stop_processes(
    clients: Sequence[asyncio.subprocess.Process], server: asyncio.subprocess.Process
) -> None:
    """Kill the load processes; stop the server with SIGTERM (SIGKILL after 10 s)."""
    for c in clients:
        if c.returncode is None:
            c.kill()
            await c.wait()
    if server.returncode is None:
        server.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(server.wait(), 10)
        except TimeoutError:
            server.kill()
            await server.wait()


def print_table(results: Sequence[RunResult], args: argparse.Namespace) -> None:
    rows: list[tuple[str, ...]] = [
        ("", *(r.variant for r in results)),
        ("clients (streams)", *(str(args.clients) for _ in results)),
        ("connect + snapshots s", *(f"{r.connect_s:.1f}" for r in results)),
        ("measured s", *(f"{r.seconds:.1f}" for r in results)),
        ("updates published", *(str(r.published) for r in results)),
        ("latency p50 ms", *(f"{r.pct(0.50):.1f}" for r in results)),
        ("latency p99 ms", *(f"{r.pct(0.99):.1f}" for r in results)),
        ("latency max ms", *(f"{max(r.latencies_ms, default=math.nan):.1f}" for r in results)),
        ("stream messages delivered", *(str(r.messages) for r in results)),
        ("messages/s", *(f"{r.messages / r.seconds:,.0f}" for r in results)),
        ("surfaces delivered", *(str(r.surfaces) for r in results)),
        ("surfaces/s", *(f"{r.surfaces / r.seconds:,.0f}" for r in results)),
        (
            "share of updates delivered",
            *(f"{100 * r.surfaces / max(1, r.published * args.clients):.1f}%" for r in results),
        ),
        ("surfaces per message", *(f"{r.surfaces / max(1, r.messages):.2f}" for r in results)),
        ("server CPU % of a core", *(f"{r.server_cpu_pct:.0f}" for r in results)),
        (
            "server RSS MB start/max",
            *(f"{r.server_rss_mb_start:.0f}/{r.server_rss_mb_max:.0f}" for r in results),
        ),
        ("client procs CPU %", *(f"{r.client_cpu_pct:.0f}" for r in results)),
        ("stream errors", *(str(r.errors) for r in results)),
    ]
    print_rows(rows)


def print_rows(rows: Sequence[Sequence[str]]) -> None:
    """A table: the first row is the header, the first column left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print(
            "  ".join(
                c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


async def bench_main(args: argparse.Namespace) -> None:
    import nats

    from volstream.bus.embedded import EmbeddedNats

    with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(
            name="SURFACE", subjects=["surface.>"], allow_direct=True, max_msgs_per_subject=1000
        )
        await nc.close()
        size = len(build_surface("deribit", "BTC", 1, args.quotes_per_expiry).SerializeToString())
        print(
            f"{args.clients} streams, {args.surfaces} surfaces x {args.hz} Hz "
            f"({'aligned' if args.aligned else 'staggered'}), surface {size:,} bytes published, "
            f"clients {'with' if args.quotes else 'without'} quotes, "
            f"min_interval_ms {args.min_interval_ms}, "
            f"{args.client_procs} client processes, {os.cpu_count()} CPUs\n",
            flush=True,
        )
        variants = [args.only] if args.only else ["volstream", "naive"]
        results = [await run_variant(v, args, server.url) for v in variants]
    print_table(results, args)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--surfaces", type=int, default=8)
    p.add_argument("--hz", type=float, default=4.0)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--streams-per-channel", type=int, default=1)
    p.add_argument("--quotes", action="store_true", help="clients ask for quotes too")
    p.add_argument("--quotes-per-expiry", type=int, default=40)
    p.add_argument("--aligned", action="store_true", help="all surfaces publish together")
    p.add_argument("--min-interval-ms", type=int, default=0, help="clients' min_interval_ms")
    p.add_argument("--only", choices=["volstream", "naive"])
    # internal roles
    p.add_argument("--role", choices=["bench", "server", "clients"], default="bench")
    p.add_argument("--variant", choices=["volstream", "naive"], default="volstream")
    p.add_argument("--nats")
    p.add_argument("--port-file", type=Path)
    p.add_argument("--target")
    p.add_argument("--streams", type=int, default=1)
    args = p.parse_args(argv)
    if args.role == "server":
        asyncio.run(server_main(args.variant, args.nats, args.port_file))
    elif args.role == "clients":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                clients_main(
                    args.target,
                    args.streams,
                    args.streams_per_channel,
                    not args.quotes,
                    args.min_interval_ms,
                )
            )
    else:
        if args.surfaces > len(VENUES) * len(CURRENCIES):
            p.error(f"--surfaces: at most {len(VENUES) * len(CURRENCIES)}")
        asyncio.run(bench_main(args))


if __name__ == "__main__":
    main()
