"""One client websocket connection: an outgoing frame queue drained by a sender task, with the
connection-level faults (stall, gap, duplicate, swap, malformed, field mutations) applied as
frames are queued. Venue protocol modules subclass it for their own request handling.

Frames are pre-serialised bytes shared by every subscriber; a session only copies a frame
when a fault mutates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from aiohttp import WSMsgType, web

log = logging.getLogger(__name__)


class FrameKind(IntEnum):
    RESPONSE = 0
    BOOK_SNAPSHOT = 1
    BOOK_DELTA = 2
    TICKER = 3
    # Index, volatility index, instrument state, full-depth books.
    OTHER = 4
    HEARTBEAT = 5
    # Frames a fault made up (malformed).
    INJECTED = 6


NOTIFICATION_KINDS = frozenset(
    (FrameKind.BOOK_SNAPSHOT, FrameKind.BOOK_DELTA, FrameKind.TICKER, FrameKind.OTHER)
)


@dataclass
class SessionStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_dropped_by_fault: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


@dataclass
class FaultState:
    stalled_until: float = 0.0
    # symbol (or "" for any book) -> incremental book frames still to drop / swap
    gaps: dict[str, int] = field(default_factory=dict)
    swaps: dict[str, int] = field(default_factory=dict)
    # channel -> the incremental frame held back to be sent after the next one
    held: dict[str, bytes] = field(default_factory=dict)
    unknown_fields: int = 0
    missing_fields: int = 0

    def active(self) -> bool:
        return bool(
            self.stalled_until
            or self.gaps
            or self.swaps
            or self.held
            or self.unknown_fields
            or self.missing_fields
        )


class FrameMutator:
    """Venue-specific rewriting of a frame for the field faults."""

    def add_unknown_fields(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def drop_optional_fields(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def wrong_types(self, frame: bytes) -> bytes:
        raise NotImplementedError

    def unknown_channel(self, frame: bytes) -> bytes:
        raise NotImplementedError


class WsSession:
    """Outgoing side of one websocket connection."""

    def __init__(
        self,
        session_id: int,
        ws: web.WebSocketResponse,
        mutator: FrameMutator,
        max_queue: int,
        on_counts: Callable[[FrameKind, int], None] | None = None,
    ) -> None:
        self.id = session_id
        self.ws = ws
        self.mutator = mutator
        self.max_queue = max_queue
        self.out: deque[bytes] = deque()
        self._kinds: deque[FrameKind] = deque()
        self._wake = asyncio.Event()
        self.closed = False
        self.close_reason = ""
        self.faults = FaultState()
        self._faulty = False
        self.stats = SessionStats()
        self.last_notification: bytes | None = None
        self.last_by_symbol: dict[str, bytes] = {}
        self._on_counts = on_counts
        self._sender: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop(), name=f"sim-ws-send-{self.id}")

    async def _send_loop(self) -> None:
        ws = self.ws
        try:
            while not self.closed:
                if not self.out:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                data = self.out.popleft()
                kind = self._kinds.popleft()
                await ws.send_frame(data, WSMsgType.TEXT)
                st = self.stats
                st.frames_sent += 1
                st.bytes_sent += len(data)
                if self._on_counts is not None:
                    self._on_counts(kind, len(data))
        except (ConnectionError, RuntimeError) as exc:
            log.debug("session %d send stopped: %s", self.id, exc)
            self.closed = True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
        self._wake.set()
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode())
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender

    def close_soon(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._loop.create_task(self.close(code, reason))

    # -- faults ---------------------------------------------------------------------
    @property
    def stalled(self) -> bool:
        if self.faults.stalled_until and self._loop.time() >= self.faults.stalled_until:
            self.faults.stalled_until = 0.0
            self._faulty = self.faults.active()
        return bool(self.faults.stalled_until)

    def stall(self, seconds: float) -> None:
        self.faults.stalled_until = self._loop.time() + seconds
        self._faulty = True

    def add_gap(self, symbol: str | None, count: int) -> None:
        key = symbol or ""
        self.faults.gaps[key] = self.faults.gaps.get(key, 0) + count
        self._faulty = True

    def add_swap(self, symbol: str | None, count: int) -> None:
        key = symbol or ""
        self.faults.swaps[key] = self.faults.swaps.get(key, 0) + count
        self._faulty = True

    def add_unknown_fields(self, count: int) -> None:
        self.faults.unknown_fields += count
        self._faulty = True

    def add_missing_fields(self, count: int) -> None:
        self.faults.missing_fields += count
        self._faulty = True

    def duplicate_last(self, symbol: str | None) -> bool:
        frame = self.last_by_symbol.get(symbol) if symbol else self.last_notification
        if frame is None:
            return False
        self._push(frame, FrameKind.INJECTED)
        return True

    def send_malformed(self) -> None:
        base = self.last_notification or b'{"jsonrpc":"2.0","method":"subscription","params":{}}'
        self._push(base[: max(1, len(base) // 2)], FrameKind.INJECTED)

    def send_mutated(self, mutate: Callable[[bytes], bytes]) -> bool:
        """The last notification rewritten by `mutate` (a mutator's bad-input method), sent
        as an injected frame; False when nothing was sent yet to rewrite."""
        if self.last_notification is None:
            return False
        self._push(mutate(self.last_notification), FrameKind.INJECTED)
        return True

    def forget_channel(self, channel: str) -> None:
        self.faults.held.pop(channel, None)

    # -- queueing -------------------------------------------------------------------
    def _push(self, data: bytes, kind: FrameKind) -> None:
        self.out.append(data)
        self._kinds.append(kind)
        if len(self.out) > self.max_queue:
            # A client that cannot keep up is cut off, as a venue does.
            self.out.clear()
            self._kinds.clear()
            self.close_soon(1008, "slow consumer")
            return
        self._wake.set()

    def enqueue(self, data: bytes, kind: FrameKind, symbol: str = "", channel: str = "") -> None:
        if self.closed:
            return
        if self._faulty:
            maybe = self._apply_faults(data, kind, symbol, channel)
            if maybe is None:
                return
            data = maybe
        if kind in NOTIFICATION_KINDS:
            self.last_notification = data
            if symbol:
                self.last_by_symbol[symbol] = data
        self._push(data, kind)

    def _apply_faults(
        self, data: bytes, kind: FrameKind, symbol: str, channel: str
    ) -> bytes | None:
        f = self.faults
        if self.stalled:
            self.stats.frames_dropped_by_fault += 1
            return None
        if kind == FrameKind.BOOK_DELTA:
            for key in (symbol, ""):
                left = f.gaps.get(key)
                if left:
                    if left == 1:
                        del f.gaps[key]
                    else:
                        f.gaps[key] = left - 1
                    self.stats.frames_dropped_by_fault += 1
                    self._faulty = f.active()
                    return None
            held = f.held.pop(channel, None)
            if held is not None:
                # Send this one first, then the one held back: a swapped pair.
                self._push(data, kind)
                self._faulty = f.active()
                return held
            for key in (symbol, ""):
                left = f.swaps.get(key)
                if left:
                    if left == 1:
                        del f.swaps[key]
                    else:
                        f.swaps[key] = left - 1
                    f.held[channel] = data
                    return None
        if f.missing_fields and kind == FrameKind.TICKER:
            f.missing_fields -= 1
            data = self.mutator.drop_optional_fields(data)
        if f.unknown_fields and kind in NOTIFICATION_KINDS:
            f.unknown_fields -= 1
            data = self.mutator.add_unknown_fields(data)
        self._faulty = f.active()
        return data
