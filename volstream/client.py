"""Python client of the volstream gRPC API (the CLI's tables: volstream.cli_render).

    with SurfaceClient("127.0.0.1:50051", token="s3cret") as client:
        surface = client.get_surface("deribit", "BTC")
        for update in client.stream(venues=["deribit"], min_interval_ms=500):
            ...

Streams conflate on the client too: a reader thread drains the connection as fast as the
server sends and keeps only the latest surface per (venue, currency), so a consumer that is
slower than the updates still gets the newest state, never a queue. The channel also keeps
its HTTP/2 receive window small (no BDP probing), so a lagging reader cannot hide a backlog
in transport buffers.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from volstream.v1 import surface_pb2 as surface_pb
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Small HTTP/2 windows: what a slow reader leaves unread stays on the server, where it is
# conflated, instead of piling up in this process's transport buffers.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 16384),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)

Key = tuple[str, str]


def _credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def channel_options(
    server_name_override: str | None = None, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = list(CHANNEL_OPTIONS)
    if server_name_override:
        options.append(("grpc.ssl_target_name_override", server_name_override))
    options.extend(extra)
    return options


def to_timestamp(when: dt.datetime | int | float | Timestamp) -> Timestamp:
    """A Timestamp from a datetime (naive = UTC), ns since the epoch (int) or seconds (float)."""
    if isinstance(when, Timestamp):
        return when
    ts = Timestamp()
    if isinstance(when, dt.datetime):
        aware = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        ts.FromDatetime(aware.astimezone(dt.UTC))
    elif isinstance(when, int):
        ts.FromNanoseconds(when)
    else:
        ts.FromNanoseconds(int(when * 1e9))
    return ts


class SurfaceStream:
    """Iterator of StreamSurfacesResponse from a server stream.

    conflate=True: a reader thread drains the stream; each next() returns every surface that
    changed since the previous next(), latest state only (is_snapshot on the first). A slow
    consumer skips intermediate states instead of falling behind.
    conflate=False: the messages exactly as the server sent them.
    """

    def __init__(self, call: Any, conflate: bool = True) -> None:
        self._call = call
        self._conflate = conflate
        self._lock = threading.Condition()
        self._pending: dict[Key, surface_pb.Surface] = {}
        self._pending_snapshot = False
        self._done = False
        self._error: grpc.RpcError | None = None
        self.messages_received = 0
        self.surfaces_received = 0
        self._thread: threading.Thread | None = None
        if conflate:
            self._thread = threading.Thread(target=self._drain, name="surface-stream", daemon=True)
            self._thread.start()

    def _drain(self) -> None:
        try:
            for message in self._call:
                with self._lock:
                    self.messages_received += 1
                    self.surfaces_received += len(message.surfaces)
                    if message.is_snapshot:
                        self._pending_snapshot = True
                    for surface in message.surfaces:
                        self._pending[(surface.venue, surface.currency)] = surface
                    self._lock.notify_all()
        except grpc.RpcError as exc:
            with self._lock:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    self._error = exc
        finally:
            with self._lock:
                self._done = True
                self._lock.notify_all()

    def __iter__(self) -> Iterator[api_pb.StreamSurfacesResponse]:
        return self

    def __next__(self) -> api_pb.StreamSurfacesResponse:
        if not self._conflate:
            message: api_pb.StreamSurfacesResponse = next(self._call)
            self.messages_received += 1
            self.surfaces_received += len(message.surfaces)
            return message
        with self._lock:
            while not self._pending and not self._pending_snapshot and not self._done:
                self._lock.wait()
            if not self._pending and not self._pending_snapshot:
                if self._error is not None:
                    raise self._error
                raise StopIteration
            response = api_pb.StreamSurfacesResponse(
                surfaces=[self._pending[k] for k in sorted(self._pending)],
                is_snapshot=self._pending_snapshot,
            )
            self._pending.clear()
            self._pending_snapshot = False
            return response

    def cancel(self) -> None:
        self._call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def trailing_metadata(self) -> Any:
        return self._call.trailing_metadata()

    def __enter__(self) -> SurfaceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class SurfaceClient:
    """Blocking client of volstream.v1.SurfaceService."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        server_name_override: str | None = None,
        timeout_s: float = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        creds = _credentials(tls, root_certificates)
        opts = channel_options(server_name_override, options)
        self.channel = (
            grpc.secure_channel(target, creds, options=opts)
            if creds is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self.stub = api_grpc.SurfaceServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SurfaceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, method: Any, request: Any) -> Any:
        return method(request, timeout=self.timeout_s, metadata=self.metadata)

    def list_surfaces(self) -> list[api_pb.SurfaceSummary]:
        response = self._unary(self.stub.ListSurfaces, api_pb.ListSurfacesRequest())
        return list(response.surfaces)

    def get_surface(
        self, venue: str, currency: str, omit_quotes: bool = False
    ) -> surface_pb.Surface:
        request = api_pb.GetSurfaceRequest(venue=venue, currency=currency, omit_quotes=omit_quotes)
        surface: surface_pb.Surface = self._unary(self.stub.GetSurface, request).surface
        return surface

    def get_smile(self, venue: str, currency: str, expiry: str) -> api_pb.GetSmileResponse:
        request = api_pb.GetSmileRequest(venue=venue, currency=currency, expiry=expiry)
        response: api_pb.GetSmileResponse = self._unary(self.stub.GetSmile, request)
        return response

    def get_surface_at(
        self,
        venue: str,
        currency: str,
        when: dt.datetime | int | float | Timestamp,
        omit_quotes: bool = False,
    ) -> surface_pb.Surface:
        request = api_pb.GetSurfaceAtRequest(
            venue=venue, currency=currency, time=to_timestamp(when), omit_quotes=omit_quotes
        )
        surface: surface_pb.Surface = self._unary(self.stub.GetSurfaceAt, request).surface
        return surface

    def metric_history(
        self,
        venue: str,
        currency: str,
        start: dt.datetime | int | float | Timestamp,
        end: dt.datetime | int | float | Timestamp,
        *,
        tenor_days: int | None = None,
        expiry: str | None = None,
        step_s: float = 0.0,
    ) -> list[api_pb.MetricPoint]:
        """One smile's metrics over [start, end) from the archive (a tenor or an expiry)."""
        request = api_pb.GetMetricHistoryRequest(
            venue=venue,
            currency=currency,
            start_time=to_timestamp(start),
            end_time=to_timestamp(end),
        )
        if tenor_days is not None:
            request.tenor_days = tenor_days
        if expiry is not None:
            request.expiry = expiry
        if step_s:
            request.step.FromNanoseconds(round(step_s * 1e9))
        points: list[api_pb.MetricPoint] = list(
            self._unary(self.stub.GetMetricHistory, request).points
        )
        return points

    def stream(
        self,
        venues: Sequence[str] = (),
        currencies: Sequence[str] = (),
        min_interval_ms: int = 0,
        omit_quotes: bool = False,
        conflate: bool = True,
    ) -> SurfaceStream:
        request = api_pb.StreamSurfacesRequest(
            venues=list(venues),
            currencies=list(currencies),
            min_interval_ms=min_interval_ms,
            omit_quotes=omit_quotes,
        )
        call = self.stub.StreamSurfaces(request, metadata=self.metadata)
        return SurfaceStream(call, conflate=conflate)

    def health(self, service: str = "") -> str:
        """SERVING / NOT_SERVING / ... of the API ('' overall) or one surface
        ("volstream.v1.SurfaceService/deribit/BTC")."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s
        )
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return name


class AsyncSurfaceClient:
    """asyncio client of volstream.v1.SurfaceService (grpc.aio)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        server_name_override: str | None = None,
        timeout_s: float = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        creds = _credentials(tls, root_certificates)
        opts = channel_options(server_name_override, options)
        self.channel = (
            grpc.aio.secure_channel(target, creds, options=opts)
            if creds is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self.stub = api_grpc.SurfaceServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self.timeout_s = timeout_s

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> AsyncSurfaceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def list_surfaces(self) -> list[api_pb.SurfaceSummary]:
        response = await self.stub.ListSurfaces(
            api_pb.ListSurfacesRequest(), timeout=self.timeout_s, metadata=self.metadata
        )
        return list(response.surfaces)

    async def get_surface(
        self, venue: str, currency: str, omit_quotes: bool = False
    ) -> surface_pb.Surface:
        response = await self.stub.GetSurface(
            api_pb.GetSurfaceRequest(venue=venue, currency=currency, omit_quotes=omit_quotes),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )
        surface: surface_pb.Surface = response.surface
        return surface

    async def get_smile(self, venue: str, currency: str, expiry: str) -> api_pb.GetSmileResponse:
        response: api_pb.GetSmileResponse = await self.stub.GetSmile(
            api_pb.GetSmileRequest(venue=venue, currency=currency, expiry=expiry),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )
        return response

    async def get_surface_at(
        self,
        venue: str,
        currency: str,
        when: dt.datetime | int | float | Timestamp,
        omit_quotes: bool = False,
    ) -> surface_pb.Surface:
        response = await self.stub.GetSurfaceAt(
            api_pb.GetSurfaceAtRequest(
                venue=venue, currency=currency, time=to_timestamp(when), omit_quotes=omit_quotes
            ),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )
        surface: surface_pb.Surface = response.surface
        return surface

    def stream(
        self,
        venues: Sequence[str] = (),
        currencies: Sequence[str] = (),
        min_interval_ms: int = 0,
        omit_quotes: bool = False,
    ) -> Any:
        """The grpc.aio call: `async for message in call`, `call.cancel()`."""
        return self.stub.StreamSurfaces(
            api_pb.StreamSurfacesRequest(
                venues=list(venues),
                currencies=list(currencies),
                min_interval_ms=min_interval_ms,
                omit_quotes=omit_quotes,
            ),
            metadata=self.metadata,
        )
