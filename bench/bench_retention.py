"""What each stream costs at the default rate, stored as it is and with S2 compression.

    .venv/bin/python -m bench.bench_retention [--seconds 60] [--warmup 30]

Runs `volstream up --sim` (four venues, the simulator's default rate) in a temporary
directory, gives every stream a mirror with S2 compression (same messages, compressed
store: the reference side by side), waits for the warm-up, then measures each stream's
growth over ``--seconds``: the bytes JetStream accounts (its limits count these) and the
store's bytes on disk, for the stream and its S2 mirror. The table shows bytes per second,
the compression ratio, and how long the stream's ``max_bytes`` holds at that rate, with and
without S2 (the figures behind volstream.bus.streams.StreamLimits and README "Retention").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js.api import StorageType, StoreCompression, StreamConfig, StreamSource

from volstream.bus.credentials import read_credentials
from volstream.bus.permissions import ADMIN_USER
from volstream.bus.streams import default_stream_specs
from volstream.subjects import Subjects

STREAMS = ("MD", "BOOK", "IV", "SURFACE")


@dataclass
class Sample:
    at: float
    bytes: dict[str, int]
    disk: dict[str, int]
    messages: dict[str, int]


def _disk(root: Path, stream: str) -> int:
    found = list(root.glob(f"nats/**/streams/{stream}"))
    total = 0
    for d in found:
        for dirpath, _, files in os.walk(d):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


async def measure(data_dir: Path, warmup_s: float, seconds: float) -> None:
    state_file = data_dir / "up.json"
    deadline = time.monotonic() + 60
    while not state_file.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 (a file)
        await asyncio.sleep(0.5)
    state = json.loads(state_file.read_text())
    password = read_credentials(Path(state["nats_credentials"]))[ADMIN_USER]
    nc = await nats.connect(state["nats_url"], user=ADMIN_USER, password=password)
    js = nc.jetstream()
    limits = {s.name: s.max_bytes for s in default_stream_specs(Subjects())}
    for name in STREAMS:
        await js.add_stream(
            StreamConfig(
                name=f"{name}_S2",
                mirror=StreamSource(name=name),
                storage=StorageType.FILE,
                compression=StoreCompression.S2,
                max_bytes=limits[name],
            )
        )
    await asyncio.sleep(warmup_s)

    async def sample() -> Sample:
        out = Sample(time.monotonic(), {}, {}, {})
        for name in (*STREAMS, *(f"{s}_S2" for s in STREAMS)):
            info = await js.stream_info(name)
            out.bytes[name] = info.state.bytes
            out.messages[name] = info.state.messages
            out.disk[name] = _disk(data_dir, name)
        return out

    first = await sample()
    await asyncio.sleep(seconds)
    last = await sample()
    await nc.close()
    span = last.at - first.at

    def rate(s: Sample, t: Sample, name: str, field: str) -> float:
        return float(getattr(t, field)[name] - getattr(s, field)[name]) / span

    print(f"volstream up --sim, four venues, default rate; growth over {span:.0f} s\n")
    header = (
        f"{'stream':8} {'msg/s':>7} {'bytes/msg':>9} {'B/s':>10} {'disk B/s':>10} "
        f"{'S2 B/s':>10} {'S2 disk':>10} {'ratio':>6} {'max_bytes':>10} {'holds':>8} "
        f"{'with S2':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in STREAMS:
        msgs = rate(first, last, name, "messages")
        plain = rate(first, last, name, "bytes")
        disk = rate(first, last, name, "disk")
        s2 = rate(first, last, f"{name}_S2", "bytes")
        s2_disk = rate(first, last, f"{name}_S2", "disk")
        ratio = disk / s2_disk if s2_disk > 0 else float("nan")
        cap = limits[name]
        print(
            f"{name:8} {msgs:7.0f} {plain / max(msgs, 1e-9):9.0f} {human(plain):>10} "
            f"{human(disk):>10} {human(s2):>10} {human(s2_disk):>10} {ratio:6.2f} "
            f"{human(cap):>10} {duration(cap / max(plain, 1e-9)):>8} "
            f"{duration(cap / max(s2, 1e-9)):>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="volstream-retention-") as tmp:
        data_dir = Path(tmp) / "data"
        cmd = [sys.executable, "-m", "volstream.cli", "up", "--sim", "--data-dir", str(data_dir)]
        cmd += ["--grpc-port", "0", "--http-port", "0"]
        log = (Path(tmp) / "up.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            asyncio.run(measure(data_dir, args.warmup, args.seconds))
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
