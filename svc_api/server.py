"""The grpc.aio SurfaceService: snapshots, history and conflated server streams.

Fan-out design (docs/architecture.md section 9 field notes):
- Each StreamSurfaces call keeps one integer of state (the store version it last sent) and
  at most one write in flight. When it wakes it sends every matching surface that changed
  since, as its latest state, in one message: a slow client gets conflated updates and
  never a backlog; its blocked write only parks its own coroutine.
- Surfaces are serialised once per publication and responses are assembled from the
  cached bytes (protobuf frames concatenate), so 1,000 streams do not serialise 1,000 times.
- HTTP/2 flow control lets a client's receive window hide a backlog from any server-side
  conflation; the server bounds its own side (one message in flight per stream) and the
  Python client shrinks its windows and drains eagerly (see volstream/client.py). Clients in
  other languages should set the equivalent of grpc.http2.bdp_probe=0 and a small
  lookahead/initial window on their channel.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio

from svc_api.auth import TokenAuthInterceptor
from svc_api.config import ApiConfig
from svc_api.feed import SurfaceFeed
from svc_api.health import SERVICE_NAME, HealthMonitor
from svc_api.history import HistoryNotFound, HistoryUnavailable, SurfaceHistory
from svc_api.hub import SurfaceHub
from svc_api.requests import (
    ApiError,
    parse_expiry,
    parse_key,
    parse_stream_request,
    parse_time,
)
from svc_api.store import (
    SurfaceKey,
    length_delimited_field,
    normalise_key,
    stream_message,
    without_quotes,
)
from volstream.subjects import Subjects
from volstream.v1 import surface_pb2 as surface_pb
from volstream.v1 import surface_service_pb2 as api_pb

log = logging.getLogger(__name__)

__all__ = ["ApiConfig", "ApiHandle", "SurfaceServicer", "serve"]

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass
class StreamStats:
    active: int = 0
    opened: int = 0
    messages: int = 0
    surfaces: int = 0
    # Messages written per open stream, by stream id (entries leave when the stream ends).
    per_stream: dict[int, int] = field(default_factory=dict)


def expiry_label_of(expiry_slice: surface_pb.ExpirySlice) -> str:
    if expiry_slice.expiry_label:
        return expiry_slice.expiry_label
    return dt.datetime.fromtimestamp(expiry_slice.expiry_time_ns / 1e9, dt.UTC).date().isoformat()


class SurfaceServicer:
    """volstream.v1.SurfaceService over a SurfaceHub (+ history when NATS is available)."""

    def __init__(
        self,
        config: ApiConfig,
        hub: SurfaceHub,
        history: SurfaceHistory | None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config = config
        self.hub = hub
        self.history = history
        self.clock_ns = clock_ns
        self.subjects = Subjects(config.namespace)
        self.stale_after_ns = config.stale_after_ms * 1_000_000
        self.streams = StreamStats()

    # helpers -------------------------------------------------------------------------
    def known_venues(self) -> set[str]:
        return set(self.config.venues) | self.hub.store.venues()

    async def _fail(self, context: Context, error: ApiError) -> NoReturn:
        await context.abort(error.code, error.message)
        raise AssertionError("abort raises")

    def _available(self) -> str:
        keys = self.hub.store.keys()
        return ", ".join(str(k) for k in keys) if keys else "none yet"

    async def _key(self, context: Context, venue: str, currency: str) -> SurfaceKey:
        key = parse_key(venue, currency, self.known_venues())
        if isinstance(key, ApiError):
            await self._fail(context, key)
        return key

    # unary ---------------------------------------------------------------------------
    async def ListSurfaces(
        self, request: api_pb.ListSurfacesRequest, context: Context
    ) -> api_pb.ListSurfacesResponse:
        now_ns = self.clock_ns()
        response = api_pb.ListSurfacesResponse()
        for entry in self.hub.store.list():
            s = entry.surface
            response.surfaces.add(
                venue=entry.key.venue,
                currency=entry.key.currency,
                expiries=len(s.slices),
                revision=s.revision,
                event_time_ns=s.header.event_time_ns,
                publish_time_ns=entry.publish_time_ns,
                age_ms=entry.age_ns(now_ns) // 1_000_000,
                fresh=entry.is_fresh(now_ns, self.stale_after_ns),
            )
        return response

    async def GetSurface(self, request: api_pb.GetSurfaceRequest, context: Context) -> bytes:
        key = await self._key(context, request.venue, request.currency)
        entry = self.hub.store.entry(key)
        if entry is None:
            await self._fail(
                context,
                ApiError(
                    grpc.StatusCode.NOT_FOUND,
                    f"no {key} surface has been received (available: {self._available()})",
                ),
            )
        # GetSurfaceResponse{surface = 1}: the cached frame is the whole response.
        return entry.surface_frame(request.omit_quotes)

    async def GetSmile(
        self, request: api_pb.GetSmileRequest, context: Context
    ) -> api_pb.GetSmileResponse:
        key = await self._key(context, request.venue, request.currency)
        label = parse_expiry(request.expiry)
        if isinstance(label, ApiError):
            await self._fail(context, label)
        entry = self.hub.store.entry(key)
        response = api_pb.GetSmileResponse()
        expiry_time_ns = 0
        labels: list[str] = []
        if entry is not None:
            for expiry_slice in entry.surface.slices:
                labels.append(expiry_label_of(expiry_slice))
                if labels[-1] == label:
                    response.slice.CopyFrom(expiry_slice)
                    expiry_time_ns = expiry_slice.expiry_time_ns
        smile = (
            self.hub.store.smile(key, expiry_time_ns)
            if expiry_time_ns
            else self.hub.store.smile_by_label(key, label)
        )
        if smile is not None:
            response.smile.CopyFrom(smile)
        if not response.HasField("slice") and smile is None:
            if entry is None:
                message = f"no {key} surface has been received (available: {self._available()})"
            else:
                message = (
                    f"no expiry {label} in the {key} surface "
                    f"(expiries: {', '.join(labels) or 'none'})"
                )
            await self._fail(context, ApiError(grpc.StatusCode.NOT_FOUND, message))
        return response

    async def GetSurfaceAt(self, request: api_pb.GetSurfaceAtRequest, context: Context) -> bytes:
        key = await self._key(context, request.venue, request.currency)
        time_ns = parse_time(request, self.clock_ns())
        if isinstance(time_ns, ApiError):
            await self._fail(context, time_ns)
        if self.history is None:
            await self._fail(
                context,
                ApiError(grpc.StatusCode.UNAVAILABLE, "history needs NATS; this server has none"),
            )
        try:
            stored = await self.history.at_or_before(
                self.subjects.surface(key.venue, key.currency), str(key), time_ns
            )
        except HistoryNotFound as exc:
            await self._fail(context, ApiError(grpc.StatusCode.NOT_FOUND, str(exc)))
        except HistoryUnavailable as exc:
            await self._fail(context, ApiError(grpc.StatusCode.UNAVAILABLE, str(exc)))
        surface = surface_pb.Surface()
        try:
            surface.ParseFromString(stored.data)
        except Exception as exc:
            await self._fail(
                context,
                ApiError(
                    grpc.StatusCode.DATA_LOSS,
                    f"stream sequence {stored.sequence} on {stored.subject} "
                    f"is not a Surface: {exc}",
                ),
            )
        if request.omit_quotes:
            return length_delimited_field(1, without_quotes(surface).SerializeToString())
        return length_delimited_field(1, stored.data)

    # streaming -----------------------------------------------------------------------
    async def StreamSurfaces(self, request: api_pb.StreamSurfacesRequest, context: Context) -> None:
        query = parse_stream_request(request, self.known_venues())
        if isinstance(query, ApiError):
            await self._fail(context, query)
        if self.hub.closed.is_set():
            await self._fail(
                context, ApiError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            )
        if self.hub.subscriber_count >= self.config.max_concurrent_streams:
            await self._fail(
                context,
                ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many streams ({self.config.max_concurrent_streams}); retry later",
                ),
            )
        store = self.hub.store
        omit = query.omit_quotes
        interval_s = max(query.min_interval_ms, self.config.min_stream_interval_ms) / 1000.0
        sub = self.hub.subscribe()
        self.streams.active += 1
        self.streams.opened += 1
        stream_id = self.streams.opened
        per_stream = self.streams.per_stream
        try:
            version, entries = store.changed_since(0, query.filter)
            await context.write(stream_message((e.surface_frame(omit) for e in entries), True))
            per_stream[stream_id] = 1
            self.streams.messages += 1
            self.streams.surfaces += len(entries)
            last_sent = time.monotonic()
            while True:
                await sub.changed.wait()
                if self.hub.closed.is_set():
                    break
                if interval_s:
                    wait_s = last_sent + interval_s - time.monotonic()
                    if wait_s > 0 and await self.hub.sleep_unless_closed(wait_s):
                        break
                # Clear before reading so a change during the write wakes us again.
                sub.changed.clear()
                version, entries = store.changed_since(version, query.filter)
                if not entries:
                    continue
                await context.write(stream_message((e.surface_frame(omit) for e in entries), False))
                per_stream[stream_id] += 1
                self.streams.messages += 1
                self.streams.surfaces += len(entries)
                last_sent = time.monotonic()
            context.set_trailing_metadata((("volstream-stream-end", "server-shutdown"),))
        finally:
            self.hub.unsubscribe(sub)
            per_stream.pop(stream_id, None)
            self.streams.active -= 1


def _handlers(servicer: SurfaceServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    # Responses given as bytes are pre-serialised: response_serializer=None passes them on.
    return {
        "ListSurfaces": grpc.unary_unary_rpc_method_handler(
            servicer.ListSurfaces,
            request_deserializer=api_pb.ListSurfacesRequest.FromString,
            response_serializer=api_pb.ListSurfacesResponse.SerializeToString,
        ),
        "GetSurface": grpc.unary_unary_rpc_method_handler(
            servicer.GetSurface,
            request_deserializer=api_pb.GetSurfaceRequest.FromString,
            response_serializer=None,
        ),
        "GetSmile": grpc.unary_unary_rpc_method_handler(
            servicer.GetSmile,
            request_deserializer=api_pb.GetSmileRequest.FromString,
            response_serializer=api_pb.GetSmileResponse.SerializeToString,
        ),
        "GetSurfaceAt": grpc.unary_unary_rpc_method_handler(
            servicer.GetSurfaceAt,
            request_deserializer=api_pb.GetSurfaceAtRequest.FromString,
            response_serializer=None,
        ),
        "StreamSurfaces": grpc.unary_stream_rpc_method_handler(
            servicer.StreamSurfaces,
            request_deserializer=api_pb.StreamSurfacesRequest.FromString,
            response_serializer=None,
        ),
    }


def server_options(config: ApiConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        # Ping idle connections so dead clients (and their streams) are noticed.
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Let clients keep long-lived streams alive with their own pings.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", config.min_client_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 2),
        # Two servers must never share a port by accident.
        ("grpc.so_reuseport", 0),
    ]


@dataclass
class ApiHandle:
    """A running API server."""

    port: int
    host: str
    server: grpc.aio.Server
    hub: SurfaceHub
    servicer: SurfaceServicer
    health: HealthMonitor
    feed: SurfaceFeed | None = None
    # The initial read of the SURFACE/IV streams finished before serve() returned.
    caught_up: bool = True
    _nc: Any = None
    _owns_nc: bool = False
    _stopped: bool = field(default=False, repr=False)

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]", "") else self.host
        return f"{host}:{self.port}"

    async def stop(self, grace_s: float | None = None) -> None:
        """End streams (status OK, trailer volstream-stream-end), finish unary calls, close."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.servicer.config.shutdown_grace_s if grace_s is None else grace_s
        self.hub.close()
        await self.health.stop()
        await self.server.stop(grace)
        if self.feed is not None:
            await self.feed.stop()
        if self._owns_nc and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def connect_nats(url: str, name: str = "volstream-api") -> Any:
    import nats

    async def on_disconnect() -> None:
        log.warning("NATS disconnected")

    async def on_reconnect() -> None:
        log.info("NATS reconnected")

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error: %r", exc)

    return await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )


async def serve(
    config: ApiConfig,
    nats_url: str | None = None,
    *,
    nc: Any = None,
    hub: SurfaceHub | None = None,
    follow_iv: bool = True,
) -> ApiHandle:
    """Start the API. With nats_url (or an open nats connection `nc`) it follows the SURFACE
    and IV streams and answers history; with neither, it serves whatever is applied to `hub`.
    """
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    config = config.validated()
    hub = hub or SurfaceHub()
    owns_nc = False
    if nc is None and nats_url:
        nc = await connect_nats(nats_url)
        owns_nc = True
    subjects = Subjects(config.namespace)
    history = (
        SurfaceHistory(nc, subjects.stream_name("SURFACE"), config.history_timeout_s)
        if nc is not None
        else None
    )

    interceptors = [TokenAuthInterceptor(config.token)] if config.token else []
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config))
    servicer = SurfaceServicer(config, hub, history)
    handlers = _handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]

    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            api_pb.DESCRIPTOR.services_by_name["SurfaceService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )

    address = f"{config.host}:{config.port}"
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())]
        )
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"gRPC could not bind {address}")

    expected: list[SurfaceKey] = []
    for venue, currency in config.expected_surfaces:
        key = normalise_key(venue, currency)
        if isinstance(key, SurfaceKey):
            expected.append(key)
    monitor = HealthMonitor(
        health_servicer, hub, expected, config.stale_after_ms * 1_000_000, config.health_policy
    )
    await monitor.refresh()

    feed = None
    caught_up = True
    if nc is not None:
        feed = SurfaceFeed(hub, nc, config.namespace, follow_iv=follow_iv)
        caught_up = await feed.start(config.startup_catchup_s)
    await server.start()
    monitor.start()
    log.info(
        "gRPC SurfaceService on %s:%d (%s%s), %d surfaces loaded",
        config.host,
        port,
        "TLS" if config.tls_cert else "plaintext",
        ", token auth" if config.token else "",
        len(hub.store.keys()),
    )
    return ApiHandle(
        port=port,
        host=config.host,
        server=server,
        hub=hub,
        servicer=servicer,
        health=monitor,
        feed=feed,
        caught_up=caught_up,
        _nc=nc,
        _owns_nc=owns_nc,
    )
