"""Deterministic restart of a stage: rebuild its in-memory state by replaying its input.

A derived stage's output is a function of its input stream alone (docs/architecture.md
section 3), but the state behind it (books, IV chains, the surface's smoothing prior) lives
in memory and dies with the process. With ``VOLSTREAM_REBUILD=replay`` a restarting stage
starts from empty state, as on its first start, and before consuming its durable it feeds
the handler every input message still in the stream up to the durable's ack floor, through
the same handler, discarding the outputs: they were all stored before the floor moved past
their input (the stage kit publishes and flushes before it acks). The durable then resumes
at its floor as usual; outputs of inputs delivered but not acked before the crash are
published again with the same msg-ids and dropped by the duplicate window (section 4).
The stage kit then starts its per-input mark at the floor this rebuild read to, so that a
later redelivery of an input the rebuild handled (a durable rewound below its floor) is
skipped, not handled a second time (``volstream.bus.stage``, "Handled once").

The durable itself is never moved backwards, so a crash during the rebuild finds the same
floor and rebuilds the same way. The input is read with batched direct gets (nats-server
2.11+), which need no consumer: a service's NATS user needs only
``$JS.API.DIRECT.GET.<input stream>`` (volstream/bus/permissions.py).

The guarantee: the restarted stage publishes exactly what an uninterrupted one would
(same payloads, header sequences and revisions) *if the input stream still holds every
message the stage has consumed since it first started*. When the stream's retention has
dropped the head, the state is rebuilt from what remains (books without their snapshot stay
invalid until the venue sends one), the output is valid but not identical, and the stage's
``after_partial_rebuild`` hook continues its counters (header sequences, revisions) from the
last published messages, so that they never go back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from volstream.bus.consumer import AckMetadata, InMessage
from volstream.subjects import subject_matches

if TYPE_CHECKING:  # stage.py calls this module
    from volstream.bus.stage import StageHandler, StageInput

log = logging.getLogger("volstream.bus")

_STATUS = "Status"
_SEQ = "Nats-Sequence"
_SUBJECT = "Nats-Subject"
_TIME = "Nats-Time-Stamp"
# Headers the server adds to a direct-get reply; the rest are the stored message's own.
_DIRECT_HEADERS = frozenset(
    {_SEQ, _SUBJECT, _TIME, "Nats-Stream", "Nats-Num-Pending", "Nats-Last-Sequence"}
)


@dataclass
class RebuildStats:
    """What one input's rebuild did: messages read and handled, outputs discarded."""

    stream: str
    durable: str
    through_seq: int = 0
    # The stream had lost messages before the first one read (aged out): the state is
    # rebuilt from what remains, not identical (module docstring).
    partial: bool = False
    read: int = 0
    handled: int = 0
    discarded: int = 0
    seconds: float = 0.0


async def direct_batch(
    nc: Client,
    stream: str,
    from_seq: int,
    batch: int,
    *,
    api_prefix: str = "$JS.API",
    timeout_s: float = 10.0,
) -> list[InMessage]:
    """Up to ``batch`` messages of ``stream`` from ``from_seq`` on (a batched direct get), in
    stream order; empty when there is none at or after ``from_seq``."""
    inbox = nc.new_inbox()
    out: list[InMessage] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get(_STATUS)
        if status is not None:  # 204 EOB ends a batch; 404: nothing there
            if not done.done():
                done.set_result(None)
            return
        seq = int(headers[_SEQ])
        own = {k: v for k, v in headers.items() if k not in _DIRECT_HEADERS} or None
        meta = AckMetadata(stream, "", 1, seq, 0, 0, 0)
        out.append(InMessage(headers.get(_SUBJECT, msg.subject), msg.data, own, seq, meta))

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        request = orjson.dumps({"seq": from_seq, "batch": batch})
        await nc.publish(f"{api_prefix}.DIRECT.GET.{stream}", request, reply=inbox)
        await asyncio.wait_for(done, timeout_s)
    finally:
        await sub.unsubscribe()
    return out


async def rebuild_from_input(
    nc: Client, spec: StageInput, handler: StageHandler, *, batch: int = 256
) -> RebuildStats:
    """Replay ``spec``'s stream up to its durable's ack floor through ``handler``, discarding
    the outputs (module docstring). Nothing to do on a durable that never acked."""
    stats = RebuildStats(spec.stream, spec.durable)
    started = time.monotonic()
    try:
        info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        return stats
    floor = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
    stats.through_seq = floor
    if floor:
        state = (await nc.jetstream().stream_info(spec.stream)).state
        stats.partial = int(state.first_seq or 1) > 1
    seq = 1
    filters = spec.filter_subjects
    while seq <= floor:
        msgs = await direct_batch(nc, spec.stream, seq, min(batch, floor - seq + 1))
        if not msgs:
            break
        stats.read += len(msgs)
        mine = [
            m
            for m in msgs
            if m.stream_seq <= floor and any(subject_matches(f, m.subject) for f in filters)
        ]
        if mine:
            stats.handled += len(mine)
            stats.discarded += len(await handler.handle(mine))
        seq = msgs[-1].stream_seq + 1
    stats.seconds = time.monotonic() - started
    if stats.partial:
        log.warning(
            "rebuilding %s: %s no longer holds its first messages (retention): the state "
            "is rebuilt from what remains and the output will not be identical to an "
            "uninterrupted run's",
            spec.durable,
            spec.stream,
        )
    if floor:
        log.info(
            "rebuilt %s from %s through seq %d: %d messages handled, %d outputs already "
            "published, %.1f s",
            spec.durable,
            spec.stream,
            floor,
            stats.handled,
            stats.discarded,
            stats.seconds,
        )
    return stats
