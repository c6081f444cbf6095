"""Fixed-input equivalence of the derived stages: the same market data through book -> IV ->
surface gives the same bytes on every subject, before and after a change.

    .venv/bin/python -m bench.golden_stages record md.bin [--seconds 40] [--seed 7]
    .venv/bin/python -m bench.golden_stages digest md.bin [--dump out.txt]

``record`` runs the simulator (fixed seed, the accuracy tests' pinned start) and the
connector on a private nats-server for a while and writes the MD stream, in stream order,
to a file. (The recording itself depends on timing: record once, then digest the same file
with each version of the code.)

``digest`` runs the production book, IV and surface stage handlers over that file with no
NATS in between (``volstream.bus.inprocess``: one message per batch, in publish order) and
prints, per output subject, the message count and a SHA-256 over the payloads in order,
with the wall-clock fields zeroed (``publish_time_ns``, ``receive_time_ns`` and the
surface's ``fit_time_ms``). A second digest also zeroes every message header's
``sequence``, for comparing across a change of what that field counts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message

from replay.compare import WALL_CLOCK_FIELDS, clear_fields
from replay.stages import ReplayEnv, close_stages, local_stages
from simulator import SimConfig, run_simulator
from svc_connector import service as connector_service
from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.inprocess import InProcessBus, Published
from volstream.config import Config
from volstream.runtime import provision_streams
from volstream.subjects import Subjects, parse_partition
from volstream.telemetry import setup_telemetry
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb
from volstream.v1 import surface_pb2 as surface_pb

# The accuracy tests' pinned start (tests/pipeline.py::PINNED_START_NS): a fixed calendar.
START_NS = 1_773_057_600 * 1_000_000_000  # 2026-03-09T12:00:00Z
VENUES = ("deribit", "okx", "bybit", "binance")
CURRENCIES = ("BTC", "ETH")
_LEN = struct.Struct("<II")


def write_records(path: Path, records: list[tuple[str, bytes]]) -> None:
    with path.open("wb") as f:
        for subject, payload in records:
            raw = subject.encode()
            f.write(_LEN.pack(len(raw), len(payload)))
            f.write(raw)
            f.write(payload)


def read_records(path: Path) -> Iterator[tuple[str, bytes]]:
    data = path.read_bytes()
    at = 0
    while at < len(data):
        n_subject, n_payload = _LEN.unpack_from(data, at)
        at += _LEN.size
        subject = data[at : at + n_subject].decode()
        at += n_subject
        yield subject, data[at : at + n_payload]
        at += n_payload


async def fill_md(
    nats_url: str,
    seconds: float,
    venues: tuple[str, ...] = VENUES,
    currencies: tuple[str, ...] = CURRENCIES,
    seed: int = 7,
) -> None:
    """The simulator (fixed seed and start, default rate) and the connector for ``seconds``
    on ``nats_url``: the MD stream fills as it would live."""
    handle = await run_simulator(
        SimConfig(venues=venues, currencies=currencies, seed=seed, start_time_ns=START_NS)
    )
    cfg = Config(nats_url=nats_url, venues=venues, currencies=currencies, sim_url=handle.base_url)
    await provision_streams(nats_url, cfg)
    task = asyncio.create_task(connector_service.run(cfg))
    try:
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await handle.stop()


async def record(path: Path, seconds: float, seed: int) -> int:
    with tempfile.TemporaryDirectory(prefix="golden-") as tmp, EmbeddedNats(Path(tmp)) as nats:
        await fill_md(nats.url, seconds, seed=seed)
        nc = await connect(nats.url, "golden-record")
        try:
            js = nc.jetstream()
            info = await js.stream_info("MD")
            records = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg("MD", seq, direct=True)
                records.append((msg.subject or "", msg.data or b""))
        finally:
            await nc.drain()
    write_records(path, records)
    return len(records)


_DECODERS: dict[str, type[Message]] = {
    "book": book_pb.TopOfBookBatch,
    "iv": iv_pb.SmileBatch,
    "surface": surface_pb.Surface,
}


def normalised(subject: str, payload: bytes, zero_sequence: bool) -> bytes:
    stage, _venue, _ccy, rest = parse_partition(subject)
    # The book stage relays other market data verbatim on book.<venue>.<ccy>.md.
    decoder = md_pb.MarketDataBatch if rest == "md" else _DECODERS[stage]
    message = decoder.FromString(payload)
    clear_fields(message, WALL_CLOCK_FIELDS)
    if zero_sequence:
        message.header.ClearField("sequence")  # type: ignore[attr-defined]
    return message.SerializeToString(deterministic=True)


@dataclass
class Digests:
    counts: dict[str, int] = field(default_factory=dict)
    full: dict[str, hashlib._Hash] = field(default_factory=dict)
    no_seq: dict[str, hashlib._Hash] = field(default_factory=dict)
    dump: list[str] = field(default_factory=list)
    keep_dump: bool = False

    def add(self, message: Published) -> None:
        if message.stream == "MD":
            return
        subject = message.subject
        self.counts[subject] = self.counts.get(subject, 0) + 1
        full = normalised(subject, message.payload, zero_sequence=False)
        self.full.setdefault(subject, hashlib.sha256()).update(full)
        self.no_seq.setdefault(subject, hashlib.sha256()).update(
            normalised(subject, message.payload, zero_sequence=True)
        )
        if self.keep_dump:
            self.dump.append(f"{subject} {hashlib.sha256(full).hexdigest()[:16]}")


async def digest(path: Path, keep_dump: bool) -> tuple[Digests, int, float]:
    cfg = Config(venues=VENUES, currencies=CURRENCIES)
    subjects = Subjects(cfg.namespace)
    env = ReplayEnv(cfg, subjects, setup_telemetry("golden"))
    stages = local_stages(env)
    digests = Digests(keep_dump=keep_dump)
    streams = {"md": "MD", "book": "BOOK", "iv": "IV", "surface": "SURFACE"}
    bus = InProcessBus(stages, lambda s: streams.get(s.split(".", 1)[0]), on_publish=digests.add)
    started = time.perf_counter()
    n = 0
    for subject, payload in read_records(path):
        await bus.publish(subject, payload)
        n += 1
    elapsed = time.perf_counter() - started
    await close_stages(stages)
    return digests, n, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.golden_stages")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("path", type=Path)
    rec.add_argument("--seconds", type=float, default=40.0)
    rec.add_argument("--seed", type=int, default=7)
    dig = sub.add_parser("digest")
    dig.add_argument("path", type=Path)
    dig.add_argument("--dump", type=Path, help="write one line per output message")
    args = parser.parse_args(argv)
    if args.command == "record":
        n = asyncio.run(record(args.path, args.seconds, args.seed))
        print(f"recorded {n} MD messages to {args.path}")
        return 0
    if not args.path.is_file():
        print(f"no recording at {args.path}", file=sys.stderr)
        return 2
    digests, n, elapsed = asyncio.run(digest(args.path, args.dump is not None))
    print(f"{n} MD messages in {elapsed:.1f} s")
    print(f"{'subject':<28} {'messages':>9}  {'sha256 (no wall clock)':<18}  {'(no sequence)':<18}")
    for subject in sorted(digests.counts):
        print(
            f"{subject:<28} {digests.counts[subject]:>9}  "
            f"{digests.full[subject].hexdigest()[:16]:<18}  "
            f"{digests.no_seq[subject].hexdigest()[:16]:<18}"
        )
    total = hashlib.sha256()
    total_no_seq = hashlib.sha256()
    for subject in sorted(digests.counts):
        total.update(digests.full[subject].digest())
        total_no_seq.update(digests.no_seq[subject].digest())
    print(
        f"{'all':<28} {sum(digests.counts.values()):>9}  {total.hexdigest()[:16]:<18}  "
        f"{total_no_seq.hexdigest()[:16]:<18}"
    )
    if args.dump is not None:
        args.dump.write_text("\n".join(digests.dump) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
