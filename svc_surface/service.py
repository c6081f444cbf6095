"""Surface service runtime: iv.<venue>.<ccy> smiles -> SurfaceCore per partition ->
surface.<venue>.<ccy>.

Fits run on a cadence in event time (cfg.surface_interval_ms) in a worker thread, so the
event loop keeps serving acks and heartbeats while numpy/scipy work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ProcessPoolExecutor

from google.protobuf.message import DecodeError

from svc_surface.core import SurfaceCore, run_fit_job
from volstream.bus.stage import InMessage, Output, StageInput, StageRunner, dead_letter_output
from volstream.config import Config, Partition
from volstream.runtime import (
    ServiceContext,
    die_with_parent,
    durable_name,
    last_message,
    service_context,
    wall_ns,
)
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger("svc_surface")

SERVICE = "surface"


class SurfaceStage:
    def __init__(self, ctx: ServiceContext, partitions: tuple[Partition, ...]) -> None:
        self.ctx = ctx
        self.interval_ns = ctx.cfg.surface_interval_ms * 1_000_000
        self.cores: dict[tuple[str, str], SurfaceCore] = {
            (p.venue, p.currency.upper()): SurfaceCore(p.venue, p.currency.upper())
            for p in partitions
        }
        self.now_ns: dict[tuple[str, str], int] = {}
        self.last_fit_ns: dict[tuple[str, str], int] = {}
        self.pool = ProcessPoolExecutor(max_workers=1, initializer=die_with_parent)
        self.fits = ctx.metrics.counter("surface_fits", "surfaces fitted and published")
        self.fit_latency = ctx.metrics.histogram("surface_fit_latency", "time of one fit")

    async def bootstrap(self) -> None:
        """Continue revisions where the last published surface of each partition left off."""
        for venue, ccy in self.cores:
            data = await last_message(self.ctx, "SURFACE", self.ctx.subjects.surface(venue, ccy))
            if data is None:
                continue
            with contextlib.suppress(DecodeError):
                self.cores[(venue, ccy)].revision = surface_pb.Surface.FromString(data).revision

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        touched: dict[tuple[str, str], InMessage] = {}
        dead: list[Output] = []
        for msg in batch:
            try:
                smiles = iv_pb.SmileBatch.FromString(msg.data)
            except DecodeError as exc:
                dead.append(
                    dead_letter_output(
                        self.ctx.subjects, SERVICE, msg, f"undecodable SmileBatch: {exc}"
                    )
                )
                continue
            key = (smiles.venue, smiles.currency.upper())
            core = self.cores.get(key)
            if core is None:
                dead.append(
                    dead_letter_output(
                        self.ctx.subjects,
                        SERVICE,
                        msg,
                        f"partition {smiles.venue}:{smiles.currency} not owned",
                    )
                )
                continue
            for smile in smiles.smiles:
                core.on_smile(smile)
            self.now_ns[key] = max(self.now_ns.get(key, 0), smiles.header.event_time_ns)
            touched[key] = msg
        outputs: list[Output] = dead
        loop = asyncio.get_running_loop()
        for key, last in touched.items():
            now = self.now_ns[key]
            if now - self.last_fit_ns.get(key, 0) < self.interval_ns:
                continue
            self.last_fit_ns[key] = now
            core = self.cores[key]
            job = core.prepare(now)
            if job is None:
                continue
            started = loop.time()
            # The fit runs in a worker process: the loop keeps acking and heartbeating.
            result = await loop.run_in_executor(self.pool, run_fit_job, job)
            self.fit_latency.record(loop.time() - started)
            surface = core.apply(result)
            if surface is None:
                continue
            venue, ccy = key
            surface.header.publish_time_ns = wall_ns()
            surface.header.source = "svc_surface"
            surface.header.event_time_ns = now
            surface.header.sequence = last.stream_seq
            subject = self.ctx.subjects.surface(venue, ccy)
            msg_id = f"svc_surface.{subject}.{last.metadata.stream}.{last.stream_seq}"
            outputs.append(Output(subject, surface.SerializeToString(), msg_id))
            self.fits.add(1, {"venue": venue, "currency": ccy})
        return outputs


async def run(cfg: Config) -> None:
    async with service_context(cfg, SERVICE) as ctx:
        partitions = cfg.owned_partitions()
        stage = SurfaceStage(ctx, partitions)
        await stage.bootstrap()
        inputs = [
            StageInput(
                ctx.subjects.stream_name("IV"),
                durable_name(SERVICE, ctx.cfg),
                [ctx.subjects.iv(p.venue, p.currency) for p in partitions],
            )
        ]
        runner = StageRunner(ctx.nc, SERVICE, ctx.subjects, inputs, stage, ctx.metrics)
        await runner.start()
        ctx.on_close(runner.stop)
        log.info("surface service owns %s", ", ".join(str(p) for p in partitions))
        await ctx.wait_stopped()
        stage.pool.shutdown(wait=False, cancel_futures=True)
