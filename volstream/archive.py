"""The surface archive's layout and schema: the contract between its writer (svc_archive) and
its readers (the API's time travel and history, DuckDB, polars). docs/archive.md describes it.

    <archive>/surfaces/date=YYYY-MM-DD/venue=<venue>/currency=<CCY>/part-<first>-<last>.parquet
    <archive>/tenors/...   (same partitions)
    <archive>/nodes/...

``date`` is the UTC date of the surface's event time; ``<first>``/``<last>`` are the SURFACE
stream sequences of the first and last surface in the file (zero padded), so a partition's
files sort in stream order. The partition values live in the path only (hive style), never
in the files. Files appear whole: written aside, fsynced, then renamed into place.

This module is plumbing (a data mapping, no finance maths): columns <-> ``Surface`` fields,
both ways, so that a surface read back from the archive equals the published one without
its per-quote fit matrix (quotes are not archived; see docs/archive.md).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import surface_pb2 as surface_pb

SURFACES = "surfaces"
TENORS = "tenors"
NODES = "nodes"
TABLES = (SURFACES, TENORS, NODES)
# Raw market data (optional, VOLSTREAM_ARCHIVE_MD): the MD stream's messages as they were,
# so that a replay reaches beyond the stream's retention.
MD = "md"
PARTITION_KEYS = ("date", "venue", "currency")
_FILE = re.compile(r"^part-(\d{12,})-(\d{12,})\.parquet$")

_TS = pa.timestamp("ns", tz="UTC")
_WEIGHTS = pa.list_(
    pa.struct([("venue", pa.string()), ("weight", pa.float64()), ("quotes_used", pa.int32())])
)

# Columns every table starts with: which publication a row belongs to.
_REVISION_FIELDS = [
    pa.field("stream_seq", pa.int64(), nullable=False),
    pa.field("revision", pa.int64(), nullable=False),
    pa.field("event_time", _TS, nullable=False),
    pa.field("stored_time", _TS, nullable=False),
]
_METRIC_FIELDS = [
    pa.field(name, pa.float64()) for name in ("atm_vol", "rr25", "bf25", "rr10", "bf10")
]

SCHEMAS: dict[str, pa.Schema] = {
    SURFACES: pa.schema(
        [
            *_REVISION_FIELDS,
            pa.field("receive_time", _TS),
            pa.field("publish_time", _TS),
            pa.field("source", pa.string()),
            pa.field("sequence", pa.int64()),
            pa.field("model", pa.string()),
            pa.field("index_price_usd", pa.float64()),
            pa.field("vol_index_30d", pa.float64()),
            pa.field("delta_convention", pa.string()),
            pa.field("venue_weights", _WEIGHTS),
            # Null when the surface had no expiry (its revision still has its row).
            pa.field("expiry_time", _TS),
            pa.field("expiry_label", pa.string()),
            pa.field("time_to_expiry_years", pa.float64()),
            pa.field("forward_usd", pa.float64()),
            pa.field("forward_source", pa.string()),
            *(pa.field(f"raw_{n}", pa.float64()) for n in ("a", "b", "rho", "m", "sigma")),
            *(
                pa.field(f"jw_{n}", pa.float64())
                for n in (
                    "atm_variance",
                    "atm_skew",
                    "put_wing_slope",
                    "call_wing_slope",
                    "min_variance",
                )
            ),
            *_METRIC_FIELDS,
            pa.field("metrics_delta_convention", pa.string()),
            pa.field("quotes_used", pa.int32()),
            pa.field("quotes_dropped", pa.int32()),
            pa.field("rmse_bp", pa.float64()),
            pa.field("max_abs_residual_bp", pa.float64()),
            pa.field("min_g", pa.float64()),
            pa.field("butterfly_arbitrage_free", pa.bool_()),
            pa.field("calendar_arbitrage_free", pa.bool_()),
            pa.field("repaired", pa.bool_()),
            pa.field("repair_method", pa.string()),
            pa.field("fit_time_ms", pa.float64()),
            pa.field("warm_start", pa.bool_()),
        ]
    ),
    TENORS: pa.schema(
        [
            *_REVISION_FIELDS,
            pa.field("tenor_days", pa.int32(), nullable=False),
            pa.field("available", pa.bool_()),
            pa.field("time_to_expiry_years", pa.float64()),
            pa.field("forward_usd", pa.float64()),
            *_METRIC_FIELDS,
            pa.field("delta_convention", pa.string()),
        ]
    ),
    MD: pa.schema(
        [
            pa.field("stream_seq", pa.int64(), nullable=False),
            pa.field("stored_time", _TS, nullable=False),
            # The batch header's event time (its latest event; the publish time if none).
            pa.field("event_time", _TS, nullable=False),
            pa.field("kind", pa.string()),
            pa.field("subject", pa.string()),
            # The MarketDataBatch payload, byte for byte.
            pa.field("data", pa.binary()),
        ]
    ),
    NODES: pa.schema(
        [
            *_REVISION_FIELDS,
            pa.field("tenor_days", pa.int32(), nullable=False),
            pa.field("label", pa.string()),
            pa.field("delta", pa.float64()),
            pa.field("vol", pa.float64()),
            pa.field("strike_usd", pa.float64()),
        ]
    ),
}

Columns = dict[str, list[Any]]


def empty_columns(table: str) -> Columns:
    return {name: [] for name in SCHEMAS[table].names}


@dataclass(frozen=True, order=True)
class PartitionKey:
    """One hive partition of one table: a directory of files."""

    table: str
    date: str
    venue: str
    currency: str

    def path(self, root: Path) -> Path:
        return (
            root
            / self.table
            / f"date={self.date}"
            / f"venue={self.venue}"
            / f"currency={self.currency}"
        )


def utc_date(time_ns: int) -> str:
    return dt.datetime.fromtimestamp(time_ns // 1_000_000_000, dt.UTC).date().isoformat()


def file_name(first_seq: int, last_seq: int) -> str:
    return f"part-{first_seq:012d}-{last_seq:012d}.parquet"


def parse_file_name(name: str) -> tuple[int, int] | None:
    """(first, last) stream sequence of an archive file name; None for anything else."""
    m = _FILE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _enum(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def _enum_value(enum: Any, name: str | None) -> Any:
    """The enum value named ``name`` (an enum's ValueType, typed Any for the generated code)."""
    if not name:
        return 0
    try:
        return enum.Value(name)
    except ValueError:
        return int(name) if name.lstrip("-").isdigit() else 0


def surface_columns(
    surface: surface_pb.Surface, stream_seq: int, stored_time_ns: int
) -> dict[str, Columns]:
    """The rows of one published surface, per table, as columns (lists by column name)."""
    h = surface.header
    base = {
        "stream_seq": stream_seq,
        "revision": int(surface.revision),
        "event_time": h.event_time_ns,
        "stored_time": stored_time_ns,
    }
    out = {table: empty_columns(table) for table in TABLES}
    rows = out[SURFACES]
    weights = [
        {"venue": w.venue, "weight": w.weight, "quotes_used": w.quotes_used}
        for w in surface.venue_weights
    ]
    common = {
        **base,
        "receive_time": h.receive_time_ns,
        "publish_time": h.publish_time_ns,
        "source": h.source,
        "sequence": int(h.sequence),
        "model": _enum(surface_pb.SurfaceModel, surface.model),
        "index_price_usd": surface.index_price_usd,
        "vol_index_30d": surface.vol_index_30d,
        "delta_convention": _enum(common_pb.DeltaConvention, surface.delta_convention),
        "venue_weights": weights,
    }
    slices: Sequence[surface_pb.ExpirySlice | None] = list(surface.slices) or [None]
    for s in slices:
        for name, value in common.items():
            rows[name].append(value)
        for name, value in _slice_values(s).items():
            rows[name].append(value)
    tenors, nodes = out[TENORS], out[NODES]
    for t in surface.tenors:
        m = t.metrics
        tenor = {
            **base,
            "tenor_days": t.tenor_days,
            "available": t.available,
            "time_to_expiry_years": t.time_to_expiry_years,
            "forward_usd": t.forward_usd,
            "atm_vol": m.atm_vol,
            "rr25": m.rr25,
            "bf25": m.bf25,
            "rr10": m.rr10,
            "bf10": m.bf10,
            "delta_convention": _enum(common_pb.DeltaConvention, m.delta_convention),
        }
        for name, value in tenor.items():
            tenors[name].append(value)
        for n in t.nodes:
            node = {
                **base,
                "tenor_days": t.tenor_days,
                "label": n.label,
                "delta": n.delta,
                "vol": n.vol,
                "strike_usd": n.strike_usd,
            }
            for name, value in node.items():
                nodes[name].append(value)
    return out


_SLICE_COLUMNS = SCHEMAS[SURFACES].names[SCHEMAS[SURFACES].names.index("expiry_time") :]


def md_columns(
    subject: str, data: bytes, stream_seq: int, stored_time_ns: int, namespace: str = ""
) -> tuple[str, str, str, Columns]:
    """(date, venue, currency, columns) of one MD message; ValueError when it is not a
    MarketDataBatch on an md subject."""
    from google.protobuf.message import DecodeError

    from volstream.v1 import market_data_pb2 as md_pb

    prefix = f"{namespace}." if namespace else ""
    parts = subject.removeprefix(prefix).split(".")
    if len(parts) != 4 or parts[0] != "md":
        raise ValueError(f"subject {subject!r} is not md.<venue>.<ccy>.<kind>")
    try:
        batch = md_pb.MarketDataBatch.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a MarketDataBatch: {exc}") from None
    h = batch.header
    event_ns = h.event_time_ns or h.publish_time_ns or stored_time_ns
    columns = empty_columns(MD)
    for name, value in (
        ("stream_seq", stream_seq),
        ("stored_time", stored_time_ns),
        ("event_time", event_ns),
        ("kind", parts[3]),
        ("subject", subject),
        ("data", data),
    ):
        columns[name].append(value)
    return utc_date(event_ns), parts[1], parts[2].upper(), columns


def _slice_values(s: surface_pb.ExpirySlice | None) -> dict[str, Any]:
    if s is None:
        return dict.fromkeys(_SLICE_COLUMNS)
    r, jw, m, d = s.raw, s.jw, s.metrics, s.diagnostics
    return {
        "expiry_time": s.expiry_time_ns,
        "expiry_label": s.expiry_label,
        "time_to_expiry_years": s.time_to_expiry_years,
        "forward_usd": s.forward_usd,
        "forward_source": _enum(common_pb.ForwardSource, s.forward_source),
        "raw_a": r.a,
        "raw_b": r.b,
        "raw_rho": r.rho,
        "raw_m": r.m,
        "raw_sigma": r.sigma,
        "jw_atm_variance": jw.atm_variance,
        "jw_atm_skew": jw.atm_skew,
        "jw_put_wing_slope": jw.put_wing_slope,
        "jw_call_wing_slope": jw.call_wing_slope,
        "jw_min_variance": jw.min_variance,
        "atm_vol": m.atm_vol,
        "rr25": m.rr25,
        "bf25": m.bf25,
        "rr10": m.rr10,
        "bf10": m.bf10,
        "metrics_delta_convention": _enum(common_pb.DeltaConvention, m.delta_convention),
        "quotes_used": d.quotes_used,
        "quotes_dropped": d.quotes_dropped,
        "rmse_bp": d.rmse_bp,
        "max_abs_residual_bp": d.max_abs_residual_bp,
        "min_g": d.min_g,
        "butterfly_arbitrage_free": d.butterfly_arbitrage_free,
        "calendar_arbitrage_free": d.calendar_arbitrage_free,
        "repaired": d.repaired,
        "repair_method": d.repair_method,
        "fit_time_ms": d.fit_time_ms,
        "warm_start": d.warm_start,
    }


def to_arrow(table: str, columns: Columns) -> pa.Table:
    return pa.Table.from_pydict(columns, schema=SCHEMAS[table])


def _ns(value: Any) -> int:
    """A timestamp read by :func:`read_rows` (int ns, or None) as int ns."""
    return int(value) if value is not None else 0


def surface_from_rows(
    venue: str,
    currency: str,
    surface_rows: Sequence[dict[str, Any]],
    tenor_rows: Iterable[dict[str, Any]] = (),
    node_rows: Iterable[dict[str, Any]] = (),
) -> surface_pb.Surface:
    """The Surface (without quotes) whose rows these are: rows of one revision, timestamps as
    int ns (read with :func:`read_rows`)."""
    first = surface_rows[0]
    s = surface_pb.Surface(
        venue=venue,
        currency=currency,
        model=_enum_value(surface_pb.SurfaceModel, first["model"]),
        index_price_usd=first["index_price_usd"],
        vol_index_30d=first["vol_index_30d"],
        revision=first["revision"],
        delta_convention=_enum_value(common_pb.DeltaConvention, first["delta_convention"]),
    )
    h = s.header
    h.event_time_ns = _ns(first["event_time"])
    h.receive_time_ns = _ns(first["receive_time"])
    h.publish_time_ns = _ns(first["publish_time"])
    h.source = first["source"] or ""
    h.sequence = first["sequence"] or 0
    for w in first["venue_weights"] or ():
        s.venue_weights.add(venue=w["venue"], weight=w["weight"], quotes_used=w["quotes_used"])
    for row in sorted(surface_rows, key=lambda r: _ns(r["expiry_time"])):
        if row["expiry_time"] is None:
            continue
        e = s.slices.add(
            expiry_time_ns=_ns(row["expiry_time"]),
            expiry_label=row["expiry_label"],
            time_to_expiry_years=row["time_to_expiry_years"],
            forward_usd=row["forward_usd"],
            forward_source=_enum_value(common_pb.ForwardSource, row["forward_source"]),
        )
        e.raw.a, e.raw.b, e.raw.rho = row["raw_a"], row["raw_b"], row["raw_rho"]
        e.raw.m, e.raw.sigma = row["raw_m"], row["raw_sigma"]
        e.jw.atm_variance, e.jw.atm_skew = row["jw_atm_variance"], row["jw_atm_skew"]
        e.jw.put_wing_slope = row["jw_put_wing_slope"]
        e.jw.call_wing_slope = row["jw_call_wing_slope"]
        e.jw.min_variance = row["jw_min_variance"]
        _metrics(e.metrics, row, row["metrics_delta_convention"])
        d = e.diagnostics
        d.quotes_used, d.quotes_dropped = row["quotes_used"], row["quotes_dropped"]
        d.rmse_bp, d.max_abs_residual_bp = row["rmse_bp"], row["max_abs_residual_bp"]
        d.min_g = row["min_g"]
        d.butterfly_arbitrage_free = row["butterfly_arbitrage_free"]
        d.calendar_arbitrage_free = row["calendar_arbitrage_free"]
        d.repaired, d.repair_method = row["repaired"], row["repair_method"]
        d.fit_time_ms, d.warm_start = row["fit_time_ms"], row["warm_start"]
    tenors: dict[int, surface_pb.TenorPoint] = {}
    for row in tenor_rows:
        t = s.tenors.add(
            tenor_days=row["tenor_days"],
            available=row["available"],
            time_to_expiry_years=row["time_to_expiry_years"],
            forward_usd=row["forward_usd"],
        )
        _metrics(t.metrics, row, row["delta_convention"])
        tenors[t.tenor_days] = t
    for row in node_rows:
        tenor = tenors.get(row["tenor_days"])
        if tenor is not None:
            tenor.nodes.add(
                label=row["label"], delta=row["delta"], vol=row["vol"], strike_usd=row["strike_usd"]
            )
    return s


def _metrics(m: surface_pb.SmileMetrics, row: dict[str, Any], convention: str | None) -> None:
    m.atm_vol, m.rr25, m.bf25 = row["atm_vol"], row["rr25"], row["bf25"]
    m.rr10, m.bf10 = row["rr10"], row["bf10"]
    m.delta_convention = _enum_value(common_pb.DeltaConvention, convention)


def read_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of an archive table with timestamps as int ns (``to_pylist`` would round them to
    datetime's microseconds)."""
    cast = table
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            cast = cast.set_column(i, f.name, table.column(i).cast(pa.int64()))
    return cast.to_pylist()  # type: ignore[no-any-return]


def partition_files(root: Path, key: PartitionKey) -> list[Path]:
    """The archive files of one partition, in stream order (never a file being written)."""
    directory = key.path(root)
    try:
        names = [e.name for e in directory.iterdir()]
    except FileNotFoundError:
        return []
    return [directory / n for n in sorted(names) if parse_file_name(n) is not None]


def dates(root: Path, table: str) -> list[str]:
    """The dates the archive has for ``table``, ascending."""
    try:
        entries = list((root / table).iterdir())
    except FileNotFoundError:
        return []
    return sorted(e.name[5:] for e in entries if e.name.startswith("date=") and e.is_dir())


def iter_partitions(root: Path, table: str, venue: str, currency: str) -> Iterator[PartitionKey]:
    for date in dates(root, table):
        yield PartitionKey(table, date, venue, currency)
