"""The derived stages a replay runs, built the way each service builds them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from svc_book import service as book_service
from svc_iv import service as iv_service
from svc_surface import service as surface_service
from volstream.bus.inprocess import LocalStage
from volstream.bus.stage import InMessage, Output, StageHandler
from volstream.config import Config
from volstream.subjects import Subjects
from volstream.telemetry import Metrics

# Stage name -> stream base name of what it publishes.
STREAM_BASES = {"md": "MD", "book": "BOOK", "iv": "IV", "surface": "SURFACE", "dlq": "DLQ"}


@dataclass(frozen=True)
class ReplayEnv:
    """A StageEnv without a process (volstream.bus.stage.StageEnv)."""

    cfg: Config
    subjects: Subjects
    metrics: Metrics


def local_stages(env: ReplayEnv) -> list[LocalStage]:
    """Book, IV and surface over every partition of ``env.cfg``, as their services run
    them, except that the work runs on this thread (nothing to keep responsive)."""
    partitions = env.cfg.owned_partitions()
    return [
        LocalStage(
            "book",
            book_service.stage_inputs(env, partitions),
            book_service.BookStage(env, partitions),
        ),
        LocalStage(
            "iv",
            iv_service.stage_inputs(env, partitions),
            iv_service.IvStage(env, partitions, offload=False),
        ),
        LocalStage(
            "surface",
            surface_service.stage_inputs(env, partitions),
            surface_service.SurfaceStage(env, partitions, offload=False),
        ),
    ]


def consolidation_stages(env: ReplayEnv) -> list[LocalStage]:
    """The surface stage of a replica that only consolidates (``env.cfg.consolidate`` "only"):
    surface.all.<ccy> of every currency of ``env.cfg`` from the IV of all its venues."""
    partitions = env.cfg.owned_partitions()
    return [
        LocalStage(
            "surface.all",
            surface_service.stage_inputs(env, partitions),
            surface_service.SurfaceStage(env, partitions, offload=False),
        )
    ]


class TimedHandler:
    """A stage handler that adds up the CPU time its calls take (the in-process bus calls
    handlers one at a time, so each call's time is the stage's own)."""

    def __init__(self, handler: StageHandler) -> None:
        self.handler = handler
        self.cpu_s = 0.0

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        started = time.process_time()
        try:
            return await self.handler.handle(batch)
        finally:
            self.cpu_s += time.process_time() - started


def timed(stages: list[LocalStage]) -> list[LocalStage]:
    """The same stages, each handler behind a TimedHandler (``close_stages`` still takes the
    original list)."""
    return [LocalStage(s.name, s.inputs, TimedHandler(s.handler)) for s in stages]


def stage_cpu(stages: list[LocalStage]) -> dict[str, float]:
    """CPU seconds per stage name of ``timed`` stages."""
    return {s.name: s.handler.cpu_s for s in stages if isinstance(s.handler, TimedHandler)}


async def close_stages(stages: list[LocalStage]) -> None:
    """Release the stages' worker pools."""
    for stage in stages:
        handler = stage.handler
        if isinstance(handler, iv_service.IvStage):
            await handler.close()
        elif isinstance(handler, surface_service.SurfaceStage) and handler.pool is not None:
            handler.pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class StreamRouter:
    """The stream a subject of ``subjects``' namespace is stored in (None: not stored)."""

    subjects: Subjects

    def __call__(self, subject: str) -> str | None:
        prefix = f"{self.subjects.namespace}." if self.subjects.namespace else ""
        if not subject.startswith(prefix):
            return None
        base = STREAM_BASES.get(subject[len(prefix) :].split(".", 1)[0])
        return None if base is None else self.subjects.stream_name(base)
