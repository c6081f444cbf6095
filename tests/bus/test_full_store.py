"""A full JetStream store (issue 17): the MD stream at its size limit discards its oldest
messages and live publishing never blocks nor errors; the server's store cannot fill up
behind a stream's back, because JetStream reserves every stream's max_bytes against the
store limit when the stream is created, so a configuration that does not fit is refused up
front with a clear error (docs/architecture.md section 2, "A full store").

A real nats-server with a tiny ``max_file_store``, the real publisher, the real specs."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.api import DiscardPolicy
from nats.js.errors import APIError

from volstream.bus.connection import connect
from volstream.bus.embedded import free_port, nats_server_binary
from volstream.bus.publisher import JetStreamPublisher
from volstream.bus.streams import StreamLimits, default_stream_specs, ensure_streams
from volstream.subjects import Subjects

KIB = 1024
STORE_LIMIT = 4 * 1024 * KIB
STREAM_BYTES = 512 * KIB


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[str]:
    """A nats-server whose JetStream file store holds 4 MiB in all."""
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{\n  store_dir: "{tmp_path / "js"}"\n  max_file_store: {STORE_LIMIT}\n'
        f"  max_memory_store: {1024 * KIB}\n}}\n"
    )
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf), "-l", str(tmp_path / "nats.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no nats-server"
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_md_at_its_limit_discards_its_oldest_and_publishing_never_blocks(
    small_store: str,
) -> None:
    subjects = Subjects("")
    nc = await connect(small_store, "full-store")
    try:
        js = nc.jetstream()
        specs = default_stream_specs(subjects, StreamLimits.compact(STREAM_BYTES))
        infos = await ensure_streams(js, specs)
        assert all(spec.discard == DiscardPolicy.OLD for spec in specs)  # no stream is "New"
        assert infos["MD"].config.max_bytes == STREAM_BYTES
        publisher = JetStreamPublisher(nc)
        payload = bytes(range(256)) * 16  # 4 KiB of incompressible-ish market data
        total = 8 * STREAM_BYTES // len(payload)  # eight times what MD may keep
        started = time.monotonic()
        for n in range(total):
            await publisher.publish(
                subjects.md("deribit", "btc", "book"), payload, f"full-store-{n}"
            )
        await publisher.flush(20)  # raises PublishError if any publish was refused
        elapsed = time.monotonic() - started
        info = await js.stream_info("MD")
        # Everything was acknowledged; the oldest went, the newest stayed.
        assert publisher.published == total
        assert info.state.last_seq == total
        assert info.state.first_seq > 1
        assert info.state.bytes <= STREAM_BYTES
        last = await js.get_msg("MD", info.state.last_seq)
        assert last.headers is not None and last.headers["Nats-Msg-Id"] == f"full-store-{total - 1}"
        # Never blocked: no publish waited for room (a blocked one would hit the 20 s flush).
        assert elapsed < 15, elapsed
        # The other streams kept their reservation: the DLQ still takes a message.
        ack = await js.publish(subjects.dlq("book", "deribit"), b"x")
        assert ack.seq == 1
        await publisher.close(5)
    finally:
        await nc.close()


async def test_streams_that_do_not_fit_the_store_are_refused_at_creation(
    small_store: str,
) -> None:
    """The store cannot fill up under a running stream: its max_bytes is reserved when it is
    created, and a configuration larger than the store is refused with JetStream's error."""
    nc = await connect(small_store, "too-big")
    try:
        specs = default_stream_specs(Subjects(""), StreamLimits.compact(STORE_LIMIT))
        with pytest.raises(APIError) as err:
            await asyncio.wait_for(ensure_streams(nc.jetstream(), specs, timeout_s=10), 20)
        assert "insufficient" in str(err.value).lower() or err.value.err_code == 10047
    finally:
        await nc.close()
