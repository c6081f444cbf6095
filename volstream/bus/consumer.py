"""Durable JetStream pull consumer driven by callbacks (fast pattern, docs/architecture.md §9).

Pulling: one inbox subscription with a callback receives everything. Batches are requested by
publishing ``{"batch": N, "expires": ns, "idle_heartbeat": ns}`` to
``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`` with reply subject ``<inbox>.<token>`` (status
messages arrive on that subject, so each request is identifiable). About two batches are
requested ahead: the next batch is on its way while the handler works on the current one.
Requests that expire (``408``), are refused (``409``), or stall (no idle heartbeat within two
intervals) are replaced; after a reconnect the pull is re-issued at once.

Handling: delivered messages are buffered and handed to ``await handler(msgs)`` in batches of
up to ``batch_size``, *serially*, in delivery order (per-partition order is preserved). Then
the batch is acknowledged:

- ``AckPolicy.ALL`` (the default of :class:`~volstream.bus.streams.ConsumerSpec`): one ack of
  the last message acknowledges the whole batch (the fastest pull pattern measured);
- ``AckPolicy.EXPLICIT``: each message is acked; ``AckPolicy.NONE``: nothing is acked.

AckAll needs care, because an ack also acknowledges every *earlier delivered* message,
including one the client never received or has not handled yet. This consumer therefore
assumes it is the only client of its durable (volstream scales by partition: one owner per
durable) and keeps the invariant "never ack past an unhandled message":

- deliveries are numbered by the consumer sequence, without gaps for a sole client. A gap (or
  an idle heartbeat naming a delivery we never got) means deliveries were lost on the wire
  (reconnect, server restart): the durable is *rewound* to its ack floor with JetStream's
  consumer reset (nats-server 2.14+) and everything after it is redelivered in order;
- at :meth:`PullConsumer.start`, deliveries still unacknowledged (a previous instance crashed
  or stopped with messages on the wire) are rewound the same way, at once rather than after
  ``ack_wait``.

Failures (the handler raised):

- logged and counted; nothing of the failed batch is acked;
- the batch is retried at once one message at a time, to isolate the culprit; messages before
  it are handled and acked;
- the failing message and everything after it are redelivered in order: after a back-off
  (``retry_backoff_s`` doubling per failure, capped) the durable is rewound to the failing
  message's stream sequence. (A nak would let later messages overtake it, and acking those
  would acknowledge it under AckAll.) Rewinding resets the server's delivery count, so the
  consumer counts failures per stream sequence itself; the count used below is the larger of
  that and the delivery count in the reply subject;
- a message that has failed on its own ``dead_letter_after`` times (default ``max_deliver - 1``
  of the durable) is dead-lettered with the exception text as reason and acked, so a poison
  message cannot wedge its partition. Without a :class:`~volstream.bus.dlq.DeadLetters` it
  is logged at ERROR and skipped (still never silently).

A message that kills the *process* (rather than raising) is not counted across restarts.

Stopping (:meth:`PullConsumer.stop`) finishes and acks the current batch (the last ack is
confirmed by the server), unsubscribes, and naks what was delivered but not handled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy

from volstream.bus.dlq import DeadLetters
from volstream.telemetry import Metrics

log = logging.getLogger("volstream.bus")

ACK = b"+ACK"
NAK = b"-NAK"
IN_PROGRESS = b"+WPI"
DEFAULT_DEAD_LETTER_AFTER = 10  # when the consumer itself has no max_deliver


class AckMetadata(NamedTuple):
    """What JetStream encodes in a delivered message's reply subject."""

    stream: str
    consumer: str
    num_delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    num_pending: int
    domain: str = ""


_new_metadata = tuple.__new__  # skips NamedTuple's argument handling on the hot path


def parse_ack_metadata(reply: str) -> AckMetadata | None:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (and the
    12-token form with domain and account hash). ``None`` if ``reply`` is not a JS ack."""
    t = reply.split(".")
    n = len(t)
    if n < 9 or t[0] != "$JS" or t[1] != "ACK":
        return None
    try:
        if n == 9:
            return _new_metadata(
                AckMetadata,
                (t[2], t[3], int(t[4]), int(t[5]), int(t[6]), int(t[7]), int(t[8]), ""),
            )
        if n >= 11:
            domain = "" if t[2] == "_" else t[2]
            return AckMetadata(
                t[4], t[5], int(t[6]), int(t[7]), int(t[8]), int(t[9]), int(t[10]), domain
            )
    except ValueError:
        return None
    return None


class InMessage(NamedTuple):
    """A consumed message as handlers see it."""

    subject: str
    data: bytes
    headers: dict[str, str] | None
    stream_seq: int
    metadata: AckMetadata


def in_message(msg: Msg) -> InMessage:
    meta = parse_ack_metadata(msg.reply)
    if meta is None:
        raise ValueError(f"not a JetStream message (reply {msg.reply!r})")
    return InMessage(msg.subject, msg.data, msg.headers, meta.stream_seq, meta)


BatchHandler = Callable[[list[Msg]], Awaitable[None]]


@dataclass
class ConsumerStats:
    delivered: int = 0
    processed: int = 0
    batches: int = 0
    failures: int = 0
    retries: int = 0
    dead_letters: int = 0
    pull_requests: int = 0
    stalls: int = 0
    resets: int = 0
    dropped_stale: int = 0
    lag: int = 0


class _Delivery(NamedTuple):
    msg: Msg
    meta: AckMetadata


class _Pull:
    __slots__ = ("expires_at", "remaining")

    def __init__(self, batch: int, expires_at: float) -> None:
        self.remaining = batch
        self.expires_at = expires_at


class PullConsumer:
    """Consume the durable pull consumer ``durable`` of ``stream`` into ``handler``.

    The durable must exist (see :func:`~volstream.bus.streams.ensure_consumer`); its ack
    policy, ``max_deliver`` and ``ack_wait`` are read at :meth:`start`.
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        handler: BatchHandler,
        *,
        batch_size: int = 256,
        expires_s: float = 15.0,
        idle_heartbeat_s: float = 2.5,
        max_request_bytes: int = 0,
        dead_letters: DeadLetters | None = None,
        metrics: Metrics | None = None,
        dead_letter_after: int | None = None,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 10.0,
        linger_s: float = 0.0,
        api_prefix: str = "$JS.API",
        tick_s: float = 0.25,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if idle_heartbeat_s * 2 > expires_s:
            raise ValueError("expires_s must be at least twice idle_heartbeat_s")
        self._nc = nc
        self.stream = stream
        self.durable = durable
        self._handler = handler
        self._batch_size = batch_size
        self._expires_s = expires_s
        self._heartbeat_s = idle_heartbeat_s
        self._max_request_bytes = max_request_bytes
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._dead_letter_after_arg = dead_letter_after
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._linger_s = linger_s
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._tick_s = tick_s
        self._attrs = {"stream": stream, "consumer": durable}

        self._ack_policy = AckPolicy.ALL
        self._acking = True
        self._max_deliver = -1
        self._ack_wait_s = 30.0
        self._dead_letter_after = DEFAULT_DEAD_LETTER_AFTER

        self._inbox = ""
        self._inbox_len = 0
        self._sub: Subscription | None = None
        self._worker: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()

        self._buffer: deque[_Delivery] = deque()
        # Open pull requests by reply token, oldest first (JetStream fills them in order).
        self._pulls: dict[str, _Pull] = {}
        self._pull_seq = 0
        self._last_activity = 0.0
        self._seen_reconnects = 0

        # Consumer sequence expected next (0: unknown). Between a detected loss (or a failure)
        # and the first delivery after the rewind, deliveries are stale and dropped.
        self._expected_cseq = 0
        self._discarding = False
        self._rewind_seq = 0  # stream seq to rewind to; 0: the ack floor
        self._reset_sent = False
        self._reset_done_at: float | None = None
        self._last_acked: Msg | None = None
        # Failures of messages handled on their own, by stream sequence.
        self._failures: dict[int, int] = {}

        self.stats = ConsumerStats()

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        js = self._nc.jetstream()
        info = await js.consumer_info(self.stream, self.durable)
        config = info.config
        self._ack_policy = AckPolicy(config.ack_policy or AckPolicy.ALL)
        self._acking = self._ack_policy != AckPolicy.NONE
        self._max_deliver = config.max_deliver if config.max_deliver is not None else -1
        self._ack_wait_s = float(config.ack_wait or 30.0)
        if self._dead_letter_after_arg is not None:
            self._dead_letter_after = max(1, self._dead_letter_after_arg)
        elif self._max_deliver > 1:
            self._dead_letter_after = self._max_deliver - 1
        elif self._max_deliver == 1:
            self._dead_letter_after = 1
        if self._ack_policy == AckPolicy.NONE:
            log.warning(
                "consumer %s.%s uses AckPolicy.NONE: failed messages cannot be redelivered "
                "and go straight to dead letters",
                self.stream,
                self.durable,
            )
        self._expected_cseq = (info.delivered.consumer_seq if info.delivered else 0) + 1
        if self._ack_policy != AckPolicy.NONE and (info.num_ack_pending or 0) > 0:
            try:
                await self._reset(0, f"{info.num_ack_pending} delivered but unacked")
            except Exception as exc:
                raise RuntimeError(
                    f"consumer {self.stream}.{self.durable}: cannot rewind to the ack floor "
                    f"({type(exc).__name__}: {exc}); PullConsumer needs nats-server >= 2.14 "
                    "(consumer reset)"
                ) from exc
            self._expected_cseq = 1
        self._inbox = self._nc.new_inbox()
        self._inbox_len = len(self._inbox) + 1
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on_msg)
        self._seen_reconnects = int(self._nc.stats.get("reconnects", 0))
        self._last_activity = time.monotonic()
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._work(), name=f"pull-{self.durable}")
        self._watchdog = loop.create_task(self._watch(), name=f"pull-watch-{self.durable}")
        log.info(
            "consuming %s.%s (batch %d, ack %s, dead-letter after %d failures)",
            self.stream,
            self.durable,
            self._batch_size,
            self._ack_policy.value,
            self._dead_letter_after,
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish and ack the current batch, unsubscribe, hand back undelivered work."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._wake.set()
        try:
            if self._worker is not None:
                done, _ = await asyncio.wait([self._worker], timeout=timeout_s)
                if not done:
                    log.warning(
                        "consumer %s: handler still busy after %.1fs", self.durable, timeout_s
                    )
                    self._worker.cancel()
                await asyncio.gather(self._worker, return_exceptions=True)
            if self._watchdog is not None:
                self._watchdog.cancel()
                await asyncio.gather(self._watchdog, return_exceptions=True)
            if self._sub is not None and not self._nc.is_closed:
                await self._hand_back(timeout_s)
            self._sub = None
        finally:
            self._stopped.set()

    async def _hand_back(self, timeout_s: float) -> None:
        if self._last_acked is not None and self._ack_policy != AckPolicy.NONE:
            # Confirmed ack: the next instance must find the ack floor where we left it.
            try:
                await self._nc.request(self._last_acked.reply, ACK, timeout=2.0)
            except Exception as exc:
                log.warning("consumer %s: final ack unconfirmed: %s", self.durable, exc)
        assert self._sub is not None
        await self._sub.unsubscribe()
        # Unsubscribed first so that these naks are not redelivered to us.
        leftovers = [] if self._discarding else list(self._buffer)
        self._buffer.clear()
        if self._ack_policy != AckPolicy.NONE:
            for d in leftovers:
                await self._nc.publish(d.msg.reply, NAK)
        try:
            await self._nc.flush(timeout=max(1, int(timeout_s)))
        except Exception as exc:
            log.warning("consumer %s: final flush failed: %s", self.durable, exc)

    @property
    def lag(self) -> int:
        """Messages not yet handled: pending in the stream for this consumer + buffered here."""
        return self.stats.lag

    async def refresh_lag(self) -> int:
        """Ask the server: pending + ack-pending for this durable (what autoscalers use)."""
        info = await self._nc.jetstream().consumer_info(self.stream, self.durable)
        lag = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        self._set_lag(lag)
        return lag

    # --- receiving --------------------------------------------------------------------------
    async def _on_msg(self, msg: Msg) -> None:
        reply = msg.reply
        if reply:
            meta = parse_ack_metadata(reply)
            if meta is not None:
                self._last_activity = time.monotonic()
                pulls = self._pulls
                if pulls:
                    token = next(iter(pulls))
                    pull = pulls[token]
                    pull.remaining -= 1
                    if pull.remaining <= 0:
                        del pulls[token]
                cseq = meta.consumer_seq
                if self._discarding:
                    if not (self._reset_sent and cseq == 1):
                        self.stats.dropped_stale += 1
                        return
                    self._discarding = False  # the first delivery after the rewind
                elif cseq != self._expected_cseq and self._expected_cseq and self._acking:
                    self._lost(f"delivery {cseq} arrived, expected {self._expected_cseq}")
                    return
                self._expected_cseq = cseq + 1
                self._buffer.append(_Delivery(msg, meta))
                self.stats.delivered += 1
                self._wake.set()
                return
        self._on_status(msg)

    def _on_status(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == "100":  # idle heartbeat: the pull is alive, nothing to deliver
            self._check_heartbeat(headers.get("Nats-Last-Consumer", ""))
            return
        # 408 expired, 404 nothing (no-wait), 409 refused/ended (max waiting, consumer
        # deleted, leadership change ...): that request is over either way.
        self._pulls.pop(msg.subject[self._inbox_len :], None)
        if status not in ("408", "404"):
            description = headers.get("Description", "")
            log.warning(
                "consumer %s.%s pull answered %s %s", self.stream, self.durable, status, description
            )
        self._wake.set()

    def _check_heartbeat(self, last_delivered: str) -> None:
        """A heartbeat names the last delivery: did we receive it?"""
        if last_delivered.isdigit() and self._acking:
            last = int(last_delivered)
            if self._discarding:
                done = self._reset_done_at
                if done is not None and last >= 1 and time.monotonic() - done > self._heartbeat_s:
                    self._lost("the first delivery after a rewind was lost")
                return
            if self._expected_cseq and last >= self._expected_cseq:
                self._lost(f"server delivered up to {last}, received {self._expected_cseq - 1}")
                return
        if not self._buffer:
            self._set_lag(0)

    async def _maybe_pull(self) -> None:
        """Keep about two batches requested ahead of what is buffered."""
        if self._stopping or self._sub is None or not self._nc.is_connected:
            return
        outstanding = sum(p.remaining for p in self._pulls.values())
        if len(self._buffer) + outstanding > self._batch_size:
            return
        self._pull_seq += 1
        token = str(self._pull_seq)
        request: dict[str, int] = {
            "batch": self._batch_size,
            "expires": int(self._expires_s * 1e9),
            "idle_heartbeat": int(self._heartbeat_s * 1e9),
        }
        if self._max_request_bytes:
            request["max_bytes"] = self._max_request_bytes
        self._pulls[token] = _Pull(self._batch_size, time.monotonic() + self._expires_s)
        self.stats.pull_requests += 1
        await self._nc.publish(
            self._next_subject, orjson.dumps(request), reply=f"{self._inbox}.{token}"
        )

    def _reset_pulls(self, why: str) -> None:
        if self._pulls:
            log.info("consumer %s.%s: re-issuing pull (%s)", self.stream, self.durable, why)
        self._pulls.clear()
        self._last_activity = time.monotonic()
        self._wake.set()

    # --- rewinding ------------------------------------------------------------------------
    def _lost(self, why: str) -> None:
        log.warning(
            "consumer %s.%s: deliveries lost on the wire (%s); rewinding to the ack floor",
            self.stream,
            self.durable,
            why,
        )
        self._request_rewind(0)

    def _request_rewind(self, stream_seq: int) -> None:
        """Drop deliveries from now on; the worker rewinds the durable (0: to its ack floor)."""
        if self._discarding and not self._reset_sent:
            # A rewind is pending already: keep the earlier point (the floor is earliest).
            both = self._rewind_seq and stream_seq
            self._rewind_seq = min(self._rewind_seq, stream_seq) if both else 0
        else:
            self._rewind_seq = stream_seq
        self._discarding = True
        self._reset_sent = False
        self._reset_done_at = None
        self._wake.set()

    async def _reset(self, stream_seq: int, why: str) -> None:
        js = self._nc.jetstream()
        await self._nc.flush(timeout=2)  # our acks first, so that the floor is current
        result = await js.reset_consumer(self.stream, self.durable, stream_seq or None)
        self.stats.resets += 1
        log.info(
            "consumer %s.%s rewound (%s): next stream seq >= %s",
            self.stream,
            self.durable,
            why,
            getattr(result, "reset_seq", "?"),
        )

    async def _rewind(self) -> None:
        """Drop what we hold (it will be redelivered) and reset the durable."""
        self._buffer.clear()
        self._pulls.clear()
        self._reset_sent = True  # from here a delivery numbered 1 is the first after the reset
        seq = self._rewind_seq
        try:
            await self._reset(seq, f"to stream seq {seq}" if seq else "to the ack floor")
        except Exception as exc:
            log.error(
                "consumer %s.%s: rewind failed (%s: %s); retrying",
                self.stream,
                self.durable,
                type(exc).__name__,
                exc,
            )
            self._reset_sent = False
            await asyncio.sleep(self._tick_s * 4)
            return
        self._rewind_seq = 0
        self._reset_done_at = self._last_activity = time.monotonic()

    async def _watch(self) -> None:
        """Reconnects, stalled pulls, requests whose 408 never came."""
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                now = time.monotonic()
                reconnects = int(self._nc.stats.get("reconnects", 0))
                if reconnects != self._seen_reconnects:
                    self._seen_reconnects = reconnects
                    self._reset_pulls("reconnected")
                elif self._pulls and now - self._last_activity > 2 * self._heartbeat_s + 0.5:
                    self.stats.stalls += 1
                    self._reset_pulls("no heartbeat")
                else:
                    expired = [
                        t for t, p in self._pulls.items() if now > p.expires_at + self._heartbeat_s
                    ]
                    for t in expired:
                        del self._pulls[t]
                if not self._pulls and not self._stopping:
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer %s watchdog", self.durable)

    # --- handling ----------------------------------------------------------------------------
    async def _work(self) -> None:
        while not self._stopping:
            try:
                await self._work_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._nc.is_closed:
                    log.warning("consumer %s.%s: connection closed", self.stream, self.durable)
                    return
                # What was in hand may be neither acked nor retried: start again from the floor.
                log.exception("consumer %s.%s: worker error, rewinding", self.stream, self.durable)
                self._request_rewind(0)
                await asyncio.sleep(self._tick_s)

    async def _work_once(self) -> None:
        if self._discarding and not self._reset_sent:
            await self._rewind()
            return
        await self._maybe_pull()
        if not self._buffer:
            self._wake.clear()
            try:
                async with asyncio.timeout(self._tick_s * 4):
                    await self._wake.wait()
            except TimeoutError:
                pass
            return
        if self._linger_s and len(self._buffer) < self._batch_size:
            await asyncio.sleep(self._linger_s)
        buffer = self._buffer
        n = min(len(buffer), self._batch_size)
        batch = [buffer.popleft() for _ in range(n)]
        await self._maybe_pull()  # the next batch travels while this one is handled
        await self._process(batch)

    async def _process(self, batch: list[_Delivery]) -> None:
        failures = self._failures
        careful = bool(failures) and any(d.meta.stream_seq in failures for d in batch)
        i = 0
        while i < len(batch):
            if self._discarding:
                return  # lost deliveries detected meanwhile: the rewind redelivers the rest
            group = batch[i : i + 1] if careful else batch[i:]
            error = await self._call_handler(group)
            if error is None:
                await self._ack(group)
                if failures:
                    for d in group:
                        failures.pop(d.meta.stream_seq, None)
                i += len(group)
                continue
            self.stats.failures += 1
            if self._metrics is not None:
                self._metrics.failures.add(1, {"kind": "handler", **self._attrs})
            first = group[0]
            log.warning(
                "consumer %s.%s: handler failed on %d message(s) from seq %d: %s: %s",
                self.stream,
                self.durable,
                len(group),
                first.meta.stream_seq,
                type(error).__name__,
                error,
            )
            if len(group) > 1:
                careful = True  # find the culprit now, one message at a time
                continue
            seq = first.meta.stream_seq
            failed = failures[seq] = failures.get(seq, 0) + 1
            attempts = max(failed, first.meta.num_delivered)
            give_up = self._ack_policy == AckPolicy.NONE or attempts >= self._dead_letter_after
            if give_up and await self._dead_letter(first, error, attempts):
                await self._ack(group)
                failures.pop(seq, None)
                i += 1
                continue
            await self._retry_from(seq, failed)
            return

    async def _call_handler(self, group: list[_Delivery]) -> Exception | None:
        loop = asyncio.get_running_loop()
        keeper: list[asyncio.Task[None]] = []
        timer = None
        if self._ack_policy != AckPolicy.NONE:
            timer = loop.call_later(
                self._ack_wait_s / 2,
                lambda: keeper.append(loop.create_task(self._keep_in_progress(group))),
            )
        started = time.perf_counter()
        try:
            await self._handler([d.msg for d in group])
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return exc
        finally:
            if timer is not None:
                timer.cancel()
            for task in keeper:
                task.cancel()
            if self._metrics is not None:
                self._metrics.handle_latency.record(time.perf_counter() - started, self._attrs)

    async def _keep_in_progress(self, group: list[_Delivery]) -> None:
        """A long handler must not let ack_wait expire under it (redelivery mid-work)."""
        while True:
            for d in group:
                await self._nc.publish(d.msg.reply, IN_PROGRESS)
            await asyncio.sleep(self._ack_wait_s / 2)

    async def _ack(self, group: list[_Delivery]) -> None:
        last = group[-1]
        if self._ack_policy == AckPolicy.ALL:
            await self._nc.publish(last.msg.reply, ACK)
        elif self._ack_policy != AckPolicy.NONE:
            for d in group:
                await self._nc.publish(d.msg.reply, ACK)
        self._last_acked = last.msg
        self.stats.processed += len(group)
        self.stats.batches += 1
        self._set_lag(last.meta.num_pending + len(self._buffer))
        if self._metrics is not None:
            self._metrics.events_in.add(len(group), self._attrs)

    def _set_lag(self, lag: int) -> None:
        self.stats.lag = lag
        if self._metrics is not None:
            self._metrics.consumer_lag.set(lag, self._attrs)

    async def _dead_letter(self, d: _Delivery, error: Exception, attempts: int) -> bool:
        reason = f"{type(error).__name__}: {error}"
        where = f"{d.msg.subject} seq {d.meta.stream_seq} after {attempts} failure(s)"
        if self._dead_letters is None:
            log.error(
                "consumer %s.%s: giving up on %s, no dead-letter publisher configured: %s",
                self.stream,
                self.durable,
                where,
                reason,
            )
            if self._metrics is not None:
                self._metrics.dead_letter(reason)
            self.stats.dead_letters += 1
            return True
        try:
            await self._dead_letters.send_for(
                d.msg.subject,
                d.msg.data,
                reason,
                stream=d.meta.stream,
                stream_seq=d.meta.stream_seq,
                delivered=attempts,
            )
            await self._dead_letters.flush()
        except Exception as exc:
            log.error("consumer %s: dead-lettering %s failed: %s", self.durable, where, exc)
            return False
        self.stats.dead_letters += 1
        log.error("consumer %s.%s: dead-lettered %s: %s", self.stream, self.durable, where, reason)
        return True

    async def _retry_from(self, stream_seq: int, failures: int) -> None:
        """Back off, then rewind so that ``stream_seq`` and what follows come again, in order."""
        self._request_rewind(stream_seq)  # drop arrivals meanwhile: they will come again
        delay = min(self._max_retry_backoff_s, self._retry_backoff_s * 2.0 ** (failures - 1))
        self.stats.retries += 1
        if delay <= 0 or self._stopping:
            return
        self._wake.clear()
        try:
            async with asyncio.timeout(delay):
                while not self._stopping:  # stop() interrupts the back-off
                    await self._wake.wait()
                    self._wake.clear()
        except TimeoutError:
            pass
