"""Time-or-size batching per key (e.g. per subject): one NATS message per window, not per tick.

``add(key, item)`` collects items per key. A key is flushed when it holds ``max_items`` or when
``max_delay_s`` has passed since its first pending item, whichever comes first. One timer task
serves all keys (no task per item). The flush callback runs serially (never two at once),
so a slow callback back-pressures ``add`` of a full key instead of growing memory: each key
holds at most ``max_items``.

Errors: a flush triggered by ``add``/``flush_all``/``close`` raises to that caller; a timed
flush that fails is logged and passed to ``on_error`` (its items are reported there, never
dropped silently).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("volstream.bus")

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self,
        flush: Callable[[str, list[T]], Awaitable[None]],
        *,
        max_items: int = 256,
        max_delay_s: float = 0.05,
        on_error: Callable[[str, list[T], BaseException], None] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        if max_delay_s <= 0:
            raise ValueError("max_delay_s must be > 0")
        self._flush = flush
        self._max_items = max_items
        self._max_delay_s = max_delay_s
        self._on_error = on_error
        self._pending: dict[str, list[T]] = {}
        # Deadline per key with pending items; insertion order == deadline order because every
        # key's deadline is its first item's time + the same delay.
        self._deadlines: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._timer_wake = asyncio.Event()
        self._closed = False
        self.flushes = 0
        self.flushed_items = 0
        self.errors = 0

    async def add(self, key: str, item: T) -> None:
        if self.append(key, item):
            await self._flush_key(key)

    def append(self, key: str, item: T) -> bool:
        """The synchronous part of :meth:`add`: queue ``item``; True when ``key`` is full and
        the caller must ``await flush_key(key)`` (as ``add`` does). Saves a coroutine per
        item on hot paths."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        items = self._pending.get(key)
        if items is None:
            items = self._pending[key] = []
            self._deadlines[key] = time.monotonic() + self._max_delay_s
            self._ensure_timer()
        items.append(item)
        return len(items) >= self._max_items

    async def flush_key(self, key: str) -> None:
        """Flush ``key`` now (nothing happens when it has no pending items)."""
        await self._flush_key(key)

    async def flush_all(self) -> None:
        """Flush every pending key now (in the order their first items arrived)."""
        for key in list(self._pending):
            await self._flush_key(key)

    async def close(self) -> None:
        """Flush everything and stop the timer. Further ``add`` calls raise."""
        self._closed = True
        try:
            await self.flush_all()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                await asyncio.gather(self._timer, return_exceptions=True)
                self._timer = None

    @property
    def pending_items(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def pending_keys(self) -> list[str]:
        return list(self._pending)

    # --- internals -----------------------------------------------------------------------
    def _take(self, key: str) -> list[T] | None:
        self._deadlines.pop(key, None)
        return self._pending.pop(key, None)

    async def _flush_key(self, key: str, timed: bool = False) -> None:
        async with self._lock:
            items = self._take(key)  # taken under the lock: later adds start a new batch
            if not items:
                return
            try:
                await self._flush(key, items)
            except Exception as exc:
                self.errors += 1
                if not timed:
                    raise
                log.exception("timed flush of %d item(s) for %s failed", len(items), key)
                if self._on_error is not None:
                    try:
                        self._on_error(key, items, exc)
                    except Exception:
                        log.exception("batcher on_error callback failed")
                return
            self.flushes += 1
            self.flushed_items += len(items)

    def _ensure_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(
                self._run_timer(), name="volstream-batcher-timer"
            )
        else:
            self._timer_wake.set()

    async def _run_timer(self) -> None:
        while True:
            if not self._deadlines:
                self._timer_wake.clear()
                await self._timer_wake.wait()
                continue
            key, deadline = next(iter(self._deadlines.items()))
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._flush_key(key, timed=True)
