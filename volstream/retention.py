"""How long each stream really holds at the current rate: what `volstream up` logs.

A stream's limits are a byte budget and an age; which one binds depends on the rate. The
rate is measured from the stream itself (its bytes over the span between its first and last
message), so the estimate needs no history of its own: after a warm-up, ``up`` logs per
stream "holds N min at X MB/s" and which limit binds, every 15 minutes, and at once for a
stream whose traffic starts later.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("volstream.retention")

# After the first report, up reports again this often.
REPORT_EVERY_S = 15 * 60.0


@dataclass(frozen=True)
class StreamUsage:
    name: str
    bytes: int
    messages: int
    first_ns: int
    last_ns: int
    max_bytes: int
    max_age_s: float


@dataclass(frozen=True)
class Holds:
    rate_bytes_s: float
    # How long the stream holds at this rate; None while the rate is unknown.
    seconds: float | None
    # "max_bytes" or "max_age": the limit that decides.
    bound: str


def holds(u: StreamUsage) -> Holds:
    span_s = (u.last_ns - u.first_ns) / 1e9
    age = u.max_age_s if u.max_age_s > 0 else float("inf")
    if u.messages < 2 or span_s <= 0 or u.bytes <= 0:
        return Holds(0.0, None, "max_age")
    rate = u.bytes / span_s
    by_bytes = u.max_bytes / rate if u.max_bytes > 0 else float("inf")
    if by_bytes < age:
        return Holds(rate, by_bytes, "max_bytes")
    return Holds(rate, age, "max_age")


def duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "forever"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe(u: StreamUsage) -> str:
    h = holds(u)
    limits = (
        f"max_bytes {size(u.max_bytes) if u.max_bytes > 0 else 'none'}, "
        f"max_age {duration(u.max_age_s) if u.max_age_s > 0 else 'none'}"
    )
    if h.seconds is None:
        return f"stream {u.name}: {u.messages} messages, rate not known yet ({limits})"
    return (
        f"stream {u.name} holds {duration(h.seconds)} at the current {size(h.rate_bytes_s)}/s "
        f"({h.bound} decides; {limits}; {size(u.bytes)} in "
        f"{duration((u.last_ns - u.first_ns) / 1e9)} stored now)"
    )


def _ns(stamp: str | None) -> int:
    if not stamp or stamp.startswith("0001-"):
        return 0
    body = stamp.rstrip("Z")
    whole, _, fraction = body.partition(".")
    base = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC)
    return int(base.timestamp()) * 1_000_000_000 + int((fraction + "000000000")[:9] or 0)


def usage_from_info(info: dict[str, Any]) -> StreamUsage:
    """A StreamUsage from a `$JS.API.STREAM.INFO` reply (nats-py's StreamState has no
    first/last timestamps)."""
    config, state = info["config"], info["state"]
    return StreamUsage(
        name=config["name"],
        bytes=int(state.get("bytes", 0)),
        messages=int(state.get("messages", 0)),
        first_ns=_ns(state.get("first_ts")),
        last_ns=_ns(state.get("last_ts")),
        max_bytes=int(config.get("max_bytes", -1)),
        max_age_s=int(config.get("max_age", 0)) / 1e9,
    )


async def stream_usage(nc: Any, stream: str, timeout_s: float = 5.0) -> StreamUsage:
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout_s)
    info = json.loads(reply.data)
    if "error" in info:
        raise RuntimeError(f"stream info {stream}: {info['error']}")
    return usage_from_info(info)


async def report_retention(
    nc: Any, streams: list[str], stop: asyncio.Event, every_s: float
) -> None:
    """Log what each stream holds ``every_s`` after start, then every REPORT_EVERY_S; a
    stream whose rate was not known yet (no traffic) is logged as soon as it is."""
    known: set[str] = set()
    since_full = REPORT_EVERY_S  # the first tick is a full report
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return
        full = since_full >= REPORT_EVERY_S
        since_full = 0.0 if full else since_full + every_s
        for name in streams:
            try:
                u = await stream_usage(nc, name)
            except Exception as exc:  # a report is best effort; never stops up
                log.warning("stream %s: retention not known: %s", name, exc)
                continue
            now_known = holds(u).seconds is not None
            if full or (now_known and name not in known):
                log.info(describe(u))
            if now_known:
                known.add(name)
