"""API service entrypoint: the gRPC SurfaceService fed from the SURFACE and IV streams, on the
shared service runtime (its NATS connection, streams, signals and HTTP), plus HTTP on
cfg.http_port (and cfg.metrics_port when set): /metrics, /healthz, /readyz and an index page
(/index.txt) and the dashboard (/, svc_api/dashboard)."""

from __future__ import annotations

import logging

from aiohttp import web

from svc_api.archive import ArchiveReader
from svc_api.config import ApiConfig
from svc_api.dashboard.app import Dashboard
from svc_api.server import ApiHandle, serve
from volstream.config import Config, is_loopback
from volstream.runtime import service_context
from volstream.telemetry import Metrics

log = logging.getLogger("svc_api")

SERVICE = "api"


def api_config(cfg: Config) -> ApiConfig:
    expected = tuple((p.venue, p.currency) for p in cfg.owned_partitions())
    return ApiConfig(
        host=cfg.bind_host,
        port=cfg.grpc_port,
        stale_after_ms=cfg.api_stale_ms,
        token=cfg.api_token,
        tls_cert=cfg.tls_cert,
        tls_key=cfg.tls_key,
        namespace=cfg.namespace,
        expected_surfaces=expected,
        archive_dir=cfg.archive_root(),
    )


def pages(handle: ApiHandle, cfg: Config, metrics: Metrics | None = None) -> list[web.RouteDef]:
    """The API's own HTTP pages, beside the runtime's /metrics, /healthz and /readyz: the
    dashboard (svc_api/dashboard, at /) and a plain-text index at /index.txt."""

    async def index(_: web.Request) -> web.Response:
        known = handle.hub.store.keys()  # a method of the store, not a dict view
        surfaces = ", ".join(sorted(str(key) for key in known))
        return web.Response(
            text=f"volstream API: gRPC volstream.v1.SurfaceService on :{handle.port}\n"
            f"surfaces: {surfaces or 'none yet'}\n/metrics /healthz /readyz\n"
        )

    return [web.get("/index.txt", index), *dashboard_routes(handle, cfg, metrics)]


def dashboard_routes(
    handle: ApiHandle, cfg: Config, metrics: Metrics | None = None
) -> list[web.RouteDef]:
    """The dashboard's page, files, JSON and push routes, fed by the API's own hub."""
    servicer = handle.servicer
    dashboard = Dashboard(
        handle.hub,
        history=servicer.history,
        archive=servicer.archive,
        known_venues=servicer.known_venues,
        stale_after_ns=servicer.stale_after_ns,
        token=cfg.api_token,
        namespace=cfg.namespace,
        metrics=metrics,
    )
    return dashboard.routes()


async def run(cfg: Config) -> None:
    # HTTP starts once gRPC serves, so that every page has what it shows.
    async with service_context(cfg, SERVICE, http=False) as ctx:
        config = api_config(cfg)
        damaged = ctx.metrics.counter(
            "api_archive_damaged_files", "archive files found damaged and skipped"
        )
        archive = (
            ArchiveReader(config.archive_dir, on_damaged=lambda _path, _why: damaged.add(1))
            if config.archive_dir is not None
            else None
        )
        handle = await serve(config, nc=ctx.nc, archive=archive)
        ctx.on_close(handle.stop)  # end streams cleanly and close the port, before NATS
        await ctx.serve_http([cfg.http_port, cfg.metrics_port], pages(handle, cfg, ctx.metrics))
        log.info("gRPC SurfaceService on %s:%d", cfg.bind_host, handle.port)
        warning = exposure_warning(cfg)
        if warning:
            log.warning(warning)
        await ctx.wait_stopped()


def exposure_warning(cfg: Config) -> str | None:
    """What to tell an operator whose API listens beyond loopback with no token."""
    if is_loopback(cfg.bind_host) or cfg.api_token:
        return None
    return (
        f"gRPC and HTTP listen on {cfg.bind_host}, beyond loopback, with no API token: anyone "
        "who reaches this address can read every surface (set --api-token, or --bind 127.0.0.1)"
    )
