"""Surface service runtime: iv.<venue>.<ccy> smiles -> SurfaceCore per partition ->
surface.<venue>.<ccy>, and the consolidated cross-venue surface -> surface.all.<ccy>.

Fits run on a cadence in event time (cfg.surface_interval_ms, kept per key by the stage kit's
``PartitionClock``, which also stamps each surface's header) in a worker process, so the
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
    PartitionClock,
    StageEnv,
    StageInput,
    dead_letter_output,
    output_msg_id,
    stamp_header,
)
from volstream.config import Config, Partition
from volstream.process import die_with_parent
from volstream.runtime import ServiceContext, durable_name, last_message, service_context
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger("svc_surface")

SERVICE = "surface"
SOURCE = "svc_surface"
ALL = "all"

Key = tuple[str, str]  # (venue or "all", currency)


class SurfaceStage:
    def __init__(
        self, env: StageEnv, partitions: tuple[Partition, ...], *, offload: bool = True
    ) -> None:
        """``offload`` False: fit in this process (a replay, which has no event loop to keep
        responsive, saves pickling every job and result)."""
        self.env = env
        self.offload = offload
        only = env.cfg.consolidate == "only"
        model = {"svi": surface_pb.SURFACE_MODEL_SVI, "ssvi": surface_pb.SURFACE_MODEL_SSVI}
        config = SurfaceConfig(
            model=model[env.cfg.surface_model], smoothing_half_life_s=env.cfg.surface_smoothing_s
        )
        self.cores: dict[Key, SurfaceCore] = (
            {}
            if only
            else {
                (p.venue, p.currency.upper()): SurfaceCore(p.venue, p.currency.upper(), config)
                for p in partitions
            }
        )
        self.accepted: set[Key] = {(p.venue, p.currency.upper()) for p in partitions}
        for ccy in env.cfg.consolidated_currencies():
            self.cores[(ALL, ccy)] = ConsolidatedSurfaceCore(ccy, config)
        interval_ns = env.cfg.surface_interval_ms * 1_000_000
        self.clocks: dict[Key, PartitionClock] = {
            key: PartitionClock(interval_ns) for key in self.cores
        }
        self.pool = (
            ProcessPoolExecutor(max_workers=1, initializer=die_with_parent) if offload else None
        )
        self.fits = env.metrics.counter("surface_fits", "surfaces fitted and published")
        self.fit_latency = env.metrics.histogram("surface_fit_latency", "time of one fit")

    async def bootstrap(self, ctx: ServiceContext) -> None:
        """Continue revisions and header sequences where the last published surface of each
        key left off (never lowering them: also run after a partial rebuild,
        volstream.bus.rebuild)."""
        for venue, ccy in self.cores:
            data = await last_message(ctx, "SURFACE", self.env.subjects.surface(venue, ccy))
            if data is None:
                continue
            with contextlib.suppress(DecodeError):
                last = surface_pb.Surface.FromString(data)
                core = self.cores[(venue, ccy)]
                core.revision = max(core.revision, last.revision)
                clock = self.clocks[(venue, ccy)]
                clock.sequence = max(clock.sequence, last.header.sequence)

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        """Fold each smile batch into its venue's core and the consolidated one, and fit a
        key when its cadence is due: cut per message, not per batch, so what is published
        does not depend on how the consumer happened to batch the stream."""
        outputs: list[Output] = []
        for msg in batch:
            try:
                smiles = iv_pb.SmileBatch.FromString(msg.data)
            except DecodeError as exc:
                reason = f"undecodable SmileBatch: {exc}"
                outputs.append(dead_letter_output(self.env.subjects, SERVICE, msg, reason))
                continue
            ccy = smiles.currency.upper()
            if (smiles.venue, ccy) not in self.accepted:
                reason = f"partition {smiles.venue}:{smiles.currency} not owned"
                outputs.append(dead_letter_output(self.env.subjects, SERVICE, msg, reason))
                continue
            invalid: list[str] = []
            for key in ((smiles.venue, ccy), (ALL, ccy)):
                core = self.cores.get(key)
                if core is None:
                    continue
                for smile in smiles.smiles:
                    unusable = core.on_smile(smile)
                    if unusable is not None and not invalid:
                        label = smile.expiry_label or smile.expiry_time_ns
                        invalid.append(f"smile {label}: {unusable}")
                self.clocks[key].observe(smiles.header.event_time_ns)
                output = await self._fit(key, msg)
                if output is not None:
                    outputs.append(output)
            if invalid:
                # The message's other smiles are used; the bad one is kept with its reason.
                outputs.append(dead_letter_output(self.env.subjects, SERVICE, msg, invalid[0]))
        return outputs

    async def _fit(self, key: Key, last: InMessage) -> Output | None:
        clock = self.clocks[key]
        if not clock.due():
            return None
        core = self.cores[key]
        job = core.prepare(clock.now_ns)
        if job is None:
            return None
        loop = asyncio.get_running_loop()
        started = loop.time()
        # The fit runs in a worker process: the loop keeps acking and heartbeating.
        if self.pool is None:
            result = run_fit_job(job)
        else:
            result = await loop.run_in_executor(self.pool, run_fit_job, job)
        self.fit_latency.record(loop.time() - started)
        surface = core.apply(result)
        if surface is None:
            return None
        venue, ccy = key
        stamp_header(surface.header, SOURCE, clock)
        subject = self.env.subjects.surface(venue, ccy)
        self.fits.add(1, {"venue": venue, "currency": ccy})
        # The input message that triggered the fit names it (restart dedupe).
        return Output(subject, surface.SerializeToString(), output_msg_id(SOURCE, subject, last))


def stage_inputs(env: StageEnv, partitions: tuple[Partition, ...]) -> list[StageInput]:
    durable = durable_name(SERVICE, env.cfg)
    if env.cfg.consolidate == "only":
        durable = f"{SERVICE}-consolidated"
    filters = [env.subjects.iv(p.venue, p.currency) for p in partitions]
    return [StageInput(env.subjects.stream_name("IV"), durable, filters)]


async def run(cfg: Config) -> None:
    async with service_context(cfg, SERVICE) as ctx:
        partitions = cfg.owned_partitions()
        if cfg.consolidate == "only":  # every venue of the configured currencies
            partitions = tuple(Partition(v, c) for v in cfg.venues for c in cfg.currencies)
        stage = SurfaceStage(ctx, partitions)
        if cfg.rebuild == "resume":  # "replay": the runner rebuilds the fits from IV
            await stage.bootstrap(ctx)

        async def continue_counters() -> None:
            await stage.bootstrap(ctx)

        await ctx.start_stage(stage_inputs(ctx, partitions), stage, continue_counters)
        log.info(
            "surface service owns %s; consolidated: %s",
            ", ".join(str(p) for p in partitions) if stage.cores else "nothing",
            ", ".join(cfg.consolidated_currencies()) or "none",
        )
        await ctx.wait_stopped()
        if stage.pool is not None:
            stage.pool.shutdown(wait=False, cancel_futures=True)
