"""Bus throughput: volstream's publisher and pull consumer vs the plain nats-py patterns.

    .venv/bin/python -m bench.bench_bus [--quick]

Starts its own embedded nats-server (file storage, like production) and prints one table:

- publish: ``JetStreamPublisher`` (pipelined, bounded window, msg-id dedupe) vs
  ``await js.publish(...)`` per message (same ``Nats-Msg-Id`` header);
- consume: ``PullConsumer`` (callback pull loop, one AckAll ack per batch) vs
  ``psub.fetch(batch)`` on the same kind of durable, also acking once per batch.

Each side runs on a fresh stream/durable of the same server, one after the other, in one
process. Bounded to well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from volstream.bus.connection import connect
from volstream.bus.consumer import PullConsumer
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.streams import ConsumerSpec, StreamSpec, ensure_consumer, ensure_streams

PAYLOAD = b"x" * 200  # a small protobuf batch
BATCH = 256


@dataclass
class Row:
    what: str
    reference_name: str
    reference_rate: float
    ours_name: str
    ours_rate: float


def stream_spec(name: str) -> StreamSpec:
    return StreamSpec(
        name=name,
        subjects=(f"{name.lower()}.>",),
        max_age_s=3600.0,
        max_bytes=1024**3,
        duplicate_window_s=120.0,
    )


async def publish_reference(nc: Client, stream: str, count: int, budget_s: float) -> float:
    js = nc.jetstream()
    subject = f"{stream.lower()}.deribit.btc"
    started = time.perf_counter()
    sent = 0
    while sent < count and time.perf_counter() - started < budget_s:
        await js.publish(subject, PAYLOAD, headers={"Nats-Msg-Id": f"ref-{sent}"})
        sent += 1
    return sent / (time.perf_counter() - started)


async def publish_ours(nc: Client, stream: str, count: int) -> float:
    publisher = JetStreamPublisher(nc)
    subject = f"{stream.lower()}.deribit.btc"
    started = time.perf_counter()
    for i in range(count):
        await publisher.publish(subject, PAYLOAD, f"ours-{i}")
    await publisher.flush(60)
    rate = count / (time.perf_counter() - started)
    assert publisher.published == count, publisher.stats()
    await publisher.close()
    return rate


async def fill(nc: Client, stream: str, count: int) -> None:
    publisher = JetStreamPublisher(nc)
    subject = f"{stream.lower()}.deribit.btc"
    for i in range(count):
        await publisher.publish(subject, PAYLOAD, f"fill-{i}")
    await publisher.close(60)


async def consume_reference(nc: Client, stream: str, count: int, budget_s: float) -> float:
    js = nc.jetstream()
    await ensure_consumer(js, ConsumerSpec(stream, "ref", [f"{stream.lower()}.>"]))
    psub = await js.pull_subscribe_bind("ref", stream)
    received = 0
    started = time.perf_counter()
    while received < count and time.perf_counter() - started < budget_s:
        try:
            msgs = await psub.fetch(BATCH, timeout=2)
        except NatsTimeoutError:
            break
        received += len(msgs)
        await msgs[-1].ack()  # AckAll: one ack per batch, like ours
    rate = received / (time.perf_counter() - started)
    await psub.unsubscribe()
    return rate


async def consume_ours(nc: Client, stream: str, count: int) -> float:
    await ensure_consumer(nc.jetstream(), ConsumerSpec(stream, "ours", [f"{stream.lower()}.>"]))
    done = asyncio.Event()
    received = 0

    async def handler(msgs: list[Msg]) -> None:
        nonlocal received
        received += len(msgs)
        if received >= count:
            done.set()

    consumer = PullConsumer(nc, stream, "ours", handler, batch_size=BATCH)
    started = time.perf_counter()
    await consumer.start()
    await asyncio.wait_for(done.wait(), 60)
    rate = received / (time.perf_counter() - started)
    await consumer.stop()
    return rate


async def run(quick: bool) -> list[Row]:
    publish_ref_n, publish_ours_n = (2_000, 20_000) if quick else (6_000, 100_000)
    consume_n = 50_000 if quick else 200_000
    rows: list[Row] = []
    with EmbeddedNats() as server:
        nc = await connect(server.url, "bench-bus")
        js = nc.jetstream()
        await ensure_streams(
            js, [stream_spec(n) for n in ("PUBREF", "PUBOURS", "CONREF", "CONOURS")]
        )

        ref = await publish_reference(nc, "PUBREF", publish_ref_n, budget_s=8)
        ours = await publish_ours(nc, "PUBOURS", publish_ours_n)
        rows.append(
            Row(
                "publish msgs/s (200 B, msg-id)",
                "await js.publish",
                ref,
                "JetStreamPublisher",
                ours,
            )
        )

        await fill(nc, "CONREF", consume_n)
        await fill(nc, "CONOURS", consume_n)
        ref = await consume_reference(nc, "CONREF", consume_n, budget_s=15)
        ours = await consume_ours(nc, "CONOURS", consume_n)
        rows.append(
            Row(f"consume msgs/s (batch {BATCH}, AckAll)", "psub.fetch", ref, "PullConsumer", ours)
        )
        await nc.close()
    return rows


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'measure':<34} {'reference':<18} {'ref/s':>10} "
        f"{'volstream':<20} {'ours/s':>10} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.what:<34} {r.reference_name:<18} {r.reference_rate:>10,.0f} "
            f"{r.ours_name:<20} {r.ours_rate:>10,.0f} {r.ours_rate / r.reference_rate:>6.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few seconds)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    rows = asyncio.run(run(args.quick))
    print_table(rows)
    print(f"(total {time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
