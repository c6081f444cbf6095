"""Archive write throughput and bytes per surface revision.

    .venv/bin/python -m bench.bench_archive [--revisions 5000] [--per-file 600] [--live 0]

Synthetic surfaces shaped like the live ones (12 expiries with 40 quotes each, 11 tenors of
19 delta nodes; every number a random walk, so nothing compresses better than real fits
would) are archived the way svc_archive does it (pure core -> Parquet zstd file written aside,
fsynced, renamed; one file per ``--per-file`` revisions, i.e. 5 minutes of one surface at
two refits a second). The reference, side by side: the same revisions appended as
length-delimited protobuf (what the SURFACE stream stores: with quotes, and without), fsynced
per file the same way.

``--live SECONDS`` also runs `volstream up --sim` (four venues, default rate, the market-data
archive on) with an archive
roll of ``--live-roll`` seconds (60) for that long and reports what its archive holds: bytes
per revision of real surfaces, and the bytes per day at the rate observed (files rolled
more often than the default 300 s cost more per revision: each carries its own footer).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from svc_archive.core import ArchiveCore, ArchiveSettings
from svc_archive.files import ArchiveFiles
from volstream.archive import MD, SURFACES, TABLES
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import surface_pb2 as surface_pb

T0_NS = 1_773_230_400 * 1_000_000_000
EXPIRIES = 12
QUOTES = 40
TENORS = (1, 2, 3, 7, 14, 21, 30, 60, 90, 180, 365)
NODES = [(f"{d}P", -d / 100) for d in range(5, 50, 5)]
NODES += [("ATM", 0.5)] + [(f"{d}C", d / 100) for d in range(45, 0, -5)]


def surfaces(n: int, seed: int = 7) -> list[surface_pb.Surface]:
    rng = np.random.default_rng(seed)
    walk = 0.5 + np.cumsum(rng.normal(0, 2e-4, size=(n, 64)), axis=0)
    out = []
    for r in range(n):
        w = walk[r]
        s = surface_pb.Surface(
            venue="deribit", currency="BTC", revision=r + 1, model=surface_pb.SURFACE_MODEL_SVI
        )
        s.header.event_time_ns = T0_NS + r * 500_000_000 + int(rng.integers(0, 1_000_000))
        s.header.receive_time_ns = s.header.event_time_ns + int(rng.integers(0, 10**6))
        s.header.publish_time_ns = s.header.receive_time_ns + int(rng.integers(0, 10**6))
        s.header.source, s.header.sequence = "svc_surface", 10_000 + r
        s.index_price_usd, s.vol_index_30d = 60_000 * w[0] * 2, w[1]
        for i in range(EXPIRIES):
            e = s.slices.add(
                expiry_time_ns=T0_NS + (i + 1) * 7 * 86_400 * 10**9,
                expiry_label=f"2026-{3 + i // 4:02d}-{1 + 7 * (i % 4):02d}",
                time_to_expiry_years=(i + 1) * 7 / 365 - r * 1.6e-8,
                forward_usd=120_000 * w[2 + i % 8],
                forward_source=1,
            )
            e.raw.a, e.raw.b, e.raw.rho = w[10 + i] * 0.1, w[20 + i % 5] * 0.2, w[30] - 0.8
            e.raw.m, e.raw.sigma = w[31] - 0.5, w[32] * 0.4
            e.jw.atm_variance, e.jw.atm_skew, e.jw.put_wing_slope = w[33], w[34] - 0.6, w[35]
            e.jw.call_wing_slope, e.jw.min_variance = w[36], w[37] * 0.9
            m = e.metrics
            m.atm_vol, m.rr25, m.bf25 = w[40 + i % 12], w[52] - 0.52, w[53] - 0.49
            m.rr10, m.bf10 = w[54] - 0.55, w[55] - 0.48
            m.delta_convention = common_pb.DELTA_CONVENTION_PREMIUM_ADJUSTED
            d = e.diagnostics
            d.quotes_used, d.quotes_dropped = QUOTES - 4, 4
            d.rmse_bp, d.max_abs_residual_bp, d.min_g = w[56] * 80, w[57] * 200, w[58] * 0.1
            d.butterfly_arbitrage_free, d.calendar_arbitrage_free = True, True
            d.fit_time_ms, d.warm_start = float(rng.uniform(0.5, 2)), True
            for q in range(QUOTES):
                e.quotes.add(
                    symbol=f"BTC-{e.expiry_label}-{50_000 + 2_500 * q}-C",
                    venue="deribit",
                    option_kind=1,
                    strike_usd=50_000 + 2_500 * q,
                    log_moneyness=(q - 20) / 20,
                    bid_iv=w[60] - 0.01,
                    ask_iv=w[61] + 0.01,
                    mid_iv=w[60],
                    fitted_iv=w[61],
                    residual_bp=float(rng.normal(0, 30)),
                    position=2,
                    used=True,
                    weight=float(rng.uniform(0, 1)),
                )
        for days in TENORS:
            t = s.tenors.add(
                tenor_days=days,
                available=True,
                time_to_expiry_years=days / 365,
                forward_usd=120_000 * w[3],
            )
            t.metrics.atm_vol, t.metrics.rr25, t.metrics.bf25 = w[44], w[52] - 0.5, w[53] - 0.5
            t.metrics.rr10, t.metrics.bf10 = w[54] - 0.5, w[55]
            t.metrics.delta_convention = common_pb.DELTA_CONVENTION_PREMIUM_ADJUSTED
            for label, delta in NODES:
                t.nodes.add(
                    label=label, delta=delta, vol=w[44] + delta * w[45] * 0.1, strike_usd=6e4 * w[3]
                )
        out.append(s)
    return out


def archive_run(payloads: list[bytes], root: Path, per_file: int) -> tuple[float, int]:
    files = ArchiveFiles(root)
    core = ArchiveCore(ArchiveSettings(roll_rows=10**9), files.open())
    started = time.perf_counter()
    for seq, data in enumerate(payloads, start=1):
        core.add(data, seq, T0_NS + seq, 0)
        if seq % per_file == 0 or seq == len(payloads):
            for flush in core.drain():
                files.commit(flush)
                core.mark_committed(flush)
            files.write_manifest(core.durable_through, core.high_water.items())
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for t in TABLES for p in (root / t).rglob("*.parquet"))
    return elapsed, size


def raw_run(payloads: list[bytes], root: Path, per_file: int) -> tuple[float, int]:
    root.mkdir(parents=True)
    started = time.perf_counter()
    for i in range(0, len(payloads), per_file):
        path = root / f"part-{i:012d}.pb"
        with path.open("wb") as f:
            for data in payloads[i : i + per_file]:
                f.write(len(data).to_bytes(4, "little"))
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
    elapsed = time.perf_counter() - started
    return elapsed, sum(p.stat().st_size for p in root.iterdir())


def without_quotes(s: surface_pb.Surface) -> bytes:
    light = surface_pb.Surface()
    light.CopyFrom(s)
    for e in light.slices:
        del e.quotes[:]
    return light.SerializeToString()


def live(seconds: float, roll_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="volstream-archive-live-") as tmp:
        data_dir = Path(tmp) / "data"
        env = {
            **os.environ,
            "VOLSTREAM_ARCHIVE_ROLL_S": str(roll_s),
            "VOLSTREAM_ARCHIVE_MD": "1",
        }
        cmd = [sys.executable, "-m", "volstream.cli", "up", "--sim", "--data-dir", str(data_dir)]
        cmd += ["--grpc-port", "0", "--http-port", "0"]
        with (Path(tmp) / "up.log").open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                time.sleep(seconds)
            finally:
                proc.send_signal(signal.SIGINT)  # the archiver writes what it buffered
                proc.wait(30)
        root = data_dir / "archive"
        size = sum(p.stat().st_size for t in TABLES for p in (root / t).rglob("*.parquet"))
        revisions = 0
        files = sum(1 for t in TABLES for _ in (root / t).rglob("*.parquet"))
        first, last = None, None
        for p in (root / SURFACES).rglob("*.parquet"):
            t = pq.read_table(p, columns=["stream_seq", "event_time"])
            revisions += len(set(t.column("stream_seq").to_pylist()))
            times = t.column("event_time").cast("int64").to_pylist()
            first = min([*times, *([first] if first is not None else [])])
            last = max([*times, *([last] if last is not None else [])])
        if not revisions or first is None or last is None or last <= first:
            print("\nlive: no surfaces archived")
            return
        span_s = (last - first) / 1e9
        per_rev = size / revisions
        # The same rows in one file per partition: what a revision costs in large files.
        compact = 0
        for t in TABLES:
            for directory in {p.parent for p in (root / t).rglob("*.parquet")}:
                out = Path(tmp) / "compact.parquet"
                pq.write_table(pq.read_table(directory), out, compression="zstd")
                compact += out.stat().st_size
        print(
            f"\nlive `up --sim` (four venues, default rate), {span_s:.0f} s of surfaces: "
            f"{revisions} revisions ({revisions / span_s:.1f}/s), {size / 1e6:.2f} MB, "
            f"{per_rev / 1e3:.2f} KB per revision in {files} files -> "
            f"{size / span_s * 86400 / 1e9:.2f} GB per day at this rate; "
            f"{compact / revisions / 1e3:.2f} KB per revision in one file per partition"
        )
        md_files = list((root / MD).rglob("*.parquet"))
        md_size = sum(p.stat().st_size for p in md_files)
        payload = 0
        md_first, md_last = None, None
        for p in md_files:
            t = pq.read_table(p, columns=["data", "event_time"])
            payload += sum(len(d) for d in t.column("data").to_pylist())
            times = t.column("event_time").cast("int64").to_pylist()
            md_first = min([*times, *([md_first] if md_first is not None else [])])
            md_last = max([*times, *([md_last] if md_last is not None else [])])
        if md_size and md_first is not None and md_last is not None and md_last > md_first:
            md_span = (md_last - md_first) / 1e9
            print(
                f"market data archive: {payload / md_span / 1e6:.2f} MB/s of MD messages stored "
                f"as {md_size / md_span / 1e6:.2f} MB/s ({payload / md_size:.1f}x) -> "
                f"{md_size / md_span * 86400 / 1e9:.1f} GB per day at this rate"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--revisions", type=int, default=5000)
    parser.add_argument("--per-file", type=int, default=600)
    parser.add_argument("--live", type=float, default=0.0)
    # Each file carries its schema and statistics: short rolls make small files cost more.
    parser.add_argument("--live-roll", type=float, default=60.0)
    args = parser.parse_args()
    built = surfaces(args.revisions)
    full = [s.SerializeToString() for s in built]
    light = [without_quotes(s) for s in built]
    n = len(full)
    with tempfile.TemporaryDirectory(prefix="volstream-archive-bench-") as tmp:
        rows = [
            ("archive (Parquet zstd)", *archive_run(full, Path(tmp) / "archive", args.per_file)),
            ("raw Surface, quotes", *raw_run(full, Path(tmp) / "raw", args.per_file)),
            ("raw Surface, no quotes", *raw_run(light, Path(tmp) / "light", args.per_file)),
        ]
    print(
        f"{n} revisions of one surface ({EXPIRIES} expiries x {QUOTES} quotes, "
        f"{len(TENORS)} tenors x {len(NODES)} nodes), one file per {args.per_file}\n"
    )
    header = f"{'writer':24} {'revisions/s':>12} {'bytes/revision':>15} {'GB/day at 20/s':>15}"
    print(header)
    print("-" * len(header))
    for name, elapsed, size in rows:
        per = size / n
        # Ten surfaces (4 venues x 2 currencies + 2 consolidated) refitted every 500 ms.
        print(f"{name:24} {n / elapsed:12,.0f} {per:15,.0f} {per * 20 * 86400 / 1e9:15.2f}")
    if args.live > 0:
        live(args.live, args.live_roll)


if __name__ == "__main__":
    main()
