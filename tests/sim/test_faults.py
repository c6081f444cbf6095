"""Every fault kind observably happens to a real websocket client."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from simulator import FaultKind, FaultRequest, SimHandle
from tests.sim.conftest import RpcClient, control_fault, get_instruments, near_money, option_names


async def book_stream(
    sim: SimHandle, client: RpcClient, n: int = 8
) -> tuple[list[str], dict[str, int]]:
    """Subscribe to n near-money books; return names and each book's snapshot change_id."""
    names = near_money(sim, await option_names(sim), n)
    await client.call("public/subscribe", {"channels": [f"book.{x}.100ms" for x in names]})
    last: dict[str, int] = {}
    while len(last) < n:
        msg = await client.recv()
        data = msg["params"]["data"]
        last[data["instrument_name"]] = data["change_id"]
    return names, last


async def stats(sim: SimHandle) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{sim.base_url}/control/stats") as resp,
    ):
        body = orjson.loads(await resp.read())
    assert isinstance(body, dict)
    return body


def sim_ms(sim: SimHandle) -> int:
    """The simulator's event time now, in the ms of its notifications' timestamps."""
    return sim.clock.now_ns() // 1_000_000


async def collect_until(
    client: RpcClient, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Every message (responses included) until ``done(messages)``; ``timeout_s`` only bounds
    a hang: how long delivery takes on a busy machine is not what these tests check."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while not done(out):
        left = deadline - time.monotonic()
        assert left > 0, f"condition not met in {timeout_s}s ({len(out)} messages)"
        with contextlib.suppress(TimeoutError):
            out.append(await client.recv(wait=left))
    return out


def notes_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m.get("method") == "subscription"]


async def test_disconnect_all_and_one_connection(sim: SimHandle) -> None:
    a = await RpcClient.connect(sim.urls["deribit"].ws_url)
    b = await RpcClient.connect(sim.urls["deribit"].ws_url)
    await a.call("public/test")
    await b.call("public/test")
    ids = [c["id"] for c in (await stats(sim))["venues"]["deribit"]["connections"]]
    assert len(ids) == 2
    status, body = await control_fault(
        sim, {"venue": "deribit", "kind": "disconnect", "connection_id": ids[0]}
    )
    assert status == 200 and body["ok"] and body["connections"] == [ids[0]]
    with pytest.raises(websockets.ConnectionClosed):
        await a.recv(wait=3)
    assert (await b.call("public/test"))["result"]
    status, body = await control_fault(sim, {"venue": "deribit", "kind": "disconnect"})
    assert status == 200 and body["connections"] == [ids[1]]
    with pytest.raises(websockets.ConnectionClosed):
        await b.recv(wait=3)


async def test_heartbeat_stall_silences_the_connection(sim: SimHandle, client: RpcClient) -> None:
    stall_s = 1.2
    names = near_money(sim, await option_names(sim), 30)
    await client.call(
        "public/subscribe",
        {"channels": [f"ticker.{x}.100ms" for x in names] + ["deribit_price_index.btc_usd"]},
    )
    await collect_until(client, lambda got: bool(notes_of(got)))  # data flows before the stall
    before = sim_ms(sim)
    await sim.fault("heartbeat_stall", duration_s=stall_s)
    after = sim_ms(sim)
    req = await client.send("public/test")  # read during the stall: never answered
    # Judged by the notifications' event times, not by when they arrive (frames already on
    # the wire land late on a busy machine). The stall ends stall_s after it began; the
    # last quarter of it is left as slack between a tick's event time and its sending.
    quiet_until = before + int(750 * stall_s)
    got = await collect_until(
        client,
        lambda got: any(
            m["params"]["data"]["timestamp"] >= before + 1000 * stall_s for m in notes_of(got)
        ),
        timeout_s=10 * stall_s,
    )  # data flows again after the stall
    during = [m for m in notes_of(got) if after <= m["params"]["data"]["timestamp"] < quiet_until]
    assert during == []
    assert req not in [m.get("id") for m in got]


async def test_sequence_gap_breaks_the_chain_of_one_book(sim: SimHandle, client: RpcClient) -> None:
    names, last = await book_stream(sim, client)
    target = names[0]
    result = await sim.fault("sequence_gap", symbol=target)
    assert result["connections"] and result["symbol"] == target
    gap_seen = False
    for _ in range(2000):
        data = (await client.recv())["params"]["data"]
        name = data["instrument_name"]
        if name == target and data["prev_change_id"] != last[name]:
            assert data["prev_change_id"] > last[name], "a change was skipped"
            gap_seen = True
            break
        assert data["prev_change_id"] == last[name], "other books keep their chain"
        last[name] = data["change_id"]
    assert gap_seen


async def test_duplicate_resends_the_last_notification(sim: SimHandle, client: RpcClient) -> None:
    names, _ = await book_stream(sim, client)
    await client.notifications(0.3)
    before = len(client.raw_frames)
    await sim.fault("duplicate")

    def repeated() -> list[str]:
        frames = client.raw_frames[before - 1 :]
        return [f for i, f in enumerate(frames[1:]) if f == frames[i]]

    await collect_until(client, lambda _: bool(repeated()))  # the same frame twice in a row
    repeats = repeated()
    assert orjson.loads(repeats[0])["params"]["data"]["instrument_name"] in names


async def test_out_of_order_swaps_two_changes(sim: SimHandle, client: RpcClient) -> None:
    names, last = await book_stream(sim, client)
    target = names[0]
    await sim.fault("out_of_order", symbol=target)
    seen: list[dict[str, Any]] = []
    while len(seen) < 2:
        data = (await client.recv())["params"]["data"]
        if data["instrument_name"] == target:
            seen.append(data)
    first, second = seen
    # The later change arrives first; the earlier one (continuing the chain) follows.
    assert first["prev_change_id"] == second["change_id"]
    assert second["prev_change_id"] == last[target]


async def test_malformed_frame_is_not_json(sim: SimHandle, client: RpcClient) -> None:
    await book_stream(sim, client, 3)
    _, body = await control_fault(sim, {"kind": "malformed"})
    assert body["ok"]
    bad = 0
    for _ in range(200):
        raw = await asyncio.wait_for(client.ws.recv(), 3)
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            bad += 1
            break
    assert bad == 1


async def test_unknown_and_missing_fields(sim: SimHandle, client: RpcClient) -> None:
    names = near_money(sim, await option_names(sim), 30)
    await client.call("public/subscribe", {"channels": [f"ticker.{x}.100ms" for x in names]})
    await client.notifications(0.2)

    more = 20  # the faults change the next few notifications: these would show one more

    def changed(notes: list[dict[str, Any]], is_changed: Callable[[dict[str, Any]], bool]) -> int:
        """How many notes ``is_changed``, once ``more`` unchanged ones followed the last."""
        hits = [i for i, m in enumerate(notes) if is_changed(m["params"]["data"])]
        return len(hits) if hits and len(notes) - hits[-1] > more else -1

    await sim.fault("unknown_fields", count=3)
    got = await collect_until(
        client, lambda got: changed(notes_of(got), lambda d: "x_sim_new_field" in d) >= 3
    )
    extra = [m for m in notes_of(got) if "x_sim_new_field" in m["params"]["data"]]
    assert len(extra) == 3
    assert all(m.get("sim_unannounced") is True for m in extra)
    await sim.inject(FaultRequest(FaultKind.MISSING_FIELDS, count=2))
    got = await collect_until(
        client, lambda got: changed(notes_of(got), lambda d: "greeks" not in d) >= 2
    )
    slim = [m["params"]["data"] for m in notes_of(got) if "greeks" not in m["params"]["data"]]
    assert len(slim) == 2
    for data in slim:
        assert "stats" not in data and "open_interest" not in data
        assert {"mark_price", "mark_iv", "instrument_name", "timestamp"} <= set(data)


async def test_expire_delists_and_closes(sim: SimHandle, client: RpcClient) -> None:
    target = near_money(sim, await option_names(sim), 1)[0]
    await client.call(
        "public/subscribe",
        {"channels": [f"ticker.{target}.100ms", "instrument.state.option.BTC"]},
    )
    await client.notifications(0.2)
    status, body = await control_fault(
        sim, {"venue": "deribit", "kind": "expire", "symbol": target}
    )
    assert status == 200 and body["symbols"] == [target]

    def state_at(notes: list[dict[str, Any]]) -> int | None:
        """Index of the first instrument.state notification."""
        channels = [m["params"]["channel"] for m in notes]
        return next((i for i, c in enumerate(channels) if c.startswith("instrument")), None)

    def ticker_after_state(messages: list[dict[str, Any]]) -> bool:
        notes = notes_of(messages)
        at = state_at(notes)
        return at is not None and any(
            m["params"]["channel"].startswith("ticker") for m in notes[at:]
        )

    # The expiry's frames follow everything queued before it: its state notification first.
    got = await collect_until(client, ticker_after_state)
    got += await client.notifications(0.3)  # anything after the expiry would land here
    notes = notes_of(got)
    first = state_at(notes)
    assert first is not None
    states = [m["params"]["data"] for m in notes if m["params"]["channel"].startswith("instrument")]
    assert {"instrument_name": target, "state": "closed"}.items() <= states[0].items()
    after = notes[first + 1 :]
    tickers = [m["params"]["data"] for m in after if m["params"]["channel"].startswith("ticker")]
    assert tickers and tickers[0]["state"] == "closed"
    assert all(t["state"] == "closed" for t in tickers)
    _, live = await get_instruments(sim, "BTC", "option")
    assert target not in {i["instrument_name"] for i in live["result"]}
    _, gone = await get_instruments(sim, "BTC", "option", expired=True)
    expired = {i["instrument_name"]: i for i in gone["result"]}
    assert expired[target]["is_active"] is False


async def test_whole_nearest_expiry_can_expire(sim: SimHandle) -> None:
    _, before = await get_instruments(sim, "ETH", None)
    result = await sim.fault("expire", currency="ETH")
    symbols = result["symbols"]
    assert isinstance(symbols, list) and len(symbols) > 10
    _, after = await get_instruments(sim, "ETH", None)
    assert len(after["result"]) == len(before["result"]) - len(symbols)


async def test_listing_adds_a_strike_mid_session(sim: SimHandle, client: RpcClient) -> None:
    await client.call("public/subscribe", {"channels": ["instrument.state.any.any"]})
    _, before = await get_instruments(sim, "BTC", "option")
    result = await sim.fault("list", currency="BTC")
    new = result["symbols"]
    assert isinstance(new, list) and len(new) == 2
    _, after = await get_instruments(sim, "BTC", "option")
    names_after = {i["instrument_name"] for i in after["result"]}
    assert set(new) <= names_after
    assert len(names_after) == len(before["result"]) + 2

    def created(messages: list[dict[str, Any]]) -> set[str]:
        return {
            m["params"]["data"]["instrument_name"]
            for m in notes_of(messages)
            if m["params"]["data"]["state"] == "created"
        }

    got = await collect_until(client, lambda got: created(got) >= set(new))
    assert created(got) == set(new)
    resp = await client.call("public/subscribe", {"channels": [f"book.{new[0]}.100ms"]})
    assert resp["result"] == [f"book.{new[0]}.100ms"]
    first = (await client.recv())["params"]["data"]
    assert first["type"] == "snapshot" and first["instrument_name"] == new[0]


async def test_stale_quotes_freeze_one_instrument(sim: SimHandle, client: RpcClient) -> None:
    names = near_money(sim, await option_names(sim), 20)
    await client.call("public/subscribe", {"channels": [f"ticker.{x}.100ms" for x in names]})
    await client.notifications(0.3)
    target = names[0]
    stale_s = 2.0
    before = sim_ms(sim)
    await sim.fault("stale_quotes", symbol=target, duration_s=stale_s)
    after = sim_ms(sim)
    # Judged by the quotes' event times, not by when they arrive (quotes already on their
    # way when the fault landed still arrive). The last quarter of the freeze is left as
    # slack between a tick's event time and its sending.
    frozen_until = before + int(750 * stale_s)

    def target_updated(notes: list[dict[str, Any]]) -> bool:
        return any(
            m["params"]["data"]["instrument_name"] == target
            and m["params"]["data"]["timestamp"] >= after + 1000 * stale_s
            for m in notes
        )

    notes = notes_of(
        await collect_until(client, lambda got: target_updated(notes_of(got)), 10 * stale_s)
    )  # the target updates again after the freeze
    during = [m for m in notes if after <= m["params"]["data"]["timestamp"] < frozen_until]
    got = {m["params"]["data"]["instrument_name"] for m in during}
    assert target not in got
    assert len(got) >= 5, "the others keep updating"


async def test_control_rejects_bad_requests_and_counts_faults(sim: SimHandle) -> None:
    status, body = await control_fault(sim, {"kind": "meteor_strike"})
    assert status == 400 and "unknown fault kind" in body["error"]
    status, body = await control_fault(sim, {"kind": "gap", "connection_id": 999})
    assert status == 400 and body["ok"] is False
    status, body = await control_fault(sim, {"kind": "gap", "venue": "okx"})
    assert status == 400
    await control_fault(sim, {"kind": "gap"})
    await control_fault(sim, {"kind": "stale", "duration_s": 0.1})
    counts = (await stats(sim))["venues"]["deribit"]["faults_applied"]
    assert counts == {"sequence_gap": 1, "stale_quotes": 1}


async def test_wrong_types_and_unknown_channel_resend_the_last_notification(
    sim: SimHandle, client: RpcClient
) -> None:
    names, _ = await book_stream(sim, client, 3)
    for kind in ("wrong_types", "unknown_channel"):
        status, body = await control_fault(sim, {"kind": kind, "count": 2})
        assert status == 200 and body["injected"] == 2, body
    injected: list[dict[str, Any]] = []
    for _ in range(400):
        msg = orjson.loads(await asyncio.wait_for(client.ws.recv(), 3))
        params = msg.get("params", {})
        data = params.get("data", {})
        unknown_channel = params.get("channel", "").startswith("sim_unknown.")
        if unknown_channel or isinstance(data.get("instrument_name"), list):
            injected.append(msg)
        if len(injected) == 4:
            break
    wrong = [m for m in injected if isinstance(m["params"]["data"]["instrument_name"], list)]
    unknown = [m for m in injected if m["params"]["channel"].startswith("sim_unknown.")]
    assert len(wrong) == 2 and len(unknown) == 2
    # Wrong types: every data field of another JSON type, the envelope as the venue's.
    data = wrong[0]["params"]["data"]
    assert wrong[0]["params"]["channel"].startswith("book.")
    assert data["instrument_name"][0] in names
    assert isinstance(data["change_id"], str) and isinstance(data["bids"], dict)
    # Unknown channel: the data intact on a channel nobody subscribed.
    assert unknown[0]["params"]["data"]["instrument_name"] in names


async def test_bad_input_faults_before_any_notification_inject_nothing(sim: SimHandle) -> None:
    quiet = await RpcClient.connect(sim.urls["deribit"].ws_url)
    try:
        await quiet.call("public/test")
        _, body = await control_fault(sim, {"kind": "wrong_types", "count": 3})
        assert body["ok"] and body["injected"] == 0
    finally:
        await quiet.close()


async def control_rate(sim: SimHandle, body: object) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{sim.base_url}/control/rate", json=body) as resp,
    ):
        return resp.status, orjson.loads(await resp.read())


async def test_rate_control_sets_pauses_and_rejects_bad_values(
    sim: SimHandle, client: RpcClient
) -> None:
    await book_stream(sim, client, 8)
    status, body = await control_rate(sim, {"messages_per_second": 0})
    assert status == 200 and body["venues"] == ["deribit"]
    assert (await stats(sim))["venues"]["deribit"]["messages_per_second"] == 0
    await client.notifications(0.3)  # what was queued before the pause
    before = (await stats(sim))["venues"]["deribit"]["counters"]["frames_sent"]
    await sim.step(20)  # two simulated seconds: no updates, no index pushes
    await asyncio.sleep(0.2)
    assert (await stats(sim))["venues"]["deribit"]["counters"]["frames_sent"] == before
    status, body = await control_rate(sim, {"messages_per_second": 500, "venue": "deribit"})
    assert status == 200 and body["ok"]
    bad_bodies: list[object] = [{"messages_per_second": -1}, {"messages_per_second": "x"}, []]
    for bad in [*bad_bodies, {"venue": 3}]:
        status, body = await control_rate(sim, bad)
        assert status == 400 and not body["ok"], bad
    status, body = await control_rate(sim, {"messages_per_second": 1, "venue": "nasdaq"})
    assert status == 400 and "nasdaq" in body["error"]
