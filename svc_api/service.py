"""API service entrypoint: the gRPC SurfaceService fed from the SURFACE and IV streams."""

from __future__ import annotations

import asyncio
import logging
import signal

from svc_api.config import ApiConfig
from svc_api.server import serve
from volstream.config import Config
from volstream.runtime import provision_streams

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


async def run(cfg: Config) -> None:
    if cfg.nats_url is None:
        raise ValueError("no NATS URL: pass --nats or set VOLSTREAM_NATS_URL")
    await provision_streams(cfg.nats_url, cfg)
    handle = await serve(api_config(cfg), cfg.nats_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("gRPC SurfaceService on :%d", handle.port)
    await stop.wait()
    await handle.stop()
