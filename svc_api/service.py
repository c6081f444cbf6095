"""API service entrypoint: the gRPC SurfaceService fed from the SURFACE and IV streams, plus
HTTP on cfg.http_port (and cfg.metrics_port when set): /metrics, /healthz, /readyz and an
index page (the dashboard will live here)."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from svc_api.config import ApiConfig
from svc_api.server import ApiHandle, serve
from volstream.config import Config
from volstream.runtime import provision_streams
from volstream.telemetry import setup_telemetry

log = logging.getLogger("svc_api")


def api_config(cfg: Config) -> ApiConfig:
    expected = tuple((p.venue, p.currency) for p in cfg.owned_partitions())
    return ApiConfig(
        port=cfg.grpc_port,
        stale_after_ms=cfg.api_stale_ms,
        token=cfg.api_token,
        tls_cert=cfg.tls_cert,
        tls_key=cfg.tls_key,
        namespace=cfg.namespace,
        expected_surfaces=expected,
    )


async def http_app(handle: ApiHandle, cfg: Config) -> web.AppRunner:
    metrics = setup_telemetry("api", None)

    async def index(_: web.Request) -> web.Response:
        known = handle.hub.store.keys()  # a method of the store, not a dict view
        surfaces = ", ".join(sorted(str(key) for key in known))
        return web.Response(
            text=f"volstream API: gRPC volstream.v1.SurfaceService on :{handle.port}\n"
            f"surfaces: {surfaces or 'none yet'}\n/metrics /healthz /readyz\n"
        )

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready = handle.feed is None or bool(handle.feed.nc.is_connected)
        return web.Response(
            text="ready\n" if ready else "not ready\n", status=200 if ready else 503
        )

    app = web.Application()
    app.add_routes(
        [
            web.get("/", index),
            web.get("/metrics", prometheus),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
        ]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for port in sorted({p for p in (cfg.http_port, cfg.metrics_port) if p}):
        await web.TCPSite(runner, "0.0.0.0", port).start()
        log.info("HTTP (metrics, health) on :%d", port)
    return runner


async def run(cfg: Config) -> None:
    if cfg.nats_url is None:
        raise ValueError("no NATS URL: pass --nats or set VOLSTREAM_NATS_URL")
    await provision_streams(cfg.nats_url, cfg)
    handle = await serve(api_config(cfg), cfg.nats_url)
    http = await http_app(handle, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("gRPC SurfaceService on :%d", handle.port)
    try:
        await stop.wait()
    finally:  # also when cancelled: end streams cleanly, close the ports
        await handle.stop()
        await http.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
