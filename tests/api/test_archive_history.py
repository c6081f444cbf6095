"""The API's archive reads over gRPC: GetSurfaceAt past the SURFACE stream's retention, the
metric history, bad requests, and a damaged file that is reported and skipped."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import polars as pl
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from svc_api import service as api_service
from svc_api.archive import ArchiveReader
from svc_api.config import ApiConfig
from svc_api.server import serve
from svc_archive.core import ArchiveCore, ArchiveSettings
from svc_archive.files import ArchiveFiles
from tests.api.conftest import Bus
from tests.archive.surfaces import T0_NS, surface, without_quotes
from volstream.archive import SURFACES, TENORS, PartitionKey, partition_files
from volstream.bus.embedded import EmbeddedNats, free_port
from volstream.cli import history_command, main
from volstream.config import Config
from volstream.v1 import surface_pb2 as surface_pb
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc

S = 1_000_000_000
REVISIONS = 40
# The archived surfaces were stored a day before the stream's only one: past its retention.
STORED_NS = T0_NS - 86_400 * S


def stored_ns(revision: int) -> int:
    return STORED_NS + revision * S


def write_archive(root: Path, per_file: int = 10) -> list[surface_pb.Surface]:
    files = ArchiveFiles(root)
    core = ArchiveCore(ArchiveSettings(roll_rows=10**9), files.open())
    published = []
    for rev in range(1, REVISIONS + 1):
        s = surface(rev, event_time_ns=T0_NS + rev * S)
        published.append(s)
        core.add(s.SerializeToString(), rev, stored_ns(rev), 0)
        if rev % per_file == 0:
            for flush in core.drain():
                files.commit(flush)
                core.mark_committed(flush)
    files.write_manifest(core.durable_through, core.high_water.items())
    return published


def ts(ns: int) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


@dataclass
class Api:
    stub: api_grpc.SurfaceServiceStub
    published: list[surface_pb.Surface]
    root: Path
    damaged: list[Path]
    address: str
    handle: Any


@pytest.fixture
async def api(bus: Bus, tmp_path: Path) -> AsyncIterator[Api]:
    published = write_archive(tmp_path / "archive")
    await bus.publish_surface(surface(REVISIONS + 1))  # the stream holds only today's
    damaged: list[Path] = []
    reader = ArchiveReader(tmp_path / "archive", on_damaged=lambda p, _why: damaged.append(p))
    handle = await serve(ApiConfig(host="127.0.0.1", port=0), bus.server.url, archive=reader)
    channel = grpc.aio.insecure_channel(handle.address)
    stub = api_grpc.SurfaceServiceStub(channel)
    yield Api(stub, published, tmp_path / "archive", damaged, handle.address, handle)
    await channel.close(None)
    await handle.stop(grace_s=0.5)


async def test_get_surface_at_past_the_stream_answers_from_the_archive(api: Api) -> None:
    stub, published = api.stub, api.published
    for rev in (1, 17, REVISIONS):
        for when in (stored_ns(rev), stored_ns(rev) + S // 2):  # at, and between two
            reply = await stub.GetSurfaceAt(
                api_pb.GetSurfaceAtRequest(venue="deribit", currency="BTC", time=ts(when))
            )
            assert reply.surface == without_quotes(published[rev - 1])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetSurfaceAt(
            api_pb.GetSurfaceAtRequest(venue="deribit", currency="BTC", time=ts(STORED_NS))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "the archive holds deribit/BTC from 2026-03-11 to 2026-03-11" in str(err.value.details())


def history(**fields) -> api_pb.GetMetricHistoryRequest:
    fields.setdefault("venue", "deribit")
    fields.setdefault("currency", "BTC")
    fields.setdefault("start_time", ts(T0_NS))
    fields.setdefault("end_time", ts(T0_NS + 3600 * S))
    return api_pb.GetMetricHistoryRequest(**fields)


async def test_metric_history_of_a_tenor_and_of_an_expiry(api: Api) -> None:
    stub, published = api.stub, api.published
    reply = await stub.GetMetricHistory(history(tenor_days=30))
    assert [p.revision for p in reply.points] == list(range(1, REVISIONS + 1))
    assert [p.metrics.atm_vol for p in reply.points] == [
        s.tenors[1].metrics.atm_vol for s in published
    ]
    assert reply.points[0].time.ToNanoseconds() == published[0].header.event_time_ns
    expiry = published[0].slices[2]
    by_expiry = await stub.GetMetricHistory(history(expiry=expiry.expiry_label))
    assert [(p.revision, p.metrics.rr25, p.forward_usd) for p in by_expiry.points] == [
        (s.revision, s.slices[2].metrics.rr25, s.slices[2].forward_usd) for s in published
    ]
    # One point per 10 s: the last revision of each step; the range end is exclusive.
    stepped = await stub.GetMetricHistory(
        history(
            tenor_days=7,
            start_time=ts(T0_NS + 5 * S),
            end_time=ts(T0_NS + 35 * S),
            step=Duration(seconds=10),
        )
    )
    assert [p.revision for p in stepped.points] == [14, 24, 34]


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tenor_days": 30, "venue": "kraken"}, "unknown venue 'kraken'"),
        (
            {"tenor_days": 30, "start_time": ts(T0_NS + 10 * S), "end_time": ts(T0_NS)},
            "start_time 2026-03-11T12:00:10.000000000Z is not before end_time",
        ),
        ({"tenor_days": -7}, "tenor_days -7 must be positive"),
        ({"expiry": "March"}, "malformed expiry 'March'"),
        ({}, "tenor_days or expiry is required"),
        ({"tenor_days": 30, "step": Duration(seconds=-1)}, "step -1s 0ns is negative"),
    ],
)
async def test_bad_history_requests_say_what_is_wrong(api: Api, fields, says) -> None:
    stub = api.stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetMetricHistory(history(**fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in str(err.value.details())


async def test_a_range_the_archive_does_not_hold_is_not_found_and_says_what_it_holds(
    api: Api,
) -> None:
    stub = api.stub
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetMetricHistory(history(tenor_days=30, start_time=ts(S), end_time=ts(2 * S)))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "it holds 2026-03-11 to 2026-03-11 of deribit/BTC" in str(err.value.details())


async def test_a_damaged_file_is_reported_and_skipped(api: Api) -> None:
    stub, published, root, damaged = api.stub, api.published, api.root, api.damaged
    key = PartitionKey(TENORS, "2026-03-11", "deribit", "BTC")
    second = partition_files(root, key)[1]  # revisions 11-20
    data = bytearray(second.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    second.write_bytes(bytes(data[: len(data) - 10]))  # and its footer cut short
    for _ in range(2):
        reply = await stub.GetMetricHistory(history(tenor_days=30))
        assert [p.revision for p in reply.points] == [*range(1, 11), *range(21, REVISIONS + 1)]
    assert damaged == [second]  # reported once, skipped every time
    # A damaged surfaces file: GetSurfaceAt answers from the files around it.
    surfaces = partition_files(root, PartitionKey(SURFACES, "2026-03-11", "deribit", "BTC"))
    surfaces[-1].write_bytes(b"PAR1 not parquet")
    reply = await stub.GetSurfaceAt(
        api_pb.GetSurfaceAtRequest(venue="deribit", currency="BTC", time=ts(stored_ns(35)))
    )
    assert reply.surface == without_quotes(published[29])  # the last of the intact files
    assert damaged == [second, surfaces[-1]]


async def test_the_history_command_prints_a_table_and_writes_csv_and_parquet(
    api: Api, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published, server = api.published, api.address
    common: dict[str, Any] = {
        "start": "2026-03-11T12:00:00Z",
        "end": "2026-03-11T13:00:00Z",
        "tenor_days": 30,
    }
    code = await asyncio.to_thread(history_command, server, "deribit", "BTC", **common)
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "time",
        "revision",
        "atm",
        "rr25",
        "bf25",
        "rr10",
        "bf10",
        "forward",
    ]
    assert len(lines) == 2 + REVISIONS
    first = published[0].tenors[1].metrics
    assert lines[2].split()[2:6] == ["1", f"{first.atm_vol * 100:.2f}", "-2.00", "0.40"]
    for name in ("points.csv", "points.parquet"):
        out = tmp_path / name
        code = await asyncio.to_thread(
            history_command, server, "deribit", "BTC", **common, step_s=10.0, out=out
        )
        assert code == 0
        frame = pl.read_csv(out) if name.endswith(".csv") else pl.read_parquet(out)
        assert frame["revision"].to_list() == [9, 19, 29, 39, 40]  # last of each 10 s step
        assert frame["atm_vol"].to_list() == [
            published[r - 1].tenors[1].metrics.atm_vol for r in (9, 19, 29, 39, 40)
        ]
        assert str(frame["time"][0]).startswith("2026-03-11")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--from", "2026-03-11T13:00:00Z", "--to", "2026-03-11T12:00:00Z"],
            "--from 2026-03-11T13",
        ),
        (["--from", "yesterday", "--to", "2026-03-11T12:00:00Z"], "--from: 'yesterday'"),
        (["--out", "points.xlsx"], "--out points.xlsx"),
        (["--venue", "kraken"], "unknown venue 'kraken'"),
        (["--step", "soon"], "'soon' is not a duration"),
    ],
)
async def test_the_history_command_exits_2_naming_the_bad_value(
    api: Api, args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    server = api.address
    argv = ["history", "--server", server, "--venue", "deribit", "--currency", "BTC"]
    argv += ["--tenor", "30", "--from", "2026-03-11T12:00:00Z", "--to", "2026-03-11T13:00:00Z"]
    with pytest.raises(SystemExit) as exit_:
        await asyncio.to_thread(main, [*argv, *args])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


async def test_the_api_process_logs_and_counts_a_damaged_file_and_keeps_serving(
    nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = Config(
        nats_url=nats_server.url,
        data_dir=tmp_path,
        grpc_port=free_port(),
        http_port=free_port(),
    )
    write_archive(cfg.archive_root())
    key = PartitionKey(TENORS, "2026-03-11", "deribit", "BTC")
    damaged = partition_files(cfg.archive_root(), key)[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    task = asyncio.create_task(api_service.run(cfg))
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{cfg.http_port}"
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{cfg.grpc_port}") as channel:
                stub = api_grpc.SurfaceServiceStub(channel)
                for _ in range(2):
                    reply = await stub.GetMetricHistory(history(tenor_days=30))
                    assert [p.revision for p in reply.points] == list(range(11, REVISIONS + 1))
            async with http.get(f"{base}/metrics") as resp:
                page = await resp.text()
        counted = [
            line
            for line in page.splitlines()
            if "api_archive_damaged_files" in line and not line.startswith("#")
        ]
        assert counted and float(counted[0].split()[-1]) == 1.0, counted
        assert [r for r in caplog.records if str(damaged) in r.getMessage()]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_around_midnight_the_latest_stored_surface_wins_across_two_dates(tmp_path: Path) -> None:
    midnight = T0_NS + 12 * 3600 * S  # 2026-03-12T00:00:00Z
    files = ArchiveFiles(tmp_path)
    core = ArchiveCore(ArchiveSettings(), files.open())
    # Revision 2's venue clock runs ahead: its event date is the 12th, stored before rev 3,
    # whose event date is still the 11th.
    for seq, event_ns in ((1, midnight - 3 * S), (2, midnight + S), (3, midnight - S)):
        core.add(surface(seq, event_time_ns=event_ns).SerializeToString(), seq, midnight + seq, 0)
    for flush in core.drain():
        files.commit(flush)
    reader = ArchiveReader(tmp_path)
    for when, revision in ((midnight + 1, 1), (midnight + 2, 2), (midnight + 3, 3)):
        found = reader.surface_at("deribit", "BTC", when)
        assert found is not None and found.revision == revision, when


async def test_the_dashboards_scrubber_reaches_into_the_archive(api: Api) -> None:
    from aiohttp import web

    from svc_api.dashboard.app import Dashboard

    servicer = api.handle.servicer
    dashboard = Dashboard(
        api.handle.hub,
        history=servicer.history,
        archive=servicer.archive,
        known_venues=servicer.known_venues,
        stale_after_ns=servicer.stale_after_ns,
        clock_ns=lambda: stored_ns(REVISIONS) + 10 * S,  # "now" just after the archived day
    )
    app = web.Application()
    app.add_routes(dashboard.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}/api/dashboard"
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{base}/history?venue=deribit&currency=BTC&time={stored_ns(17) + S // 2}"
            async with http.get(url) as resp:
                body = await resp.json()
            assert resp.status == 200 and body["from_archive"] and body["revision"] == 17
    finally:
        dashboard.close()
        await runner.cleanup()


class CountingReader(ArchiveReader):
    """A real archive reader that counts its metric-history reads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.metric_reads = 0

    def metric_history(self, *args: Any, **kwargs: Any) -> Any:
        self.metric_reads += 1
        return super().metric_history(*args, **kwargs)


async def test_the_dashboards_series_reads_the_archive_once_for_the_span_before_the_stream(
    bus: Bus, tmp_path: Path
) -> None:
    from aiohttp import web

    from svc_api.dashboard.app import Dashboard

    # Archived: 40 revisions, one a second, 40 minutes ago (event time), past the stream's
    # retention; the stream holds only the newest revision, stored now.
    now_ns = time.time_ns()
    archived_from = now_ns - 40 * 60 * S
    files = ArchiveFiles(tmp_path / "archive")
    core = ArchiveCore(ArchiveSettings(roll_rows=10**9), files.open())
    for rev in range(1, REVISIONS + 1):
        event_ns = archived_from + rev * S
        core.add(surface(rev, event_time_ns=event_ns).SerializeToString(), rev, event_ns + S, 0)
    for flush in core.drain():
        files.commit(flush)
        core.mark_committed(flush)
    await bus.publish_surface(surface(REVISIONS + 1, event_time_ns=now_ns))
    reader = CountingReader(tmp_path / "archive")
    handle = await serve(ApiConfig(host="127.0.0.1", port=0), bus.server.url, archive=reader)
    servicer = handle.servicer
    dashboard = Dashboard(
        handle.hub,
        history=servicer.history,
        archive=servicer.archive,
        known_venues=servicer.known_venues,
        stale_after_ns=servicer.stale_after_ns,
    )
    app = web.Application()
    app.add_routes(dashboard.routes())
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/api/dashboard/series?venue=deribit&currency=BTC&hours=1"
    channel = grpc.aio.insecure_channel(handle.address)
    try:
        await asyncio.sleep(1.1)  # a 1 s sample instant after the stream's message
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "&points=121") as resp:  # a 30 s step over the hour
                series = await resp.json()
            assert resp.status == 200, series
            assert reader.metric_reads == 1  # one read for the archive's whole span
            async with http.get(url + "&points=121") as resp:
                assert resp.status == 200
            assert reader.metric_reads == 1  # the next request (the page's refresh): cached
        step = series["step_ns"]
        assert step == 30 * S
        archived = [p for p in series["points"] if p["source"] == "archive"]
        streamed = [p for p in series["points"] if p["source"] == "stream"]
        # The archive's points are GetMetricHistory's for the same span and step.
        start = (now_ns - 3600 * S) // step * step
        stub = api_grpc.SurfaceServiceStub(channel)
        reply = await stub.GetMetricHistory(
            history(
                tenor_days=30,
                start_time=ts(start),
                end_time=ts(series["history_start_ns"]),
                step=Duration(seconds=step // S),
            )
        )
        assert [(p["time_ns"], p["revision"], p["metrics"]["atm"]) for p in archived] == [
            (p.time.ToNanoseconds(), p.revision, p.metrics.atm_vol) for p in reply.points
        ]
        assert len(archived) >= 2 and archived[-1]["revision"] == REVISIONS
        assert series["archive_start_ns"] == archived[0]["time_ns"] < series["history_start_ns"]
        assert streamed and {p["revision"] for p in streamed} == {REVISIONS + 1}
        assert all(p["time_ns"] >= series["history_start_ns"] for p in streamed)
    finally:
        await channel.close(None)
        dashboard.close()
        await runner.cleanup()
        await handle.stop(grace_s=0.5)
