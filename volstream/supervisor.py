"""`volstream up`: the whole system on one machine.

Starts an embedded nats-server (unless a URL is given) that admits only the users of the
permission table (volstream/bus/permissions.py), each with a fresh random password: the
admin (this process: provisioning) and one per service. Provisions the streams, then runs
every service as its own OS process (`volstream svc NAME`), restarting a crashed one with
exponential backoff, prefixing each output line with the service name. Ctrl-C (or SIGTERM)
stops the services, then NATS, within 5 s; children are also bound to this process with
PR_SET_PDEATHSIG so that none outlives a killed supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from volstream.bus.credentials import CREDENTIALS_FILE, generate_passwords, write_credentials
from volstream.bus.embedded import EmbeddedNats, free_port
from volstream.bus.permissions import ADMIN_USER, authorization_block, up_users, user_name
from volstream.config import Config, to_env
from volstream.process import die_with_parent

log = logging.getLogger("volstream.up")

STOP_GRACE_S = 3.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
_COLOURS = ("36", "32", "33", "35", "34", "31", "96", "92", "93")


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]


@dataclass
class Child:
    spec: ChildSpec
    colour: str
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_START_S
    pump: asyncio.Task[None] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _bind_to_parent() -> None:
    """In the child before exec: its own process group, and death with the supervisor."""
    os.setpgrp()
    die_with_parent()


def service_specs(
    cfg: Config, sim: bool, sim_port: int | None, passwords: Mapping[str, str] | None = None
) -> list[ChildSpec]:
    """One process per service; connectors one per venue. With ``passwords`` (by NATS user)
    each process gets its own user from the permission table through its environment."""
    base_env = dict(os.environ)
    cmd = [sys.executable, "-m", "volstream.cli", "svc"]
    specs: list[ChildSpec] = []
    metrics = iter(range(cfg.http_port + 1, cfg.http_port + 100)) if cfg.http_port else None

    def env_for(c: Config) -> dict[str, str]:
        env = dict(base_env)
        env.update(to_env(c))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def with_metrics(c: Config) -> Config:
        return replace(c, metrics_port=next(metrics)) if metrics else c

    def as_user(service: str, c: Config) -> Config:
        if passwords is None:
            return c
        user = user_name(service, c)
        return replace(c, nats_user=user, nats_password=passwords[user])

    if sim and sim_port is not None:
        argv = [*cmd, "sim", "--port", str(sim_port)]
        specs.append(ChildSpec("sim", argv, env_for(as_user("sim", cfg))))
    # Config.validated() admits only KNOWN_VENUES, and each has an adapter
    # (tests/test_architecture.py holds the two lists equal).
    venues = list(cfg.venues)
    for venue in venues:
        c = as_user("connector", with_metrics(replace(cfg, venues=(venue,))))
        specs.append(ChildSpec(f"connector.{venue}", [*cmd, "connector"], env_for(c)))
    for name in ("book", "iv", "surface", "archive"):
        c = as_user(name, with_metrics(replace(cfg, venues=tuple(venues) or cfg.venues)))
        specs.append(ChildSpec(name, [*cmd, name], env_for(c)))
    specs.append(ChildSpec("api", [*cmd, "api"], env_for(as_user("api", cfg))))
    return specs


class Supervisor:
    def __init__(
        self,
        specs: list[ChildSpec],
        state_file: Path | None = None,
        info: dict[str, object] | None = None,
    ) -> None:
        self.children = [Child(spec, _COLOURS[i % len(_COLOURS)]) for i, spec in enumerate(specs)]
        self.stopping = False
        self.width = max(len(s.name) for s in specs)
        self.state_file = state_file
        self.info = info or {}
        # Processes kept running outside `children` (the embedded nats-server), by name.
        self.external: dict[str, dict[str, int | None]] = {}

    def write_state(self) -> None:
        """<data-dir>/up.json: URLs, ports and the live pid of every service (for operators
        and tests)."""
        if self.state_file is None:
            return
        services: dict[str, dict[str, int | None]] = {
            c.spec.name: {
                "pid": c.proc.pid if c.proc and c.proc.returncode is None else None,
                "restarts": c.restarts,
            }
            for c in self.children
        }
        state = {**self.info, "services": {**services, **self.external}}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    async def _pump(self, child: Child) -> None:
        assert child.proc and child.proc.stdout
        tty = sys.stdout.isatty()
        tag = child.spec.name.ljust(self.width)
        prefix = f"\x1b[{child.colour}m{tag} |\x1b[0m " if tty else f"{tag} | "
        while True:
            line = await child.proc.stdout.readline()
            if not line:
                return
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    async def _start(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            *child.spec.argv,
            env=child.spec.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_bind_to_parent,
        )
        child.started_at = time.monotonic()
        child.pump = asyncio.create_task(self._pump(child))
        self.write_state()
        log.info("started %s (pid %d)", child.spec.name, child.proc.pid)

    async def _watch(self, child: Child) -> None:
        """Keep one child running, restarting it with backoff when it exits."""
        while not self.stopping:
            await self._start(child)
            assert child.proc is not None
            code = await self._exited(child.proc)
            if child.pump:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(child.pump, 1.0)
            if self.stopping:
                return
            if time.monotonic() - child.started_at > STABLE_AFTER_S:
                child.backoff_s = BACKOFF_START_S
            child.restarts += 1
            log.warning(
                "%s exited with %s; restart %d in %.1fs",
                child.spec.name,
                code,
                child.restarts,
                child.backoff_s,
            )
            await asyncio.sleep(child.backoff_s)
            child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)

    @staticmethod
    async def _exited(proc: asyncio.subprocess.Process) -> int:
        """The exit code, as soon as the process is gone.

        Process.wait() would also wait for its pipes to close, which an orphaned grandchild
        (a worker of the dead service) can hold open; so poll the return code, then kill
        whatever is left of the child's process group.
        """
        while proc.returncode is None:  # noqa: ASYNC110 (no event fires before pipes close)
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.returncode

    async def run(self, stop: asyncio.Event) -> None:
        watchers = [asyncio.create_task(self._watch(c)) for c in self.children]
        await stop.wait()
        self.stopping = True
        await self.stop_children()
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    async def stop_children(self) -> None:
        running = [c for c in self.children if c.proc and c.proc.returncode is None]
        for c in running:
            assert c.proc is not None
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for c in running:
            assert c.proc is not None
            try:
                await asyncio.wait_for(c.proc.wait(), max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("%s did not stop in time: killing", c.spec.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGKILL)
                await c.proc.wait()


async def keep_nats_running(
    nats: EmbeddedNats, stop: asyncio.Event, supervisor: Supervisor, poll_s: float = 0.2
) -> None:
    """The embedded nats-server is supervised like every service: when it dies it is
    restarted with backoff on the same port and store, and the services' connections (which
    never give up reconnecting, volstream/bus/connection.py) find it again.

    JetStream's file store keeps nats-server's default sync policy: a write is in the OS's
    page cache when the server acknowledges it and is fsynced within `sync_interval` (2
    minutes). A killed server therefore loses nothing acknowledged; a power cut or kernel
    crash can lose up to that interval (docs/architecture.md section 6)."""
    restarts = 0
    backoff_s = BACKOFF_START_S
    started_at = time.monotonic()

    def record() -> None:
        pid = nats.proc.pid if nats.proc is not None and nats.proc.poll() is None else None
        supervisor.external["nats"] = {"pid": pid, "restarts": restarts}
        supervisor.write_state()

    record()
    while not stop.is_set():
        if nats.proc is not None and nats.proc.poll() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_s)
            continue
        code = nats.proc.returncode if nats.proc is not None else None
        if time.monotonic() - started_at > STABLE_AFTER_S:
            backoff_s = BACKOFF_START_S
        restarts += 1
        record()
        log.warning("nats-server exited with %s; restart %d in %.1fs", code, restarts, backoff_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff_s)
        if stop.is_set():
            return
        backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
        try:
            # On this (the main) thread: the server's death signal follows the thread that
            # started it. It listens within a few hundred ms; the loop waits that long.
            nats.start()
        except (OSError, RuntimeError, TimeoutError) as exc:
            log.error("nats-server did not restart: %s", exc)
            continue
        started_at = time.monotonic()
        log.info("nats-server restarted on %s (same store)", nats.url)
        record()


async def _provision(nats_url: str, cfg: Config, admin: tuple[str, str] | None) -> None:
    from volstream.runtime import provision_streams

    user, password = admin if admin is not None else (None, None)
    await provision_streams(nats_url, cfg, user=user, password=password)


async def _report_retention(
    cfg: Config, admin: tuple[str, str] | None, stop: asyncio.Event
) -> None:
    """After the warm-up, log how long each stream holds at the current rate (as the admin:
    no service user may read every stream)."""
    from volstream.bus.connection import connect
    from volstream.bus.streams import default_stream_specs
    from volstream.retention import report_retention
    from volstream.subjects import Subjects

    assert cfg.nats_url is not None
    user, password = admin if admin is not None else (None, None)
    nc = await connect(cfg.nats_url, "volstream-up-retention", user=user, password=password)
    try:
        names = [s.name for s in default_stream_specs(Subjects(cfg.namespace))]
        await report_retention(nc, names, stop, cfg.retention_log_s)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


def start_embedded_nats(cfg: Config) -> tuple[EmbeddedNats, dict[str, str], Path]:
    """The embedded nats-server admitting the admin and every service user of ``cfg``, each
    with a fresh random password; the passwords by user, and the 0600 file holding them."""
    users = up_users(cfg)
    passwords = generate_passwords([ADMIN_USER, *(u.name for u in users)])
    nats_dir = cfg.data_dir / "nats"
    credentials = nats_dir / CREDENTIALS_FILE
    write_credentials(credentials, passwords)
    admin = (None, ADMIN_USER, passwords[ADMIN_USER])
    block = authorization_block([admin, *((u, u.name, passwords[u.name]) for u in users)])
    return EmbeddedNats(data_dir=nats_dir, authorization=block).start(), passwords, credentials


async def _main(cfg: Config, sim: bool) -> int:
    nats: EmbeddedNats | None = None
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    # An external server (--nats) is used as the credentials given say (none: anonymous),
    # by `up` and every service alike.
    admin = (cfg.nats_user, cfg.nats_password) if cfg.nats_user and cfg.nats_password else None
    passwords: dict[str, str] | None = None
    credentials: Path | None = None
    if cfg.nats_url is None:
        nats, passwords, credentials = start_embedded_nats(cfg)
        admin = (ADMIN_USER, passwords[ADMIN_USER])
        cfg = replace(cfg, nats_url=nats.url, nats_user=None, nats_password=None)
        log.info("embedded NATS at %s (store %s)", nats.url, nats.data_dir)
        log.info("NATS users and passwords in %s (mode 0600)", credentials)
    assert cfg.nats_url is not None
    try:
        await _provision(cfg.nats_url, cfg, admin)
        sim_port = free_port() if sim else None
        if sim_port is not None:
            cfg = replace(cfg, sim_url=f"http://127.0.0.1:{sim_port}")
        info: dict[str, object] = {
            "nats_url": cfg.nats_url,
            "grpc_port": cfg.grpc_port,
            "http_port": cfg.http_port,
            "sim_url": cfg.sim_url,
            "supervisor_pid": os.getpid(),
        }
        if credentials is not None:
            info["nats_credentials"] = str(credentials)  # the file's path, never a password
        specs = service_specs(cfg, sim, sim_port, passwords)
        supervisor = Supervisor(specs, cfg.data_dir / "up.json", info)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "volstream up: gRPC on :%d, HTTP on :%d, %s",
            cfg.grpc_port,
            cfg.http_port,
            "simulator at " + str(cfg.sim_url) if sim else "live venues",
        )
        nats_watch = (
            asyncio.create_task(keep_nats_running(nats, stop, supervisor))
            if nats is not None
            else None
        )
        retention = asyncio.create_task(_report_retention(cfg, admin, stop))
        await supervisor.run(stop)
        if nats_watch is not None:
            await nats_watch
        retention.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await retention
        log.info("all services stopped")
        return 0
    finally:
        if nats is not None:
            nats.stop()


def run_up(cfg: Config, sim: bool) -> int:
    return asyncio.run(_main(cfg, sim))
