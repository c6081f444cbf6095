"""Venue-independent pieces of a connector. All but the async runtime at the end of the
module are pure: no I/O and no clock (time is an argument).

- :class:`ConnectionStateMachine`: allowed state changes of one websocket, with reasons.
- :class:`BookSequencer`: per-symbol book sequence checks (apply / stale / gap / resync).
- :class:`ChannelAllocator`: spreads channel groups over connections within a per-connection
  budget and a connection cap, keeping existing assignments stable (no restart on listings).
- :class:`TokenBucket`: request pacing (subscribe rate limits).
- :func:`batched`, :func:`diff_symbols`, :func:`header_of`: small helpers.

Shared by the JSON venue adapters (OKX, Bybit, Binance), also pure:

- frame/body decoding and field readers that accept numbers and numeric strings
  (:func:`decode_frame`, :func:`req_number`, :func:`opt_number`, ...; :class:`FieldError`
  becomes a dead letter), :func:`guarded`, :func:`each_entry`, :func:`collect_instruments`;
- book helpers: :func:`text_levels`, :func:`sequence_delta` (BookSequencer verdict ->
  events, BookReset + resubscribe on a gap), :func:`book_reset_event`;
- :class:`PendingRequests` (request/response matching), :class:`TickerMerger` (one ticker
  assembled from several channels), :func:`fill_usd_per_coin`, :class:`StampingSession`.

And, at the end of the module, the one part that does I/O: the async runtime those adapters
share (:class:`RuntimeSettings`, :class:`ConnectionPlan`, :class:`WsConnection`,
:class:`PooledConnector`: websocket pools, paced subscribes, reconnects, REST discovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from svc_connector.venues.base import (
    ConnectionState,
    ConnectorConfig,
    DeadLetter,
    Endpoints,
    EventSink,
    FrameResult,
    InstrumentParseResult,
    InstrumentStateChange,
    NormalisedEvent,
    ResubscribeRequest,
    VenueError,
    VenueLimits,
    VenueRequest,
)
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


# =============================================================================================
# Shared by the JSON venue adapters (OKX, Bybit, Binance): pure decoding helpers
# =============================================================================================
#
# Venues send numbers as JSON numbers or as numeric strings ("0.7794"), an empty side as ""
# or "0", and add fields over time. These readers look every field up by name, accept both
# number spellings, and raise FieldError (-> a dead letter with that reason) only for fields
# an event cannot do without.

MS_TO_NS = 1_000_000


class FieldError(Exception):
    """A required field is missing or malformed: the frame becomes a dead letter with this text."""


def as_number(value: object) -> float | None:
    """A finite float from a JSON number or a numeric string; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def req_number(data: Mapping[str, object], key: str, where: str) -> float:
    number = as_number(data.get(key))
    if number is None:
        raise FieldError(f"{where}: missing or non-numeric '{key}'")
    return number


def req_integer(data: Mapping[str, object], key: str, where: str) -> int:
    """An integer from a JSON integer or a digit string (``"1640001600039"``)."""
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
    raise FieldError(f"{where}: missing or non-integer '{key}'")


def req_text(data: Mapping[str, object], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise FieldError(f"{where}: missing or non-string '{key}'")
    return value


def opt_number(
    data: Mapping[str, object], key: str, counts: Counter[str], where: str
) -> float | None:
    """Optional number: absent, null or "" -> None; anything unreadable is counted, then None."""
    value = data.get(key)
    if value is None or value == "":
        return None
    number = as_number(value)
    if number is None:
        counts[f"{where}.bad_field.{key}"] += 1
    return number


def positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


def iv_fraction(value: float | None) -> float | None:
    """A venue IV that is already a fraction; 0 and negatives (-1) mean "no value"."""
    return value if value is not None and value > 0 else None


# ---- expiry dates --------------------------------------------------------------------------

# Every venue expires options at 08:00 UTC on the expiry date.
EXPIRY_HOUR_UTC = 8
MONTH_CODES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def expiry_ns(expiry: date) -> int:
    """08:00 UTC on ``expiry``, in ns since the epoch."""
    moment = datetime(expiry.year, expiry.month, expiry.day, EXPIRY_HOUR_UTC, tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000_000


def parse_yymmdd(text: str) -> date | None:
    """``"220514"`` -> 2022-05-14 (OKX, Binance); None if it is not a date."""
    if len(text) != 6 or not text.isdigit():
        return None
    try:
        return date(2000 + int(text[:2]), int(text[2:4]), int(text[4:]))
    except ValueError:
        return None


def parse_dmmmyy(text: str) -> date | None:
    """``"6JAN23"`` / ``"27DEC24"`` -> a date (Deribit, Bybit: day not zero-padded)."""
    day, month, year = text[:-5], text[-5:-2], text[-2:]
    if not (day.isdigit() and len(day) <= 2 and year.isdigit() and month in MONTH_CODES):
        return None
    try:
        return date(2000 + int(year), MONTH_CODES.index(month) + 1, int(day))
    except ValueError:
        return None


def safe_token(text: str) -> str:
    """A counter-name fragment from venue text (bounded, no spaces)."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_-/" else "_" for ch in text[:40])
    return cleaned or "empty"


def raw_bytes(raw: bytes | str) -> bytes:
    return raw.encode("utf-8", "replace") if isinstance(raw, str) else bytes(raw)


def ms_header(timestamp_ms: int, receive_time_ns: int, source: str) -> common_pb.EventHeader:
    """Header of a venue event stamped in milliseconds (sequence left for the session)."""
    return common_pb.EventHeader(
        event_time_ns=timestamp_ms * MS_TO_NS, receive_time_ns=receive_time_ns, source=source
    )


def decode_frame(raw: bytes | str, result: FrameResult) -> dict[str, Any] | None:
    """Count a frame and decode it; ``None`` after dead-lettering malformed JSON or a frame
    that is not a JSON object."""
    result.counts["frames"] += 1
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        result.dead_letters.append(DeadLetter(raw_bytes(raw), f"malformed JSON: {exc}"))
        return None
    if not isinstance(message, dict):
        result.dead_letters.append(
            DeadLetter(raw_bytes(raw), f"not a JSON object: {type(message).__name__}")
        )
        return None
    return message


def as_object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(f"{where}: data entry is not an object")
    return value


def each_entry(
    entries: Iterable[object], where: str, result: FrameResult, parse_one: Callable[[Any], None]
) -> None:
    """Entries of an array channel are independent: a bad one is dead-lettered alone."""
    for entry in entries:
        try:
            parse_one(as_object(entry, where))
        except FieldError as exc:
            result.counts["bad_entry"] += 1
            result.dead_letters.append(DeadLetter(orjson.dumps(entry), str(exc)))


def internal_error(raw: bytes | str, where: str, exc: Exception) -> FrameResult:
    """The result that replaces one whose making raised (a bug): a counted dead letter."""
    result = FrameResult()
    result.counts[f"{where}_internal_error"] += 1
    result.dead_letters.append(
        DeadLetter(raw_bytes(raw), f"internal {where} error: {type(exc).__name__}: {exc}")
    )
    return result


def decode_rest_object(body: bytes | str, result: InstrumentParseResult) -> dict[str, Any] | None:
    """A REST body as a JSON object; ``None`` after dead-lettering anything else."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        result.dead_letters.append(DeadLetter(raw_bytes(body), f"malformed JSON: {exc}"))
        return None
    if not isinstance(message, dict):
        result.dead_letters.append(DeadLetter(raw_bytes(body), "not a JSON object"))
        return None
    return message


def collect_instruments(
    entries: Iterable[object],
    parse_one: Callable[[dict[str, Any], Counter[str]], md_pb.Instrument | None],
    result: InstrumentParseResult,
) -> None:
    """Parse each instrument entry; a bad one (or a parser bug) is dead-lettered alone."""
    for entry in entries:
        if not isinstance(entry, dict):
            result.dead_letters.append(
                DeadLetter(orjson.dumps(entry), "instrument is not an object")
            )
            continue
        try:
            instrument = parse_one(entry, result.counts)
        except FieldError as exc:
            result.dead_letters.append(DeadLetter(orjson.dumps(entry), str(exc)))
            continue
        except Exception as exc:  # a parser bug must not stop discovery
            result.dead_letters.append(
                DeadLetter(
                    orjson.dumps(entry), f"internal parse error: {type(exc).__name__}: {exc}"
                )
            )
            continue
        if instrument is not None:
            result.instruments.append(instrument)


def guarded(raw: bytes | str, result: FrameResult, dispatch: Callable[[], None]) -> None:
    """Run ``dispatch``; a FieldError or a parser bug becomes a dead letter, never an exception.

    A frame that raises yields no events (it is dead-lettered whole). Channels that carry an
    array of independent entries dead-letter a bad entry alone and keep the others.
    """
    try:
        dispatch()
    except FieldError as exc:
        result.events.clear()
        result.dead_letters.append(DeadLetter(raw_bytes(raw), str(exc)))
    except Exception as exc:  # a parser bug must not stop the connector: dead-letter it
        result.events.clear()
        result.counts["parse_internal_error"] += 1
        result.dead_letters.append(
            DeadLetter(raw_bytes(raw), f"internal parse error: {type(exc).__name__}: {exc}")
        )


def request_id_of(value: object) -> int | str | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int | str) else None


# ---- book levels ------------------------------------------------------------------------------

TextLevel = tuple[str, str]


def text_levels(entries: object, where: str, side: str) -> list[TextLevel]:
    """``[[price, size, ...], ...]`` (strings or numbers) -> (price, size) texts as received.

    A level must have a finite price > 0 and a finite size >= 0 (size 0 deletes in deltas).
    The texts are kept because OKX checksums hash the venue's own spelling.
    """
    if not isinstance(entries, list):
        raise FieldError(f"{where}: missing or non-list '{side}'")
    levels: list[TextLevel] = []
    for entry in entries:
        # Fast path for the usual shape, a list of two or more numeric strings (this loop is
        # the hottest of the book parsers); anything else takes the checked path below.
        if type(entry) is list and len(entry) >= 2:
            price_text, size_text = entry[0], entry[1]
            if type(price_text) is str and type(size_text) is str:
                try:
                    price_float, size_float = float(price_text), float(size_text)
                except ValueError:
                    pass
                else:
                    if 0.0 < price_float < math.inf and 0.0 <= size_float < math.inf:
                        levels.append((price_text, size_text))
                        continue
        if not isinstance(entry, list | tuple) or len(entry) < 2:
            raise FieldError(f"{where}: malformed {side} entry {entry!r}")
        price_value, size_value = entry[0], entry[1]
        price, size = as_number(price_value), as_number(size_value)
        if price is None or size is None or price <= 0 or size < 0:
            raise FieldError(f"{where}: invalid {side} level {entry!r}")
        levels.append((_level_text(price_value), _level_text(size_value)))
    return levels


def _level_text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def book_levels(levels: Sequence[TextLevel]) -> list[md_pb.BookLevel]:
    return [md_pb.BookLevel(price_native=float(p), size_native=float(s)) for p, s in levels]


def best_first(
    bids: list[md_pb.BookLevel], asks: list[md_pb.BookLevel]
) -> tuple[list[md_pb.BookLevel], list[md_pb.BookLevel]]:
    return (
        sorted(bids, key=lambda level: -level.price_native),
        sorted(asks, key=lambda level: level.price_native),
    )


# ---- book sequencing on top of BookSequencer ---------------------------------------------------


def book_reset_event(
    books: BookSequencer,
    item: NormalisedEvent,
    symbol: str,
    channel: str,
    reason: str,
    result: FrameResult,
    now_ns: int,
) -> NormalisedEvent:
    """Start a resync of ``symbol``: a BookReset (header of ``item``) plus a resubscribe."""
    books.start_resync(symbol, now_ns)
    reset = md_pb.BookReset(symbol=symbol, reason=reason)
    header = header_of(item.event)
    if header is not None:
        reset.header.CopyFrom(header)
    result.resubscribes.append(ResubscribeRequest(symbol, channel, reason))
    return NormalisedEvent(item.currency, "book", md_pb.MarketDataEvent(book_reset=reset))


def sequence_delta(
    books: BookSequencer, item: NormalisedEvent, channel: str, result: FrameResult, now_ns: int
) -> list[NormalisedEvent]:
    """The events a BookDelta becomes after the sequence check (see :class:`BookSequencer`).

    Contiguous -> the delta; duplicate/replayed -> nothing (``book.stale_dropped``); while a
    resync is in flight -> nothing (asked again after the resync timeout); gap or no
    snapshot -> a BookReset and a ResubscribeRequest for ``channel``.
    """
    delta = item.event.book_delta
    symbol, prev, sequence = delta.symbol, delta.prev_venue_sequence, delta.venue_sequence
    last = books.last_sequence(symbol)
    verdict = books.check_delta(symbol, prev, sequence, now_ns)
    if verdict == DeltaVerdict.APPLY:
        return [item]
    if verdict == DeltaVerdict.STALE:
        result.counts["book.stale_dropped"] += 1
        return []
    if verdict == DeltaVerdict.RESYNCING:
        result.counts["book.dropped_while_resyncing"] += 1
        return []
    if verdict == DeltaVerdict.RESYNC_AGAIN:
        result.counts["book.resync_again"] += 1
        result.resubscribes.append(
            ResubscribeRequest(symbol, channel, "no snapshot after resubscribing")
        )
        return []
    if verdict == DeltaVerdict.NO_SNAPSHOT:
        reason = f"delta {sequence} without a snapshot since subscribing"
        result.counts["book.no_snapshot"] += 1
    else:
        reason = f"gap: prev {prev} != last {last} (sequence {sequence})"
        result.counts["book.gap"] += 1
    return [book_reset_event(books, item, symbol, channel, reason, result, now_ns)]


# ---- request matching ---------------------------------------------------------------------------


class PendingRequests:
    """Requests a session encoded and still expects an answer to (bounded, oldest dropped)."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._requests: dict[int | str, tuple[str, tuple[str, ...]]] = {}

    def add(self, request_id: int | str, method: str, channels: Iterable[str] = ()) -> None:
        if len(self._requests) >= self._limit:
            self._requests.pop(next(iter(self._requests)))
        self._requests[request_id] = (method, tuple(channels))

    def get(self, request_id: int | str | None) -> tuple[str, tuple[str, ...]] | None:
        return None if request_id is None else self._requests.get(request_id)

    def pop(self, request_id: int | str | None) -> tuple[str, tuple[str, ...]] | None:
        return None if request_id is None else self._requests.pop(request_id, None)

    def clear(self) -> None:
        self._requests.clear()

    def __len__(self) -> int:
        return len(self._requests)


def name_venue_errors(result: FrameResult, pending: PendingRequests) -> None:
    """Attach the method and channels of the request each venue error answers (if known)."""
    named: list[VenueError] = []
    for error in result.venue_errors:
        request = pending.pop(error.request_id) if not error.method else None
        if request is None:
            named.append(error)
        else:
            named.append(
                VenueError(error.code, error.message, error.request_id, request[0], request[1])
            )
    result.venue_errors = named


# ---- tickers assembled from several channels ----------------------------------------------------

# VenueTicker fields that hold a native price, with their USD-per-coin twin.
PRICE_FIELDS: tuple[tuple[str, str], ...] = (
    ("mark_price_native", "mark_price_usd_per_coin"),
    ("best_bid_price_native", "best_bid_price_usd_per_coin"),
    ("best_ask_price_native", "best_ask_price_usd_per_coin"),
)


def usd_per_coin(
    native: float, unit: md_pb.PremiumUnit, forward: float | None, contract_size: float | None
) -> float | None:
    """A native premium in USD per coin of notional; ``None`` when it cannot be converted."""
    if unit == md_pb.PREMIUM_UNIT_COIN_PER_COIN:
        return native * forward if forward is not None and forward > 0 else None
    if unit == md_pb.PREMIUM_UNIT_USD_PER_COIN:
        return native
    if unit == md_pb.PREMIUM_UNIT_USD_PER_CONTRACT:
        return native / contract_size if contract_size is not None and contract_size > 0 else None
    return None


def fill_usd_per_coin(
    ticker: md_pb.VenueTicker, unit: md_pb.PremiumUnit, contract_size: float | None
) -> None:
    """Set each ``*_usd_per_coin`` from its native price (cleared when it cannot be converted).

    A USD field without a native price is left alone (a venue may publish only the USD value).
    """
    forward = ticker.forward_usd if ticker.HasField("forward_usd") else None
    for native_field, usd_field in PRICE_FIELDS:
        if not ticker.HasField(native_field):
            continue
        value = usd_per_coin(getattr(ticker, native_field), unit, forward, contract_size)
        if value is None:
            ticker.ClearField(usd_field)
        else:
            setattr(ticker, usd_field, value)


def set_best_quotes(
    ticker: md_pb.VenueTicker,
    bid_price: float | None,
    bid_size: float | None,
    ask_price: float | None,
    ask_size: float | None,
) -> None:
    """Best bid/ask of a ticker; a side is set only with a positive price and size (venues
    send an empty side as 0 or "")."""
    if bid_price is not None and bid_price > 0 and bid_size is not None and bid_size > 0:
        ticker.best_bid_price_native = bid_price
        ticker.best_bid_size_native = bid_size
    if ask_price is not None and ask_price > 0 and ask_size is not None and ask_size > 0:
        ticker.best_ask_price_native = ask_price
        ticker.best_ask_size_native = ask_size


class TickerMerger:
    """The latest VenueTicker per symbol, assembled from channels that each own some fields.

    A venue may spread one instrument's ticker over channels (OKX ``opt-summary`` has the IVs
    and forward, ``tickers`` the best bid/ask, ``mark-price`` the mark). Downstream services
    treat every VenueTicker as the whole current state, so a partial message must not blank
    the other channels' fields. ``merge`` replaces exactly the fields the message's channel
    owns (set, or cleared when the message lacks them: an emptied book side must not keep
    its old price) and keeps the rest; the header is the message's.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._tickers: dict[str, md_pb.VenueTicker] = {}

    def merge(self, update: md_pb.VenueTicker, owned: Iterable[str]) -> md_pb.VenueTicker:
        current = self._tickers.get(update.symbol)
        if current is None:
            if len(self._tickers) >= self._limit:
                self._tickers.pop(next(iter(self._tickers)))
            current = md_pb.VenueTicker(symbol=update.symbol)
            self._tickers[update.symbol] = current
        fields = md_pb.VenueTicker.DESCRIPTOR.fields_by_name
        for name in owned:
            current.ClearField(name)
            if fields[name].has_presence:
                if update.HasField(name):
                    setattr(current, name, getattr(update, name))
            else:
                setattr(current, name, getattr(update, name))
        current.header.CopyFrom(update.header)
        merged = md_pb.VenueTicker()
        merged.CopyFrom(current)
        return merged


# ---- a session base for the JSON venues ----------------------------------------------------------


class StampingSession:
    """What every venue session shares: the never-raise guard and header sequence stamping.

    ``header.sequence`` comes from a counter that runs for the session's lifetime (across
    reconnects), or from ``sequence()`` when given (a connector shares one counter between
    its connections so that (source, sequence) stays unique). Subclasses implement
    :meth:`_on_frame` and :meth:`encode`, and name their (un)subscribe methods.
    """

    def __init__(
        self, *, first_sequence: int = 1, sequence: Callable[[], int] | None = None
    ) -> None:
        self._next_sequence = first_sequence
        self._shared_sequence = sequence

    # The venue's (un)subscribe method names (what :meth:`encode` puts on the wire).
    subscribe_method = "subscribe"
    unsubscribe_method = "unsubscribe"

    def encode(self, request: VenueRequest) -> str:
        raise NotImplementedError

    def subscribe(self, channels: Iterable[str]) -> str:
        """Wire text subscribing ``channels`` (``params = {"channels": [...]}``)."""
        request = VenueRequest(self.subscribe_method, {"channels": list(channels)}, "subscribe")
        return self.encode(request)

    def unsubscribe(self, channels: Iterable[str]) -> str:
        request = VenueRequest(self.unsubscribe_method, {"channels": list(channels)}, "unsubscribe")
        return self.encode(request)

    def _take_sequence(self) -> int:
        if self._shared_sequence is not None:
            return self._shared_sequence()
        value = self._next_sequence
        self._next_sequence += 1
        return value

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        try:
            result = self._on_frame(raw, receive_time_ns)
        except Exception as exc:  # belt and braces: the client must never see an exception
            result = internal_error(raw, "session", exc)
        return self.stamp(result)

    def stamp(self, result: FrameResult) -> FrameResult:
        """Give every event of ``result`` the next header sequence (in event order)."""
        for event in result.events:
            header = header_of(event.event)
            if header is not None:
                header.sequence = self._take_sequence()
        return result

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        raise NotImplementedError


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


class WireSession(Protocol):
    """What the runtime needs from a venue session (a :class:`VenueSession` plus subscribes)."""

    @property
    def source(self) -> str: ...

    def on_connected(self) -> None: ...

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult: ...

    def encode(self, request: VenueRequest) -> str: ...

    def subscribe(self, channels: Sequence[str]) -> str: ...

    def unsubscribe(self, channels: Sequence[str]) -> str: ...

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None: ...


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
        session: WireSession,
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
        result.counts[frame_outcome(result)] += 1
        await self.deliver(result)

    async def deliver(self, result: FrameResult) -> None:
        """Act on a session result: replies, counts, events, dead letters, acks, resyncs.

        Called for every received frame, and by a connector for results it produced with
        this connection's session outside a frame (e.g. a REST book snapshot).
        """
        for reply in result.replies:
            # Keep-alive answers go out at once, never behind paced subscribes.
            await self.send(self.session.encode(reply))
        for name, value in result.counts.items():
            self.sink.count(name, value)
        for event in result.events:
            try:
                await self.sink.emit(event.currency, event.kind, event.event)
            except Exception:
                self.log.exception("%s: sink failed to take an event", self.settings.venue)
                self.sink.count("sink_error")
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
        if self._on_result is not None:
            self._on_result(self, result)
        self._maybe_live()

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

    def new_session(self) -> WireSession:
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
