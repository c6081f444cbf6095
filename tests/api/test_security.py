"""Token authentication and TLS on the real gRPC port."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from svc_api.server import client_address
from tests.api.conftest import Bus, StartApi, make_surface
from volstream.client import SurfaceClient
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc


def self_signed_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A P-256 certificate for localhost/127.0.0.1 made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl CLI is needed to make the test certificate")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_token_auth(bus: Bus, start_api: StartApi) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api(token="s3cret-token")
    async with grpc.aio.insecure_channel(api.address) as channel:
        stub = api_grpc.SurfaceServiceStub(channel)
        request = api_pb.GetSurfaceRequest(venue="deribit", currency="BTC")

        async def status_with(metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
            try:
                await stub.GetSurface(request, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""

        code, msg = await status_with(())
        assert code == grpc.StatusCode.UNAUTHENTICATED and "missing 'authorization" in msg
        code, msg = await status_with((("authorization", "Bearer wrong"),))
        assert code == grpc.StatusCode.UNAUTHENTICATED and msg == "invalid token"
        code, msg = await status_with((("authorization", "Basic s3cret-token"),))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "'Bearer <token>'" in msg
        code, _ = await status_with((("authorization", "Bearer s3cret-token"),))
        assert code == grpc.StatusCode.OK

        stream = stub.StreamSurfaces(api_pb.StreamSurfacesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # Probes need no secret.
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    def with_client() -> tuple[int, grpc.StatusCode]:
        with SurfaceClient(api.address, token="s3cret-token") as good:
            revision = good.get_surface("deribit", "BTC").revision
        with SurfaceClient(api.address, token="nope") as bad:
            try:
                bad.list_surfaces()
            except grpc.RpcError as exc:
                return revision, exc.code()
        return revision, grpc.StatusCode.OK

    assert await asyncio.to_thread(with_client) == (1, grpc.StatusCode.UNAUTHENTICATED)


async def test_tls(bus: Bus, start_api: StartApi, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path, "server")
    other_cert, _ = self_signed_certificate(tmp_path, "other")
    await bus.publish_surface(make_surface("okx", "ETH", 3))
    api = await start_api(tls_cert=cert, tls_key=key, token="t")
    target = f"localhost:{api.port}"

    def calls() -> tuple[list[str], grpc.StatusCode, grpc.StatusCode]:
        with SurfaceClient(
            target, tls=True, root_certificates=cert.read_bytes(), token="t", timeout_s=5
        ) as client:
            listed = [f"{s.venue}/{s.currency}" for s in client.list_surfaces()]
        with SurfaceClient(target, token="t", timeout_s=2) as plaintext:
            try:
                plaintext.list_surfaces()
                plain_code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                plain_code = exc.code()
        with SurfaceClient(
            target, tls=True, root_certificates=other_cert.read_bytes(), token="t", timeout_s=2
        ) as untrusted:
            try:
                untrusted.list_surfaces()
                untrusted_code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                untrusted_code = exc.code()
        return listed, plain_code, untrusted_code

    listed, plain_code, untrusted_code = await asyncio.to_thread(calls)
    assert listed == ["okx/ETH"]
    assert plain_code == grpc.StatusCode.UNAVAILABLE
    assert untrusted_code == grpc.StatusCode.UNAVAILABLE


async def test_a_flood_of_streams_from_one_client_is_refused_past_its_cap(
    bus: Bus, start_api: StartApi
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api(max_streams_per_client=3)
    async with grpc.aio.insecure_channel(api.address) as channel:
        stub = api_grpc.SurfaceServiceStub(channel)
        calls = [stub.StreamSurfaces(api_pb.StreamSurfacesRequest()) for _ in range(3)]
        for call in calls:
            assert (await call.read()).is_snapshot  # each open: the first message is the snapshot
        flood = stub.StreamSurfaces(api_pb.StreamSurfacesRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await flood.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "127.0.0.1 already has 3 open streams" in (refused.value.details() or "")
        # Closing one frees its place; the server's count follows.
        calls[0].cancel()
        for _ in range(100):
            if api.servicer.streams.per_client.get("127.0.0.1") == 2:
                break
            await asyncio.sleep(0.05)
        again = stub.StreamSurfaces(api_pb.StreamSurfacesRequest())
        assert (await again.read()).is_snapshot
        for call in (*calls[1:], again):
            call.cancel()


def test_client_address_is_the_host_of_the_peer() -> None:
    assert client_address("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert client_address("ipv6:[::1]:5000") == "::1"
    assert client_address("unix:/tmp/s") == "unix:/tmp/s"
