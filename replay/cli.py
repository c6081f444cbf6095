"""`volstream replay` and `volstream diff` (the parser is volstream/cli.py's).

Exit status: 0 done (diff: within tolerance), 1 diff past the tolerance, 2 bad input (the
message names the value: a range, a namespace, a setting).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from replay.archive_source import is_archive, load_archive
from replay.compare import compare, render
from replay.parallel import default_workers
from replay.run import OUTPUT_STREAMS, Progress, replay
from replay.source import RangeError, ReadInterrupted, check_range, read_range, retained
from volstream.bus.connection import connect
from volstream.bus.credentials import read_credentials
from volstream.bus.permissions import ADMIN_USER
from volstream.config import Config, ConfigError, parse_utc_ns
from volstream.subjects import Subjects
from volstream.v1 import surface_pb2 as surface_pb

# First subject tokens of live data: a namespace starting with one would put replay output
# on subjects that live streams capture (e.g. namespace "surface" -> "surface.surface.x.y"
# is inside the live SURFACE stream's "surface.>").
LIVE_TOKENS = frozenset({"md", "book", "iv", "surface", "dlq", "sim", "ctl", "live"})
LIVE = "live"


class UsageError(Exception):
    """Bad input: printed, exit status 2."""


@dataclass(frozen=True)
class NatsTarget:
    url: str
    user: str | None
    password: str | None


def nats_target(cfg: Config, nats_url: str | None, data_dir: Path | None) -> NatsTarget:
    """--nats (with VOLSTREAM_NATS_USER/PASSWORD), else the running `up` of the data dir:
    its NATS URL and admin credentials from <data-dir>/up.json."""
    if nats_url:
        return NatsTarget(nats_url, cfg.nats_user, cfg.nats_password)
    state_file = (data_dir or cfg.data_dir) / "up.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        raise UsageError(
            f"no running system found at {state_file}: start `volstream up` or give --nats URL"
        ) from None
    creds = state.get("nats_credentials")
    if creds is None:
        return NatsTarget(str(state["nats_url"]), cfg.nats_user, cfg.nats_password)
    password = read_credentials(Path(creds)).get(ADMIN_USER)
    return NatsTarget(str(state["nats_url"]), ADMIN_USER, password)


async def _connect(target: NatsTarget, name: str) -> Client:
    try:
        return await connect(
            target.url, name, user=target.user, password=target.password, connect_timeout_s=5.0
        )
    except Exception as exc:
        raise UsageError(f"cannot connect to NATS at {target.url}: {exc}") from None


def check_namespace(namespace: str) -> None:
    if not namespace:
        raise UsageError("--namespace: a replay needs a namespace of its own, e.g. replay.run1")
    first = namespace.split(".", 1)[0]
    if first in LIVE_TOKENS:
        raise UsageError(
            f"--namespace {namespace!r} collides with live subjects: its first token "
            f"{first!r} is a live subject prefix ({', '.join(sorted(LIVE_TOKENS))})"
        )


async def _existing_outputs(nc: Client, namespace: str) -> int:
    js = nc.jetstream()
    total = 0
    for base in OUTPUT_STREAMS:
        try:
            info = await js.stream_info(Subjects(namespace).stream_name(base))
        except NotFoundError:
            continue
        total += info.state.messages
    return total


async def _delete_namespace(nc: Client, namespace: str) -> None:
    js = nc.jetstream()
    for base in OUTPUT_STREAMS:
        try:
            await js.delete_stream(Subjects(namespace).stream_name(base))
        except NotFoundError:
            continue


async def _replay(args: argparse.Namespace, cfg: Config) -> int:
    check_namespace(cfg.namespace)
    workers = getattr(args, "workers", None)
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    try:
        from_ns = parse_utc_ns(args.from_time, "--from")
        to_ns = parse_utc_ns(args.to_time, "--to") if args.to_time else None
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    nc = await _connect(nats_target(cfg, args.nats_url, args.data_dir), "volstream-replay")
    try:
        have = await retained(nc.jetstream(), "MD")
        try:
            end_ns = check_range(have, "MD", from_ns, to_ns)
        except RangeError as exc:
            raise UsageError(str(exc)) from None
        existing = await _existing_outputs(nc, cfg.namespace)
        if existing and not args.replace:
            raise UsageError(
                f"--namespace {cfg.namespace!r} already holds {existing} messages: choose "
                "another namespace or add --replace"
            )
        if existing:
            await _delete_namespace(nc, cfg.namespace)
        stats = await replay(
            nc, cfg, from_ns, end_ns, Progress(enabled=not args.quiet), workers=workers
        )
    finally:
        await nc.drain()
    surfaces = stats.outputs.get("surface", 0)
    print(
        f"replayed {stats.inputs} MD messages in {stats.elapsed_s:.1f} s "
        f"({stats.speed:.1f}x real time): {surfaces} surfaces on "
        f"{Subjects(cfg.namespace).stage_all('surface')} (stream "
        f"{Subjects(cfg.namespace).stream_name('SURFACE')}), "
        f"{stats.dead_letters} dead letters"
    )
    if stats.stage_cpu_s:
        cpu = ", ".join(f"{k} {v:.1f} s" for k, v in stats.stage_cpu_s.items())
        print(f"stage CPU ({workers} worker{'s' if workers > 1 else ''}): {cpu}")
    return 0


def _run(command: str, work: Coroutine[Any, Any, int]) -> int:
    """Run a command: bad input exits 2, a read cut short 1 (each with its message)."""
    try:
        return asyncio.run(work)
    except UsageError as exc:
        print(f"volstream {command}: error: {exc}", file=sys.stderr)
        return 2
    except ReadInterrupted as exc:
        print(f"volstream {command}: {exc}", file=sys.stderr)
        return 1


def replay_command(args: argparse.Namespace, cfg: Config) -> int:
    return _run("replay", _replay(args, cfg))


async def load_surfaces(nc: Client, name: str) -> list[surface_pb.Surface]:
    """Every surface the SURFACE stream of namespace ``name`` ('live': none) holds."""
    namespace = "" if name == LIVE else name
    if namespace:
        check_namespace(namespace)
    subjects = Subjects(namespace)
    stream = subjects.stream_name("SURFACE")
    js = nc.jetstream()
    have = await retained(js, stream)
    if have is None:
        known = await _namespaces(nc)
        raise UsageError(
            f"no surfaces for {name!r}: stream {stream} is missing or empty "
            f"(namespaces with surfaces: {', '.join(known) or 'none'})"
        )
    out: list[surface_pb.Surface] = []
    # Surfaces are ~150 KB with their quotes: small fetches keep the connection's pending
    # bytes far below what makes the server cut a slow consumer off.
    async for batch in read_range(
        nc, stream, subjects.stage_all("surface"), have.first_ns, have.last_ns, batch=16
    ):
        out.extend(surface_pb.Surface.FromString(m.data) for m in batch)
    return out


async def _namespaces(nc: Client) -> list[str]:
    names = ["live"] if await retained(nc.jetstream(), "SURFACE") else []
    for name in await nc.jetstream().streams_info():
        stream = name.config.name or ""
        if stream.startswith("SURFACE_") and name.state.messages:
            names.append(stream.removeprefix("SURFACE_").lower().replace("_", "."))
    return names


def _archive(name: str) -> Path | None:
    """The archive directory ``name`` names; None when it names a namespace."""
    path = Path(name)
    if "/" not in name and not path.is_dir():
        return None
    if not is_archive(path):
        raise UsageError(f"{name!r} is not an archive directory (no {path / 'surfaces'})")
    return path


async def _load(name: str, cfg: Config, args: argparse.Namespace) -> list[surface_pb.Surface]:
    """A run's surfaces: an archive directory's, or a namespace's ('live') stream's."""
    path = _archive(name)
    if path is not None:
        return load_archive(path)
    nc = await _connect(nats_target(cfg, args.nats_url, args.data_dir), "volstream-diff")
    try:
        return await load_surfaces(nc, name)
    finally:
        await nc.drain()


async def _diff(args: argparse.Namespace, cfg: Config) -> int:
    a = await _load(args.a, cfg, args)
    b = await _load(args.b, cfg, args)
    report = compare(a, b)
    print(render(report, args.a, args.b))
    if report.pairs == 0:
        print(f"nothing to compare: no surface of {args.a} has one of {args.b} before it")
        return 1
    return 0 if report.within(args.tolerance) else 1


def diff_command(args: argparse.Namespace, cfg: Config) -> int:
    if args.tolerance < 0:
        print(f"volstream diff: error: --tolerance {args.tolerance} is negative", file=sys.stderr)
        return 2
    return _run("diff", _diff(args, cfg))
