"""A full disk under the archive (issue 17): a write that fails with ENOSPC leaves no partial
file where readers look and the manifest as it was, the rows it held are not counted as
kept, and once space returns the same rows are written exactly once.

The full disk is a fault-injecting writer (the Parquet writer writes part of its file, then
fails with ENOSPC), so the test runs as any user; the service's answer to the error (log it,
exit 70, restart rewinds to the manifest) is svc_archive/service.py's, checked below on the
real stage."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from svc_archive import service as archive_service
from svc_archive.core import ArchiveCore, ArchiveSettings
from svc_archive.files import MANIFEST, ArchiveFiles
from tests.archive.surfaces import T0_NS, surface
from tests.archive.test_files import archive
from volstream.archive import SURFACES, PartitionKey, partition_files
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry

KEY = PartitionKey(SURFACES, "2026-03-11", "deribit", "BTC")


def _revisions(root: Path) -> list[int]:
    return [
        revision
        for path in partition_files(root, KEY)
        for revision in pq.read_table(path).column("revision").to_pylist()
    ]


def test_enospc_leaves_no_partial_file_and_the_manifest_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive(tmp_path, range(1, 4))  # the first files fit
    manifest_before = (tmp_path / MANIFEST).read_text()
    full_disk: list[Path] = []
    monkeypatch.setattr("svc_archive.files.pq.write_table", _failing(full_disk))

    files = ArchiveFiles(tmp_path)
    core = ArchiveCore(ArchiveSettings(), files.open(), files.durable_through)
    for seq in (4, 5):
        core.add(surface(seq).SerializeToString(), seq, T0_NS + seq, 0)
    # One file per table (surfaces, tenors, nodes): the surfaces' fails.
    [flush] = [f for f in core.drain() if f.key == KEY]
    with pytest.raises(OSError) as err:
        files.commit(flush)
    assert err.value.errno == errno.ENOSPC
    # The partial file is in the staging directory, never where a reader's glob looks.
    assert full_disk and all(p.parent == files.staging for p in full_disk)
    assert [p.name for p in partition_files(tmp_path, KEY)] == [
        "part-000000000001-000000000003.parquet"
    ]
    assert _revisions(tmp_path) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # durable_through is unchanged; the partition is listed (recorded before its first file
    # by design, so a restart looks in it) and holds no file above it.
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["durable_through"] == json.loads(manifest_before)["durable_through"] == 3

    # Space returns; the restart drops the staging leftover and writes 4 and 5 once.
    monkeypatch.undo()
    files = ArchiveFiles(tmp_path)
    core = ArchiveCore(ArchiveSettings(), files.open(), files.durable_through)
    assert list(files.staging.iterdir()) == []
    assert files.durable_through == 3
    for seq in range(4, 6):  # the rewound durable delivers them again
        core.add(surface(seq).SerializeToString(), seq, T0_NS + seq, 0)
    for flush in core.drain():
        files.commit(flush)
        core.mark_committed(flush)
    files.write_manifest(core.durable_through, core.high_water.items())
    assert _revisions(tmp_path) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert json.loads((tmp_path / MANIFEST).read_text())["durable_through"] == 5


def _failing(attempts: list[Path]) -> Any:
    """A Parquet writer on a full disk: it writes part of its file, then fails with ENOSPC
    (``attempts`` collects the paths it was writing)."""

    def write_then_fail(table: Any, where: Any, **kwargs: Any) -> None:
        path = Path(where)
        attempts.append(path)
        path.write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return write_then_fail


class _Exit(BaseException):
    """os._exit stand-in: the stage must stop before anything else happens."""


async def test_the_stage_logs_counts_and_stops_on_enospc_without_committing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """svc_archive's stage: the failed write is logged (with the errno) and counted in
    archive_write_errors, and the process exits 70 at once (``up`` restarts it; the restart
    rewinds to the manifest), so rows it could not keep are never marked committed."""
    monkeypatch.setattr("svc_archive.files.pq.write_table", _failing([]))
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise _Exit

    monkeypatch.setattr("svc_archive.service.os._exit", fake_exit)
    files = ArchiveFiles(tmp_path)
    core = ArchiveCore(ArchiveSettings(), files.open(), files.durable_through)
    pipeline = archive_service.Pipeline("SURFACE", files, core)
    metrics = setup_telemetry("archive-full-disk", None)

    class Ctx:
        pass

    ctx: Any = Ctx()
    ctx.metrics = metrics
    ctx.subjects = Subjects("")
    stage = archive_service.ArchiveStage(ctx, {"SURFACE": pipeline})
    for seq in (1, 2):
        core.add(surface(seq).SerializeToString(), seq, T0_NS + seq, 0)
    with caplog.at_level(logging.CRITICAL, logger="svc_archive"), pytest.raises(_Exit):
        await stage.drain()
    assert codes == [archive_service.EXIT_WRITE_FAILED]
    assert "No space left on device" in caplog.text
    # Nothing on disk says these rows are kept: the restart gets them again.
    assert (
        not (tmp_path / MANIFEST).exists()
        or json.loads((tmp_path / MANIFEST).read_text())["durable_through"] == 0
    )
    assert list(partition_files(tmp_path, KEY)) == []
    text = metrics.render().decode()
    assert "volstream_archive_write_errors_total{" in text and 'errno="ENOSPC"' in text
