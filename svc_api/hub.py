"""Thin async wrapper around SurfaceStore: wakes streams when something changed.

Each stream owns one asyncio.Event; a change sets every subscriber's event (an Event that is
already set stays set: a stream busy writing to a slow client is not queued anything, it
just finds the newest state when it comes back). Memory per stream is constant.
"""

from __future__ import annotations

import asyncio

from svc_api.store import ApplyOutcome, SurfaceKey, SurfaceStore
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb


class Subscription:
    __slots__ = ("changed", "key")

    def __init__(self, key: SurfaceKey | None = None) -> None:
        self.changed = asyncio.Event()
        # None: woken by every change; a key: only by that surface's (and by close).
        self.key = key


class SurfaceHub:
    def __init__(self, store: SurfaceStore | None = None) -> None:
        self.store = store or SurfaceStore()
        self._subscribers: set[Subscription] = set()
        self._by_key: dict[SurfaceKey, set[Subscription]] = {}
        self.closed = asyncio.Event()

    def apply_surface(
        self, surface: surface_pb.Surface, *, sequence: int = 0, stored_time_ns: int = 0
    ) -> ApplyOutcome:
        outcome = self.store.apply_surface(
            surface, sequence=sequence, stored_time_ns=stored_time_ns
        )
        if outcome.accepted:
            self._wake_all()
            keyed = self._by_key.get(outcome.key) if outcome.key is not None else None
            if keyed:
                for sub in keyed:
                    sub.changed.set()
        return outcome

    def apply_smile(self, smile: iv_pb.Smile) -> ApplyOutcome:
        return self.store.apply_smile(smile)

    def apply_smile_batch(self, batch: iv_pb.SmileBatch) -> list[ApplyOutcome]:
        return self.store.apply_smile_batch(batch)

    def subscribe(self, key: SurfaceKey | None = None) -> Subscription:
        """Woken by every change, or (with a key) only by that surface's: a browser following
        one surface is not woken 30 times a second for the others."""
        sub = Subscription(key)
        if key is None:
            self._subscribers.add(sub)
        else:
            self._by_key.setdefault(key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.key is None:
            self._subscribers.discard(sub)
            return
        keyed = self._by_key.get(sub.key)
        if keyed is not None:
            keyed.discard(sub)
            if not keyed:
                del self._by_key[sub.key]

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers) + sum(len(subs) for subs in self._by_key.values())

    def close(self) -> None:
        """Streams see `closed` set and end."""
        self.closed.set()
        self._wake_all()
        for keyed in self._by_key.values():
            for sub in keyed:
                sub.changed.set()

    def _wake_all(self) -> None:
        for sub in self._subscribers:
            sub.changed.set()

    async def sleep_unless_closed(self, seconds: float) -> bool:
        """Sleep; True when the hub closed meanwhile."""
        if seconds <= 0:
            return self.closed.is_set()
        try:
            await asyncio.wait_for(self.closed.wait(), seconds)
        except TimeoutError:
            return False
        return True
