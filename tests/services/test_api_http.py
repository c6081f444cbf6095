"""The API process serves HTTP beside gRPC: /metrics, /healthz, /readyz and an index."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

import aiohttp
import psutil

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
            async with http.get(f"{base}/index.txt") as resp:
                assert f"SurfaceService on :{grpc_port}" in await resp.text()
            async with http.get(f"{base}/") as resp:  # the dashboard (svc_api/dashboard)
                assert resp.status == 200 and "/dashboard/app.js" in await resp.text()
            async with http.get(f"{base}/api/dashboard/surface?venue=nowhere&currency=BTC") as r:
                assert r.status == 400 and "unknown venue" in (await r.json())["error"]
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
                assert "process_resident_memory_bytes" in text
                assert 'dashboard_rejected_total{service="api",status="400"} 1.0' in text
        # By default both servers listen on loopback only, and there is nothing to warn of.
        listening = [
            (c.laddr.port, c.laddr.ip)
            for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port in (http_port, grpc_port)
        ]
        assert {port for port, _ in listening} == {http_port, grpc_port}
        # gRPC's IPv4 socket may show as IPv4-mapped IPv6 (::ffff:127.0.0.1).
        assert all(_unmapped(ip).is_loopback for _, ip in listening), listening
        assert api_service.exposure_warning(cfg) is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_listening_beyond_loopback_without_a_token_is_warned_of() -> None:
    exposed = Config(bind_host="0.0.0.0")
    warning = api_service.exposure_warning(exposed)
    assert warning is not None and "0.0.0.0" in warning and "--api-token" in warning
    assert api_service.exposure_warning(Config(bind_host="0.0.0.0", api_token="t")) is None
    assert api_service.exposure_warning(Config(bind_host="::1")) is None


def _unmapped(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
