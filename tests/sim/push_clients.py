"""Plain websocket clients of the simulated OKX, Bybit and Binance protocols (what a connector
sends and reads, nothing more) and the checks shared by their test files.

Each client knows how to list the venue's options over REST, subscribe books and quote
channels, and read a frame as a `BookMsg` (symbol, snapshot?, sequence, previous sequence),
so the fault checks are written once for the three venues.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import aiohttp
import orjson
import websockets

from simulator import SimConfig, SimHandle
from volmath import black76

SECONDS_PER_YEAR = 365.0 * 86_400.0


@dataclass(frozen=True)
class Option:
    symbol: str
    strike: float
    expiry_ms: int
    is_call: bool


@dataclass(frozen=True)
class BookMsg:
    symbol: str
    snapshot: bool
    seq: int
    # The sequence the venue says precedes this message (None: a snapshot starts a chain).
    prev: int | None
    bids: list[list[str]]
    asks: list[list[str]]
    raw: dict[str, Any]


def config(venue: str, **overrides: Any) -> SimConfig:
    """One venue, BTC and ETH, two expiries: starts in well under a second."""
    base: dict[str, Any] = {
        "venues": (venue,),
        "max_expiries": 2,
        "messages_per_second": 3_000.0,
        "index_interval_s": 0.2,
    }
    base.update(overrides)
    return SimConfig(**base)


def year_fraction(expiry_ms: int, ts_ms: int) -> float:
    return (expiry_ms - ts_ms) / 1000.0 / SECONDS_PER_YEAR


def black(forward: float, strike: float, t: float, vol: float, is_call: bool) -> float:
    return float(black76.price(forward, strike, t, vol, is_call))


def vega(forward: float, strike: float, t: float, vol: float) -> float:
    sd = vol * math.sqrt(t)
    d1 = (math.log(forward / strike) + 0.5 * sd * sd) / sd
    return forward * math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi) * math.sqrt(t)


def assert_reprices(
    price: float, forward: float, option: Option, ts_ms: int, vol: float, decimals: int
) -> None:
    """Black-76 at `vol` gives `price` to 1e-6 relative, allowing half a unit of the price's
    last published decimal (the venue rounds the premium it sends)."""
    t = year_fraction(option.expiry_ms, ts_ms)
    model = black(forward, option.strike, t, vol, option.is_call)
    tolerance = 1e-6 * abs(price) + 0.5 * 10.0**-decimals + 1e-12
    assert abs(model - price) <= tolerance, (option.symbol, model, price, vol, forward)


def assert_quote_iv(
    price: float, forward: float, option: Option, ts_ms: int, vol: float, iv_decimals: int
) -> None:
    """A bid/ask IV rounded to `iv_decimals` reprices the quote to within that rounding."""
    t = year_fraction(option.expiry_ms, ts_ms)
    model = black(forward, option.strike, t, vol, option.is_call)
    tolerance = vega(forward, option.strike, t, vol) * 0.6 * 10.0**-iv_decimals + 1e-6 * price
    assert abs(model - price) <= tolerance, (option.symbol, model, price, vol)


def expiry_at_8utc(expiry_ms: int) -> bool:
    d = datetime.fromtimestamp(expiry_ms / 1000, tz=UTC)
    return (d.hour, d.minute, d.second) == (8, 0, 0)


def near_money(
    handle: SimHandle, options: list[Option], n: int, currency: str = "BTC"
) -> list[str]:
    index = handle.truth.snapshot(currency).index
    ranked = sorted(options, key=lambda o: abs(math.log(o.strike / index)))
    return [o.symbol for o in ranked[:n]]


class VenueClient(abc.ABC):
    venue: ClassVar[str]
    # Kind names of FaultKind that drop/duplicate whole frames see these as book frames.

    def __init__(self, ws: websockets.ClientConnection, handle: SimHandle) -> None:
        self.ws = ws
        self.handle = handle
        self.raw_frames: list[str] = []
        self._req = 0

    @classmethod
    async def connect(cls, handle: SimHandle, path: str | None = None) -> VenueClient:
        url = path or handle.urls[cls.venue].ws_url
        ws = await websockets.connect(url, max_size=2**25, max_queue=None, ping_interval=None)
        return cls(ws, handle)

    async def close(self) -> None:
        await self.ws.close()

    def next_id(self) -> int:
        self._req += 1
        return self._req

    async def send(self, obj: object) -> None:
        await self.ws.send(orjson.dumps(obj).decode())

    async def recv_text(self, wait: float = 5.0) -> str:
        raw = await asyncio.wait_for(self.ws.recv(), wait)
        text = raw if isinstance(raw, str) else raw.decode()
        self.raw_frames.append(text)
        return text

    async def recv(self, wait: float = 5.0) -> Any:
        return orjson.loads(await self.recv_text(wait))

    async def frames(self, seconds: float) -> list[Any]:
        """Every JSON frame received within `seconds` (non-JSON frames are kept as text)."""
        return await self.frames_until(seconds, lambda _: False)

    async def frames_until(self, seconds: float, done: Callable[[list[Any]], bool]) -> list[Any]:
        """Frames until `done(frames)` holds or `seconds` passed (whichever comes first)."""
        out: list[Any] = []
        end = time.monotonic() + seconds
        while not done(out) and (left := end - time.monotonic()) > 0:
            try:
                text = await self.recv_text(wait=left)
            except TimeoutError:
                break
            try:
                out.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                out.append(text)
        return out

    async def http_get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
        url = self.handle.urls[self.venue].rest_base + path
        async with aiohttp.ClientSession() as http, http.get(url, params=params) as resp:
            return resp.status, orjson.loads(await resp.read())

    @abc.abstractmethod
    async def options(self, currency: str = "BTC") -> list[Option]: ...

    @abc.abstractmethod
    async def subscribe_books(self, symbols: list[str]) -> None:
        """Subscribe and read the acks (book frames may follow)."""

    @abc.abstractmethod
    async def subscribe_quotes(self, currency: str, symbols: list[str]) -> None:
        """Subscribe the venue's IV/mark channel covering `symbols`."""

    @abc.abstractmethod
    def book_msg(self, msg: Any) -> BookMsg | None: ...

    @abc.abstractmethod
    def quote_entries(self, msg: Any) -> list[dict[str, Any]]:
        """The per-option entries of a quote frame (ticker / opt-summary / mark price)."""

    @abc.abstractmethod
    async def ping_roundtrip(self, wait: float) -> bool:
        """Send the venue's keep-alive and report whether its answer came within `wait`."""

    async def book_frames(self, count: int, wait: float = 10.0) -> list[BookMsg]:
        out: list[BookMsg] = []
        deadline = time.monotonic() + wait
        while len(out) < count:
            assert time.monotonic() < deadline, f"only {len(out)} book frames"
            msg = await self.recv(wait=max(0.1, deadline - time.monotonic()))
            book = self.book_msg(msg)
            if book is not None:
                out.append(book)
        return out

    async def start_books(self, symbols: list[str]) -> dict[str, int]:
        """Subscribe books; return each one's sequence after its first frame."""
        await self.subscribe_books(symbols)
        last: dict[str, int] = {}
        deadline = time.monotonic() + 10
        while len(last) < len(symbols):
            assert time.monotonic() < deadline, "not every book started"
            book = self.book_msg(await self.recv())
            if book is not None and book.symbol not in last:
                last[book.symbol] = book.seq
        return last


# ---------------------------------------------------------------------------------------
# OKX


class OkxClient(VenueClient):
    venue = "okx"

    async def options(self, currency: str = "BTC") -> list[Option]:
        status, body = await self.http_get(
            "/api/v5/public/instruments", {"instType": "OPTION", "instFamily": f"{currency}-USD"}
        )
        assert status == 200 and body["code"] == "0"
        return [
            Option(d["instId"], float(d["stk"]), int(d["expTime"]), d["optType"] == "C")
            for d in body["data"]
        ]

    async def subscribe(self, args: list[dict[str, str]], op: str = "subscribe") -> list[Any]:
        req_id = str(self.next_id())
        await self.send({"id": req_id, "op": op, "args": args})
        acks: list[Any] = []
        while len(acks) < len(args):
            msg = await self.recv()
            if msg.get("id") == req_id and "event" in msg:
                acks.append(msg)
        return acks

    async def subscribe_books(self, symbols: list[str]) -> None:
        acks = await self.subscribe([{"channel": "books", "instId": s} for s in symbols])
        assert all(a["event"] == "subscribe" for a in acks), acks

    async def subscribe_quotes(self, currency: str, symbols: list[str]) -> None:
        await self.subscribe([{"channel": "opt-summary", "instFamily": f"{currency}-USD"}])

    def book_msg(self, msg: Any) -> BookMsg | None:
        if not isinstance(msg, dict) or msg.get("arg", {}).get("channel") != "books":
            return None
        data = msg["data"][0]
        snapshot = msg["action"] == "snapshot"
        return BookMsg(
            msg["arg"]["instId"],
            snapshot,
            data["seqId"],
            None if snapshot else data["prevSeqId"],
            data["bids"],
            data["asks"],
            msg,
        )

    def quote_entries(self, msg: Any) -> list[dict[str, Any]]:
        if isinstance(msg, dict) and msg.get("arg", {}).get("channel") == "opt-summary":
            return list(msg["data"])
        return []

    async def ping_roundtrip(self, wait: float) -> bool:
        await self.ws.send("ping")
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            try:
                if await self.recv_text(wait=left) == "pong":
                    return True
            except TimeoutError:
                return False
        return False


# ---------------------------------------------------------------------------------------
# Bybit


def bybit_expiry_ms(label: str) -> int:
    d = datetime.strptime(label, "%d%b%y").replace(hour=8, tzinfo=UTC)
    return int(d.timestamp() * 1000)


class BybitClient(VenueClient):
    venue = "bybit"

    async def options(self, currency: str = "BTC") -> list[Option]:
        out: list[Option] = []
        cursor = ""
        while True:
            params = {"category": "option", "baseCoin": currency, "limit": "200"}
            if cursor:
                params["cursor"] = cursor
            status, body = await self.http_get("/v5/market/instruments-info", params)
            assert status == 200 and body["retCode"] == 0, body
            for d in body["result"]["list"]:
                strike = float(d["symbol"].split("-")[2])
                out.append(
                    Option(d["symbol"], strike, int(d["deliveryTime"]), d["optionsType"] == "Call")
                )
            cursor = body["result"]["nextPageCursor"]
            if not cursor:
                return out

    async def request(self, op: str, args: list[str]) -> dict[str, Any]:
        req_id = str(self.next_id())
        await self.send({"req_id": req_id, "op": op, "args": args})
        while True:
            msg = await self.recv()
            if msg.get("req_id") == req_id:
                assert isinstance(msg, dict)
                return msg

    async def subscribe_books(self, symbols: list[str]) -> None:
        ack = await self.request("subscribe", [f"orderbook.25.{s}" for s in symbols])
        assert ack["success"] is True, ack

    async def subscribe_quotes(self, currency: str, symbols: list[str]) -> None:
        ack = await self.request("subscribe", [f"tickers.{s}" for s in symbols])
        assert ack["success"] is True, ack

    def book_msg(self, msg: Any) -> BookMsg | None:
        if not isinstance(msg, dict) or not str(msg.get("topic", "")).startswith("orderbook."):
            return None
        data = msg["data"]
        snapshot = msg["type"] == "snapshot"
        return BookMsg(
            data["s"],
            snapshot,
            data["u"],
            None if snapshot else data["u"] - 1,
            data["b"],
            data["a"],
            msg,
        )

    def quote_entries(self, msg: Any) -> list[dict[str, Any]]:
        if isinstance(msg, dict) and str(msg.get("topic", "")).startswith("tickers."):
            return [msg["data"]]
        return []

    async def ping_roundtrip(self, wait: float) -> bool:
        await self.send({"req_id": "hb", "op": "ping"})
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await self.recv(wait=left)
            except TimeoutError:
                return False
            if isinstance(msg, dict) and msg.get("op") == "pong":
                return True
        return False


# ---------------------------------------------------------------------------------------
# Binance


class BinanceClient(VenueClient):
    venue = "binance"

    @classmethod
    async def connect(cls, handle: SimHandle, path: str | None = None) -> VenueClient:
        base = handle.urls[cls.venue].ws_url.rsplit("/ws", 1)[0]
        return await super().connect(handle, path or f"{base}/stream")

    async def options(self, currency: str = "BTC") -> list[Option]:
        status, body = await self.http_get("/eapi/v1/exchangeInfo")
        assert status == 200
        return [
            Option(d["symbol"], float(d["strikePrice"]), int(d["expiryDate"]), d["side"] == "CALL")
            for d in body["optionSymbols"]
            if d["underlying"] == f"{currency}USDT"
        ]

    async def request(self, method: str, params: list[str]) -> dict[str, Any]:
        req_id = self.next_id()
        await self.send({"method": method, "params": params, "id": req_id})
        while True:
            msg = await self.recv()
            if isinstance(msg, dict) and msg.get("id") == req_id and "stream" not in msg:
                return msg

    async def subscribe_books(self, symbols: list[str]) -> None:
        ack = await self.request("SUBSCRIBE", [f"{s.lower()}@depth20@100ms" for s in symbols])
        assert ack == {"result": None, "id": ack["id"]}, ack

    async def subscribe_quotes(self, currency: str, symbols: list[str]) -> None:
        ack = await self.request("SUBSCRIBE", [f"{currency.lower()}usdt@optionMarkPrice"])
        assert ack["result"] is None, ack

    def book_msg(self, msg: Any) -> BookMsg | None:
        if not isinstance(msg, dict) or "@depth20" not in str(msg.get("stream", "")):
            return None
        data = msg["data"]
        first = data["pu"] == data["u"]
        return BookMsg(
            data["s"], first, data["u"], None if first else data["pu"], data["b"], data["a"], msg
        )

    def quote_entries(self, msg: Any) -> list[dict[str, Any]]:
        if isinstance(msg, dict) and str(msg.get("stream", "")).endswith("@optionMarkPrice"):
            return list(msg["data"])
        return []

    async def ping_roundtrip(self, wait: float) -> bool:
        # Binance pings the client, not the other way round: a request answered stands in.
        try:
            req_id = self.next_id()
            await self.send({"method": "LIST_SUBSCRIPTIONS", "id": req_id})
            end = time.monotonic() + wait
            while (left := end - time.monotonic()) > 0:
                msg = await self.recv(wait=left)
                if isinstance(msg, dict) and msg.get("id") == req_id:
                    return True
        except TimeoutError:
            return False
        return False


# ---------------------------------------------------------------------------------------
# fault checks shared by the three venues


ClientT = TypeVar("ClientT", bound=VenueClient)


@contextlib.asynccontextmanager
async def connected(cls: type[ClientT], handle: SimHandle) -> AsyncIterator[ClientT]:
    """A client of `cls`'s venue, closed however the test ends."""
    client = await cls.connect(handle)
    assert isinstance(client, cls)
    try:
        yield client
    finally:
        await client.close()


async def read_chain(
    client: VenueClient, last: dict[str, int], target: str, until_target: int
) -> list[BookMsg]:
    """Read book frames, checking every other book's chain, until `until_target` frames of
    `target` arrived; returns those."""
    got: list[BookMsg] = []
    deadline = time.monotonic() + 15
    while len(got) < until_target:
        assert time.monotonic() < deadline, "target book went quiet"
        book = client.book_msg(await client.recv())
        if book is None:
            continue
        if book.symbol == target:
            got.append(book)
            continue
        assert book.prev == last[book.symbol], "other books keep their chain"
        last[book.symbol] = book.seq
    return got


async def check_stream_faults(handle: SimHandle, cls: type[VenueClient]) -> None:
    venue = cls.venue
    client = await cls.connect(handle)
    try:
        names = near_money(handle, await client.options("BTC"), 6)
        last = await client.start_books(names)
        target = names[0]

        result = await handle.fault("sequence_gap", venue=venue, symbol=target)
        assert result["connections"] and result["symbol"] == target
        (after_gap,) = await read_chain(client, last, target, 1)
        assert after_gap.prev is not None and after_gap.prev != last[target], "a frame was dropped"
        last[target] = after_gap.seq

        await handle.fault("out_of_order", venue=venue, symbol=target)
        first, second = await read_chain(client, last, target, 2)
        # The later frame arrives first; the one continuing the chain follows.
        assert first.prev == second.seq
        assert second.prev == last[target]
        last[target] = first.seq

        await client.subscribe_quotes("BTC", names)
        await client.frames_until(2.0, lambda fs: any(client.quote_entries(f) for f in fs))
        before = len(client.raw_frames)
        await handle.fault("duplicate", venue=venue)
        await client.frames(0.2)
        frames = client.raw_frames[before - 1 :]
        assert any(f == frames[i] for i, f in enumerate(frames[1:])), "a frame came twice"

        await handle.fault("malformed", venue=venue, count=2)
        bad = [f for f in await client.frames(0.2) if isinstance(f, str)]
        assert len(bad) == 2
        for text in bad:
            try:
                orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            raise AssertionError("malformed frame parsed")

        def unknown(f: Any) -> bool:
            return isinstance(f, dict) and bool(f.get("xSimUnannounced"))

        await handle.fault("unknown_fields", venue=venue, count=3)
        frames_after = await client.frames_until(2.0, lambda fs: sum(map(unknown, fs)) >= 3)
        frames_after += await client.frames(0.1)
        marked = [f for f in frames_after if unknown(f)]
        assert len(marked) == 3
        assert all("xSimNewField" in orjson.dumps(f).decode() for f in marked)

        def slim_entries(fs: list[Any]) -> list[dict[str, Any]]:
            entries = [e for f in fs for e in client.quote_entries(f)]
            return [e for e in entries if cls_optional(cls) not in e]

        await handle.fault("missing_fields", venue=venue, count=1)
        slim = slim_entries(await client.frames_until(2.0, lambda fs: bool(slim_entries(fs))))
        assert slim, "a quote frame lost its optional fields"
        assert all(cls_required(cls) in e for e in slim)
    finally:
        await client.close()


def cls_optional(cls: type[VenueClient]) -> str:
    return {"okx": "gammaBS", "bybit": "gamma", "binance": "g"}[cls.venue]


def cls_required(cls: type[VenueClient]) -> str:
    return {"okx": "markVol", "bybit": "markPriceIv", "binance": "vo"}[cls.venue]


async def check_connection_faults(handle: SimHandle, cls: type[VenueClient]) -> None:
    venue = cls.venue
    a = await cls.connect(handle)
    b = await cls.connect(handle)
    try:
        names = near_money(handle, await a.options("BTC"), 10)
        await a.subscribe_books(names)
        assert [f for f in await a.frames(0.3) if a.book_msg(f)], "books flow before the stall"
        await handle.fault("heartbeat_stall", venue=venue, duration_s=0.9)
        await asyncio.sleep(0.1)
        await a.frames(0.05)  # frames already on the wire may still land
        assert not await a.ping_roundtrip(0.4), "a stalled connection answers nothing"
        assert [f for f in await a.frames(0.2) if a.book_msg(f)] == []
        await asyncio.sleep(0.2)
        resumed = await a.frames_until(2.0, lambda fs: any(map(a.book_msg, fs)))
        assert [f for f in resumed if a.book_msg(f)], "data flows after the stall"
        assert await a.ping_roundtrip(2.0)

        stats = handle.venue(venue).stats()
        conns = stats["connections"]
        assert isinstance(conns, list) and len(conns) == 2
        first_id = conns[0]["id"]
        result = await handle.fault("disconnect", venue=venue, connection_id=first_id)
        assert result["connections"] == [first_id]
        try:
            await a.frames(1.0)
            await a.recv(wait=1.0)
            raise AssertionError("connection still open")
        except websockets.ConnectionClosed:
            pass
        assert await b.ping_roundtrip(2.0), "the other connection is untouched"
    finally:
        await a.close()
        await b.close()


async def check_listing_faults(handle: SimHandle, cls: type[VenueClient]) -> None:
    venue = cls.venue
    client = await cls.connect(handle)
    try:
        before = {o.symbol for o in await client.options("BTC")}
        listed = await handle.fault("list", venue=venue, currency="BTC")
        new = listed["symbols"]
        assert isinstance(new, list) and len(new) == 2
        after = {o.symbol for o in await client.options("BTC")}
        assert after == before | set(new)
        await client.subscribe_books([str(new[0])])
        first = (await client.book_frames(1))[0]
        assert first.symbol == new[0] and first.snapshot

        expired = await handle.fault("expire", venue=venue, symbol=str(new[0]))
        assert expired["symbols"] == [new[0]]
        assert str(new[0]) not in {o.symbol for o in await client.options("BTC")}
        assert not await subscribe_ok(client, str(new[0])), "an expired option cannot be subscribed"

        names = near_money(handle, [o for o in await client.options("BTC")], 10)
        await client.subscribe_books(names)
        await client.frames(0.2)
        target = names[0]

        def symbols(fs: list[Any]) -> set[str]:
            return {b.symbol for f in fs if (b := client.book_msg(f))}

        await handle.fault("stale_quotes", venue=venue, symbol=target, duration_s=0.7)
        during = symbols(await client.frames(0.6))
        assert target not in during and len(during) >= 4
        after_stale = symbols(await client.frames_until(3.0, lambda fs: target in symbols(fs)))
        assert target in after_stale
    finally:
        await client.close()


async def subscribe_ok(client: VenueClient, symbol: str) -> bool:
    """Whether the venue accepts a book subscription for `symbol`."""
    if isinstance(client, OkxClient):
        acks = await client.subscribe([{"channel": "books", "instId": symbol}])
        return bool(acks[0]["event"] == "subscribe")
    if isinstance(client, BybitClient):
        ack = await client.request("subscribe", [f"orderbook.25.{symbol}"])
        return bool(ack["success"])
    assert isinstance(client, BinanceClient)
    ack = await client.request("SUBSCRIBE", [f"{symbol.lower()}@depth20@100ms"])
    return "error" not in ack
