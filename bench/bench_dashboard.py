"""Dashboards beside gRPC: does the push to browsers cost the gRPC streams anything?

    .venv/bin/python -m bench.bench_dashboard [--clients 1000] [--dashboards 50]
        [--duration 15] [--repeat 1] [--surfaces 8] [--hz 4] [--client-procs 2]

One API process (gRPC + the dashboard's HTTP, as `volstream svc api` serves them) fed from an
embedded nats-server; bench_api's publisher and gRPC client processes. Two runs side by side:
- "gRPC only": `--clients` StreamSurfaces streams;
- "gRPC + dashboards": the same, plus `--dashboards` server-sent-event connections (the
  browser's push channel, each following one surface, reading everything) and one stalled
  connection that never reads (when the server drops it, it connects again and stalls again).
Figures: gRPC delivery latency p50/p99/max (publish -> client, same clock), dashboard event
latency, server CPU, and server RSS at the start of the window, its max, its end and its
slope (MB per minute, least squares over the window): a stalled browser must leave it flat.
`--reference-tree DIR` adds a third run per repetition whose API server is another
checkout's (the push code before and after, side by side).

    .venv/bin/python -m bench.bench_dashboard --interleave [--windows 24] [--window 10]
        [--reference-tree DIR]

On a shared, loaded machine a whole run's p99 moves by 2-5x between runs of the same code,
far more than the 10% in question. --interleave keeps ONE server and its 1,000 gRPC streams
and switches the 50 dashboards (and the stalled one) on and off in alternate windows (ABBA:
a drift weighs on both sides alike), leaving out the first --guard seconds after a switch;
the gRPC clients count latencies per second of publish time, so the on- and off-seconds are
pooled separately: the ratio of their p99s, over all windows and per ABBA block.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_api import (
    build_surface,
    partitions,
    print_rows,
    publish_loop,
    stop_processes,
)


def progress(text: str) -> None:
    print(f"[bench_dashboard] {text}", file=sys.stderr, flush=True)


# server ------------------------------------------------------------------------------------
async def server_main(nats_url: str, port_file: Path) -> None:
    from aiohttp import web

    from svc_api.config import ApiConfig
    from svc_api.dashboard.app import Dashboard
    from svc_api.server import serve
    from volstream.bus.embedded import free_port

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    handle = await serve(
        ApiConfig(host="127.0.0.1", port=0, max_concurrent_streams=100_000),
        nats_url,
        follow_iv=False,
    )
    dashboard = Dashboard(
        handle.hub,
        history=handle.servicer.history,
        known_venues=handle.servicer.known_venues,
        stale_after_ns=handle.servicer.stale_after_ns,
    )
    app = web.Application()
    app.add_routes(dashboard.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    http_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    await asyncio.to_thread(port_file.write_text, f"{handle.port} {http_port}")
    await stop.wait()
    progress(f"server: push {dashboard.push}")
    await handle.stop(grace_s=0.5)
    dashboard.close()
    await runner.cleanup()


# dashboards ----------------------------------------------------------------------------------
async def dashboards_main(http_port: int, n: int, keys: list[tuple[str, str]]) -> None:
    """n reading SSE connections + 1 stalled; READY, then START/STOP like bench_api's clients."""
    import aiohttp

    recording = False
    latencies_us: list[int] = []
    counters = {"events": 0, "surfaces": 0, "errors": 0, "stalled_reconnects": 0}
    connected = 0
    all_connected = asyncio.Event()
    base = f"http://127.0.0.1:{http_port}/api/dashboard/events"

    async def reader(i: int, http: aiohttp.ClientSession) -> None:
        nonlocal connected
        venue, currency = keys[i % len(keys)]
        async with http.get(f"{base}?venue={venue}&currency={currency}") as resp:
            connected += 1
            if connected == n:
                all_connected.set()
            event = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and recording:
                    counters["events"] += 1
                    if event == "surface":
                        # A browser parses it; here only the publish time matters, and a full
                        # parse per event would load the 2 shared cores the gRPC side needs.
                        counters["surfaces"] += 1
                        published = int(PUBLISH_TIME.search(line)[1])  # type: ignore[index]
                        latencies_us.append((time.time_ns() - published) // 1000)

    async def stalled() -> None:
        """Ask for the stream, never read; when the server drops it, do it again."""
        while True:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, ("127.0.0.1", http_port))
            await loop.sock_sendall(
                sock,
                b"GET /api/dashboard/events?venue=%s&currency=%s HTTP/1.1\r\nHost: x\r\n\r\n"
                % (keys[0][0].encode(), keys[0][1].encode()),
            )
            # Never read; wait until the server drops the connection.
            while not is_closed(sock):  # noqa: ASYNC110 (kernel socket state: no event to await)
                await asyncio.sleep(0.5)
            sock.close()
            counters["stalled_reconnects"] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        tasks = [asyncio.create_task(reader(i, http)) for i in range(n)]
        stall = asyncio.create_task(stalled())
        if n:
            await asyncio.wait_for(all_connected.wait(), 60)
        print("READY", flush=True)
        stdin = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
        )
        assert (await stdin.readline()).strip() == b"START"
        recording = True
        cpu0 = time.process_time()
        assert (await stdin.readline()).strip() == b"STOP"
        recording = False
        cpu_s = time.process_time() - cpu0
        for t in [*tasks, stall]:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        counters["errors"] = sum(
            1
            for r in results
            if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)
        )
    print(json.dumps({**counters, "latencies_us": latencies_us, "cpu_s": cpu_s}), flush=True)


PUBLISH_TIME = re.compile(r'"publish_time_ns":(\d+)')


def is_closed(sock: socket.socket) -> bool:
    """Whether the server dropped the connection, without reading what it sent: a reset
    shows as an error on peek, a close as the TCP state (CLOSE_WAIT or CLOSE)."""
    try:
        if sock.recv(1, socket.MSG_PEEK) == b"":
            return True
    except BlockingIOError:
        pass
    except OSError:
        return True
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return True
    return state != 1  # TCP_ESTABLISHED


# orchestration -----------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    dashboards: int
    grpc_ms: list[float] = field(default_factory=list)
    sse_ms: list[float] = field(default_factory=list)
    grpc_surfaces: int = 0
    sse_surfaces: int = 0
    stalled_reconnects: int = 0
    errors: int = 0
    seconds: float = 0.0
    server_cpu_pct: float = 0.0
    dashboards_cpu_pct: float = 0.0  # the process playing the 50 browsers
    rss: list[tuple[float, float]] = field(default_factory=list)

    def rss_slope_mb_per_min(self) -> float:
        if len(self.rss) < 2:
            return math.nan
        n = len(self.rss)
        mt = sum(t for t, _ in self.rss) / n
        mr = sum(r for _, r in self.rss) / n
        var = sum((t - mt) ** 2 for t, _ in self.rss)
        return 60 * sum((t - mt) * (r - mr) for t, r in self.rss) / var if var else math.nan


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    name: str,
    dashboards: int,
    args: argparse.Namespace,
    nats_url: str,
    server_tree: Path | None = None,
) -> Run:
    """One run; the API server from server_tree (another checkout) when given."""
    import nats
    import psutil

    result = Run(name, dashboards)
    port_file = Path(tempfile.mkdtemp(prefix="bench-dash-")) / "ports"
    tree_env = None
    if server_tree is not None:
        tree_env = {**os.environ, "PYTHONPATH": str(server_tree)}
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_dashboard",
        "--role",
        "server",
        "--nats",
        nats_url,
        "--port-file",
        str(port_file),
        *(["--profile-dir", str(args.profile_dir)] if args.profile_dir else []),
        cwd=server_tree,
        env=tree_env,
    )
    procs: list[asyncio.subprocess.Process] = []
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if server.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            await asyncio.sleep(0.05)
        grpc_port, http_port = (int(p) for p in port_file.read_text().split())
        proc = psutil.Process(server.pid)
        js = nc.jetstream()
        keys = partitions(args.surfaces)
        for venue, currency in keys:
            first = build_surface(venue, currency, 0, args.quotes_per_expiry)
            first.header.publish_time_ns = time.time_ns()
            await js.publish(f"surface.{venue}.{currency.lower()}", first.SerializeToString())
        per_proc = [args.clients // args.client_procs] * args.client_procs
        per_proc[0] += args.clients - sum(per_proc)
        grpc_clients = []
        for n in per_proc:
            grpc_clients.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.bench_api",
                    "--role",
                    "clients",
                    "--target",
                    f"127.0.0.1:{grpc_port}",
                    "--streams",
                    str(n),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 28,
                )
            )
        procs.extend(grpc_clients)
        dash = None
        if dashboards:
            dash = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.bench_dashboard",
                "--role",
                "dashboards",
                "--http-port",
                str(http_port),
                "--n",
                str(dashboards),
                "--surfaces",
                str(args.surfaces),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 28,
            )
            procs.append(dash)
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.wait_for(p.stdout.readline(), 180)
            if line.strip() != b"READY":
                raise RuntimeError(f"client process said {line!r}")
        progress(f"{name}: {args.clients} gRPC streams and {dashboards} dashboards connected")
        stop = asyncio.Event()
        published = [0]
        publisher = asyncio.create_task(
            publish_loop(js, keys, args.hz, False, args.quotes_per_expiry, stop, published)
        )
        for p in grpc_clients:
            assert p.stdin is not None
            p.stdin.write(b"GO\n")
        await asyncio.sleep(args.warmup)
        cpu0 = sum(proc.cpu_times()[:2])
        started = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"START\n")
            await p.stdin.drain()
        while (elapsed := time.monotonic() - started) < args.duration:
            result.rss.append((elapsed, proc.memory_info().rss / 2**20))
            await asyncio.sleep(0.5)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"STOP\n")
            await p.stdin.drain()
        result.seconds = time.monotonic() - started
        result.server_cpu_pct = 100 * (sum(proc.cpu_times()[:2]) - cpu0) / result.seconds
        result.rss.append((result.seconds, proc.memory_info().rss / 2**20))
        stop.set()
        await publisher
        for p in grpc_clients:
            assert p.stdout is not None
            report = json.loads(await asyncio.wait_for(p.stdout.readline(), 120))
            result.grpc_ms.extend(us / 1000 for us in report["latencies_us"])
            result.grpc_surfaces += report["surfaces"]
            result.errors += report["errors"]
            await p.wait()
        if dash is not None:
            assert dash.stdout is not None
            report = json.loads(await asyncio.wait_for(dash.stdout.readline(), 120))
            result.sse_ms.extend(us / 1000 for us in report["latencies_us"])
            result.sse_surfaces = report["surfaces"]
            result.stalled_reconnects = report["stalled_reconnects"]
            result.dashboards_cpu_pct = 100 * report["cpu_s"] / result.seconds
            result.errors += report["errors"]
            await dash.wait()
    finally:
        await stop_processes(procs, server)
        await nc.close()
    return result


# interleaved: one server, dashboards switched on and off in alternate windows ---------------
async def windowed_clients_main(target: str, streams: int, t0_ns: int) -> None:
    """StreamSurfaces streams (one channel each, without quotes, as bench_api's clients) that
    count latencies per second of publish time: the orchestrator knows which seconds had
    dashboards connected. READY once every stream has its snapshot; STOP: report."""
    import grpc.aio

    from volstream.v1 import surface_service_pb2 as api_pb
    from volstream.v1 import surface_service_pb2_grpc as api_grpc

    # second of publish time -> latency ms -> count
    seconds: dict[int, dict[int, int]] = {}
    errors = 0
    snapshots = 0
    all_snapshots = asyncio.Event()
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(streams)]

    async def one(channel: grpc.aio.Channel) -> None:
        nonlocal snapshots, errors
        call = api_grpc.SurfaceServiceStub(channel).StreamSurfaces(
            api_pb.StreamSurfacesRequest(omit_quotes=True)
        )
        try:
            async for message in call:
                if message.is_snapshot:
                    snapshots += 1
                    if snapshots == streams:
                        all_snapshots.set()
                    continue
                now = time.time_ns()
                for surface in message.surfaces:
                    published = surface.header.publish_time_ns
                    hist = seconds.setdefault((published - t0_ns) // 1_000_000_000, {})
                    ms = (now - published) // 1_000_000
                    hist[ms] = hist.get(ms, 0) + 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors += 1

    tasks = []
    for i, channel in enumerate(channels):
        tasks.append(asyncio.create_task(one(channel)))
        if i % 200 == 199:
            await asyncio.sleep(0.1)
    await asyncio.wait_for(all_snapshots.wait(), 180)
    print("READY", flush=True)
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
    )
    assert (await stdin.readline()).strip() == b"STOP"
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"seconds": seconds, "errors": errors}), flush=True)


async def toggled_dashboards_main(http_port: int, n: int, keys: list[tuple[str, str]]) -> None:
    """ON: n reading SSE connections and one stalled, OK once all are connected; OFF: all
    closed, OK; STOP: exit. Reads everything, parses only the publish time."""
    import aiohttp

    base = f"http://127.0.0.1:{http_port}/api/dashboard/events"
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        tasks: list[asyncio.Task[None]] = []
        while (command := (await stdin.readline()).strip()) != b"STOP":
            if command == b"ON":
                connected = asyncio.Event()
                count = [0]

                async def reader(i: int, count: list[int], connected: asyncio.Event) -> None:
                    venue, currency = keys[i % len(keys)]
                    async with http.get(f"{base}?venue={venue}&currency={currency}") as resp:
                        count[0] += 1
                        if count[0] == n:
                            connected.set()
                        async for raw in resp.content:
                            if raw.startswith(b"data: ") and b'"publish_time_ns":' in raw:
                                PUBLISH_TIME.search(raw.decode())

                tasks = [asyncio.create_task(reader(i, count, connected)) for i in range(n)]
                tasks.append(asyncio.create_task(stalled_connection(http_port, keys[0])))
                await asyncio.wait_for(connected.wait(), 60)
            elif command == b"OFF":
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                tasks = []
            print("OK", flush=True)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def stalled_connection(http_port: int, key: tuple[str, str]) -> None:
    """Asks for the stream and never reads; when the server drops it, asks again."""
    loop = asyncio.get_running_loop()
    while True:
        sock = socket.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", http_port))
            await loop.sock_sendall(
                sock,
                b"GET /api/dashboard/events?venue=%s&currency=%s HTTP/1.1\r\nHost: x\r\n\r\n"
                % (key[0].encode(), key[1].encode()),
            )
            while not is_closed(sock):  # noqa: ASYNC110 (kernel socket state: no event to await)
                await asyncio.sleep(0.5)
        finally:
            sock.close()


def percentile(hist: dict[int, int], q: float) -> float:
    total = sum(hist.values())
    if not total:
        return math.nan
    rank, seen = q * total, 0
    for ms in sorted(hist):
        seen += hist[ms]
        if seen > rank:
            return float(ms)
    return float(max(hist))


def median_p99(per_second: dict[int, dict[int, int]], seconds: set[int]) -> float:
    p99s = sorted(percentile(per_second[s], 0.99) for s in seconds if per_second.get(s))
    return p99s[len(p99s) // 2] if p99s else math.nan


def merge(hists: Sequence[dict[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for hist in hists:
        for ms, n in hist.items():
            out[ms] = out.get(ms, 0) + n
    return out


async def interleaved_main(args: argparse.Namespace) -> None:
    """Dashboards on in windows 1, 2, 5, 6, 9, 10, ... (ABBA: a drift in the machine's load
    weighs on both sides alike), off in the others; the first --guard seconds of each window
    (50 browsers connecting) are left out. Figures: p99 over all on-seconds vs all
    off-seconds, and per ABBA block."""
    import nats
    import psutil

    from volstream.bus.embedded import EmbeddedNats

    window_s, windows, guard_s = args.window, args.windows, args.guard
    with EmbeddedNats() as server_nats:
        nc = await nats.connect(server_nats.url)
        js = nc.jetstream()
        await js.add_stream(
            name="SURFACE", subjects=["surface.>"], allow_direct=True, max_msgs_per_subject=1000
        )
        port_file = Path(tempfile.mkdtemp(prefix="bench-dash-")) / "ports"
        me = [sys.executable, "-m", "bench.bench_dashboard"]
        tree = args.reference_tree
        server = await asyncio.create_subprocess_exec(
            *me,
            "--role",
            "server",
            "--nats",
            server_nats.url,
            "--port-file",
            str(port_file),
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)} if tree is not None else None,
        )
        if tree is not None:
            progress(f"the API server runs {tree}'s code")
        procs: list[asyncio.subprocess.Process] = []
        try:
            deadline = time.monotonic() + 30
            while not port_file.exists() or not port_file.read_text():
                if server.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                await asyncio.sleep(0.05)
            grpc_port, http_port = (int(p) for p in port_file.read_text().split())
            keys = partitions(args.surfaces)
            for venue, currency in keys:
                first = build_surface(venue, currency, 0, args.quotes_per_expiry)
                first.header.publish_time_ns = time.time_ns()
                await js.publish(f"surface.{venue}.{currency.lower()}", first.SerializeToString())
            t0_ns = time.time_ns()
            per_proc = [args.clients // args.client_procs] * args.client_procs
            per_proc[0] += args.clients - sum(per_proc)
            clients = [
                await asyncio.create_subprocess_exec(
                    *me,
                    "--role",
                    "windowed-clients",
                    "--target",
                    f"127.0.0.1:{grpc_port}",
                    "--n",
                    str(n),
                    "--t0-ns",
                    str(t0_ns),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 28,
                )
                for n in per_proc
            ]
            procs.extend(clients)
            dash = await asyncio.create_subprocess_exec(
                *me,
                "--role",
                "toggled-dashboards",
                "--http-port",
                str(http_port),
                "--n",
                str(args.dashboards),
                "--surfaces",
                str(args.surfaces),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            procs.append(dash)
            for c in clients:
                assert c.stdout is not None
                line = await asyncio.wait_for(c.stdout.readline(), 240)
                if line.strip() != b"READY":
                    raise RuntimeError(f"client process said {line!r}")

            async def command(text: bytes) -> None:
                assert dash.stdin is not None and dash.stdout is not None
                dash.stdin.write(text + b"\n")
                await dash.stdin.drain()
                assert (await asyncio.wait_for(dash.stdout.readline(), 120)).strip() == b"OK"

            stop = asyncio.Event()
            publisher = asyncio.create_task(
                publish_loop(js, keys, args.hz, False, args.quotes_per_expiry, stop, [0])
            )
            await asyncio.sleep(args.warmup)
            proc = psutil.Process(server.pid)
            start_s = math.ceil((time.time_ns() - t0_ns) / 1e9) + 1
            on_seconds: set[int] = set()
            off_seconds: set[int] = set()
            blocks: list[tuple[list[int], list[int]]] = []
            cpu = {True: 0.0, False: 0.0}
            state = False
            progress(f"{windows} windows of {window_s:.0f}s, dashboards on in ABBA order")
            for k in range(windows):
                on = k % 4 in (1, 2)
                begin_ns = t0_ns + int((start_s + k * window_s) * 1e9)
                await asyncio.sleep(max(0.0, (begin_ns - time.time_ns()) / 1e9))
                if on != state:
                    await command(b"ON" if on else b"OFF")
                    state = on
                cpu0 = sum(proc.cpu_times()[:2])
                span = range(
                    int(start_s + k * window_s + guard_s), int(start_s + (k + 1) * window_s)
                )
                (on_seconds if on else off_seconds).update(span)
                if k % 4 == 0:
                    blocks.append(([], []))
                blocks[-1][0 if on else 1].extend(span)
                end_ns = begin_ns + int(window_s * 1e9)
                await asyncio.sleep(max(0.0, (end_ns - time.time_ns()) / 1e9))
                cpu[on] += sum(proc.cpu_times()[:2]) - cpu0
            stop.set()
            await publisher
            await asyncio.sleep(1.0)  # the last publications delivered
            per_second: dict[int, dict[int, int]] = {}
            errors = 0
            for c in clients:
                assert c.stdin is not None and c.stdout is not None
                c.stdin.write(b"STOP\n")
                await c.stdin.drain()
                report = json.loads(await asyncio.wait_for(c.stdout.readline(), 120))
                errors += report["errors"]
                for second, hist in report["seconds"].items():
                    into = per_second.setdefault(int(second), {})
                    for ms, n in hist.items():
                        into[int(ms)] = into.get(int(ms), 0) + n
            await command(b"OFF")
            assert dash.stdin is not None
            dash.stdin.write(b"STOP\n")
        finally:
            await stop_processes(procs, server)
            await nc.close()

    def pooled(secs: Sequence[int]) -> dict[int, int]:
        return merge([per_second.get(s, {}) for s in secs])

    on_h, off_h = pooled(sorted(on_seconds)), pooled(sorted(off_seconds))
    rows = [
        ("", "dashboards off", f"{args.dashboards} dashboards + 1 stalled on"),
        ("seconds measured", str(len(off_seconds)), str(len(on_seconds))),
        ("gRPC surfaces", f"{sum(off_h.values()):,}", f"{sum(on_h.values()):,}"),
        ("gRPC latency p50 ms", f"{percentile(off_h, 0.5):.0f}", f"{percentile(on_h, 0.5):.0f}"),
        ("gRPC latency p99 ms", f"{percentile(off_h, 0.99):.0f}", f"{percentile(on_h, 0.99):.0f}"),
        # Robust to the few seconds when a loaded machine starves a client process (those
        # seconds' backlog dominates a pooled p99).
        (
            "median of per-second p99 ms",
            f"{median_p99(per_second, off_seconds):.0f}",
            f"{median_p99(per_second, on_seconds):.0f}",
        ),
        (
            "server CPU % of a core",
            f"{100 * cpu[False] / (window_s * (windows - windows // 2)):.0f}",
            f"{100 * cpu[True] / (window_s * (windows // 2)):.0f}",
        ),
        ("errors", str(errors), ""),
    ]
    print_rows(rows)
    ratios = []
    for on_secs, off_secs in blocks:
        a, b = pooled(off_secs), pooled(on_secs)
        if a and b:
            ratios.append(percentile(b, 0.99) / percentile(a, 0.99) - 1)
    total = percentile(on_h, 0.99) / percentile(off_h, 0.99) - 1
    robust = median_p99(per_second, on_seconds) / median_p99(per_second, off_seconds) - 1
    each = ", ".join(f"{100 * r:+.0f}%" for r in ratios)
    median = sorted(ratios)[len(ratios) // 2] if ratios else math.nan
    print(
        f"\ngRPC p99 with dashboards vs without: {100 * total:+.1f}% over all windows; "
        f"per ABBA block {each} (median {100 * median:+.1f}%); median of per-second p99s "
        f"{100 * robust:+.1f}%"
    )


def print_table(runs: Sequence[Run], per_repeat: int = 2) -> None:
    def rss(r: Run) -> str:
        values = [v for _, v in r.rss]
        return f"{values[0]:.0f}/{max(values):.0f}/{values[-1]:.0f}"

    rows: list[tuple[str, ...]] = [
        ("", *(r.name for r in runs)),
        (
            "dashboards (SSE) + stalled",
            *(f"{r.dashboards} + {1 if r.dashboards else 0}" for r in runs),
        ),
        ("measured s", *(f"{r.seconds:.1f}" for r in runs)),
        ("gRPC latency p50 ms", *(f"{pct(r.grpc_ms, 0.5):.1f}" for r in runs)),
        ("gRPC latency p99 ms", *(f"{pct(r.grpc_ms, 0.99):.1f}" for r in runs)),
        ("gRPC latency max ms", *(f"{max(r.grpc_ms, default=math.nan):.1f}" for r in runs)),
        ("gRPC surfaces/s", *(f"{r.grpc_surfaces / r.seconds:,.0f}" for r in runs)),
        ("dashboard latency p50 ms", *(f"{pct(r.sse_ms, 0.5):.1f}" for r in runs)),
        ("dashboard latency p99 ms", *(f"{pct(r.sse_ms, 0.99):.1f}" for r in runs)),
        ("dashboard surfaces/s", *(f"{r.sse_surfaces / r.seconds:,.0f}" for r in runs)),
        ("stalled connection dropped", *(str(r.stalled_reconnects) for r in runs)),
        ("server CPU % of a core", *(f"{r.server_cpu_pct:.0f}" for r in runs)),
        ("browsers' process CPU %", *(f"{r.dashboards_cpu_pct:.0f}" for r in runs)),
        ("server RSS MB start/max/end", *(rss(r) for r in runs)),
        ("server RSS slope MB/min", *(f"{r.rss_slope_mb_per_min():+.2f}" for r in runs)),
        ("errors", *(str(r.errors) for r in runs)),
    ]
    print_rows(rows)
    print()
    for offset, what in ((1, "with dashboards"), (2, "with dashboards, reference code")):
        if offset >= per_repeat:
            break
        ratios = [
            pct(runs[i + offset].grpc_ms, 0.99) / pct(runs[i].grpc_ms, 0.99) - 1
            for i in range(0, len(runs), per_repeat)
            if runs[i].grpc_ms and runs[i + offset].grpc_ms
        ]
        if ratios:
            each = ", ".join(f"{100 * r:+.1f}%" for r in ratios)
            median = sorted(ratios)[len(ratios) // 2]
            print(f"gRPC p99 {what} vs without: {each} (median {100 * median:+.1f}%)")


async def bench_main(args: argparse.Namespace) -> None:
    import nats

    from volstream.bus.embedded import EmbeddedNats

    with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(
            name="SURFACE", subjects=["surface.>"], allow_direct=True, max_msgs_per_subject=1000
        )
        await nc.close()
        print(
            f"{args.clients} gRPC streams, {args.surfaces} surfaces x {args.hz} Hz, "
            f"{args.duration:.0f}s measured, {os.cpu_count()} CPUs\n",
            flush=True,
        )
        # Alternated (A B A B ...): on a shared machine, load drifts between runs.
        runs = []
        for i in range(args.repeat):
            tag = f" #{i + 1}" if args.repeat > 1 else ""
            runs.append(await run(f"gRPC only{tag}", 0, args, server.url))
            runs.append(await run(f"gRPC + dashboards{tag}", args.dashboards, args, server.url))
            if args.reference_tree is not None:
                runs.append(
                    await run(
                        f"+ dashboards, reference{tag}",
                        args.dashboards,
                        args,
                        server.url,
                        args.reference_tree,
                    )
                )
    print_table(runs, 3 if args.reference_tree is not None else 2)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--dashboards", type=int, default=50)
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds (300: 5 min)")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=1, help="alternate the two runs this often")
    p.add_argument("--surfaces", type=int, default=8)
    p.add_argument("--hz", type=float, default=4.0)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--quotes-per-expiry", type=int, default=40)
    p.add_argument(
        "--reference-tree",
        type=Path,
        help="another checkout (e.g. main's): a third run per repetition, its API server with "
        "dashboards, for a side-by-side comparison of the push code",
    )
    p.add_argument(
        "--profile-dir", type=Path, help="run the API server under cProfile, stats written here"
    )
    # internal roles
    p.add_argument(
        "--interleave",
        action="store_true",
        help="one server; dashboards switched on and off in alternate --window s windows",
    )
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--windows", type=int, default=24, help="a multiple of 4 (ABBA blocks)")
    p.add_argument("--guard", type=float, default=2.0, help="s left out after each switch")
    p.add_argument(
        "--role",
        choices=["bench", "server", "dashboards", "windowed-clients", "toggled-dashboards"],
        default="bench",
    )
    p.add_argument("--target")
    p.add_argument("--t0-ns", type=int, default=0)
    p.add_argument("--nats")
    p.add_argument("--port-file", type=Path)
    p.add_argument("--http-port", type=int)
    p.add_argument("--n", type=int, default=0)
    args = p.parse_args(argv)
    if args.role == "server":
        if args.profile_dir is None:
            asyncio.run(server_main(args.nats, args.port_file))
            return
        import cProfile

        with cProfile.Profile() as prof:
            asyncio.run(server_main(args.nats, args.port_file))
        out = args.profile_dir / f"server-{os.getpid()}.prof"
        prof.dump_stats(out)
        progress(f"server profile: {out}")
    elif args.role == "windowed-clients":
        asyncio.run(windowed_clients_main(args.target, args.n, args.t0_ns))
    elif args.role == "toggled-dashboards":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(toggled_dashboards_main(args.http_port, args.n, partitions(args.surfaces)))
    elif args.interleave:
        asyncio.run(interleaved_main(args))
    elif args.role == "dashboards":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(dashboards_main(args.http_port, args.n, partitions(args.surfaces)))
    else:
        asyncio.run(bench_main(args))


if __name__ == "__main__":
    main()
