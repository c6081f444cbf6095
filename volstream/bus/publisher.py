"""Asynchronous JetStream publishing with a bounded in-flight window and safe retries.

Why not ``js.publish_async`` directly: in nats-py 2.16 a publish whose ack is an *error*
(429 ingest queue full, 503, stream mismatch) never resolves its future, and
``publish_async_completed()`` then hangs forever (docs/architecture.md section 9). This publisher
speaks the same protocol (a PUB with a reply inbox; JetStream answers with a PubAck JSON)
through its own ack subscription, so it sees error acks immediately and can act on them:

- every message carries the caller's deterministic ``Nats-Msg-Id``; a retry republishes the
  *same* id, so JetStream's duplicate window makes retries safe (a stored message answers
  ``duplicate: true``);
- retryable errors (429, 503, 500, no responders) back off exponentially with jitter, for
  at least ``max_attempts`` attempts and at least ``retry_for_s`` (30 s: a cluster's leader
  election); others (400 bad request, stream mismatch ...) fail at once;
- a message not acknowledged within ``ack_timeout_s`` is republished;
- after a reconnect, everything sent before the drop is republished at once (its ack was
  lost with the connection), without counting against ``max_attempts``;
- the window is bounded in bytes (default 32 MiB: well under the ~128 MB at which the
  server's ingest queue starts answering 429) and in messages; a full window makes
  :meth:`JetStreamPublisher.publish` wait (back-pressure), never longer than
  ``enqueue_timeout_s``;
- every wait has a timeout. :meth:`JetStreamPublisher.flush` returns when everything sent so
  far is stored, or raises :class:`PublishError` (listing what failed after its retries) or
  :class:`TimeoutError`.

Ordering: messages are sent in call order, but a message that is retried is stored after
messages sent behind it. Consumers that care about order check the sequence in the event
header (every volstream event carries one).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections import deque
from dataclasses import dataclass

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import OutboundBufferLimitError

from volstream.telemetry import Metrics

log = logging.getLogger("volstream.bus")

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"
MIB = 1024 * 1024

# Ack error codes worth retrying: overload, unavailable (no JetStream/leader yet), internal.
RETRYABLE_CODES = frozenset({408, 429, 500, 503})
MAX_REPORTED_FAILURES = 10_000


class PublishError(RuntimeError):
    """Some publishes failed for good (after their retries). ``failures`` lists them."""

    def __init__(self, failures: list[FailedPublish]) -> None:
        self.failures = failures
        sample = "; ".join(f"{f.subject} [{f.msg_id}]: {f.reason}" for f in failures[:3])
        more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} JetStream publish(es) failed: {sample}{more}")


class PublishBackpressureTimeout(TimeoutError):
    """The in-flight window stayed full for longer than ``enqueue_timeout_s``."""


@dataclass(frozen=True)
class FailedPublish:
    subject: str
    msg_id: str
    reason: str


@dataclass(frozen=True)
class PublisherStats:
    published: int
    duplicates: int
    retries: int
    failures: int
    in_flight: int
    in_flight_bytes: int


class _InFlight:
    __slots__ = (
        "attempts",
        "created_at",
        "generation",
        "headers",
        "msg_id",
        "payload",
        "sent_at",
        "size",
        "subject",
        "token",
    )

    def __init__(
        self, token: str, subject: str, payload: bytes, msg_id: str, headers: dict[str, str]
    ) -> None:
        self.token = token
        self.subject = subject
        self.payload = payload
        self.msg_id = msg_id
        self.headers = headers
        self.size = len(payload) + len(subject) + 64
        self.attempts = 1
        self.generation = 0
        self.sent_at = 0.0
        self.created_at = time.monotonic()


class JetStreamPublisher:
    """Pipelined JetStream publisher. One instance per connection and service is enough."""

    def __init__(
        self,
        nc: Client,
        *,
        metrics: Metrics | None = None,
        max_inflight_bytes: int = 32 * MIB,
        max_inflight_msgs: int = 20_000,
        ack_timeout_s: float = 5.0,
        max_attempts: int = 8,
        retry_for_s: float = 30.0,
        retry_backoff_s: float = 0.1,
        max_retry_backoff_s: float = 2.0,
        enqueue_timeout_s: float = 60.0,
        expected_stream: str | None = None,
        tick_s: float = 0.05,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._nc = nc
        self._metrics = metrics
        self._max_bytes = max_inflight_bytes
        self._max_msgs = max_inflight_msgs
        self._ack_timeout_s = ack_timeout_s
        self._max_attempts = max_attempts
        self._retry_for_s = retry_for_s
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._enqueue_timeout_s = enqueue_timeout_s
        self._expected_stream = expected_stream
        self._tick_s = tick_s

        self._prefix = ""
        self._prefix_len = 0
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False

        self._next_token = 0
        self._inflight: dict[str, _InFlight] = {}
        self._inflight_bytes = 0
        # Ack deadlines in send order (all share ack_timeout_s, so the deque stays sorted).
        self._deadlines: deque[tuple[float, str, int]] = deque()
        # Delayed retries: (due, tie-breaker, token, generation, counts_as_attempt).
        self._retry_heap: list[tuple[float, int, str, int, bool]] = []
        self._retry_seq = 0
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Reported (and cleared) by flush(); bounded for callers that never flush.
        self._failed: deque[FailedPublish] = deque(maxlen=MAX_REPORTED_FAILURES)
        self._fail_logged_at = 0.0

        self._seen_reconnects = int(nc.stats.get("reconnects", 0))
        self._disconnected_at: float | None = None

        self.published = 0
        self.duplicates = 0
        self.retries = 0
        self.failures = 0
        self._reported = (0, 0, 0, 0)

    # --- public API ------------------------------------------------------------------------
    async def publish(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send one message; returns once it is sent (acks are awaited in :meth:`flush`).

        Waits while the in-flight window is full. ``msg_id`` must be deterministic (derived
        from the source and sequence of what the message carries), so a retry or a
        restarted publisher cannot store the message twice.
        """
        if self._closed:
            raise RuntimeError("publisher is closed")
        if self._sub is None:
            await self._start()
        if not msg_id:
            raise ValueError("msg_id is required (deterministic Nats-Msg-Id)")
        hdrs = dict(headers) if headers else {}
        hdrs[MSG_ID_HEADER] = msg_id
        if self._expected_stream:
            hdrs[EXPECTED_STREAM_HEADER] = self._expected_stream
        self._next_token += 1
        entry = _InFlight(str(self._next_token), subject, payload, msg_id, hdrs)
        if len(self._inflight) >= self._max_msgs or (
            self._inflight and self._inflight_bytes + entry.size > self._max_bytes
        ):
            await self._wait_for_window(entry.size)
        self._inflight[entry.token] = entry
        self._inflight_bytes += entry.size
        self._idle.clear()
        try:
            await self._send(entry)
        except Exception:
            # Caller errors (bad subject/header, payload too large, connection closed):
            # nothing was sent, so nothing is in flight.
            self._forget(entry)
            raise

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every message published so far is stored.

        Raises :class:`PublishError` if some failed after their retries (they are reported
        once), :class:`TimeoutError` if acks are still missing after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while self._inflight:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{len(self._inflight)} JetStream publish(es) unacknowledged after "
                    f"{timeout_s:.1f}s (connected={self._nc.is_connected})"
                )
            self._idle.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._idle.wait()
            except TimeoutError:
                pass
        self._report_metrics()
        if self._failed:
            failed = list(self._failed)
            self._failed.clear()
            raise PublishError(failed)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush, then stop the retry timer and the ack subscription."""
        try:
            if self._sub is not None and not self._closed:
                await self.flush(timeout_s)
        finally:
            self._closed = True
            if self._sweeper is not None:
                self._sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sweeper
                self._sweeper = None
            if self._sub is not None and not self._nc.is_closed:
                try:
                    await self._sub.unsubscribe()
                except Exception as exc:  # already gone with the connection
                    log.debug("publisher ack unsubscribe: %s", exc)
            self._sub = None
            self._report_metrics()

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def in_flight_bytes(self) -> int:
        return self._inflight_bytes

    def stats(self) -> PublisherStats:
        return PublisherStats(
            published=self.published,
            duplicates=self.duplicates,
            retries=self.retries,
            failures=self.failures,
            in_flight=len(self._inflight),
            in_flight_bytes=self._inflight_bytes,
        )

    # --- internals ------------------------------------------------------------------------
    async def _start(self) -> None:
        async with self._start_lock:
            if self._sub is not None:
                return
            self._prefix = self._nc.new_inbox() + "."
            self._prefix_len = len(self._prefix)
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="volstream-publisher-sweeper"
            )

    async def _wait_for_window(self, size: int) -> None:
        deadline = time.monotonic() + self._enqueue_timeout_s
        while len(self._inflight) >= self._max_msgs or (
            self._inflight and self._inflight_bytes + size > self._max_bytes
        ):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PublishBackpressureTimeout(
                    f"publish window full ({len(self._inflight)} msgs, "
                    f"{self._inflight_bytes} bytes) for {self._enqueue_timeout_s:.0f}s"
                )
            self._space.clear()
            try:
                async with asyncio.timeout(min(remaining, 1.0)):
                    await self._space.wait()
            except TimeoutError:
                pass

    async def _send(self, entry: _InFlight) -> None:
        entry.generation += 1
        entry.sent_at = time.monotonic()
        try:
            await self._nc.publish(
                entry.subject,
                entry.payload,
                reply=self._prefix + entry.token,
                headers=entry.headers,
            )
        except OutboundBufferLimitError:
            # Disconnected with a full outgoing buffer: try again shortly.
            self._schedule_retry(entry, self._tick_s * 2, counts_as_attempt=False)
            return
        self._deadlines.append((entry.sent_at + self._ack_timeout_s, entry.token, entry.generation))

    def _forget(self, entry: _InFlight) -> None:
        if self._inflight.pop(entry.token, None) is not None:
            self._inflight_bytes -= entry.size
            self._space.set()
            if not self._inflight:
                self._idle.set()

    def _complete(self, entry: _InFlight, duplicate: bool) -> None:
        if duplicate:
            self.duplicates += 1
        else:
            self.published += 1
        self._forget(entry)

    def _fail(self, entry: _InFlight, reason: str) -> None:
        self.failures += 1
        self._failed.append(FailedPublish(entry.subject, entry.msg_id, reason))
        now = time.monotonic()
        if now - self._fail_logged_at >= 1.0:  # a failing stream fails every message
            self._fail_logged_at = now
            log.error(
                "publish %s [%s] failed after %d attempt(s): %s (%d failure(s) so far)",
                entry.subject,
                entry.msg_id,
                entry.attempts,
                reason,
                self.failures,
            )
        self._forget(entry)

    def _may_retry(self, entry: _InFlight) -> bool:
        """Retry while under ``max_attempts`` or younger than ``retry_for_s``: a JetStream
        cluster answers 503 (no stream leader) or not at all for the seconds a leader
        election takes, and a count of fast retries alone would give up inside it."""
        return (
            entry.attempts < self._max_attempts
            or time.monotonic() - entry.created_at < self._retry_for_s
        )

    def _backoff(self, attempts: int) -> float:
        delay = min(self._max_retry_backoff_s, self._retry_backoff_s * 2.0 ** max(0, attempts - 1))
        return float(delay * random.uniform(0.5, 1.0))

    def _schedule_retry(self, entry: _InFlight, delay: float, counts_as_attempt: bool) -> None:
        entry.generation += 1  # invalidates the pending ack deadline
        self._retry_seq += 1
        heapq.heappush(
            self._retry_heap,
            (
                time.monotonic() + delay,
                self._retry_seq,
                entry.token,
                entry.generation,
                counts_as_attempt,
            ),
        )

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._inflight.get(msg.subject[self._prefix_len :])
        if entry is None:
            return  # late ack of something already settled
        try:
            headers = msg.headers
            status = headers.get("Status") if headers else None
            if status and not msg.data:
                # e.g. 503 "no responders": no stream (yet) for the subject, or no JetStream.
                code = int(status) if status.isdigit() else 503
                desc = headers.get("Description", "") if headers else ""
                self._on_error(entry, code, 0, desc or "no responders")
                return
            resp = orjson.loads(msg.data)
            error = resp.get("error")
            if error:
                self._on_error(
                    entry,
                    int(error.get("code", 0)),
                    int(error.get("err_code", 0)),
                    str(error.get("description", "")),
                )
                return
            self._complete(entry, bool(resp.get("duplicate", False)))
        except Exception as exc:  # a malformed ack must not kill the subscription
            log.warning("unreadable JetStream ack for %s: %s", entry.subject, exc)
            self._schedule_retry(entry, self._backoff(entry.attempts), counts_as_attempt=True)

    def _on_error(self, entry: _InFlight, code: int, err_code: int, description: str) -> None:
        reason = f"{code}/{err_code} {description}".strip()
        if code in RETRYABLE_CODES and self._may_retry(entry):
            log.debug("publish %s [%s]: %s, retrying", entry.subject, entry.msg_id, reason)
            self._schedule_retry(entry, self._backoff(entry.attempts), counts_as_attempt=True)
        else:
            self._fail(entry, reason)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publisher sweep failed")

    async def _sweep(self) -> None:
        now = time.monotonic()
        connected = self._nc.is_connected
        if not connected and self._disconnected_at is None:
            self._disconnected_at = now
        reconnects = int(self._nc.stats.get("reconnects", 0))
        if reconnects != self._seen_reconnects:
            # Acks of whatever was sent before the drop died with the connection.
            self._seen_reconnects = reconnects
            cutoff = self._disconnected_at if self._disconnected_at is not None else now
            lost = [e for e in self._inflight.values() if e.sent_at <= cutoff]
            for entry in lost:
                self._schedule_retry(entry, 0.0, counts_as_attempt=False)
            if lost:
                log.info("republishing %d message(s) in flight across a reconnect", len(lost))
        if connected:
            self._disconnected_at = None

        while self._deadlines and self._deadlines[0][0] <= now:
            _, token, generation = self._deadlines.popleft()
            due = self._inflight.get(token)
            if due is None or due.generation != generation:
                continue
            entry = due
            if not connected:
                self._schedule_retry(entry, self._tick_s, counts_as_attempt=False)
            elif not self._may_retry(entry):
                self._fail(
                    entry, f"no ack after {entry.attempts} attempt(s) of {self._ack_timeout_s}s"
                )
            else:
                entry.attempts += 1
                self.retries += 1
                await self._resend(entry)

        while self._retry_heap and self._retry_heap[0][0] <= now:
            _, _, token, generation, counts = heapq.heappop(self._retry_heap)
            retry = self._inflight.get(token)
            if retry is None or retry.generation != generation:
                continue
            entry = retry
            if not self._nc.is_connected:
                self._schedule_retry(entry, self._tick_s, counts_as_attempt=counts)
                continue
            if counts:
                entry.attempts += 1
            self.retries += 1
            await self._resend(entry)
        self._report_metrics()

    async def _resend(self, entry: _InFlight) -> None:
        try:
            await self._send(entry)
        except Exception as exc:
            self._fail(entry, f"republish failed: {type(exc).__name__}: {exc}")

    def _report_metrics(self) -> None:
        if self._metrics is None:
            return
        out = self.published + self.duplicates
        last_out, last_retries, last_failures, last_duplicates = self._reported
        self._metrics.events_out.add(out - last_out)
        self._metrics.publish_duplicates.add(self.duplicates - last_duplicates)
        self._metrics.publish_retries.add(self.retries - last_retries)
        self._metrics.failures.add(self.failures - last_failures, {"kind": "publish"})
        self._reported = (out, self.retries, self.failures, self.duplicates)
