"""Bearer-token authentication for the gRPC API (off unless a token is configured).

Clients send `authorization: Bearer <token>` metadata. Health checks stay open so that load
balancers and Kubernetes probes need no secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def check_authorization(metadata: tuple[tuple[str, str | bytes], ...], token: str) -> str | None:
    """None when the metadata carries the token, else what is wrong (for UNAUTHENTICATED)."""
    values = [v for k, v in metadata if k.lower() == "authorization"]
    if not values:
        return "missing 'authorization: Bearer <token>' metadata"
    value = values[0]
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    scheme, _, credential = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return "authorization metadata must be 'Bearer <token>'"
    if not hmac.compare_digest(credential.strip().encode(), token.encode()):
        return "invalid token"
    return None


# The grpc handler factory for (request streaming, response streaming).
HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., Handler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _deny(handler: Handler, message: str) -> Handler:
    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    factory = HANDLER_KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return factory(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


class TokenAuthInterceptor(_Interceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = tuple(handler_call_details.invocation_metadata or ())
        problem = check_authorization(metadata, self.token)
        if problem is None:
            return handler
        return _deny(handler, problem)
