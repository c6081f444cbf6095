"""JetStream streams and durable consumers defined as code, applied idempotently at start-up.

Every service without a NATS user of its own calls :func:`ensure_streams` with
:func:`default_stream_specs` when it starts (one with a user only checks its streams exist:
volstream.runtime.check_streams; `volstream up` provisions as its admin user). Several
services starting together is fine: creation races and "already in use" answers are resolved
by re-reading the stream and updating it only if its configuration differs. Data is never
deleted: a change that JetStream cannot apply in place (storage type) raises
:class:`StreamConfigConflict` instead of recreating the stream.

Stream names come from ``Subjects.stream_name`` so a namespace (a replay run) gets streams of
its own beside the live ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    StorageType,
    StoreCompression,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from volstream.subjects import Subjects

log = logging.getLogger("volstream.bus")

GIB = 1024**3
MIB = 1024**2
HOUR_S = 3600.0
DAY_S = 86400.0

# JetStream error codes (nats-server errors.json) that mean "someone else got there first".
ERR_STREAM_NAME_IN_USE = 10058
ERR_CONSUMER_ALREADY_EXISTS = 10148
ERR_CONSUMER_NAME_EXISTS = 10013
ERR_CONSUMER_CREATE_RACE = 10105


class StreamConfigConflict(RuntimeError):
    """The existing stream differs in a way that cannot be updated without losing data."""


class ConsumerConfigConflict(RuntimeError):
    """The existing durable differs in a field JetStream cannot edit (deliver/ack policy...)."""


@dataclass(frozen=True)
class StreamSpec:
    """What a stream must look like. ``max_age_s``/``duplicate_window_s`` in seconds."""

    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    max_bytes: int
    duplicate_window_s: float
    max_msgs_per_subject: int = -1
    allow_direct: bool = True
    storage: StorageType = StorageType.FILE
    discard: DiscardPolicy = DiscardPolicy.OLD
    num_replicas: int = 1
    max_msg_size: int = -1
    description: str = ""
    compression: StoreCompression = StoreCompression.NONE

    def to_config(self) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            max_age=self.max_age_s,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window_s,
            max_msgs_per_subject=self.max_msgs_per_subject,
            allow_direct=self.allow_direct,
            storage=self.storage,
            discard=self.discard,
            num_replicas=self.num_replicas,
            max_msg_size=self.max_msg_size,
            compression=self.compression,
        )


@dataclass
class StreamLimits:
    """Retention (seconds) and size (bytes) per stream.

    JetStream reserves ``max_bytes`` of every stream against the server's store limit, so the
    defaults (about 7.5 GiB in total) suit one workstation; use :meth:`compact` for replay
    namespaces, tests and benchmarks.

    Sized from measured bytes per second (``bench/bench_retention.py``; README "Retention")
    at the simulator's default rate, four venues: MD 2.3 MB/s, BOOK ~0.9 MB/s, IV 6 MB/s,
    SURFACE 2 MB/s. Each max age is what its max bytes hold at that rate (rounded down), so
    the age limit says what the stream really keeps; a busier market holds less, which
    ``volstream up`` logs at the current rate. Days of history live in the archive
    (svc_archive), not in the streams. S2 compression cuts the disk a stream uses (MD and
    BOOK 2.3x, IV 1.6x, SURFACE 1.3x) but not how long it holds: JetStream counts max_bytes
    on the uncompressed messages.
    """

    md_max_age_s: float = 30 * 60.0
    md_max_bytes: int = 4 * GIB
    md_duplicate_window_s: float = 120.0
    book_max_age_s: float = 9 * 60.0
    book_max_bytes: int = 512 * MIB
    iv_max_age_s: float = 85.0
    iv_max_bytes: int = 512 * MIB
    # At least twice the archive's roll (300 s): a restarted archiver finds what it buffered.
    surface_max_age_s: float = 17 * 60.0
    surface_max_bytes: int = 2 * GIB
    dlq_max_age_s: float = 14 * DAY_S
    dlq_max_bytes: int = 256 * MIB
    sim_max_age_s: float = 1 * DAY_S
    sim_max_bytes: int = 256 * MIB
    duplicate_window_s: float = 120.0
    num_replicas: int = 1
    max_msg_size: int = -1
    # S2 on the busy streams (it pays: see the class docstring); DLQ and SIM are small.
    compressed: tuple[str, ...] = ("MD", "BOOK", "IV", "SURFACE")

    @classmethod
    def compact(cls, max_bytes: int = 64 * MIB) -> StreamLimits:
        """Every stream capped at ``max_bytes`` (replays, tests, benchmarks)."""
        return cls(
            md_max_bytes=max_bytes,
            book_max_bytes=max_bytes,
            iv_max_bytes=max_bytes,
            surface_max_bytes=max_bytes,
            dlq_max_bytes=max_bytes,
            sim_max_bytes=max_bytes,
        )


def default_stream_specs(
    subjects: Subjects, limits: StreamLimits | None = None
) -> list[StreamSpec]:
    """The volstream streams (docs/architecture.md section 2) for ``subjects.namespace``."""
    lim = limits or StreamLimits()

    def spec(
        base: str,
        subject: str,
        max_age_s: float,
        max_bytes: int,
        description: str,
        duplicate_window_s: float | None = None,
    ) -> StreamSpec:
        dup = lim.duplicate_window_s if duplicate_window_s is None else duplicate_window_s
        return StreamSpec(
            name=subjects.stream_name(base),
            subjects=(subject,),
            max_age_s=max_age_s,
            max_bytes=max_bytes,
            # JetStream refuses a duplicate window longer than the retention.
            duplicate_window_s=min(dup, max_age_s),
            num_replicas=lim.num_replicas,
            max_msg_size=lim.max_msg_size,
            description=description,
            compression=StoreCompression.S2 if base in lim.compressed else StoreCompression.NONE,
        )

    return [
        spec(
            "MD",
            subjects.md_all(),
            lim.md_max_age_s,
            lim.md_max_bytes,
            "normalised venue market data: the replay log",
            duplicate_window_s=lim.md_duplicate_window_s,
        ),
        spec(
            "BOOK",
            subjects.stage_all("book"),
            lim.book_max_age_s,
            lim.book_max_bytes,
            "top of book and depth summaries (rebuildable)",
        ),
        spec(
            "IV",
            subjects.stage_all("iv"),
            lim.iv_max_age_s,
            lim.iv_max_bytes,
            "per-expiry implied vol smiles (rebuildable)",
        ),
        spec(
            "SURFACE",
            subjects.stage_all("surface"),
            lim.surface_max_age_s,
            lim.surface_max_bytes,
            "fitted surfaces: history for time-travel queries",
        ),
        spec(
            "DLQ",
            subjects.dlq_all(),
            lim.dlq_max_age_s,
            lim.dlq_max_bytes,
            "messages a service could not handle, reason in headers",
        ),
        spec(
            "SIM",
            subjects.stage_all("sim"),
            lim.sim_max_age_s,
            lim.sim_max_bytes,
            "exchange simulator ground truth",
        ),
    ]


def _close(a: float | None, b: float | None) -> bool:
    return math.isclose(a or 0.0, b or 0.0, rel_tol=1e-9, abs_tol=1e-6)


def _stream_differences(want: StreamConfig, have: StreamConfig) -> list[str]:
    diffs: list[str] = []
    if sorted(want.subjects or []) != sorted(have.subjects or []):
        diffs.append(f"subjects {have.subjects} -> {want.subjects}")
    for name in ("max_age", "duplicate_window"):
        if not _close(getattr(want, name), getattr(have, name)):
            diffs.append(f"{name} {getattr(have, name)} -> {getattr(want, name)}")
    for name in ("max_bytes", "max_msgs_per_subject", "max_msg_size", "num_replicas"):
        w, h = getattr(want, name), getattr(have, name)
        if (w if w is not None else -1) != (h if h is not None else -1):
            diffs.append(f"{name} {h} -> {w}")
    if bool(want.allow_direct) != bool(have.allow_direct):
        diffs.append(f"allow_direct {have.allow_direct} -> {want.allow_direct}")
    if want.discard != have.discard:
        diffs.append(f"discard {have.discard} -> {want.discard}")
    if (want.compression or StoreCompression.NONE) != (have.compression or StoreCompression.NONE):
        diffs.append(f"compression {have.compression} -> {want.compression}")
    if (want.description or "") != (have.description or ""):
        diffs.append("description")
    return diffs


async def _retry_unavailable(deadline: float, what: str, attempt: int) -> None:
    """JetStream answers 503 for a moment after a server starts: wait and retry."""
    if time.monotonic() >= deadline:
        raise TimeoutError(f"JetStream unavailable while {what}")
    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))


async def ensure_stream(
    js: JetStreamContext, spec: StreamSpec, timeout_s: float = 30.0
) -> StreamInfo:
    """Create ``spec`` if missing, update it if its configuration differs; never delete."""
    want = spec.to_config()
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            try:
                info = await js.stream_info(spec.name)
            except NotFoundError:
                try:
                    info = await js.add_stream(want)
                    log.info("stream %s created (%s)", spec.name, ", ".join(spec.subjects))
                    return info
                except APIError as exc:
                    if exc.err_code == ERR_STREAM_NAME_IN_USE:
                        continue  # created concurrently with another config: re-read, update
                    raise
            have = info.config
            if have.storage is not None and have.storage != spec.storage:
                raise StreamConfigConflict(
                    f"stream {spec.name} uses {have.storage} storage, spec wants {spec.storage}: "
                    "changing it needs a manual migration (data would be lost)"
                )
            diffs = _stream_differences(want, have)
            if not diffs:
                return info
            updated = have.evolve(
                description=want.description,
                subjects=want.subjects,
                max_age=want.max_age,
                max_bytes=want.max_bytes,
                duplicate_window=want.duplicate_window,
                max_msgs_per_subject=want.max_msgs_per_subject,
                max_msg_size=want.max_msg_size,
                allow_direct=want.allow_direct,
                discard=want.discard,
                num_replicas=want.num_replicas,
                compression=want.compression,
            )
            info = await js.update_stream(updated)
            log.info("stream %s updated: %s", spec.name, "; ".join(diffs))
            return info
        except (TimeoutError, ServiceUnavailableError, NatsTimeoutError):
            await _retry_unavailable(deadline, f"ensuring stream {spec.name}", attempt)


async def ensure_streams(
    js: JetStreamContext, specs: Sequence[StreamSpec], timeout_s: float = 30.0
) -> dict[str, StreamInfo]:
    """:func:`ensure_stream` for each spec, in order. Returns the stream infos by name."""
    return {spec.name: await ensure_stream(js, spec, timeout_s) for spec in specs}


@dataclass
class ConsumerSpec:
    """A durable pull consumer.

    ``ack_policy`` defaults to ``AckPolicy.ALL``: :class:`~volstream.bus.consumer.PullConsumer`
    acknowledges a whole batch with one ack of its last message (the fastest pull pattern
    measured). ``max_deliver`` bounds redeliveries; the consumer dead-letters a message that
    keeps failing before JetStream stops delivering it. ``max_ack_pending`` must exceed two
    batches (the consumer keeps one batch in flight while handling another).
    """

    stream: str
    durable: str
    filter_subjects: list[str] = field(default_factory=list)
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 20_000
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    ack_policy: AckPolicy = AckPolicy.ALL
    max_waiting: int = 512
    opt_start_seq: int | None = None
    description: str = ""

    def to_config(self) -> ConsumerConfig:
        filters = list(self.filter_subjects)
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            description=self.description or None,
            deliver_policy=self.deliver_policy,
            opt_start_seq=self.opt_start_seq,
            ack_policy=self.ack_policy,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            max_waiting=self.max_waiting,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )


def _filters(config: ConsumerConfig) -> list[str]:
    if config.filter_subjects:
        return sorted(config.filter_subjects)
    return [config.filter_subject] if config.filter_subject else []


def _consumer_differences(
    want: ConsumerConfig, have: ConsumerConfig
) -> tuple[list[str], list[str]]:
    """(editable differences, fixed differences)."""
    editable: list[str] = []
    fixed: list[str] = []
    if _filters(want) != _filters(have):
        editable.append(f"filters {_filters(have)} -> {_filters(want)}")
    if not _close(want.ack_wait, have.ack_wait):
        editable.append(f"ack_wait {have.ack_wait} -> {want.ack_wait}")
    for name in ("max_deliver", "max_ack_pending", "max_waiting"):
        if getattr(want, name) != getattr(have, name):
            editable.append(f"{name} {getattr(have, name)} -> {getattr(want, name)}")
    if (want.description or "") != (have.description or ""):
        editable.append("description")
    for name in ("ack_policy", "deliver_policy"):
        if getattr(want, name) != getattr(have, name):
            fixed.append(f"{name} {getattr(have, name)} -> {getattr(want, name)}")
    return editable, fixed


async def ensure_consumer(
    js: JetStreamContext, spec: ConsumerSpec, timeout_s: float = 30.0
) -> ConsumerInfo:
    """Create the durable if missing, update editable fields if they differ (server 2.10+).

    A difference in a field JetStream cannot edit raises :class:`ConsumerConfigConflict`
    rather than deleting the durable (which would lose its position).
    """
    want = spec.to_config()
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            try:
                info: ConsumerInfo = await js.consumer_info(spec.stream, spec.durable)
            except NotFoundError as exc:
                if exc.err_code != 10014:  # 10014 consumer not found; 10059 stream not found
                    raise
                try:
                    info = await js.add_consumer(spec.stream, want)
                    log.info("consumer %s.%s created", spec.stream, spec.durable)
                    return info
                except APIError as exc2:
                    if exc2.err_code in (
                        ERR_CONSUMER_ALREADY_EXISTS,
                        ERR_CONSUMER_NAME_EXISTS,
                        ERR_CONSUMER_CREATE_RACE,
                    ):
                        continue
                    raise
            editable, fixed = _consumer_differences(want, info.config)
            if fixed:
                raise ConsumerConfigConflict(
                    f"consumer {spec.stream}.{spec.durable}: {'; '.join(fixed)} cannot be "
                    "changed in place; delete the durable deliberately to reset it"
                )
            if not editable:
                return info
            updated: ConsumerInfo = await js.add_consumer(spec.stream, want)  # create-or-update
            log.info("consumer %s.%s updated: %s", spec.stream, spec.durable, "; ".join(editable))
            return updated
        except (TimeoutError, ServiceUnavailableError, NatsTimeoutError):
            await _retry_unavailable(deadline, f"ensuring consumer {spec.durable}", attempt)
