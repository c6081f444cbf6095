"""The archiver's pure core: published surfaces in, files to write out.

State: one buffer of rows per hive partition (table, date, venue, currency), the highest
SURFACE stream sequence already in each partition (its files or its buffer), and the highest
sequence handled. No I/O, no clock: "now" (for rolling by age) is an argument.

Exactly once: a partition's files hold, in stream order, every row of that partition up to
its high-water sequence, so a row whose sequence is at or below it is already archived and is
skipped. Everything at or below :attr:`ArchiveCore.durable_through` is in a committed file (or
produced no row); after a crash the runtime rewinds its durable consumer to just past it and
the redelivered surfaces fill in exactly what was lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from volstream.archive import (
    MD,
    TABLES,
    Columns,
    PartitionKey,
    md_columns,
    surface_columns,
    utc_date,
)
from volstream.v1 import surface_pb2 as surface_pb


@dataclass(frozen=True)
class ArchiveSettings:
    # A partition's buffer becomes a file at this many rows ...
    roll_rows: int = 200_000
    # ... or when its first row has waited this long (wall ns, from the runtime).
    roll_age_ns: int = 300 * 1_000_000_000


@dataclass
class Flush:
    """Rows of one partition to write as one file (stream order)."""

    key: PartitionKey
    columns: Columns
    first_seq: int
    last_seq: int
    rows: int


@dataclass
class _Buffer:
    columns: Columns
    first_seq: int
    last_seq: int
    started_ns: int
    rows: int = 0


@dataclass
class Added:
    """What one surface did: rows buffered, rows skipped as already archived, files due."""

    rows: int = 0
    skipped: int = 0
    flushes: list[Flush] = field(default_factory=list)


class NotArchivable(ValueError):
    """The message cannot be archived (the reason is the message)."""


class ArchiveCore:
    def __init__(
        self,
        settings: ArchiveSettings,
        high_water: Mapping[PartitionKey, int] | None = None,
        durable_through: int = 0,
    ) -> None:
        self.settings = settings
        # Highest sequence in each partition's committed files (read back at start).
        self.committed: dict[PartitionKey, int] = dict(high_water or {})
        # Highest sequence in each partition, committed or buffered.
        self.high_water: dict[PartitionKey, int] = dict(self.committed)
        self.buffers: dict[PartitionKey, _Buffer] = {}
        self.handled_through = durable_through

    @property
    def durable_through(self) -> int:
        """Every surface at or below this sequence is in a committed file (or had no rows)."""
        if not self.buffers:
            return self.handled_through
        return min(b.first_seq for b in self.buffers.values()) - 1

    def add(self, data: bytes, stream_seq: int, stored_time_ns: int, now_ns: int) -> Added:
        """Buffer one published surface; the files that became due by size. Raises
        NotArchivable for a payload that cannot be archived."""
        try:
            surface = surface_pb.Surface.FromString(data)
        except DecodeError as exc:
            raise NotArchivable(f"not a Surface: {exc}") from None
        if not surface.venue or not surface.currency:
            raise NotArchivable("Surface without venue or currency")
        if surface.header.event_time_ns <= 0:
            raise NotArchivable("Surface without an event time")
        date = utc_date(surface.header.event_time_ns)
        venue, currency = surface.venue.lower(), surface.currency.upper()
        tables = surface_columns(surface, stream_seq, stored_time_ns)
        return self.add_columns(tables, date, venue, currency, stream_seq, now_ns)

    def add_md(
        self,
        subject: str,
        data: bytes,
        stream_seq: int,
        stored_time_ns: int,
        now_ns: int,
        namespace: str = "",
    ) -> Added:
        """Buffer one market-data message (its payload as it is, for replays). Raises
        NotArchivable for a payload that is not a MarketDataBatch."""
        try:
            date, venue, currency, columns = md_columns(
                subject, data, stream_seq, stored_time_ns, namespace
            )
        except ValueError as exc:
            raise NotArchivable(str(exc)) from None
        return self.add_columns({MD: columns}, date, venue, currency, stream_seq, now_ns)

    def add_columns(
        self,
        tables: Mapping[str, Columns],
        date: str,
        venue: str,
        currency: str,
        stream_seq: int,
        now_ns: int,
    ) -> Added:
        """Buffer the rows of one stream message, per table (skipping a table whose partition
        already holds this sequence); the files that became due by size."""
        self.handled_through = max(self.handled_through, stream_seq)
        added = Added()
        for table, columns in tables.items():
            n = len(columns["stream_seq"])
            if n == 0:
                continue
            key = PartitionKey(table, date, venue, currency)
            if stream_seq <= self.high_water.get(key, 0):
                added.skipped += n
                continue
            self.high_water[key] = stream_seq
            buf = self.buffers.get(key)
            if buf is None:
                buf = self.buffers[key] = _Buffer(columns, stream_seq, stream_seq, now_ns, n)
            else:
                for name, values in columns.items():
                    buf.columns[name].extend(values)
                buf.last_seq = stream_seq
                buf.rows += n
            added.rows += n
            if buf.rows >= self.settings.roll_rows:
                added.flushes.append(self._take(key))
        return added

    def due(self, now_ns: int) -> list[Flush]:
        """Files due by age."""
        limit = self.settings.roll_age_ns
        keys = [k for k, b in self.buffers.items() if now_ns - b.started_ns >= limit]
        return [self._take(k) for k in sorted(keys)]

    def drain(self) -> list[Flush]:
        """Every buffer as a file (shutdown)."""
        return [self._take(k) for k in sorted(self.buffers)]

    def mark_committed(self, flush: Flush) -> None:
        self.committed[flush.key] = max(self.committed.get(flush.key, 0), flush.last_seq)

    def pending_rows(self) -> int:
        return sum(b.rows for b in self.buffers.values())

    def _take(self, key: PartitionKey) -> Flush:
        buf = self.buffers.pop(key)
        return Flush(key, buf.columns, buf.first_seq, buf.last_seq, buf.rows)


__all__ = [
    "TABLES",
    "Added",
    "ArchiveCore",
    "ArchiveSettings",
    "Flush",
    "NotArchivable",
]
