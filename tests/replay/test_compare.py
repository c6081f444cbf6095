"""`volstream diff`'s pure part: pairing surfaces by event time and measuring differences."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from replay.archive_source import load_archive
from replay.compare import comparable_bytes, compare, render
from replay.source import RangeError, Retained, check_range
from volstream.archive import SURFACES, PartitionKey, file_name, surface_columns, to_arrow, utc_date
from volstream.v1 import surface_pb2 as surface_pb

S = 1_000_000_000
EXPIRY = 1_800_000_000 * S


def surface(
    at_s: int, atm: float = 0.5, venue: str = "deribit", **diag: bool
) -> surface_pb.Surface:
    s = surface_pb.Surface(venue=venue, currency="BTC", revision=at_s)
    s.header.event_time_ns = at_s * S
    s.header.publish_time_ns = at_s * S + 12_345  # wall clock: never compared
    s.header.sequence = at_s
    sl = s.slices.add(expiry_time_ns=EXPIRY, expiry_label="27MAR26")
    sl.metrics.atm_vol = atm
    sl.metrics.rr25 = 0.01
    sl.metrics.bf25 = 0.002
    sl.raw.a, sl.raw.b, sl.raw.rho, sl.raw.m, sl.raw.sigma = 0.01, 0.1, -0.3, 0.0, 0.2
    sl.diagnostics.butterfly_arbitrage_free = diag.get("butterfly_free", True)
    sl.diagnostics.calendar_arbitrage_free = True
    sl.diagnostics.fit_time_ms = 3.0 + at_s  # wall clock too
    return s


def test_identical_runs_are_identical_apart_from_wall_clock_and_run_counters() -> None:
    a = [surface(t) for t in (10, 11, 12)]
    b = [surface(t) for t in (10, 11, 12)]
    for s in b:
        s.header.publish_time_ns += 999
        s.header.sequence += 100  # another run's counters
        s.revision += 100
        s.slices[0].diagnostics.fit_time_ms += 1.0
    report = compare(a, b)
    assert (report.pairs, report.exact_time_pairs, report.identical) == (3, 3, 3)
    assert report.largest_vol_points == 0.0 and report.within(0.0)
    assert comparable_bytes(a[0]) == comparable_bytes(b[0])


def test_differences_are_measured_in_vol_points_per_expiry() -> None:
    a = [surface(10, atm=0.50), surface(11, atm=0.52)]
    b = [surface(10, atm=0.50), surface(11, atm=0.51, butterfly_free=False)]
    report = compare(a, b)
    row = report.slices[("deribit", "BTC", EXPIRY)]
    assert row.pairs == 2 and row.atm == pytest.approx(1.0)  # 0.52 vs 0.51: one vol point
    assert row.status_changes == 1 and report.identical == 1
    assert not report.within(5.0)  # a status change fails whatever the tolerance
    assert "27MAR26" in render(report, "A", "B")


def test_pairs_by_event_time_and_counts_what_lies_outside_the_other_run() -> None:
    a = [surface(t) for t in (5, 10, 12, 20)]
    b = [surface(t) for t in (10, 11, 15)]
    report = compare(a, b)
    # 5: before B starts; 10 -> 10 (same time); 12 -> 11 (latest before); 20: after B ends.
    assert (report.unmatched, report.pairs, report.exact_time_pairs, report.beyond) == (1, 2, 1, 1)


def test_ranges_outside_what_is_retained_name_what_is_there() -> None:
    have = Retained("MD", 1, 100, 1_000 * S, 1_060 * S)
    assert check_range(have, "MD", 1_000 * S, None) == 1_060 * S
    assert check_range(have, "MD", 1_010 * S, 1_020 * S) == 1_020 * S
    with pytest.raises(RangeError, match="is not before"):
        check_range(have, "MD", 1_020 * S, 1_010 * S)
    with pytest.raises(RangeError, match="outside what is retained: MD holds 1970"):
        check_range(have, "MD", 900 * S, None)
    with pytest.raises(RangeError, match="past what is retained"):
        check_range(have, "MD", 1_010 * S, 2_000 * S)
    with pytest.raises(RangeError, match="holds no messages"):
        check_range(None, "MD", 1_010 * S, None)


def write_archive(root: Path, surfaces: list[surface_pb.Surface]) -> None:
    """The surfaces as svc_archive lays them out (one file per partition)."""
    columns: dict[tuple[str, str], dict[str, list[object]]] = {}
    for seq, s in enumerate(surfaces, 1):
        rows = surface_columns(s, seq, s.header.event_time_ns)[SURFACES]
        into = columns.setdefault((s.venue, s.currency), {k: [] for k in rows})
        for k, v in rows.items():
            into[k].extend(v)
    for (venue, ccy), cols in columns.items():
        key = PartitionKey(SURFACES, utc_date(surfaces[0].header.event_time_ns), venue, ccy)
        key.path(root).mkdir(parents=True)
        pq.write_table(to_arrow(SURFACES, cols), key.path(root) / file_name(1, len(surfaces)))


def test_archives_compare_like_streams_and_a_damaged_file_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_archive(tmp_path / "a", [surface(t) for t in (10, 11, 12)])
    write_archive(tmp_path / "b", [surface(t, atm=0.51) for t in (10, 11, 12)])
    a, b = load_archive(tmp_path / "a"), load_archive(tmp_path / "b")
    assert [s.header.event_time_ns for s in a] == [10 * S, 11 * S, 12 * S]
    assert a[1].slices[0].metrics.atm_vol == 0.5 and a[1].revision == 11
    report = compare(a, b)
    assert report.pairs == 3 and report.slices[("deribit", "BTC", EXPIRY)].atm == pytest.approx(1)
    (next((tmp_path / "b").rglob("*.parquet"))).write_bytes(b"PAR1 not really")
    assert load_archive(tmp_path / "b") == []
    assert "skipping unreadable archive file" in capsys.readouterr().err
