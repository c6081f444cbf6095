"""Archive service runtime: surface.> (stream SURFACE, durable ``archive-<group>``) -> Parquet
files under ``<archive>/`` (volstream/archive.py has the layout, docs/archive.md the schema);
with ``archive_md`` also md.> (stream MD, durable ``archive-<group>-md``) -> ``<archive>/md``,
each stream with its own manifest.

The commit point is the manifest, not the consumer's ack: the stage acknowledges a batch as
soon as its rows are buffered, and the rows become durable when their file is renamed in
(every ``archive_roll_s`` or ``archive_roll_rows``). At start the durable is therefore reset
to just past the manifest's ``durable_through``: surfaces that were acknowledged but only
buffered when the archiver died are delivered again, and rows already in a file are skipped
by sequence (svc_archive/core.py). A file that cannot be written stops the process at once
(status 70) rather than acknowledging rows it could not keep; ``up`` restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from svc_archive.core import ArchiveCore, ArchiveSettings, Flush, NotArchivable
from svc_archive.files import MD_MANIFEST, MD_STAGING, ArchiveFiles
from volstream.bus.stage import InMessage, Output, StageInput, dead_letter_output
from volstream.bus.streams import ensure_consumer
from volstream.config import Config
from volstream.runtime import ServiceContext, durable_name, service_context

log = logging.getLogger("svc_archive")

SERVICE = "archive"
EXIT_WRITE_FAILED = 70


@dataclass
class Pipeline:
    """One input stream into its own files and manifest."""

    stream: str
    files: ArchiveFiles
    core: ArchiveCore


class ArchiveStage:
    def __init__(self, ctx: ServiceContext, pipelines: dict[str, Pipeline]) -> None:
        self.ctx = ctx
        self.pipelines = pipelines  # by stream name
        self.lock = asyncio.Lock()
        m = ctx.metrics
        self.rows = m.counter("archive_rows", "rows written to archive files")
        self.skipped = m.counter("archive_rows_skipped", "rows already archived (redelivered)")
        self.file_count = m.counter("archive_files", "archive files committed")
        self.bytes = m.counter("archive_bytes", "bytes of archive files committed")
        self.messages = m.counter("archive_messages", "stream messages archived")
        self.lag = m.gauge("archive_pending_rows", "rows buffered, not yet in a file")
        self.write_errors = m.counter(
            "archive_write_errors", "archive writes that failed (then the process exits)"
        )
        self.namespace = ctx.subjects.namespace

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        outputs: list[Output] = []
        async with self.lock:
            flushes: dict[str, list[Flush]] = {}
            for msg in batch:
                p = self.pipelines[msg.metadata.stream]
                stored_ns, now = msg.metadata.timestamp_ns, time.monotonic_ns()
                try:
                    if p.stream == self.md_stream:
                        added = p.core.add_md(
                            msg.subject, msg.data, msg.stream_seq, stored_ns, now, self.namespace
                        )
                    else:
                        added = p.core.add(msg.data, msg.stream_seq, stored_ns, now)
                except NotArchivable as exc:
                    outputs.append(
                        dead_letter_output(self.ctx.subjects, SERVICE, msg, f"archive: {exc}")
                    )
                    continue
                self.messages.add(1, {"stream": p.stream})
                if added.skipped:
                    self.skipped.add(added.skipped)
                flushes.setdefault(p.stream, []).extend(added.flushes)
            for stream, due in flushes.items():
                await self._commit(self.pipelines[stream], due)
        return outputs

    @property
    def md_stream(self) -> str:
        return self.ctx.subjects.stream_name("MD")

    async def tick(self) -> None:
        async with self.lock:
            for p in self.pipelines.values():
                await self._commit(p, p.core.due(time.monotonic_ns()))

    async def drain(self) -> None:
        async with self.lock:
            for p in self.pipelines.values():
                await self._commit(p, p.core.drain())

    async def _commit(self, p: Pipeline, flushes: list[Flush]) -> None:
        try:
            for flush in flushes:
                path, size = await asyncio.to_thread(p.files.commit, flush)
                p.core.mark_committed(flush)
                self.rows.add(flush.rows, {"table": flush.key.table})
                self.file_count.add(1, {"table": flush.key.table})
                self.bytes.add(size, {"table": flush.key.table})
                log.debug("archived %d rows in %s", flush.rows, path)
            if flushes:
                await asyncio.to_thread(
                    p.files.write_manifest,
                    p.core.durable_through,
                    list(p.core.high_water.items()),
                )
        except OSError as exc:
            # Rows taken from the buffers and not on disk must not be acknowledged as kept:
            # stop now; the restart rewinds to the manifest and writes them again. A full disk
            # (ENOSPC) makes the restarts fail the same way until space returns (docs/archive.md).
            code = errno.errorcode.get(exc.errno or 0, "unknown")
            self.write_errors.add(1, {"errno": code})
            log.critical(
                "archive write failed (%s: %s): exiting so the restart can redo it",
                code,
                exc.strerror or exc,
                exc_info=True,
            )
            logging.shutdown()
            os._exit(EXIT_WRITE_FAILED)
        self.lag.set(sum(q.core.pending_rows() for q in self.pipelines.values()))


async def _roll(stage: ArchiveStage, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        await stage.tick()


async def _open(root: Path, stream: str, settings: ArchiveSettings, md: bool) -> Pipeline:
    files = (
        ArchiveFiles(root, manifest=MD_MANIFEST, staging=MD_STAGING) if md else ArchiveFiles(root)
    )
    high_water = await asyncio.to_thread(files.open)
    return Pipeline(stream, files, ArchiveCore(settings, high_water, files.durable_through))


async def run(cfg: Config) -> None:
    root = cfg.archive_root()
    settings = ArchiveSettings(
        roll_rows=cfg.archive_roll_rows, roll_age_ns=int(cfg.archive_roll_s * 1e9)
    )
    async with service_context(cfg, SERVICE) as ctx:
        durable = durable_name(SERVICE, cfg)
        inputs = [
            StageInput(
                ctx.subjects.stream_name("SURFACE"), durable, [ctx.subjects.stage_all("surface")]
            )
        ]
        if cfg.archive_md:
            md_stream = ctx.subjects.stream_name("MD")
            inputs.append(StageInput(md_stream, f"{durable}-md", [ctx.subjects.md_all()]))
        pipelines: dict[str, Pipeline] = {}
        for spec, md in zip(inputs, (False, True), strict=False):
            p = pipelines[spec.stream] = await _open(root, spec.stream, settings, md)
            await ensure_consumer(ctx.js, spec.consumer_spec())
            # Redeliver what was acknowledged but not yet in a file (module docstring), also
            # when nothing is: an archiver killed before its first file acknowledged rows too.
            await ctx.js.reset_consumer(spec.stream, spec.durable, p.files.durable_through + 1)
            log.info(
                "archiving %s into %s (durable through stream sequence %d, %d partitions open)",
                spec.stream,
                root,
                p.files.durable_through,
                len(p.core.committed),
            )
        stage = ArchiveStage(ctx, pipelines)
        ctx.on_close(stage.drain)  # after the runner's last batch (closers run last first)
        stop = asyncio.Event()
        roller = asyncio.create_task(_roll(stage, min(1.0, cfg.archive_roll_s / 4), stop))

        async def stop_roller() -> None:
            stop.set()
            await roller

        ctx.on_close(stop_roller)
        await ctx.start_stage(inputs, stage)
        await ctx.wait_stopped()
