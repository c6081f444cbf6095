"""Golden digests of the connector's normalised output: proof that a refactor changed nothing.

    .venv/bin/python bench/golden_connector.py [--venues deribit,okx,bybit,binance]
                                               [--seed 7] [--sim-start 2026-12-07T00:00:00Z]
                                               [--frames 20000] [--recording FILE]

Step 1 (skipped when ``--recording`` names an existing file): run the simulator with a fixed
seed and start time and a real connector per venue, and record every frame its connections
receive, with the connection's name, plus the instruments it discovered.

Step 2: feed the recorded frames through fresh venue sessions (one per recorded connection,
sharing one header-sequence counter from 1, as a connector's connections do), once with the
hot path off (checked path only) and once on, with synthetic receive times. Print a SHA-256
digest per venue and path of the normalised events (serialised protobuf, with
``receive_time_ns``/``publish_time_ns`` zeroed), and of everything else a frame produced
(counters, dead letters, resyncs, replies, acks).

The recording is a plain pickle, and step 2 uses only the venue registry and the session's
``set_instruments``/``on_frame``/``hot_path``: another checkout's interpreter digests the same
file with this script (``cd /other && .venv/bin/python /this/bench/golden_connector.py
--recording F``; it imports the other checkout's code), to compare two commits on identical
input. The digests print in full for the events, the first 16 hex digits for the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import itertools
import pickle
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from svc_connector.venues import registry
from svc_connector.venues.base import ConnectorConfig, FrameResult, MemorySink
from volstream.v1 import market_data_pb2 as md_pb

VENUES = ("deribit", "okx", "bybit", "binance")
# Receive time of the first replayed frame (ns) and the step between frames.
REPLAY_START_NS = 1_800_000_000_000_000_000
REPLAY_STEP_NS = 1_000_000

Recording = dict[str, dict[str, Any]]


def parse_start(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        print(f"--sim-start: not an ISO date/time: {text!r}", file=sys.stderr)
        raise SystemExit(2) from None
    if moment.tzinfo is None:
        print(f"--sim-start: give a time zone (e.g. Z): {text!r}", file=sys.stderr)
        raise SystemExit(2)
    return int(moment.timestamp()) * 1_000_000_000


async def record_venue(
    venue: str, seed: int, start_ns: int, frames_wanted: int, timeout_s: float
) -> dict[str, Any]:
    """Frames received by a real connector's connections (name, frame) and its instruments."""
    # Imported here: digesting a recording needs neither the simulator nor the runtime.
    from simulator import SimConfig, run_simulator
    from svc_connector.service import connector_config
    from volstream.config import Config

    sim = await run_simulator(
        SimConfig(
            port=0,
            venues=(venue,),
            currencies=("BTC", "ETH"),
            seed=seed,
            start_time_ns=start_ns,
            max_expiries=4,
            messages_per_second=20_000.0,
        )
    )
    # Where the connection class lives differs between commits (the recording may be made
    # with either).
    try:
        module = importlib.import_module("svc_connector.runtime.connection")
    except ImportError:
        module = importlib.import_module("svc_connector.runtime")
    ws_connection: Any = module.WsConnection
    recorded: list[tuple[str, str | bytes]] = []
    enough = asyncio.Event()
    original: Callable[..., Awaitable[None]] = ws_connection._handle

    async def handle(self: Any, ws: Any, frame: str | bytes) -> None:
        if len(recorded) < frames_wanted:
            recorded.append((self.name, frame))
        else:
            enough.set()
        await original(self, ws, frame)

    setattr(ws_connection, "_handle", handle)  # noqa: B010
    sink = MemorySink()
    adapter = registry.get(venue)
    cfg = Config(venues=(venue,), sim_url=sim.base_url)
    connector = adapter.make_connector(connector_config(cfg, adapter), sink)
    task = asyncio.create_task(connector.run())
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(enough.wait(), timeout_s)
    finally:
        setattr(ws_connection, "_handle", original)  # noqa: B010
        await connector.stop()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()
    instruments = {
        i.symbol: i.SerializeToString(deterministic=True)
        for s in sink.of_case("instrument_set")
        for i in s.instrument_set.instruments
    }
    return {"frames": recorded, "instruments": [instruments[k] for k in sorted(instruments)]}


# Counters of the deltas a venue's sequence rules normalise (see docs/venues/<venue>.md).
EXCEPTIONAL = ("book.restart_from_empty", "book.bridged")


def replay(venue: str, recording: dict[str, Any], hot_path: bool) -> tuple[str, str, int, int]:
    """(events digest, other outputs digest, event count, exceptional deltas) of the
    recorded frames."""
    adapter = registry.get(venue)
    connector: Any = adapter.make_connector(
        ConnectorConfig(currencies=("BTC", "ETH")), MemorySink()
    )
    instruments = [md_pb.Instrument.FromString(b) for b in recording["instruments"]]
    # The connector's shared header-sequence counter, from 1 instead of the wall clock (an
    # instance attribute: it stands in for an older checkout's next_sequence method too).
    connector.next_sequence = itertools.count(1).__next__
    sessions: dict[str, Any] = {}
    events_hash = hashlib.sha256()
    other_hash = hashlib.sha256()
    count = exceptional = 0
    for index, (name, frame) in enumerate(recording["frames"]):
        session = sessions.get(name)
        if session is None:
            session = sessions[name] = connector.new_session()
            session.hot_path = hot_path
            session.set_instruments(instruments)
        result: FrameResult = session.on_frame(frame, REPLAY_START_NS + index * REPLAY_STEP_NS)
        for item in result.events:
            event = md_pb.MarketDataEvent()
            event.CopyFrom(item.event)
            case = event.WhichOneof("event")
            if case is not None:
                header = getattr(event, case).header
                header.receive_time_ns = 0
                header.publish_time_ns = 0
            events_hash.update(f"{item.currency}|{item.kind}|".encode())
            events_hash.update(event.SerializeToString(deterministic=True))
            count += 1
        other_hash.update(repr(_others(result)).encode())
        exceptional += sum(result.counts.get(name, 0) for name in EXCEPTIONAL)
    return events_hash.hexdigest(), other_hash.hexdigest(), count, exceptional


def _others(result: FrameResult) -> tuple[object, ...]:
    return (
        result.channel,
        sorted(result.counts.items()),
        [(d.raw, d.reason) for d in result.dead_letters],
        [(r.symbol, r.channel, r.reason) for r in result.resubscribes],
        [(r.method, sorted(r.params.items()), r.purpose) for r in result.replies],
        [(a.request_id, a.method, repr(a.result)) for a in result.acks],
        [(e.code, e.message, e.request_id, e.method, e.channels) for e in result.venue_errors],
        result.subscribed,
        result.unsubscribed,
        [(s.symbol, s.state) for s in result.instrument_states],
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--venues", default=",".join(VENUES))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sim-start", default="2026-12-07T00:00:00Z")
    p.add_argument("--frames", type=int, default=20_000, help="frames recorded per venue")
    p.add_argument("--timeout", type=float, default=60.0, help="recording seconds per venue")
    p.add_argument("--recording", type=Path, default=Path("/tmp/golden_connector.pickle"))
    args = p.parse_args(argv)
    venues = [v.strip() for v in args.venues.split(",") if v.strip()]
    for venue in venues:
        if venue not in VENUES:
            print(
                f"--venues: unknown venue {venue!r} (known: {', '.join(VENUES)})", file=sys.stderr
            )
            raise SystemExit(2)
    if args.recording.exists():
        recording: Recording = pickle.loads(args.recording.read_bytes())
        print(f"recording: {args.recording} (existing)")
    else:
        start_ns = parse_start(args.sim_start)
        recording = {
            venue: asyncio.run(record_venue(venue, args.seed, start_ns, args.frames, args.timeout))
            for venue in venues
        }
        args.recording.write_bytes(pickle.dumps(recording))
        print(f"recording: {args.recording} (seed {args.seed}, sim start {args.sim_start})")
    print(
        f"{'venue':<8} {'path':<7} {'frames':>7} {'events':>7} {'except':>6}"
        "  events sha256 / others sha256"
    )
    for venue in venues:
        rec = recording[venue]
        for hot in (False, True):
            events, others, count, exceptional = replay(venue, rec, hot)
            path = "hot" if hot else "checked"
            frames = len(rec["frames"])
            print(
                f"{venue:<8} {path:<7} {frames:>7} {count:>7} {exceptional:>6}"
                f"  {events} / {others[:16]}"
            )


if __name__ == "__main__":
    main()
