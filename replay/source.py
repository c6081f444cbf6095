"""Reading a time range of a stream in stream order, and what a stream retains.

Times are the times JetStream stored the messages (for live market data within
milliseconds of the venue's event time; a simulator started in the past has event times
far from them). A stream can be entered at a stored time directly, and nothing else is an
index into it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg, StreamInfo
from nats.js.errors import NotFoundError, ServiceUnavailableError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from volstream.bus.consumer import parse_ack_metadata
from volstream.config import parse_rfc3339_ns


def _unavailable_retries() -> AsyncRetrying:
    """JetStream answers 503 or times out for a moment when busy (several replays creating
    streams and consumers at once): retry for up to 30 s."""
    return AsyncRetrying(
        retry=retry_if_exception_type((ServiceUnavailableError, NatsTimeoutError, TimeoutError)),
        stop=stop_after_delay(30),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        reraise=True,
    )


class RangeError(ValueError):
    """A requested range the stream cannot serve; the message names what it holds."""


def utc_datetime(ns: int) -> datetime:
    """Epoch ns as a UTC datetime (microseconds: a consumer start time's resolution here)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanos // 1000)


def short_time(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos // 1_000_000:03d}Z"


@dataclass(frozen=True)
class Retained:
    """What a stream holds now: its first and last messages' sequences and stored times."""

    stream: str
    first_seq: int
    last_seq: int
    first_ns: int
    last_ns: int

    @property
    def messages(self) -> int:
        return self.last_seq - self.first_seq + 1

    def describe(self) -> str:
        return f"{self.stream} holds {short_time(self.first_ns)} .. {short_time(self.last_ns)}"


async def retained(js: JetStreamContext, stream: str) -> Retained | None:
    """The stream's retained range; None when it does not exist or is empty."""
    try:
        info: StreamInfo = await _unavailable_retries()(js.stream_info, stream)
    except NotFoundError:
        return None
    state = info.state
    if not state.messages or not state.first_seq:
        return None
    retrying = _unavailable_retries()
    first: RawStreamMsg = await retrying(js.get_msg, stream, state.first_seq, direct=True)
    last: RawStreamMsg = await retrying(js.get_msg, stream, state.last_seq, direct=True)
    return Retained(
        stream, state.first_seq, state.last_seq, _stored_ns(first.headers), _stored_ns(last.headers)
    )


def _stored_ns(headers: dict[str, str] | None) -> int:
    """A direct get's Nats-Time-Stamp header as epoch ns."""
    stamp = (headers or {}).get("Nats-Time-Stamp", "")
    return parse_rfc3339_ns(stamp) if stamp else 0


def check_range(have: Retained | None, stream: str, from_ns: int, to_ns: int | None) -> int:
    """The end of the range to read (``to_ns``, or the last message now when None); raises
    RangeError when the range is empty or not fully retained."""
    if to_ns is not None and to_ns <= from_ns:
        raise RangeError(f"--from {short_time(from_ns)} is not before --to {short_time(to_ns)}")
    if have is None:
        raise RangeError(f"{stream} holds no messages")
    # To the millisecond the messages show, so a time copied from them is inside.
    first_ns = have.first_ns - have.first_ns % 1_000_000
    last_ns = have.last_ns - have.last_ns % 1_000_000 + 999_999
    if from_ns < first_ns or from_ns > last_ns:
        raise RangeError(
            f"--from {short_time(from_ns)} is outside what is retained: {have.describe()}"
        )
    if to_ns is not None and to_ns > last_ns:
        raise RangeError(f"--to {short_time(to_ns)} is past what is retained: {have.describe()}")
    return have.last_ns if to_ns is None else to_ns


@dataclass(frozen=True)
class Stored:
    subject: str
    data: bytes
    stream_seq: int
    stored_ns: int


class ReadInterrupted(RuntimeError):
    """The connection dropped during a read: messages delivered meanwhile were lost."""


async def read_range(
    nc: Client,
    stream: str,
    subject_filter: str,
    from_ns: int,
    to_ns: int,
    *,
    batch: int = 512,
    fetch_timeout_s: float = 2.0,
) -> AsyncIterator[list[Stored]]:
    """Messages on ``subject_filter`` stored in [from_ns, to_ns], in stream order, in lists
    of up to ``batch``. An ephemeral pull consumer without acks: the reader sets the pace,
    so nothing piles up in memory however long the range. Raises ReadInterrupted if the
    connection drops meanwhile (what was delivered during the gap is gone)."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=utc_datetime(from_ns),
        ack_policy=AckPolicy.NONE,
        filter_subject=subject_filter,
        # The reader may take a while between fetches (a busy machine, a replay's workers
        # starting); the server removes the consumer only when it is idle this long.
        inactive_threshold=600.0,
        max_waiting=1,
    )
    reconnects = nc.stats["reconnects"]
    sub: JetStreamContext.PullSubscription = await _unavailable_retries()(
        nc.jetstream().pull_subscribe, subject_filter, stream=stream, config=config
    )
    try:
        idle = 0
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=fetch_timeout_s)
            except TimeoutError:
                idle += 1
                if idle >= 2:  # nothing more stored: the range ends at the stream's end
                    return
                continue
            except ServiceUnavailableError:
                # No responder for the pull: the consumer is gone (removed by the server, or
                # JetStream restarting); what it had in hand is lost.
                raise ReadInterrupted(
                    f"JetStream stopped serving the read of {stream} (its consumer is gone): "
                    "the read is incomplete; try again"
                ) from None
            idle = 0
            if nc.stats["reconnects"] != reconnects:
                raise ReadInterrupted(
                    f"the connection to NATS dropped while reading {stream}: the read is "
                    "incomplete; try again"
                )
            out: list[Stored] = []
            done = False
            for msg in msgs:
                meta = parse_ack_metadata(msg.reply)
                if meta is None:
                    continue
                if meta.timestamp_ns > to_ns:
                    done = True
                    break
                out.append(Stored(msg.subject, msg.data, meta.stream_seq, meta.timestamp_ns))
                if meta.num_pending == 0:
                    # Caught up with the stream: what is stored later is past ``to_ns``
                    # (check_range keeps it at or before the newest message).
                    done = True
                    break
            if out:
                yield out
            if done:
                return
    finally:
        await sub.unsubscribe()
