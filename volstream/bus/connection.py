"""Connecting to NATS the way every volstream service should.

- Never give up reconnecting (nats-py stops after 60 x 2 s by default): a service outlives a
  NATS restart or a network blip.
- Reconnect delays back off (``reconnect_wait_s`` doubling up to ``max_reconnect_wait_s``) with
  random jitter, so that many services do not hammer a restarting server in lockstep. The
  first attempt after a drop is immediate.
- A large outgoing buffer (``pending_size``) absorbs bursts and keeps publishes made during a
  short reconnect instead of failing them.
- Disconnects, reconnects, errors and the final close are logged on ``volstream.bus`` and
  counted in metrics when a :class:`~volstream.telemetry.Metrics` is given.

Publishers and consumers in this package notice a reconnect themselves (they watch
``nc.stats["reconnects"]``), so callers need no callback plumbing.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import nats
from nats.aio.client import Client, Server

from volstream.bus.permissions import inbox_prefix
from volstream.telemetry import Metrics

log = logging.getLogger("volstream.bus")

DEFAULT_PENDING_SIZE = 64 * 1024 * 1024
_ERROR_LOG_INTERVAL_S = 5.0


class _ConnectionEvents:
    """Callbacks for one connection: log, count, and rate-limit repetitive error logs."""

    def __init__(self, name: str, metrics: Metrics | None) -> None:
        self.name = name
        self.metrics = metrics
        self.nc: Client | None = None
        self._error_logged_at: dict[str, float] = {}
        self._errors_suppressed: dict[str, int] = {}

    async def disconnected(self) -> None:
        if self.nc is not None and self.nc.is_closed:
            return  # a requested close: the closed callback reports it
        log.warning("nats %s: disconnected", self.name)

    async def reconnected(self) -> None:
        url = self.nc.connected_url.netloc if self.nc and self.nc.connected_url else "?"
        log.info("nats %s: reconnected to %s", self.name, url)
        if self.metrics:
            self.metrics.reconnects.add(1)

    async def closed(self) -> None:
        log.info("nats %s: connection closed", self.name)

    async def error(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if self.metrics:
            self.metrics.failures.add(1, {"kind": f"nats_{kind}"})
        now = time.monotonic()
        last = self._error_logged_at.get(kind, 0.0)
        if now - last < _ERROR_LOG_INTERVAL_S:
            # Slow-consumer and connect-refused errors arrive in floods: log a sample.
            self._errors_suppressed[kind] = self._errors_suppressed.get(kind, 0) + 1
            return
        suppressed = self._errors_suppressed.pop(kind, 0)
        self._error_logged_at[kind] = now
        more = f" (+{suppressed} similar)" if suppressed else ""
        log.warning("nats %s: %s: %s%s", self.name, kind, exc, more)


def _backoff_with_jitter(
    reconnect_wait_s: float, max_reconnect_wait_s: float
) -> Any:  # nats' ReconnectToServerHandler
    def choose(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        if not servers:
            return None, reconnect_wait_s
        # Prefer the server that failed least recently; the pool is small.
        server = min(servers, key=lambda s: s.reconnects)
        if server.reconnects == 0:
            return server, 0.0
        delay = min(max_reconnect_wait_s, reconnect_wait_s * 2 ** (server.reconnects - 1))
        return server, delay * random.uniform(0.5, 1.0)

    return choose


def credential_options(user: str | None, password: str | None) -> dict[str, Any]:
    """:func:`nats.connect` options for a NATS user: the user, its password and its own inbox
    prefix (its permissions allow replies on ``_INBOX_<user>.>`` only,
    volstream/bus/permissions.py); nothing without a user."""
    if user is None:
        return {}
    if password is None:
        raise ValueError(f"NATS user {user!r} has no password")
    return {"user": user, "password": password, "inbox_prefix": inbox_prefix(user)}


async def connect(
    url: str,
    name: str,
    *,
    metrics: Metrics | None = None,
    connect_timeout_s: float = 5.0,
    reconnect_wait_s: float = 0.25,
    max_reconnect_wait_s: float = 2.0,
    ping_interval_s: float = 10.0,
    max_outstanding_pings: int = 3,
    pending_size: int = DEFAULT_PENDING_SIZE,
    user: str | None = None,
    password: str | None = None,
    **options: Any,
) -> Client:
    """Connect to ``url`` (comma-separated URLs for a cluster) as client ``name``.

    Retries forever until the first connection succeeds, then reconnects forever. With
    ``user`` and ``password`` it authenticates as that NATS user (:func:`credential_options`).
    Extra ``options`` go to :func:`nats.connect` (TLS ...).
    """
    events = _ConnectionEvents(name, metrics)
    servers = [u.strip() for u in url.split(",") if u.strip()]
    nc = await nats.connect(
        servers=servers,
        name=name,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        connect_timeout=connect_timeout_s,
        reconnect_time_wait=reconnect_wait_s,
        ping_interval=ping_interval_s,
        max_outstanding_pings=max_outstanding_pings,
        pending_size=pending_size,
        reconnect_to_server_handler=_backoff_with_jitter(reconnect_wait_s, max_reconnect_wait_s),
        disconnected_cb=events.disconnected,
        reconnected_cb=events.reconnected,
        error_cb=events.error,
        closed_cb=events.closed,
        **credential_options(user, password),
        **options,
    )
    events.nc = nc
    log.info("nats %s: connected to %s", name, nc.connected_url.netloc if nc.connected_url else url)
    return nc
