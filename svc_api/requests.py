"""Request validation: pure functions from a request to a typed query or an ApiError.

Every error names the field, the value and what was expected, so that a client in any
language can tell what to fix from the status message alone.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from svc_api.store import StreamFilter, SurfaceKey, normalise_key
from volstream.v1 import surface_service_pb2 as api_pb

_CURRENCY = re.compile(r"^[A-Za-z0-9]{2,10}$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# A StreamSurfaces min_interval_ms above this is almost certainly a unit mistake.
MAX_MIN_INTERVAL_MS = 3_600_000
# GetSurfaceAt accepts times this far past the server clock (clock skew between machines).
FUTURE_TOLERANCE_NS = 60 * 1_000_000_000


@dataclass(frozen=True)
class ApiError:
    code: grpc.StatusCode
    message: str


def invalid(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message)


def format_time_ns(time_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as JetStream writes it."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def parse_venue(value: str, known: Iterable[str]) -> str | ApiError:
    known_set = set(known)
    if not value.strip():
        return invalid(f"venue is required (one of: {', '.join(sorted(known_set))})")
    venue = value.strip().lower()
    if venue not in known_set:
        return invalid(f"unknown venue {value!r} (known: {', '.join(sorted(known_set))})")
    return venue


def parse_currency(value: str) -> str | ApiError:
    if not value.strip():
        return invalid("currency is required (e.g. BTC)")
    if not _CURRENCY.match(value.strip()):
        return invalid(f"malformed currency {value!r}: expected 2-10 letters/digits like BTC")
    return value.strip().upper()


def parse_key(venue: str, currency: str, known_venues: Iterable[str]) -> SurfaceKey | ApiError:
    v = parse_venue(venue, known_venues)
    if isinstance(v, ApiError):
        return v
    c = parse_currency(currency)
    if isinstance(c, ApiError):
        return c
    key = normalise_key(v, c)
    return invalid(key) if isinstance(key, str) else key


def parse_expiry(value: str) -> str | ApiError:
    """An ISO date label ("2021-08-06")."""
    text = value.strip()
    if not text:
        return invalid("expiry is required as an ISO date like 2021-08-06")
    if not _ISO_DATE.match(text):
        return invalid(f"malformed expiry {value!r}: expected an ISO date like 2021-08-06")
    try:
        dt.date.fromisoformat(text)
    except ValueError as exc:
        return invalid(f"malformed expiry {value!r}: {exc}")
    return text


def parse_time(request: api_pb.GetSurfaceAtRequest, now_ns: int) -> int | ApiError:
    """The requested time in ns since the epoch."""
    if not request.HasField("time"):
        return invalid("time is required (google.protobuf.Timestamp)")
    ts = request.time
    if ts.seconds < 0:
        return invalid(f"time {ts.seconds}s is before 1970-01-01")
    if not 0 <= ts.nanos < 1_000_000_000:
        return invalid(f"time.nanos {ts.nanos} is outside [0, 999999999]")
    if ts.seconds > 253_402_300_799:  # 9999-12-31T23:59:59Z, the Timestamp range
        return invalid(f"time {ts.seconds}s is after 9999-12-31")
    time_ns = ts.seconds * 1_000_000_000 + ts.nanos
    if time_ns > now_ns + FUTURE_TOLERANCE_NS:
        return invalid(
            f"time {format_time_ns(time_ns)} is in the future "
            f"(server time {format_time_ns(now_ns)})"
        )
    return time_ns


# GetMetricHistory answers at most this many points (a wider range needs a step).
MAX_HISTORY_POINTS = 200_000


@dataclass(frozen=True)
class HistoryQuery:
    key: SurfaceKey
    start_ns: int
    end_ns: int
    step_ns: int
    tenor_days: int | None
    expiry: str | None

    def describe(self) -> str:
        what = f"{self.tenor_days}-day tenor" if self.tenor_days is not None else self.expiry
        return (
            f"{self.key} {what} between {format_time_ns(self.start_ns)} "
            f"and {format_time_ns(self.end_ns)}"
        )


def _timestamp_ns(ts: Timestamp, name: str) -> int | ApiError:
    if ts.seconds < 0:
        return invalid(f"{name} {ts.seconds}s is before 1970-01-01")
    if not 0 <= ts.nanos < 1_000_000_000:
        return invalid(f"{name}.nanos {ts.nanos} is outside [0, 999999999]")
    if ts.seconds > 253_402_300_799:
        return invalid(f"{name} {ts.seconds}s is after 9999-12-31")
    return ts.seconds * 1_000_000_000 + ts.nanos


def parse_history_request(
    request: api_pb.GetMetricHistoryRequest, known_venues: Iterable[str]
) -> HistoryQuery | ApiError:
    key = parse_key(request.venue, request.currency, known_venues)
    if isinstance(key, ApiError):
        return key
    times: list[int] = []
    for name in ("start_time", "end_time"):
        if not request.HasField(name):
            return invalid(f"{name} is required (google.protobuf.Timestamp)")
        t = _timestamp_ns(getattr(request, name), name)
        if isinstance(t, ApiError):
            return t
        times.append(t)
    start_ns, end_ns = times
    if start_ns >= end_ns:
        return invalid(
            f"start_time {format_time_ns(start_ns)} is not before end_time {format_time_ns(end_ns)}"
        )
    step = request.step
    if step.seconds < 0 or step.nanos < 0:
        return invalid(f"step {step.seconds}s {step.nanos}ns is negative")
    step_ns = step.seconds * 1_000_000_000 + step.nanos
    if step_ns and (end_ns - start_ns) // step_ns > MAX_HISTORY_POINTS:
        return invalid(
            f"step {step_ns / 1e9:g}s gives more than {MAX_HISTORY_POINTS} points over the range"
        )
    which = request.WhichOneof("smile")
    if which is None:
        return invalid("tenor_days or expiry is required (which smile)")
    if which == "tenor_days":
        if request.tenor_days <= 0:
            return invalid(f"tenor_days {request.tenor_days} must be positive")
        return HistoryQuery(key, start_ns, end_ns, step_ns, request.tenor_days, None)
    expiry = parse_expiry(request.expiry)
    if isinstance(expiry, ApiError):
        return expiry
    return HistoryQuery(key, start_ns, end_ns, step_ns, None, expiry)


@dataclass(frozen=True)
class StreamQuery:
    filter: StreamFilter
    min_interval_ms: int
    omit_quotes: bool


def parse_stream_request(
    request: api_pb.StreamSurfacesRequest, known_venues: Iterable[str]
) -> StreamQuery | ApiError:
    known = list(known_venues)
    venues: set[str] = set()
    for raw in request.venues:
        v = parse_venue(raw, known)
        if isinstance(v, ApiError):
            return ApiError(v.code, f"venues: {v.message}")
        venues.add(v)
    currencies: set[str] = set()
    for raw in request.currencies:
        c = parse_currency(raw)
        if isinstance(c, ApiError):
            return ApiError(c.code, f"currencies: {c.message}")
        currencies.add(c)
    if request.min_interval_ms < 0:
        return invalid(f"min_interval_ms {request.min_interval_ms} is negative")
    if request.min_interval_ms > MAX_MIN_INTERVAL_MS:
        return invalid(
            f"min_interval_ms {request.min_interval_ms} exceeds {MAX_MIN_INTERVAL_MS} (1 hour)"
        )
    return StreamQuery(
        StreamFilter(frozenset(venues) or None, frozenset(currencies) or None),
        request.min_interval_ms,
        request.omit_quotes,
    )
