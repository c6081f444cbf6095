"""Archive files on disk: whole or invisible, and a restart that reads back what is there."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from svc_archive.core import ArchiveCore, ArchiveSettings
from svc_archive.files import MANIFEST, STAGING, ArchiveFiles
from tests.archive.surfaces import T0_NS, surface
from volstream.archive import SURFACES, PartitionKey, partition_files
from volstream.config import Config


def archive(root: Path, seqs: range, files: ArchiveFiles | None = None) -> ArchiveCore:
    files = files or ArchiveFiles(root)
    core = ArchiveCore(ArchiveSettings(), files.open(), files.durable_through)
    for seq in seqs:
        core.add(surface(seq).SerializeToString(), seq, T0_NS + seq, 0)
    for flush in core.drain():
        files.commit(flush)
        core.mark_committed(flush)
    files.write_manifest(core.durable_through, core.high_water.items())
    return core


def test_files_are_named_by_their_stream_sequences_and_read_back(tmp_path: Path) -> None:
    archive(tmp_path, range(1, 4))
    archive(tmp_path, range(4, 6))
    key = PartitionKey(SURFACES, "2026-03-11", "deribit", "BTC")
    names = [p.name for p in partition_files(tmp_path, key)]
    assert names == [
        "part-000000000001-000000000003.parquet",
        "part-000000000004-000000000005.parquet",
    ]
    table = pq.read_table(key.path(tmp_path) / names[0])
    assert table.column("revision").to_pylist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert list(tmp_path.glob(f"{STAGING}/*")) == []  # nothing left aside


def test_a_restart_resumes_after_the_manifest(tmp_path: Path) -> None:
    archive(tmp_path, range(1, 4))
    files = ArchiveFiles(tmp_path)
    # Everything is at or below durable_through: no partition needs its files read back.
    assert files.open() == {} and files.durable_through == 3


def test_a_file_renamed_in_before_the_manifest_caught_up_is_not_written_twice(
    tmp_path: Path,
) -> None:
    archive(tmp_path, range(1, 4))
    # The archiver died after renaming the next file in, before writing the manifest.
    files = ArchiveFiles(tmp_path)
    core = ArchiveCore(ArchiveSettings(), files.open(), files.durable_through)
    for seq in (4, 5):
        core.add(surface(seq).SerializeToString(), seq, T0_NS, 0)
    for flush in core.drain():
        files.commit(flush)  # no write_manifest
    manifest = (tmp_path / MANIFEST).read_text()
    # A partial file of the killed writer sits in staging.
    (tmp_path / STAGING / "part-000000000006-000000000007.parquet").write_bytes(b"PAR1 half")
    # The restart rewinds to durable_through + 1 = 4 and is delivered 4, 5, 6 again.
    files = ArchiveFiles(tmp_path)
    core = ArchiveCore(ArchiveSettings(), files.open(), files.durable_through)
    assert files.durable_through == 3 and (tmp_path / MANIFEST).read_text() == manifest
    assert list((tmp_path / STAGING).iterdir()) == []
    assert [core.add(surface(s).SerializeToString(), s, T0_NS, 0).rows for s in (4, 5, 6)] == [
        0,
        0,
        3 + 2 + 6,
    ]
    key = PartitionKey(SURFACES, "2026-03-11", "deribit", "BTC")
    revisions = pq.read_table(key.path(tmp_path)).column("revision").to_pylist()
    assert sorted(set(revisions)) == [1, 2, 3, 4, 5] and len(revisions) == 5 * 3


def test_a_namespace_gets_an_archive_of_its_own(tmp_path: Path) -> None:
    assert Config(data_dir=tmp_path).archive_root() == tmp_path / "archive"
    replay = Config(data_dir=tmp_path, namespace="replay.run1")
    assert replay.archive_root() == tmp_path / "archive-replay.run1"
    assert Config(archive_dir=tmp_path / "x", namespace="r").archive_root() == tmp_path / "x"
