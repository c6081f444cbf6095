"""The API's reads of the surface archive (layout: volstream/archive.py, docs/archive.md).

Two queries, both file by file so that one damaged file costs only its own rows: it is
logged, counted (``on_damaged``) and skipped, and the answer comes from the rest.

- :meth:`ArchiveReader.surface_at`: the last surface *stored* at or before a time (the same
  clock as the SURFACE stream's ``GetSurfaceAt``), for times past the stream's retention;
- :meth:`ArchiveReader.metric_history`: one smile's metrics (a fixed tenor or an expiry)
  over an event-time range, optionally one point per step.

Reads are blocking (pyarrow); the servicer runs them in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from volstream.archive import (
    NODES,
    SURFACES,
    TENORS,
    PartitionKey,
    dates,
    parse_file_name,
    partition_files,
    read_rows,
    surface_from_rows,
    utc_date,
)
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger(__name__)

DAY_NS = 86_400 * 1_000_000_000
METRICS = ("atm_vol", "rr25", "bf25", "rr10", "bf10")


@dataclass(frozen=True)
class MetricRow:
    event_time_ns: int
    revision: int
    atm_vol: float
    rr25: float
    bf25: float
    rr10: float
    bf10: float
    delta_convention: str
    forward_usd: float
    time_to_expiry_years: float


@dataclass(frozen=True)
class Coverage:
    """The event dates the archive holds for a surface (first and last, ISO)."""

    first: str
    last: str


class ArchiveReader:
    def __init__(self, root: Path, on_damaged: Callable[[Path, str], None] | None = None) -> None:
        self.root = root
        self.on_damaged = on_damaged
        self.damaged: dict[Path, str] = {}

    def _read(self, path: Path, **kwargs: Any) -> pa.Table | None:
        try:
            return pq.read_table(path, **kwargs)
        except FileNotFoundError:
            return None
        except Exception as exc:  # pyarrow raises several types for a damaged file
            reason = f"{type(exc).__name__}: {exc}"
            if path not in self.damaged:  # reported once per file, skipped at every read
                log.error("archive file %s is damaged and skipped: %s", path, reason)
                if self.on_damaged is not None:
                    self.on_damaged(path, reason)
            self.damaged[path] = reason
            return None

    def coverage(self, venue: str, currency: str) -> Coverage | None:
        held = [
            d
            for d in dates(self.root, SURFACES)
            if PartitionKey(SURFACES, d, venue, currency).path(self.root).is_dir()
        ]
        return Coverage(held[0], held[-1]) if held else None

    # --- GetSurfaceAt past the stream's retention -------------------------------------------
    def surface_at(self, venue: str, currency: str, time_ns: int) -> surface_pb.Surface | None:
        """The last surface of (venue, currency) stored at or before ``time_ns``, without
        quotes; None when the archive has none."""
        limit = utc_date(time_ns + DAY_NS)  # event dates run a little behind store times
        best: tuple[int, PartitionKey] | None = None
        for date in reversed([d for d in dates(self.root, SURFACES) if d <= limit]):
            key = PartitionKey(SURFACES, date, venue, currency)
            found = self._last_stored_at_or_before(key, time_ns)
            if best is not None:
                # Around midnight event dates and store times straddle two dates: the date
                # before the first match may hold a later one (stream order is store order).
                if found is not None and found > best[0]:
                    best = (found, key)
                break
            if found is not None:
                best = (found, key)
        return self._surface(best[1], best[0]) if best is not None else None

    def _last_stored_at_or_before(self, key: PartitionKey, time_ns: int) -> int | None:
        """The stream sequence of the last surface of ``key`` stored at or before time_ns."""
        for path in reversed(partition_files(self.root, key)):
            table = self._read(path, columns=["stream_seq", "stored_time"])
            if table is None:
                continue
            stored = table.column("stored_time").cast(pa.int64())
            mask = pc.less_equal(stored, pa.scalar(time_ns, pa.int64()))
            seqs = table.column("stream_seq").filter(mask)
            if len(seqs):
                return int(pc.max(seqs).as_py())
        return None

    def _rows(self, key: PartitionKey, stream_seq: int) -> list[dict[str, Any]]:
        for path in partition_files(self.root, key):
            span = parse_file_name(path.name)
            if span is None or not span[0] <= stream_seq <= span[1]:
                continue
            table = self._read(path, filters=[("stream_seq", "=", stream_seq)])
            return [] if table is None else read_rows(table)
        return []

    def _surface(self, key: PartitionKey, stream_seq: int) -> surface_pb.Surface:
        rows = {
            table: self._rows(PartitionKey(table, key.date, key.venue, key.currency), stream_seq)
            for table in (SURFACES, TENORS, NODES)
        }
        return surface_from_rows(key.venue, key.currency, rows[SURFACES], rows[TENORS], rows[NODES])

    # --- GetMetricHistory -----------------------------------------------------------------
    def metric_history(
        self,
        venue: str,
        currency: str,
        start_ns: int,
        end_ns: int,
        *,
        tenor_days: int | None = None,
        expiry: str | None = None,
    ) -> list[MetricRow]:
        """Every revision's metrics of one smile with start_ns <= event time < end_ns, in
        event-time order (one row per revision)."""
        table_name = TENORS if tenor_days is not None else SURFACES
        wanted = (
            [("tenor_days", "=", tenor_days), ("available", "=", True)]
            if tenor_days is not None
            else [("expiry_label", "=", expiry)]
        )
        start_ts = pa.scalar(start_ns, pa.timestamp("ns", tz="UTC"))
        end_ts = pa.scalar(end_ns, pa.timestamp("ns", tz="UTC"))
        filters = [*wanted, ("event_time", ">=", start_ts), ("event_time", "<", end_ts)]
        convention = "delta_convention" if tenor_days is not None else "metrics_delta_convention"
        columns = [
            "event_time",
            "revision",
            "stream_seq",
            *METRICS,
            convention,
            "forward_usd",
            "time_to_expiry_years",
        ]
        first, last = utc_date(start_ns), utc_date(max(start_ns, end_ns - 1))
        by_seq: dict[int, MetricRow] = {}
        for date in dates(self.root, table_name):
            if not first <= date <= last:
                continue
            key = PartitionKey(table_name, date, venue, currency)
            for path in partition_files(self.root, key):
                table = self._read(path, columns=columns, filters=filters)
                if table is None:
                    continue
                for r in read_rows(table):
                    by_seq[r["stream_seq"]] = MetricRow(
                        event_time_ns=r["event_time"],
                        revision=r["revision"],
                        atm_vol=r["atm_vol"],
                        rr25=r["rr25"],
                        bf25=r["bf25"],
                        rr10=r["rr10"],
                        bf10=r["bf10"],
                        delta_convention=r[convention] or "",
                        forward_usd=r["forward_usd"],
                        time_to_expiry_years=r["time_to_expiry_years"],
                    )
        return sorted(by_seq.values(), key=lambda m: (m.event_time_ns, m.revision))


def last_per_step(rows: list[MetricRow], start_ns: int, step_ns: int) -> list[MetricRow]:
    """The last row of each [start + k step, start + (k + 1) step) (rows in time order)."""
    if step_ns <= 0:
        return rows
    out: dict[int, MetricRow] = {}
    for row in rows:
        out[(row.event_time_ns - start_ns) // step_ns] = row
    return [out[k] for k in sorted(out)]
