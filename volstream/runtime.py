"""What every service process shares: NATS connection, streams, publisher, dead letters,
metrics and health HTTP, and a clean stop on SIGTERM/SIGINT.

A service's `run(cfg)` opens a :class:`ServiceContext`, builds its pure cores and runners on
it, and awaits :meth:`ServiceContext.wait_stopped`; closing the context drains in order:
runners first (finish and ack the current batch), then the publisher (await acks), then NATS,
then the HTTP server.

The HTTP server (:meth:`ServiceContext.serve_http`) always serves /metrics, /healthz and
/readyz; a service adds its own pages as routes (the API's index, later its dashboard).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from volstream.bus.connection import connect
from volstream.bus.dlq import DeadLetters
from volstream.bus.permissions import service_user, stream_info_allowed
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.stage import StageHandler, StageInput, StageRunner
from volstream.bus.streams import (
    StreamLimits,
    StreamSpec,
    default_stream_specs,
    ensure_streams,
)
from volstream.config import Config

# Re-exported: the services and deploy's tests import the durable naming rule from here.
from volstream.config import durable_name as durable_name
from volstream.config import partition_group as partition_group
from volstream.subjects import Subjects
from volstream.telemetry import Metrics, setup_telemetry

log = logging.getLogger("volstream.runtime")

ReadyCheck = Callable[[], bool]


def stream_specs(cfg: Config) -> list[StreamSpec]:
    """The streams of ``cfg``'s namespace, at ``cfg.stream_replicas`` replicas (everyone who
    provisions uses this, or they would undo each other's replica count)."""
    limits = StreamLimits(num_replicas=cfg.stream_replicas)
    return default_stream_specs(Subjects(cfg.namespace), limits)


async def provision_streams(
    nats_url: str, cfg: Config, *, user: str | None = None, password: str | None = None
) -> None:
    """Create or update every stream for cfg's namespace (idempotent), as ``user`` (the
    admin: no service user may provision)."""
    nc = await connect(nats_url, "volstream-provision", user=user, password=password)
    try:
        await ensure_streams(nc.jetstream(), stream_specs(cfg))
    finally:
        await nc.drain()


@dataclass
class ServiceContext:
    """The shared plumbing of one service process."""

    cfg: Config
    service: str
    nc: Client
    js: JetStreamContext
    subjects: Subjects
    metrics: Metrics
    publisher: JetStreamPublisher
    dead_letters: DeadLetters
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    ready_checks: list[ReadyCheck] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    http_runners: list[web.AppRunner] = field(default_factory=list)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run closer at shutdown (last registered runs first)."""
        self.closers.append(closer)

    def ready(self) -> bool:
        return self.nc.is_connected and all(check() for check in self.ready_checks)

    async def start_stage(
        self,
        inputs: list[StageInput],
        handler: StageHandler,
        after_partial_rebuild: Callable[[], Awaitable[None]] | None = None,
    ) -> StageRunner:
        """Run ``handler`` over ``inputs`` with this process's publisher, stopped at shutdown
        (register closers that must run after the runner's last batch before calling this).
        Under ``rebuild=replay`` the runner rebuilds the handler's state from its inputs
        first (``volstream.bus.rebuild``; ``after_partial_rebuild`` as there)."""
        runner = StageRunner(
            self.nc,
            self.service,
            self.subjects,
            inputs,
            handler,
            self.metrics,
            publisher=self.publisher,  # one publisher per process; the context closes it
            rebuild=self.cfg.rebuild == "replay",
            after_partial_rebuild=after_partial_rebuild,
        )
        await runner.start()
        self.on_close(runner.stop)
        return runner

    async def wait_stopped(self) -> None:
        await self.stop_event.wait()

    async def serve_http(
        self, ports: Iterable[int], routes: Iterable[web.AbstractRouteDef] = ()
    ) -> None:
        """Serve /metrics (Prometheus), /healthz (the loop answers), /readyz (NATS up, every
        ready check passes) and the service's own ``routes`` on each of ``ports`` (0s and
        repeats skipped); stopped when the context closes, after NATS."""
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self._metrics_page),
                web.get("/healthz", self._healthz_page),
                web.get("/readyz", self._readyz_page),
                *routes,
            ]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.http_runners.append(runner)
        for port in sorted({p for p in ports if p}):
            await web.TCPSite(runner, self.cfg.bind_host, port).start()
            log.info("%s: metrics and health on %s:%d", self.service, self.cfg.bind_host, port)

    async def _metrics_page(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def _healthz_page(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz_page(self, _: web.Request) -> web.Response:
        ok = self.ready()
        return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)


async def check_streams(js: JetStreamContext, cfg: Config, service: str) -> None:
    """A service with its own NATS user may not provision streams (volstream up does that as
    the admin user; deploy/ in its nats-provision Job): check that the streams it uses
    exist, and say so plainly when one does not (its user may not create it)."""
    user = service_user(service, cfg)
    for spec in default_stream_specs(Subjects(cfg.namespace)):
        if not stream_info_allowed(user, spec.name):
            continue
        deadline = time.monotonic() + 30.0
        while True:
            try:
                await js.stream_info(spec.name)
                break
            except NotFoundError:
                raise RuntimeError(
                    f"stream {spec.name} does not exist and NATS user {user.name} may not "
                    "create it: provision the streams as the admin user (volstream up does)"
                ) from None
            except (TimeoutError, ServiceUnavailableError, NatsTimeoutError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def service_context(
    cfg: Config, service: str, *, http: bool = True
) -> AsyncIterator[ServiceContext]:
    """Connect (as ``cfg.nats_user`` when set), provision streams (without a user; with one,
    check that the streams it uses exist), start health HTTP, install signal handlers; drain
    on exit.

    ``http=False`` leaves starting the HTTP server to the service (:meth:`serve_http`), for a
    service whose pages need what it starts first (the API serves HTTP once gRPC is up)."""
    if cfg.nats_url is None:
        raise ValueError("no NATS URL: pass --nats or set VOLSTREAM_NATS_URL")
    metrics = setup_telemetry(service, None)
    nc = await connect(
        cfg.nats_url,
        f"volstream-{service}",
        metrics=metrics,
        user=cfg.nats_user,
        password=cfg.nats_password,
    )
    subjects = Subjects(cfg.namespace)
    js = nc.jetstream()
    if cfg.nats_user is None:
        await ensure_streams(js, stream_specs(cfg))
    else:
        await check_streams(js, cfg, service)
    publisher = JetStreamPublisher(nc, metrics=metrics)
    ctx = ServiceContext(
        cfg=cfg,
        service=service,
        nc=nc,
        js=js,
        subjects=subjects,
        metrics=metrics,
        publisher=publisher,
        dead_letters=DeadLetters(publisher, subjects, service, metrics),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ctx.stop_event.set)
    try:
        if http and cfg.metrics_port:
            await ctx.serve_http([cfg.metrics_port])
        yield ctx
    finally:
        for closer in reversed(ctx.closers):
            try:
                await asyncio.wait_for(closer(), 5.0)
            except Exception:
                log.exception("%s: error while stopping", service)
        with contextlib.suppress(Exception):
            await publisher.close(timeout_s=3.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 3.0)
        for runner in ctx.http_runners:
            await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        log.info("%s: stopped", service)


def wall_ns() -> int:
    """Wall-clock ns, for receive/publish stamps at the edges only (never inside a core)."""
    return time.time_ns()


async def last_message(ctx: ServiceContext, stream_base: str, subject: str) -> bytes | None:
    """The payload of the latest message on ``subject`` (direct get), None when there is none.
    Services rebuild state from these at start-up (instrument sets, keyframes, revisions)."""
    try:
        msg = await ctx.js.get_last_msg(ctx.subjects.stream_name(stream_base), subject)
    except NotFoundError:
        return None
    return msg.data or None
