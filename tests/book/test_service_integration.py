"""The book service as a running service over a real nats-server.

- with the exchange simulator and the real connector service: a gap on one book makes only
  that book invalid (status only, no prices) until it recovers with the venue's prices;
- a restart rebuilds every book via connector resyncs, never publishing a price the venue
  did not quote, and is VALID again within a bound;
- two replicas with disjoint partitions publish exactly what one replica owning both does.

Every service runs in-process as an asyncio task (`run(cfg)`, the same entry point as the
CLI). The simulator runs on a manual clock stepped by the test (one 100 ms tick every
100 ms of wall time), so that at any pause the venue's books are fixed and the published
tops can be compared with them exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bench.bench_book import build_workload
from simulator import SimConfig, SimHandle, run_simulator
from simulator.market import SimInstrument
from svc_book import service as book_service
from svc_connector import service as connector_service
from svc_connector.venues.deribit.parse import parse_frame
from volstream.bus.embedded import EmbeddedNats
from volstream.config import Config, Partition
from volstream.runtime import provision_streams
from volstream.subjects import Subjects
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import market_data_pb2 as md_pb

NS = 1_000_000_000
VALID = book_pb.BOOK_STATUS_VALID
AWAITING = book_pb.BOOK_STATUS_AWAITING_SNAPSHOT
GAP = book_pb.BOOK_STATUS_GAP

# (bid px, bid size, ask px, ask size); None for an empty side.
Quote = tuple[float | None, float | None, float | None, float | None]


@contextlib.asynccontextmanager
async def running(
    run: Callable[[Config], Coroutine[Any, Any, None]], cfg: Config
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run(cfg))
    try:
        yield task
    finally:
        await stop(task)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(task, 10)


async def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    explain: Callable[[], object] = lambda: "",
) -> float:
    """Seconds it took for condition() to hold."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {explain()}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def published_quote(top: book_pb.TopOfBook) -> Quote:
    def opt(name: str) -> float | None:
        return getattr(top, name) if top.HasField(name) else None

    return (
        opt("best_bid_price_native"),
        opt("best_bid_size_native"),
        opt("best_ask_price_native"),
        opt("best_ask_size_native"),
    )


def has_prices(top: book_pb.TopOfBook) -> bool:
    return any(v is not None for v in published_quote(top))


def venue_quote(inst: SimInstrument) -> Quote:
    bid = inst.book.best(True)
    ask = inst.book.best(False)
    return (
        bid[0] if bid else None,
        bid[1] if bid else None,
        ask[0] if ask else None,
        ask[1] if ask else None,
    )


# -- simulator -> connector -> book ----------------------------------------------------------


@dataclass
class Published:
    """One TopOfBook as stored in the BOOK stream."""

    stream_seq: int
    subject: str
    top: book_pb.TopOfBook
    wall: float
    # MD stream sequence of the input message it came from.
    input_seq: int


@dataclass
class Stack:
    sim: SimHandle
    cfg: Config
    nc: Client
    js: JetStreamContext
    published: list[Published] = field(default_factory=list)
    # Every (bid, bid size, ask, ask size) each live venue book has had (record_venue).
    venue_history: dict[str, set[Quote]] = field(default_factory=dict)
    resync_requests: list[list[str]] = field(default_factory=list)
    stepping: bool = True
    last_book_seq: int = 0

    def instruments(self) -> dict[str, SimInstrument]:
        """The venue's books whose book channel somebody (the connector) subscribed to."""
        venue = self.sim.venue("deribit")
        channels = venue.inst_channels  # type: ignore[attr-defined]
        return {
            inst.symbol: inst
            for market in venue.markets.values()  # type: ignore[attr-defined]
            for inst in market.instruments
            if inst.book.ready
            and inst.state == "open"
            and any(ch.startswith("book.") for ch in channels.get(inst.symbol, ()))
        }

    def latest(self, since_seq: int = 0) -> dict[str, book_pb.TopOfBook]:
        out: dict[str, book_pb.TopOfBook] = {}
        for p in self.published:
            if p.stream_seq > since_seq:
                out[p.top.symbol] = p.top
        return out

    def record_venue(self) -> None:
        """Add the top of every live venue book (built and moving) to its history.

        Not only the books whose book channel is subscribed at this instant: a resync
        unsubscribes the book channel and subscribes it again (a paced request, often a
        few ticks later) while the ticker channel keeps the book live and moving, and the
        snapshot answering the subscribe carries the top the book reached meanwhile.
        """
        venue = self.sim.venue("deribit")
        for market in venue.markets.values():  # type: ignore[attr-defined]
            for inst in market.instruments:
                if inst.book.ready and inst.state == "open":
                    self.venue_history.setdefault(inst.symbol, set()).add(venue_quote(inst))

    def all_valid(self, since_seq: int = 0) -> bool:
        """The connector subscribed every option's book, and each is published VALID."""
        venue = self.sim.venue("deribit")
        options = {
            i.symbol
            for market in venue.markets.values()  # type: ignore[attr-defined]
            for i in market.open_instruments("option")
        }
        wanted = self.instruments()
        if not options or not options <= set(wanted):
            return False
        latest = self.latest(since_seq)
        return all(s in latest and latest[s].status == VALID for s in wanted)

    async def md_trace(self, symbol: str) -> list[str]:
        """Diagnostics for a failure: the symbol's book events in MD and its published tops."""
        last = (await self.js.stream_info("MD")).state.last_seq
        out = []
        for seq in range(1, last + 1):
            msg = await self.js.get_msg("MD", seq)
            if not (msg.subject or "").endswith(".book") or msg.data is None:
                continue
            for e in md_pb.MarketDataBatch.FromString(msg.data).events:
                body = getattr(e, str(e.WhichOneof("event")))
                if body.symbol == symbol:
                    out.append(f"md {seq}: {e}".replace("\n", " "))
        for p in self.published:
            if p.top.symbol == symbol:
                quote = published_quote(p.top)
                out.append(f"book {p.stream_seq} <- md {p.input_seq}: {p.top.status} {quote}")
        return out

    def keyframes_cover_all(self) -> bool:
        """The latest keyframe of each partition lists every subscribed book as VALID."""
        last: dict[str, int] = {}
        for p in self.published:
            if p.subject.endswith(".keyframe"):
                last[p.subject] = p.stream_seq
        covered = {
            p.top.symbol
            for p in self.published
            if p.stream_seq in last.values() and p.top.status == VALID
        }
        return set(self.instruments()) <= covered

    def not_valid(self, since_seq: int = 0) -> dict[str, object]:
        venue = self.sim.venue("deribit")
        options = {
            i.symbol
            for market in venue.markets.values()  # type: ignore[attr-defined]
            for i in market.open_instruments("option")
        }
        latest = self.latest(since_seq)
        wanted = self.instruments()
        return {
            "unsubscribed": sorted(options - set(wanted))[:10],
            "not valid": [
                (s, latest[s].status if s in latest else None)
                for s in wanted
                if s not in latest or latest[s].status != VALID
            ][:10],
        }

    async def step_forever(self) -> None:
        beat = 0
        while True:
            if self.stepping and beat % 5 == 0:
                # On the manual clock a live book changes only in a tick, or when it is
                # (re)built for a new subscriber (then it holds until the next tick): recorded
                # right before and right after every tick, no top it has had is missed.
                self.record_venue()
                await self.sim.step(1)
            self.record_venue()
            beat += 1
            await asyncio.sleep(0.02)

    async def settle(self, durable: str = "book-all") -> None:
        """Pause the venue and wait until everything it sent is consumed and published."""
        self.stepping = False
        quiet_since = time.monotonic()
        last = (-1, -1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            md = (await self.js.stream_info("MD")).state.last_seq
            book = (await self.js.stream_info("BOOK")).state.last_seq
            consumer = await self.js.consumer_info("MD", durable)
            idle = consumer.num_pending == 0 and consumer.num_ack_pending == 0
            if (md, book) != last or not idle or self.last_book_seq < book:
                last = (md, book)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 0.4:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the pipeline did not settle")

    def mismatches(self, since_seq: int = 0) -> list[str]:
        """Watched venue books whose last published top is not VALID with the venue's top."""
        latest = self.latest(since_seq)
        bad = []
        for symbol, inst in self.instruments().items():
            top = latest.get(symbol)
            if top is None or top.status != VALID:
                bad.append(f"{symbol}: {None if top is None else top.status}")
            elif published_quote(top) != venue_quote(inst):
                bad.append(f"{symbol}: published {published_quote(top)} venue {venue_quote(inst)}")
        return bad


@contextlib.asynccontextmanager
async def sim_stack(nats_server: EmbeddedNats) -> AsyncIterator[Stack]:
    sim = await run_simulator(
        SimConfig(
            port=0,
            venues=("deribit",),
            currencies=("BTC", "ETH"),
            clock="manual",
            max_expiries=1,
            messages_per_second=1_500.0,
        )
    )
    cfg = Config(
        nats_url=nats_server.url,
        venues=("deribit",),
        currencies=("BTC", "ETH"),
        sim_url=sim.base_url,
    )
    await provision_streams(nats_server.url, cfg)
    nc = await nats.connect(nats_server.url)
    stack = Stack(sim, cfg, nc, nc.jetstream())

    async def on_top(msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if msg.subject.endswith(".md"):  # tickers and instruments relayed for the IV stage
            stack.last_book_seq = seq
            return
        batch = book_pb.TopOfBookBatch.FromString(msg.data)
        for top in batch.tops:
            stack.published.append(
                Published(seq, msg.subject, top, time.monotonic(), batch.header.sequence)
            )
        stack.last_book_seq = seq

    async def on_resync(msg: Msg) -> None:
        stack.resync_requests.append(json.loads(msg.data)["symbols"])

    await stack.js.subscribe("book.deribit.>", stream="BOOK", ordered_consumer=True, cb=on_top)
    await nc.subscribe("ctl.connector.deribit.resync", cb=on_resync)
    stepper = asyncio.create_task(stack.step_forever())
    try:
        async with running(connector_service.run, cfg):
            yield stack
    finally:
        await stop(stepper)
        await nc.close()
        await sim.stop()


async def test_gap_invalidates_only_that_book_until_it_recovers_with_venue_prices(
    nats_server: EmbeddedNats,
) -> None:
    async with sim_stack(nats_server) as stack, running(book_service.run, stack.cfg):
        await wait_until(stack.all_valid, 20, "every subscribed book VALID")
        await stack.settle()
        assert stack.mismatches() == []
        books = stack.instruments()
        assert len(books) >= 20 and {s[:3] for s in books} == {"BTC", "ETH"}

        # The busiest BTC option so far: it will see its next delta soon after the fault.
        counts: dict[str, int] = {}
        for p in stack.published:
            counts[p.top.symbol] = counts.get(p.top.symbol, 0) + 1
        target = max(
            (s for s in books if s.startswith("BTC") and s.endswith(("-C", "-P"))),
            key=lambda s: counts.get(s, 0),
        )
        before = len(stack.published)
        await stack.sim.fault("sequence_gap", venue="deribit", symbol=target)
        stack.stepping = True

        def target_tops() -> list[Published]:
            return [p for p in stack.published[before:] if p.top.symbol == target]

        await wait_until(
            lambda: any(p.top.status != VALID for p in target_tops()), 10, f"{target} invalid"
        )
        invalid_at = next(p.wall for p in target_tops() if p.top.status != VALID)
        took = await wait_until(
            lambda: any(p.top.status == VALID and p.wall > invalid_at for p in target_tops()),
            5,
            f"{target} VALID again",
        )
        for p in target_tops():
            if p.top.status != VALID:
                # The connector turns the venue's gap into a BookReset (-> AWAITING_SNAPSHOT);
                # a gap only the book sees would be GAP. Either way: the status, no prices.
                assert p.top.status in (AWAITING, GAP)
                assert not has_prices(p.top)
        # The service named the invalid book on ctl.connector.deribit.resync too.
        assert any(target in request for request in stack.resync_requests)

        # Keep going a little: the others must keep updating meanwhile.
        await asyncio.sleep(1.0)
        await stack.settle()
        assert stack.mismatches() == []
        others = [p for p in stack.published[before:] if p.top.symbol != target]
        assert all(p.top.status == VALID for p in others), [
            (p.top.symbol, p.top.status) for p in others if p.top.status != VALID
        ]
        updated = {p.top.symbol for p in others if not p.subject.endswith(".keyframe")}
        assert {s[:3] for s in updated} == {"BTC", "ETH"} and len(updated) >= 10
        assert took < 3.0


async def test_restart_rebuilds_via_resync_and_never_publishes_a_wrong_price(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keyframes every second of event time (not 5 s): the one the restart reads back then
    # holds every book without a 5 s wait.
    monkeypatch.setattr(book_service, "KEYFRAME_INTERVAL_NS", NS)
    async with sim_stack(nats_server) as stack:
        async with running(book_service.run, stack.cfg):
            await wait_until(stack.all_valid, 20, "every subscribed book VALID")
            await wait_until(stack.keyframes_cover_all, 10, "a keyframe of every book")
        # Down while the venue keeps moving: a backlog of deltas waits in MD.
        stopped_seq = (await stack.js.stream_info("BOOK")).state.last_seq
        await asyncio.sleep(1.0)
        asked_before = len(stack.resync_requests)
        restarted = time.monotonic()
        async with running(book_service.run, stack.cfg):
            took = await wait_until(
                lambda: stack.all_valid(stopped_seq),
                10,
                "every book VALID after the restart",
                lambda: stack.not_valid(stopped_seq),
            )
            await asyncio.sleep(0.5)
            await stack.settle()
            assert stack.mismatches(stopped_seq) == []

        after = [p for p in stack.published if p.stream_seq > stopped_seq]
        books = stack.instruments()
        first_status: dict[str, int] = {}
        for p in after:
            first_status.setdefault(p.top.symbol, p.top.status)
            if p.top.status == VALID:
                # Every price published after the restart is one the venue really quoted.
                quote = published_quote(p.top)
                if quote not in stack.venue_history[p.top.symbol]:
                    raise AssertionError(
                        f"{p.top.symbol} {quote} input {p.input_seq} stopped {stopped_seq}\n"
                        + "\n".join(await stack.md_trace(p.top.symbol))
                    )
            else:
                assert p.top.status == AWAITING and not has_prices(p.top)
        # The books of the last keyframe before the stop start over as AWAITING_SNAPSHOT
        # (the others as AWAITING when first seen via a delta, or VALID via a snapshot whose
        # prices were checked above), and the connector was asked to resync them.
        last_keyframe: dict[str, int] = {}
        for p in stack.published:
            if p.subject.endswith(".keyframe") and p.stream_seq <= stopped_seq:
                last_keyframe[p.subject] = p.stream_seq
        restored = {p.top.symbol for p in stack.published if p.stream_seq in last_keyframe.values()}
        assert set(books) <= restored
        assert set(books) <= set(first_status)
        assert all(first_status[s] == AWAITING for s in restored), [
            (s, first_status.get(s)) for s in restored if first_status.get(s) != AWAITING
        ]
        asked = {s for r in stack.resync_requests[asked_before:] for s in r}
        awaiting = {s for s, status in first_status.items() if status == AWAITING}
        assert restored | awaiting <= asked
        assert took < 8.0, took
        assert time.monotonic() - restarted < 30


# -- scaling: two replicas == one replica --------------------------------------------------


def recorded_deribit_events(fixtures: Path) -> list[md_pb.MarketDataEvent]:
    """The recorded Deribit book chain through the connector's own parser."""
    path = fixtures / "deribit" / "ws_book_raw_options_2021-07-22.jsonl"
    events: list[md_pb.MarketDataEvent] = []
    for line in path.read_text().splitlines():
        if line.strip():
            result = parse_frame(line, 0)
            events.extend(e.event for e in result.events)
    return events


def synthetic_events(currency: str, seed: int, start_ns: int) -> list[md_pb.MarketDataEvent]:
    """Snapshots and contiguous deltas (bench workload), then one gap and one reset."""
    work = build_workload(instruments=12, levels=8, deltas=1_500, seed=seed)
    events = list(work.snapshots) + list(work.deltas)
    for n, event in enumerate(events):
        case = event.WhichOneof("event")
        body = getattr(event, case)
        body.symbol = body.symbol.replace("BTC", currency)
        body.header.event_time_ns = start_ns + n * 10_000_000
    last = events[-1].book_delta
    gap = md_pb.MarketDataEvent()
    gap.book_delta.CopyFrom(last)
    gap.book_delta.prev_venue_sequence = last.venue_sequence + 7
    gap.book_delta.venue_sequence = last.venue_sequence + 8
    gap.book_delta.header.event_time_ns += 5_000_000
    reset = md_pb.MarketDataEvent()
    reset.book_reset.symbol = events[0].book_snapshot.symbol
    reset.book_reset.header.event_time_ns = gap.book_delta.header.event_time_ns + 1
    return [*events, gap, reset]


def md_messages(fixtures: Path) -> list[tuple[str, bytes]]:
    """(subject suffix, MarketDataBatch) in one fixed interleaving of BTC and ETH."""
    recorded = recorded_deribit_events(fixtures)
    by_ccy: dict[str, list[md_pb.MarketDataEvent]] = {"BTC": [], "ETH": []}
    for e in recorded:
        case = e.WhichOneof("event")
        by_ccy[getattr(e, case).symbol[:3]].append(e)
    start = max(getattr(e, e.WhichOneof("event")).header.event_time_ns for e in recorded) + NS
    by_ccy["BTC"] += synthetic_events("BTC", 11, start)
    by_ccy["ETH"] += synthetic_events("ETH", 12, start + 3_000_000)
    chunks: dict[str, list[bytes]] = {}
    for ccy, events in by_ccy.items():
        out = []
        for i in range(0, len(events), 40):
            part = events[i : i + 40]
            batch = md_pb.MarketDataBatch(venue="deribit", currency=ccy, events=part)
            batch.header.event_time_ns = max(
                getattr(e, e.WhichOneof("event")).header.event_time_ns for e in part
            )
            out.append(batch.SerializeToString())
        chunks[ccy] = out
    messages: list[tuple[str, bytes]] = []
    btc, eth = chunks["BTC"], chunks["ETH"]
    # Uneven interleaving: 2 BTC then 1 ETH, ...
    while btc or eth:
        for _ in range(2):
            if btc:
                messages.append(("btc", btc.pop(0)))
        if eth:
            messages.append(("eth", eth.pop(0)))
    return messages


async def book_outputs(js: JetStreamContext, namespace: str) -> dict[str, list[tuple[str, bytes]]]:
    """Per subject (namespace stripped): (msg-id without stream name, payload without
    publish time) of every message in the namespace's BOOK stream, in order."""
    subjects = Subjects(namespace)
    stream = subjects.stream_name("BOOK")
    last = (await js.stream_info(stream)).state.last_seq
    out: dict[str, list[tuple[str, bytes]]] = {}
    for seq in range(1, last + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.data is not None and msg.subject is not None
        batch = book_pb.TopOfBookBatch.FromString(msg.data)
        batch.header.publish_time_ns = 0
        subject = msg.subject.removeprefix(f"{namespace}.")
        msg_id = (
            (msg.headers or {}).get("Nats-Msg-Id", "").replace(subjects.stream_name("MD"), "MD")
        )
        msg_id = msg_id.replace(f"{namespace}.", "")
        out.setdefault(subject, []).append((msg_id, batch.SerializeToString()))
    return out


async def test_two_replicas_with_disjoint_partitions_publish_what_one_does(
    nats_server: EmbeddedNats, venue_fixtures: Path
) -> None:
    messages = md_messages(venue_fixtures)
    base = Config(nats_url=nats_server.url, venues=("deribit",), currencies=("BTC", "ETH"))
    one = replace(base, namespace="one")
    btc = replace(base, namespace="two", partitions=(Partition("deribit", "BTC"),))
    eth = replace(base, namespace="two", partitions=(Partition("deribit", "ETH"),))
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    for cfg in (one, btc):
        await provision_streams(nats_server.url, cfg)
        subjects = Subjects(cfg.namespace)
        for n, (ccy, payload) in enumerate(messages):
            await js.publish(
                subjects.md("deribit", ccy, "book"), payload, headers={"Nats-Msg-Id": f"in-{n}"}
            )

    async def drained(namespace: str, durables: list[str]) -> None:
        stream = Subjects(namespace).stream_name("MD")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                infos = [await js.consumer_info(stream, d) for d in durables]
                if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos):
                    return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{durables} did not drain")

    async with running(book_service.run, one):
        await drained("one", ["book-all"])
    async with running(book_service.run, btc), running(book_service.run, eth):
        await drained("two", ["book-deribit_btc", "book-deribit_eth"])

    single = await book_outputs(js, "one")
    split = await book_outputs(js, "two")
    await nc.close()

    assert set(single) == {
        "book.deribit.btc",
        "book.deribit.btc.keyframe",
        "book.deribit.eth",
        "book.deribit.eth.keyframe",
    }
    for subject in single:
        assert split[subject] == single[subject], subject
    # The input exercised what matters: several keyframes, VALID prices, a gap, a reset.
    statuses = set()
    for _, payload in single["book.deribit.btc"]:
        statuses |= {t.status for t in book_pb.TopOfBookBatch.FromString(payload).tops}
    assert statuses == {VALID, GAP, AWAITING}
    assert len(single["book.deribit.eth.keyframe"]) >= 3
    assert sum(len(v) for v in single.values()) > 60
