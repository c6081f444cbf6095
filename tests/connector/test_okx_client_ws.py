"""The OKX connector (and the shared websocket runtime) over real HTTP and websockets.

A small OKX-protocol server runs in the test: it serves instruments from the recorded REST
body and answers each ``books`` subscription by replaying the recorded, checksummed book
chain (snapshot + 98 updates; the checksum covers only the levels, so the chain is valid
for any instId). It acks subscriptions per argument, answers ``ping`` with ``pong`` and
can be told to drop connections, go silent, corrupt a checksum, or list/delist instruments.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from svc_connector.venues import registry
from svc_connector.venues.base import ConnectionState, ConnectorConfig, MemorySink
from svc_connector.venues.okx.client import OkxConnector
from tests.connector.deribit_fixtures import Books, lines

OPTIONS = 5


class OkxReplayVenue:
    def __init__(self, instruments: list[dict[str, Any]], chain: list[dict[str, Any]]) -> None:
        self.instruments = instruments
        self.chain = chain
        self.sockets: set[web.WebSocketResponse] = set()
        self.requests: list[tuple[str, str]] = []
        self.pings = 0
        # Cleared: the venue sends and answers nothing (not even pong).
        self.speaking = asyncio.Event()
        self.speaking.set()
        self.corrupt: set[str] = set()
        self._streams: dict[tuple[int, str], asyncio.Task[None]] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/okx/api/v5/public/instruments", self._instruments)
        app.router.add_get("/okx/ws/v5/public", self._ws)
        return app

    async def _instruments(self, request: web.Request) -> web.Response:
        wanted = request.query.get("instType")
        data = [i for i in self.instruments if i["instType"] == wanted]
        return web.json_response({"code": "0", "msg": "", "data": data})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT or not self.speaking.is_set():
                    continue
                if message.data == "ping":
                    self.pings += 1
                    await ws.send_str("pong")
                    continue
                body = orjson.loads(message.data)
                for arg in body["args"]:
                    key = arg.get("instId") or arg.get("instFamily") or arg.get("instType")
                    self.requests.append((body["op"], f"{arg['channel']}:{key}"))
                    ack = {"id": body["id"], "event": body["op"], "arg": arg, "connId": "c"}
                    await ws.send_bytes(orjson.dumps(ack))
                    if arg["channel"] == "books":
                        self._restart_stream(ws, arg["instId"], body["op"] == "subscribe")
        finally:
            self.sockets.discard(ws)
            for (socket_id, inst), task in list(self._streams.items()):
                if socket_id == id(ws):
                    task.cancel()
                    self._streams.pop((socket_id, inst))
        return ws

    def _restart_stream(self, ws: web.WebSocketResponse, inst: str, start: bool) -> None:
        old = self._streams.pop((id(ws), inst), None)
        if old is not None:
            old.cancel()
        if start:
            self._streams[(id(ws), inst)] = asyncio.create_task(self._replay(ws, inst))

    async def _replay(self, ws: web.WebSocketResponse, inst: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            for message in self.chain:
                await self.speaking.wait()
                frame = {**message, "arg": {"channel": "books", "instId": inst}}
                if message["action"] == "update" and inst in self.corrupt:
                    self.corrupt.discard(inst)
                    entry = dict(message["data"][0])
                    entry["checksum"] += 1
                    frame["data"] = [entry]
                await ws.send_bytes(orjson.dumps(frame))
                await asyncio.sleep(0.002)

    async def drop_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close()


@dataclass
class Running:
    venue: OkxReplayVenue
    connector: OkxConnector
    sink: MemorySink

    def all_live(self) -> bool:
        conns = self.connector.connections
        return bool(conns) and all(c.state == ConnectionState.LIVE for c in conns)

    def books_done(self, symbols: list[str], after: int = 0) -> Callable[[MemorySink], bool]:
        def check(sink: MemorySink) -> bool:
            deltas = Counter(e.book_delta.symbol for e in sink.of_case("book_delta")[after:])
            return all(deltas[s] >= 98 for s in symbols)

        return check


@asynccontextmanager
async def running(venue_fixtures: Path, **changes: Any) -> AsyncIterator[Running]:
    body = orjson.loads(
        (venue_fixtures / "okx" / "rest_instruments_OPTION_BTC-USD_2022-05-13.json").read_bytes()
    )
    chain_path = venue_fixtures / "okx" / "ws_books_checksum_BTC-USD-220527_2022-05-13.jsonl"
    venue = OkxReplayVenue(body["data"][:OPTIONS], [orjson.loads(f) for f in lines(chain_path)])
    runner = web.AppRunner(venue.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    adapter = registry.get("okx")
    base = f"127.0.0.1:{port}/okx"
    config = ConnectorConfig(
        currencies=("BTC",),
        endpoints=adapter.simulator_endpoints(f"http://{base}", f"ws://{base}"),
        max_channels_per_connection=4,
        heartbeat_interval_s=0.3,
        watchdog_timeout_s=1.5,
        reconnect_initial_s=0.05,
        reconnect_max_s=0.3,
        instrument_refresh_s=0.3,
        venue_options={"future_tickers": "false"},
    )
    sink = MemorySink()
    connector = adapter.make_connector(replace(config, **changes), sink)
    assert isinstance(connector, OkxConnector)
    task = asyncio.create_task(connector.run())
    state = Running(venue, connector, sink)
    try:
        symbols = [i["instId"] for i in venue.instruments]
        await sink.wait_for(lambda s: state.all_live() and state.books_done(symbols)(s), 15)
        yield state
    finally:
        await connector.stop()
        await asyncio.wait_for(task, 10)
        await runner.cleanup()


async def test_discovers_subscribes_and_applies_recorded_books(venue_fixtures: Path) -> None:
    async with running(venue_fixtures) as run:
        sink = run.sink
        symbols = sorted(i["instId"] for i in run.venue.instruments)
        first_set = sink.of_case("instrument_set")[0].instrument_set
        assert sorted(first_set.listed_symbols) == symbols and first_set.venue == "okx"
        # 5 books + opt-summary + index-tickers + instruments over connections of 4 channels.
        assert len(run.connector.connections) == 2
        assert sorted(ch for op, ch in run.venue.requests if op == "subscribe") == sorted(
            [f"books:{s}" for s in symbols]
            + ["opt-summary:BTC-USD", "index-tickers:BTC-USD", "instruments:OPTION"]
        )
        assert all(c.confirmed == c.desired for c in run.connector.connections)
        assert sink.counters["book.checksum_ok"] >= 99 * OPTIONS
        assert sink.counters["book.checksum_mismatch"] == 0 and sink.dead_letters == []
        books = Books()
        for event in sink.events:
            books.apply(event.event)
        assert books.broken == set() and all(books.sequence[s] == 99 for s in symbols)
        # Keep-alive: "ping" after 0.3 s without traffic, answered by "pong".
        await sink.wait_for(lambda s: s.counters["heartbeat.pong"] >= 2, 5)
        assert run.venue.pings >= 2 and sink.counters["connection.watchdog_timeout"] == 0


async def test_checksum_mismatch_resyncs_that_book_on_the_same_connection(
    venue_fixtures: Path,
) -> None:
    async with running(venue_fixtures) as run:
        symbol = run.venue.instruments[0]["instId"]
        connected = run.sink.counters["connection.connected"]
        run.venue.corrupt.add(symbol)
        run.connector.resync_books([symbol])  # a consumer asks: the replay restarts
        after = len(run.sink.of_case("book_delta"))
        await run.sink.wait_for(lambda s: s.counters["book.checksum_mismatch"] >= 1, 10)
        await run.sink.wait_for(run.books_done([symbol], after), 10)
        resets = [e.book_reset for e in run.sink.of_case("book_reset")]
        assert [r.symbol for r in resets] == [symbol] and "checksum" in resets[0].reason
        assert ("unsubscribe", f"books:{symbol}") in run.venue.requests
        assert run.sink.counters["connection.connected"] == connected
        books = Books()
        for event in run.sink.events:
            books.apply(event.event)
        assert symbol not in books.broken


async def test_reconnects_after_drops_and_a_silent_venue(venue_fixtures: Path) -> None:
    async with running(venue_fixtures) as run:
        symbols = [i["instId"] for i in run.venue.instruments]
        conns = len(run.connector.connections)
        after = len(run.sink.of_case("book_delta"))
        await run.venue.drop_all()
        await run.sink.wait_for(
            lambda s: (
                s.counters["connection.connected"] >= 2 * conns
                and run.all_live()
                and run.books_done(symbols, after)(s)
            ),
            15,
        )
        assert run.sink.counters["connection.reconnect"] >= conns
        # Silent: no data, no pong -> the watchdog reconnects.
        run.venue.speaking.clear()
        await run.sink.wait_for(lambda s: s.counters["connection.watchdog_timeout"] >= 1, 10)
        run.venue.speaking.set()
        await run.sink.wait_for(lambda s: run.all_live(), 15)
        books = Books()
        for event in run.sink.events:
            books.apply(event.event)  # asserts every delta sits on the sequence it holds
        assert books.broken == set() and run.sink.dead_letters == []


async def test_listing_and_delisting_without_restart(venue_fixtures: Path) -> None:
    async with running(venue_fixtures) as run:
        new = dict(run.venue.instruments[0], instId="BTC-USD-220514-99000-C", stk="99000")
        run.venue.instruments.append(new)
        await run.sink.wait_for(
            lambda s: any(
                "BTC-USD-220514-99000-C" in e.instrument_set.listed_symbols
                for e in s.of_case("instrument_set")
            ),
            10,
        )
        await run.sink.wait_for(run.books_done(["BTC-USD-220514-99000-C"]), 10)
        gone = run.venue.instruments.pop(0)["instId"]
        await run.sink.wait_for(
            lambda s: any(
                gone in e.instrument_set.delisted_symbols for e in s.of_case("instrument_set")
            ),
            10,
        )
        await run.sink.wait_for(
            lambda s: ("unsubscribe", f"books:{gone}") in run.venue.requests, 10
        )
        channels = set().union(*(c.desired for c in run.connector.connections))
        assert f"books:{gone}" not in channels and "books:BTC-USD-220514-99000-C" in channels
        # The listing may open a connection; none was restarted.
        assert all(c.connects == 1 for c in run.connector.connections)
        assert run.sink.counters["connection.reconnect"] == 0
