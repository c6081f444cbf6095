"""Venue-independent pure pieces of a connector: no I/O and no clock (time is an argument).
The async runtime that does the I/O is in svc_connector/runtime.py.

- :class:`ConnectionStateMachine`: allowed state changes of one websocket, with reasons.
- :class:`BookSequencer`: per-symbol book sequence checks (apply / stale / gap / resync).
- :class:`ChannelAllocator`: spreads channel groups over connections within a per-connection
  budget and a connection cap, keeping existing assignments stable (no restart on listings).
- :class:`TokenBucket`: request pacing (subscribe rate limits).
- :func:`batched`, :func:`diff_symbols`: small helpers.

Shared by the JSON venue adapters (OKX, Bybit, Binance), also pure:

- frame/body decoding and field readers that accept numbers and numeric strings
  (:func:`decode_frame`, :func:`req_number`, :func:`opt_number`, ...; :class:`FieldError`
  becomes a dead letter), :func:`guarded`, :func:`each_entry`, :func:`collect_instruments`;
- book helpers: :func:`text_levels`, :func:`sequence_delta` (BookSequencer verdict ->
  events, BookReset + resubscribe on a gap), :func:`book_reset_event`;
- :class:`PendingRequests` (request/response matching), :class:`TickerMerger` (one ticker
  assembled from several channels), :func:`fill_usd_per_coin`, :class:`StampingSession`.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from operator import itemgetter
from typing import Any

import orjson
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from svc_connector.venues.base import (
    ConnectionState,
    DeadLetter,
    FrameResult,
    InstrumentParseResult,
    NormalisedEvent,
    ResubscribeRequest,
    VenueError,
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
    if type(value) is str:  # the usual spelling, read inline (as_number does the same)
        try:
            parsed = float(value)
        except ValueError:
            number: float | None = None
        else:
            number = parsed if parsed - parsed == 0.0 else None  # not NaN nor an infinity
    else:
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


def cached(
    lookup: Callable[[str], str | None], limit: int = 100_000
) -> Callable[[str], str | None]:
    """``lookup`` remembering its answers (a symbol's currency is asked for every event);
    ``None`` answers are not kept. Bounded: forgets everything when ``limit`` is reached."""
    answers: dict[str, str] = {}

    def cached_lookup(key: str) -> str | None:
        answer = answers.get(key)
        if answer is None:
            answer = lookup(key)
            if answer is not None:
                if len(answers) >= limit:
                    answers.clear()
                answers[key] = answer
        return answer

    return cached_lookup


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
    counts = result.counts
    counts["frames"] = counts.get("frames", 0) + 1  # not +=: Counter.__missing__ is Python
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


def number_levels(entries: object, where: str, side: str) -> list[tuple[float, float]]:
    """:func:`text_levels` as (price, size) numbers (same checks and errors), for venues
    whose strings nothing hashes."""
    if not isinstance(entries, list):
        raise FieldError(f"{where}: missing or non-list '{side}'")
    levels: list[tuple[float, float]] = []
    for entry in entries:
        if type(entry) is list and len(entry) >= 2:
            price_text, size_text = entry[0], entry[1]
            if type(price_text) is str and type(size_text) is str:
                try:
                    price, size = float(price_text), float(size_text)
                except ValueError:
                    pass
                else:
                    if 0.0 < price < math.inf and 0.0 <= size < math.inf:
                        levels.append((price, size))
                        continue
        price_text, size_text = text_levels([entry], where, side)[0]
        levels.append((float(price_text), float(size_text)))
    return levels


# One BookLevel as a length-delimited element of BookSnapshot/BookDelta ``bids`` (field 3) or
# ``asks`` (field 4): tag, length 18, then price (field 1) and size (field 2) as doubles.
_LEVEL_WIRE = struct.Struct("<BBBdBd")
BIDS_TAG = (3 << 3) | 2
ASKS_TAG = (4 << 3) | 2


def levels_wire(tag: int, levels: Iterable[tuple[float, float]]) -> bytes:
    """(price, size) levels as the wire bytes of a book's ``bids`` (:data:`BIDS_TAG`) or
    ``asks`` (:data:`ASKS_TAG`): ``book.MergeFromString`` of them appends the levels in C
    (a zero size is written explicitly; it reads back as the same message)."""
    pack = _LEVEL_WIRE.pack
    return b"".join([pack(tag, 18, 0x09, price, 0x11, size) for price, size in levels])


def wire_levels(
    entries: object, where: str, side: str, tag: int, best_first: bool | None = None
) -> bytes:
    """:func:`levels_wire` of :func:`number_levels` in one pass for the usual shape.

    ``best_first`` True (bids) or False (asks): only the live levels (size > 0), best first,
    as :func:`best_first_pairs` orders them; None: every level in venue order. Entries that
    are not numeric strings, or live levels out of order, take the general path (same
    checks, errors and result)."""
    pack = _LEVEL_WIRE.pack
    inf = math.inf
    parts: list[bytes] = []
    last = inf if best_first else -inf
    if isinstance(entries, list):
        for entry in entries:
            if type(entry) is not list or len(entry) < 2:
                break
            price_text, size_text = entry[0], entry[1]
            if type(price_text) is not str or type(size_text) is not str:
                break
            try:
                price, size = float(price_text), float(size_text)
            except ValueError:
                break
            if not (0.0 < price < inf and 0.0 <= size < inf):
                break
            if best_first is not None:
                if size == 0.0:
                    continue
                if (price > last) if best_first else (price < last):
                    break  # not in order: sorted below
                last = price
            parts.append(pack(tag, 18, 0x09, price, 0x11, size))
        else:
            return b"".join(parts)
    levels = number_levels(entries, where, side)
    if best_first is not None:
        levels = sorted(
            [level for level in levels if level[1] > 0], key=_LEVEL_PRICE, reverse=best_first
        )
    return levels_wire(tag, levels)


def emit_ticker(
    result: FrameResult,
    currency: str,
    symbol: str,
    fields: dict[str, Any],
    event_time_ns: int,
    receive_time_ns: int,
    source: str,
) -> None:
    """Append the VenueTicker of ``fields`` (its field values by name), built in one
    constructor call: a setattr per field costs more than the parse around it."""
    fields["header"] = {
        "event_time_ns": event_time_ns,
        "receive_time_ns": receive_time_ns,
        "source": source,
    }
    fields["symbol"] = symbol
    result.events.append(NormalisedEvent(currency, "ticker", md_pb.MarketDataEvent(ticker=fields)))


def add_number_levels(
    target: RepeatedCompositeFieldContainer[md_pb.BookLevel], levels: Iterable[tuple[float, float]]
) -> None:
    """Append (price, size) levels to a message's own repeated field."""
    add = target.add
    for price, size in levels:
        add(price_native=price, size_native=size)


def best_first_pairs(
    bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Live levels (size > 0) best first, like :func:`best_first` (a stable sort)."""
    return (
        sorted([level for level in bids if level[1] > 0], key=_LEVEL_PRICE, reverse=True),
        sorted([level for level in asks if level[1] > 0], key=_LEVEL_PRICE),
    )


_LEVEL_PRICE = itemgetter(0)


def _level_text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def book_levels(levels: Sequence[TextLevel]) -> list[md_pb.BookLevel]:
    return [md_pb.BookLevel(price_native=float(p), size_native=float(s)) for p, s in levels]


def add_book_levels(
    target: RepeatedCompositeFieldContainer[md_pb.BookLevel], levels: Iterable[TextLevel]
) -> None:
    """Append ``levels`` to a message's own repeated field (no BookLevel built and copied)."""
    add = target.add
    for price, size in levels:
        add(price_native=float(price), size_native=float(size))


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
    header = item.event_header()
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
    the other channels' fields. A merge replaces exactly the fields the message's channel
    owns (set, or cleared when the message lacks them: an emptied book side must not keep
    its old price) and keeps the rest; the header is the message's.

    The state is kept as plain ``{field: value}`` dicts (no protobuf copies per merge): the
    hot path hands over the fields it parsed (:meth:`merge_fields`) and builds the message
    once from the merged dict.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self._limit = limit
        self._fields: dict[str, dict[str, Any]] = {}

    def merge_fields(
        self, symbol: str, fields: Mapping[str, Any], owned: Iterable[str]
    ) -> dict[str, Any]:
        """Merge ``fields`` (the set fields of an update; absent = cleared) for the ``owned``
        names; returns a fresh dict of every field now set (without header and symbol)."""
        current = self.current(symbol)
        for name in owned:
            value = fields.get(name)
            if value is None:
                current.pop(name, None)
            else:
                current[name] = value
        return dict(current)

    def current(self, symbol: str) -> dict[str, Any]:
        """The merger's own fields dict of ``symbol`` (made empty the first time; the oldest
        symbol is dropped at the limit). A hot path may merge into it in place, setting or
        popping exactly the fields its channel owns, as :meth:`merge_fields` does."""
        current = self._fields.get(symbol)
        if current is None:
            if len(self._fields) >= self._limit:
                self._fields.pop(next(iter(self._fields)))
            current = self._fields[symbol] = {}
        return current

    def merge(self, update: md_pb.VenueTicker, owned: Iterable[str]) -> md_pb.VenueTicker:
        merged = self.merge_fields(update.symbol, ticker_fields(update, owned), owned)
        return md_pb.VenueTicker(header=update.header, symbol=update.symbol, **merged)


_TICKER_PRESENCE: dict[str, bool] = {
    f.name: f.has_presence for f in md_pb.VenueTicker.DESCRIPTOR.fields
}


def ticker_fields(ticker: md_pb.VenueTicker, names: Iterable[str]) -> dict[str, Any]:
    """The set fields of ``ticker`` among ``names`` (proto3 fields without presence count as
    set when they hold a non-default value)."""
    fields: dict[str, Any] = {}
    for name in names:
        if _TICKER_PRESENCE[name]:
            if ticker.HasField(name):
                fields[name] = getattr(ticker, name)
        else:
            value = getattr(ticker, name)
            if value:
                fields[name] = value
    return fields


def fill_usd_fields(
    fields: dict[str, Any], unit: md_pb.PremiumUnit, contract_size: float | None
) -> None:
    """:func:`fill_usd_per_coin` on a ``{field: value}`` dict of a VenueTicker."""
    forward = fields.get("forward_usd")
    for native_field, usd_field in PRICE_FIELDS:
        native = fields.get(native_field)
        if native is None:
            continue
        value = usd_per_coin(native, unit, forward, contract_size)
        if value is None:
            fields.pop(usd_field, None)
        else:
            fields[usd_field] = value


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
        shared = self._shared_sequence
        for item in result.events:
            header = item.header or item.event_header()
            if header is None:
                continue
            if shared is not None:
                header.sequence = shared()
            else:
                header.sequence = self._next_sequence
                self._next_sequence += 1
        return result

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        raise NotImplementedError
