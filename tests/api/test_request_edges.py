"""Hostile requests on the real gRPC port: an oversized request, bytes that are not the
request message, valid messages with unusable values; each gets a status code and a message,
never a hang or a crash of the server. And the token comparison is constant-time."""

from __future__ import annotations

import hmac

import grpc
import grpc.aio
import pytest

from svc_api import auth
from tests.api.conftest import Bus, StartApi, make_surface
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc

MIB = 1024 * 1024
GET_SURFACE = "/volstream.v1.SurfaceService/GetSurface"
STREAM_SURFACES = "/volstream.v1.SurfaceService/StreamSurfaces"


def _raw(data: bytes) -> bytes:
    return data


async def test_an_oversized_request_is_refused_with_resource_exhausted(
    bus: Bus, start_api: StartApi
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api(max_message_bytes=4 * MIB)
    async with grpc.aio.insecure_channel(api.address) as channel:
        stub = api_grpc.SurfaceServiceStub(channel)
        huge = api_pb.GetSurfaceRequest(venue="deribit" + "x" * (5 * MIB), currency="BTC")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSurface(huge, timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (err.value.details() or "")
        # The server is unharmed: the next call is answered.
        reply = await stub.GetSurface(api_pb.GetSurfaceRequest(venue="deribit", currency="BTC"))
        assert reply.surface.venue == "deribit"


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # a truncated varint
        b"\x0a\x05abc",  # a string field shorter than its length
        b"\x0a\x02\xc3\x28",  # a string field with invalid UTF-8
        b"\x08" + b"\xff" * 11,  # a varint longer than 10 bytes
    ],
)
async def test_bytes_that_are_not_the_request_get_a_status_and_a_message(
    bus: Bus, start_api: StartApi, payload: bytes
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api()
    async with grpc.aio.insecure_channel(api.address) as channel:
        codecs = {"request_serializer": _raw, "response_deserializer": _raw}
        unary = channel.unary_unary(GET_SURFACE, **codecs)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await unary(payload, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("malformed request: Error parsing message")
        stream = channel.unary_stream(STREAM_SURFACES, **codecs)(payload, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("malformed request: Error parsing message")
        stub = api_grpc.SurfaceServiceStub(channel)
        reply = await stub.GetSurface(api_pb.GetSurfaceRequest(venue="deribit", currency="BTC"))
        assert reply.surface.venue == "deribit"


@pytest.mark.parametrize(
    "request_",
    [
        api_pb.GetSurfaceRequest(venue="kraken", currency="BTC"),
        api_pb.GetSurfaceRequest(venue="deribit", currency="B.T>C"),
        api_pb.GetSurfaceRequest(venue="\u202e\x00", currency="\ud7ff"),
        api_pb.GetSurfaceRequest(venue="", currency=""),
    ],
    ids=["unknown venue", "wildcards", "control characters", "empty"],
)
async def test_unusable_values_get_a_status_and_a_message(
    bus: Bus, start_api: StartApi, request_: api_pb.GetSurfaceRequest
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api()
    async with grpc.aio.insecure_channel(api.address) as channel:
        stub = api_grpc.SurfaceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetSurface(request_, timeout=10)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        assert err.value.details()


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_authorization compares with hmac.compare_digest (time independent of where
    the strings differ), on bytes so that any token text works."""
    calls: list[tuple[object, object]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # svc_api.auth calls hmac.compare_digest
    token = "s3cret-tökén"
    assert auth.check_authorization((("authorization", f"Bearer {token}"),), token) is None
    assert auth.check_authorization((("authorization", "Bearer s3cret-x"),), token) == (
        "invalid token"
    )
    assert calls == [(token.encode(), token.encode()), (b"s3cret-x", token.encode())]
