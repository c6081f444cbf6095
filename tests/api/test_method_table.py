"""The API serves exactly the RPCs of surface_service.proto, as the generated code would.

svc_api.server.method_handlers derives its table from the service descriptor (rather than
calling add_SurfaceServiceServicer_to_server) only so that responses may be pre-serialised
bytes; these tests hold it equal to the generated registration in everything else.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from google.protobuf.message_factory import GetMessageClass

from svc_api.config import ApiConfig
from svc_api.health import SERVICE_NAME
from svc_api.hub import SurfaceHub
from svc_api.server import SURFACE_SERVICE, SurfaceServicer, method_handlers
from tests.api.conftest import StartApi, make_surface
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc
from volstream.wire import length_delimited_field


class _RecordingServer:
    """Stands in for a grpc server: keeps what the generated registration adds."""

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered[service] = handlers


def _servicer() -> SurfaceServicer:
    return SurfaceServicer(ApiConfig(), SurfaceHub(), None)


def test_the_table_is_the_generated_registration_but_for_pre_serialised_responses() -> None:
    servicer = _servicer()
    recorded = _RecordingServer()
    api_grpc.add_SurfaceServiceServicer_to_server(servicer, recorded)
    generated = recorded.registered[SURFACE_SERVICE.full_name]
    ours = method_handlers(servicer)

    assert SURFACE_SERVICE.full_name == SERVICE_NAME
    assert set(ours) == set(generated) == {m.name for m in SURFACE_SERVICE.methods}
    for name, handler in ours.items():
        theirs = generated[name]
        assert (handler.request_streaming, handler.response_streaming) == (
            theirs.request_streaming,
            theirs.response_streaming,
        ), name
        # Decodes as the generated one; a request that does not decode is answered
        # INVALID_ARGUMENT by the wrapped method (tests/api/test_request_edges.py).
        wire = b"\xfa\x3e\x01x"  # an unknown field 999 (kept, compared): any request has none
        request_class = GetMessageClass(SURFACE_SERVICE.methods_by_name[name].input_type)
        decode = handler.request_deserializer
        assert decode is not None and theirs.request_deserializer is not None
        assert decode(wire) == request_class.FromString(wire), name
        assert decode(wire) == theirs.request_deserializer(wire), name
        behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
        expected = getattr(servicer, name)
        assert getattr(behaviour, "__wrapped__", None) == expected, name
        # A response message serialises as the generated serializer does; bytes pass on.
        response_class = GetMessageClass(SURFACE_SERVICE.methods_by_name[name].output_type)
        serialize, their_serialize = handler.response_serializer, theirs.response_serializer
        assert serialize is not None
        response = response_class()
        assert serialize(response) == their_serialize(response)
        frame = length_delimited_field(1, make_surface("deribit", "BTC", 1).SerializeToString())
        assert serialize(frame) is frame


async def test_every_rpc_of_the_proto_is_served(start_api: StartApi) -> None:
    api = await start_api(nats_url=None)
    api.hub.apply_surface(make_surface("deribit", "BTC", 1))
    requests: dict[str, Any] = {
        "GetSurface": api_pb.GetSurfaceRequest(venue="deribit", currency="BTC"),
        "GetSmile": api_pb.GetSmileRequest(venue="deribit", currency="BTC", expiry="2030-01-04"),
    }
    served: dict[str, grpc.StatusCode] = {}
    async with grpc.aio.insecure_channel(api.address) as channel:
        for method in SURFACE_SERVICE.methods:
            path = f"/{SURFACE_SERVICE.full_name}/{method.name}"
            request = requests.get(method.name, GetMessageClass(method.input_type)())
            response_class = GetMessageClass(method.output_type)
            codecs: dict[str, Any] = {
                "request_serializer": type(request).SerializeToString,
                "response_deserializer": response_class.FromString,
            }
            call: Any
            if method.server_streaming:
                call = channel.unary_stream(path, **codecs)(request, timeout=10)
                reply = call.read()
            else:
                call = reply = channel.unary_unary(path, **codecs)(request, timeout=10)
            try:
                assert isinstance(await reply, response_class), method.name
                served[method.name] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                served[method.name] = exc.code()
            finally:
                call.cancel()
    assert set(served) == {m.name for m in SURFACE_SERVICE.methods}
    assert grpc.StatusCode.UNIMPLEMENTED not in served.values(), served
    # Without NATS there is no history; everything else answers (an empty history request
    # names no venue).
    assert served == {
        "ListSurfaces": grpc.StatusCode.OK,
        "GetSurface": grpc.StatusCode.OK,
        "GetSmile": grpc.StatusCode.OK,
        "GetSurfaceAt": grpc.StatusCode.INVALID_ARGUMENT,
        "StreamSurfaces": grpc.StatusCode.OK,
        "GetMetricHistory": grpc.StatusCode.INVALID_ARGUMENT,
    }
