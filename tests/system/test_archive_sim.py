"""The archive and history under `volstream up --sim`, every service its own process on a
real nats-server: DuckDB over the archive agrees with GetSurfaceAt, the metric history
matches the archive, the README's examples (DuckDB, polars, replaying a stream with an
ordered consumer) run as printed, and `up` logs what each stream holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import polars as pl
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.system.conftest import SIM_START, UpSystem, start_up, stop_up
from volstream.bus.credentials import read_credentials
from volstream.bus.permissions import ADMIN_USER
from volstream.v1 import surface_service_pb2 as api_pb

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
ROLL_S = 2.0
RETENTION_LOG_S = 20.0


@pytest.fixture(scope="module")
def up_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSystem]:
    tmp = tmp_path_factory.mktemp("up-archive")
    env = {
        "VOLSTREAM_ARCHIVE_ROLL_S": str(ROLL_S),
        "VOLSTREAM_RETENTION_LOG_S": str(RETENTION_LOG_S),
    }
    system = start_up(tmp, "--sim", "--sim-start", SIM_START, "--venues", "deribit", env=env)
    try:
        system.wait_surface("deribit", "BTC", min_expiries=5, timeout_s=60)
        yield system
    finally:
        stop_up(system)


def readme_block(name: str) -> str:
    text = README.read_text()
    found = re.search(rf"<!-- {name} -->\n```\w+\n(.*?)```\n<!-- /{name} -->", text, re.S)
    assert found, f"README lost its {name} example"
    return found.group(1)


def archive_of(system: UpSystem) -> Path:
    return system.data_dir / "archive"


def wait_archived(system: UpSystem, revisions: int, timeout_s: float = 60) -> None:
    """Until the archive holds ``revisions`` deribit/BTC surfaces (files roll every ROLL_S)."""
    root = archive_of(system)
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        if list((root / "surfaces").rglob("*.parquet")):
            seen = duckdb.execute(
                f"SELECT count(DISTINCT revision) FROM read_parquet("
                f"'{root}/surfaces/**/*.parquet', hive_partitioning = true) "
                "WHERE venue = 'deribit' AND currency = 'BTC'"
            ).fetchall()[0][0]
            if seen >= revisions:
                return
        time.sleep(0.5)
    raise AssertionError(f"{seen} deribit/BTC revisions archived\n" + system.log()[-4000:])


def ts(ns: int) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(ns)
    return t


def test_duckdb_over_the_archive_gives_the_atm_get_surface_at_gives(up_archive: UpSystem) -> None:
    wait_archived(up_archive, 5)
    root = archive_of(up_archive)
    rows = duckdb.execute(
        f"""
        SELECT revision, epoch_ns(stored_time) AS stored_ns, expiry_time, atm_vol
        FROM read_parquet('{root}/surfaces/**/*.parquet', hive_partitioning = true)
        WHERE venue = 'deribit' AND currency = 'BTC'
          AND revision = (
            SELECT max(revision) FROM read_parquet('{root}/surfaces/**/*.parquet',
                                                   hive_partitioning = true)
            WHERE venue = 'deribit' AND currency = 'BTC')
        ORDER BY expiry_time
        """
    ).fetchall()
    revision, stored_ns = rows[0][0], rows[0][1]
    reply = up_archive.stub().GetSurfaceAt(
        api_pb.GetSurfaceAtRequest(
            venue="deribit", currency="BTC", time=ts(stored_ns), omit_quotes=True
        ),
        timeout=10,
    )
    assert reply.surface.revision == revision
    assert [r[3] for r in rows] == [s.metrics.atm_vol for s in reply.surface.slices]
    assert len(rows) >= 5


def test_metric_history_is_the_archive_s_30_day_atm(up_archive: UpSystem) -> None:
    wait_archived(up_archive, 10)
    root = archive_of(up_archive)
    archived = duckdb.execute(
        f"""
        SELECT revision, atm_vol FROM read_parquet('{root}/tenors/**/*.parquet',
                                                   hive_partitioning = true)
        WHERE venue = 'deribit' AND currency = 'BTC' AND tenor_days = 30 AND available
        ORDER BY event_time, revision
        """
    ).fetchall()
    start = dt.datetime.fromisoformat(SIM_START)
    reply = up_archive.stub().GetMetricHistory(
        api_pb.GetMetricHistoryRequest(
            venue="deribit",
            currency="BTC",
            tenor_days=30,
            start_time=ts(int(start.timestamp()) * 10**9),
            end_time=ts(int((start + dt.timedelta(days=1)).timestamp()) * 10**9),
        ),
        timeout=10,
    )
    # The archive grows between the two reads: the RPC saw at least what DuckDB saw.
    got = [(p.revision, p.metrics.atm_vol) for p in reply.points]
    assert got[: len(archived)] == archived and len(archived) >= 5


def test_the_readme_archive_examples_run_as_printed(up_archive: UpSystem) -> None:
    wait_archived(up_archive, 5)
    root = archive_of(up_archive)
    sql = readme_block("archive-duckdb").replace(".volstream/archive", str(root))
    minutes = duckdb.execute(sql).fetchall()
    assert minutes and all(0.1 < atm < 2.0 for _, atm in minutes)
    code = readme_block("archive-polars").replace(".volstream/archive", str(root))
    scope: dict[str, Any] = {}
    exec(compile(code, "README polars example", "exec"), scope)
    frame = scope["atm"]
    assert isinstance(frame, pl.DataFrame) and frame.height >= 5
    assert frame.columns == ["event_time", "atm_vol"]
    assert frame["atm_vol"].to_list()[-1] == pytest.approx(minutes[-1][1], abs=1e-12) or (
        frame["event_time"].max() > minutes[-1][0]  # a newer file landed in between
    )


def test_the_readme_replay_example_replays_a_stream_from_a_time(up_archive: UpSystem) -> None:
    state = up_archive.state()
    password = read_credentials(Path(state["nats_credentials"]))[ADMIN_USER]
    scope: dict[str, Any] = {}
    exec(compile(readme_block("replay-example"), "README replay example", "exec"), scope)
    stub = up_archive.stub()

    def revision_at(when: dt.datetime) -> int:
        at = stub.GetSurfaceAt(
            api_pb.GetSurfaceAtRequest(
                venue="deribit", currency="BTC", time=ts(int(when.timestamp() * 1e9))
            ),
            timeout=10,
        )
        return int(at.surface.revision)

    # A range holding at least three publications, however fast this machine refits.
    start = dt.datetime.now(dt.UTC)
    deadline = time.monotonic() + 120
    while revision_at(dt.datetime.now(dt.UTC)) < revision_at(start) + 3:
        assert time.monotonic() < deadline, "the surface was not republished"
        time.sleep(0.5)
    end = dt.datetime.now(dt.UTC)
    surfaces = asyncio.run(
        scope["replay"](
            state["nats_url"], "surface.deribit.btc", start, end, user=ADMIN_USER, password=password
        )
    )
    # Exactly the publications stored in the range, in order: after the one current at its
    # start, up to the one current at its end.
    revisions = [s.revision for s in surfaces]
    assert revisions == list(range(revision_at(start) + 1, revision_at(end) + 1))
    assert all(s.venue == "deribit" and s.currency == "BTC" for s in surfaces)


def test_up_logs_how_long_each_stream_holds(up_archive: UpSystem) -> None:
    deadline = time.monotonic() + RETENTION_LOG_S + 60
    pattern = re.compile(r"stream (MD|BOOK|IV|SURFACE) holds (\S+ \S+) at the current")
    found: dict[str, str] = {}
    while time.monotonic() < deadline and len(found) < 4:
        found = {m.group(1): m.group(2) for m in pattern.finditer(up_archive.log())}
        time.sleep(1)
    assert set(found) == {"MD", "BOOK", "IV", "SURFACE"}, up_archive.log()[-4000:]


def test_an_unknown_venue_or_reversed_range_is_invalid_argument(up_archive: UpSystem) -> None:
    stub = up_archive.stub()
    for request, says in (
        (api_pb.GetMetricHistoryRequest(venue="kraken", currency="BTC", tenor_days=30), "kraken"),
        (
            api_pb.GetMetricHistoryRequest(
                venue="deribit",
                currency="BTC",
                tenor_days=30,
                start_time=ts(2 * 10**18),
                end_time=ts(10**18),
            ),
            "is not before end_time",
        ),
    ):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetMetricHistory(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in str(err.value.details())
