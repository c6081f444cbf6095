"""gRPC health of the API from the freshness of its surfaces.

Service names (grpc.health.v1):
- "" and "volstream.v1.SurfaceService": the API as a whole. Policy "any": SERVING while at
  least one surface is fresh; policy "all": every known surface must be fresh.
- "volstream.v1.SurfaceService/<venue>/<CCY>", e.g. "volstream.v1.SurfaceService/deribit/BTC":
  one surface, SERVING while it is fresh. Expected surfaces exist as NOT_SERVING before their
  first message; others appear when first seen.
Fresh means publish time within the staleness threshold of the server's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from svc_api.hub import SurfaceHub
from svc_api.store import SurfaceKey, SurfaceStore

SERVICE_NAME = "volstream.v1.SurfaceService"


def surface_health_name(key: SurfaceKey) -> str:
    return f"{SERVICE_NAME}/{key.venue}/{key.currency}"


def health_statuses(
    store: SurfaceStore,
    expected: Iterable[SurfaceKey],
    now_ns: int,
    stale_after_ns: int,
    policy: str = "any",
) -> dict[str, bool]:
    """Service name -> serving. Pure: "now" is an argument."""
    per_key: dict[SurfaceKey, bool] = dict.fromkeys(expected, False)
    for entry in store.list():
        per_key[entry.key] = entry.is_fresh(now_ns, stale_after_ns)
    all_fresh = bool(per_key) and all(per_key.values())
    overall = all_fresh if policy == "all" else any(per_key.values())
    statuses = {surface_health_name(k): ok for k, ok in per_key.items()}
    statuses[""] = overall
    statuses[SERVICE_NAME] = overall
    return statuses


class HealthMonitor:
    """Keeps a grpc.aio HealthServicer in step with the store (on change and on a timer)."""

    def __init__(
        self,
        servicer: object,
        hub: SurfaceHub,
        expected: Iterable[SurfaceKey],
        stale_after_ns: int,
        policy: str,
    ) -> None:
        self.servicer = servicer
        self.hub = hub
        self.expected = tuple(expected)
        self.stale_after_ns = stale_after_ns
        self.policy = policy
        self.current: dict[str, bool] = {}
        # Staleness is time-driven: re-check at least 4x per threshold (and at least 1 Hz).
        self.interval_s = min(1.0, stale_after_ns / 4e9)
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> dict[str, bool]:
        from grpc_health.v1 import health_pb2

        statuses = health_statuses(
            self.hub.store, self.expected, time.time_ns(), self.stale_after_ns, self.policy
        )
        for name, serving in statuses.items():
            if self.current.get(name) != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if serving
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.servicer.set(name, status)  # type: ignore[attr-defined]
        self.current = statuses
        return statuses

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-health")

    async def _run(self) -> None:
        sub = self.hub.subscribe()
        try:
            while not self.hub.closed.is_set():
                await self.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.changed.wait(), self.interval_s)
                sub.changed.clear()
        finally:
            self.hub.unsubscribe(sub)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.servicer.enter_graceful_shutdown()  # type: ignore[attr-defined]
