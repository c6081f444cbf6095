"""Surface service runtime: iv.<venue>.<ccy> smiles -> SurfaceCore per partition ->
surface.<venue>.<ccy>, and the consolidated cross-venue surface -> surface.all.<ccy>.

Fits run on a cadence in event time (cfg.surface_interval_ms) in a worker process, so the
event loop keeps serving acks and heartbeats while numpy/scipy work. The consolidated
surface of a currency is produced by the replica that owns every configured venue of it
(cfg.consolidate "auto"), or by a dedicated replica (cfg.consolidate "only") when venues are
split across partition groups.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ProcessPoolExecutor

from google.protobuf.message import DecodeError

from svc_surface.core import ConsolidatedSurfaceCore, SurfaceConfig, SurfaceCore, run_fit_job
from volstream.bus.stage import (
    InMessage,
    Output,
    StageInput,
    dead_letter_output,
    output_msg_id,
)
from volstream.config import Config, Partition
from volstream.process import die_with_parent
from volstream.runtime import (
    ServiceContext,
    durable_name,
    last_message,
    service_context,
    wall_ns,
)
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger("svc_surface")

SERVICE = "surface"
ALL = "all"

Key = tuple[str, str]  # (venue or "all", currency)


class SurfaceStage:
    def __init__(self, ctx: ServiceContext, partitions: tuple[Partition, ...]) -> None:
        self.ctx = ctx
        self.interval_ns = ctx.cfg.surface_interval_ms * 1_000_000
        only = ctx.cfg.consolidate == "only"
        config = SurfaceConfig(smoothing_half_life_s=ctx.cfg.surface_smoothing_s)
        self.cores: dict[Key, SurfaceCore] = (
            {}
            if only
            else {
                (p.venue, p.currency.upper()): SurfaceCore(p.venue, p.currency.upper(), config)
                for p in partitions
            }
        )
        self.accepted: set[Key] = {(p.venue, p.currency.upper()) for p in partitions}
        for ccy in ctx.cfg.consolidated_currencies():
            self.cores[(ALL, ccy)] = ConsolidatedSurfaceCore(ccy, config)
        self.now_ns: dict[Key, int] = {}
        self.last_fit_ns: dict[Key, int] = {}
        self.pool = ProcessPoolExecutor(max_workers=1, initializer=die_with_parent)
        self.fits = ctx.metrics.counter("surface_fits", "surfaces fitted and published")
        self.fit_latency = ctx.metrics.histogram("surface_fit_latency", "time of one fit")

    async def bootstrap(self) -> None:
        """Continue revisions where the last published surface of each key left off."""
        for venue, ccy in self.cores:
            data = await last_message(self.ctx, "SURFACE", self.ctx.subjects.surface(venue, ccy))
            if data is None:
                continue
            with contextlib.suppress(DecodeError):
                self.cores[(venue, ccy)].revision = surface_pb.Surface.FromString(data).revision

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        touched: dict[Key, InMessage] = {}
        outputs: list[Output] = []
        for msg in batch:
            try:
                smiles = iv_pb.SmileBatch.FromString(msg.data)
            except DecodeError as exc:
                reason = f"undecodable SmileBatch: {exc}"
                outputs.append(dead_letter_output(self.ctx.subjects, SERVICE, msg, reason))
                continue
            ccy = smiles.currency.upper()
            if (smiles.venue, ccy) not in self.accepted:
                reason = f"partition {smiles.venue}:{smiles.currency} not owned"
                outputs.append(dead_letter_output(self.ctx.subjects, SERVICE, msg, reason))
                continue
            for key in ((smiles.venue, ccy), (ALL, ccy)):
                core = self.cores.get(key)
                if core is None:
                    continue
                for smile in smiles.smiles:
                    core.on_smile(smile)
                self.now_ns[key] = max(self.now_ns.get(key, 0), smiles.header.event_time_ns)
                touched[key] = msg
        for key, last in touched.items():
            output = await self._fit(key, last)
            if output is not None:
                outputs.append(output)
        return outputs

    async def _fit(self, key: Key, last: InMessage) -> Output | None:
        now = self.now_ns[key]
        if now - self.last_fit_ns.get(key, 0) < self.interval_ns:
            return None
        self.last_fit_ns[key] = now
        core = self.cores[key]
        job = core.prepare(now)
        if job is None:
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()
        # The fit runs in a worker process: the loop keeps acking and heartbeating.
        result = await loop.run_in_executor(self.pool, run_fit_job, job)
        self.fit_latency.record(loop.time() - started)
        surface = core.apply(result)
        if surface is None:
            return None
        venue, ccy = key
        surface.header.publish_time_ns = wall_ns()
        surface.header.source = "svc_surface"
        surface.header.event_time_ns = now
        surface.header.sequence = last.stream_seq
        subject = self.ctx.subjects.surface(venue, ccy)
        self.fits.add(1, {"venue": venue, "currency": ccy})
        # The input message that triggered the fit names it (restart dedupe).
        return Output(
            subject, surface.SerializeToString(), output_msg_id("svc_surface", subject, last)
        )


def stage_inputs(ctx: ServiceContext, partitions: tuple[Partition, ...]) -> list[StageInput]:
    durable = durable_name(SERVICE, ctx.cfg)
    if ctx.cfg.consolidate == "only":
        durable = f"{SERVICE}-consolidated"
    filters = [ctx.subjects.iv(p.venue, p.currency) for p in partitions]
    return [StageInput(ctx.subjects.stream_name("IV"), durable, filters)]


async def run(cfg: Config) -> None:
    async with service_context(cfg, SERVICE) as ctx:
        partitions = cfg.owned_partitions()
        if cfg.consolidate == "only":  # every venue of the configured currencies
            partitions = tuple(Partition(v, c) for v in cfg.venues for c in cfg.currencies)
        stage = SurfaceStage(ctx, partitions)
        await stage.bootstrap()
        await ctx.start_stage(stage_inputs(ctx, partitions), stage)
        log.info(
            "surface service owns %s; consolidated: %s",
            ", ".join(str(p) for p in partitions) if stage.cores else "nothing",
            ", ".join(cfg.consolidated_currencies()) or "none",
        )
        await ctx.wait_stopped()
        stage.pool.shutdown(wait=False, cancel_futures=True)
