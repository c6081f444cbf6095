"""Dead letters: every message a service could not handle, with the reason, never dropped.

A dead letter is the original payload published to ``dlq.<service>.<venue>`` (namespaced) with
headers:

- ``Volstream-Dlq-Reason``   readable reason (single line, printable ASCII, <= 480 chars)
- ``Volstream-Dlq-Service``  the service that gave up
- ``Volstream-Dlq-Subject``  the subject the message came from
- ``Volstream-Dlq-Stream`` / ``Volstream-Dlq-Seq``  its stream and sequence, when known
- ``Volstream-Dlq-Delivered``  how many times it was delivered, when known

The ``Nats-Msg-Id`` is deterministic (stream + sequence, else a digest of the subject and
payload), so dead-lettering the same message again after a restart stores it once.
"""

from __future__ import annotations

import hashlib
import re

from volstream.bus.publisher import JetStreamPublisher
from volstream.subjects import Subjects, parse_partition, token
from volstream.telemetry import Metrics

DLQ_REASON = "Volstream-Dlq-Reason"
DLQ_SERVICE = "Volstream-Dlq-Service"
DLQ_SUBJECT = "Volstream-Dlq-Subject"
DLQ_STREAM = "Volstream-Dlq-Stream"
DLQ_SEQ = "Volstream-Dlq-Seq"
DLQ_DELIVERED = "Volstream-Dlq-Delivered"

MAX_REASON_CHARS = 480
UNKNOWN_VENUE = "unknown"

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
_SPACES = re.compile(r" {2,}")


def clean_reason(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """One printable line of at most ``limit`` characters (headers cannot hold newlines)."""
    text = reason.replace("\r", " ").replace("\n", " | ").replace("\t", " ")
    text = _UNPRINTABLE.sub(
        lambda m: m.group(0).encode("ascii", "backslashreplace").decode("ascii"), text
    )
    text = _SPACES.sub(" ", text).strip() or "unspecified"
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def dead_letter_msg_id(
    service: str, original_subject: str, payload: bytes, stream: str = "", stream_seq: int = 0
) -> str:
    if stream and stream_seq:
        return f"dlq:{service}:{stream}:{stream_seq}"
    digest = hashlib.blake2b(digest_size=16)
    digest.update(original_subject.encode())
    digest.update(b"\x00")
    digest.update(payload)
    return f"dlq:{service}:{digest.hexdigest()}"


def dead_letter_headers(
    service: str,
    reason: str,
    original_subject: str = "",
    stream: str = "",
    stream_seq: int = 0,
    delivered: int = 0,
) -> dict[str, str]:
    headers = {
        DLQ_REASON: clean_reason(reason),
        DLQ_SERVICE: service,
        DLQ_SUBJECT: original_subject or "-",
    }
    if stream:
        headers[DLQ_STREAM] = stream
    if stream_seq:
        headers[DLQ_SEQ] = str(stream_seq)
    if delivered:
        headers[DLQ_DELIVERED] = str(delivered)
    return headers


def venue_of(subject: str, namespace: str = "") -> str:
    """The venue token of a volstream subject, ``unknown`` when it has none."""
    try:
        _stage, venue, _ccy, _rest = parse_partition(subject, namespace)
        return token(venue)
    except ValueError:
        return UNKNOWN_VENUE


def dead_letter_subject(subjects: Subjects, service: str, venue: str) -> str:
    try:
        return subjects.dlq(service, venue)
    except ValueError:
        return subjects.dlq(service, UNKNOWN_VENUE)


class DeadLetters:
    """Publishes dead letters for one service through a :class:`JetStreamPublisher`."""

    def __init__(
        self,
        publisher: JetStreamPublisher,
        subjects: Subjects,
        service: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.publisher = publisher
        self.subjects = subjects
        self.service = token(service)
        self.metrics = metrics
        self.sent = 0

    async def send(
        self,
        venue: str,
        payload: bytes,
        reason: str,
        original_subject: str = "",
        *,
        stream: str = "",
        stream_seq: int = 0,
        delivered: int = 0,
        msg_id: str | None = None,
    ) -> None:
        """Publish a dead letter (returns once sent; :meth:`flush` confirms storage)."""
        headers = dead_letter_headers(
            self.service, reason, original_subject, stream, stream_seq, delivered
        )
        await self.publisher.publish(
            dead_letter_subject(self.subjects, self.service, venue),
            payload,
            msg_id
            or dead_letter_msg_id(self.service, original_subject, payload, stream, stream_seq),
            headers,
        )
        self.sent += 1
        if self.metrics is not None:
            self.metrics.dead_letter(reason)

    async def send_for(
        self,
        original_subject: str,
        payload: bytes,
        reason: str,
        *,
        stream: str = "",
        stream_seq: int = 0,
        delivered: int = 0,
    ) -> None:
        """:meth:`send` with the venue taken from the original subject."""
        await self.send(
            venue_of(original_subject, self.subjects.namespace),
            payload,
            reason,
            original_subject,
            stream=stream,
            stream_seq=stream_seq,
            delivered=delivered,
        )

    async def flush(self, timeout_s: float = 10.0) -> None:
        await self.publisher.flush(timeout_s)
