"""Venue-independent, pure pieces of a connector: no I/O and no clock (time is an argument).

- :class:`ConnectionStateMachine`: allowed state changes of one websocket, with reasons.
- :class:`BookSequencer`: per-symbol book sequence checks (apply / stale / gap / resync).
- :class:`ChannelAllocator`: spreads channel groups over connections within a per-connection
  budget and a connection cap, keeping existing assignments stable (no restart on listings).
- :class:`TokenBucket`: request pacing (subscribe rate limits).
- :func:`batched`, :func:`diff_symbols`, :func:`header_of`: small helpers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from svc_connector.venues.base import ConnectionState
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

# ---------------------------------------------------------------------------------------------
# Connection state machine
# ---------------------------------------------------------------------------------------------

_ALLOWED: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.IDLE: frozenset({ConnectionState.CONNECTING, ConnectionState.STOPPED}),
    ConnectionState.CONNECTING: frozenset(
        {ConnectionState.SUBSCRIBING, ConnectionState.BACKING_OFF, ConnectionState.STOPPED}
    ),
    ConnectionState.SUBSCRIBING: frozenset(
        {ConnectionState.LIVE, ConnectionState.BACKING_OFF, ConnectionState.STOPPED}
    ),
    ConnectionState.LIVE: frozenset(
        {ConnectionState.SUBSCRIBING, ConnectionState.BACKING_OFF, ConnectionState.STOPPED}
    ),
    ConnectionState.BACKING_OFF: frozenset({ConnectionState.CONNECTING, ConnectionState.STOPPED}),
    ConnectionState.STOPPED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class StateChange:
    previous: ConnectionState
    current: ConnectionState
    reason: str


class ConnectionStateMachine:
    """Tracks one connection's state; refuses transitions the lifecycle does not allow.

    A refused transition is returned as ``None`` and counted in ``refused`` (a bug indicator,
    not an exception: the client keeps running).
    """

    def __init__(self) -> None:
        self.state = ConnectionState.IDLE
        self.changes = 0
        self.refused = 0

    def transition(self, new: ConnectionState, reason: str) -> StateChange | None:
        if new == self.state:
            return None
        if new not in _ALLOWED[self.state]:
            self.refused += 1
            return None
        change = StateChange(self.state, new, reason)
        self.state = new
        self.changes += 1
        return change


# ---------------------------------------------------------------------------------------------
# Book sequencing
# ---------------------------------------------------------------------------------------------


class DeltaVerdict(StrEnum):
    APPLY = "apply"
    # change already covered by the book (duplicate or replayed old message): drop, no gap.
    STALE = "stale"
    # a change is missing: the book is broken, resync.
    GAP = "gap"
    # no snapshot since (re)subscribing: the delta has nothing to apply to; drop.
    NO_SNAPSHOT = "no_snapshot"
    # a resync is in flight: drop until the fresh snapshot arrives.
    RESYNCING = "resyncing"
    # a resync has been in flight longer than the timeout: drop and ask again.
    RESYNC_AGAIN = "resync_again"


@dataclass(slots=True)
class _BookState:
    last_sequence: int
    resync_since_ns: int | None = None


class BookSequencer:
    """Per-symbol sequence state for "snapshot then deltas" books.

    Rules, in order, for a delta (``prev``, ``seq``) on a book whose last sequence is ``last``:

    1. resync in flight -> RESYNCING (or RESYNC_AGAIN after ``resync_timeout_ns``);
    2. no snapshot yet -> NO_SNAPSHOT;
    3. ``prev == last`` -> APPLY (contiguous; also covers keep-alives with prev == seq);
    4. ``seq <= last`` -> STALE: a duplicate or a replayed old change. The book already
       contains it (a snapshot at ``last`` includes every change up to ``last``), so it is
       dropped without breaking the book, and never applied twice;
    5. otherwise -> GAP: something between ``last`` and ``prev`` is missing.

    Venue quirks (Deribit ``prev_change_id`` 0 for a just-listed option) are handled by the
    venue session before asking the sequencer.
    """

    def __init__(self, resync_timeout_ns: int) -> None:
        self._books: dict[str, _BookState] = {}
        self._resync_timeout_ns = resync_timeout_ns

    def reset(self) -> None:
        self._books.clear()

    def snapshot(self, symbol: str, sequence: int) -> None:
        self._books[symbol] = _BookState(sequence)

    def last_sequence(self, symbol: str) -> int | None:
        state = self._books.get(symbol)
        if state is None or state.resync_since_ns is not None:
            return None
        return state.last_sequence

    def is_resyncing(self, symbol: str) -> bool:
        state = self._books.get(symbol)
        return state is not None and state.resync_since_ns is not None

    def check_delta(self, symbol: str, prev: int, sequence: int, now_ns: int) -> DeltaVerdict:
        state = self._books.get(symbol)
        if state is None:
            return DeltaVerdict.NO_SNAPSHOT
        if state.resync_since_ns is not None:
            if now_ns - state.resync_since_ns >= self._resync_timeout_ns:
                state.resync_since_ns = now_ns
                return DeltaVerdict.RESYNC_AGAIN
            return DeltaVerdict.RESYNCING
        if prev == state.last_sequence:
            state.last_sequence = sequence
            return DeltaVerdict.APPLY
        if sequence <= state.last_sequence:
            return DeltaVerdict.STALE
        return DeltaVerdict.GAP

    def start_resync(self, symbol: str, now_ns: int) -> None:
        state = self._books.setdefault(symbol, _BookState(0))
        state.resync_since_ns = now_ns

    def forget(self, symbol: str) -> None:
        self._books.pop(symbol, None)


# ---------------------------------------------------------------------------------------------
# Subscription planning
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ConnectionDiff:
    """What one connection must subscribe and unsubscribe after an allocation update."""

    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)


@dataclass(slots=True)
class AllocationDiff:
    # index -> diff; indexes >= the previous connection count are new connections.
    per_connection: dict[int, ConnectionDiff] = field(default_factory=dict)
    connections: int = 0
    # channels placed beyond the per-connection budget because the connection cap was hit.
    over_budget: int = 0

    def for_connection(self, index: int) -> ConnectionDiff:
        return self.per_connection.setdefault(index, ConnectionDiff())


class ChannelAllocator:
    """Assigns channel *groups* (e.g. one instrument's book + ticker) to connections.

    A group stays on its connection for its whole life, so a new listing never moves or
    restarts anything: it goes to the least-loaded connection, opening a new one (up to
    ``max_connections``) when the total would exceed the budget. When the cap is reached
    the budget is exceeded rather than channels dropped (counted in ``over_budget``).
    """

    def __init__(self, max_channels_per_connection: int, max_connections: int) -> None:
        if max_channels_per_connection < 1 or max_connections < 1:
            raise ValueError("channel budget and connection cap must be positive")
        self.max_channels_per_connection = max_channels_per_connection
        self.max_connections = max_connections
        self._loads: list[int] = []
        self._groups: dict[str, tuple[int, tuple[str, ...]]] = {}

    @property
    def connections(self) -> int:
        return len(self._loads)

    def loads(self) -> list[int]:
        return list(self._loads)

    def channels_of(self, index: int) -> list[str]:
        return [
            channel
            for conn, channels in self._groups.values()
            if conn == index
            for channel in channels
        ]

    def update(self, desired: Mapping[str, Sequence[str]]) -> AllocationDiff:
        """Move to ``desired`` (group key -> channels); returns the per-connection changes."""
        diff = AllocationDiff()
        for key in sorted(set(self._groups) - set(desired)):
            index, channels = self._groups.pop(key)
            self._loads[index] -= len(channels)
            diff.for_connection(index).unsubscribe.extend(channels)
        new_keys: list[str] = []
        for key in sorted(desired):
            wanted = tuple(desired[key])
            held = self._groups.get(key)
            if held is None:
                new_keys.append(key)
            elif held[1] != wanted:
                index, channels = held
                gone = [c for c in channels if c not in wanted]
                added = [c for c in wanted if c not in channels]
                diff.for_connection(index).unsubscribe.extend(gone)
                diff.for_connection(index).subscribe.extend(added)
                self._loads[index] += len(added) - len(gone)
                self._groups[key] = (index, wanted)
        total = sum(self._loads) + sum(len(desired[k]) for k in new_keys)
        needed = min(
            self.max_connections, max(1, math.ceil(total / self.max_channels_per_connection))
        )
        while len(self._loads) < needed:
            self._loads.append(0)
        for key in new_keys:
            channels = tuple(desired[key])
            index = min(range(len(self._loads)), key=lambda i: (self._loads[i], i))
            if self._loads[index] + len(channels) > self.max_channels_per_connection:
                if len(self._loads) < self.max_connections:
                    self._loads.append(0)
                    index = len(self._loads) - 1
                else:
                    diff.over_budget += len(channels)
            self._loads[index] += len(channels)
            self._groups[key] = (index, channels)
            diff.for_connection(index).subscribe.extend(channels)
        diff.connections = len(self._loads)
        return diff


def batched(items: Sequence[str], size: int) -> Iterator[list[str]]:
    """Consecutive batches of at most ``size`` items (one subscribe request each)."""
    if size < 1:
        raise ValueError("batch size must be positive")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


class TokenBucket:
    """Request pacing: ``rate_per_s`` sustained, bursts up to ``burst``. Time is an argument."""

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now_s

    def _refill(self, now_s: float) -> None:
        if now_s > self._at:
            self._tokens = min(self.burst, self._tokens + (now_s - self._at) * self.rate_per_s)
            self._at = now_s

    def wait_time(self, now_s: float) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        self._refill(now_s)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate_per_s

    def take(self, now_s: float) -> None:
        self._refill(now_s)
        self._tokens -= 1


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def diff_symbols(previous: Iterable[str], current: Iterable[str]) -> tuple[list[str], list[str]]:
    """(listed, delisted), each sorted."""
    before, after = set(previous), set(current)
    return sorted(after - before), sorted(before - after)


def header_of(event: md_pb.MarketDataEvent) -> common_pb.EventHeader | None:
    """The header of whichever event the oneof holds (None for an empty event)."""
    case = event.WhichOneof("event")
    if case is None:
        return None
    header: common_pb.EventHeader = getattr(event, case).header
    return header
