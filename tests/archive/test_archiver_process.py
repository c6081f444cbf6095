"""The archiver as its own process on a real nats-server, SIGKILLed while it writes: no
partial file is ever visible, and after the restart every revision is archived exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import nats
import nats.js.errors
import pyarrow.parquet as pq
import pytest

from tests.archive.surfaces import surface
from volstream.archive import NODES, SURFACES, TABLES, TENORS, parse_file_name
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.streams import StreamLimits, default_stream_specs, ensure_streams
from volstream.subjects import Subjects

pytestmark = pytest.mark.slow

KEYS = (("deribit", "BTC"), ("okx", "ETH"), ("all", "BTC"))
REVISIONS = 300  # per key, one every PACE_S: the archiver keeps up and buffers by age
PACE_S = 0.02
EXPIRIES, TENOR_DAYS = 4, (7, 30)
# Files roll by age: when it is killed the archiver holds acknowledged rows in memory,
# which only the rewind to the manifest brings back.
ROLL_S, ROLL_ROWS = 0.5, 100_000
KILLS = 3


def start_archiver(
    nats_url: str, archive: Path, log: Path, roll_s: float = ROLL_S
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VOLSTREAM_ARCHIVE_ROLL_S": str(roll_s),
        "VOLSTREAM_ARCHIVE_ROLL_ROWS": str(ROLL_ROWS),
        "VOLSTREAM_ARCHIVE_DIR": str(archive),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "volstream.cli", "svc", "archive", "--nats", nats_url],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


class VisibleFiles(threading.Thread):
    """Reads every archive file as soon as it is visible: each must be a whole Parquet file."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.checked: set[Path] = set()
        self.broken: list[str] = []
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.scan()
            time.sleep(0.01)

    def scan(self) -> None:
        for table in TABLES:
            for path in (self.root / table).rglob("*"):
                if path.is_dir() or path in self.checked:
                    continue
                if parse_file_name(path.name) is None:
                    self.broken.append(f"unexpected file {path}")
                try:
                    pq.read_table(path)
                except Exception as exc:
                    self.broken.append(f"{path}: {exc!r}")
                self.checked.add(path)


async def publish_surfaces(url: str, stop_at: asyncio.Event) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        for rev in range(1, REVISIONS + 1):
            for venue, ccy in KEYS:
                s = surface(rev, venue, ccy, expiries=EXPIRIES, tenors=TENOR_DAYS)
                subject = Subjects().surface(venue, ccy)
                await js.publish(
                    subject, s.SerializeToString(), headers={"Nats-Msg-Id": f"{subject}.{rev}"}
                )
            await asyncio.sleep(PACE_S)
    finally:
        stop_at.set()
        await nc.close()


def archived(root: Path) -> dict[str, Counter[tuple[str, str, int, str]]]:
    """Per table: how often each (venue, currency, revision, row id) is in the archive."""
    out: dict[str, Counter[tuple[str, str, int, str]]] = {}
    for table, column in ((SURFACES, "expiry_label"), (TENORS, "tenor_days"), (NODES, "label")):
        counts: Counter[tuple[str, str, int, str]] = Counter()
        for path in (root / table).rglob("*.parquet"):
            venue = path.parent.parent.name.removeprefix("venue=")
            ccy = path.parent.name.removeprefix("currency=")
            t = pq.read_table(path)
            ids = t.column(column).to_pylist()
            if table == NODES:
                ids = [
                    f"{d}/{n}" for d, n in zip(t.column("tenor_days").to_pylist(), ids, strict=True)
                ]
            for rev, row_id in zip(t.column("revision").to_pylist(), ids, strict=True):
                counts[(venue, ccy, rev, str(row_id))] += 1
        out[table] = counts
    return out


def expected_rows(table: str) -> int:
    per = {SURFACES: EXPIRIES, TENORS: len(TENOR_DAYS), NODES: 3 * len(TENOR_DAYS)}[table]
    return per * REVISIONS * len(KEYS)


def test_sigkill_while_writing_leaves_no_partial_file_and_loses_or_repeats_nothing(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    async def provision() -> None:
        nc = await nats.connect(nats_server.url)
        await ensure_streams(
            nc.jetstream(), default_stream_specs(Subjects(), StreamLimits.compact())
        )
        await nc.close()

    asyncio.run(provision())
    root, log = tmp_path / "archive", tmp_path / "archiver.log"
    watcher = VisibleFiles(root)
    watcher.start()
    done = asyncio.Event()
    publisher = threading.Thread(
        target=lambda: asyncio.run(publish_surfaces(nats_server.url, done))
    )
    proc = start_archiver(nats_server.url, root, log)
    publisher.start()
    kills = 0
    try:
        while kills < KILLS:
            # Kill only once files are being written, then start it again at once.
            deadline = time.monotonic() + 60
            seen = len(watcher.checked)
            while len(watcher.checked) <= seen and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(ROLL_S / 2)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = start_archiver(nats_server.url, root, log)
        publisher.join(120)
        assert not publisher.is_alive()
        # Everything arrives: the last files roll within ROLL_S of the last surface (the
        # deadline only bounds a failure: a loaded machine starts a process slowly).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            counts = archived(root)
            if all(sum(counts[t].values()) >= expected_rows(t) for t in TABLES):
                break
            time.sleep(0.2)
        watcher.stop_flag.set()
        watcher.join(10)
        watcher.scan()
        assert watcher.broken == [], watcher.broken
        counts = archived(root)
        for table in TABLES:
            repeated = [k for k, n in counts[table].items() if n != 1]
            assert repeated == [], (table, repeated[:5])
            assert len(counts[table]) == expected_rows(table), (table, log.read_text()[-3000:])
        revisions = {(v, c, r) for v, c, r, _ in counts[SURFACES]}
        want = {(v.lower(), c, r) for v, c in KEYS for r in range(1, REVISIONS + 1)}
        assert revisions == want
        assert kills == KILLS and len(watcher.checked) > KILLS
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_an_archiver_killed_before_its_first_file_loses_nothing(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """Its rows were acknowledged (buffered) but no file or manifest exists yet."""
    count = 50

    async def publish_and_wait_acked(proc: subprocess.Popen[bytes]) -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        specs = default_stream_specs(Subjects(), StreamLimits.compact())
        await ensure_streams(js, specs)
        for rev in range(1, count + 1):
            await js.publish("surface.deribit.btc", surface(rev).SerializeToString())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                info = await js.consumer_info("SURFACE", "archive-all")
                if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= count:
                    break
            except nats.js.errors.NotFoundError:
                pass
            assert proc.poll() is None
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the archiver did not acknowledge the surfaces")
        await nc.close()

    root, log = tmp_path / "archive", tmp_path / "archiver.log"
    proc = start_archiver(nats_server.url, root, log, roll_s=3600)  # nothing rolls
    try:
        asyncio.run(publish_and_wait_acked(proc))
        assert not list(root.rglob("*.parquet"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc = start_archiver(nats_server.url, root, log, roll_s=0.2)
        deadline = time.monotonic() + 120
        revisions: list[int] = []
        while time.monotonic() < deadline and len(revisions) < count * 3:
            revisions = [
                r
                for p in (root / SURFACES).rglob("*.parquet")
                for r in pq.read_table(p).column("revision").to_pylist()
            ]
            time.sleep(0.2)
        assert sorted(Counter(revisions).items()) == [(r, 3) for r in range(1, count + 1)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
