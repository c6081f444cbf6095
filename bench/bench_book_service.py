"""Book service end to end: JetStream in -> BookStage -> tops published to JetStream, in
deltas/s per core, beside the pure core on the same input.

    .venv/bin/python -m bench.bench_book_service [--deltas N] [--instruments N] [--levels N]
                                                 [--message-events N] [--repeat N] [--profile]

Input: the bench_book workload (snapshots of `--instruments` books of `--levels` levels per
side, then contiguous deltas of 1-3 levels each, ~30 % moving a top), pre-published to the
MD stream of a fresh embedded nats-server as MarketDataBatch messages of
`--message-events` deltas (header event time stamped as the connector does).

End to end ("service"): the service's own StageRunner + BookStage (the `run()` wiring, on
a real ServiceContext): pull from the durable, decode, apply, build and serialise
TopOfBookBatch outputs (changes per input message + keyframes), publish them with msg-ids,
wait for their JetStream acks, ack the input. Timed from runner start until the last
output is stored.

Reference ("pure core"): the same messages decoded, applied and emitted into
TopOfBookBatch messages serialised the same way, with no bus: what the runtime adds is
the difference.

deltas/s per core = deltas / CPU seconds of this process (the service is one asyncio
thread). nats-server runs in its own process: its CPU is shown beside it, not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats

from bench.bench_book import build_workload
from svc_book import service as book_service
from svc_book.core import BookCore
from svc_book.service import BookStage, stage_inputs
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.stage import InMessage, Output, StageRunner
from volstream.config import Config
from volstream.runtime import provision_streams, service_context
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import market_data_pb2 as md_pb

TARGET = 50_000


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Input:
    payloads: list[bytes]
    deltas: int


def build_input(instruments: int, levels: int, deltas: int, seed: int, per_message: int) -> Input:
    work = build_workload(instruments, levels, deltas, seed)
    first = md_pb.MarketDataBatch(venue="deribit", currency="BTC", events=work.snapshots)
    payloads = [first.SerializeToString()]
    for i in range(0, len(work.deltas), per_message):
        events = work.deltas[i : i + per_message]
        batch = md_pb.MarketDataBatch(venue="deribit", currency="BTC", events=events)
        batch.header.event_time_ns = events[-1].book_delta.header.event_time_ns
        payloads.append(batch.SerializeToString())
    return Input(payloads, deltas)


def pure_core(data: Input) -> tuple[float, int]:
    """CPU seconds and messages out: decode, apply, emit per message, serialise."""
    core = BookCore("deribit", "BTC")
    decode = md_pb.MarketDataBatch.FromString
    out = 0
    last_keyframe = -(10**18)
    start = time.process_time()
    for n, payload in enumerate(data.payloads):
        md = decode(payload)
        apply = core.apply
        for event in md.events:
            apply(event)
        now = md.header.event_time_ns
        batch = book_pb.TopOfBookBatch(venue="deribit", currency="BTC")
        batch.header.sequence = n
        batch.header.event_time_ns = now
        if core.tops_into(batch, now):
            batch.SerializeToString()
            out += 1
        if now - last_keyframe >= book_service.KEYFRAME_INTERVAL_NS:
            last_keyframe = now
            every = book_pb.TopOfBookBatch(venue="deribit", currency="BTC")
            core.tops_into(every, now, keyframe=True)
            every.SerializeToString()
            out += 1
    return time.process_time() - start, out


class TimedStage(BookStage):
    """BookStage that notes when the last input message has been handled."""

    last_seq = 0
    done: asyncio.Event

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        outputs = await super().handle(batch)
        if batch[-1].stream_seq >= self.last_seq:
            self.done.set()
        return outputs


@dataclass
class ServiceRun:
    cpu_s: float
    wall_s: float
    server_cpu_s: float
    outputs: int
    batches: int


async def service_once(
    server: EmbeddedNats, data: Input, namespace: str, profile: cProfile.Profile | None
) -> ServiceRun:
    cfg = Config(nats_url=server.url, namespace=namespace, venues=("deribit",), currencies=("BTC",))
    await provision_streams(server.url, cfg)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    subject = f"{namespace}.md.deribit.btc.book"
    pending = [
        await js.publish(subject, p, headers={"Nats-Msg-Id": f"{namespace}.{n}"})
        for n, p in enumerate(data.payloads)
    ]
    last_seq = pending[-1].seq
    await nc.close()
    nats_pid = server.proc.pid if server.proc is not None else None
    async with service_context(cfg, "book") as ctx:
        partitions = cfg.owned_partitions()
        stage = TimedStage(ctx, partitions)
        stage.last_seq = last_seq
        stage.done = asyncio.Event()
        await stage.restore(ctx)
        runner = StageRunner(
            ctx.nc, "book", ctx.subjects, stage_inputs(ctx, partitions), stage, ctx.metrics
        )
        server_cpu0 = process_cpu_s(nats_pid) if nats_pid else 0.0
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        if profile is not None:
            profile.enable()
        await runner.start()
        await stage.done.wait()
        await runner.publisher.flush(30.0)
        if profile is not None:
            profile.disable()
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        server_cpu = (process_cpu_s(nats_pid) if nats_pid else 0.0) - server_cpu0
        await runner.stop()
        return ServiceRun(cpu, wall, server_cpu, runner.outputs, runner.batches)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--instruments", type=int, default=500)
    parser.add_argument("--levels", type=int, default=40)
    parser.add_argument("--message-events", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--profile", action="store_true", help="cProfile the service runs")
    args = parser.parse_args(argv)

    data = build_input(args.instruments, args.levels, args.deltas, args.seed, args.message_events)
    print(
        f"input: {args.deltas:,} deltas on {args.instruments} books ({args.levels} levels/side) "
        f"in {len(data.payloads) - 1:,} MarketDataBatch messages of {args.message_events} "
        "+ 1 of snapshots"
    )
    profile = cProfile.Profile() if args.profile else None
    core_runs = []
    service_runs: list[ServiceRun] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp)) as server:
        for n in range(args.repeat):
            core_runs.append(pure_core(data))
            service_runs.append(asyncio.run(service_once(server, data, f"bench{n}", profile)))
    core_cpu, core_out = min(core_runs)
    best = min(service_runs, key=lambda r: r.cpu_s)
    header = (
        f"{'path':<34} {'deltas/s/core':>13} {'us/delta':>9} {'wall deltas/s':>13} "
        f"{'msgs out':>8} {'vs core':>8}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'pure core (decode+apply+emit)':<34} {args.deltas / core_cpu:>13,.0f} "
        f"{1e6 * core_cpu / args.deltas:>9.2f} {'':>13} {core_out:>8,} {1.0:>7.2f}x"
    )
    print(
        f"{'service (JetStream in -> out)':<34} {args.deltas / best.cpu_s:>13,.0f} "
        f"{1e6 * best.cpu_s / args.deltas:>9.2f} {args.deltas / best.wall_s:>13,.0f} "
        f"{best.outputs:>8,} {core_cpu / best.cpu_s:>7.2f}x"
    )
    print(
        f"service runs (CPU s): {', '.join(f'{r.cpu_s:.2f}' for r in service_runs)}; "
        f"nats-server CPU in the best run: {best.server_cpu_s:.2f} s; "
        f"{best.batches} consumed batches; wall/CPU {best.wall_s / best.cpu_s:.2f} "
        "(1.00 = no contention from neighbours)\n"
        f"target: >= {TARGET:,} deltas/s per core end to end: "
        f"{'MET' if args.deltas / best.cpu_s >= TARGET else 'NOT MET'}"
    )
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
