"""Configuration: defaults, overridden by VOLSTREAM_* environment variables, overridden by flags.

Every value is validated once, here; a bad value raises ConfigError naming the setting, and
the CLI turns that into exit status 2 (the same as argparse for a bad flag).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

KNOWN_VENUES = ("deribit", "okx", "bybit", "binance")
SERVICES = ("connector", "book", "iv", "surface", "archive", "api", "sim")
SURFACE_MODELS = ("svi", "ssvi")
# svc_iv.core's forward policies (docs/quant.md 2.1); the first is the default.
IV_FORWARD_POLICIES = ("current", "quote")
ENV_PREFIX = "VOLSTREAM_"

_CURRENCY = re.compile(r"^[A-Z0-9]{2,10}$")
_NAMESPACE = re.compile(r"^([a-z0-9_-]+(\.[a-z0-9_-]+)*)?$")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting."""


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` (an IP address) is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_utc_ns(text: str, name: str) -> int:
    """ISO-8601 date or time ('2026-12-31', '2026-12-11T07:59:00Z') as UTC epoch ns.

    A time without an offset is UTC. Raises ConfigError naming the setting."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ConfigError(
            f"{name}: {text!r} is not an ISO-8601 UTC time like 2026-12-31 or 2026-12-11T07:59:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if not 2000 <= when.year <= 2200:
        raise ConfigError(f"{name}: {text!r} is outside the years 2000-2200")
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def parse_rfc3339_ns(text: str) -> int:
    """`2024-05-01T12:00:00.123456789Z` -> ns since the epoch (datetime stops at µs)."""
    body = text.strip()
    if body.endswith("Z"):
        body, offset = body[:-1], "+00:00"
    else:
        body, offset = body[:-6], body[-6:]
    whole, _, fraction = body.partition(".")
    base = datetime.fromisoformat(whole + offset)
    nanos = int((fraction + "000000000")[:9]) if fraction else 0
    return int(base.timestamp()) * 1_000_000_000 + nanos


@dataclass(frozen=True)
class Partition:
    """A (venue, currency) partition: the unit of ordering and of scaling."""

    venue: str
    currency: str

    @property
    def key(self) -> str:
        return f"{self.venue}.{self.currency.lower()}"

    def __str__(self) -> str:
        return f"{self.venue}:{self.currency}"


@dataclass(frozen=True)
class Config:
    # NATS server URL; None starts an embedded nats-server (volstream up) .
    nats_url: str | None = None
    # This process's NATS user and password (volstream up hands each service its own; with an
    # external server, give both or neither). Never logged; the password is left out of repr.
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    # Subject/stream namespace prefix ('' for live data, e.g. 'replay.run1' for a replay).
    namespace: str = ""
    data_dir: Path = Path(".volstream")
    grpc_port: int = 50051
    http_port: int = 8080
    # Address the gRPC and HTTP servers listen on: loopback unless told otherwise (a
    # container sets 0.0.0.0; the API warns when it listens beyond loopback with no token).
    bind_host: str = "127.0.0.1"
    # Per-service Prometheus port (0: none). `volstream up` gives each service its own.
    metrics_port: int = 0
    venues: tuple[str, ...] = KNOWN_VENUES
    currencies: tuple[str, ...] = ("BTC", "ETH")
    # Partitions this replica owns; empty = every venue x currency.
    partitions: tuple[Partition, ...] = ()
    # Connectors talk to the exchange simulator at this base URL instead of the venues.
    sim_url: str | None = None
    # Use venues' testnet URLs where they have them.
    testnet: bool = False
    # Simulator message rate per venue (book + ticker notifications/s; four venues at the
    # default 2000 make 8000/s in all).
    sim_rate: float = 2000.0
    sim_seed: int = 7
    # The simulator's event time at start (ISO-8601 UTC; None: now). Its calendar (which
    # expiries are listed, how far each is) follows from it.
    sim_start: str | None = None
    # The simulator's market scenario, NAME[:key=value,...] (volstream/scenario.py,
    # docs/simulator.md section 2).
    sim_scenario: str = "quiet"
    # Surface refits: a key is refitted as soon as a smile of it changes, but at most once
    # per this interval of event time (docs/architecture.md section 3, "Cadences").
    surface_interval_ms: int = 500
    # Half life (s) of the surface's temporal smoothing: each refit is pulled toward the
    # last fit inside every quote's bid/ask band (svc_surface.quotes.Prior); 0 turns it off.
    surface_smoothing_s: float = 20.0
    # Surface model: "svi" (a raw SVI slice per expiry, repaired across expiries) or "ssvi"
    # (one SSVI surface for all expiries).
    surface_model: str = "svi"
    # IV flush cadence in event time: a partition's changed expiries, at most once per this
    # interval (docs/architecture.md section 3, "Cadences").
    iv_interval_ms: int = 200
    # The forward each option price is solved on: "current" (the expiry's current forward,
    # the venues' convention) or "quote" (the forward when the price last changed).
    iv_forward_policy: str = "current"
    # Consolidated cross-venue surface (surface.all.<ccy>): "auto" = produced by a surface
    # replica that owns every configured venue of the currency; "only" = a replica that
    # produces nothing else (its own Deployment when venues are split across groups); "off".
    consolidate: str = "auto"
    # Book staleness in event time.
    book_stale_ms: int = 30_000
    # Replicas of every stream (JetStream R1..R5): 1 on one server (`up`), 3 on the 3-node
    # cluster in deploy/ (a quorum survives a node; docs/chaos.md).
    stream_replicas: int = 1
    # How a restarted book, IV or surface stage gets its state back: "resume" (restore its
    # counters and what the last messages of the streams say, ask the connector for fresh
    # snapshots) or "replay" (replay its input stream up to the durable's ack floor with
    # outputs discarded: the same output as without the restart while the stream still
    # holds the stage's whole input; volstream/bus/rebuild.py, docs/chaos.md).
    rebuild: str = "resume"
    # API: surfaces older than this are NOT_SERVING in health.
    api_stale_ms: int = 15_000
    api_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The Parquet archive of every surface (svc_archive writes it, the API reads it for
    # history past the SURFACE stream's retention); None: <data_dir>/archive.
    archive_dir: Path | None = None
    # An archive file is written per partition every archive_roll_s, or at archive_roll_rows
    # rows: the longest a surface waits in memory (SURFACE must retain at least that long).
    archive_roll_s: float = 300.0
    archive_roll_rows: int = 200_000
    # Also archive the raw market data (archive/md/...), so that a replay reaches beyond the
    # MD stream's retention: about 1 MB/s at the default rate, hence off by default.
    archive_md: bool = False
    # `volstream up` logs how long each stream holds at the current rate this long after
    # start (the warm-up), then every 15 minutes, and looks this often for a stream whose
    # traffic started later.
    retention_log_s: float = 120.0
    log_level: str = "INFO"
    extra: Mapping[str, str] = field(default_factory=dict)

    def owned_partitions(self) -> tuple[Partition, ...]:
        if self.partitions:
            return self.partitions
        return tuple(Partition(v, c) for v in self.venues for c in self.currencies)

    def archive_root(self) -> Path:
        """Where the surface archive is: archive_dir, else <data_dir>/archive, and
        <data_dir>/archive-<namespace> for a namespace (a replay never mixes into live's)."""
        if self.archive_dir is not None:
            return self.archive_dir
        if self.namespace:
            return self.data_dir / f"archive-{self.namespace}"
        return self.data_dir / "archive"

    def consolidated_currencies(self) -> tuple[str, ...]:
        """Currencies whose consolidated surface (surface.all.<ccy>) this replica produces:
        every currency whose every configured venue it owns ("auto"), all ("only"), none
        ("off"). The surface stage and the bus permissions both follow this rule."""
        if self.consolidate == "off":
            return ()
        if self.consolidate == "only" or not self.partitions:
            return tuple(c.upper() for c in self.currencies)
        owned = {(p.venue, p.currency.upper()) for p in self.partitions}
        return tuple(
            c.upper() for c in self.currencies if all((v, c.upper()) in owned for v in self.venues)
        )

    def validated(self) -> Config:
        for v in self.venues:
            if v not in KNOWN_VENUES:
                raise ConfigError(f"venues: unknown venue {v!r} (known: {', '.join(KNOWN_VENUES)})")
        if not self.venues:
            raise ConfigError("venues: at least one venue is required")
        for c in self.currencies:
            if not _CURRENCY.match(c):
                raise ConfigError(f"currencies: {c!r} is not a currency code like BTC")
        for p in self.partitions:
            if p.venue not in KNOWN_VENUES or not _CURRENCY.match(p.currency):
                raise ConfigError(f"partitions: invalid partition {p}")
        if not _NAMESPACE.match(self.namespace):
            raise ConfigError(
                f"namespace: {self.namespace!r} must be dot-separated [a-z0-9_-] tokens"
            )
        try:
            ipaddress.ip_address(self.bind_host)
        except ValueError:
            raise ConfigError(
                f"bind_host: {self.bind_host!r} is not an IP address (127.0.0.1, 0.0.0.0, ::)"
            ) from None
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name}: {port} is not a TCP port")
        for name in ("surface_interval_ms", "iv_interval_ms", "book_stale_ms", "api_stale_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        if self.surface_model not in SURFACE_MODELS:
            raise ConfigError(
                f"surface_model: {self.surface_model!r} must be one of {', '.join(SURFACE_MODELS)}"
            )
        if not 0 < self.archive_roll_s <= 86_400.0:
            raise ConfigError(f"archive_roll_s: {self.archive_roll_s} must be in (0, 86400]")
        if self.retention_log_s <= 0:
            raise ConfigError(f"retention_log_s: {self.retention_log_s} must be positive")
        if self.archive_roll_rows <= 0:
            raise ConfigError(f"archive_roll_rows: {self.archive_roll_rows} must be positive")
        if not 1 <= self.stream_replicas <= 5:
            raise ConfigError(f"stream_replicas: {self.stream_replicas} must be in [1, 5]")
        if self.rebuild not in ("resume", "replay"):
            raise ConfigError(f"rebuild: {self.rebuild!r} must be resume or replay")
        if self.iv_forward_policy not in IV_FORWARD_POLICIES:
            raise ConfigError(
                f"iv_forward_policy: {self.iv_forward_policy!r} must be one of "
                f"{', '.join(IV_FORWARD_POLICIES)}"
            )
        if self.consolidate not in ("auto", "only", "off"):
            raise ConfigError(f"consolidate: {self.consolidate!r} must be auto, only or off")
        if not 0.0 <= self.surface_smoothing_s <= 86_400.0:
            raise ConfigError(
                f"surface_smoothing_s: {self.surface_smoothing_s} must be in [0, 86400]"
            )
        if not 0 < self.sim_rate <= 1_000_000:
            raise ConfigError(f"sim_rate: {self.sim_rate} must be in (0, 1e6]")
        if self.sim_start is not None:
            parse_utc_ns(self.sim_start, "sim_start")
        from volstream.scenario import parse_scenario

        parse_scenario(self.sim_scenario)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert/tls_key: give both or neither")
        if (self.nats_user is None) != (self.nats_password is None):
            raise ConfigError("nats_user/nats_password: give both or neither")
        if self.nats_url is not None and not re.match(r"^(nats|tls|ws|wss)://", self.nats_url):
            raise ConfigError(f"nats_url: {self.nats_url!r} must start with nats:// or tls://")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"log_level: {self.log_level!r} is not DEBUG/INFO/WARNING/ERROR")
        return self


# Text settings whose empty value means "not set".
_OPTIONAL_TEXT = ("nats_url", "nats_user", "nats_password", "sim_url", "api_token", "sim_start")


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_partitions(text: str) -> tuple[Partition, ...]:
    out = []
    for item in parse_list(text):
        venue, sep, ccy = item.partition(":")
        if not sep:
            raise ConfigError(f"partitions: {item!r} must look like venue:CCY")
        out.append(Partition(venue.lower(), ccy.upper()))
    return tuple(out)


def _convert(name: str, raw: str, current: Any) -> Any:
    try:
        if name in ("venues",):
            return tuple(v.lower() for v in parse_list(raw))
        if name == "currencies":
            return tuple(c.upper() for c in parse_list(raw))
        if name == "partitions":
            return parse_partitions(raw)
        if name in ("data_dir", "tls_cert", "tls_key", "archive_dir"):
            return Path(raw) if raw else None
        if name == "testnet":
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if isinstance(current, bool):
            return raw.lower() in {"1", "true", "yes"}
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        return raw or None if name in _OPTIONAL_TEXT else raw
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}: invalid value {raw!r}") from exc


def from_env(env: Mapping[str, str] | None = None, base: Config | None = None) -> Config:
    """Apply VOLSTREAM_<SETTING> variables to base (or the defaults)."""
    env = os.environ if env is None else env
    cfg = base or Config()
    changes: dict[str, Any] = {}
    for f in fields(Config):
        key = ENV_PREFIX + f.name.upper()
        if key in env and f.name != "extra":
            changes[f.name] = _convert(f.name, env[key], getattr(cfg, f.name))
    return replace(cfg, **changes)


def to_env(cfg: Config) -> dict[str, str]:
    """The environment that reproduces cfg in a child process (volstream up)."""
    out: dict[str, str] = {}
    for f in fields(Config):
        value = getattr(cfg, f.name)
        if f.name == "extra" or value is None:
            continue
        if isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "1" if value else "0"
        else:
            text = str(value)
        out[ENV_PREFIX + f.name.upper()] = text
    return out


def partition_group(partitions: Sequence[Partition], currencies: Sequence[str]) -> str:
    """The name of the partition group a replica owns (the second half of its durables).

    No explicit partitions (the replica owns everything): "all". Otherwise the venues in
    sorted order, each as "<venue>" when the replica owns every configured currency of it,
    else "<venue>_<ccy>" per owned currency, joined by "-":
    ``deribit:BTC,deribit:ETH`` -> "deribit"; ``okx:*,deribit:*`` -> "deribit-okx".
    Two replicas own disjoint partitions, so they never share a durable; deploy/ names each
    group's Deployments and KEDA consumers by this same rule (tests/deploy checks it).
    """
    if not partitions:
        return "all"
    by_venue: dict[str, set[str]] = defaultdict(set)
    for p in partitions:
        by_venue[p.venue].add(p.currency.upper())
    wanted = {c.upper() for c in currencies}
    tokens: list[str] = []
    for venue in sorted(by_venue):
        owned = by_venue[venue]
        if owned == wanted:
            tokens.append(venue)
        else:
            tokens.extend(f"{venue}_{ccy.lower()}" for ccy in sorted(owned))
    return "-".join(tokens)


def durable_name(service: str, cfg: Config) -> str:
    """The durable consumer of this replica of ``service``: ``<service>-<partition group>``."""
    return f"{service}-{partition_group(cfg.partitions, cfg.currencies)}"
