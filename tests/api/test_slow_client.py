"""A slow stream reader never delays a fast one and never builds a backlog on the server."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time

import grpc.aio

from tests.api.conftest import Bus, StartApi, make_surface
from volstream.client import CHANNEL_OPTIONS, SurfaceClient
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc

PUBLISH_HZ = 50
PUBLISH_S = 3.5
SLOW_READ_PERIOD_S = 0.5
SLOW_READS = 6
# A reader held back by a slow one (or reading a backlog) sees data about a slow read period
# old; half of one is the slack for delivery and scheduling on a loaded machine.
FRESH_S = SLOW_READ_PERIOD_S / 2
# A fast reader keeps pace with the publisher: half its updates within one publish period.
FAST_MEDIAN_MS = 1000 / PUBLISH_HZ


class Publisher:
    """Publishes deribit/BTC surfaces (about 10 KB each, quotes included) at a steady rate."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.revision = 0
        self.latest_publish_ns = 0

    async def run(self) -> None:
        period = 1.0 / PUBLISH_HZ
        next_at = time.monotonic()
        end = next_at + PUBLISH_S
        while time.monotonic() < end:
            self.revision += 1
            surface = make_surface("deribit", "BTC", self.revision)
            self.latest_publish_ns = surface.header.publish_time_ns
            await self.bus.publish_surface(surface)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def fast_reader(address: str, latencies_ms: list[float], revisions: list[int]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = api_grpc.SurfaceServiceStub(channel).StreamSurfaces(api_pb.StreamSurfacesRequest())
        async for message in call:
            now = time.time_ns()
            for s in message.surfaces:
                if not message.is_snapshot:
                    latencies_ms.append((now - s.header.publish_time_ns) / 1e6)
                    revisions.append(s.revision)


async def test_slow_conflating_client_gets_latest_state_and_fast_client_is_unaffected(
    bus: Bus, start_api: StartApi
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 0))
    api = await start_api()
    publisher = Publisher(bus)
    latencies: list[float] = []
    fast_revisions: list[int] = []
    fast = asyncio.create_task(fast_reader(api.address, latencies, fast_revisions))
    slow_seen: list[tuple[float, int, int]] = []  # (staleness s, revision, latest published)

    def slow_reader() -> None:
        with SurfaceClient(api.address) as client:
            stream = client.stream()
            with stream:
                for _ in range(SLOW_READS):
                    message = next(stream)
                    now = time.time_ns()
                    s = message.surfaces[-1]
                    staleness_s = (now - s.header.publish_time_ns) / 1e9
                    slow_seen.append((staleness_s, s.revision, publisher.revision))
                    time.sleep(SLOW_READ_PERIOD_S)  # a consumer much slower than the updates

    await asyncio.sleep(0.2)
    publishing = asyncio.create_task(publisher.run())
    slow = threading.Thread(target=slow_reader)
    await asyncio.sleep(0.3)
    slow.start()
    await asyncio.to_thread(slow.join)
    await publishing
    await asyncio.sleep(0.2)
    fast.cancel()

    # The slow consumer always got the newest state: fresh, skipping intermediate revisions.
    for staleness_s, revision, latest in slow_seen[1:]:
        assert staleness_s < FRESH_S, slow_seen
        assert latest - revision < PUBLISH_HZ * FRESH_S, slow_seen  # FRESH_S in revisions
    revisions = [r for _, r, _ in slow_seen]
    assert revisions == sorted(revisions) and revisions[-1] - revisions[1] > 2 * SLOW_READS
    # The fast client saw (nearly) every revision, quickly: never held up by the slow one.
    assert len(set(fast_revisions)) >= 0.9 * publisher.revision
    assert statistics.median(latencies) < FAST_MEDIAN_MS, statistics.median(latencies)
    assert max(latencies) < 1000 * FRESH_S, max(latencies)


async def test_server_keeps_at_most_one_message_in_flight_for_a_slow_raw_stream(
    bus: Bus, start_api: StartApi
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 0))
    api = await start_api()
    publisher = Publisher(bus)
    latencies: list[float] = []
    fast_revisions: list[int] = []
    fast = asyncio.create_task(fast_reader(api.address, latencies, fast_revisions))
    await asyncio.sleep(0.2)
    publishing = asyncio.create_task(publisher.run())
    staleness: list[float] = []
    # A plain gRPC reader with small HTTP/2 windows (what any language's client can set).
    async with grpc.aio.insecure_channel(api.address, options=list(CHANNEL_OPTIONS)) as channel:
        call = api_grpc.SurfaceServiceStub(channel).StreamSurfaces(api_pb.StreamSurfacesRequest())
        await asyncio.sleep(0.3)
        for _ in range(SLOW_READS):
            message = await call.read()
            staleness.append((time.time_ns() - message.surfaces[-1].header.publish_time_ns) / 1e9)
            await asyncio.sleep(SLOW_READ_PERIOD_S)
        written = dict(api.servicer.streams.per_stream)
        call.cancel()
    await publishing
    await asyncio.sleep(0.2)
    fast.cancel()

    assert len(written) == 2
    slow_written = written[max(written)]  # the slow stream opened second
    # Without conflation the server would have written ~one message per update (~150).
    assert slow_written <= SLOW_READS + 4, (slow_written, publisher.revision)
    # What the window holds is bounded: staleness does not grow read after read.
    assert max(staleness[2:]) < 3 * SLOW_READ_PERIOD_S, staleness
    assert statistics.median(latencies) < FAST_MEDIAN_MS
