"""Python client of the volstream gRPC API, and plain-text tables for the CLI.

    with SurfaceClient("127.0.0.1:50051", token="s3cret") as client:
        print(render_term_structure(client.get_surface("deribit", "BTC")))
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
import math
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from volstream.v1 import iv_pb2 as iv_pb
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
# Delta nodes shown as columns of the tenor table (vol %).
TENOR_NODE_COLUMNS = ("5P", "10P", "25P", "ATM", "25C", "10C", "5C")


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


# rendering ------------------------------------------------------------------------------
def _pct(value: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(value) else f"{value * 100:.{digits}f}"


def _num(value: float, fmt: str) -> str:
    return "-" if not math.isfinite(value) else format(value, fmt)


def _time(ns: int) -> str:
    if ns <= 0:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns (left for the first), a rule under the header."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def _expiry_label(expiry_slice: surface_pb.ExpirySlice) -> str:
    if expiry_slice.expiry_label:
        return expiry_slice.expiry_label
    return dt.datetime.fromtimestamp(expiry_slice.expiry_time_ns / 1e9, dt.UTC).date().isoformat()


def render_term_structure(surface: surface_pb.Surface) -> str:
    """Header, one row per expiry (forward, ATM, RR/BF, fit quality), then the fixed tenors.

    Vols, risk reversals and butterflies in vol points (percent).
    """
    model = surface_pb.SurfaceModel.Name(surface.model).removeprefix("SURFACE_MODEL_")
    head = (
        f"{surface.venue}/{surface.currency}  model {model}  revision {surface.revision}  "
        f"index {_num(surface.index_price_usd, ',.2f')}  "
        f"30d vol index {_pct(surface.vol_index_30d)}  "
        f"published {_time(surface.header.publish_time_ns)}"
    )
    if surface.venue_weights:
        head += "\nvenue weights  " + "  ".join(
            f"{w.venue} {w.weight * 100:.1f}% ({w.quotes_used} quotes)"
            for w in surface.venue_weights
        )
    rows = []
    for s in surface.slices:
        m, d = s.metrics, s.diagnostics
        arb = ("B" if not d.butterfly_arbitrage_free else "") + (
            "C" if not d.calendar_arbitrage_free else ""
        )
        rows.append(
            [
                _expiry_label(s),
                _num(s.time_to_expiry_years * 365.0, ".1f"),
                _num(s.forward_usd, ",.2f"),
                _pct(m.atm_vol),
                _pct(m.rr25),
                _pct(m.bf25),
                _pct(m.rr10),
                _pct(m.bf10),
                f"{d.quotes_used}/{d.quotes_used + d.quotes_dropped}",
                _num(d.rmse_bp, ".1f"),
                arb or "ok",
            ]
        )
    parts = [
        head,
        render_table(
            [
                "expiry",
                "days",
                "forward",
                "ATM%",
                "RR25",
                "BF25",
                "RR10",
                "BF10",
                "used",
                "rmse_bp",
                "arb",
            ],
            rows,
        ),
    ]
    if surface.tenors:
        # Risk nodes as columns: the standard ones that the surface carries, in put-to-call order.
        present = {n.label for t in surface.tenors for n in t.nodes}
        node_labels = [label for label in TENOR_NODE_COLUMNS if label in present]
        tenor_rows = []
        for t in surface.tenors:
            if not t.available:
                tenor_rows.append(
                    [f"{t.tenor_days}d", "-", "-", "-", "-", *("-" for _ in node_labels), "n/a"]
                )
                continue
            vols = {n.label: n.vol for n in t.nodes}
            tenor_rows.append(
                [
                    f"{t.tenor_days}d",
                    _num(t.forward_usd, ",.2f"),
                    _pct(t.metrics.atm_vol),
                    _pct(t.metrics.rr25),
                    _pct(t.metrics.bf25),
                    *(_pct(vols.get(label, math.nan)) for label in node_labels),
                    "",
                ]
            )
        parts.append(
            render_table(["tenor", "forward", "ATM%", "RR25", "BF25", *node_labels, ""], tenor_rows)
        )
    return "\n\n".join(parts)


def render_smile(expiry_slice: surface_pb.ExpirySlice, smile: iv_pb.Smile | None = None) -> str:
    """One row per quote of the fit: strike, k, bid/mid/ask IV, fitted IV, residual, status;
    with the IV smile, the venue's mark IV beside ours."""
    venue_mark = {q.symbol: q.venue_mark_iv for q in smile.quotes} if smile else {}
    raw = expiry_slice.raw
    head = (
        f"expiry {_expiry_label(expiry_slice)}  T {_num(expiry_slice.time_to_expiry_years, '.4f')}y"
        f"  forward {_num(expiry_slice.forward_usd, ',.2f')}"
        f"  ATM {_pct(expiry_slice.metrics.atm_vol)}%"
        f"  SVI a={raw.a:.5f} b={raw.b:.5f} rho={raw.rho:.4f} m={raw.m:.4f} sigma={raw.sigma:.4f}"
    )
    rows = []
    for q in sorted(expiry_slice.quotes, key=lambda q: (q.strike_usd, q.option_kind)):
        kind = {1: "C", 2: "P"}.get(q.option_kind, "?")
        status = (
            "used"
            if q.used
            else surface_pb.DropReason.Name(q.drop_reason).removeprefix("DROP_REASON_").lower()
        )
        rows.append(
            [
                q.symbol or f"{q.strike_usd:g}{kind}",
                _num(q.strike_usd, ",.0f"),
                kind,
                _num(q.log_moneyness, ".3f"),
                _pct(q.bid_iv),
                _pct(q.mid_iv),
                _pct(q.ask_iv),
                _pct(q.fitted_iv),
                _num(q.residual_bp, ".1f"),
                _pct(venue_mark.get(q.symbol, math.nan)),
                status,
            ]
        )
    if not rows and smile is not None:
        for sq in sorted(smile.quotes, key=lambda q: (q.strike_usd, q.option_kind)):
            kind = {1: "C", 2: "P"}.get(sq.option_kind, "?")
            rows.append(
                [
                    sq.symbol,
                    _num(sq.strike_usd, ",.0f"),
                    kind,
                    _num(sq.log_moneyness, ".3f"),
                    _pct(sq.bid_iv),
                    _pct(sq.mid_iv),
                    _pct(sq.ask_iv),
                    "-",
                    "-",
                    _pct(sq.venue_mark_iv),
                    "no fit",
                ]
            )
    table = render_table(
        [
            "symbol",
            "strike",
            "C/P",
            "k",
            "bid%",
            "mid%",
            "ask%",
            "fit%",
            "resid_bp",
            "venue_mark%",
            "status",
        ],
        rows,
    )
    return f"{head}\n{table}"


def render_update_line(surface: surface_pb.Surface, now_ns: int | None = None) -> str:
    """One line per surface for `volstream watch`: 30d ATM/RR/BF when the tenor exists."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    age_ms = (
        (now_ns - surface.header.publish_time_ns) / 1e6
        if surface.header.publish_time_ns
        else math.nan
    )
    tenor = next((t for t in surface.tenors if t.tenor_days == 30 and t.available), None)
    front = surface.slices[0].metrics if surface.slices else None
    metrics = tenor.metrics if tenor else front
    label = "30d" if tenor else ("front" if front else "-")
    atm = _pct(metrics.atm_vol) if metrics else "-"
    rr = _pct(metrics.rr25) if metrics else "-"
    bf = _pct(metrics.bf25) if metrics else "-"
    return (
        f"{_time(surface.header.publish_time_ns)}  {surface.venue + '/' + surface.currency:<12}"
        f" rev {surface.revision:<6} {label} ATM {atm:>6}  RR25 {rr:>6}  BF25 {bf:>6}"
        f"  expiries {len(surface.slices):>2}  age {_num(age_ms, '.0f')} ms"
    )


# CLI commands (wired by volstream.cli) ----------------------------------------------------
def _error(exc: grpc.RpcError) -> int:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if code is not None else "ERROR"
    print(f"volstream: {name}: {details}", file=sys.stderr)
    return 2 if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED) else 1


def surface_command(
    server: str,
    venue: str,
    currency: str,
    token: str | None = None,
    *,
    tls: bool = False,
    ca_file: Path | None = None,
    expiry: str | None = None,
) -> int:
    """`volstream surface`: term structure (and one smile with expiry=) as tables."""
    roots = ca_file.read_bytes() if ca_file else None
    try:
        with SurfaceClient(server, token=token, tls=tls, root_certificates=roots) as client:
            if expiry:
                answer = client.get_smile(venue, currency, expiry)
                print(
                    render_smile(answer.slice, answer.smile if answer.HasField("smile") else None)
                )
            else:
                print(render_term_structure(client.get_surface(venue, currency, omit_quotes=True)))
    except grpc.RpcError as exc:
        return _error(exc)
    return 0


def watch_command(
    server: str,
    venues: Sequence[str],
    currencies: Sequence[str],
    min_interval_ms: int = 1000,
    token: str | None = None,
    *,
    tls: bool = False,
    ca_file: Path | None = None,
    max_messages: int | None = None,
) -> int:
    """`volstream watch`: one line per surface update; reconnects while the server is away."""
    roots = ca_file.read_bytes() if ca_file else None
    backoff_s = 0.5
    seen = 0
    with SurfaceClient(server, token=token, tls=tls, root_certificates=roots) as client:
        while True:
            try:
                stream = client.stream(venues, currencies, min_interval_ms, omit_quotes=True)
                with stream:
                    for message in stream:
                        backoff_s = 0.5
                        for surface in message.surfaces:
                            print(render_update_line(surface), flush=True)
                        seen += 1
                        if max_messages is not None and seen >= max_messages:
                            return 0
            except KeyboardInterrupt:
                return 0
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    return _error(exc)
                print(
                    f"volstream: server unavailable; retrying in {backoff_s:.1f}s", file=sys.stderr
                )
            else:
                print("volstream: stream ended by the server; reconnecting", file=sys.stderr)
            try:
                time.sleep(backoff_s)
            except KeyboardInterrupt:
                return 0
            backoff_s = min(backoff_s * 2, 10.0)
