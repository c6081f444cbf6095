"""NATS subject and stream names (docs/architecture.md section 2).

Subjects run general to specific and are lowercase: ``md.deribit.btc.book``,
``book.bybit.btc``, ``iv.deribit.eth``, ``surface.all.btc``. A namespace prefix
(``replay.run42``) lets a replay publish beside live data without touching it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Kinds of normalised market data the connector publishes (last subject token).
MD_KINDS = ("instrument", "book", "ticker", "index")

_TOKEN = re.compile(r"^[a-z0-9_-]+$")


def token(value: str) -> str:
    """A subject token: lowercase, no dots, spaces or wildcards."""
    t = value.strip().lower()
    if not _TOKEN.match(t):
        raise ValueError(f"not a valid subject token: {value!r}")
    return t


@dataclass(frozen=True)
class Subjects:
    """Subject builder for one namespace ('' for live data)."""

    namespace: str = ""

    def _p(self, *parts: str) -> str:
        body = ".".join(parts)
        return f"{self.namespace}.{body}" if self.namespace else body

    # market data --------------------------------------------------------------
    def md(self, venue: str, currency: str, kind: str) -> str:
        return self._p("md", token(venue), token(currency), kind)

    def md_all(self) -> str:
        return self._p("md", ">")

    def md_filter(self, venue: str = "*", currency: str = "*", kind: str = "*") -> str:
        return self._p("md", venue, currency, kind)

    # derived streams -----------------------------------------------------------
    def book(self, venue: str, currency: str) -> str:
        return self._p("book", token(venue), token(currency))

    def book_relay(self, venue: str, currency: str) -> str:
        """Where the book stage relays the partition's other market data (tickers, index,
        instruments), so the IV stage reads one ordered stream (docs/architecture.md s.1)."""
        return self._p("book", token(venue), token(currency), "md")

    def iv(self, venue: str, currency: str) -> str:
        return self._p("iv", token(venue), token(currency))

    def surface(self, venue: str, currency: str) -> str:
        return self._p("surface", token(venue), token(currency))

    def stage_all(self, stage: str) -> str:
        return self._p(stage, ">")

    def stage_filter(self, stage: str, venue: str = "*", currency: str = "*") -> str:
        return self._p(stage, venue, currency)

    # dead letters, simulator truth, control ---------------------------------------
    def dlq(self, service: str, venue: str) -> str:
        return self._p("dlq", token(service), token(venue))

    def dlq_all(self) -> str:
        return self._p("dlq", ">")

    def sim_truth(self, venue: str, currency: str) -> str:
        return self._p("sim", "truth", token(venue), token(currency))

    def control(self, service: str, *parts: str) -> str:
        return self._p("ctl", token(service), *parts)

    def stream_name(self, base: str) -> str:
        """Stream names are namespaced too so that a replay gets its own streams."""
        if not self.namespace:
            return base
        return f"{base}_{self.namespace.replace('.', '_').replace('-', '_').upper()}"


def parse_partition(subject: str, namespace: str = "") -> tuple[str, str, str, str]:
    """(stage, venue, currency, rest) of a subject such as ``md.deribit.btc.book``."""
    if namespace:
        prefix = namespace + "."
        if not subject.startswith(prefix):
            raise ValueError(f"subject {subject!r} is outside namespace {namespace!r}")
        subject = subject[len(prefix) :]
    parts = subject.split(".")
    if len(parts) < 3:
        raise ValueError(f"subject {subject!r} has no venue and currency")
    return parts[0], parts[1], parts[2], ".".join(parts[3:])


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a final ``>`` one or more."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, part in enumerate(want):
        if part == ">":
            return len(have) > i
        if i >= len(have) or (part != "*" and part != have[i]):
            return False
    return len(have) == len(want)
