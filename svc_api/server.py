"""The grpc.aio SurfaceService: snapshots, history and conflated server streams.

Fan-out design (docs/architecture.md section 9 field notes):
- Each StreamSurfaces call keeps one integer of state (the store version it last sent) and
  at most one write in flight. When it wakes it sends every matching surface that changed
  since, as its latest state, in one message: a slow client gets conflated updates and
  never a backlog; its blocked write only parks its own coroutine.
- Surfaces are serialised once per publication and responses are assembled from the
  cached bytes (protobuf frames concatenate), so 1,000 streams do not serialise 1,000 times.
  The method table (method_handlers, derived from the proto's service descriptor) passes a
  response given as bytes on as it is and serialises a message as the generated code would.
- HTTP/2 flow control lets a client's receive window hide a backlog from any server-side
  conflation; the server bounds its own side (one message in flight per stream) and the
  Python client shrinks its windows and drains eagerly (see volstream/client.py). Clients in
  other languages should set the equivalent of grpc.http2.bdp_probe=0 and a small
  lookahead/initial window on their channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from nats.aio.client import Client

from svc_api.archive import ArchiveReader, last_per_step
from svc_api.auth import HANDLER_KINDS, TokenAuthInterceptor
from svc_api.config import ApiConfig
from svc_api.feed import SurfaceFeed
from svc_api.health import HealthMonitor
from svc_api.history import HistoryNotFound, HistoryUnavailable, SurfaceHistory
from svc_api.hub import SurfaceHub
from svc_api.requests import (
    ApiError,
    parse_expiry,
    parse_history_request,
    parse_key,
    parse_stream_request,
    parse_time,
)
from svc_api.store import SurfaceKey, normalise_key, stream_message, without_quotes
from volstream.bus.connection import connect
from volstream.subjects import Subjects
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import surface_pb2 as surface_pb
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.wire import length_delimited_field

log = logging.getLogger(__name__)

__all__ = ["ApiConfig", "ApiHandle", "SurfaceServicer", "method_handlers", "serve"]

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


@dataclass
class StreamStats:
    active: int = 0
    opened: int = 0
    messages: int = 0
    surfaces: int = 0
    # Messages written per open stream, by stream id (entries leave when the stream ends).
    per_stream: dict[int, int] = field(default_factory=dict)
    # Open streams per client address (svc_api.config.ApiConfig.max_streams_per_client).
    per_client: dict[str, int] = field(default_factory=dict)


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
        archive: ArchiveReader | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self.history = history
        self.archive = archive
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
        if self.history is None and self.archive is None:
            await self._fail(
                context,
                ApiError(grpc.StatusCode.UNAVAILABLE, "history needs NATS; this server has none"),
            )
        if self.history is None:
            return await self._surface_from_archive(context, key, time_ns, "")
        try:
            stored = await self.history.at_or_before(
                self.subjects.surface(key.venue, key.currency), str(key), time_ns
            )
        except HistoryNotFound as exc:
            # Past the stream's retention: the archive may have it.
            return await self._surface_from_archive(context, key, time_ns, str(exc))
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

    async def _surface_from_archive(
        self, context: Context, key: SurfaceKey, time_ns: int, stream_says: str
    ) -> bytes:
        archive = self.archive
        surface = (
            await asyncio.to_thread(archive.surface_at, key.venue, key.currency, time_ns)
            if archive is not None
            else None
        )
        if surface is None:
            held = archive.coverage(key.venue, key.currency) if archive is not None else None
            where = (
                f"the archive holds {key} from {held.first} to {held.last}"
                if held
                else f"the archive has no {key} surface"
            )
            message = f"{stream_says}; {where}" if stream_says else where
            await self._fail(context, ApiError(grpc.StatusCode.NOT_FOUND, message))
        return length_delimited_field(1, surface.SerializeToString())

    async def GetMetricHistory(
        self, request: api_pb.GetMetricHistoryRequest, context: Context
    ) -> api_pb.GetMetricHistoryResponse:
        query = parse_history_request(request, self.known_venues())
        if isinstance(query, ApiError):
            await self._fail(context, query)
        archive = self.archive
        if archive is None:
            await self._fail(
                context,
                ApiError(grpc.StatusCode.UNAVAILABLE, "this server has no archive configured"),
            )
        rows = await asyncio.to_thread(
            archive.metric_history,
            query.key.venue,
            query.key.currency,
            query.start_ns,
            query.end_ns,
            tenor_days=query.tenor_days,
            expiry=query.expiry,
        )
        if not rows:
            held = archive.coverage(query.key.venue, query.key.currency)
            where = f"it holds {held.first} to {held.last}" if held else "it has none"
            await self._fail(
                context,
                ApiError(
                    grpc.StatusCode.NOT_FOUND,
                    f"the archive has no {query.describe()} ({where} of {query.key})",
                ),
            )
        response = api_pb.GetMetricHistoryResponse()
        for row in last_per_step(rows, query.start_ns, query.step_ns):
            point = response.points.add(
                revision=row.revision,
                forward_usd=row.forward_usd,
                time_to_expiry_years=row.time_to_expiry_years,
            )
            point.time.FromNanoseconds(row.event_time_ns)
            m = point.metrics
            m.atm_vol, m.rr25, m.bf25, m.rr10, m.bf10 = (
                row.atm_vol,
                row.rr25,
                row.bf25,
                row.rr10,
                row.bf10,
            )
            if row.delta_convention:
                m.delta_convention = common_pb.DeltaConvention.Value(row.delta_convention)  # type: ignore[assignment]
        return response

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
        client = client_address(context.peer())
        open_streams = self.streams.per_client.get(client, 0)
        if open_streams >= self.config.max_streams_per_client:
            await self._fail(
                context,
                ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"client {client} already has {open_streams} open streams, the limit per "
                    "client; close one or retry later",
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
        self.streams.per_client[client] = open_streams + 1
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
            left = self.streams.per_client[client] - 1
            if left:
                self.streams.per_client[client] = left
            else:
                del self.streams.per_client[client]


def client_address(peer: str) -> str:
    """The host part of a gRPC peer ("ipv4:10.0.0.7:51234", "ipv6:[::1]:5000", "unix:...")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0]
        return host.strip("[]") or rest
    return peer


# The RPCs of volstream.v1.SurfaceService as the proto declares them: the method table below is
# derived from this descriptor, so every RPC in the proto is served (a servicer lacking one
# fails at start-up) and tests/api/test_method_table.py holds it equal to the generated one.
SURFACE_SERVICE = api_pb.DESCRIPTOR.services_by_name["SurfaceService"]


def _serializer(message_class: Any) -> Callable[[Any], bytes]:
    """The response message's serializer, passing bytes on as they are: they are the fan-out's
    pre-serialised responses (cached surface frames, see the module notes)."""
    serialize: Callable[[Any], bytes] = message_class.SerializeToString

    def serialize_unless_bytes(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return serialize_unless_bytes


class _Malformed:
    """A request whose bytes are not its message: answered INVALID_ARGUMENT by the method's
    wrapper (grpc would answer UNKNOWN "Unexpected DecodeError" and log a traceback)."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return deserialize


def _refusing_malformed(behaviour: Any) -> Any:
    """``behaviour`` (a servicer method) that first answers a malformed request with
    INVALID_ARGUMENT; an async generator stays one (grpc tells the kinds apart)."""

    async def refuse(request: _Malformed, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {request.error}")

    if inspect.isasyncgenfunction(behaviour):

        @functools.wraps(behaviour)
        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if isinstance(request, _Malformed):
                await refuse(request, context)
            async for item in behaviour(request, context):
                yield item

        return stream

    @functools.wraps(behaviour)
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Malformed):
            await refuse(request, context)
        return await behaviour(request, context)

    return call


def method_handlers(servicer: SurfaceServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """What the generated ``add_SurfaceServiceServicer_to_server`` registers, derived from the
    service descriptor, except that a method may return (or write) its response as bytes, and
    that a request that does not decode is answered INVALID_ARGUMENT with the decode error."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SURFACE_SERVICE.methods:
        handler = HANDLER_KINDS[method.client_streaming, method.server_streaming]
        handlers[method.name] = handler(
            _refusing_malformed(getattr(servicer, method.name)),
            request_deserializer=_lenient(GetMessageClass(method.input_type).FromString),
            response_serializer=_serializer(GetMessageClass(method.output_type)),
        )
    return handlers


def add_surface_service(servicer: SurfaceServicer, server: grpc.aio.Server) -> None:
    handlers = method_handlers(servicer)
    name = SURFACE_SERVICE.full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]


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
    # The NATS connection serve() opened itself: drained on stop.
    owned_nc: Client | None = None
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
        if self.owned_nc is not None:
            with contextlib.suppress(Exception):
                await self.owned_nc.drain()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def serve(
    config: ApiConfig,
    nats_url: str | None = None,
    *,
    nc: Client | None = None,
    hub: SurfaceHub | None = None,
    follow_iv: bool = True,
    archive: ArchiveReader | None = None,
) -> ApiHandle:
    """Start the API. With nats_url (or an open nats connection `nc`) it follows the SURFACE
    and IV streams and answers history; with neither, it serves whatever is applied to `hub`.
    """
    config = config.validated()
    hub = hub or SurfaceHub()
    # A connection serve() opens it also closes (ApiHandle.stop); a given one is the caller's.
    owned_nc = await connect(nats_url, "volstream-api") if nc is None and nats_url else None
    nc = owned_nc if nc is None else nc
    if archive is None and config.archive_dir is not None:
        archive = ArchiveReader(config.archive_dir)
    servicer = SurfaceServicer(config, hub, _history(config, nc), archive=archive)
    server, health_servicer = _grpc_server(config, servicer)
    port = _bind(server, config)
    monitor = await _health_monitor(config, hub, health_servicer)
    feed, caught_up = await _follow(config, hub, nc, follow_iv)
    await server.start()
    monitor.start()
    handle = ApiHandle(port, config.host, server, hub, servicer, monitor, feed, caught_up, owned_nc)
    _log_started(handle)
    return handle


def _history(config: ApiConfig, nc: Client | None) -> SurfaceHistory | None:
    if nc is None:
        return None
    stream = Subjects(config.namespace).stream_name("SURFACE")
    return SurfaceHistory(nc, stream, config.history_timeout_s)


def _grpc_server(config: ApiConfig, servicer: SurfaceServicer) -> tuple[grpc.aio.Server, Any]:
    """The server with SurfaceService, grpc.health.v1 (the returned servicer) and reflection."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    interceptors = [TokenAuthInterceptor(config.token)] if config.token else []
    server = grpc.aio.server(interceptors=interceptors, options=server_options(config))
    add_surface_service(servicer, server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SURFACE_SERVICE.full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server, health_servicer


def _bind(server: grpc.aio.Server, config: ApiConfig) -> int:
    """Listen on config's host and port (TLS when it has a certificate); the port bound."""
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
    return port


async def _health_monitor(config: ApiConfig, hub: SurfaceHub, servicer: Any) -> HealthMonitor:
    expected = [normalise_key(venue, ccy) for venue, ccy in config.expected_surfaces]
    monitor = HealthMonitor(
        servicer,
        hub,
        [key for key in expected if isinstance(key, SurfaceKey)],
        config.stale_after_ms * 1_000_000,
        config.health_policy,
    )
    await monitor.refresh()
    return monitor


async def _follow(
    config: ApiConfig, hub: SurfaceHub, nc: Client | None, follow_iv: bool
) -> tuple[SurfaceFeed | None, bool]:
    """Follow the SURFACE (and IV) streams into hub; whether the initial read caught up."""
    if nc is None:
        return None, True
    feed = SurfaceFeed(hub, nc, config.namespace, follow_iv=follow_iv)
    return feed, await feed.start(config.startup_catchup_s)


def _log_started(handle: ApiHandle) -> None:
    config = handle.servicer.config
    log.info(
        "gRPC SurfaceService on %s:%d (%s%s), %d surfaces loaded",
        config.host,
        handle.port,
        "TLS" if config.tls_cert else "plaintext",
        ", token auth" if config.token else "",
        len(handle.hub.store.keys()),
    )
