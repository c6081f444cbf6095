"""Fixtures for the bus tests: real nats-server processes, never a mocked bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats, free_port
from volstream.bus.stage import InMessage, Output, output_msg_id
from volstream.bus.streams import StreamSpec, ensure_streams


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(nats_server.url, "bus-test")
    yield client
    await client.close()


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A server that a test may stop and start again on the same port and store."""
    server = EmbeddedNats(data_dir=tmp_path / "nats-restartable", port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RunningSum:
    """A stateful stage: each input (an integer) out as the sum of every input so far;
    remembers the stream sequences it handled."""

    def __init__(self) -> None:
        self.total = 0
        self.handled: list[int] = []

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        outputs = []
        for msg in batch:
            self.handled.append(msg.stream_seq)
            self.total += int(msg.data)
            payload = str(self.total).encode()
            outputs.append(Output("out.sum", payload, output_msg_id("sum", "out.sum", msg)))
        return outputs


def small_stream(name: str, subjects: tuple[str, ...], dup_window_s: float = 60.0) -> StreamSpec:
    return StreamSpec(
        name=name,
        subjects=subjects,
        max_age_s=3600.0,
        max_bytes=256 * 1024 * 1024,
        duplicate_window_s=dup_window_s,
    )


async def make_stream(client: Client, name: str, *subjects: str) -> None:
    await ensure_streams(client.jetstream(), [small_stream(name, tuple(subjects))])


def sample_value(exposition: str, name: str, **labels: str) -> float | None:
    """The value of the Prometheus sample ``name`` whose labels include ``labels``.

    Labels another series of the same metric has but this one lacks are exported as "" by the
    OpenTelemetry exporter; they are ignored here.
    """
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name != name:
                continue
            present = {k: v for k, v in sample.labels.items() if v != ""}
            if all(present.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` (cheap, in-process state) until true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.005)


class CuttableProxy:
    """A TCP proxy between a client and nats-server that can lose data in flight and drop the
    connection, like a network failure (a real one, not a mocked bus)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._blackhole = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, lossy: bool) -> None:
            try:
                while data := await src.read(65536):
                    if lossy and self._blackhole:
                        continue  # lost on the wire
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    async def cut(self, blackhole_s: float) -> None:
        """Lose server-to-client data for ``blackhole_s``, then drop every connection."""
        self._blackhole = True
        await asyncio.sleep(blackhole_s)
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()
        self._blackhole = False

    async def close(self) -> None:
        for w in self._writers:
            w.transport.abort()
        if self._server is not None:
            self._server.close()
