"""What every venue protocol module provides to the simulator server."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from simulator.clock import SimClock
from simulator.faults import FaultRequest
from simulator.truth import TruthMarket


@dataclass(frozen=True)
class VenueUrls:
    """Where a connector points instead of the venue (only these differ from live)."""

    # REST base, without a trailing slash: Deribit `{rest_base}/public/get_instruments`.
    rest_base: str
    ws_url: str


@dataclass(frozen=True)
class VenueContext:
    truth: TruthMarket
    clock: SimClock
    seed: int
    messages_per_second: float
    tick_interval_s: float
    index_interval_s: float
    min_heartbeat_interval_s: float
    max_send_queue: int
    # Seconds of the steady message rate that market makers' requotes may burst above it
    # (streaming.MessageBudget; docs/simulator.md section 1).
    burst_s: float = 30.0
    # Venue-specific settings (each venue module documents its keys); SimConfig.venue_options.
    options: Mapping[str, object] = field(default_factory=dict)


class VenueSim(abc.ABC):
    """One venue's protocol over the shared truth; mounted under `/{name}`."""

    name: str

    @abc.abstractmethod
    def app(self) -> web.Application:
        """The venue's sub-application (REST and websocket routes)."""

    @abc.abstractmethod
    def urls(self, host: str, port: int) -> VenueUrls: ...

    @abc.abstractmethod
    def on_tick(self, now_ns: int, dt_s: float) -> None:
        """Move quotes and books of one tick and queue the resulting notifications."""

    @abc.abstractmethod
    async def apply_fault(self, request: FaultRequest) -> dict[str, object]:
        """Inject a fault; returns what was done (raises ValueError if it cannot apply)."""

    @abc.abstractmethod
    def stats(self) -> dict[str, object]: ...

    @abc.abstractmethod
    def set_rate(self, messages_per_second: float) -> None:
        """Change the message rate from the next tick on (0: every market-data push pauses)."""

    def truth_forwards(self, currency: str) -> dict[int, float]:
        """The venue's forward per expiry (ns -> USD) for its truth surface; empty: the
        truth forwards."""
        return {}

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection."""
