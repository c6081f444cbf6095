"""Fixtures: a running simulator on a free port, and a small JSON-RPC websocket client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from simulator import SimConfig, SimHandle, run_simulator


class RpcClient:
    """A plain websocket client speaking Deribit JSON-RPC; keeps notifications in order."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.raw_frames: list[str] = []

    @classmethod
    async def connect(cls, url: str) -> RpcClient:
        ws = await websockets.connect(url, max_size=2**24, max_queue=None)
        return cls(ws)

    async def close(self) -> None:
        await self.ws.close()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        req_id = next(self._ids)
        msg = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}}
        await self.ws.send(orjson.dumps(msg).decode())
        return req_id

    async def recv(self, wait: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), wait)
        text = raw if isinstance(raw, str) else raw.decode()
        self.raw_frames.append(text)
        msg = orjson.loads(text)
        assert isinstance(msg, dict)
        return msg

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send a request and return its response; notifications in between are dropped."""
        req_id = await self.send(method, params)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            msg = await self.recv()
            if msg.get("id") == req_id:
                return msg
        raise AssertionError(f"no response to {method}")

    async def drain(self, wait: float = 0.1) -> list[dict[str, Any]]:
        """Every message until none arrives for `wait` seconds (after a manual clock step)."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                out.append(await self.recv(wait=wait))
            except TimeoutError:
                return out

    async def notifications(self, seconds: float) -> list[dict[str, Any]]:
        """Every subscription notification received within `seconds`."""
        out: list[dict[str, Any]] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                msg = await self.recv(wait=left)
            except TimeoutError:
                break
            if msg.get("method") == "subscription":
                out.append(msg)
        return out


async def get_instruments(
    handle: SimHandle, currency: str = "BTC", kind: str | None = "option", expired: bool = False
) -> tuple[int, dict[str, Any]]:
    params = {"currency": currency, "expired": "true" if expired else "false"}
    if kind:
        params["kind"] = kind
    url = f"{handle.urls['deribit'].rest_base}/public/get_instruments"
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as resp:
        return resp.status, orjson.loads(await resp.read())


async def control_fault(handle: SimHandle, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{handle.base_url}/control/fault", json=body) as resp,
    ):
        return resp.status, orjson.loads(await resp.read())


async def option_names(sim: SimHandle, currency: str = "BTC") -> dict[str, dict[str, Any]]:
    _, body = await get_instruments(sim, currency, "option")
    return {i["instrument_name"]: i for i in body["result"]}


def near_money(sim: SimHandle, insts: dict[str, dict[str, Any]], n: int) -> list[str]:
    index = sim.truth.snapshot("BTC").index
    return sorted(insts, key=lambda name: abs(math.log(insts[name]["strike"] / index)))[:n]


class LocalBook:
    """What a connector does with a Deribit book channel."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        assert snapshot["type"] == "snapshot"
        self.change_id: int = snapshot["change_id"]
        self.bids = {p: a for action, p, a in snapshot["bids"] if action == "new"}
        self.asks = {p: a for action, p, a in snapshot["asks"] if action == "new"}

    def apply(self, change: dict[str, Any]) -> None:
        assert change["type"] == "change"
        assert change["prev_change_id"] == self.change_id, "gap in the change_id chain"
        assert change["change_id"] > change["prev_change_id"]
        for side, entries in ((self.bids, change["bids"]), (self.asks, change["asks"])):
            for action, price, amount in entries:
                if action == "delete":
                    assert price in side, "delete of a level the book does not have"
                    assert amount == 0.0
                    del side[price]
                elif action == "new":
                    assert price not in side, "new level already present"
                    side[price] = amount
                else:
                    assert action == "change" and price in side
                    side[price] = amount
        self.change_id = change["change_id"]
        if self.bids and self.asks:
            assert max(self.bids) < min(self.asks), "crossed book"


def small_config(**overrides: Any) -> SimConfig:
    """A fast-to-start simulator: 3 expiries, BTC and ETH, heartbeats allowed from 0.5 s."""
    base: dict[str, Any] = {
        "max_expiries": 3,
        "messages_per_second": 4_000.0,
        "min_heartbeat_interval_s": 0.5,
        "index_interval_s": 0.2,
    }
    base.update(overrides)
    return SimConfig(**base)


@contextlib.asynccontextmanager
async def running(config: SimConfig) -> AsyncIterator[SimHandle]:
    """A simulator stopped however the test ends."""
    handle = await run_simulator(config)
    try:
        yield handle
    finally:
        await handle.stop()


@pytest.fixture
async def sim() -> AsyncIterator[SimHandle]:
    async with running(small_config()) as handle:
        yield handle


@pytest.fixture
async def client(sim: SimHandle) -> AsyncIterator[RpcClient]:
    c = await RpcClient.connect(sim.urls["deribit"].ws_url)
    try:
        yield c
    finally:
        await c.close()
