"""The surface stage alone on smiles from the live pipeline: CPU per second of market data,
side by side with another checkout's surface stage on the same input.

    .venv/bin/python -m bench.bench_surface_live [--seconds 40] [--seed 7] [--rounds 2]
        [--base ../other-checkout] [--md FILE]

Why this bench: `bench_surface` (c) fits fixed simulator smiles re-noised within their
noise, while the live surface stage sees the requoting simulator's smiles, whose quotes
come and go at the edges of the selection and whose wings cross the next expiry's; in the
pipeline that stage cost three times what (c) predicts (issue 16).

Workload: the simulator (fixed seed, the accuracy tests' pinned calendar, default rate) and
the connectors fill MD for ``--seconds`` on a private nats-server (bench.golden_stages;
``--md FILE`` reuses such a recording, and a new one is written to it when it does not
exist); this checkout's book and IV stages turn it into the IV messages the surface stage
consumes, in stream order. Then each code tree runs its surface stage's ``SurfaceWork``
over those messages, one message per call as the live stage does (prompt, throttled refits
in event time: the same cuts as live), in a process of its own pinned to one CPU,
alternating trees for ``--rounds`` rounds so machine noise hits both alike.

Per run: CPU seconds per second of market data (the live stage needs well under 1 to keep
up on its core), surfaces and slices published, the mean CPU per surface, the share of
slices published with the same parameters as the key's previous revision (held or
unchanged: no refit), the share repaired, and the throughput ratio against the base.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def worker(iv_path: Path) -> dict[str, float]:
    """Run the surface stage of whatever tree is first on sys.path over the IV recording."""
    import time

    from svc_surface.service import SurfaceWork
    from volstream.bus.consumer import AckMetadata, InMessage
    from volstream.config import Config
    from volstream.subjects import Subjects
    from volstream.v1 import iv_pb2, surface_pb2

    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    # A pickle, not bench.golden_stages' records: the worker may run another tree's code.
    with iv_path.open("rb") as f:
        records: list[tuple[str, bytes]] = pickle.load(f)
    venues = sorted({s.split(".")[1] for s, _ in records})
    currencies = sorted({s.split(".")[2].upper() for s, _ in records})
    cfg = Config(venues=tuple(venues), currencies=tuple(currencies))
    work = SurfaceWork(cfg, Subjects(cfg.namespace), cfg.owned_partitions())
    messages = [
        InMessage(s, p, None, i + 1, AckMetadata("IV", "bench", 1, i + 1, i + 1, 0, 0))
        for i, (s, p) in enumerate(records)
    ]
    times = [
        iv_pb2.SmileBatch.FromString(p).header.event_time_ns
        for _, p in records[:: max(1, len(records) // 50)]
    ]
    span_s = (max(times) - min(times)) / 1e9 if times else 0.0
    payloads: list[tuple[str, bytes]] = []
    started = time.process_time()
    for msg in messages:
        outputs, _ = work.handle([msg])
        payloads.extend((o.subject, o.payload) for o in outputs if o.subject.startswith("surface."))
    cpu_s = time.process_time() - started
    slices = kept = repaired = 0
    last: dict[tuple[str, int], tuple[float, ...]] = {}
    for subject, payload in payloads:
        surface = surface_pb2.Surface.FromString(payload)
        for s in surface.slices:
            raw = (s.raw.a, s.raw.b, s.raw.rho, s.raw.m, s.raw.sigma)
            slices += 1
            kept += last.get((subject, s.expiry_time_ns)) == raw
            repaired += bool(s.diagnostics.repaired)
            last[(subject, s.expiry_time_ns)] = raw
    return {
        "cpu_s": cpu_s,
        "span_s": span_s,
        "inputs": len(messages),
        "surfaces": len(payloads),
        "slices": slices,
        "kept": kept,
        "repaired": repaired,
    }


def derive_iv(md_path: Path, iv_path: Path) -> int:
    """This checkout's book and IV stages over the MD recording: the IV messages, in order."""
    from bench.golden_stages import CURRENCIES, VENUES, read_records
    from replay.stages import ReplayEnv, close_stages, local_stages
    from volstream.bus.inprocess import InProcessBus, Published
    from volstream.config import Config
    from volstream.subjects import Subjects
    from volstream.telemetry import setup_telemetry

    cfg = Config(venues=VENUES, currencies=CURRENCIES)
    env = ReplayEnv(cfg, Subjects(cfg.namespace), setup_telemetry("bench-surface-live"))
    stages = [s for s in local_stages(env) if s.name != "surface"]
    out: list[tuple[str, bytes]] = []

    def keep(message: Published) -> None:
        if message.stream == "IV":
            out.append((message.subject, message.payload))

    streams = {"md": "MD", "book": "BOOK", "iv": "IV"}

    async def run() -> None:
        bus = InProcessBus(stages, lambda s: streams.get(s.split(".", 1)[0]), on_publish=keep)
        for subject, payload in read_records(md_path):
            await bus.publish(subject, payload)
        await close_stages(stages)

    asyncio.run(run())
    with iv_path.open("wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    return len(out)


def run_tree(tree: Path, iv_path: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(iv_path)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"surface stage of {tree} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_surface_live")
    parser.add_argument("--seconds", type=float, default=40.0, help="market data to record")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base", type=Path, help="another checkout to run side by side")
    parser.add_argument("--md", type=Path, help="MD recording to reuse (written if absent)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker)))
        return 0
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.base is not None and not (args.base / "svc_surface" / "service.py").is_file():
        parser.error(f"--base {args.base} is not a volstream checkout")
    from bench.golden_stages import record

    with tempfile.TemporaryDirectory(prefix="bench-surface-live-") as tmp:
        md_path = args.md or Path(tmp) / "md.bin"
        if not md_path.is_file():
            n = asyncio.run(record(md_path, args.seconds, args.seed))
            print(f"recorded {n} MD messages ({args.seconds:.0f} s of the simulator)")
        iv_path = Path(tmp) / "iv.bin"
        print(f"{derive_iv(md_path, iv_path)} IV messages from this checkout's book and IV")
        trees = [("this", HERE)] + ([("base", args.base.resolve())] if args.base else [])
        runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in trees}
        for _ in range(args.rounds):
            for label, tree in trees:
                runs[label].append(run_tree(tree, iv_path))
    load = os.getloadavg()
    print(f"\nsurface stage alone, one CPU each, {args.rounds} rounds (load {load[0]:.1f})")
    header = f"{'tree':<6}{'CPU s/s data':>13}{'ms/surface':>11}{'surfaces':>9}{'slices':>8}"
    print(header + f"{'kept %':>8}{'repaired %':>11}{'speed vs base':>14}")
    base_cpu = statistics.median(r["cpu_s"] for r in runs["base"]) if args.base else None
    for label, results in runs.items():
        cpu = statistics.median(r["cpu_s"] for r in results)
        r = results[0]
        ratio = f"{base_cpu / cpu:.2f}x" if base_cpu else "-"
        per_s = cpu / max(r["span_s"], 1e-9)
        print(
            f"{label:<6}{per_s:>13.3f}{1e3 * cpu / max(r['surfaces'], 1):>11.1f}"
            f"{r['surfaces']:>9.0f}{r['slices']:>8.0f}{100 * r['kept'] / max(r['slices'], 1):>8.1f}"
            f"{100 * r['repaired'] / max(r['slices'], 1):>11.2f}{ratio:>14}"
        )
        spread = ", ".join(f"{x['cpu_s']:.2f}" for x in results)
        print(f"{'':<6}CPU s per round: {spread} over {r['span_s']:.1f} s of data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
