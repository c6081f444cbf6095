"""The dashboard's HTTP side: the page, its static files, JSON endpoints and a live push.

Routes (JSON shapes in docs/dashboard.md), served by the API process on its HTTP port:
- ``/`` the page; ``/dashboard/app.js|app.css`` its code; ``/dashboard/plotly.min.js`` the
  plotly.js bundle of the installed ``plotly`` wheel (nothing fetched from the network);
- ``/api/dashboard/{config,overview,surface,smile,history,series}`` JSON;
- ``POST /api/dashboard/ticket`` a one-use ticket for the push channel (auth only);
- ``/api/dashboard/events`` server-sent events: ``overview`` and ``surface``.

Push: each browser connection keeps the store version it last sent (the same rule as the
gRPC streams), so what it is sent is always the latest state, never a backlog; a connection
whose writes stall parks only its own coroutine (aiohttp's write waits for the socket to
drain, so at most one transport buffer is held), and is closed after ``write_timeout_s``.
Every surface is serialised to JSON once per publication and shared by all browsers.

Auth: with an API token, every JSON endpoint wants ``Authorization: Bearer <token>``. An
EventSource cannot send headers, so the page first POSTs (with the header) for a ticket:
random, single use, valid for ``TICKET_TTL_S``; the token itself never appears in a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from svc_api.archive import ArchiveReader, MetricRow, last_per_step
from svc_api.auth import check_authorization
from svc_api.dashboard.views import (
    Json,
    RateTracker,
    metrics_json,
    num,
    overview_row,
    slice_json,
    smile_quotes_json,
    surface_json,
)
from svc_api.history import (
    HistoryNotFound,
    HistoryUnavailable,
    SurfaceHistory,
)
from svc_api.hub import SurfaceHub
from svc_api.requests import FUTURE_TOLERANCE_NS, ApiError, format_time_ns, parse_expiry, parse_key
from svc_api.server import expiry_label_of
from svc_api.store import SurfaceEntry, SurfaceKey
from volstream.config import parse_rfc3339_ns
from volstream.subjects import Subjects
from volstream.telemetry import Metrics
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger(__name__)

TICKET_TTL_S = 30.0
# Outstanding tickets are capped: a client asking for tickets in a loop cannot grow memory.
MAX_TICKETS = 1024
# Series: the most hours and points a browser may ask for in one request.
MAX_SERIES_HOURS = 72.0
MAX_SERIES_POINTS = 400
# Past series points are cached (the past does not change): this many, least recent dropped.
SERIES_CACHE_SIZE = 8192
# The archive's part of a series, per (surface, tenor, span, step): reused this long.
ARCHIVE_SERIES_REUSE_NS = 30_000_000_000
ARCHIVE_SERIES_CACHE_SIZE = 64
OVERVIEW_REUSE_NS = 100_000_000
# The key an overview-only push connection subscribes with: no surface has it, so only the
# hub's close wakes it (the overview goes on its own clock).
NO_SURFACE = SurfaceKey("", "")
CONNECTIONS_NOTE = (
    "venue connection states are not published on the bus: each connector reports them on "
    'its own /metrics (connector_counts{name="connection.state.*"}); the freshness of each '
    "surface below is what the API sees"
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=_dumps(value),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, reason: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="volstream"'
    return web.Response(
        body=_dumps({"error": reason}),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class BadRequest(Exception):
    """A request the dashboard cannot answer: HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class TicketBook:
    """One-use tickets for the push channel; time is an argument (monotonic seconds)."""

    ttl_s: float = TICKET_TTL_S
    limit: int = MAX_TICKETS
    _tickets: dict[str, float] = field(default_factory=dict)

    def issue(self, now_s: float) -> str | None:
        self._prune(now_s)
        if len(self._tickets) >= self.limit:
            return None
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = now_s + self.ttl_s
        return ticket

    def redeem(self, ticket: str, now_s: float) -> bool:
        self._prune(now_s)
        return self._tickets.pop(ticket, None) is not None

    def __len__(self) -> int:
        return len(self._tickets)

    def _prune(self, now_s: float) -> None:
        for t in [t for t, expires in self._tickets.items() if expires <= now_s]:
            del self._tickets[t]


@dataclass(frozen=True)
class DashboardOptions:
    # Floor between two pushes to one browser (a browser shows no more than this anyway).
    min_push_interval_s: float = 0.2
    # gRPC first: a browser's push waits this long after its surface changed, so that the
    # gRPC streams' fan-out of the same publication is not competing with 50 browsers' writes
    # (latest still wins: a change meanwhile is in the same push). Nobody sees 100 ms.
    push_delay_s: float = 0.1
    # The overview (every surface's summary) changes with every publication; once a second
    # is what a person reads, and saves most of the pushed bytes.
    overview_interval_s: float = 1.0
    # A comment line this often keeps proxies from closing an idle stream and finds dead peers.
    heartbeat_s: float = 15.0
    # A browser that has not taken a write for this long is disconnected (it reconnects).
    write_timeout_s: float = 30.0
    # Kernel send buffer of each push connection: bounds what a stalled browser holds in the
    # kernel (beside aiohttp's 64 KiB of user-space buffer), and makes a stall show sooner.
    socket_send_buffer: int = 256 * 1024


@dataclass
class PushStats:
    active: int = 0
    opened: int = 0
    messages: int = 0
    stalled_closed: int = 0


def static_dir() -> Path:
    return Path(str(resources.files("svc_api.dashboard") / "static"))


def plotly_bundle() -> Path | None:
    """plotly.min.js inside the installed plotly wheel, None when plotly is missing."""
    try:
        path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


class Dashboard:
    def __init__(
        self,
        hub: SurfaceHub,
        *,
        history: SurfaceHistory | None,
        known_venues: Callable[[], set[str]],
        stale_after_ns: int,
        archive: ArchiveReader | None = None,
        token: str | None = None,
        namespace: str = "",
        options: DashboardOptions | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        metrics: Metrics | None = None,
    ) -> None:
        self.hub = hub
        self.history = history
        # Past the SURFACE stream's retention (minutes), the scrubber and the series read the
        # archive (svc_archive's Parquet: surfaces without quotes), as GetSurfaceAt does.
        self.archive = archive
        self.known_venues = known_venues
        self.stale_after_ns = stale_after_ns
        self.token = token
        self.subjects = Subjects(namespace)
        self.options = options or DashboardOptions()
        self.clock_ns = clock_ns
        self.tickets = TicketBook()
        self.rates = RateTracker()
        self.push = PushStats()
        self.closed = False
        self._subscriptions: set[Any] = set()
        self._metrics = metrics
        if metrics is not None:
            self._m_rejected = metrics.counter(
                "dashboard_rejected", "dashboard requests answered 4xx/5xx (label status)"
            )
            self._m_messages = metrics.counter("dashboard_push_messages", "events pushed")
            self._m_stalled = metrics.counter(
                "dashboard_push_stalled", "push connections dropped for not reading"
            )
            self._m_connections = metrics.gauge("dashboard_push_connections", "open pushes")
        # (key, with quotes) -> (entry version, JSON bytes): one serialisation per publication.
        self._surface_cache: dict[tuple[SurfaceKey, bool], tuple[int, bytes]] = {}
        self._series_cache: OrderedDict[tuple[str, int], Json | None] = OrderedDict()
        self._archive_series_cache: dict[
            tuple[str, int, int, int, int], tuple[int, list[MetricRow]]
        ] = {}
        # The overview shared by every browser for OVERVIEW_REUSE_NS (ages move, little else).
        self._overview: tuple[int, int, bytes, bytes] | None = None
        self._surface_events: dict[SurfaceKey, tuple[int, bytes]] = {}

    def close(self) -> None:
        """End every push stream (the API's stop does it too, by closing the hub)."""
        self.closed = True
        for sub in self._subscriptions:
            sub.changed.set()

    # routes --------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.page),
            web.get("/dashboard/{name}", self.static),
            web.get("/api/dashboard/config", self.config),
            web.post("/api/dashboard/ticket", self.ticket),
            web.get("/api/dashboard/overview", self.overview),
            web.get("/api/dashboard/surface", self.surface),
            web.get("/api/dashboard/smile", self.smile),
            web.get("/api/dashboard/history", self.surface_at),
            web.get("/api/dashboard/series", self.series),
            web.get("/api/dashboard/events", self.events),
        ]

    # static --------------------------------------------------------------------------
    async def page(self, _: web.Request) -> web.FileResponse:
        return web.FileResponse(static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "plotly.min.js":
            bundle = plotly_bundle()
            if bundle is None:
                return _error(404, "plotly is not installed: charts are unavailable")
            return web.FileResponse(bundle, headers={"Cache-Control": "max-age=86400"})
        if name not in ("app.js", "app.css"):
            return _error(404, f"no dashboard file {name!r}")
        return web.FileResponse(static_dir() / name, headers={"Cache-Control": "no-cache"})

    # auth ----------------------------------------------------------------------------
    def _check(self, request: web.Request) -> None:
        if not self.token:
            return
        header = request.headers.get("Authorization")
        metadata = (("authorization", header),) if header is not None else ()
        problem = check_authorization(metadata, self.token)
        if problem is not None:
            raise BadRequest(401, problem.replace("metadata", "header"))

    def _reject(self, exc: BadRequest) -> web.Response:
        if self._metrics is not None:
            self._m_rejected.add(1, {"status": str(exc.status)})
        return _error(exc.status, exc.reason)

    def _count_push(self) -> None:
        if self._metrics is not None:
            self._m_connections.set(self.push.active)

    async def config(self, _: web.Request) -> web.Response:
        return _json(
            {
                "auth_required": bool(self.token),
                "venues": sorted(self.known_venues()),
                "stale_after_ms": self.stale_after_ns // 1_000_000,
                "history": self.history is not None,
            }
        )

    async def ticket(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, self._ticket)

    def _ticket(self, _: web.Request) -> Json:
        if not self.token:
            return {"ticket": None, "expires_in_s": None}
        ticket = self.tickets.issue(time.monotonic())
        if ticket is None:
            raise BadRequest(429, f"{MAX_TICKETS} tickets outstanding; retry in a few seconds")
        return {"ticket": ticket, "expires_in_s": self.tickets.ttl_s}

    async def _answer(
        self, request: web.Request, build: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            self._check(request)
            result = build(request)
            if asyncio.iscoroutine(result):
                result = await result
        except BadRequest as exc:
            return self._reject(exc)
        if isinstance(result, web.StreamResponse):
            return result
        return _json(result)

    # parameters ----------------------------------------------------------------------
    def _key(self, request: web.Request) -> SurfaceKey:
        q = request.query
        key = parse_key(q.get("venue", ""), q.get("currency", ""), self.known_venues())
        if isinstance(key, ApiError):
            raise BadRequest(400, key.message)
        return key

    def _entry(self, key: SurfaceKey) -> SurfaceEntry:
        entry = self.hub.store.entry(key)
        if entry is None:
            known = ", ".join(map(str, self.hub.store.keys())) or "none yet"
            raise BadRequest(404, f"no {key} surface has been received (available: {known})")
        return entry

    @staticmethod
    def _flag(request: web.Request, name: str) -> bool:
        value = request.query.get(name, "0")
        if value not in ("0", "1", "true", "false"):
            raise BadRequest(400, f"{name}={value!r}: expected 0 or 1")
        return value in ("1", "true")

    # JSON ----------------------------------------------------------------------------
    def surface_bytes(self, entry: SurfaceEntry, with_quotes: bool) -> bytes:
        cache_key = (entry.key, with_quotes)
        cached = self._surface_cache.get(cache_key)
        if cached is not None and cached[0] == entry.changed_version:
            return cached[1]
        body = _dumps(
            surface_json(
                entry.surface,
                with_quotes=with_quotes,
                sequence=entry.sequence,
                stored_time_ns=entry.stored_time_ns,
            )
        )
        self._surface_cache[cache_key] = (entry.changed_version, body)
        return body

    def overview_json(self) -> Json:
        now_ns = self.clock_ns()
        rows = []
        for entry in self.hub.store.list():
            self.rates.observe(entry.key, entry.surface.revision, now_ns)
            rate = self.rates.per_minute(entry.key, entry.surface.revision, now_ns)
            rows.append(overview_row(entry, now_ns, self.stale_after_ns, rate))
        return {
            "server_time_ns": now_ns,
            "stale_after_ms": self.stale_after_ns // 1_000_000,
            "surfaces": rows,
            "connections": None,
            "connections_note": CONNECTIONS_NOTE,
        }

    def overview_bytes(self) -> bytes:
        return self._overview_cached()[2]

    def overview_event(self) -> bytes:
        """The overview as one server-sent event, framed once and shared by every browser."""
        return self._overview_cached()[3]

    def _overview_cached(self) -> tuple[int, int, bytes, bytes]:
        now_ns = self.clock_ns()
        version = self.hub.store.version
        cached = self._overview
        if cached and cached[0] == version and now_ns - cached[1] < OVERVIEW_REUSE_NS:
            return cached
        body = _dumps(self.overview_json())
        self._overview = (version, now_ns, body, _event("overview", body))
        return self._overview

    def surface_event(self, entry: SurfaceEntry) -> bytes:
        """The surface (without quotes) as one server-sent event, framed once per publication."""
        cached = self._surface_events.get(entry.key)
        if cached is not None and cached[0] == entry.changed_version:
            return cached[1]
        framed = _event("surface", self.surface_bytes(entry, False))
        self._surface_events[entry.key] = (entry.changed_version, framed)
        return framed

    async def overview(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, lambda _: self.overview_json())

    async def surface(self, request: web.Request) -> web.StreamResponse:
        def build(req: web.Request) -> web.Response:
            entry = self._entry(self._key(req))
            body = self.surface_bytes(entry, self._flag(req, "quotes"))
            return web.Response(
                body=body, content_type="application/json", headers={"Cache-Control": "no-store"}
            )

        return await self._answer(request, build)

    async def smile(self, request: web.Request) -> web.StreamResponse:
        def build(req: web.Request) -> Json:
            key = self._key(req)
            label = parse_expiry(req.query.get("expiry", ""))
            if isinstance(label, ApiError):
                raise BadRequest(400, label.message)
            entry = self._entry(key)
            labels = [expiry_label_of(s) for s in entry.surface.slices]
            if label not in labels:
                raise BadRequest(
                    404, f"no expiry {label} in the {key} surface (expiries: {', '.join(labels)})"
                )
            expiry_slice = entry.surface.slices[labels.index(label)]
            smile = self.hub.store.smile(key, expiry_slice.expiry_time_ns)
            return {
                "venue": key.venue,
                "currency": key.currency,
                "revision": entry.surface.revision,
                "slice": slice_json(expiry_slice, label, with_quotes=True),
                "smile": None
                if smile is None
                else {
                    "forward": smile.forward_usd,
                    "event_time_ns": smile.header.event_time_ns,
                    "quotes": smile_quotes_json(smile),
                },
            }

        return await self._answer(request, build)

    def _history(self) -> SurfaceHistory:
        if self.history is None:
            raise BadRequest(503, "history needs NATS; this server has none")
        return self.history

    def _time(self, request: web.Request) -> int:
        text = request.query.get("time", "").strip()
        if not text:
            raise BadRequest(400, "time is required: RFC 3339 (2026-03-11T12:00:00Z) or ns")
        try:
            time_ns = int(text) if text.isdigit() else parse_rfc3339_ns(text)
        except (ValueError, KeyError) as exc:
            raise BadRequest(400, f"malformed time {text!r}: {exc}") from None
        now_ns = self.clock_ns()
        if time_ns > now_ns + FUTURE_TOLERANCE_NS:
            raise BadRequest(
                400,
                f"time {format_time_ns(time_ns)} is in the future "
                f"(server time {format_time_ns(now_ns)})",
            )
        return time_ns

    async def surface_at(self, request: web.Request) -> web.StreamResponse:
        async def build(req: web.Request) -> web.Response:
            key = self._key(req)
            time_ns = self._time(req)
            with_quotes = self._flag(req, "quotes")
            history = self._history()
            subject = self.subjects.surface(key.venue, key.currency)
            try:
                stored = await history.at_or_before(subject, str(key), time_ns)
            except HistoryNotFound as exc:
                archived = await self._archived(key, time_ns)
                if archived is None:
                    raise BadRequest(404, str(exc)) from None
                body = surface_json(archived, with_quotes=False)
                body["requested_time_ns"] = time_ns
                body["from_archive"] = True
                return _json(body)
            except HistoryUnavailable as exc:
                raise BadRequest(503, str(exc)) from None
            surface = surface_pb.Surface()
            try:
                surface.ParseFromString(stored.data)
            except Exception as exc:
                raise BadRequest(
                    500, f"stream sequence {stored.sequence} is not a Surface: {exc}"
                ) from None
            body = surface_json(
                surface,
                with_quotes=with_quotes,
                sequence=stored.sequence,
                stored_time_ns=stored.stored_time_ns,
            )
            body["requested_time_ns"] = time_ns
            return _json(body)

        return await self._answer(request, build)

    async def series(self, request: web.Request) -> web.StreamResponse:
        async def build(req: web.Request) -> Json:
            key = self._key(req)
            hours = _number(req, "hours", 3.0, 0.01, MAX_SERIES_HOURS)
            points = int(_number(req, "points", 60, 2, MAX_SERIES_POINTS))
            tenor_days = int(_number(req, "tenor", 30, 1, 3650))
            history = self._history()
            subject = self.subjects.surface(key.venue, key.currency)
            try:
                first = await history.first(subject)
            except HistoryUnavailable as exc:
                raise BadRequest(503, str(exc)) from None
            now_ns = self.clock_ns()
            stream_start = first.stored_time_ns if first is not None else None
            window_ns = int(hours * 3600e9)
            # Older than the stream's first message (its retention, minutes): the archive,
            # in ONE metric-history read for that whole span (what GetMetricHistory serves),
            # one point per step keyed by event time. The rest: the stream, one direct get
            # per sample instant (stored time), past samples cached.
            step_ns = series_step_ns(window_ns, points)
            archived = await self._archived_series(
                key, now_ns - window_ns, stream_start, now_ns, step_ns, tenor_days
            )
            if not archived:
                if stream_start is None:
                    step_ns = 0
                else:  # the stream alone: a span from its start, finer steps
                    span_ns = min(window_ns, max(0, now_ns - stream_start))
                    step_ns = series_step_ns(span_ns, points)
            out: list[Json] = list(archived)
            if stream_start is not None:
                # Aligned to the step, so that the same past instants recur (cache hits).
                end_ns = now_ns // step_ns * step_ns
                instants = [end_ns - i * step_ns for i in range(points - 1, -1, -1)]
                if end_ns < now_ns:  # and the latest value, however coarse the step
                    instants.append(now_ns)
                try:
                    for t_ns in instants:
                        if t_ns < stream_start:
                            continue
                        point = await self._series_point(history, key, subject, t_ns, tenor_days)
                        if point is not None:
                            out.append(point)
                except HistoryUnavailable as exc:
                    raise BadRequest(503, str(exc)) from None
            return {
                "venue": key.venue,
                "currency": key.currency,
                "tenor_days": tenor_days,
                "history_start_ns": stream_start,
                "archive_start_ns": archived[0]["time_ns"] if archived else None,
                "step_ns": step_ns or None,
                "now_ns": now_ns,
                "points": out,
            }

        return await self._answer(request, build)

    async def _archived_series(
        self,
        key: SurfaceKey,
        start_ns: int,
        stream_start_ns: int | None,
        now_ns: int,
        step_ns: int,
        tenor_days: int,
    ) -> list[Json]:
        """Archive points of the 30-day (tenor_days) metrics from start_ns to where the stream
        starts (now when it holds nothing): the last revision of each step by event time."""
        archive = self.archive
        end_ns = stream_start_ns if stream_start_ns is not None else now_ns
        if archive is None or end_ns <= start_ns:
            return []
        # Both ends on the step grid: successive requests (the page asks every 30 s) find the
        # same read in the cache, and the archive rolls its files every few minutes anyway.
        start_ns = start_ns // step_ns * step_ns
        end_grid = -(-end_ns // step_ns) * step_ns
        cache_key = (str(key), tenor_days, start_ns, end_grid, step_ns)
        cached = self._archive_series_cache.get(cache_key)
        if cached is not None and now_ns - cached[0] < ARCHIVE_SERIES_REUSE_NS:
            rows = cached[1]
        else:
            rows = await asyncio.to_thread(
                archive.metric_history,
                key.venue,
                key.currency,
                start_ns,
                end_grid,
                tenor_days=tenor_days,
            )
            rows = last_per_step(rows, start_ns, step_ns)
            self._archive_series_cache[cache_key] = (now_ns, rows)
            while len(self._archive_series_cache) > ARCHIVE_SERIES_CACHE_SIZE:
                self._archive_series_cache.pop(next(iter(self._archive_series_cache)))
        return [
            {
                "time_ns": row.event_time_ns,
                "stored_time_ns": None,
                "revision": row.revision,
                "available": True,
                "source": "archive",
                "metrics": {
                    "atm": num(row.atm_vol),
                    "rr25": num(row.rr25),
                    "bf25": num(row.bf25),
                    "rr10": num(row.rr10),
                    "bf10": num(row.bf10),
                },
            }
            for row in rows
            if row.event_time_ns < end_ns
        ]

    async def _series_point(
        self, history: SurfaceHistory, key: SurfaceKey, subject: str, t_ns: int, tenor_days: int
    ) -> Json | None:
        cache_key = (f"{subject}/{tenor_days}", t_ns)
        if cache_key in self._series_cache:
            self._series_cache.move_to_end(cache_key)
            return self._series_cache[cache_key]
        try:
            stored = await history.at_or_before(subject, str(key), t_ns)
        except HistoryNotFound:
            point: Json | None = None
        else:
            surface = surface_pb.Surface()
            try:
                surface.ParseFromString(stored.data)
            except Exception:
                return None
            tenor = next((t for t in surface.tenors if t.tenor_days == tenor_days), None)
            point = {
                "time_ns": t_ns,
                "stored_time_ns": stored.stored_time_ns,
                "revision": surface.revision,
                "available": bool(tenor and tenor.available),
                "source": "stream",
                "metrics": metrics_json(tenor.metrics) if tenor and tenor.available else None,
            }
        if t_ns < self.clock_ns() - 1_000_000_000:  # settled past only
            self._series_cache[cache_key] = point
            while len(self._series_cache) > SERIES_CACHE_SIZE:
                self._series_cache.popitem(last=False)
        return point

    async def _archived(self, key: SurfaceKey, time_ns: int) -> surface_pb.Surface | None:
        """The archive's last surface at or before ``time_ns`` (None: no archive, or none)."""
        if self.archive is None:
            return None
        return await asyncio.to_thread(self.archive.surface_at, key.venue, key.currency, time_ns)

    # push ----------------------------------------------------------------------------
    def _push_key(self, request: web.Request) -> SurfaceKey | None:
        q = request.query
        if not q.get("venue") and not q.get("currency"):
            return None
        return self._key(request)

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            if self.token:
                ticket = request.query.get("ticket", "")
                if not ticket:
                    raise BadRequest(
                        401, "the push channel needs a ticket: POST /api/dashboard/ticket first"
                    )
                if not self.tickets.redeem(ticket, time.monotonic()):
                    raise BadRequest(401, "ticket unknown, used or expired: ask for a new one")
            key = self._push_key(request)
            if self.hub.closed.is_set():
                raise BadRequest(503, "server is shutting down")
        except BadRequest as exc:
            return self._reject(exc)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, self.options.socket_send_buffer
                )
        await response.prepare(request)
        # Woken only by the followed surface's changes: the overview goes on its own clock.
        sub = self.hub.subscribe(key) if key is not None else self.hub.subscribe(NO_SURFACE)
        self._subscriptions.add(sub)
        self.push.active += 1
        self.push.opened += 1
        self._count_push()
        try:
            await self._push_loop(response, sub, key)
        except (ConnectionResetError, ConnectionError, asyncio.CancelledError):
            pass
        except TimeoutError:
            # Reset, not close: a close would wait for the unsent buffer to drain (forever),
            # and the kernel would keep the orphaned socket's buffers retrying.
            transport = request.transport
            if transport is not None:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                transport.abort()
            self.push.stalled_closed += 1
            if self._metrics is not None:
                self._m_stalled.add()
            log.info(
                "dashboard push: a browser took no data for %.0fs; closed",
                self.options.write_timeout_s,
            )
        finally:
            self.hub.unsubscribe(sub)
            self._subscriptions.discard(sub)
            self.push.active -= 1
            self._count_push()
        return response

    async def _push_loop(
        self, response: web.StreamResponse, sub: Any, key: SurfaceKey | None
    ) -> None:
        """Latest state only: the chosen surface when it changed (at most every
        min_push_interval_s), the overview when anything changed (checked every
        overview_interval_s), both in one write; a keep-alive comment when idle.

        Cheap per browser, beside the gRPC streams: woken only by its own surface's
        publications (not by every surface's), the events framed once per publication and
        shared, and the write push_delay_s after the change, so that the gRPC streams'
        fan-out of the same publication goes first."""
        opts = self.options
        surface_version = -1  # changed_version of the surface last sent
        overview_version = -1  # store version of the overview last sent
        overview_due = surface_sent = last_write = time.monotonic()
        surface_sent -= opts.min_push_interval_s
        while not (self.hub.closed.is_set() or self.closed):
            sub.changed.clear()  # before reading: a change during the write wakes us again
            store = self.hub.store
            now = time.monotonic()
            parts: list[bytes] = []
            if now >= overview_due:
                if store.version != overview_version:
                    parts.append(self.overview_event())
                    overview_version = store.version
                overview_due = now + opts.overview_interval_s
            entry = store.entry(key) if key is not None else None
            if entry is not None and entry.changed_version != surface_version:
                parts.append(self.surface_event(entry))
                surface_version = entry.changed_version
                surface_sent = now
            if not parts and now - last_write >= opts.heartbeat_s:
                parts.append(b": keep-alive\n\n")
            if parts:
                async with asyncio.timeout(opts.write_timeout_s):
                    await response.write(parts[0] if len(parts) == 1 else b"".join(parts))
                last_write = now
                events = len(parts) - (parts[-1] == b": keep-alive\n\n")
                self.push.messages += events
                if self._metrics is not None and events:
                    self._m_messages.add(events)
            # Until this surface changes, the overview falls due or the heartbeat.
            timeout = max(0.0, min(overview_due, last_write + opts.heartbeat_s) - now)
            if await _wait(sub.changed, timeout):
                now = time.monotonic()
                wait_s = max(opts.push_delay_s, surface_sent + opts.min_push_interval_s - now)
                if wait_s > 0:
                    await asyncio.sleep(wait_s)


def _event(name: str, data: bytes) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


async def _wait(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether event was set within timeout_s (asyncio.timeout: no task per call)."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


# Series steps, so that sample instants fall on round times and recur between requests.
NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800)


def series_step_ns(span_ns: int, points: int) -> int:
    """The smallest nice step that covers span_ns in points - 1 steps."""
    want_s = span_ns / 1e9 / max(1, points - 1)
    for step_s in NICE_STEPS_S:
        if step_s >= want_s:
            return step_s * 1_000_000_000
    return int(want_s * 1e9)


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(400, f"{name}={text!r} is not a number") from None
    if not low <= value <= high:
        raise BadRequest(400, f"{name}={text!r} is outside [{low:g}, {high:g}]")
    return value
