"""Archive service runtime: surface.> (stream SURFACE, durable ``archive-<group>``) -> Parquet
files under ``<archive>/`` (volstream/archive.py has the layout, docs/archive.md the schema).

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
import logging
import os
import time

from svc_archive.core import ArchiveCore, ArchiveSettings, Flush, NotASurface
from svc_archive.files import ArchiveFiles
from volstream.bus.stage import InMessage, Output, StageInput, dead_letter_output
from volstream.bus.streams import ensure_consumer
from volstream.config import Config
from volstream.runtime import ServiceContext, durable_name, service_context

log = logging.getLogger("svc_archive")

SERVICE = "archive"
EXIT_WRITE_FAILED = 70


class ArchiveStage:
    def __init__(self, ctx: ServiceContext, files: ArchiveFiles, core: ArchiveCore) -> None:
        self.ctx = ctx
        self.files = files
        self.core = core
        self.lock = asyncio.Lock()
        m = ctx.metrics
        self.rows = m.counter("archive_rows", "rows written to archive files")
        self.skipped = m.counter("archive_rows_skipped", "rows already archived (redelivered)")
        self.file_count = m.counter("archive_files", "archive files committed")
        self.bytes = m.counter("archive_bytes", "bytes of archive files committed")
        self.surfaces = m.counter("archive_surfaces", "surfaces archived")
        self.lag = m.gauge("archive_pending_rows", "rows buffered, not yet in a file")

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        outputs: list[Output] = []
        async with self.lock:
            flushes: list[Flush] = []
            for msg in batch:
                stored_ns = msg.metadata.timestamp_ns
                try:
                    added = self.core.add(msg.data, msg.stream_seq, stored_ns, time.monotonic_ns())
                except NotASurface as exc:
                    outputs.append(
                        dead_letter_output(self.ctx.subjects, SERVICE, msg, f"archive: {exc}")
                    )
                    continue
                self.surfaces.add(1)
                if added.skipped:
                    self.skipped.add(added.skipped)
                flushes += added.flushes
            await self._commit(flushes)
        return outputs

    async def tick(self) -> None:
        async with self.lock:
            await self._commit(self.core.due(time.monotonic_ns()))

    async def drain(self) -> None:
        async with self.lock:
            await self._commit(self.core.drain())

    async def _commit(self, flushes: list[Flush]) -> None:
        try:
            for flush in flushes:
                path, size = await asyncio.to_thread(self.files.commit, flush)
                self.core.mark_committed(flush)
                self.rows.add(flush.rows, {"table": flush.key.table})
                self.file_count.add(1, {"table": flush.key.table})
                self.bytes.add(size, {"table": flush.key.table})
                log.debug("archived %d rows in %s", flush.rows, path)
            if flushes:
                await asyncio.to_thread(
                    self.files.write_manifest,
                    self.core.durable_through,
                    list(self.core.high_water.items()),
                )
        except OSError:
            # Rows taken from the buffers and not on disk must not be acknowledged as kept:
            # stop now; the restart rewinds to the manifest and writes them again.
            log.critical("archive write failed: exiting so the restart can redo it", exc_info=True)
            logging.shutdown()
            os._exit(EXIT_WRITE_FAILED)
        self.lag.set(self.core.pending_rows())


async def _roll(stage: ArchiveStage, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        await stage.tick()


async def run(cfg: Config) -> None:
    root = cfg.archive_root()
    files = ArchiveFiles(root)
    high_water = await asyncio.to_thread(files.open)
    settings = ArchiveSettings(
        roll_rows=cfg.archive_roll_rows, roll_age_ns=int(cfg.archive_roll_s * 1e9)
    )
    core = ArchiveCore(settings, high_water, files.durable_through)
    async with service_context(cfg, SERVICE) as ctx:
        stage = ArchiveStage(ctx, files, core)
        stream = ctx.subjects.stream_name("SURFACE")
        spec = StageInput(stream, durable_name(SERVICE, cfg), [ctx.subjects.stage_all("surface")])
        await ensure_consumer(ctx.js, spec.consumer_spec())
        if files.durable_through > 0:
            # Redeliver what was acknowledged but not yet in a file (module docstring).
            await ctx.js.reset_consumer(stream, spec.durable, files.durable_through + 1)
        log.info(
            "archiving %s into %s (durable through stream sequence %d, %d partitions open)",
            stream,
            root,
            files.durable_through,
            len(high_water),
        )
        ctx.on_close(stage.drain)  # after the runner's last batch (closers run last first)
        stop = asyncio.Event()
        roller = asyncio.create_task(_roll(stage, min(1.0, cfg.archive_roll_s / 4), stop))

        async def stop_roller() -> None:
            stop.set()
            await roller

        ctx.on_close(stop_roller)
        await ctx.start_stage([spec], stage)
        await ctx.wait_stopped()
