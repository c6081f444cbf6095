"""One websocket carrying a set of channels (:class:`WsConnection`): connect, paced batched
subscribes, keep-alives, resyncs, reconnects with backoff, watchdog; every frame goes through
the venue session and its result to the sink. Does I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

# picows.websockets: the websockets asyncio API (same connect options, frames, errors) on a
# Cython websocket core; a received frame costs ~1 us instead of websockets' ~7 us
# (bench_connector's null clients), a quarter to a third of the connector's time per frame.
from picows.websockets.asyncio.client import ClientConnection, connect
from picows.websockets.exceptions import ConnectionClosed
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from svc_connector.kit.connection_state import ConnectionStateMachine
from svc_connector.kit.fields import safe_token
from svc_connector.kit.pacing import TokenBucket
from svc_connector.kit.subscriptions import batched
from svc_connector.runtime.settings import ConnectionPlan, RuntimeSettings
from svc_connector.venues.base import (
    ConnectionState,
    EventSink,
    FrameResult,
    ResubscribeRequest,
    VenueRequest,
    VenueSession,
)


class WatchdogTimeout(Exception):
    """Nothing arrived for the watchdog period: the connection is treated as dead."""


class ConnectionEnded(Exception):
    """The venue closed a connection that had not been up long enough to reset the backoff."""


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


def _has_more(result: FrameResult) -> bool:
    """Whether ``result`` has anything besides events and counts (most frames have not)."""
    return bool(
        result.dead_letters
        or result.acks
        or result.venue_errors
        or result.subscribed
        or result.unsubscribed
        or result.resubscribes
    )


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
        counts, events = result.counts, result.events
        outcome = FRAME_PUBLISHED if events else frame_outcome(result)
        counts[outcome] = counts.get(outcome, 0) + 1  # not +=: Counter.__missing__ is Python
        if result.replies or _has_more(result):
            await self.deliver(result)
            return
        # The usual frame (counts and events only): deliver's steps for it without its
        # coroutine, which costs as much as the steps.
        sink = self.sink
        sink.count_all(counts)
        if events:
            try:
                await sink.emit_all(events)
            except Exception:
                self._sink_failed()
        if self._on_result is not None:
            self._on_result(self, result)
        if self.state_machine.state is ConnectionState.SUBSCRIBING:
            self._maybe_live()

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
                self._sink_failed()
        # Only frames with anything more than events and counts go further (most do not).
        if _has_more(result):
            await self._deliver_rest(result)
        if self._on_result is not None:
            self._on_result(self, result)
        if self.state == ConnectionState.SUBSCRIBING:
            self._maybe_live()

    def _sink_failed(self) -> None:
        """Called in an ``except`` block: the sink raised taking a frame's events."""
        self.log.exception("%s: sink failed to take events", self.settings.venue)
        self.sink.count("sink_error")

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
