"""One replay: read a range of the MD stream, run book -> IV -> surface and publish their
outputs into the namespace's own streams (BOOK_<NS>, IV_<NS>, SURFACE_<NS>, DLQ_<NS>), as
fast as the machine allows. Live processing is untouched: nothing is published on a live
subject and no live consumer is created.

The stages run in this process (``workers`` 1: ``InProcessBus`` over every partition, the
reference) or partition-parallel in worker processes (replay/parallel.py), which store the
same messages in the same order: ``volstream replay`` takes one worker per core.

Books need snapshots: a range that starts mid-session sees deltas of books whose snapshot
came before it, and those books stay invalid until the venue sends one again (each one is
counted in the book stage's resync requests, which a replay has no connector to answer).
Replaying from a connector start (the start of what MD retains, for a fresh system) gives
every book its snapshot.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client

from replay.parallel import AHEAD, ParallelReplay
from replay.source import Stored, read_range, short_time
from replay.stages import (
    STREAM_BASES,
    ReplayEnv,
    StreamRouter,
    close_stages,
    local_stages,
    stage_cpu,
    timed,
)
from volstream.bus.inprocess import InProcessBus, Published
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.stage import Output
from volstream.bus.streams import default_stream_specs, ensure_streams
from volstream.config import Config
from volstream.subjects import Subjects, parse_partition
from volstream.telemetry import setup_telemetry

# The namespace streams a replay writes (MD stays live-only: replays read it).
OUTPUT_STREAMS = ("BOOK", "IV", "SURFACE", "DLQ")


@dataclass
class ReplayStats:
    """Progress of a replay: inputs read, outputs published, positions and speed."""

    started: float = field(default_factory=time.perf_counter)
    inputs: int = 0
    outputs: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    first_stored_ns: int = 0
    last_stored_ns: int = 0
    # CPU seconds each stage's handlers took (summed over workers), known at the end.
    stage_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def speed(self) -> float:
        """Stored-time span replayed per wall second: the multiple of real time."""
        span_s = (self.last_stored_ns - self.first_stored_ns) / 1e9
        return span_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        outs = ", ".join(f"{k} {v:,}" for k, v in sorted(self.outputs.items()))
        at = short_time(self.last_stored_ns) if self.last_stored_ns else "-"
        return (
            f"{self.inputs:,} md messages, at {at}, {self.speed:.1f}x real time, "
            f"{self.elapsed_s:.0f} s; published {outs or 'nothing yet'}"
        )


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, stats: ReplayStats, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self._last < (0.5 if self.tty else 5.0):
            return
        self._last = now
        end = "\n" if final or not self.tty else ""
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + stats.line() + end)
        sys.stderr.flush()


def selected(venues: tuple[str, ...], currencies: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether an MD subject belongs to the replayed venues and currencies."""
    wanted = {(v, c.lower()) for v in venues for c in currencies}

    def keep(subject: str) -> bool:
        _stage, venue, ccy, _rest = parse_partition(subject)
        return (venue, ccy) in wanted

    return keep


async def provision_namespace(nc: Client, namespace: str) -> None:
    specs = [
        s
        for s in default_stream_specs(Subjects(namespace))
        if s.name in {Subjects(namespace).stream_name(b) for b in OUTPUT_STREAMS}
    ]
    await ensure_streams(nc.jetstream(), specs)


class InProcessReplay:
    """Every stage of every partition on this thread (``workers`` 1): the reference order."""

    def __init__(self, cfg: Config, subjects: Subjects) -> None:
        self.stages = local_stages(ReplayEnv(cfg, subjects, setup_telemetry("replay")))
        self.stored: list[Published] = []
        md_stream = subjects.stream_name(STREAM_BASES["md"])

        def on_publish(message: Published) -> None:
            if message.stream != md_stream:
                self.stored.append(message)

        self.bus = InProcessBus(timed(self.stages), StreamRouter(subjects), on_publish=on_publish)
        self._chunks: deque[Sequence[tuple[str, bytes]]] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._chunks)

    def submit(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self._chunks.append(messages)

    async def collect(self) -> tuple[list[Published], list[Output]]:
        for subject, payload in self._chunks.popleft():
            await self.bus.publish(subject, payload)
        stored, self.stored = self.stored, []
        dead, self.bus.dead_letters = self.bus.dead_letters, []
        return stored, dead

    async def close(self) -> dict[str, float]:
        await close_stages(self.stages)
        return stage_cpu(self.bus.stages)


async def replay(
    nc: Client,
    cfg: Config,
    from_ns: int,
    to_ns: int,
    progress: Progress | None = None,
    source_stream: str = "MD",
    workers: int = 1,
) -> ReplayStats:
    """Replay MD stored in [from_ns, to_ns] with ``cfg``'s settings into ``cfg.namespace``:
    on this thread (``workers`` 1) or partition-parallel in ``workers`` processes and one
    per consolidated currency (replay/parallel.py); the same messages either way."""
    subjects = Subjects(cfg.namespace)
    await provision_namespace(nc, cfg.namespace)
    stats = ReplayStats()
    publisher = JetStreamPublisher(nc)
    engine: InProcessReplay | ParallelReplay = (
        InProcessReplay(cfg, subjects) if workers <= 1 else ParallelReplay(cfg, workers)
    )
    keep = selected(cfg.venues, cfg.currencies)
    prefix = f"{cfg.namespace}."
    dead_letters: list[Output] = []

    async def publish_oldest() -> None:
        stored, dead = await engine.collect()
        for out in stored:
            await publisher.publish(out.subject, out.payload, out.msg_id, out.headers)
            stage = out.subject[len(prefix) :].split(".", 1)[0]
            stats.outputs[stage] = stats.outputs.get(stage, 0) + 1
        dead_letters.extend(dead)
        stats.dead_letters = len(dead_letters)

    try:
        async for batch in read_range(nc, source_stream, "md.>", from_ns, to_ns):
            chunk: list[tuple[str, bytes]] = []
            for message in batch:
                if keep(message.subject):
                    _count_input(message, stats)
                    chunk.append((prefix + message.subject, message.data))
            engine.submit(chunk)
            # Workers run a few chunks ahead of the one published (one: none ahead).
            while engine.in_flight > (AHEAD if workers > 1 else 0):
                await publish_oldest()
            if progress is not None:
                progress.update(stats)
        while engine.in_flight:
            await publish_oldest()
        for dead in dead_letters:
            await publisher.publish(dead.subject, dead.payload, dead.msg_id, dead.headers)
        await publisher.flush(60.0)
        stats.stage_cpu_s = await engine.close()
    finally:
        await publisher.close(10.0)
        if isinstance(engine, ParallelReplay):
            engine.terminate()
        else:
            await close_stages(engine.stages)
    if progress is not None:
        progress.update(stats, final=True)
    return stats


def _count_input(message: Stored, stats: ReplayStats) -> None:
    if not stats.first_stored_ns:
        stats.first_stored_ns = message.stored_ns
    stats.last_stored_ns = message.stored_ns
    stats.inputs += 1
