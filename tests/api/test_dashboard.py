"""The dashboard's HTTP side over real sockets: JSON endpoints against what gRPC serves, bad
input, token and tickets, history from the SURFACE stream, and the conflated push (a stalled
browser delays no one and is dropped; the others get the latest state)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import grpc.aio
import pytest
from aiohttp import web

from svc_api.dashboard.app import Dashboard, DashboardOptions, TicketBook, series_step_ns
from svc_api.dashboard.views import RateTracker, overview_row, surface_json
from svc_api.hub import SurfaceHub
from svc_api.server import ApiHandle
from svc_api.store import SurfaceEntry, SurfaceKey
from tests.api.conftest import Bus, StartApi, expiry_label, make_smile, make_surface
from volstream.bus.embedded import free_port
from volstream.config import parse_rfc3339_ns
from volstream.v1 import surface_pb2 as surface_pb
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc

TOKEN = "s3cret-token"
Serve = Callable[..., Awaitable[tuple[str, Dashboard]]]


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def serve_dashboard() -> AsyncIterator[Serve]:
    """serve(handle, token=None, options=None) -> (base URL, Dashboard) on a free port."""
    runners: list[web.AppRunner] = []
    dashboards: list[Dashboard] = []

    async def serve(
        handle: ApiHandle, token: str | None = None, options: DashboardOptions | None = None
    ) -> tuple[str, Dashboard]:
        dashboard = Dashboard(
            handle.hub,
            history=handle.servicer.history,
            known_venues=handle.servicer.known_venues,
            stale_after_ns=handle.servicer.stale_after_ns,
            token=token,
            options=options,
        )
        dashboards.append(dashboard)
        app = web.Application()
        app.add_routes(dashboard.routes())
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}", dashboard

    yield serve
    for dashboard in dashboards:
        dashboard.close()
    for runner in runners:
        await runner.cleanup()


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json()


# pure parts ---------------------------------------------------------------------------------
def test_surface_json_carries_every_figure_and_no_nan() -> None:
    surface = make_surface("deribit", "BTC", 7)
    surface.vol_index_30d = math.nan
    surface.slices[0].quotes[1].used = False
    surface.slices[0].quotes[1].drop_reason = surface_pb.DROP_REASON_CROSSED
    surface.slices[0].quotes[1].position = surface_pb.FIT_POSITION_ABOVE_ASK
    out = surface_json(surface, with_quotes=True, sequence=3, stored_time_ns=5)
    json.dumps(out, allow_nan=False)  # raises on NaN
    assert out["vol_index_30d"] is None and out["revision"] == 7 and out["sequence"] == 3
    first = out["slices"][0]
    assert first["metrics"]["atm"] == surface.slices[0].metrics.atm_vol
    assert first["diagnostics"]["rmse_bp"] == surface.slices[0].diagnostics.rmse_bp
    dropped = first["quotes"][1]
    assert (dropped["used"], dropped["drop_reason"], dropped["position"]) == (
        False,
        "crossed",
        "above_ask",
    )
    assert first["quotes"][0]["drop_reason"] == ""  # used quotes have no reason
    tenor30 = next(t for t in out["tenors"] if t["days"] == 30)
    assert tenor30["nodes"][0] == {"label": "25P", "delta": -0.25, "vol": 0.62, "strike": 0.0}
    light = surface_json(surface, with_quotes=False)
    assert all("quotes" not in s for s in light["slices"])


def test_overview_row_summarises_the_30_day_tenor_and_freshness() -> None:
    surface = make_surface("okx", "ETH", 3, publish_time_ns=1_000_000_000_000)
    entry = SurfaceEntry(SurfaceKey("okx", "ETH"), surface, 10, 0, 1)
    row = overview_row(entry, 1_000_000_000_000 + 2_000_000_000, 15_000_000_000, 42.0)
    assert row["metrics_30d"]["atm"] == surface.tenors[1].metrics.atm_vol
    assert (row["age_ms"], row["fresh"], row["updates_per_min"]) == (2000, True, 42.0)
    stale = overview_row(entry, 1_000_000_000_000 + 20_000_000_000, 15_000_000_000, None)
    assert stale["fresh"] is False


async def test_a_browser_following_one_surface_is_woken_by_that_surface_only() -> None:
    hub = SurfaceHub()
    every = hub.subscribe()  # a gRPC stream
    one = hub.subscribe(SurfaceKey("okx", "ETH"))  # a browser's push
    assert hub.subscriber_count == 2
    hub.apply_surface(make_surface("deribit", "BTC", 1))
    assert every.changed.is_set() and not one.changed.is_set()
    every.changed.clear()
    hub.apply_surface(make_surface("okx", "ETH", 2), sequence=5)
    assert every.changed.is_set() and one.changed.is_set()
    one.changed.clear()
    hub.apply_surface(make_surface("okx", "ETH", 3), sequence=4)  # not accepted (out of order)
    assert not one.changed.is_set()
    hub.close()
    assert one.changed.is_set()
    hub.unsubscribe(one)
    hub.unsubscribe(every)
    assert hub.subscriber_count == 0


def test_rate_tracker_counts_publications_per_minute_from_revisions() -> None:
    key = SurfaceKey("deribit", "BTC")
    rates = RateTracker()
    assert rates.per_minute(key, 1, 0) is None
    for second in range(0, 31):
        rates.observe(key, 100 + 2 * second, second * 1_000_000_000)  # 2 per second
    assert rates.per_minute(key, 160, 30 * 1_000_000_000) == pytest.approx(120.0)
    for second in range(31, 200):
        rates.observe(key, 100 + second, second * 1_000_000_000)  # then 1 per second
    assert rates.per_minute(key, 299, 199 * 1_000_000_000) == pytest.approx(60.0, rel=0.05)
    assert len(rates._samples[key]) <= 62  # one window of samples, not the whole run


def test_tickets_are_single_use_expire_and_are_capped() -> None:
    book = TicketBook(ttl_s=30.0, limit=3)
    first = book.issue(0.0)
    assert first is not None
    assert book.redeem(first, 1.0) and not book.redeem(first, 1.0)
    late = book.issue(0.0)
    assert late is not None and not book.redeem(late, 31.0)
    issued = [book.issue(40.0) for _ in range(4)]
    assert issued[3] is None and len(book) == 3  # capped
    assert book.issue(71.0) is not None  # the others expired


def test_series_steps_are_round_and_cover_the_span() -> None:
    assert series_step_ns(60 * 1_000_000_000, 61) == 1_000_000_000
    assert series_step_ns(3 * 3600 * 1_000_000_000, 60) == 300 * 1_000_000_000
    assert series_step_ns(0, 60) == 1_000_000_000


# over sockets ---------------------------------------------------------------------------------
async def test_json_endpoints_show_what_get_surface_returns(
    bus: Bus, start_api: StartApi, serve_dashboard: Serve
) -> None:
    for rev in (1, 2):
        await bus.publish_surface(make_surface("deribit", "BTC", rev))
    await bus.publish_surface(make_surface("all", "BTC", 5))
    surface = make_surface("deribit", "BTC", 3)
    expiry = surface.slices[1]
    label = expiry_label(expiry.expiry_time_ns)
    key = SurfaceKey("deribit", "BTC")
    await bus.js.publish(
        "iv.deribit.btc",
        make_smile("deribit", "BTC", expiry.expiry_time_ns).SerializeToString(),
    )
    await bus.publish_surface(surface)
    api = await start_api()
    base, _ = await serve_dashboard(api)
    async with grpc.aio.insecure_channel(api.address) as channel:
        stub = api_grpc.SurfaceServiceStub(channel)
        got = (
            await stub.GetSurface(api_pb.GetSurfaceRequest(venue="deribit", currency="BTC"))
        ).surface
    async with aiohttp.ClientSession() as http:
        await wait_until(lambda: api.hub.store.smile_by_label(key, label) is not None)
        status, body = await get_json(
            http, f"{base}/api/dashboard/surface?venue=deribit&currency=BTC"
        )
        assert status == 200 and body["revision"] == got.revision == 3
        assert [s["metrics"]["atm"] for s in body["slices"]] == [
            s.metrics.atm_vol for s in got.slices
        ]
        assert body["tenors"][1]["nodes"][0]["vol"] == got.tenors[1].nodes[0].vol
        assert "quotes" not in body["slices"][0]
        status, full = await get_json(
            http, f"{base}/api/dashboard/surface?venue=deribit&currency=BTC&quotes=1"
        )
        assert len(full["slices"][0]["quotes"]) == len(got.slices[0].quotes)
        status, smile = await get_json(
            http, f"{base}/api/dashboard/smile?venue=deribit&currency=BTC&expiry={label}"
        )
        assert status == 200 and smile["slice"]["expiry"] == label
        assert smile["smile"]["quotes"][0]["venue_mark_iv"] == 0.61
        status, overview = await get_json(http, f"{base}/api/dashboard/overview")
        rows = {(r["venue"], r["currency"]): r for r in overview["surfaces"]}
        assert set(rows) == {("deribit", "BTC"), ("all", "BTC")}
        assert rows[("deribit", "BTC")]["revision"] == 3
        assert overview["connections"] is None and "not published" in overview["connections_note"]
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200 and "/dashboard/app.js" in await resp.text()
        for name in ("app.js", "app.css", "plotly.min.js"):
            async with http.get(f"{base}/dashboard/{name}") as resp:
                assert resp.status == 200, name
                assert len(await resp.read()) > 1000, name


async def test_malformed_requests_get_4xx_with_a_reason(
    bus: Bus, start_api: StartApi, serve_dashboard: Serve
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api()
    base, _ = await serve_dashboard(api)
    cases = [
        ("surface?venue=nowhere&currency=BTC", 400, "unknown venue 'nowhere'"),
        ("surface?venue=deribit&currency=B$C", 400, "malformed currency"),
        ("surface?venue=deribit&currency=ETH", 404, "no deribit/ETH surface"),
        ("surface?venue=deribit&currency=BTC&quotes=maybe", 400, "expected 0 or 1"),
        ("smile?venue=deribit&currency=BTC&expiry=27MAR26", 400, "malformed expiry"),
        ("smile?venue=deribit&currency=BTC&expiry=2031-02-30", 400, "malformed expiry"),
        ("smile?venue=deribit&currency=BTC&expiry=2031-02-28", 404, "no expiry 2031-02-28"),
        ("history?venue=deribit&currency=BTC", 400, "time is required"),
        ("history?venue=deribit&currency=BTC&time=yesterday", 400, "malformed time"),
        ("history?venue=deribit&currency=BTC&time=4102444800000000000", 400, "in the future"),
        ("series?venue=deribit&currency=BTC&hours=-1", 400, "outside"),
        ("series?venue=deribit&currency=BTC&points=many", 400, "not a number"),
        ("events?venue=deribit", 400, "currency is required"),
        ("events?venue=atlantis&currency=BTC", 400, "unknown venue"),
        ("nothing", 404, ""),
    ]
    async with aiohttp.ClientSession() as http:
        for path, status, reason in cases:
            async with http.get(f"{base}/api/dashboard/{path}") as resp:
                assert resp.status == status, (path, await resp.text())
                if reason:
                    assert reason in (await resp.json())["error"], path
        async with http.get(f"{base}/dashboard/../app.py") as resp:
            assert resp.status == 404


async def test_history_and_series_come_from_the_surface_stream(
    bus: Bus, start_api: StartApi, serve_dashboard: Serve
) -> None:
    seqs = []
    for rev in (1, 2, 3):
        seqs.append(await bus.publish_surface(make_surface("deribit", "BTC", rev)))
        await asyncio.sleep(0.05)
    stored = {}
    for rev, seq in zip((1, 2, 3), seqs, strict=True):
        msg = await bus.js.get_msg("SURFACE", seq, direct=True)
        stored[rev] = parse_rfc3339_ns(msg.headers["Nats-Time-Stamp"])
    api = await start_api()
    base, _ = await serve_dashboard(api)
    url = f"{base}/api/dashboard/history?venue=deribit&currency=BTC"
    async with aiohttp.ClientSession() as http:
        for rev in (1, 2, 3):
            status, body = await get_json(http, f"{url}&time={stored[rev]}")
            assert (status, body["revision"], body["stored_time_ns"]) == (200, rev, stored[rev])
        status, body = await get_json(http, f"{url}&time={stored[2] - 1}")
        assert body["revision"] == 1
        status, body = await get_json(http, f"{url}&time={stored[1] - 1}")
        assert status == 404 and "its history starts at" in body["error"]
        status, body = await get_json(
            http, f"{base}/api/dashboard/history?venue=okx&currency=BTC&time={stored[3]}"
        )
        assert status == 404 and "no history" in body["error"]
        # Over a second past the last store time (same machine clock as the nats-server): the
        # newest 1-second sample then falls after it.
        await asyncio.sleep(max(0.0, (stored[3] + 1_100_000_000 - time.time_ns()) / 1e9))
        status, series = await get_json(
            http, f"{base}/api/dashboard/series?venue=deribit&currency=BTC&hours=1&points=10"
        )
        assert status == 200 and series["history_start_ns"] == stored[1]
        points = series["points"]
        assert points and all(p["time_ns"] >= stored[1] for p in points)
        assert points[-1]["revision"] == 3
        assert points[-1]["metrics"]["atm"] == make_surface("x", "BTC", 3).tenors[1].metrics.atm_vol


async def test_with_a_token_every_endpoint_and_the_push_need_it(
    bus: Bus, start_api: StartApi, serve_dashboard: Serve
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api()
    base, _ = await serve_dashboard(api, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        status, config = await get_json(http, f"{base}/api/dashboard/config")
        assert status == 200 and config["auth_required"] is True
        async with http.get(f"{base}/") as resp:  # the page itself holds no data
            assert resp.status == 200 and TOKEN not in await resp.text()
        for path in ("overview", "surface?venue=deribit&currency=BTC"):
            status, body = await get_json(http, f"{base}/api/dashboard/{path}")
            assert status == 401 and "Bearer" in body["error"], path
            status, body = await get_json(
                http, f"{base}/api/dashboard/{path}", {"Authorization": "Bearer wrong"}
            )
            assert status == 401 and "invalid token" in body["error"]
            status, _ = await get_json(http, f"{base}/api/dashboard/{path}", auth)
            assert status == 200
        async with http.post(f"{base}/api/dashboard/ticket") as resp:
            assert resp.status == 401
        events = f"{base}/api/dashboard/events?venue=deribit&currency=BTC"
        async with http.get(events) as resp:
            assert resp.status == 401 and "ticket" in (await resp.json())["error"]
        async with http.post(f"{base}/api/dashboard/ticket", headers=auth) as resp:
            ticket = (await resp.json())["ticket"]
        assert ticket and TOKEN not in ticket
        async with http.get(f"{events}&ticket={ticket}") as resp:
            assert resp.status == 200
            assert (await read_event(resp))[0] == "overview"
        async with http.get(f"{events}&ticket={ticket}") as resp:  # used once already
            assert resp.status == 401 and "used or expired" in (await resp.json())["error"]


async def read_event(resp: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next server-sent event (name, decoded data); comments are skipped."""
    name, data = "", ""
    while True:
        line = (await resp.content.readline()).decode()
        if line == "":
            raise ConnectionError("stream ended")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            return name, json.loads(data)


async def test_push_conflates_and_a_stalled_browser_delays_no_one(
    bus: Bus, start_api: StartApi, serve_dashboard: Serve
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    api = await start_api()
    options = DashboardOptions(write_timeout_s=1.0, socket_send_buffer=8192)
    base, dashboard = await serve_dashboard(api, options=options)
    port = int(base.rsplit(":", 1)[1])
    others = api.hub.subscriber_count  # the API's own (health)
    # A browser that asks for the stream and then never reads: a tiny receive window.
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(
        b"GET /api/dashboard/events?venue=deribit&currency=BTC HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    await wait_until(lambda: dashboard.push.active == 1)
    received: list[int] = []
    last_rev = 400
    async with aiohttp.ClientSession() as http:
        url = f"{base}/api/dashboard/events?venue=deribit&currency=BTC"
        async with http.get(url) as resp:

            async def follow() -> None:
                while True:
                    name, data = await read_event(resp)
                    if name == "surface":
                        received.append(data["revision"])
                        if data["revision"] == last_rev:
                            return

            reader = asyncio.create_task(follow())
            # Big surfaces, quickly: far more than the stalled socket can hold.
            for rev in range(2, last_rev + 1):
                await bus.publish_surface(make_surface("deribit", "BTC", rev, expiries=12))
            published_at = time.monotonic()
            await asyncio.wait_for(reader, 10.0)
            caught_up_s = time.monotonic() - published_at
    # The reading browser got the latest state, conflated (not every revision), in order.
    assert received[-1] == last_rev and received == sorted(received)
    assert len(received) < last_rev - 1
    assert caught_up_s < 5.0, caught_up_s  # bounds a hang only; typically well under 1 s
    # The stalled one is dropped once a write waits longer than write_timeout_s; updates keep
    # coming meanwhile, and gRPC answers throughout.
    deadline = time.monotonic() + 30 * options.write_timeout_s
    rev = last_rev
    async with grpc.aio.insecure_channel(api.address) as channel:
        stub = api_grpc.SurfaceServiceStub(channel)
        while dashboard.push.stalled_closed == 0:
            assert time.monotonic() < deadline, "the stalled browser was never dropped"
            rev += 1
            await bus.publish_surface(make_surface("deribit", "BTC", rev, expiries=12))
            request = api_pb.GetSurfaceRequest(venue="deribit", currency="BTC", omit_quotes=True)
            await stub.GetSurface(request, timeout=5)
            await asyncio.sleep(0.05)
    await wait_until(lambda: dashboard.push.active == 0)
    assert api.hub.subscriber_count == others
    # Reset, not closed gracefully: the stalled peer learns at once, and no kernel buffer
    # lingers waiting for it to read.
    stalled.settimeout(10)
    with pytest.raises(ConnectionResetError):
        while stalled.recv(65536):
            pass
    stalled.close()
