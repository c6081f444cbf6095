"""The stage kit: what every derived stage (book, IV, surface, and the consumers to come)
shares, so that a stage is its pure core plus a few lines of wiring.

- :class:`PartitionClock`: one partition's "now" (the highest event time seen in its input,
  never the wall clock, so a replay gives the same output), its cadence in that time, and
  its output sequence;
- :func:`stamp_header`: the one writer of an output message's ``EventHeader`` (source,
  event time, sequence from the partition's clock; publish time from the wall clock);
- :func:`output_msg_id` and :func:`dead_letter_output`: the message-id rule and dead letters;
- :class:`StageRunner`: consume -> handle -> publish -> ack over NATS JetStream. The same
  handlers run without NATS in ``volstream.bus.inprocess`` (replay, equivalence checks).

Header ownership. The kit stamps the header of every message a stage publishes: ``source``
(the stage), ``event_time_ns`` (the partition's now at the cut), ``sequence`` (the
partition's output counter: 1, 2, ... over everything the stage publishes for the partition,
continued across restarts from the last published message) and ``publish_time_ns`` (wall
clock: the only wall-clock stamp, left out of every replay comparison). Cores fill payloads
and the headers of the items inside them (e.g. one TopOfBook in a batch), never the header
of the message itself. (A relay, such as the book stage passing tickers on to the IV stage,
forwards another source's message unchanged, header included.)

For each consumed batch, in this order:

1. ``outputs = await handler.handle(part)`` for each part of the batch in stream order (the
   whole batch, ``list[InMessage]``, unless the handler asks for smaller parts: below);
2. every output of a part is published with its ``Nats-Msg-Id`` as soon as the part is
   handled (core-NATS outputs, e.g. control requests, with a plain publish);
3. the publisher is flushed after each part (all its outputs stored by JetStream, so parts
   are stored in order even when a publish is retried);
4. only then the input batch is acknowledged.

Publishing early. A handler may set ``publish_every = n``: the runner then hands it the batch
``n`` messages at a time and publishes each part's outputs before handling the next, while
acking once per batch as above. An output then leaves as soon as the message that cut it is
handled instead of after the whole batch: the surface stage (``publish_every = 1``) no
longer holds a fitted surface back while it fits the batch's other keys, nor the IV stage
(``publish_every = 32``) a flushed partition while it folds the rest of a 256-message
batch. Only a stage that cuts its outputs per message, never per batch (every stage
here: section 3 of docs/architecture.md), may set it: then its outputs do not depend on
the parts, and the in-process bus (one message per call) and the rebuild (a batch per
call) still see the same ones.

Handled once. The runner keeps, per input (stream and durable), the highest stream sequence
it has handled: its *mark*. An input at or below the mark is not handed to the handler again
but skipped, and acked with its batch: a durable rewound to an ack floor that lags behind
what the stage handled (a leader change whose new leader has older consumer state, a lost
ack, a gap on the wire; ``volstream.bus.consumer``), an ``ack_wait`` redelivery of a message
still buffered, or the consumer's one-at-a-time retry of a batch whose first parts went
through, would otherwise mutate the handler's state (books, chains, smiles, throttles) a
second time, and the cuts, payloads and msg-ids after it would differ from an uninterrupted
run's. Design:

- the mark advances only after a part's outputs are published *and flushed*, so every
  input at or below it has its outputs stored; skipping it loses nothing, and acking it (as
  the consumer does with the batch) keeps the rule "ack only what is stored". A part handled
  and flushed before a later part of the same batch raised is skipped when the batch comes
  again; the part that raised is handled again (the handler raised: see below);
- the mark starts at the durable's ack floor when the runner starts: everything at or below
  it was acked, hence handled and stored, by this process's predecessors. Under ``rebuild``
  the rebuild has just handled exactly those inputs into the state (``volstream.bus.rebuild``
  reads to the same floor), so a later redelivery of them is skipped too;
- inputs repeated inside one batch (the same stream sequence twice) are handled once;
- a skipped input is never silent: counted in ``stage_inputs_skipped`` (reason
  ``already_handled``, with stream and consumer) and logged at INFO once per run of
  consecutive batches with skips, at DEBUG for the rest of the run;
- stream sequences are per stream, and two durables on one stream are independent: the key
  is (stream, durable). The mark lives in memory; a new process starts from the ack floor.

What is still handled twice: the inputs of a part whose handler raised after changing its
state, or whose outputs were not all stored (flush timeout or publish error), are handled
again when redelivered: the runner cannot tell what the handler changed, and only handling
again publishes the outputs. That is at-least-once, as below.

A crash anywhere before 4 redelivers the batch: delivery is at-least-once and the duplicate
outputs of a re-handled batch are dropped by JetStream's duplicate window, *provided output
msg-ids are deterministic*. Every stage builds them with :func:`output_msg_id`:

    msg_id = f"{source}.{output_subject}.{last_input_stream}.{last_input_seq}"

where the last input is the last message that contributed to the output (for one output
per input, that input). Never wall-clock time or counters kept in memory. A handler that
conflates (latest wins per key) may cut batches differently after a restart and emit a
state that was already superseded; every event header carries a sequence so downstream
keeps the newest.

Bad input: nothing is dropped silently. A handler returns a dead letter for a message it
cannot decode or use as one more output, built with :func:`dead_letter_output`; it is
published and stored with the other outputs before the batch is acked. If the handler
*raises*, the batch is redelivered (with back-off) and a message that keeps failing is
dead-lettered by the consumer with the exception text (see ``volstream.bus.consumer``).

Handlers are called serially, across all inputs of the runner (one lock), so a stateful
handler needs no locking of its own. CPU-heavy work must not run on the event loop (acks,
heartbeats and reconnects keep their timing): ``await loop.run_in_executor(pool, fn, ...)``
inside ``handle`` is fine, the runner never blocks the loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry.trace import Tracer

from volstream.bus.consumer import InMessage, PullConsumer, in_message
from volstream.bus.dlq import (
    DLQ_REASON,
    DeadLetters,
    dead_letter_headers,
    dead_letter_msg_id,
    dead_letter_subject,
    venue_of,
)
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.rebuild import rebuild_from_input
from volstream.bus.streams import ConsumerSpec, ensure_consumer
from volstream.config import Config
from volstream.subjects import Subjects, token
from volstream.telemetry import Metrics, batch_trace_context, inject_trace
from volstream.v1 import common_pb2 as common_pb

__all__ = [
    "InMessage",
    "Output",
    "PartitionClock",
    "StageEnv",
    "StageHandler",
    "StageInput",
    "StageRunner",
    "dead_letter_output",
    "output_msg_id",
    "stamp_header",
]

log = logging.getLogger("volstream.bus")

SKIPPED_ALREADY_HANDLED = "already_handled"

# An input's key for its mark: stream sequences count per stream, and durables on one stream
# deliver independently (module docstring, "Handled once").
InputKey = tuple[str, str]


@dataclass
class StageInput:
    """One durable pull consumer feeding the stage."""

    stream: str
    durable: str
    filter_subjects: list[str]
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 20_000
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL

    def consumer_spec(self) -> ConsumerSpec:
        return ConsumerSpec(
            stream=self.stream,
            durable=self.durable,
            filter_subjects=list(self.filter_subjects),
            ack_wait_s=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
        )


@dataclass
class Output:
    """A message to publish. ``msg_id`` must be deterministic (see the module docstring).
    ``jetstream`` False: a core-NATS publish (a request to another service, not stored)."""

    subject: str
    payload: bytes
    msg_id: str
    headers: dict[str, str] | None = None
    jetstream: bool = True


class StageEnv(Protocol):
    """What a stage handler needs from its process: configuration, subject names, metrics
    (a ``volstream.runtime.ServiceContext`` is one; the in-process bus passes a plain one)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def subjects(self) -> Subjects: ...
    @property
    def metrics(self) -> Metrics: ...


class PartitionClock:
    """One partition's time and output sequence (see the module docstring).

    ``now_ns`` only moves forward. :meth:`due` says whether the cadence ``interval_ns`` has
    passed since the last cut (the first cut is due as soon as there is a time) and records
    the cut when it has. As a throttle (a minimum interval between outputs that are cut only
    when there is something new to say), :meth:`ready` asks the same without recording and
    :meth:`cut` records the output once it is made: a stretch with nothing new then leaves
    the next change free to go out at once. ``sequence`` counts the partition's published
    messages.
    """

    __slots__ = ("interval_ns", "last_cut_ns", "now_ns", "sequence")

    def __init__(self, interval_ns: int, now_ns: int = 0, sequence: int = 0) -> None:
        self.interval_ns = interval_ns
        self.now_ns = now_ns
        self.last_cut_ns: int | None = None
        self.sequence = sequence

    def observe(self, event_time_ns: int) -> int:
        """Move now to ``event_time_ns`` if later; the partition's now."""
        if event_time_ns > self.now_ns:
            self.now_ns = event_time_ns
        return self.now_ns

    def ready(self) -> bool:
        """Whether a cut is allowed now (``interval_ns`` since the last one, or none yet)."""
        now = self.now_ns
        last = self.last_cut_ns
        return now > 0 and (last is None or now - last >= self.interval_ns)

    def cut(self) -> None:
        """Record an output cut at now."""
        self.last_cut_ns = self.now_ns

    def due(self) -> bool:
        """:meth:`ready`, and the cut recorded when it is."""
        if not self.ready():
            return False
        self.cut()
        return True

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


def stamp_header(
    header: common_pb.EventHeader, source: str, clock: PartitionClock
) -> common_pb.EventHeader:
    """Fill an output message's header: the one place that writes one (module docstring)."""
    header.source = source
    header.event_time_ns = clock.now_ns
    header.sequence = clock.next_sequence()
    header.publish_time_ns = time.time_ns()  # the wall-clock stamp: publish time only
    return header


def output_msg_id(source: str, subject: str, last: InMessage) -> str:
    """The ``Nats-Msg-Id`` of an output: its source (e.g. "svc_iv"), its subject and the
    stream position of the last input that produced it. A batch re-handled after a crash
    republishes the same ids, and JetStream's duplicate window drops the copies."""
    return f"{source}.{subject}.{last.metadata.stream}.{last.stream_seq}"


class StageHandler(Protocol):
    """``handle`` a part of a consumed batch: the outputs to publish. Optional class
    attribute ``publish_every: int`` (module docstring, "Publishing early")."""

    async def handle(self, batch: list[InMessage]) -> list[Output]: ...


def _publish_every(handler: StageHandler) -> int | None:
    """The handler's ``publish_every`` when it asks for parts (a positive int), else None."""
    every = getattr(handler, "publish_every", None)
    return every if isinstance(every, int) and every > 0 else None


async def _ack_floor(nc: Client, spec: StageInput) -> int:
    """The stream sequence through which ``spec``'s durable has acked everything (0: none)."""
    try:
        info = await nc.jetstream().consumer_info(spec.stream, spec.durable)
    except NotFoundError:
        return 0
    return int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0


def dead_letter_output(subjects: Subjects, service: str, msg: InMessage, reason: str) -> Output:
    """An output that dead-letters ``msg`` (original payload, reason in headers)."""
    svc = token(service)
    meta = msg.metadata
    return Output(
        subject=dead_letter_subject(subjects, svc, venue_of(msg.subject, subjects.namespace)),
        payload=msg.data,
        msg_id=dead_letter_msg_id(svc, msg.subject, msg.data, meta.stream, meta.stream_seq),
        headers=dead_letter_headers(
            svc, reason, msg.subject, meta.stream, meta.stream_seq, meta.num_delivered
        ),
    )


@dataclass
class _Options:
    batch_size: int = 256
    flush_timeout_s: float = 10.0
    expires_s: float = 15.0
    idle_heartbeat_s: float = 2.5
    retry_backoff_s: float = 0.5
    max_retry_backoff_s: float = 10.0


class StageRunner:
    """Runs ``handler`` over ``inputs``; see the module docstring for the guarantees."""

    def __init__(
        self,
        nc: Client,
        service: str,
        subjects: Subjects,
        inputs: list[StageInput],
        handler: StageHandler,
        metrics: Metrics,
        *,
        batch_size: int = 256,
        flush_timeout_s: float = 10.0,
        publisher: JetStreamPublisher | None = None,
        ensure_consumers: bool = True,
        tracer: Tracer | None = None,
        expires_s: float = 15.0,
        idle_heartbeat_s: float = 2.5,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 10.0,
        rebuild: bool = False,
        after_partial_rebuild: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``rebuild``: before consuming, replay each input up to its durable's ack floor
        through the handler with outputs discarded (``volstream.bus.rebuild``);
        ``after_partial_rebuild`` runs before consuming when an input stream had lost its
        first messages (the stage continues its counters from what it published)."""
        if not inputs:
            raise ValueError("a stage needs at least one input")
        self._nc = nc
        self.service = token(service)
        self.subjects = subjects
        self.inputs = list(inputs)
        self._handler = handler
        self._publish_every = _publish_every(handler)
        self.metrics = metrics
        self._options = _Options(
            batch_size=batch_size,
            flush_timeout_s=flush_timeout_s,
            expires_s=expires_s,
            idle_heartbeat_s=idle_heartbeat_s,
            retry_backoff_s=retry_backoff_s,
            max_retry_backoff_s=max_retry_backoff_s,
        )
        self._own_publisher = publisher is None
        self.publisher = publisher or JetStreamPublisher(nc, metrics=metrics)
        self.dead_letters = DeadLetters(self.publisher, subjects, self.service, metrics)
        self._ensure_consumers = ensure_consumers
        self._rebuild = rebuild
        self._after_partial_rebuild = after_partial_rebuild
        self._tracer = tracer
        self._lock = asyncio.Lock()
        self.consumers: list[PullConsumer] = []
        self._started = False
        self._stopped = asyncio.Event()
        self.batches = 0
        self.outputs = 0
        # Highest stream sequence handled with outputs stored, per (stream, durable).
        self.marks: dict[InputKey, int] = {}
        self.skipped = 0
        self._skipped_metric = metrics.counter(
            "stage_inputs_skipped", "consumed inputs not handed to the stage again, by reason"
        )
        self._skipping: set[InputKey] = set()  # inputs whose last batch had skips (logging)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        js = self._nc.jetstream()
        opts = self._options
        for spec in self.inputs:
            if self._ensure_consumers:
                await ensure_consumer(js, spec.consumer_spec())
            key = (spec.stream, spec.durable)
            if self._rebuild:
                async with self._lock:
                    stats = await rebuild_from_input(self._nc, spec, self._handler)
                    # The rebuild handled everything up to the floor into the state.
                    self._advance_mark(key, stats.through_seq)
                    if stats.partial and self._after_partial_rebuild is not None:
                        await self._after_partial_rebuild()
            else:
                self._advance_mark(key, await _ack_floor(self._nc, spec))
            consumer = PullConsumer(
                self._nc,
                spec.stream,
                spec.durable,
                self._on_batch,
                batch_size=opts.batch_size,
                expires_s=opts.expires_s,
                idle_heartbeat_s=opts.idle_heartbeat_s,
                dead_letters=self.dead_letters,
                metrics=self.metrics,
                retry_backoff_s=opts.retry_backoff_s,
                max_retry_backoff_s=opts.max_retry_backoff_s,
            )
            await consumer.start()
            self.consumers.append(consumer)
        log.info(
            "stage %s running on %s",
            self.service,
            ", ".join(f"{i.stream}.{i.durable}" for i in self.inputs),
        )

    async def run(self) -> None:
        """Start and run until :meth:`stop`."""
        await self.start()
        await self._stopped.wait()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batches in hand, ack them, stop consuming, flush and close publishing."""
        try:
            for consumer in self.consumers:
                await consumer.stop(timeout_s)
            if self._own_publisher:
                await self.publisher.close(timeout_s)
            else:
                await self.publisher.flush(timeout_s)
        finally:
            self._stopped.set()

    async def _on_batch(self, msgs: list[Msg]) -> None:
        batch = [in_message(m) for m in msgs]
        async with self._lock:
            if self._tracer is None:
                await self._handle(batch, None)
                return
            parent = batch_trace_context(m.headers for m in batch)
            with self._tracer.start_as_current_span(
                f"{self.service}.batch",
                context=parent,
                attributes={"messaging.batch.message_count": len(batch)},
            ):
                await self._handle(batch, inject_trace())

    async def _handle(self, batch: list[InMessage], trace_headers: dict[str, str] | None) -> None:
        fresh = self._not_yet_handled(batch)
        every = self._publish_every or len(fresh) or 1
        for start in range(0, len(fresh), every):
            part = fresh[start : start + every]
            outputs = await self._handler.handle(part)
            await self._publish(outputs, trace_headers)
            self.outputs += len(outputs)
            # Each part stored before the next is handled: a publish retried across a server
            # restart is stored after those sent behind it (volstream.bus.publisher), so
            # without this a later part's output could overtake an earlier one's.
            await self.publisher.flush(self._options.flush_timeout_s)
            # Stored: from here a redelivery of the part is skipped, not handled again.
            for msg in part:
                self._advance_mark((msg.metadata.stream, msg.metadata.consumer), msg.stream_seq)
        self.batches += 1

    def _advance_mark(self, key: InputKey, stream_seq: int) -> None:
        if stream_seq > self.marks.get(key, 0):
            self.marks[key] = stream_seq

    def _not_yet_handled(self, batch: list[InMessage]) -> list[InMessage]:
        """``batch`` without the inputs handled already (at or below their input's mark, or
        repeated in the batch); those are counted and logged (module docstring)."""
        marks = self.marks
        fresh: list[InMessage] = []
        # Per input: its mark, and the highest sequence kept so far in this batch. Deliveries
        # come in stream order, so the common case is one comparison per message.
        floors: dict[InputKey, tuple[int, int]] = {}
        skipped: dict[InputKey, list[int]] = {}
        for msg in batch:
            meta = msg.metadata
            key = (meta.stream, meta.consumer)
            seq = msg.stream_seq
            mark, top = floors.get(key) or (marks.get(key, 0),) * 2
            if seq > top:
                floors[key] = (mark, seq)
                fresh.append(msg)
            elif seq <= mark or any(
                m.stream_seq == seq and m.metadata[:2] == key for m in fresh
            ):  # handled before, or already kept in this batch
                skipped.setdefault(key, []).append(seq)
            else:  # out of order but new: kept (not expected from a sole client)
                fresh.append(msg)
        for key in floors.keys() - skipped.keys():
            self._skipping.discard(key)
        for key, seqs in skipped.items():
            self._report_skipped(key, seqs)
        return fresh

    def _report_skipped(self, key: InputKey, seqs: list[int]) -> None:
        stream, durable = key
        self.skipped += len(seqs)
        self._skipped_metric.add(
            len(seqs), {"reason": SKIPPED_ALREADY_HANDLED, "stream": stream, "consumer": durable}
        )
        # INFO for the first batch of a run of batches with skips (one rewind), DEBUG after.
        level = logging.DEBUG if key in self._skipping else logging.INFO
        self._skipping.add(key)
        log.log(
            level,
            "stage %s: %d input(s) of %s.%s already handled (stream seqs %d..%d, handled "
            "through %d): acked, not handled again",
            self.service,
            len(seqs),
            stream,
            durable,
            min(seqs),
            max(seqs),
            self.marks.get(key, 0),
        )

    async def _publish(self, outputs: list[Output], trace_headers: dict[str, str] | None) -> None:
        """Publish without waiting for the acks (the flush before the batch's ack waits)."""
        publisher = self.publisher
        for out in outputs:
            if not out.jetstream:
                await self._nc.publish(out.subject, out.payload, headers=out.headers)
                continue
            headers = out.headers
            if trace_headers:
                headers = {**trace_headers, **headers} if headers else trace_headers
            await publisher.publish(out.subject, out.payload, out.msg_id, headers)
            if headers and DLQ_REASON in headers:
                self.metrics.dead_letter(headers[DLQ_REASON])
