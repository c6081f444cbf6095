"""Two runs' surfaces side by side: the pure part of ``volstream diff``.

Surfaces are lined up per (venue, currency) by event time: each surface of run A is paired
with run B's latest surface at or before its event time (the same event time when both ran
the same cadence over the same input). Surfaces of A outside B's span for the key (before
B's first or after B's last: B had not started, or has not got that far yet) are counted,
not compared. Slices are paired by expiry. Per (venue, currency,
expiry) the report holds the largest differences of ATM vol, 25-delta risk reversal and
butterfly (vol points), of the raw SVI parameters, and how many pairs changed arbitrage
status (butterfly-free, calendar-free, repaired).

Byte identity is counted too, on the surfaces with the fields that do not come from the data
cleared: the wall-clock stamps (publish time, receive time, fit time) and the two counters
that depend on where a run started rather than on what it saw (header sequence, revision).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from volstream.v1 import surface_pb2 as surface_pb

WALL_CLOCK_FIELDS = frozenset({"publish_time_ns", "receive_time_ns", "fit_time_ms"})
RUN_COUNTERS = frozenset({"sequence", "revision"})
VOL_POINTS = 100.0


def clear_fields(message: Message, names: frozenset[str]) -> None:
    """Clear every field called one of ``names``, at any depth (descending only into
    message types that can hold one: a surface's thousands of quotes hold none)."""
    for descriptor, value in message.ListFields():
        if descriptor.name in names:
            message.ClearField(descriptor.name)
        elif descriptor.message_type is None or not _holds(descriptor.message_type, names):
            continue
        elif isinstance(value, Message):
            clear_fields(value, names)
        else:  # repeated messages
            for item in value:
                clear_fields(item, names)


_HOLDS: dict[tuple[str, frozenset[str]], bool] = {}


def _holds(descriptor: Descriptor, names: frozenset[str]) -> bool:
    """Whether messages of this type can contain a field called one of ``names``."""
    key = (descriptor.full_name, names)
    known = _HOLDS.get(key)
    if known is None:
        _HOLDS[key] = False  # recursive types: assume not while looking
        known = any(
            f.name in names or (f.message_type is not None and _holds(f.message_type, names))
            for f in descriptor.fields
        )
        _HOLDS[key] = known
    return known


def comparable_bytes(surface: surface_pb.Surface) -> bytes:
    """The surface's bytes without wall-clock stamps and run counters."""
    copy = surface_pb.Surface()
    copy.CopyFrom(surface)
    clear_fields(copy, WALL_CLOCK_FIELDS | RUN_COUNTERS)
    return copy.SerializeToString(deterministic=True)


@dataclass
class SliceDiff:
    venue: str
    currency: str
    expiry_time_ns: int
    expiry_label: str
    pairs: int = 0
    atm: float = 0.0
    rr25: float = 0.0
    bf25: float = 0.0
    params: float = 0.0
    status_changes: int = 0

    @property
    def largest_vol_points(self) -> float:
        return max(self.atm, self.rr25, self.bf25)


@dataclass
class DiffReport:
    slices: dict[tuple[str, str, int], SliceDiff] = field(default_factory=dict)
    pairs: int = 0
    exact_time_pairs: int = 0
    identical: int = 0
    # Surfaces of A before B's first / after B's last for their key.
    unmatched: int = 0
    beyond: int = 0
    # Slices present in one surface of a pair and not the other.
    missing_slices: int = 0

    @property
    def largest_vol_points(self) -> float:
        return max((s.largest_vol_points for s in self.slices.values()), default=0.0)

    @property
    def status_changes(self) -> int:
        return sum(s.status_changes for s in self.slices.values())

    def within(self, tolerance_vol_points: float) -> bool:
        return self.largest_vol_points <= tolerance_vol_points and self.status_changes == 0


def _delta(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    d = abs(a - b)
    return math.inf if math.isnan(d) else d


def _status(s: surface_pb.ExpirySlice) -> tuple[bool, bool, bool]:
    d = s.diagnostics
    return (d.butterfly_arbitrage_free, d.calendar_arbitrage_free, d.repaired)


def _params(s: surface_pb.ExpirySlice) -> tuple[float, ...]:
    r = s.raw
    return (r.a, r.b, r.rho, r.m, r.sigma)


def compare(a: Iterable[surface_pb.Surface], b: Iterable[surface_pb.Surface]) -> DiffReport:
    """Pair A's surfaces with B's (module docstring) and measure the differences."""
    by_key: dict[tuple[str, str], list[surface_pb.Surface]] = {}
    for surface in b:
        by_key.setdefault((surface.venue, surface.currency.upper()), []).append(surface)
    times: dict[tuple[str, str], list[int]] = {}
    for key, surfaces in by_key.items():
        surfaces.sort(key=lambda s: s.header.event_time_ns)
        times[key] = [s.header.event_time_ns for s in surfaces]
    report = DiffReport()
    for left in a:
        key = (left.venue, left.currency.upper())
        at = left.header.event_time_ns
        known = times.get(key, [])
        if known and at > known[-1]:
            report.beyond += 1
            continue
        index = bisect.bisect_right(known, at) - 1
        if index < 0:
            report.unmatched += 1
            continue
        right = by_key[key][index]
        report.pairs += 1
        if right.header.event_time_ns == at:
            report.exact_time_pairs += 1
        if comparable_bytes(left) == comparable_bytes(right):
            report.identical += 1
        _compare_slices(report, key, left, right)
    return report


def _compare_slices(
    report: DiffReport,
    key: tuple[str, str],
    left: surface_pb.Surface,
    right: surface_pb.Surface,
) -> None:
    rights = {s.expiry_time_ns: s for s in right.slices}
    lefts = {s.expiry_time_ns for s in left.slices}
    report.missing_slices += len(lefts.symmetric_difference(rights))
    for ls in left.slices:
        rs = rights.get(ls.expiry_time_ns)
        if rs is None:
            continue
        venue, ccy = key
        row = report.slices.get((venue, ccy, ls.expiry_time_ns))
        if row is None:
            row = report.slices[(venue, ccy, ls.expiry_time_ns)] = SliceDiff(
                venue, ccy, ls.expiry_time_ns, ls.expiry_label
            )
        row.pairs += 1
        lm, rm = ls.metrics, rs.metrics
        row.atm = max(row.atm, VOL_POINTS * _delta(lm.atm_vol, rm.atm_vol))
        row.rr25 = max(row.rr25, VOL_POINTS * _delta(lm.rr25, rm.rr25))
        row.bf25 = max(row.bf25, VOL_POINTS * _delta(lm.bf25, rm.bf25))
        row.params = max(
            row.params, max(_delta(x, y) for x, y in zip(_params(ls), _params(rs), strict=True))
        )
        if _status(ls) != _status(rs):
            row.status_changes += 1


def render(report: DiffReport, a_name: str, b_name: str) -> str:
    """The report as a table, largest difference first."""
    lines = [
        f"{a_name} vs {b_name}: {report.pairs} surface pairs ({report.exact_time_pairs} at the "
        f"same event time, {report.identical} byte-identical apart from wall-clock stamps and "
        f"run counters); of {a_name}, {report.unmatched} before {b_name} starts and "
        f"{report.beyond} after it ends; {report.missing_slices} slices on one side only",
        f"{'venue':<8} {'ccy':<4} {'expiry':<10} {'pairs':>6} {'|dATM|':>8} {'|dRR25|':>8} "
        f"{'|dBF25|':>8} {'|dparam|':>9} {'status':>6}",
    ]
    rows = sorted(
        report.slices.values(),
        key=lambda s: (-s.largest_vol_points, s.venue, s.currency, s.expiry_time_ns),
    )
    for s in rows:
        lines.append(
            f"{s.venue:<8} {s.currency:<4} {s.expiry_label:<10} {s.pairs:>6} {s.atm:>8.4f} "
            f"{s.rr25:>8.4f} {s.bf25:>8.4f} {s.params:>9.2e} {s.status_changes:>6}"
        )
    lines.append(
        f"largest difference {report.largest_vol_points:.4f} vol points; "
        f"{report.status_changes} arbitrage status changes (vol points: 1.0 = 1% vol)"
    )
    return "\n".join(lines)
