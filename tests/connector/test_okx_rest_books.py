"""OKX books without a websocket snapshot (the removal OKX announced for August 2026): the
book is built from the REST book with the documented seqId/prevSeqId buffering, checksum 0
is absent. Pure session tests with the venue's message shapes, then the connector against a
simulator that sends no snapshots, over real websockets and HTTP."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson

from simulator import SimConfig, run_simulator
from svc_connector.runtime.pool import PooledConnector
from svc_connector.venues import registry
from svc_connector.venues.base import ConnectorConfig, MemorySink
from svc_connector.venues.okx import constants as c
from svc_connector.venues.okx.session import OkxSession
from tests.connector.hot_path import frame_view
from tests.connector.test_deribit_client_sim import _assert_books_consistent as consistent_books
from tests.connector.test_deribit_client_sim import resynced
from volstream.v1 import market_data_pb2 as md_pb

SYMBOL = "BTC-USD-260828-100000-C"
ARG = {"channel": "books", "instId": SYMBOL}


def _update(
    prev: int, seq: int, bids: list[list[str]], asks: list[list[str]] | None = None
) -> bytes:
    data = {
        "asks": asks or [],
        "bids": bids,
        "ts": str(1_780_000_000_000 + seq),
        "checksum": 0,
        "prevSeqId": prev,
        "seqId": seq,
    }
    return orjson.dumps({"arg": ARG, "action": "update", "data": [data]})


def _rest(seq: int | None, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    book: dict[str, Any] = {"asks": asks, "bids": bids, "ts": "1780000000100"}
    if seq is not None:
        book["seqId"] = seq
    return orjson.dumps({"code": "0", "msg": "", "data": [book]})


def _sessions() -> tuple[OkxSession, OkxSession]:
    made = []
    for hot in (False, True):
        session = OkxSession(sequence=itertools.count(1).__next__)
        session.hot_path = hot
        made.append(session)
    return made[0], made[1]


def _events(result: Any) -> list[tuple[str, int, int]]:
    out = []
    for item in result.events:
        case = item.event.WhichOneof("event")
        if case == "book_delta":
            d = item.event.book_delta
            out.append((case, d.prev_venue_sequence, d.venue_sequence))
        elif case == "book_snapshot":
            out.append((case, 0, item.event.book_snapshot.venue_sequence))
        else:
            out.append((case, 0, 0))
    return out


def test_updates_wait_for_a_rest_snapshot_new_enough_and_bridge_onto_it() -> None:
    checked, hot = _sessions()
    frames = [
        _update(10, 11, [["0.0105", "20", "0", "2"]]),  # first update: prevSeqId 10
        _update(11, 13, [["0.0110", "5", "0", "1"]]),
    ]
    for session in (checked, hot):
        first = session.on_frame(frames[0], 1)
        assert first.events == [] and first.counts["book.no_ws_snapshot"] == 1
        (ask,) = first.resubscribes
        assert ask.reason == c.REST_SNAPSHOT_REASON and ask.symbol == SYMBOL
        assert session.on_frame(frames[1], 2).events == []
        # A REST book older than the first update's prevSeqId cannot be continued: again.
        old = session.on_rest_book(_rest(9, [["0.01", "1", "0", "1"]], []), SYMBOL, 3)
        assert old.events == [] and old.counts["book.rest_snapshot_too_old"] == 1
        assert [r.reason for r in old.resubscribes] == [c.REST_SNAPSHOT_REASON]
        # No seqId: nothing to bridge with (dead-lettered, asked again later).
        bad = session.on_rest_book(_rest(None, [], []), SYMBOL, 4)
        assert bad.counts["book.rest_snapshot_bad"] == 1 and "seqId" in bad.dead_letters[0].reason
        # seqId 12: update 11 is in it (dropped), update 13 (prev 11 <= 12 < 13) continues it.
        rest = session.on_rest_book(
            _rest(12, [["0.0105", "20", "0", "2"]], [["0.0115", "3", "0", "1"]]), SYMBOL, 5
        )
        assert _events(rest) == [("book_snapshot", 0, 12), ("book_delta", 12, 13)]
        assert rest.counts["book.rest_snapshot"] == 1 and rest.counts["book.stale_dropped"] == 1
        assert rest.counts["book.bridged"] == 1
    # From then on the usual rule, on either path; checksum 0 is "absent".
    later = [
        _update(13, 14, [["0.0110", "0", "0", "0"]]),
        _update(14, 14, []),  # keep-alive
        _update(14, 16, [], [["0.0120", "7", "0", "1"]]),
    ]
    for frame in later:
        want = checked.on_frame(frame, 6)
        got = hot.on_frame(frame, 6)
        assert frame_view(got) == frame_view(want)
        assert want.counts["book.checksum_absent"] == 1
    assert checked.hot_hits == 0 and hot.hot_hits == 3
    assert _events(want) == [("book_delta", 14, 16)]


def test_a_rest_snapshot_past_every_kept_update_bridges_the_next_live_one() -> None:
    session = OkxSession(sequence=itertools.count(1).__next__)
    session.on_frame(_update(20, 21, [["0.02", "1", "0", "1"]]), 1)
    rest = session.on_rest_book(_rest(25, [["0.02", "2", "0", "1"]], []), SYMBOL, 2)
    assert _events(rest) == [("book_snapshot", 0, 25)] and rest.counts["book.stale_dropped"] == 1
    # A live update that does not start exactly at 25 but spans it: bridged.
    result = session.on_frame(_update(24, 27, [["0.021", "1", "0", "1"]]), 3)
    assert _events(result) == [("book_delta", 25, 27)] and result.counts["book.bridged"] == 1
    # A gap now resyncs from REST (a resubscribe would bring no snapshot).
    gap = session.on_frame(_update(30, 31, []), 4)
    assert [e.event.WhichOneof("event") for e in gap.events] == ["book_reset"]
    assert [r.reason for r in gap.resubscribes] == [c.REST_SNAPSHOT_REASON]
    again = session.on_rest_book(_rest(31, [["0.02", "2", "0", "1"]], []), SYMBOL, 5)
    assert _events(again) == [("book_snapshot", 0, 31)]


def test_a_websocket_snapshot_still_wins_when_the_venue_sends_one() -> None:
    session = OkxSession(sequence=itertools.count(1).__next__)
    session.on_frame(_update(5, 6, []), 1)
    snapshot = {"asks": [], "bids": [], "ts": "1", "checksum": 0, "prevSeqId": -1, "seqId": 7}
    frame = orjson.dumps({"arg": ARG, "action": "snapshot", "data": [snapshot]})
    assert _events(session.on_frame(frame, 2)) == [("book_snapshot", 0, 7)]
    late = session.on_rest_book(_rest(9, [], []), SYMBOL, 3)
    assert late.events == [] and late.counts["book.rest_snapshot_unexpected"] == 1


async def test_okx_connector_builds_books_from_rest_when_no_snapshot_arrives() -> None:
    """A simulator OKX that sends no books snapshot: every book comes from REST, each delta
    continues the book the consumer holds, and a gap resyncs from REST."""
    sim = await run_simulator(
        SimConfig(
            port=0,
            venues=("okx",),
            currencies=("BTC",),
            max_expiries=1,
            messages_per_second=400.0,
            venue_options={"okx": {"ws_snapshots": False}},
        )
    )
    adapter = registry.get("okx")
    base = sim.urls["okx"].rest_base
    config = ConnectorConfig(
        currencies=("BTC",),
        endpoints=adapter.simulator_endpoints(base, "ws" + base.removeprefix("http")),
        max_channels_per_connection=60,
        reconnect_initial_s=0.05,
        venue_options={"rest_books_per_second": "500", "snapshot_wait_s": "0.5"},
    )
    sink = MemorySink()
    connector = adapter.make_connector(config, sink)
    assert isinstance(connector, PooledConnector)
    task = asyncio.create_task(connector.run())
    try:

        def options() -> set[str]:
            sets = sink.of_case("instrument_set")
            if not sets:
                return set()
            instruments = sets[-1].instrument_set.instruments
            return {i.symbol for i in instruments if i.kind == md_pb.INSTRUMENT_KIND_OPTION}

        def every_book_built(s: MemorySink) -> bool:
            built = {e.book_snapshot.symbol for e in s.of_case("book_snapshot")}
            return bool(options()) and options() <= built and len(s.of_case("book_delta")) > 50

        await sink.wait_for(every_book_built, 25.0)
        assert sink.counters["book.no_ws_snapshot"] >= len(options())
        assert sink.counters["book.rest_snapshot"] >= len(options())
        assert sink.counters["book.gap"] == 0 and sink.dead_letters == []
        assert sink.counters["book.checksum_absent"] > 0
        # Every delta sits on the sequence the consumer holds (REST snapshot, then bridged).
        assert consistent_books(sink).broken == set()
        # A gap resyncs that book from REST.
        symbol = [e.book_delta.symbol for e in sink.of_case("book_delta")][-1]
        before = sink.counters["book.rest_snapshot"]
        await sim.fault("sequence_gap", venue="okx", symbol=symbol)
        await sink.wait_for(resynced(symbol), 15.0)
        assert sink.counters["book.rest_snapshot"] > before
        assert consistent_books(sink).broken == set()
    finally:
        await connector.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()
