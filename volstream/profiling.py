"""A developer's profiler for service processes (not used in production).

    VOLSTREAM_PROFILE_DIR=/tmp/prof ./vs up --sim --sim-rate 2000
    kill -USR2 <pid>                          # start afresh (leave the start-up out)
    kill -USR1 <pid>                          # write; pids in <data-dir>/up.json
    .venv/bin/python -m volstream.profiling /tmp/prof [--top 15] [--sort tottime|cumtime]

With ``VOLSTREAM_PROFILE_DIR`` set, every ``volstream svc NAME`` process runs its event loop
under cProfile and writes ``<dir>/<name>-<pid>.prof`` at SIGUSR1 (a snapshot: profiling goes
on, the file holds everything since start or the last SIGUSR2, which starts afresh) and at
exit. Times are the main thread's CPU time (``time.thread_time``), not wall time: waiting in
``epoll`` and being descheduled on a busy machine cost nothing, so the shares are where the
process spends its CPU. Only the main thread is profiled:
that is where a service's Python runs (the connector, the book stage, the stage kit, NATS
and gRPC I/O); the IV stage's solver thread and the surface stage's fit process are not
(bench/bench_iv.py and bench/bench_surface.py profile those). cProfile slows the profiled
code by roughly a third, so compare shares within one profile, not times against a run
without it. The files are standard pstats (snakeviz, ``python -m pstats``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

PROFILE_DIR_ENV = "VOLSTREAM_PROFILE_DIR"


@contextlib.contextmanager
def profiled(name: str) -> Iterator[None]:
    """Profile the body when ``VOLSTREAM_PROFILE_DIR`` is set (else do nothing)."""
    directory = os.environ.get(PROFILE_DIR_ENV, "")
    if not directory:
        yield
        return
    path = Path(directory) / f"{name}-{os.getpid()}.prof"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = [cProfile.Profile(time.thread_time)]

    def dump(*_: object) -> None:
        current[0].disable()
        try:
            current[0].dump_stats(path)
        finally:
            current[0].enable()

    def restart(*_: object) -> None:
        current[0].disable()
        current[0] = cProfile.Profile(time.thread_time)
        current[0].enable()

    previous = {
        signal.SIGUSR1: signal.signal(signal.SIGUSR1, dump),
        signal.SIGUSR2: signal.signal(signal.SIGUSR2, restart),
    }
    current[0].enable()
    try:
        yield
    finally:
        current[0].disable()
        current[0].dump_stats(path)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report(directory: Path, top: int, sort: str) -> str:
    """The top functions of every profile in ``directory``, one section per file."""
    out = io.StringIO()
    for path in sorted(directory.glob("*.prof")):
        stats = pstats.Stats(str(path), stream=out)
        total = stats.total_tt  # type: ignore[attr-defined]  # set by pstats, untyped
        out.write(f"==== {path.name}: {total:.1f} s of main-thread CPU ====\n")
        stats.strip_dirs().sort_stats(sort).print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m volstream.profiling", description=__doc__)
    p.add_argument("directory", type=Path)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--sort", choices=("tottime", "cumtime"), default="tottime")
    args = p.parse_args(argv)
    if not args.directory.is_dir():
        p.error(f"no such directory: {args.directory}")
    print(report(args.directory, args.top, args.sort), end="")


if __name__ == "__main__":
    main()
