"""The venue-independent body of a venue connector (:class:`PooledConnector`): instrument
discovery and refresh, channel groups spread over a pool of :class:`WsConnection`. Does I/O."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from svc_connector.kit.pacing import TokenBucket
from svc_connector.kit.subscriptions import ChannelAllocator, diff_symbols
from svc_connector.runtime.connection import WsConnection
from svc_connector.runtime.settings import ConnectionPlan, RuntimeSettings, option_float
from svc_connector.venues.base import (
    EventSink,
    FrameResult,
    InstrumentParseResult,
    InstrumentStateChange,
    ResubscribeRequest,
    VenueSession,
)
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb


class DiscoveryFailed(Exception):
    """A refresh could not fetch a complete instrument list (nothing is delisted then)."""


# ConnectorConfig.venue_options key read by every PooledConnector (seconds, default 5).
EARLY_REFRESH_SPACING_OPTION = "early_refresh_spacing_s"


# Venue words for an instrument that trades (OKX "live", Bybit "Trading", ...).
ACTIVE_STATES = frozenset({"live", "open", "trading", "started", "created"})


class PooledConnector:
    """The venue-independent body of a :class:`VenueConnector` (subclassed per venue).

    Discovers instruments (:meth:`fetch_instruments`), refreshes them every
    ``instrument_refresh_s`` (or at once after :meth:`request_refresh`), emits an
    ``InstrumentSet`` per currency with listed/delisted symbols, and spreads the channel
    groups of :meth:`plan_groups` over connections, one :class:`ChannelAllocator` per route
    (:meth:`route_of`; each route has its own URL and :class:`ConnectionPlan`): listings are
    subscribed and expiries unsubscribed without restarting anything. Connection attempts
    pass a shared gate (``connects_per_second``, the venue's per-IP limit).
    """

    def __init__(
        self,
        settings: RuntimeSettings,
        sink: EventSink,
        *,
        connects_per_second: float | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.venue = settings.venue
        self.source = f"connector.{settings.venue}"
        self.log = logging.getLogger(f"svc_connector.{settings.venue}")
        self.allocators: dict[str, ChannelAllocator] = {}
        self.connections: list[WsConnection] = []
        self._route_connections: dict[str, list[WsConnection]] = {}
        self.instruments: dict[str, dict[str, md_pb.Instrument]] = {}
        self.refreshes = 0
        self.last_refresh_ok_ns = 0
        # Seeded from the wall clock so that a restarted connector never reuses a
        # (source, sequence) pair (Nats-Msg-Id dedupe would drop the new events). A C counter:
        # every event takes one, and a Python method per call cost ~0.1 us an event.
        self.next_sequence: Callable[[], int] = itertools.count(time.time_ns() + 1).__next__
        self._tasks: list[asyncio.Task[None]] = []
        # InstrumentSets of withdrawn instruments on their way to the sink.
        self._emits: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._refresh_now = asyncio.Event()
        self._last_refresh_monotonic = -math.inf
        # Venue option: the least time between an early refresh and the previous one.
        self._early_refresh_spacing_s = option_float(
            settings.options, EARLY_REFRESH_SPACING_OPTION, 5.0
        )
        self._connect_bucket = (
            TokenBucket(connects_per_second, 1.0, time.monotonic()) if connects_per_second else None
        )
        self._connect_lock = asyncio.Lock()
        # The REST session while run() is running (venues that fetch more than instruments).
        self.http: aiohttp.ClientSession | None = None

    # ---- what a venue provides ----------------------------------------------------------------

    def new_session(self) -> VenueSession:
        raise NotImplementedError

    def plan_groups(self, instruments: Sequence[md_pb.Instrument]) -> dict[str, tuple[str, ...]]:
        """Channel groups to subscribe: group key -> channels that stay on one connection."""
        raise NotImplementedError

    def route_of(self, group_key: str) -> str:
        """Which route (URL) a group's connection uses; one route by default."""
        return ""

    def connection_plan(self, route: str) -> ConnectionPlan:
        raise NotImplementedError

    async def fetch_instruments(
        self, http: aiohttp.ClientSession
    ) -> tuple[list[md_pb.Instrument], int]:
        """Every instrument of the configured currencies and the venue time; DiscoveryFailed."""
        raise NotImplementedError

    def book_channels(self, symbols: Iterable[str]) -> set[str]:
        """The book channels of ``symbols`` (what :meth:`resync_books` resubscribes)."""
        return set()

    def on_resubscribe(self, conn: WsConnection, request: ResubscribeRequest) -> bool:
        """A session asked for a resync; True if handled here (default: resubscribe)."""
        return False

    def currency_of(self, symbol: str) -> str | None:
        """The coin of a venue symbol (for instrument-state news); None: not followed."""
        return None

    def on_result(self, conn: WsConnection, result: FrameResult) -> None:
        """Every frame's result after the connection handled it: instrument-state news of a
        followed currency (a listing, or a known instrument changing state) refreshes the
        instruments early."""
        if not result.instrument_states:  # nearly every frame: no listcomp for them
            return
        news = [change for change in result.instrument_states if self._is_news(change)]
        if news:
            closed = [c for c in news if c.state.lower() not in ACTIVE_STATES]
            if closed:
                self.withdraw(closed)
            self.request_refresh(f"{news[0].symbol} is {news[0].state} (+{len(news) - 1} more)")

    def withdraw(self, changes: Sequence[InstrumentStateChange]) -> None:
        """Known instruments that are no longer open (locked, halted, suspended, ...) leave
        at once, before any refresh: a new InstrumentSet without them (delisted_symbols)
        goes out, and their channels are unsubscribed. A later refresh lists them again
        when the venue reopens them."""
        gone: dict[str, list[str]] = {}
        for change in changes:
            currency = self.currency_of(change.symbol)
            known = self.instruments.get(currency or "", {})
            if currency is not None and known.pop(change.symbol, None) is not None:
                gone.setdefault(currency, []).append(change.symbol)
        if not gone:
            return
        now_ns = time.time_ns()
        for currency, symbols in gone.items():
            current = self.instruments[currency]
            instrument_set = md_pb.InstrumentSet(
                header=common_pb.EventHeader(
                    event_time_ns=now_ns,
                    receive_time_ns=now_ns,
                    source=self.source,
                    sequence=self.next_sequence(),
                ),
                venue=self.venue,
                currency=currency,
                instruments=[current[symbol] for symbol in sorted(current)],
                delisted_symbols=sorted(symbols),
            )
            self.sink.count("discovery.withdrawn", len(symbols))
            task = asyncio.get_running_loop().create_task(
                self.sink.emit(
                    currency, "instrument", md_pb.MarketDataEvent(instrument_set=instrument_set)
                )
            )
            self._emits.add(task)
            task.add_done_callback(self._emits.discard)
        self._apply_plan()
        for conn in self.connections:
            conn.reconcile()

    def _is_news(self, change: InstrumentStateChange) -> bool:
        currency = self.currency_of(change.symbol)
        if currency not in self.settings.currencies:
            return False
        known = self.instruments.get(currency, {}).get(change.symbol)
        is_active = change.state.lower() in ACTIVE_STATES
        return known is None or known.is_active != is_active

    # ---- VenueConnector -----------------------------------------------------------------------

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.rest_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                self.http = http
                await self._discover_forever(http)
        finally:
            self.http = None
            await self._stop_connections()

    async def stop(self) -> None:
        self._stopping.set()
        self._refresh_now.set()
        await self._stop_connections()

    def resync_books(self, symbols: Iterable[str]) -> int:
        """Resubscribe these books so that the venue sends fresh snapshots."""
        wanted = self.book_channels(symbols)
        asked = sum(conn.resubscribe(wanted) for conn in self.connections)
        if asked:
            self.sink.count("book.resync_requested", asked)
        return asked

    def status(self) -> Mapping[str, Any]:
        return {
            "venue": self.venue,
            "connections": [conn.status() for conn in self.connections],
            "instruments": {ccy: len(items) for ccy, items in self.instruments.items()},
            "refreshes": self.refreshes,
            "last_refresh_ok_ns": self.last_refresh_ok_ns,
            "channel_loads": {route: a.loads() for route, a in sorted(self.allocators.items())},
        }

    def request_refresh(self, reason: str) -> None:
        """Refresh instruments soon (spaced from the previous refresh), e.g. on a listing."""
        self.log.info("%s: refreshing instruments early: %s", self.venue, reason)
        self.sink.count("discovery.early_refresh")
        self._refresh_now.set()

    # ---- discovery ---------------------------------------------------------------------------

    async def _discover_forever(self, http: aiohttp.ClientSession) -> None:
        # Channels that need no discovery (indices, families) start at once.
        self._apply_plan()
        failures = 0
        while not self._stopping.is_set():
            try:
                await self.refresh_instruments(http)
                failures = 0
                wait = self.settings.instrument_refresh_s
            except Exception as exc:
                # Keep the previous instrument set (nothing is delisted) and retry sooner.
                failures += 1
                wait = min(
                    self.settings.instrument_refresh_s,
                    self.settings.reconnect_initial_s * 2 ** min(failures, 16),
                    self.settings.reconnect_max_s,
                )
                self.log.warning(
                    "%s: instrument refresh failed (%s: %s); retrying in %.1fs",
                    self.venue,
                    type(exc).__name__,
                    exc,
                    wait,
                    extra={"venue": self.venue},
                )
                self.sink.count("discovery.failed")
            await self._wait_for_refresh(wait)

    async def _wait_for_refresh(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refresh_now.wait(), seconds)
        if self._refresh_now.is_set() and not self._stopping.is_set():
            # An early refresh: keep refreshes spaced out.
            spacing = self._early_refresh_spacing_s - (
                time.monotonic() - self._last_refresh_monotonic
            )
            if spacing > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), spacing)
        self._refresh_now.clear()

    async def get(
        self, http: aiohttp.ClientSession, url: str, params: Mapping[str, str]
    ) -> tuple[int, bytes, int]:
        """GET ``url``: (HTTP status, body, receive time ns); DiscoveryFailed on I/O errors."""
        try:
            async with http.get(url, params=dict(params)) as response:
                body = await response.read()
                return response.status, body, time.time_ns()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DiscoveryFailed(f"GET {url} {params}: {type(exc).__name__}: {exc}") from exc

    async def absorb(self, parsed: InstrumentParseResult, status: int, what: str) -> None:
        """Count a parsed REST body and dead-letter its bad entries; DiscoveryFailed when the
        venue reported an error or nothing readable came back."""
        for name, value in parsed.counts.items():
            self.sink.count(f"discovery.{name}", value)
        for dead in parsed.dead_letters:
            self.sink.count("dead_letters")
            await self.sink.dead_letter(dead.raw, dead.reason)
        if parsed.venue_errors or status != 200:
            error = parsed.venue_errors[0] if parsed.venue_errors else None
            detail = f"{error.code} {error.message}" if error else f"HTTP {status}"
            raise DiscoveryFailed(f"{what}: {detail}")
        if not parsed.instruments and parsed.dead_letters:
            raise DiscoveryFailed(f"{what}: unreadable body")

    async def refresh_instruments(self, http: aiohttp.ClientSession) -> None:
        """Fetch, emit InstrumentSets with listings/delistings, update subscriptions."""
        self._last_refresh_monotonic = time.monotonic()
        instruments, venue_time_ns = await self.fetch_instruments(http)
        receive_ns = time.time_ns()
        by_currency: dict[str, dict[str, md_pb.Instrument]] = {
            ccy: {} for ccy in self.settings.currencies
        }
        for instrument in instruments:
            if instrument.currency in by_currency:
                by_currency[instrument.currency][instrument.symbol] = instrument
        for currency, current in by_currency.items():
            previous = self.instruments.get(currency, {})
            listed, delisted = diff_symbols(previous, current)
            instrument_set = md_pb.InstrumentSet(
                header=common_pb.EventHeader(
                    event_time_ns=venue_time_ns or receive_ns,
                    receive_time_ns=receive_ns,
                    source=self.source,
                    sequence=self.next_sequence(),
                ),
                venue=self.venue,
                currency=currency,
                instruments=[current[symbol] for symbol in sorted(current)],
                listed_symbols=listed,
                delisted_symbols=delisted,
            )
            if listed or delisted:
                self.log.info(
                    "%s %s: %d instruments, %d listed, %d delisted",
                    self.venue,
                    currency,
                    len(current),
                    len(listed),
                    len(delisted),
                    extra={"venue": self.venue, "currency": currency},
                )
            self.sink.count("discovery.listed", len(listed))
            self.sink.count("discovery.delisted", len(delisted))
            await self.sink.emit(
                currency, "instrument", md_pb.MarketDataEvent(instrument_set=instrument_set)
            )
        self.instruments = by_currency
        self.refreshes += 1
        self.last_refresh_ok_ns = receive_ns
        self._apply_plan()
        for conn in self.connections:
            conn.reconcile()

    # ---- subscriptions -----------------------------------------------------------------------

    def all_instruments(self) -> list[md_pb.Instrument]:
        return [i for items in self.instruments.values() for i in items.values()]

    def _apply_plan(self) -> None:
        instruments = self.all_instruments()
        by_route: dict[str, dict[str, tuple[str, ...]]] = {}
        for key, channels in self.plan_groups(instruments).items():
            by_route.setdefault(self.route_of(key), {})[key] = channels
        for route in self.allocators:
            by_route.setdefault(route, {})  # a route whose groups all went away
        for route, groups in sorted(by_route.items()):
            allocator = self.allocators.get(route)
            if allocator is None:
                if not groups:
                    continue
                allocator = ChannelAllocator(
                    self.settings.max_channels_per_connection, self.settings.max_connections
                )
                self.allocators[route] = allocator
            diff = allocator.update(groups)
            if diff.over_budget:
                self.log.warning(
                    "%s: %d channels beyond the per-connection budget (connection cap %d)",
                    self.venue,
                    diff.over_budget,
                    self.settings.max_connections,
                    extra={"venue": self.venue, "route": route},
                )
                self.sink.count("plan.over_budget", diff.over_budget)
            conns = self._route_connections.setdefault(route, [])
            while len(conns) < diff.connections:
                conns.append(self._start_connection(route, len(conns)))
            for index, change in sorted(diff.per_connection.items()):
                if change.unsubscribe:
                    conns[index].remove(change.unsubscribe)
                if change.subscribe:
                    conns[index].add(change.subscribe)
        for conn in self.connections:
            conn.session.set_instruments(instruments)

    def _start_connection(self, route: str, index: int) -> WsConnection:
        name = f"{route}{index}" if route else str(index)
        conn = WsConnection(
            name,
            self.settings,
            self.connection_plan(route),
            self.sink,
            self.new_session(),
            connect_gate=self._connect_gate if self._connect_bucket is not None else None,
            on_resubscribe=self.on_resubscribe,
            on_result=self.on_result,
        )
        conn.session.set_instruments(self.all_instruments())
        self.connections.append(conn)
        self._tasks.append(
            asyncio.create_task(conn.run(), name=f"{self.venue}-ws-{name}"),
        )
        self.sink.count("plan.connections")
        return conn

    async def _connect_gate(self) -> None:
        bucket = self._connect_bucket
        if bucket is None:
            return
        async with self._connect_lock:
            wait = bucket.wait_time(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
            bucket.take(time.monotonic())

    async def _stop_connections(self) -> None:
        for conn in self.connections:
            await conn.stop()
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
