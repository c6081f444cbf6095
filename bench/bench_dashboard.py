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
    p.add_argument("--role", choices=["bench", "server", "dashboards"], default="bench")
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
    elif args.role == "dashboards":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(dashboards_main(args.http_port, args.n, partitions(args.surfaces)))
    else:
        asyncio.run(bench_main(args))


if __name__ == "__main__":
    main()
