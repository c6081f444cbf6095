"""The API process serves HTTP beside gRPC: /metrics, /healthz, /readyz and an index."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from svc_api import service as api_service
from volstream.bus.embedded import EmbeddedNats, free_port
from volstream.config import Config


async def test_api_serves_metrics_and_health_over_http(nats_server: EmbeddedNats) -> None:
    http_port, grpc_port = free_port(), free_port()
    cfg = Config(nats_url=nats_server.url, grpc_port=grpc_port, http_port=http_port)
    task = asyncio.create_task(api_service.run(cfg))
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{http_port}"
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/") as resp:
                assert f"SurfaceService on :{grpc_port}" in await resp.text()
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert "process_resident_memory_bytes" in await resp.text()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
