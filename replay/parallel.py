"""Partition-parallel replay: the single-process replay's outputs, in its order and with its
message ids, from worker processes.

The reference is the in-process bus over every partition (``replay.run`` with one worker):
for each MD message, in stream order, its whole cascade runs before the next message is
read: the book stage's outputs (its tops or its relay, and a keyframe when one is due),
then the IV stage's output for the one BOOK message of those it reads, then the surface
stage's outputs for that IV message, the venue's surface first and its currency's
consolidated surface last. Partitions (venue, currency) share no state but the consolidated
surface. So:

- partition workers, each owning a group of partitions, run book, IV and the venues'
  surfaces on an in-process bus of their own. An MD message goes to the worker of its
  subject's partition with the position the single-process bus gives it in MD;
- one consolidation worker per consolidated currency runs ``surface.all.<ccy>`` over the
  IV messages of all its venues, in the single-process order and with their positions there;
- this process puts the cascades back in MD order, numbers the BOOK and IV messages as the
  single-process bus does, renames the input positions the workers' msg-ids and dead
  letters name (a worker numbers its streams by its own count), and ends each cascade with
  its consolidated outputs.

Chunks of MD (one read batch each) are handed to the workers a few ahead of the one being
put back together, so the workers never wait for this process while it publishes.

One difference, for input no venue sends: the single-process book stage folds a book
message into the partition its payload names; here the subject's partition's worker gets
it and dead-letters it when the payload names a partition of another worker (as a live
replica owning a partition group does).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import multiprocessing.context
import os
import queue
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.queues import Queue
from typing import Any

from replay.stages import (
    STREAM_BASES,
    ReplayEnv,
    StreamRouter,
    close_stages,
    consolidation_stages,
    local_stages,
    stage_cpu,
    timed,
)
from volstream.bus.dlq import DLQ_SEQ, DLQ_SERVICE
from volstream.bus.inprocess import InProcessBus, Published
from volstream.bus.stage import Output
from volstream.config import Config, Partition
from volstream.subjects import Subjects, parse_partition
from volstream.telemetry import setup_telemetry

# Chunks handed out ahead of the one being put back together.
AHEAD = 4
# How long to wait on a worker between checks that it is still alive.
_POLL_S = 1.0

# What a worker returns for one input: the messages its bus stored after the input (in
# order, with the worker's own stream positions) and its dead letters.
Cascade = tuple[list[Published], list[Output]]
# (subject, payload, position of the input in its stream)
Job = list[tuple[str, bytes, int]]


def default_workers() -> int:
    """Partition workers for this machine: one per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def partition_groups(partitions: Sequence[Partition], workers: int) -> list[tuple[Partition, ...]]:
    """``partitions`` dealt round-robin over at most ``workers`` groups (venue-major order:
    two workers get one currency each)."""
    count = max(1, min(workers, len(partitions)))
    return [tuple(partitions[i::count]) for i in range(count)]


class WorkerFailed(RuntimeError):
    """A replay worker raised or died; the message carries its traceback or exit code."""


class _Worker:
    """One worker process and its two queues."""

    def __init__(
        self,
        ctx: multiprocessing.context.SpawnContext,
        name: str,
        role: str,
        cfg: Config,
    ) -> None:
        self.name = name
        self.inbox: Queue[Job | None] = ctx.Queue()
        # Exiting never waits to feed a worker that is gone (the parent failed, or it did).
        self.inbox.cancel_join_thread()
        self.outbox: Queue[Any] = ctx.Queue()
        self.process = ctx.Process(
            target=_worker_main,
            args=(role, cfg, self.inbox, self.outbox),
            name=f"replay-{name}",
            daemon=True,
        )
        self.process.start()

    def result(self) -> Any:
        """The next thing the worker put out (blocking; raises WorkerFailed if it failed)."""
        while True:
            try:
                item = self.outbox.get(timeout=_POLL_S)
            except queue.Empty:
                if not self.process.is_alive():
                    raise WorkerFailed(
                        f"replay worker {self.name} exited ({self.process.exitcode})"
                    ) from None
                continue
            if isinstance(item, WorkerFailed):
                raise item
            return item


@dataclass
class _Chunk:
    """A chunk of MD in flight: which worker got each message."""

    owners: list[int]


@dataclass
class ParallelReplay:
    """Book, IV and surface over ``cfg``'s partitions in worker processes (module docstring).

    :meth:`submit` hands a chunk of MD messages (in stream order) to the workers;
    :meth:`collect` returns the oldest submitted chunk's stored messages and dead letters,
    exactly as the single-process bus stores them; :meth:`close` stops the workers and
    returns their CPU seconds per stage.
    """

    cfg: Config
    workers: int
    subjects: Subjects = field(init=False)
    _partition_workers: list[_Worker] = field(init=False, default_factory=list)
    _consolidators: dict[str, _Worker] = field(init=False, default_factory=dict)
    _route: dict[tuple[str, str], int] = field(init=False, default_factory=dict)
    _positions: dict[str, int] = field(init=False, default_factory=dict)
    _chunks: deque[_Chunk] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self.subjects = Subjects(self.cfg.namespace)
        self._streams = {b: self.subjects.stream_name(b) for b in STREAM_BASES.values()}
        self._renamed_streams = {self._streams["BOOK"], self._streams["IV"]}
        ctx = mp.get_context("spawn")
        groups = partition_groups(self.cfg.owned_partitions(), self.workers)
        try:
            for i, group in enumerate(groups):
                for p in group:
                    self._route[(p.venue, p.currency.lower())] = i
                # Venue surfaces only: the consolidated ones are the consolidators' work.
                group_cfg = replace(self.cfg, partitions=group, consolidate="off")
                self._partition_workers.append(
                    _Worker(ctx, f"partitions-{i}", "partitions", group_cfg)
                )
            for ccy in self.cfg.consolidated_currencies():
                # Every venue of the currency (cfg.owned_partitions), its consolidated core.
                ccy_cfg = replace(self.cfg, currencies=(ccy,), partitions=(), consolidate="only")
                self._consolidators[ccy] = _Worker(
                    ctx, f"consolidated-{ccy.lower()}", "consolidated", ccy_cfg
                )
        except BaseException:
            self.terminate()
            raise

    # -- work --------------------------------------------------------------------------

    def submit(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Hand MD messages (namespaced subjects, stream order) to their partitions' workers."""
        md = self._streams["MD"]
        jobs: list[Job] = [[] for _ in self._partition_workers]
        owners: list[int] = []
        namespace = self.subjects.namespace
        for subject, payload in messages:
            _stage, venue, ccy, _rest = parse_partition(subject, namespace)
            owner = self._route[(venue, ccy)]
            jobs[owner].append((subject, payload, self._next(md)))
            owners.append(owner)
        for worker, job in zip(self._partition_workers, jobs, strict=True):
            if job:
                worker.inbox.put(job)
        self._chunks.append(_Chunk(owners))

    @property
    def in_flight(self) -> int:
        return len(self._chunks)

    async def collect(self) -> tuple[list[Published], list[Output]]:
        """The oldest submitted chunk's stored messages (BOOK, IV, SURFACE, in order) and
        dead letters, as the single-process bus would have them."""
        chunk = self._chunks.popleft()
        results: dict[int, deque[Cascade]] = {}
        for owner in sorted(set(chunk.owners)):
            worker = self._partition_workers[owner]
            results[owner] = deque(await asyncio.to_thread(worker.result))
        iv_stream = self._streams["IV"]
        cascades: list[tuple[list[Published], list[Output], str | None]] = []
        iv_jobs: dict[str, Job] = {ccy: [] for ccy in self._consolidators}
        for owner in chunk.owners:
            stored, dead = results[owner].popleft()
            renamed: dict[tuple[str, int], int] = {}
            out: list[Published] = []
            consolidated: str | None = None
            for m in stored:
                position = m.stream_seq
                if m.stream in self._renamed_streams:
                    position = self._next(m.stream)
                    renamed[(m.stream, m.stream_seq)] = position
                out.append(
                    Published(
                        m.stream,
                        position,
                        m.subject,
                        m.payload,
                        m.headers,
                        self._rename_msg_id(m.msg_id, renamed),
                    )
                )
                if m.stream == iv_stream:
                    ccy = self._currency(m.subject)
                    if ccy in iv_jobs:
                        iv_jobs[ccy].append((m.subject, m.payload, position))
                        consolidated = ccy
            cascades.append((out, [self._rename_dead(d, renamed) for d in dead], consolidated))
        consolidated_results: dict[str, deque[Cascade]] = {}
        for ccy, job in iv_jobs.items():
            if job:
                self._consolidators[ccy].inbox.put(job)
        for ccy, job in iv_jobs.items():
            if job:
                result = await asyncio.to_thread(self._consolidators[ccy].result)
                consolidated_results[ccy] = deque(result)
        published: list[Published] = []
        dead_letters: list[Output] = []
        surface = self._streams["SURFACE"]
        for out, dead, of_currency in cascades:
            if of_currency is not None:
                extra, extra_dead = consolidated_results[of_currency].popleft()
                out.extend(extra)
                # The surface stage dead-letters a message once, for its first unusable
                # smile: the venue's core sees it before the consolidated one.
                if not any(d.headers and d.headers.get(DLQ_SERVICE) == "surface" for d in dead):
                    dead.extend(extra_dead)
            for m in out:
                if m.stream == surface:
                    m = replace(m, stream_seq=self._next(surface))
                published.append(m)
            dead_letters.extend(dead)
        return published, dead_letters

    async def close(self) -> dict[str, float]:
        """Stop the workers (after the last collect); their CPU seconds per stage, summed."""
        cpu: dict[str, float] = {}
        for worker in self._workers():
            worker.inbox.put(None)
        for worker in self._workers():
            stats: dict[str, float] = await asyncio.to_thread(worker.result)
            for stage, seconds in stats.items():
                cpu[stage] = cpu.get(stage, 0.0) + seconds
            await asyncio.to_thread(worker.process.join, 30.0)
        self.terminate()
        return cpu

    def terminate(self) -> None:
        """Stop whatever worker is still running (after a failure), and drop what is still
        queued for them: a queue's feeder thread would otherwise keep this process from
        exiting, waiting to write into a pipe nobody reads."""
        for worker in self._workers():
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(5.0)
            for q in (worker.inbox, worker.outbox):
                q.cancel_join_thread()
                q.close()

    # -- helpers -----------------------------------------------------------------------

    def _workers(self) -> list[_Worker]:
        return [*self._partition_workers, *self._consolidators.values()]

    def _next(self, stream: str) -> int:
        position = self._positions.get(stream, 0) + 1
        self._positions[stream] = position
        return position

    def _currency(self, subject: str) -> str:
        return parse_partition(subject, self.subjects.namespace)[2].upper()

    def _rename_msg_id(self, msg_id: str, renamed: dict[tuple[str, int], int]) -> str:
        """``<source>.<subject>.<stream>.<seq>`` (volstream.bus.stage.output_msg_id) with a
        worker's position of the input replaced by the single-process one."""
        head, _, seq = msg_id.rpartition(".")
        stream = head.rpartition(".")[2]
        if stream in self._renamed_streams and seq.isdigit():
            return f"{head}.{renamed[(stream, int(seq))]}"
        return msg_id

    def _rename_dead(self, dead: Output, renamed: dict[tuple[str, int], int]) -> Output:
        """A dead letter naming a BOOK or IV input by a worker's position
        (``dlq:<service>:<stream>:<seq>``, volstream.bus.dlq), renamed."""
        head, _, seq = dead.msg_id.rpartition(":")
        stream = head.rpartition(":")[2]
        if stream not in self._renamed_streams or not seq.isdigit():
            return dead
        position = renamed[(stream, int(seq))]
        headers = dict(dead.headers or {})
        headers[DLQ_SEQ] = str(position)
        return replace(dead, msg_id=f"{head}:{position}", headers=headers)


# -- the worker side ---------------------------------------------------------------------


def _worker_main(role: str, cfg: Config, inbox: Queue[Job | None], outbox: Queue[Any]) -> None:
    try:
        asyncio.run(_work(role, cfg, inbox, outbox))
    except BaseException:  # reported to the parent, which raises it
        outbox.put(WorkerFailed(f"replay worker ({role}) failed:\n{traceback.format_exc()}"))


async def _work(role: str, cfg: Config, inbox: Queue[Job | None], outbox: Queue[Any]) -> None:
    """Run each job's inputs through this worker's stages (``cfg``'s partitions, or its
    consolidated surfaces); one list of cascades per job, then the CPU per stage."""
    subjects = Subjects(cfg.namespace)
    env = ReplayEnv(cfg, subjects, setup_telemetry("replay"))
    stages = local_stages(env) if role == "partitions" else consolidation_stages(env)
    stored: list[Published] = []
    bus = InProcessBus(timed(stages), StreamRouter(subjects), on_publish=stored.append)
    try:
        while (job := inbox.get()) is not None:
            cascades: list[Cascade] = []
            for subject, payload, position in job:
                await bus.publish(subject, payload, stream_seq=position)
                # The first stored message is the input itself.
                cascades.append((stored[1:], bus.dead_letters))
                stored.clear()
                bus.dead_letters = []
            outbox.put(cascades)
    finally:
        await close_stages(stages)
    outbox.put(stage_cpu(bus.stages))
