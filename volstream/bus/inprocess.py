"""Stages run in one process with no NATS in between: the replay harness and the fixed-seed
equivalence check (``bench/golden_stages.py``) run the production stage handlers this way.

Every output a stage returns is appended to its stream's log and numbered the way JetStream
numbers it (per stream, from 1), then delivered to every stage input whose stream and filter
subjects match, one message per batch, in publish order (a FIFO over the whole pipeline).
Nothing depends on the wall clock or on timing, so the same input gives the same outputs
(stages stamp wall-clock fields of their own, e.g. ``publish_time_ns``; see
``volstream.bus.stage``).

What differs from the bus: batches are one message each (JetStream batches up to the runner's
batch size, so conflating stages may cut their outputs elsewhere live), dead letters are kept
in ``dead_letters`` instead of the DLQ stream, and core-NATS outputs (control requests such as
the book's resync requests) are counted and dropped: there is no venue to ask.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from volstream.bus.consumer import AckMetadata, InMessage
from volstream.bus.dlq import DLQ_REASON
from volstream.bus.stage import Output, StageHandler, StageInput
from volstream.subjects import subject_matches


@dataclass
class LocalStage:
    """A stage as the in-process bus runs it: its inputs (stream + filters) and handler."""

    name: str
    inputs: list[StageInput]
    handler: StageHandler


@dataclass(frozen=True)
class Published:
    """A message as the in-process bus stored it."""

    stream: str
    stream_seq: int
    subject: str
    payload: bytes
    headers: dict[str, str] | None
    # The producing stage's Nats-Msg-Id ("" for input fed in from outside).
    msg_id: str = ""


@dataclass
class InProcessBus:
    """Routes published messages to the stages that consume them; see the module docstring.

    ``stream_of(subject)`` names the stream a subject is stored in (None: not stored, e.g. a
    core-NATS control subject). ``on_publish`` sees every stored message, in order.
    ``stages`` is fixed once messages flow (where a subject goes is remembered).
    """

    stages: list[LocalStage]
    stream_of: Callable[[str], str | None]
    on_publish: Callable[[Published], None] | None = None
    dead_letters: list[Output] = field(default_factory=list)
    control_messages: int = 0
    _sequences: dict[str, int] = field(default_factory=dict)
    _queue: deque[Published] = field(default_factory=deque)
    _routes: dict[tuple[str, str], list[tuple[LocalStage, StageInput]]] = field(
        default_factory=dict
    )

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        stream_seq: int | None = None,
    ) -> None:
        """Store a message and run every stage it reaches, transitively, before returning.
        ``stream_seq``: its position in its stream, when the caller numbers that stream (a
        partition of a replay sees part of it, replay/parallel.py); later ones count on."""
        self._store(subject, payload, headers, stream_seq=stream_seq)
        await self.drain()

    async def publish_many(self, messages: Iterable[tuple[str, bytes]]) -> None:
        for subject, payload in messages:
            await self.publish(subject, payload)

    def _store(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        msg_id: str = "",
        stream_seq: int | None = None,
    ) -> None:
        stream = self.stream_of(subject)
        if stream is None:
            self.control_messages += 1
            return
        seq = self._sequences.get(stream, 0) + 1 if stream_seq is None else stream_seq
        self._sequences[stream] = seq
        message = Published(stream, seq, subject, payload, headers, msg_id)
        if self.on_publish is not None:
            self.on_publish(message)
        self._queue.append(message)

    def _consumers(self, stream: str, subject: str) -> list[tuple[LocalStage, StageInput]]:
        """The stage inputs a message reaches, in stage order (cached per subject: a
        replay's subjects are few and its messages many)."""
        key = (stream, subject)
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = [
                (stage, spec)
                for stage in self.stages
                for spec in stage.inputs
                if spec.stream == stream
                and any(subject_matches(f, subject) for f in spec.filter_subjects)
            ]
        return found

    async def drain(self) -> None:
        queue = self._queue
        while queue:
            message = queue.popleft()
            for stage, spec in self._consumers(message.stream, message.subject):
                meta = AckMetadata(message.stream, spec.durable, 1, message.stream_seq, 0, 0, 0)
                batch = [
                    InMessage(
                        message.subject,
                        message.payload,
                        message.headers,
                        message.stream_seq,
                        meta,
                    )
                ]
                for out in await stage.handler.handle(batch):
                    if out.headers and DLQ_REASON in out.headers:
                        self.dead_letters.append(out)
                    elif out.jetstream:
                        self._store(out.subject, out.payload, out.headers, out.msg_id)
                    else:
                        self.control_messages += 1
