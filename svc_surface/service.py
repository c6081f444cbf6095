"""Surface service runtime: iv.<venue>.<ccy> smiles -> SurfaceCore per partition ->
surface.<venue>.<ccy>, and the consolidated cross-venue surface -> surface.all.<ccy>.

The consolidated surface of a currency is produced by the replica that owns every
configured venue of it (cfg.consolidate "auto"), or by a dedicated replica (cfg.consolidate
"only") when venues are split across partition groups.

Prompt, throttled refits, in event time. A key (a venue's or the consolidated surface of a
currency) is refitted as soon as a smile batch brings it something new, unless it was
refitted less than cfg.surface_interval_ms of event time before; then the first batch after
that interval refits it (the stage kit's ``PartitionClock`` as a throttle: ``ready`` and a
``cut`` only when a fit is made, so a quiet stretch leaves the next change free to go out at
once). Within a fit only the slices whose smiles changed are refitted (the core's per-slice
cache); the others keep their fit. Everything is decided by the input's event times, never
the wall clock, so a replay refits at the same points (docs/architecture.md section 3).
The IV stage's flush cadence (cfg.iv_interval_ms) bounds how often a slice's smile can
change; this interval bounds how often a key is refitted, whatever its input rate: a fit
costs a fixed part (repair checks, metrics, the surface message) besides its changed slices,
so refitting each changed slice on its own would cost more, not less.

Where the work runs. The stage's whole state (the cores and their clocks) and every decision
live in one worker process (``SurfaceWork``): the event loop hands it each input message as
it came (its bytes) and gets back the outputs, serialised. The loop keeps serving acks and
heartbeats while numpy/scipy work, and nothing but message bytes crosses the process
boundary: shipping each fit job's warm-start caches to a stateless worker and back cost a
fifth of a fit. A replay (``offload`` False) runs the same ``SurfaceWork`` inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from svc_surface.core import ConsolidatedSurfaceCore, SurfaceConfig, SurfaceCore, run_fit_job
from svc_surface.quotes import SmileColumns
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
from volstream.subjects import Subjects
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

log = logging.getLogger("svc_surface")

SERVICE = "surface"
SOURCE = "svc_surface"
ALL = "all"

Key = tuple[str, str]  # (venue or "all", currency)


@dataclass(frozen=True)
class FitDone:
    """One published fit, for the service's metrics (kept in the process that serves them)."""

    venue: str
    currency: str
    seconds: float


def surface_keys(cfg: Config, partitions: tuple[Partition, ...]) -> list[Key]:
    """The keys a replica fits: its venues' (unless consolidation-only) and the consolidated
    ones of cfg.consolidated_currencies()."""
    keys: list[Key] = (
        [] if cfg.consolidate == "only" else [(p.venue, p.currency.upper()) for p in partitions]
    )
    return keys + [(ALL, ccy) for ccy in cfg.consolidated_currencies()]


class SurfaceWork:
    """The surface stage's state and cuts: a pure function of its input messages (module
    docstring). Runs in the fit worker process, or inline."""

    def __init__(self, cfg: Config, subjects: Subjects, partitions: tuple[Partition, ...]) -> None:
        self.subjects = subjects
        model = {"svi": surface_pb.SURFACE_MODEL_SVI, "ssvi": surface_pb.SURFACE_MODEL_SSVI}
        config = SurfaceConfig(
            model=model[cfg.surface_model], smoothing_half_life_s=cfg.surface_smoothing_s
        )
        self.cores: dict[Key, SurfaceCore] = {
            key: ConsolidatedSurfaceCore(key[1], config)
            if key[0] == ALL
            else SurfaceCore(key[0], key[1], config)
            for key in surface_keys(cfg, partitions)
        }
        self.accepted: set[Key] = {(p.venue, p.currency.upper()) for p in partitions}
        interval_ns = cfg.surface_interval_ms * 1_000_000
        self.clocks: dict[Key, PartitionClock] = {
            key: PartitionClock(interval_ns) for key in self.cores
        }

    def continue_counters(self, key: Key, revision: int, sequence: int) -> None:
        """Continue a key's revisions and header sequences (never lowering them)."""
        core = self.cores[key]
        core.revision = max(core.revision, revision)
        clock = self.clocks[key]
        clock.sequence = max(clock.sequence, sequence)

    def handle(self, batch: list[InMessage]) -> tuple[list[Output], list[FitDone]]:
        """Fold each smile batch into its venue's core and the consolidated one, and fit a
        key when it has something new and its throttle allows (module docstring): cut per
        message, not per batch, so what is published does not depend on how the consumer
        happened to batch the stream."""
        outputs: list[Output] = []
        fits: list[FitDone] = []
        for msg in batch:
            try:
                smiles = iv_pb.SmileBatch.FromString(msg.data)
            except DecodeError as exc:
                reason = f"undecodable SmileBatch: {exc}"
                outputs.append(dead_letter_output(self.subjects, SERVICE, msg, reason))
                continue
            ccy = smiles.currency.upper()
            if (smiles.venue, ccy) not in self.accepted:
                reason = f"partition {smiles.venue}:{smiles.currency} not owned"
                outputs.append(dead_letter_output(self.subjects, SERVICE, msg, reason))
                continue
            invalid: list[str] = []
            # Each smile's quotes are read into columns once, for both cores.
            columns = [SmileColumns.of(smile) for smile in smiles.smiles]
            for key in ((smiles.venue, ccy), (ALL, ccy)):
                core = self.cores.get(key)
                if core is None:
                    continue
                for smile, smile_columns in zip(smiles.smiles, columns, strict=True):
                    unusable = core.on_smile(smile, smile_columns)
                    if unusable is not None and not invalid:
                        label = smile.expiry_label or smile.expiry_time_ns
                        invalid.append(f"smile {label}: {unusable}")
                self.clocks[key].observe(smiles.header.event_time_ns)
                output = self._fit(key, msg, fits)
                if output is not None:
                    outputs.append(output)
            if invalid:
                # The message's other smiles are used; the bad one is kept with its reason.
                outputs.append(dead_letter_output(self.subjects, SERVICE, msg, invalid[0]))
        return outputs, fits

    def _fit(self, key: Key, last: InMessage, fits: list[FitDone]) -> Output | None:
        clock = self.clocks[key]
        if not clock.ready():
            return None
        core = self.cores[key]
        job = core.prepare(clock.now_ns)
        if job is None:  # nothing new: the next change may go out at once
            return None
        clock.cut()
        started = time.perf_counter()
        surface = core.apply(run_fit_job(job))
        if surface is None:
            return None
        venue, ccy = key
        stamp_header(surface.header, SOURCE, clock)
        subject = self.subjects.surface(venue, ccy)
        fits.append(FitDone(venue, ccy, time.perf_counter() - started))
        # The input message that triggered the fit names it (restart dedupe).
        return Output(subject, surface.SerializeToString(), output_msg_id(SOURCE, subject, last))


# The fit worker process's SurfaceWork (one worker: every call lands in the same process, in
# the order the stage makes them).
_worker: SurfaceWork | None = None


def _start_worker(cfg: Config, subjects: Subjects, partitions: tuple[Partition, ...]) -> None:
    global _worker
    die_with_parent()
    _worker = SurfaceWork(cfg, subjects, partitions)


def _worker_handle(batch: list[InMessage]) -> tuple[list[Output], list[FitDone]]:
    assert _worker is not None, "the fit worker was not started"
    return _worker.handle(batch)


def _worker_continue_counters(counters: list[tuple[Key, int, int]]) -> None:
    assert _worker is not None, "the fit worker was not started"
    for key, revision, sequence in counters:
        _worker.continue_counters(key, revision, sequence)


class SurfaceStage:
    # Publish each surface as soon as it is fitted, not after the batch's other fits
    # (volstream.bus.stage, "Publishing early"): cuts are per input message.
    publish_every = 1

    def __init__(
        self, env: StageEnv, partitions: tuple[Partition, ...], *, offload: bool = True
    ) -> None:
        """``offload`` False: keep the state and fit in this process (a replay, which has no
        event loop to keep responsive, saves the hand-over of every message)."""
        self.env = env
        self.offload = offload
        self.keys = surface_keys(env.cfg, partitions)
        # Inline: the state lives here; offloaded: in the worker (module docstring).
        self.work = None if offload else SurfaceWork(env.cfg, env.subjects, partitions)
        self.pool = (
            ProcessPoolExecutor(
                max_workers=1,
                initializer=_start_worker,
                initargs=(env.cfg, env.subjects, partitions),
            )
            if offload
            else None
        )
        self.fits = env.metrics.counter("surface_fits", "surfaces fitted and published")
        self.fit_latency = env.metrics.histogram("surface_fit_latency", "time of one fit")

    @property
    def cores(self) -> dict[Key, SurfaceCore]:
        """The keys' cores (inline only: offloaded, they live in the worker)."""
        assert self.work is not None, "offloaded: the cores live in the fit worker"
        return self.work.cores

    @property
    def clocks(self) -> dict[Key, PartitionClock]:
        """The keys' clocks (inline only, as ``cores``)."""
        assert self.work is not None, "offloaded: the clocks live in the fit worker"
        return self.work.clocks

    async def bootstrap(self, ctx: ServiceContext) -> None:
        """Continue revisions and header sequences where the last published surface of each
        key left off (never lowering them: also run after a partial rebuild,
        volstream.bus.rebuild)."""
        counters: list[tuple[Key, int, int]] = []
        for venue, ccy in self.keys:
            data = await last_message(ctx, "SURFACE", self.env.subjects.surface(venue, ccy))
            if data is None:
                continue
            with contextlib.suppress(DecodeError):
                last = surface_pb.Surface.FromString(data)
                counters.append(((venue, ccy), last.revision, last.header.sequence))
        if self.pool is None:
            assert self.work is not None
            for key, revision, sequence in counters:
                self.work.continue_counters(key, revision, sequence)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.pool, _worker_continue_counters, counters)

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        if self.pool is None:
            assert self.work is not None
            outputs, fits = self.work.handle(batch)
        else:
            # The worker holds the state: the loop keeps acking and heartbeating meanwhile.
            loop = asyncio.get_running_loop()
            outputs, fits = await loop.run_in_executor(self.pool, _worker_handle, batch)
        for fit in fits:
            self.fit_latency.record(fit.seconds)
            self.fits.add(1, {"venue": fit.venue, "currency": fit.currency})
        return outputs

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


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
            ", ".join(str(p) for p in partitions) if cfg.consolidate != "only" else "nothing",
            ", ".join(cfg.consolidated_currencies()) or "none",
        )
        await ctx.wait_stopped()
        stage.close()
