"""volstream.client against a running API: methods, tables, CLI commands."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import grpc
import pytest

from tests.api.conftest import FIRST_EXPIRY_NS, Bus, StartApi, make_smile, make_surface
from volstream import cli_render
from volstream.cli import surface_command, watch_command
from volstream.cli_render import render_smile, render_term_structure, render_update_line
from volstream.client import AsyncSurfaceClient, SurfaceClient, to_timestamp
from volstream.v1 import surface_pb2 as surface_pb


async def test_sync_client_covers_every_method(bus: Bus, start_api: StartApi) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 1))
    await asyncio.sleep(0.02)
    between_ns = time.time_ns()
    await asyncio.sleep(0.02)
    await bus.publish_surface(make_surface("deribit", "BTC", 2))
    await bus.publish_raw(
        "iv.deribit.btc", make_smile("deribit", "BTC", FIRST_EXPIRY_NS).SerializeToString()
    )
    api = await start_api()

    def use() -> dict[str, object]:
        with SurfaceClient(api.address) as client:
            out: dict[str, object] = {}
            out["list"] = [(s.venue, s.currency, s.revision) for s in client.list_surfaces()]
            out["get"] = client.get_surface("deribit", "BTC", omit_quotes=True).revision
            smile = client.get_smile("deribit", "BTC", "2030-01-04")
            out["smile"] = (smile.slice.expiry_label, len(smile.smile.quotes))
            when = dt.datetime.fromtimestamp(between_ns / 1e9, dt.UTC)
            out["at"] = client.get_surface_at("deribit", "BTC", when).revision
            out["health"] = client.health("volstream.v1.SurfaceService/deribit/BTC")
            with client.stream(venues=["deribit"]) as stream:
                first = next(stream)
                out["stream"] = (first.is_snapshot, [s.revision for s in first.surfaces])
            try:
                client.get_surface("deribit", "XRP")
            except grpc.RpcError as exc:
                out["missing"] = exc.code()
            return out

    out = await asyncio.to_thread(use)
    assert out["list"] == [("deribit", "BTC", 2)]
    assert out["get"] == 2
    assert out["smile"] == ("2030-01-04", 5)
    assert out["at"] == 1
    assert out["health"] == "SERVING"
    assert out["stream"] == (True, [2])
    assert out["missing"] == grpc.StatusCode.NOT_FOUND


async def test_async_client(bus: Bus, start_api: StartApi) -> None:
    await bus.publish_surface(make_surface("okx", "BTC", 5))
    api = await start_api()
    async with AsyncSurfaceClient(api.address) as client:
        assert [s.revision for s in await client.list_surfaces()] == [5]
        assert (await client.get_surface("okx", "BTC")).revision == 5
        call = client.stream(currencies=["BTC"], omit_quotes=True)
        snapshot = await call.read()
        assert snapshot.is_snapshot and snapshot.surfaces[0].revision == 5
        await bus.publish_surface(make_surface("okx", "BTC", 6))
        update = await asyncio.wait_for(call.read(), 5)
        assert [s.revision for s in update.surfaces] == [6]
        call.cancel()
        at = await client.get_surface_at("okx", "BTC", time.time_ns())
        assert at.revision == 6


def test_to_timestamp_accepts_datetimes_and_numbers() -> None:
    naive = dt.datetime(2024, 5, 1, 12, 0, 0, 250_000)
    assert to_timestamp(naive).ToNanoseconds() == 1_714_564_800_250_000_000
    assert to_timestamp(1_714_564_800_000_000_123).nanos == 123
    assert to_timestamp(1_714_564_800.5).nanos == 500_000_000


def test_tables_render_every_expiry_tenor_and_quote() -> None:
    surface = make_surface("deribit", "BTC", 7)
    text = render_term_structure(surface)
    lines = text.splitlines()
    assert lines[0].startswith("deribit/BTC  model SVI  revision 7")
    for s in surface.slices:
        row = next(line for line in lines if line.startswith(s.expiry_label))
        assert f"{s.metrics.atm_vol * 100:.2f}" in row and "20/20" in row
    header = next(line for line in lines if line.startswith("tenor"))
    assert header.split()[5:] == ["25P", "ATM"]  # the nodes the surface carries
    row_30d = next(line for line in lines if line.startswith("30d")).split()
    assert row_30d[5:] == ["62.00", "60.00"]
    assert any(line.startswith("90d") and "n/a" in line for line in lines)

    smile = make_smile("deribit", "BTC", surface.slices[0].expiry_time_ns)
    table = render_smile(surface.slices[0], smile)
    rows = table.splitlines()[3:]
    assert len(rows) == 20
    assert rows[0].split()[1] == "30,000" and rows[0].split()[-1] == "used"
    assert "61.00" in rows[0]  # the venue's mark IV next to ours
    line = render_update_line(surface, now_ns=surface.header.publish_time_ns + 5_000_000)
    assert "deribit/BTC" in line and "30d ATM  60.00" in line and "age 5 ms" in line


async def test_cli_commands_print_tables_and_updates(
    bus: Bus,
    start_api: StartApi,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await bus.publish_surface(make_surface("deribit", "BTC", 3))
    api = await start_api()
    code = await asyncio.to_thread(surface_command, api.address, "deribit", "BTC", None)
    out = capsys.readouterr().out
    assert code == 0 and "deribit/BTC  model SVI  revision 3" in out and "2030-01-04" in out
    code = await asyncio.to_thread(
        surface_command, api.address, "deribit", "BTC", None, expiry="2030-01-11"
    )
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("expiry 2030-01-11")
    code = await asyncio.to_thread(surface_command, api.address, "nowhere", "BTC", None)
    captured = capsys.readouterr()
    assert code == 2 and "INVALID_ARGUMENT: unknown venue 'nowhere'" in captured.err

    rendered: list[str] = []

    def recording(surface: surface_pb.Surface, *args: Any, **kwargs: Any) -> str:
        line = render_update_line(surface, *args, **kwargs)
        rendered.append(line)
        return line

    monkeypatch.setattr(cli_render, "render_update_line", recording)
    watching = asyncio.create_task(
        asyncio.to_thread(watch_command, api.address, ["deribit"], [], 0, None, max_messages=2)
    )
    # The update goes out once the snapshot is shown: any earlier, the conflating stream
    # would rightly fold it into the snapshot. The deadline bounds a hang only.
    deadline = time.monotonic() + 10
    while not rendered:
        assert time.monotonic() < deadline and not watching.done(), "no snapshot shown"
        await asyncio.sleep(0.01)
    await bus.publish_surface(make_surface("deribit", "BTC", 4))
    code = await asyncio.wait_for(watching, 10)
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert "rev 3" in lines[0] and "rev 4" in lines[1]


async def test_surfaces_larger_than_the_grpc_default_limit_are_served(
    bus: Bus, start_api: StartApi
) -> None:
    big = make_surface("deribit", "BTC", 1, expiries=40, quotes_per_expiry=1_200)
    size = big.ByteSize()
    assert 4 * 1024 * 1024 < size < 8 * 1024 * 1024  # above gRPC's 4 MiB default
    await bus.publish_surface(big)
    api = await start_api()

    def fetch() -> tuple[int, int]:
        with SurfaceClient(api.address) as client:
            surface = client.get_surface("deribit", "BTC")
            with client.stream() as stream:
                snapshot = next(stream)
            return surface.ByteSize(), snapshot.surfaces[0].ByteSize()

    assert await asyncio.to_thread(fetch) == (size, size)
