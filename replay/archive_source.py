"""Surfaces read back from an archive directory (svc_archive's Parquet, docs/archive.md), for
`volstream diff` between archives or between an archive and a stream. The archive keeps
no quotes, so byte identity is not meaningful across the two kinds; metrics, parameters and
arbitrage status are."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from volstream.archive import (
    PartitionKey,
    dates,
    parse_file_name,
    partition_files,
    read_rows,
    surface_from_rows,
)
from volstream.v1 import surface_pb2 as surface_pb


def is_archive(path: Path) -> bool:
    return (path / "surfaces").is_dir()


def _partitions(root: Path) -> Iterator[PartitionKey]:
    for date in dates(root, "surfaces"):
        day = root / "surfaces" / f"date={date}"
        for venue_dir in sorted(day.glob("venue=*")):
            for ccy_dir in sorted(venue_dir.glob("currency=*")):
                venue = venue_dir.name.removeprefix("venue=")
                currency = ccy_dir.name.removeprefix("currency=")
                yield PartitionKey("surfaces", date, venue, currency)


def load_archive(root: Path) -> list[surface_pb.Surface]:
    """Every surface of the archive at ``root`` (slices, metrics, diagnostics; no quotes,
    tenors or nodes), in stream order per partition. A file that cannot be read is reported
    on stderr and skipped."""
    out: list[surface_pb.Surface] = []
    for key in _partitions(root):
        for path in partition_files(root, key):
            if parse_file_name(path.name) is None:
                continue
            try:
                rows = read_rows(pq.read_table(path))
            except (OSError, pa.ArrowException) as exc:
                print(f"skipping unreadable archive file {path}: {exc}", file=sys.stderr)
                continue
            by_seq: dict[int, list[dict[str, object]]] = {}
            for row in rows:
                by_seq.setdefault(int(row["stream_seq"]), []).append(row)
            for seq in sorted(by_seq):
                out.append(surface_from_rows(key.venue, key.currency, by_seq[seq]))
    return out
