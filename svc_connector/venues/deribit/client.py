"""Deribit I/O: REST instrument discovery and websocket connections.

- :class:`DeribitConnection`: one websocket. Connects, sets the venue heartbeat, answers
  ``test_request`` with ``public/test``, subscribes its channels in batches at a paced rate,
  resubscribes a single book on a sequence gap, reconnects with exponential backoff and
  jitter (tenacity; unlimited attempts, capped wait) and resubscribes everything after a
  reconnect. A watchdog reconnects a connection that stays silent. Every state change is
  logged and counted. Bad input never ends it; only :meth:`stop` does.
- :class:`DeribitConnector`: the :class:`~svc_connector.venues.base.VenueConnector`.
  Discovers instruments over REST (options and futures of each configured currency),
  refreshes them periodically (and early on ``instrument.state`` notifications), emits an
  ``InstrumentSet`` per currency with listed/delisted symbols, and spreads channel groups
  over connections (:class:`~svc_connector.session.ChannelAllocator`): new listings are
  subscribed and expired instruments unsubscribed without restarting anything.
- :func:`plan_channel_groups`: pure subscription planning.

Venue options read from ``ConnectorConfig.venue_options`` (see ``constants.OPTION_*``):
``book_interval`` ("100ms"), ``ticker_interval`` ("100ms"), ``future_tickers`` ("true"),
``usdc_linear`` ("false"), ``instrument_state`` ("true"), ``early_refresh_spacing_s`` ("5"),
``min_heartbeat_interval_s`` ("10"; only the simulator accepts less).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from svc_connector.runtime import (
    frame_outcome,
)
from svc_connector.session import (
    ChannelAllocator,
    ConnectionStateMachine,
    TokenBucket,
    batched,
    diff_symbols,
)
from svc_connector.venues.base import (
    ConnectionState,
    ConnectorConfig,
    EventSink,
    FrameResult,
    InstrumentStateChange,
    NormalisedEvent,
)
from svc_connector.venues.deribit import constants as c
from svc_connector.venues.deribit.parse import DeribitSession, parse_instruments
from svc_connector.venues.deribit.symbols import index_name
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

log = logging.getLogger("svc_connector.deribit")

_TRUE = {"1", "true", "yes", "on"}


def _flag(options: Mapping[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    return default if value is None else value.strip().lower() in _TRUE


@dataclass(frozen=True, slots=True)
class DeribitSettings:
    """A :class:`ConnectorConfig` resolved against Deribit's defaults."""

    ws_url: str
    rest_url: str
    currencies: tuple[str, ...]
    max_channels_per_connection: int
    max_connections: int
    channels_per_request: int
    subscribe_requests_per_second: float
    heartbeat_interval_s: float
    watchdog_timeout_s: float
    reconnect_initial_s: float
    reconnect_max_s: float
    stable_after_s: float
    instrument_refresh_s: float
    rest_timeout_s: float
    resync_timeout_s: float
    book_interval: str
    ticker_interval: str
    future_tickers: bool
    usdc_linear: bool
    instrument_state: bool
    early_refresh_spacing_s: float

    @classmethod
    def from_config(cls, config: ConnectorConfig) -> DeribitSettings:
        limits = c.LIMITS
        endpoints = config.endpoints or c.ENDPOINTS.get(config.environment)
        if endpoints is None:
            raise ValueError(f"deribit: unknown environment {config.environment!r}")
        options = config.venue_options
        min_heartbeat = float(options.get(c.OPTION_MIN_HEARTBEAT, c.MIN_HEARTBEAT_INTERVAL_S))
        heartbeat = max(min_heartbeat, config.heartbeat_interval_s or limits.heartbeat_interval_s)
        max_connections = min(
            limits.max_connections_per_ip, config.max_connections or limits.default_max_connections
        )
        return cls(
            ws_url=endpoints.ws_url,
            rest_url=endpoints.rest_url.rstrip("/"),
            currencies=tuple(dict.fromkeys(ccy.upper() for ccy in config.currencies)),
            max_channels_per_connection=config.max_channels_per_connection
            or limits.max_channels_per_connection,
            max_connections=max_connections,
            channels_per_request=config.channels_per_subscribe_request
            or limits.channels_per_subscribe_request,
            subscribe_requests_per_second=config.subscribe_requests_per_second
            or limits.subscribe_requests_per_second,
            heartbeat_interval_s=heartbeat,
            # The venue sends a heartbeat every interval: three missed ones mean a dead link.
            watchdog_timeout_s=config.watchdog_timeout_s or 3 * heartbeat,
            reconnect_initial_s=config.reconnect_initial_s,
            reconnect_max_s=config.reconnect_max_s,
            stable_after_s=config.stable_after_s,
            instrument_refresh_s=config.instrument_refresh_s,
            rest_timeout_s=config.rest_timeout_s,
            resync_timeout_s=config.resync_timeout_s,
            book_interval=options.get(c.OPTION_BOOK_INTERVAL, c.DEFAULT_INTERVAL),
            ticker_interval=options.get(c.OPTION_TICKER_INTERVAL, c.DEFAULT_INTERVAL),
            future_tickers=_flag(options, c.OPTION_FUTURE_TICKERS, True),
            usdc_linear=_flag(options, c.OPTION_USDC_LINEAR, False),
            instrument_state=_flag(options, c.OPTION_INSTRUMENT_STATE, True),
            early_refresh_spacing_s=float(options.get(c.OPTION_EARLY_REFRESH_SPACING, 5.0)),
        )


# ---------------------------------------------------------------------------------------------
# planning (pure)
# ---------------------------------------------------------------------------------------------


def index_channels(currency: str) -> tuple[str, ...]:
    name = index_name(currency)
    return (
        c.PRICE_INDEX_CHANNEL.format(index=name),
        c.VOLATILITY_INDEX_CHANNEL.format(index=name),
    )


def book_channel(symbol: str, interval: str) -> str:
    return c.BOOK_CHANNEL.format(inst=symbol, interval=interval)


def ticker_channel(symbol: str, interval: str) -> str:
    return c.TICKER_CHANNEL.format(inst=symbol, interval=interval)


def plan_channel_groups(
    instruments: Iterable[md_pb.Instrument], settings: DeribitSettings
) -> dict[str, tuple[str, ...]]:
    """Channel groups to subscribe: group key -> channels that stay on one connection.

    Per currency: price index + DVOL (and ``instrument.state.any.{ccy}`` when enabled); per
    active option: book + ticker; per active future/perpetual: ticker (when enabled).
    """
    groups: dict[str, tuple[str, ...]] = {}
    for currency in settings.currencies:
        groups[f"index:{currency}"] = index_channels(currency)
        if settings.instrument_state:
            groups[f"state:{currency}"] = (
                c.INSTRUMENT_STATE_CHANNEL.format(kind="any", currency=currency.lower()),
            )
    wanted = set(settings.currencies)
    for instrument in instruments:
        if not instrument.is_active or instrument.currency not in wanted:
            continue
        symbol = instrument.symbol
        if instrument.kind == md_pb.INSTRUMENT_KIND_OPTION:
            groups[symbol] = (
                book_channel(symbol, settings.book_interval),
                ticker_channel(symbol, settings.ticker_interval),
            )
        elif settings.future_tickers and instrument.kind in (
            md_pb.INSTRUMENT_KIND_FUTURE,
            md_pb.INSTRUMENT_KIND_PERPETUAL,
        ):
            groups[symbol] = (ticker_channel(symbol, settings.ticker_interval),)
    return groups


# ---------------------------------------------------------------------------------------------
# one websocket
# ---------------------------------------------------------------------------------------------


class WatchdogTimeout(Exception):
    """Nothing arrived for the watchdog period: the connection is treated as dead."""


class ConnectionEnded(Exception):
    """The venue closed a connection that had not been up long enough to reset the backoff."""


@dataclass(frozen=True, slots=True)
class _Command:
    action: Literal["subscribe", "unsubscribe", "resubscribe"]
    channels: tuple[str, ...]


class DeribitConnection:
    """One websocket connection carrying a set of channels (see module docstring)."""

    def __init__(
        self,
        index: int,
        settings: DeribitSettings,
        sink: EventSink,
        session: DeribitSession,
        on_instrument_state: Callable[[InstrumentStateChange], None] | None = None,
    ) -> None:
        self.index = index
        self.settings = settings
        self.sink = sink
        self.session = session
        self._on_instrument_state = on_instrument_state
        self.desired: set[str] = set()
        self.confirmed: set[str] = set()
        self.state_machine = ConnectionStateMachine()
        self.connects = 0
        self.last_receive_ns = 0
        self._stopping = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._commands: asyncio.Queue[_Command] | None = None
        self._awaiting_subscribe_acks = 0
        self._initial_flush_done = False
        self._watchdog_fired = False
        self._last_receive_monotonic = 0.0

    @property
    def state(self) -> ConnectionState:
        return self.state_machine.state

    # ---- channel set (callable any time) ------------------------------------------------------

    def add(self, channels: Iterable[str]) -> None:
        new = [ch for ch in channels if ch not in self.desired]
        self.desired.update(new)
        if new:
            self._enqueue(_Command("subscribe", tuple(new)))

    def remove(self, channels: Iterable[str]) -> None:
        gone = [ch for ch in channels if ch in self.desired]
        self.desired.difference_update(gone)
        if gone:
            self._enqueue(_Command("unsubscribe", tuple(gone)))

    def reconcile(self) -> int:
        """Subscribe again what the venue has not confirmed (e.g. after a venue error)."""
        missing = sorted(self.desired - self.confirmed)
        if missing and self.state == ConnectionState.LIVE:
            self._enqueue(_Command("subscribe", tuple(missing)))
            return len(missing)
        return 0

    def _enqueue(self, command: _Command) -> None:
        # Without a live socket the command is implied by `desired` at the next connect.
        if self._commands is not None:
            self._commands.put_nowait(command)

    # ---- lifecycle ------------------------------------------------------------------------------

    async def stop(self) -> None:
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def run(self) -> None:
        """Connect and serve until :meth:`stop`, reconnecting forever with capped backoff."""
        s = self.settings
        while not self._stopping.is_set():
            retrying = AsyncRetrying(
                # reconnect_initial_s * 2**(attempt - 1) + U(0, reconnect_initial_s), capped.
                wait=wait_exponential_jitter(
                    multiplier=s.reconnect_initial_s,
                    max=s.reconnect_max_s,
                    jitter=s.reconnect_initial_s,
                ),
                retry=retry_if_exception_type(Exception),
                before_sleep=self._before_sleep,
                sleep=self._sleep_unless_stopping,
                reraise=True,
            )
            # A normal return means "stopping" or "a stable connection ended": a fresh
            # AsyncRetrying then restarts the backoff from its initial wait.
            await retrying(self._connect_and_serve)
        self._transition(ConnectionState.STOPPED, "stop requested")

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        self._transition(
            ConnectionState.BACKING_OFF,
            f"attempt {retry_state.attempt_number} failed ({type(error).__name__}: {error}); "
            f"retrying in {wait:.2f}s",
        )
        self.sink.count("connection.reconnect")

    def _transition(self, new: ConnectionState, reason: str) -> None:
        change = self.state_machine.transition(new, reason)
        if change is None:
            return
        log.info(
            "deribit connection %d: %s -> %s (%s)",
            self.index,
            change.previous.value,
            change.current.value,
            reason,
            extra={"venue": c.VENUE, "connection": self.index, "state": change.current.value},
        )
        self.sink.count(f"connection.state.{change.current.value}")

    async def _connect_and_serve(self) -> None:
        if self._stopping.is_set():
            return
        self._transition(ConnectionState.CONNECTING, f"connecting to {self.settings.ws_url}")
        started = time.monotonic()
        async with connect(
            self.settings.ws_url,
            open_timeout=self.settings.rest_timeout_s,
            max_size=16 * 2**20,
            close_timeout=2,
        ) as ws:
            self.connects += 1
            self.sink.count("connection.connected")
            self._ws = ws
            self._commands = asyncio.Queue()
            self.session.on_connected()
            self.confirmed.clear()
            self._awaiting_subscribe_acks = 0
            self._initial_flush_done = False
            self._watchdog_fired = False
            self._last_receive_monotonic = time.monotonic()
            self._transition(ConnectionState.SUBSCRIBING, f"connected (#{self.connects})")
            started = time.monotonic()
            await ws.send(self.session.set_heartbeat(self.settings.heartbeat_interval_s))
            if self.desired:
                self._commands.put_nowait(_Command("subscribe", tuple(sorted(self.desired))))
            writer = asyncio.create_task(self._write_commands(ws, self._commands))
            watchdog = asyncio.create_task(self._watch(ws))
            try:
                # Ends normally on a clean close (venue, stop() or the watchdog), raises on an
                # abnormal one.
                async for frame in ws:
                    await self._handle(ws, frame)
            except ConnectionClosed:
                if not (self._stopping.is_set() or self._watchdog_fired):
                    raise
            finally:
                for task in (writer, watchdog):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                self._ws = None
                self._commands = None
        if self._stopping.is_set():
            return
        if self._watchdog_fired:
            raise WatchdogTimeout(f"nothing received for {self.settings.watchdog_timeout_s:.1f}s")
        uptime = time.monotonic() - started
        if uptime >= self.settings.stable_after_s:
            self._transition(ConnectionState.BACKING_OFF, f"closed after {uptime:.0f}s up")
            return
        raise ConnectionEnded(f"closed by the venue after {uptime:.1f}s")

    async def _watch(self, ws: ClientConnection) -> None:
        """Close a connection that has been silent for the watchdog period."""
        timeout = self.settings.watchdog_timeout_s
        period = min(1.0, timeout / 4)
        while True:
            await asyncio.sleep(period)
            silent = time.monotonic() - self._last_receive_monotonic
            if silent >= timeout:
                self._watchdog_fired = True
                self.sink.count("connection.watchdog_timeout")
                log.warning(
                    "deribit connection %d: silent for %.1fs, reconnecting",
                    self.index,
                    silent,
                    extra={"venue": c.VENUE, "connection": self.index},
                )
                await ws.close(code=4000, reason="watchdog: connection silent")
                return

    async def _handle(self, ws: ClientConnection, frame: str | bytes) -> None:
        receive_ns = time.time_ns()
        self.last_receive_ns = receive_ns
        self._last_receive_monotonic = time.monotonic()
        result = self.session.on_frame(frame, receive_ns)
        result.counts[frame_outcome(result)] += 1
        for reply in result.replies:
            # Keep-alive answers go out at once, never behind paced subscribes.
            await ws.send(self.session.encode(reply))
        for name, value in result.counts.items():
            self.sink.count(name, value)
        await self._deliver(result.events)
        for dead in result.dead_letters:
            log.warning(
                "deribit connection %d: dead letter: %s",
                self.index,
                dead.reason,
                extra={"venue": c.VENUE, "connection": self.index},
            )
            self.sink.count("dead_letters")
            try:
                await self.sink.dead_letter(dead.raw, dead.reason)
            except Exception:
                log.exception("deribit: sink failed to take a dead letter")
                self.sink.count("sink_error")
        self._apply_acks(result)
        for resubscribe in result.resubscribes:
            log.info(
                "deribit connection %d: resubscribing %s: %s",
                self.index,
                resubscribe.channel,
                resubscribe.reason,
                extra={"venue": c.VENUE, "connection": self.index, "symbol": resubscribe.symbol},
            )
            self.sink.count("book.resubscribe")
            if resubscribe.channel in self.desired:
                self._enqueue(_Command("resubscribe", (resubscribe.channel,)))
        if self._on_instrument_state is not None:
            for change in result.instrument_states:
                self._on_instrument_state(change)
        self._maybe_live()

    async def _deliver(self, events: list[NormalisedEvent]) -> None:
        for event in events:
            try:
                await self.sink.emit(event.currency, event.kind, event.event)
            except Exception:
                log.exception("deribit: sink failed to take an event")
                self.sink.count("sink_error")

    def _apply_acks(self, result: FrameResult) -> None:
        self.confirmed.update(result.subscribed)
        self.confirmed.difference_update(result.unsubscribed)
        for ack in result.acks:
            if ack.method == c.SUBSCRIBE:
                self._awaiting_subscribe_acks -= 1
        for error in result.venue_errors:
            log.warning(
                "deribit connection %d: venue error %s %s (request %s %s, %d channels)",
                self.index,
                error.code,
                error.message,
                error.request_id,
                error.method,
                len(error.channels),
                extra={"venue": c.VENUE, "connection": self.index, "code": error.code},
            )
            self.sink.count(f"venue_error.{error.code or 'unknown'}")
            if error.method == c.SUBSCRIBE:
                # Left unconfirmed: reconcile() asks again at the next refresh.
                self._awaiting_subscribe_acks -= 1

    def _maybe_live(self) -> None:
        if (
            self.state == ConnectionState.SUBSCRIBING
            and self._initial_flush_done
            and self._awaiting_subscribe_acks <= 0
        ):
            self._transition(
                ConnectionState.LIVE,
                f"{len(self.confirmed)}/{len(self.desired)} channels confirmed",
            )

    async def _write_commands(self, ws: ClientConnection, queue: asyncio.Queue[_Command]) -> None:
        try:
            await self._write_loop(ws, queue)
        except ConnectionClosed:
            pass  # the reader sees the close too
        except Exception:
            # A writer bug must not leave a connection that never subscribes: start over.
            log.exception("deribit connection %d: writer failed", self.index)
            self.sink.count("connection.writer_error")
            await ws.close(code=1011, reason="writer failed")

    async def _write_loop(self, ws: ClientConnection, queue: asyncio.Queue[_Command]) -> None:
        bucket = TokenBucket(self.settings.subscribe_requests_per_second, 1.0, time.monotonic())
        while True:
            if queue.empty() and not self._initial_flush_done:
                self._initial_flush_done = True
                self._maybe_live()
            command = await queue.get()
            commands = [command]
            while not queue.empty():
                commands.append(queue.get_nowait())
            for text, is_subscribe in self._encode_commands(commands):
                wait = bucket.wait_time(time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
                bucket.take(time.monotonic())
                await ws.send(text)
                self.sink.count("requests.sent")
                if is_subscribe:
                    self._awaiting_subscribe_acks += 1

    def _encode_commands(self, commands: list[_Command]) -> list[tuple[str, bool]]:
        """Coalesce queued commands into batched requests (order-preserving per channel)."""
        out: list[tuple[str, bool]] = []
        subscribe: list[str] = []
        unsubscribe: list[str] = []

        def flush() -> None:
            size = self.settings.channels_per_request
            for batch in batched(list(dict.fromkeys(unsubscribe)), size):
                out.append((self.session.unsubscribe(batch), False))
            for batch in batched(list(dict.fromkeys(subscribe)), size):
                out.append((self.session.subscribe(batch), True))
            subscribe.clear()
            unsubscribe.clear()

        resubscribing = False
        for command in commands:
            if command.action == "resubscribe":
                # Queued resyncs share one unsubscribe and one subscribe request: books lost
                # together (a stall, a burst of gaps) must not cost two paced requests each
                # (OKX allows 480 an hour per connection: 130 books took half an hour).
                if not resubscribing:
                    flush()
                    resubscribing = True
                unsubscribe.extend(command.channels)
                subscribe.extend(command.channels)
                continue
            if resubscribing:
                flush()
                resubscribing = False
            if command.action == "subscribe":
                subscribe.extend(ch for ch in command.channels if ch in self.desired)
            elif command.action == "unsubscribe":
                # An unsubscribe must not overtake an earlier queued subscribe of the channel.
                flush()
                unsubscribe.extend(ch for ch in command.channels if ch not in self.desired)
        flush()
        return out

    def status(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "state": self.state.value,
            "desired_channels": len(self.desired),
            "confirmed_channels": len(self.confirmed & self.desired),
            "connects": self.connects,
            "last_receive_ns": self.last_receive_ns,
        }


# ---------------------------------------------------------------------------------------------
# the connector: discovery + connection pool
# ---------------------------------------------------------------------------------------------


class DiscoveryFailed(Exception):
    """A refresh could not fetch a complete instrument list (nothing is delisted then)."""


class DeribitConnector:
    """Deribit :class:`~svc_connector.venues.base.VenueConnector` (see module docstring)."""

    def __init__(self, config: ConnectorConfig, sink: EventSink) -> None:
        self.settings = DeribitSettings.from_config(config)
        self.sink = sink
        self.allocator = ChannelAllocator(
            self.settings.max_channels_per_connection, self.settings.max_connections
        )
        self.connections: list[DeribitConnection] = []
        self.instruments: dict[str, dict[str, md_pb.Instrument]] = {}
        self.refreshes = 0
        self.last_refresh_ok_ns = 0
        # Seeded from the wall clock so that a restarted connector never reuses a
        # (source, sequence) pair (Nats-Msg-Id dedupe would drop the new events).
        self._sequence = time.time_ns()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._refresh_now = asyncio.Event()
        self._last_refresh_monotonic = -math.inf

    # ---- VenueConnector -----------------------------------------------------------------------

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.rest_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http:
                await self._discover_forever(http)
        finally:
            await self._stop_connections()

    async def _discover_forever(self, http: aiohttp.ClientSession) -> None:
        # Index channels need no discovery: start them at once.
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
                log.warning(
                    "deribit: instrument refresh failed (%s: %s); retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    wait,
                    extra={"venue": c.VENUE},
                )
                self.sink.count("discovery.failed")
            await self._wait_for_refresh(wait)

    async def stop(self) -> None:
        self._stopping.set()
        self._refresh_now.set()
        await self._stop_connections()

    def resync_books(self, symbols: Iterable[str]) -> int:
        """Resubscribe these books so the venue sends fresh snapshots (a consumer such as a
        restarted svc_book lost them). Returns how many book channels were asked again."""
        wanted = {book_channel(s, self.settings.book_interval) for s in symbols}
        asked = 0
        for conn in self.connections:
            mine = tuple(sorted(ch for ch in wanted if ch in conn.desired))
            if mine:
                conn._enqueue(_Command("resubscribe", mine))
                asked += len(mine)
        if asked:
            self.sink.count("book.resync_requested", asked)
        return asked

    def status(self) -> Mapping[str, Any]:
        return {
            "venue": c.VENUE,
            "connections": [conn.status() for conn in self.connections],
            "instruments": {ccy: len(items) for ccy, items in self.instruments.items()},
            "refreshes": self.refreshes,
            "last_refresh_ok_ns": self.last_refresh_ok_ns,
            "channel_loads": self.allocator.loads(),
        }

    # ---- discovery ---------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    async def _wait_for_refresh(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refresh_now.wait(), seconds)
        if self._refresh_now.is_set() and not self._stopping.is_set():
            # An early refresh (instrument.state): keep refreshes spaced out.
            spacing = self.settings.early_refresh_spacing_s - (
                time.monotonic() - self._last_refresh_monotonic
            )
            if spacing > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), spacing)
        self._refresh_now.clear()

    def _on_instrument_state(self, change: InstrumentStateChange) -> None:
        log.info(
            "deribit: instrument %s is %s: refreshing instruments",
            change.symbol,
            change.state,
            extra={"venue": c.VENUE, "symbol": change.symbol},
        )
        self.sink.count("discovery.instrument_state")
        self._refresh_now.set()

    async def fetch_instruments(
        self, http: aiohttp.ClientSession
    ) -> tuple[list[md_pb.Instrument], int]:
        """Every option and future of the configured currencies; raises DiscoveryFailed."""
        queries = list(self.settings.currencies)
        if self.settings.usdc_linear:
            queries.append("USDC")
        found: dict[str, md_pb.Instrument] = {}
        venue_time_ns = 0
        for currency in queries:
            for kind in ("option", "future"):
                url = f"{self.settings.rest_url}/{c.GET_INSTRUMENTS}"
                params = {"currency": currency, "kind": kind, "expired": "false"}
                receive_ns = time.time_ns()
                try:
                    async with http.get(url, params=params) as response:
                        body = await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise DiscoveryFailed(
                        f"GET {url} {params}: {type(exc).__name__}: {exc}"
                    ) from exc
                parsed = parse_instruments(body, receive_ns)
                for name, value in parsed.counts.items():
                    self.sink.count(f"discovery.{name}", value)
                for dead in parsed.dead_letters:
                    self.sink.count("dead_letters")
                    await self.sink.dead_letter(dead.raw, dead.reason)
                if parsed.venue_errors or status != 200:
                    error = parsed.venue_errors[0] if parsed.venue_errors else None
                    detail = f"{error.code} {error.message}" if error else f"HTTP {status}"
                    raise DiscoveryFailed(f"GET {url} {params}: {detail}")
                if not parsed.instruments and parsed.dead_letters:
                    raise DiscoveryFailed(f"GET {url} {params}: unreadable body")
                venue_time_ns = max(venue_time_ns, parsed.venue_time_ns or receive_ns)
                for instrument in parsed.instruments:
                    if instrument.currency in self.settings.currencies:
                        found[instrument.symbol] = instrument
        return list(found.values()), venue_time_ns

    async def refresh_instruments(self, http: aiohttp.ClientSession) -> None:
        """Fetch, emit InstrumentSets with listings/delistings, update subscriptions."""
        self._last_refresh_monotonic = time.monotonic()
        instruments, venue_time_ns = await self.fetch_instruments(http)
        receive_ns = time.time_ns()
        by_currency: dict[str, dict[str, md_pb.Instrument]] = {
            ccy: {} for ccy in self.settings.currencies
        }
        for instrument in instruments:
            by_currency[instrument.currency][instrument.symbol] = instrument
        for currency, current in by_currency.items():
            previous = self.instruments.get(currency, {})
            listed, delisted = diff_symbols(previous, current)
            instrument_set = md_pb.InstrumentSet(
                header=common_pb.EventHeader(
                    event_time_ns=venue_time_ns,
                    receive_time_ns=receive_ns,
                    source=c.SOURCE,
                    sequence=self._next_sequence(),
                ),
                venue=c.VENUE,
                currency=currency,
                instruments=[current[symbol] for symbol in sorted(current)],
                listed_symbols=listed,
                delisted_symbols=delisted,
            )
            if listed or delisted:
                log.info(
                    "deribit %s: %d instruments, %d listed, %d delisted",
                    currency,
                    len(current),
                    len(listed),
                    len(delisted),
                    extra={"venue": c.VENUE, "currency": currency},
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

    def _all_instruments(self) -> list[md_pb.Instrument]:
        return [i for items in self.instruments.values() for i in items.values()]

    def _apply_plan(self) -> None:
        instruments = self._all_instruments()
        groups = plan_channel_groups(instruments, self.settings)
        diff = self.allocator.update(groups)
        if diff.over_budget:
            log.warning(
                "deribit: %d channels beyond the per-connection budget (connection cap %d)",
                diff.over_budget,
                self.settings.max_connections,
                extra={"venue": c.VENUE},
            )
            self.sink.count("plan.over_budget", diff.over_budget)
        while len(self.connections) < diff.connections:
            self._start_connection(len(self.connections))
        for conn in self.connections:
            conn.session.set_instruments(instruments)
        for index, change in sorted(diff.per_connection.items()):
            conn = self.connections[index]
            if change.unsubscribe:
                conn.remove(change.unsubscribe)
            if change.subscribe:
                conn.add(change.subscribe)

    def _start_connection(self, index: int) -> None:
        session = DeribitSession(
            resync_timeout_ns=int(self.settings.resync_timeout_s * 1e9),
            sequence=self._next_sequence,
        )
        conn = DeribitConnection(
            index, self.settings, self.sink, session, on_instrument_state=self._on_instrument_state
        )
        self.connections.append(conn)
        self._tasks.append(asyncio.create_task(conn.run(), name=f"deribit-ws-{index}"))
        self.sink.count("plan.connections")

    async def _stop_connections(self) -> None:
        for conn in self.connections:
            await conn.stop()
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
