"""The archive on disk: files that appear whole, and the manifest the archiver resumes from.

A file is written to ``<archive>/.staging/`` (outside every table, so no reader's glob sees
it), fsynced, renamed into its partition directory (atomic on one filesystem) and the
directory fsynced: a reader sees the whole file or nothing, and a killed archiver leaves at
most a staging file, which the next start deletes.

``<archive>/_manifest.json`` (replaced atomically the same way) holds

- ``durable_through``: every surface at or below this SURFACE stream sequence is in a
  committed file; the archiver rewinds its durable consumer to just past it at start;
- ``partitions``: every partition directory that may hold rows above ``durable_through``,
  recorded *before* its first such file is renamed in. At start the high-water sequence of
  each is read back from its file names (``part-<first>-<last>.parquet``), so rows already
  in a file are never written twice, even when the archiver died between renaming a file
  and updating the manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from svc_archive.core import Flush
from volstream.archive import PartitionKey, file_name, parse_file_name, partition_files, to_arrow

MANIFEST = "_manifest.json"
STAGING = ".staging"
# The market-data archive (VOLSTREAM_ARCHIVE_MD) resumes from its own stream's sequences.
MD_MANIFEST = "_manifest-md.json"
MD_STAGING = ".staging-md"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each made durable in its parent."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


class ArchiveFiles:
    def __init__(
        self,
        root: Path,
        compression: str = "zstd",
        *,
        manifest: str = MANIFEST,
        staging: str = STAGING,
    ) -> None:
        self.root = root
        self.staging = root / staging
        self.manifest = manifest
        self.compression = compression
        self.partitions: set[PartitionKey] = set()
        self.durable_through = 0

    def open(self) -> dict[PartitionKey, int]:
        """Prepare the directory (dropping any staging leftover of a killed writer), read the
        manifest, and return the high-water sequence of every partition it names."""
        _mkdirs(self.root)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir()
        _fsync_dir(self.root)
        path = self.root / self.manifest
        if path.exists():
            manifest = json.loads(path.read_text())
            self.durable_through = int(manifest["durable_through"])
            self.partitions = {PartitionKey(*p) for p in manifest["partitions"]}
        high_water: dict[PartitionKey, int] = {}
        for key in self.partitions:
            seqs = [parse_file_name(f.name) for f in partition_files(self.root, key)]
            lasts = [s[1] for s in seqs if s is not None]
            if lasts:
                high_water[key] = max(lasts)
        return high_water

    def commit(self, flush: Flush) -> tuple[Path, int]:
        """Write one file atomically; its path and size in bytes."""
        if flush.key not in self.partitions:
            # Recorded before the file appears: a restart will look in this directory.
            self.partitions.add(flush.key)
            self.write_manifest(self.durable_through, ())
        name = file_name(flush.first_seq, flush.last_seq)
        staged = self.staging / name
        pq.write_table(
            to_arrow(flush.key.table, flush.columns), staged, compression=self.compression
        )
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        directory = flush.key.path(self.root)
        _mkdirs(directory)
        final = directory / name
        size = staged.stat().st_size
        os.rename(staged, final)
        _fsync_dir(directory)
        return final, size

    def write_manifest(
        self, durable_through: int, settled: Iterable[tuple[PartitionKey, int]]
    ) -> None:
        """Record ``durable_through``; partitions whose high water is at or below it (given
        as ``settled``) no longer need to be listed."""
        self.durable_through = max(self.durable_through, durable_through)
        for key, high in settled:
            if high <= self.durable_through:
                self.partitions.discard(key)
        body = {
            "version": 1,
            "durable_through": self.durable_through,
            "partitions": [[k.table, k.date, k.venue, k.currency] for k in sorted(self.partitions)],
        }
        tmp = self.staging / (self.manifest + ".tmp")
        with tmp.open("w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.root / self.manifest)
        _fsync_dir(self.root)
