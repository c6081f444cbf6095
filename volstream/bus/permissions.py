"""Who may publish and subscribe what on NATS: the one permission table (README "Who may
publish what", docs/architecture.md section 2).

:func:`service_user` is a pure function from a service and its configuration (owned
partitions, namespace) to a NATS user: a name and the subjects it may publish and subscribe.
Everything a service sends is in its publish list: its own output subjects (derived from
:class:`~volstream.subjects.Subjects`, so a namespace gets subjects and streams of its own),
its dead letters, and exactly the JetStream API subjects it uses: stream info on the streams
it touches, create / info / next / reset of its own durables and their acks, message gets of
the streams it rebuilds state from. Replies come back on the user's own inbox prefix
(:func:`inbox_prefix`), the only subjects besides the connector's resync requests that a
service may subscribe to. Streams are provisioned by the admin user (``volstream up``), so no
service may create, update or delete a stream or another service's consumer.

``volstream up`` writes these users into the embedded nats-server's ``authorization`` block
(:func:`authorization_block`); deploy/ renders the same table (volstream.deploy_auth).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from volstream.config import Config, durable_name
from volstream.subjects import Subjects

ADMIN_USER = "admin"
JS_API = "$JS.API"
# Services that get a NATS user (the simulator included: it publishes its truth).
BUS_SERVICES = ("connector", "book", "iv", "surface", "archive", "api", "sim")


@dataclass(frozen=True)
class NatsUser:
    """One NATS user: its name and the subjects it may publish and subscribe (allow lists;
    an empty list allows nothing)."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def inbox_prefix(user: str) -> str:
    """The reply-subject prefix of ``user``'s connections (``_INBOX_<user>``): one user never
    receives, and cannot subscribe to, another's replies or pull deliveries."""
    return f"_INBOX_{user}"


def _owned_venues(cfg: Config) -> list[str]:
    return sorted({p.venue for p in cfg.owned_partitions()})


def user_name(service: str, cfg: Config) -> str:
    """``connector-<venues>``, ``<service>-<partition group>`` for a stage (its durable's
    name), ``surface-consolidated`` for a consolidation-only replica, ``api``, ``sim``."""
    if service == "connector":
        return "connector-" + "-".join(_owned_venues(cfg))
    if service in ("api", "sim"):
        return service
    if service == "surface" and cfg.consolidate == "only":
        return "surface-consolidated"
    if service in ("book", "iv", "surface", "archive"):
        return durable_name(service, cfg)
    raise ValueError(f"no NATS user for service {service!r}")


def _by_venue(s: Subjects, stage: str, cfg: Config) -> list[str]:
    """``<stage>.<venue>.>`` for a venue whose every configured currency the replica owns,
    else ``<stage>.<venue>.<ccy>`` and ``<stage>.<venue>.<ccy>.>`` per owned partition."""
    owned = cfg.owned_partitions()
    wanted = {c.upper() for c in cfg.currencies}
    out: list[str] = []
    for venue in _owned_venues(cfg):
        ccys = sorted({p.currency.upper() for p in owned if p.venue == venue})
        if set(ccys) >= wanted:
            out.append(s.stage_filter(stage, venue, ">"))
        else:
            for ccy in ccys:
                exact = s.stage_filter(stage, venue, ccy.lower())
                out += [exact, exact + ".>"]
    return out


def _stream_info(s: Subjects, *bases: str) -> list[str]:
    return [f"{JS_API}.STREAM.INFO.{s.stream_name(b)}" for b in bases]


def _msg_get(s: Subjects, *bases: str) -> list[str]:
    """Latest message of a subject (``js.get_last_msg``: STREAM.MSG.GET)."""
    return [f"{JS_API}.STREAM.MSG.GET.{s.stream_name(b)}" for b in bases]


def _durable(s: Subjects, base: str, durable: str) -> list[str]:
    """Everything a pull consumer (volstream.bus.consumer) does with its own durable."""
    stream = s.stream_name(base)
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
        f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"{JS_API}.CONSUMER.RESET.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _direct_get(s: Subjects, base: str) -> list[str]:
    """Batched direct gets of a whole stream (a stage's rebuild, volstream.bus.rebuild)."""
    return [f"{JS_API}.DIRECT.GET.{s.stream_name(base)}"]


def _ordered(s: Subjects, base: str) -> list[str]:
    """An ordered (ephemeral push) consumer of nats-py: create, info, flow control."""
    stream = s.stream_name(base)
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def service_user(service: str, cfg: Config) -> NatsUser:
    """The NATS user of one replica of ``service`` configured by ``cfg`` (its owned
    partitions, venues, currencies, consolidation and namespace)."""
    s = Subjects(cfg.namespace)
    name = user_name(service, cfg)
    inbox = inbox_prefix(name) + ".>"
    venues = _owned_venues(cfg)
    pub: list[str]
    sub: list[str] = [inbox]
    if service == "connector":
        pub = [s.stage_filter("md", v, ">") for v in venues]
        pub += [s.dlq("connector", v) for v in venues]
        pub += _stream_info(s, "MD", "DLQ")
        sub += [s.control("connector", v, "resync") for v in venues]
    elif service == "book":
        pub = _by_venue(s, "book", cfg)
        pub += [s.stage_filter("dlq", "book", ">")]
        pub += [s.control("connector", v, "resync") for v in venues]
        pub += _stream_info(s, "MD", "BOOK", "DLQ")
        pub += _durable(s, "MD", name) + _direct_get(s, "MD")
        pub += _msg_get(s, "BOOK")
    elif service == "iv":
        pub = _by_venue(s, "iv", cfg)
        pub += [s.stage_filter("dlq", "iv", ">")]
        pub += _stream_info(s, "MD", "BOOK", "IV", "DLQ")
        pub += _durable(s, "BOOK", name) + _direct_get(s, "BOOK")
        pub += _msg_get(s, "MD", "BOOK", "IV")
    elif service == "surface":
        pub = [] if cfg.consolidate == "only" else _by_venue(s, "surface", cfg)
        pub += [s.surface("all", c) for c in cfg.consolidated_currencies()]
        pub += [s.stage_filter("dlq", "surface", ">")]
        pub += _stream_info(s, "IV", "SURFACE", "DLQ")
        pub += _durable(s, "IV", name) + _direct_get(s, "IV")
        pub += _msg_get(s, "SURFACE")
    elif service == "archive":
        # Reads surfaces into files; its only output is dead letters (undecodable surfaces).
        pub = [s.stage_filter("dlq", "archive", ">")]
        pub += _stream_info(s, "SURFACE", "DLQ")
        pub += _durable(s, "SURFACE", name)
        if cfg.archive_md:
            pub += _stream_info(s, "MD") + _durable(s, "MD", f"{name}-md")
    elif service == "api":
        # Reads only; its dead letters (undecodable surfaces or smiles) go to dlq.api.<venue>.
        surface = s.stream_name("SURFACE")
        pub = [s.stage_filter("dlq", "api", ">")]
        pub += _stream_info(s, "SURFACE", "IV", "DLQ")
        pub += _ordered(s, "SURFACE") + _ordered(s, "IV")
        pub += [f"{JS_API}.DIRECT.GET.{surface}", f"{JS_API}.DIRECT.GET.{surface}.>"]
    elif service == "sim":
        pub = [s.stage_filter("sim", "truth", ">")]
        sub = []
    else:
        raise ValueError(f"no NATS user for service {service!r}")
    return NatsUser(name, tuple(pub), tuple(sub))


def up_users(cfg: Config) -> list[NatsUser]:
    """The users ``volstream up`` runs: one connector per venue, one replica of every stage
    owning every partition, the API and the simulator (admin not included)."""
    users = [service_user("connector", replace(cfg, venues=(v,))) for v in cfg.venues]
    users += [
        service_user(name, cfg) for name in ("book", "iv", "surface", "archive", "api", "sim")
    ]
    return users


# --- the nats-server side ---------------------------------------------------------------------

_PASSWORD_OK = re.compile(r"^[A-Za-z0-9_-]+$")


def _allow(subjects: Sequence[str]) -> dict[str, list[str]]:
    # nats-server reads an empty or missing allow list as "everything": deny instead.
    return {"allow": list(subjects)} if subjects else {"deny": [">"]}


def authorization_block(users: Iterable[tuple[NatsUser | None, str, str]]) -> str:
    """A nats-server ``authorization { users = [...] }`` block for ``(user, name, password)``
    triples; ``user`` None gives ``name`` every permission (the admin)."""
    entries = []
    for user, name, password in users:
        if not _PASSWORD_OK.match(password):
            raise ValueError("a NATS password must be URL-safe base64 (secrets.token_urlsafe)")
        entry: dict[str, object] = {"user": name, "password": password}
        if user is not None:
            entry["permissions"] = {
                "publish": _allow(user.publish),
                "subscribe": _allow(user.subscribe),
            }
        entries.append("    " + json.dumps(entry))
    return "authorization {\n  users = [\n" + ",\n".join(entries) + "\n  ]\n}\n"


def markdown_table(cfg: Config) -> str:
    """The README's "who may publish what" table for ``up`` with ``cfg``: every service
    user's subjects except the JetStream API ones."""

    def plain(subjects: Sequence[str]) -> str:
        shown = [x for x in subjects if not x.startswith("$JS.")]
        return ", ".join(f"`{x}`" for x in shown) or "nothing"

    rows = ["| user | may publish | may subscribe |", "|---|---|---|"]
    for user in up_users(cfg):
        rows.append(f"| `{user.name}` | {plain(user.publish)} | {plain(user.subscribe)} |")
    return "\n".join(rows) + "\n"


def stream_info_allowed(user: NatsUser, stream: str) -> bool:
    """Whether ``user`` uses ``stream`` (it may read the stream's info): the streams a
    service checks at start-up when it may not provision them."""
    return f"{JS_API}.STREAM.INFO.{stream}" in user.publish
