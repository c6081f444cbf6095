"""Settings of the gRPC API process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from svc_api.store import VENUE_ALL

if TYPE_CHECKING:
    from volstream.config import Config

DEFAULT_VENUES = ("deribit", "okx", "bybit", "binance", VENUE_ALL)


@dataclass(frozen=True)
class ApiConfig:
    host: str = "0.0.0.0"
    # 0 binds a free port (ApiHandle.port says which).
    port: int = 50051
    # A surface whose publish time is older than this is stale: `fresh=false` in
    # ListSurfaces and NOT_SERVING in health.
    stale_after_ms: int = 15_000
    # Require `authorization: Bearer <token>` on every call except health checks.
    token: str | None = None
    # PEM files; both or neither. With them the port speaks TLS only.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Venues a request may name ("all" is the consolidated surface). Venues seen on the
    # bus are accepted too.
    venues: tuple[str, ...] = DEFAULT_VENUES
    # (venue, currency) surfaces whose per-surface health entries exist (NOT_SERVING) before
    # they first arrive; surfaces seen on the bus get entries too.
    expected_surfaces: tuple[tuple[str, str], ...] = ()
    # Overall health: "any" = SERVING while at least one surface is fresh (a dead venue does
    # not take the API out of a load balancer); "all" = every known surface must be fresh.
    health_policy: Literal["any", "all"] = "any"
    # Subject/stream namespace ('' for live data, e.g. "replay.run1").
    namespace: str = ""
    # Largest gRPC message either way (the gRPC default of 4 MiB is small for snapshots).
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_streams: int = 10_000
    # Open StreamSurfaces calls per client address: one client flooding the server is
    # answered RESOURCE_EXHAUSTED before it takes the whole max_concurrent_streams budget
    # (bench_api runs 1,000 streams from one host).
    max_streams_per_client: int = 1_024
    # Floor on every stream's min_interval_ms: caps messages/s per stream server-wide
    # (0: clients choose; a loaded server coalesces on its own anyway).
    min_stream_interval_ms: int = 0
    # Server keepalive pings on idle connections, and the fastest client ping rate allowed.
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    min_client_ping_interval_ms: int = 5_000
    # How long serve() waits for the initial catch-up from the SURFACE stream.
    startup_catchup_s: float = 5.0
    # NATS request timeout of history queries.
    history_timeout_s: float = 3.0
    # The surface archive (svc_archive's Parquet files): GetSurfaceAt past the SURFACE
    # stream's retention and GetMetricHistory read it; None: neither has an archive.
    archive_dir: Path | None = None
    # Time given to in-flight unary calls on stop(); streams are ended at once.
    shutdown_grace_s: float = 2.0

    def validated(self) -> ApiConfig:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if self.stale_after_ms <= 0:
            raise ValueError("stale_after_ms must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert/tls_key: give both or neither")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be blank")
        if self.health_policy not in ("any", "all"):
            raise ValueError(f"health_policy: {self.health_policy!r} is not 'any' or 'all'")
        if not self.venues:
            raise ValueError("venues: at least one venue is required")
        if self.max_message_bytes < 4 * 1024 * 1024:
            raise ValueError("max_message_bytes must be at least 4 MiB")
        return self

    @classmethod
    def from_config(cls, cfg: Config, **overrides: object) -> ApiConfig:
        """The API settings of a volstream Config (grpc_port, api_stale_ms, api_token, TLS...)."""
        venues = tuple(dict.fromkeys((*DEFAULT_VENUES, *cfg.venues)))
        expected = tuple(
            (venue, ccy) for venue in (*cfg.venues, VENUE_ALL) for ccy in cfg.currencies
        )
        values: dict[str, object] = {
            "port": cfg.grpc_port,
            "stale_after_ms": cfg.api_stale_ms,
            "token": cfg.api_token,
            "tls_cert": cfg.tls_cert,
            "tls_key": cfg.tls_key,
            "venues": venues,
            "expected_surfaces": expected,
            "namespace": cfg.namespace,
            "archive_dir": cfg.archive_root(),
        }
        values.update(overrides)
        return cls(**values).validated()  # type: ignore[arg-type]
