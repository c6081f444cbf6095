"""The venue-independent async body of a connector (websockets, REST discovery).

Unlike svc_connector.session, which stays pure (no I/O, no clock), this module does I/O: a
venue client supplies a session, a channel plan, its REST discovery and a ConnectionPlan per
route (URL, keep-alive frame, maximum connection age), and gets connection pooling, paced
batched subscribes, reconnects with exponential backoff and jitter, resubscription, a
watchdog, instrument refresh with listings/delistings, and logged + counted state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from svc_connector.kit.connection_state import ConnectionStateMachine
from svc_connector.kit.fields import safe_token
from svc_connector.kit.pacing import TokenBucket
from svc_connector.kit.subscriptions import ChannelAllocator, batched, diff_symbols
from svc_connector.venues.base import (
    ConnectionState,
    ConnectorConfig,
    Endpoints,
    EventSink,
    FrameResult,
    InstrumentParseResult,
    InstrumentStateChange,
    ResubscribeRequest,
    VenueLimits,
    VenueRequest,
    VenueSession,
)
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

# =============================================================================================
# Shared by the JSON venue adapters: the async runtime (websockets, REST discovery)
# =============================================================================================
#
# Unlike everything above, this part does I/O. It is the venue-independent body of a
# connector: a venue client supplies a session, a channel plan, its REST discovery and a
# ConnectionPlan per route (URL, keep-alive frame, maximum connection age), and gets
# connection pooling, paced batched subscribes, reconnects with exponential backoff and
# jitter, resubscription, a watchdog, instrument refresh with listings/delistings, and
# logged + counted state changes.

_TRUE = frozenset({"1", "true", "yes", "on"})


def option_flag(options: Mapping[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    return default if value is None else value.strip().lower() in _TRUE


def option_float(options: Mapping[str, str], key: str, default: float) -> float:
    value = options.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"venue option {key}={value!r} is not a number") from None


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """A :class:`ConnectorConfig` resolved against a venue's defaults (:class:`VenueLimits`)."""

    venue: str
    ws_url: str
    rest_url: str
    currencies: tuple[str, ...]
    max_channels_per_connection: int
    max_connections: int
    channels_per_request: int
    subscribe_requests_per_second: float
    # Requests that may go out back to back before the rate applies.
    subscribe_burst: float
    heartbeat_interval_s: float
    watchdog_timeout_s: float
    reconnect_initial_s: float
    reconnect_max_s: float
    stable_after_s: float
    instrument_refresh_s: float
    rest_timeout_s: float
    resync_timeout_s: float
    # A subscribe the venue never answers stops holding the connection in SUBSCRIBING.
    subscribe_ack_timeout_s: float
    options: Mapping[str, str]

    @classmethod
    def resolve(
        cls,
        venue: str,
        config: ConnectorConfig,
        limits: VenueLimits,
        endpoints: Mapping[str, Endpoints],
        *,
        watchdog_timeout_s: float | None = None,
        watchdog_heartbeats: float = 2.0,
        subscribe_burst: float = 1.0,
        subscribe_ack_timeout_s: float = 10.0,
    ) -> RuntimeSettings:
        """``watchdog_timeout_s`` defaults to ``watchdog_heartbeats`` heartbeat intervals."""
        heartbeat = config.heartbeat_interval_s or limits.heartbeat_interval_s
        resolved = config.endpoints or endpoints.get(config.environment)
        if resolved is None:
            known = ", ".join(sorted(endpoints))
            raise ValueError(f"{venue}: unknown environment {config.environment!r} ({known})")
        return cls(
            venue=venue,
            ws_url=resolved.ws_url,
            rest_url=resolved.rest_url.rstrip("/"),
            currencies=tuple(dict.fromkeys(ccy.upper() for ccy in config.currencies)),
            max_channels_per_connection=config.max_channels_per_connection
            or limits.max_channels_per_connection,
            max_connections=min(
                limits.max_connections_per_ip,
                config.max_connections or limits.default_max_connections,
            ),
            channels_per_request=config.channels_per_subscribe_request
            or limits.channels_per_subscribe_request,
            subscribe_requests_per_second=config.subscribe_requests_per_second
            or limits.subscribe_requests_per_second,
            subscribe_burst=subscribe_burst,
            heartbeat_interval_s=heartbeat,
            watchdog_timeout_s=config.watchdog_timeout_s
            or watchdog_timeout_s
            or watchdog_heartbeats * heartbeat,
            reconnect_initial_s=config.reconnect_initial_s,
            reconnect_max_s=config.reconnect_max_s,
            stable_after_s=config.stable_after_s,
            instrument_refresh_s=config.instrument_refresh_s,
            rest_timeout_s=config.rest_timeout_s,
            resync_timeout_s=config.resync_timeout_s,
            subscribe_ack_timeout_s=subscribe_ack_timeout_s,
            options=dict(config.venue_options),
        )


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """How the connections of one route behave (a venue may use several URLs)."""

    url: str
    # RequestAck.method / VenueError.method of a subscribe request (ack accounting).
    subscribe_method: str
    # Sent when nothing was sent for heartbeat_interval_s (so at least that often; venues
    # differ on whether "silent" means not sending or not receiving: this covers both, as
    # the venue's answer arrives right after); None: no application-level keep-alive.
    keepalive: VenueRequest | None = None
    # Sent right after connecting, before any subscribe.
    opening: tuple[VenueRequest, ...] = ()
    # Reconnect (gracefully, without backoff) before the venue's connection lifetime ends.
    max_age_s: float | None = None


class WatchdogTimeout(Exception):
    """Nothing arrived for the watchdog period: the connection is treated as dead."""


class ConnectionEnded(Exception):
    """The venue closed a connection that had not been up long enough to reset the backoff."""


class DiscoveryFailed(Exception):
    """A refresh could not fetch a complete instrument list (nothing is delisted then)."""


@dataclass(frozen=True, slots=True)
class _Command:
    action: Literal["subscribe", "unsubscribe", "resubscribe"]
    channels: tuple[str, ...]


# Every received frame is counted under exactly one of these (reconciliation: frames =
# published + dead-lettered + ignored, with the ignored ones named by what they were).
FRAME_PUBLISHED = "frames.published"
FRAME_DEAD_LETTERED = "frames.dead_lettered"
FRAME_IGNORED = "frames.ignored"


def frame_outcome(result: FrameResult) -> str:
    """The one outcome counter of a frame: ``frames.published`` (it produced events),
    ``frames.dead_lettered`` (only dead letters), else ``frames.ignored.<what>`` named by the
    frame's last (most specific) own counter (``heartbeat.pong``, ``book.stale_dropped``)."""
    if result.events:
        return FRAME_PUBLISHED
    if result.dead_letters:
        return FRAME_DEAD_LETTERED
    what = "other"
    for name in result.counts:
        if name != "frames":
            what = name
    return f"{FRAME_IGNORED}.{what}"


class WsConnection:
    """One websocket carrying a set of channels.

    Connects (through the connector's connection-rate gate), sends the plan's opening frames,
    subscribes its channels in batches at a paced rate, answers keep-alive requests the
    session reports, sends the plan's keep-alive, resubscribes a single channel on a book
    gap, reconnects with exponential backoff and jitter (tenacity; unlimited attempts, capped
    wait) and resubscribes everything after a reconnect. A watchdog reconnects a connection
    that stays silent; ``max_age_s`` renews it before the venue's lifetime limit. Every state
    change is logged and counted. Bad input never ends it; only :meth:`stop` does.
    """

    def __init__(
        self,
        name: str,
        settings: RuntimeSettings,
        plan: ConnectionPlan,
        sink: EventSink,
        session: VenueSession,
        *,
        connect_gate: Callable[[], Awaitable[None]] | None = None,
        on_resubscribe: Callable[[WsConnection, ResubscribeRequest], bool] | None = None,
        on_result: Callable[[WsConnection, FrameResult], None] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.plan = plan
        self.sink = sink
        self.session = session
        self._connect_gate = connect_gate
        self._on_resubscribe = on_resubscribe
        self._on_result = on_result
        self.log = logging.getLogger(f"svc_connector.{settings.venue}")
        self.desired: set[str] = set()
        self.confirmed: set[str] = set()
        self.state_machine = ConnectionStateMachine()
        self.connects = 0
        self.last_receive_ns = 0
        self._stopping = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._commands: asyncio.Queue[_Command] | None = None
        self._awaiting_subscribe_acks = 0
        self._last_subscribe_sent = 0.0
        self._initial_flush_done = False
        self._hot_frames_counted = 0
        self._closing_reason = ""
        self._last_receive_monotonic = 0.0
        self._last_send_monotonic = 0.0
        # channel -> when its last subscribe request was sent (monotonic).
        self._subscribe_sent: dict[str, float] = {}

    @property
    def state(self) -> ConnectionState:
        return self.state_machine.state

    # ---- channel set (callable any time) ------------------------------------------------------

    def add(self, channels: Iterable[str]) -> None:
        new = [ch for ch in channels if ch not in self.desired]
        self.desired.update(new)
        self._subscribe_sent.update(dict.fromkeys(new, time.monotonic()))
        if new:
            self._enqueue(_Command("subscribe", tuple(new)))

    def remove(self, channels: Iterable[str]) -> None:
        gone = [ch for ch in channels if ch in self.desired]
        self.desired.difference_update(gone)
        for channel in gone:
            self._subscribe_sent.pop(channel, None)
        if gone:
            self._enqueue(_Command("unsubscribe", tuple(gone)))

    def resubscribe(self, channels: Iterable[str]) -> int:
        """Unsubscribe and subscribe again (the venue answers with fresh snapshots)."""
        mine = tuple(sorted(ch for ch in channels if ch in self.desired))
        if mine:
            self._enqueue(_Command("resubscribe", mine))
        return len(mine)

    def reconcile(self) -> int:
        """Subscribe again what the venue has not confirmed (e.g. after a venue error).

        Channels whose subscribe went out less than ``subscribe_ack_timeout_s`` ago are
        left alone (their answer may still come): a second subscribe would be refused by
        venues that reject duplicates ("already subscribed").
        """
        now = time.monotonic()
        wait = self.settings.subscribe_ack_timeout_s
        missing = sorted(
            ch
            for ch in self.desired - self.confirmed
            if now - self._subscribe_sent.get(ch, -math.inf) >= wait
        )
        if missing and self.state == ConnectionState.LIVE:
            self._subscribe_sent.update(dict.fromkeys(missing, now))
            self._enqueue(_Command("subscribe", tuple(missing)))
            return len(missing)
        return 0

    async def send(self, text: str) -> bool:
        """Send a frame now if connected (e.g. a reply); False when there is no socket."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await self._send(ws, text)
        except ConnectionClosed:
            return False
        return True

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
        self.log.info(
            "%s connection %s: %s -> %s (%s)",
            self.settings.venue,
            self.name,
            change.previous.value,
            change.current.value,
            reason,
            extra={
                "venue": self.settings.venue,
                "connection": self.name,
                "state": change.current.value,
            },
        )
        self.sink.count(f"connection.state.{change.current.value}")

    async def _connect_and_serve(self) -> None:
        if self._stopping.is_set():
            return
        if self._connect_gate is not None:
            await self._connect_gate()
            if self._stopping.is_set():
                return
        self._transition(ConnectionState.CONNECTING, f"connecting to {self.plan.url}")
        started = time.monotonic()
        async with connect(
            self.plan.url,
            open_timeout=self.settings.rest_timeout_s,
            max_size=16 * 2**20,
            close_timeout=2,
        ) as ws:
            self.connects += 1
            self.sink.count("connection.connected")
            self._ws = ws
            if self._stopping.is_set():
                # stop() ran during the handshake, when there was no socket to close yet.
                return
            self._commands = asyncio.Queue()
            self.session.on_connected()
            self.confirmed.clear()
            self._awaiting_subscribe_acks = 0
            self._initial_flush_done = False
            self._closing_reason = ""
            self._last_receive_monotonic = self._last_send_monotonic = time.monotonic()
            self._transition(ConnectionState.SUBSCRIBING, f"connected (#{self.connects})")
            started = time.monotonic()
            for request in self.plan.opening:
                await self._send(ws, self.session.encode(request))
            if self.desired:
                self._commands.put_nowait(_Command("subscribe", tuple(sorted(self.desired))))
            tasks = [
                asyncio.create_task(self._write_commands(ws, self._commands)),
                asyncio.create_task(self._watch(ws, started)),
            ]
            if self.plan.keepalive is not None:
                tasks.append(asyncio.create_task(self._keepalive(ws, self.plan.keepalive)))
            try:
                # Ends normally on a clean close (venue, stop() or the watchdog), raises on an
                # abnormal one.
                async for frame in ws:
                    await self._handle(ws, frame)
            except ConnectionClosed:
                if not (self._stopping.is_set() or self._closing_reason):
                    raise
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                self._ws = None
                self._commands = None
                self._count_hot_frames()
        if self._stopping.is_set():
            return
        uptime = time.monotonic() - started
        if self._closing_reason == "watchdog":
            raise WatchdogTimeout(f"nothing received for {self.settings.watchdog_timeout_s:.1f}s")
        if self._closing_reason == "max_age" or uptime >= self.settings.stable_after_s:
            self._transition(ConnectionState.BACKING_OFF, f"closed after {uptime:.0f}s up")
            return
        raise ConnectionEnded(f"closed by the venue after {uptime:.1f}s")

    async def _watch(self, ws: ClientConnection, started: float) -> None:
        """Close a silent connection; renew an old one; stop waiting for lost subscribe acks."""
        timeout = self.settings.watchdog_timeout_s
        period = min(1.0, timeout / 4)
        while True:
            await asyncio.sleep(period)
            self._count_hot_frames()
            now = time.monotonic()
            silent = now - self._last_receive_monotonic
            if silent >= timeout:
                self._closing_reason = "watchdog"
                self.sink.count("connection.watchdog_timeout")
                self.log.warning(
                    "%s connection %s: silent for %.1fs, reconnecting",
                    self.settings.venue,
                    self.name,
                    silent,
                    extra={"venue": self.settings.venue, "connection": self.name},
                )
                await ws.close(code=4000, reason="watchdog: connection silent")
                return
            max_age = self.plan.max_age_s
            if max_age is not None and now - started >= max_age:
                self._closing_reason = "max_age"
                self.sink.count("connection.max_age")
                self.log.info(
                    "%s connection %s: renewing after %.0fs (venue lifetime limit)",
                    self.settings.venue,
                    self.name,
                    now - started,
                    extra={"venue": self.settings.venue, "connection": self.name},
                )
                await ws.close(code=1000, reason="renewing before the lifetime limit")
                return
            if (
                self.state == ConnectionState.SUBSCRIBING
                and self._awaiting_subscribe_acks > 0
                and now - self._last_subscribe_sent >= self.settings.subscribe_ack_timeout_s
            ):
                self.sink.count("subscribe.ack_timeout", self._awaiting_subscribe_acks)
                self._awaiting_subscribe_acks = 0
                self._maybe_live()

    def _count_hot_frames(self) -> None:
        """Count the frames the session's hot path answered since the last call, as
        ``frames.hot_path`` (a share of ``frames`` that falls means the venue changed a message
        and those frames now take the slower checked path). Done here, not per frame: the
        session's counts must stay the same with the hot path on or off."""
        hits = self.session.hot_hits
        if hits > self._hot_frames_counted:
            self.sink.count("frames.hot_path", hits - self._hot_frames_counted)
        self._hot_frames_counted = hits

    async def _keepalive(self, ws: ClientConnection, request: VenueRequest) -> None:
        interval = self.settings.heartbeat_interval_s
        while True:
            await asyncio.sleep(min(1.0, interval / 4))
            if time.monotonic() - self._last_send_monotonic >= interval:
                await self._send(ws, self.session.encode(request))
                self.sink.count("heartbeat.sent")

    async def _send(self, ws: ClientConnection, text: str) -> None:
        await ws.send(text)
        self._last_send_monotonic = time.monotonic()

    async def _handle(self, ws: ClientConnection, frame: str | bytes) -> None:
        receive_ns = time.time_ns()
        self.last_receive_ns = receive_ns
        self._last_receive_monotonic = time.monotonic()
        result = self.session.on_frame(frame, receive_ns)
        counts, outcome = result.counts, frame_outcome(result)
        counts[outcome] = counts.get(outcome, 0) + 1  # not +=: Counter.__missing__ is Python
        await self.deliver(result)

    async def deliver(self, result: FrameResult) -> None:
        """Act on a session result: replies, counts, events, dead letters, acks, resyncs.

        Called for every received frame, and by a connector for results it produced with
        this connection's session outside a frame (e.g. a REST book snapshot).
        """
        for reply in result.replies:
            # Keep-alive answers go out at once, never behind paced subscribes.
            await self.send(self.session.encode(reply))
        sink = self.sink
        sink.count_all(result.counts)
        if result.events:
            try:
                await sink.emit_all(result.events)
            except Exception:
                self.log.exception("%s: sink failed to take events", self.settings.venue)
                sink.count("sink_error")
        # Only frames with anything more than events and counts go further (most do not).
        if (
            result.dead_letters
            or result.acks
            or result.venue_errors
            or result.subscribed
            or result.unsubscribed
            or result.resubscribes
        ):
            await self._deliver_rest(result)
        if self._on_result is not None:
            self._on_result(self, result)
        if self.state == ConnectionState.SUBSCRIBING:
            self._maybe_live()

    async def _deliver_rest(self, result: FrameResult) -> None:
        """Dead letters, acks, venue errors and resyncs of a result (see :meth:`deliver`)."""
        for dead in result.dead_letters:
            self.log.warning(
                "%s connection %s: dead letter: %s",
                self.settings.venue,
                self.name,
                dead.reason,
                extra={"venue": self.settings.venue, "connection": self.name},
            )
            self.sink.count("dead_letters")
            try:
                await self.sink.dead_letter(dead.raw, dead.reason)
            except Exception:
                self.log.exception("%s: sink failed to take a dead letter", self.settings.venue)
                self.sink.count("sink_error")
        self._apply_acks(result)
        for request in result.resubscribes:
            self.log.info(
                "%s connection %s: resyncing %s: %s",
                self.settings.venue,
                self.name,
                request.channel,
                request.reason,
                extra={
                    "venue": self.settings.venue,
                    "connection": self.name,
                    "symbol": request.symbol,
                },
            )
            self.sink.count("book.resubscribe")
            handled = self._on_resubscribe is not None and self._on_resubscribe(self, request)
            if not handled and request.channel in self.desired:
                self._enqueue(_Command("resubscribe", (request.channel,)))

    def _apply_acks(self, result: FrameResult) -> None:
        self.confirmed.update(result.subscribed)
        self.confirmed.difference_update(result.unsubscribed)
        for ack in result.acks:
            if ack.method == self.plan.subscribe_method:
                self._awaiting_subscribe_acks -= 1
        for error in result.venue_errors:
            self.log.warning(
                "%s connection %s: venue error %s %s (request %s %s, %d channels)",
                self.settings.venue,
                self.name,
                error.code,
                error.message,
                error.request_id,
                error.method,
                len(error.channels),
                extra={"venue": self.settings.venue, "connection": self.name, "code": error.code},
            )
            self.sink.count(f"venue_error.{safe_token(error.code or 'unknown')}")
            if error.method == self.plan.subscribe_method:
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
            self.log.exception("%s connection %s: writer failed", self.settings.venue, self.name)
            self.sink.count("connection.writer_error")
            await ws.close(code=1011, reason="writer failed")

    async def _write_loop(self, ws: ClientConnection, queue: asyncio.Queue[_Command]) -> None:
        s = self.settings
        bucket = TokenBucket(s.subscribe_requests_per_second, s.subscribe_burst, time.monotonic())
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
                await self._send(ws, text)
                self.sink.count("requests.sent")
                if is_subscribe:
                    self._awaiting_subscribe_acks += 1
                    self._last_subscribe_sent = time.monotonic()

    def _encode_commands(self, commands: list[_Command]) -> list[tuple[str, bool]]:
        """Coalesce queued commands into batched requests (order-preserving per channel)."""
        out: list[tuple[str, bool]] = []
        subscribe: list[str] = []
        unsubscribe: list[str] = []

        def flush() -> None:
            size = self.settings.channels_per_request
            for batch in batched(list(dict.fromkeys(unsubscribe)), size):
                out.append((self.session.unsubscribe(batch), False))
            now = time.monotonic()
            for batch in batched(list(dict.fromkeys(subscribe)), size):
                out.append((self.session.subscribe(batch), True))
                self._subscribe_sent.update(dict.fromkeys(batch, now))
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
            "name": self.name,
            "url": self.plan.url,
            "state": self.state.value,
            "desired_channels": len(self.desired),
            "confirmed_channels": len(self.confirmed & self.desired),
            "connects": self.connects,
            "last_receive_ns": self.last_receive_ns,
        }


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
        # (source, sequence) pair (Nats-Msg-Id dedupe would drop the new events).
        self._sequence = time.time_ns()
        self._tasks: list[asyncio.Task[None]] = []
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
        news = [change for change in result.instrument_states if self._is_news(change)]
        if news:
            self.request_refresh(f"{news[0].symbol} is {news[0].state} (+{len(news) - 1} more)")

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

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

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
