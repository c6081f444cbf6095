"""A connector's settings: a :class:`ConnectorConfig` resolved against the venue's defaults,
venue option readers, and the per-route :class:`ConnectionPlan`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from svc_connector.venues.base import ConnectorConfig, Endpoints, VenueLimits, VenueRequest

_TRUE = frozenset({"1", "true", "yes", "on"})


def option_flag(options: Mapping[str, str], key: str, default: bool) -> bool:
    value = options.get(key)
    return default if value is None else value.strip().lower() in _TRUE


def option_float(options: Mapping[str, str], key: str, default: float) -> float:
    value = options.get(key)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"venue option {key}={value!r} is not a number") from None


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """A :class:`ConnectorConfig` resolved against a venue's defaults (:class:`VenueLimits`)."""

    venue: str
    ws_url: str
    rest_url: str
    currencies: tuple[str, ...]
    max_channels_per_connection: int
    max_connections: int
    channels_per_request: int
    subscribe_requests_per_second: float
    # Requests that may go out back to back before the rate applies.
    subscribe_burst: float
    heartbeat_interval_s: float
    watchdog_timeout_s: float
    reconnect_initial_s: float
    reconnect_max_s: float
    stable_after_s: float
    instrument_refresh_s: float
    rest_timeout_s: float
    resync_timeout_s: float
    # A subscribe the venue never answers stops holding the connection in SUBSCRIBING.
    subscribe_ack_timeout_s: float
    options: Mapping[str, str]

    @classmethod
    def resolve(
        cls,
        venue: str,
        config: ConnectorConfig,
        limits: VenueLimits,
        endpoints: Mapping[str, Endpoints],
        *,
        watchdog_timeout_s: float | None = None,
        watchdog_heartbeats: float = 2.0,
        subscribe_burst: float = 1.0,
        subscribe_ack_timeout_s: float = 10.0,
    ) -> RuntimeSettings:
        """``watchdog_timeout_s`` defaults to ``watchdog_heartbeats`` heartbeat intervals."""
        heartbeat = config.heartbeat_interval_s or limits.heartbeat_interval_s
        resolved = config.endpoints or endpoints.get(config.environment)
        if resolved is None:
            known = ", ".join(sorted(endpoints))
            raise ValueError(f"{venue}: unknown environment {config.environment!r} ({known})")
        return cls(
            venue=venue,
            ws_url=resolved.ws_url,
            rest_url=resolved.rest_url.rstrip("/"),
            currencies=tuple(dict.fromkeys(ccy.upper() for ccy in config.currencies)),
            max_channels_per_connection=config.max_channels_per_connection
            or limits.max_channels_per_connection,
            max_connections=min(
                limits.max_connections_per_ip,
                config.max_connections or limits.default_max_connections,
            ),
            channels_per_request=config.channels_per_subscribe_request
            or limits.channels_per_subscribe_request,
            subscribe_requests_per_second=config.subscribe_requests_per_second
            or limits.subscribe_requests_per_second,
            subscribe_burst=subscribe_burst,
            heartbeat_interval_s=heartbeat,
            watchdog_timeout_s=config.watchdog_timeout_s
            or watchdog_timeout_s
            or watchdog_heartbeats * heartbeat,
            reconnect_initial_s=config.reconnect_initial_s,
            reconnect_max_s=config.reconnect_max_s,
            stable_after_s=config.stable_after_s,
            instrument_refresh_s=config.instrument_refresh_s,
            rest_timeout_s=config.rest_timeout_s,
            resync_timeout_s=config.resync_timeout_s,
            subscribe_ack_timeout_s=subscribe_ack_timeout_s,
            options=dict(config.venue_options),
        )


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    """How the connections of one route behave (a venue may use several URLs)."""

    url: str
    # RequestAck.method / VenueError.method of a subscribe request (ack accounting).
    subscribe_method: str
    # Sent when nothing was sent for heartbeat_interval_s (so at least that often; venues
    # differ on whether "silent" means not sending or not receiving: this covers both, as
    # the venue's answer arrives right after); None: no application-level keep-alive.
    keepalive: VenueRequest | None = None
    # Sent right after connecting, before any subscribe.
    opening: tuple[VenueRequest, ...] = ()
    # Reconnect (gracefully, without backoff) before the venue's connection lifetime ends.
    max_age_s: float | None = None
