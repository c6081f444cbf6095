"""Replay and diff against a real run: `volstream up --sim` (every service its own process) on
a nats-server of the test's own for a minute, then `volstream replay` of that range into
namespaces and `volstream diff`, each as a CLI process.

- two replays with the live settings are byte-identical (wall-clock stamps aside);
- a replay with the live settings reproduces what live published, byte for byte: live and
  replay are one code path;
- a replay with another setting differs, and diff says so with exit status 1;
- bad input exits 2 with a message naming what was wrong.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replay.cli import load_surfaces
from replay.compare import WALL_CLOCK_FIELDS, clear_fields
from replay.source import retained, short_time
from tests.system.conftest import SIM_START, start_up, stop_up
from volstream.bus.connection import connect
from volstream.bus.embedded import EmbeddedNats

RUN_S = 60.0
VENUES = "deribit,okx"
# A minute of live data, then three replays of it side by side on two cores: the whole module
# is timed as one (the fixture's work lands on the first test).
pytestmark = pytest.mark.timeout(1200)


def volstream(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "volstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


async def md_range(url: str) -> tuple[int, int]:
    nc = await connect(url, "test-replay")
    try:
        have = await retained(nc.jetstream(), "MD")
    finally:
        await nc.drain()
    assert have is not None
    return have.first_ns, have.last_ns


async def surfaces(url: str, name: str) -> list[bytes]:
    """A run's surfaces in stream order, wall-clock stamps cleared (and nothing else)."""
    nc = await connect(url, "test-replay")
    try:
        loaded = await load_surfaces(nc, name)
    finally:
        await nc.drain()
    out = []
    for s in loaded:
        clear_fields(s, WALL_CLOCK_FIELDS)
        out.append(s.SerializeToString(deterministic=True))
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A minute of `up --sim` on an external nats-server, stopped; the server stays up."""
    tmp = tmp_path_factory.mktemp("replay")
    with EmbeddedNats(data_dir=tmp / "nats") as nats:
        system = start_up(
            tmp, "--sim", "--sim-start", SIM_START, "--venues", VENUES, "--nats", nats.url
        )
        try:
            started = time.monotonic()
            system.wait_surface("okx", "ETH", 3, timeout_s=120)
            time.sleep(max(0.0, RUN_S - (time.monotonic() - started)))
        finally:
            stop_up(system)
        assert "restart" not in system.log(), system.log()[-4000:]
        first_ns, _last_ns = asyncio.run(md_range(nats.url))
        start = short_time(first_ns)
        common = ("--from", start, "--nats", nats.url, "--quiet", "--venues", VENUES)
        runs = {
            "r.a": (),
            "r.b": (),
            "r.smooth0": ("--surface-smoothing-s", "0"),
        }
        procs = {
            ns: subprocess.Popen(
                [sys.executable, "-m", "volstream.cli", "replay", "--namespace", ns, *common, *x],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for ns, x in runs.items()
        }
        for ns, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, (ns, out, err[-3000:])
            assert "surfaces on" in out, out
        yield nats.url, start


def test_two_replays_of_the_same_range_are_byte_identical(recorded: tuple[str, str]) -> None:
    url, _start = recorded
    a = asyncio.run(surfaces(url, "r.a"))
    b = asyncio.run(surfaces(url, "r.b"))
    assert len(a) > 50
    assert a == b  # headers' sequences and revisions included
    diff = volstream("diff", "r.a", "r.b", "--nats", url)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert f"{len(a)} surface pairs ({len(a)} at the same event time, {len(a)} byte-identical" in (
        diff.stdout
    )


def test_a_replay_with_the_live_settings_reproduces_live(recorded: tuple[str, str]) -> None:
    url, _start = recorded
    live = asyncio.run(surfaces(url, "live"))
    replayed = asyncio.run(surfaces(url, "r.a"))
    # Live stopped while its last inputs may still have been in flight: the replay, which
    # reads every MD message, can only have more. What both have is the same, byte for byte.
    assert len(live) > 50 and len(replayed) >= len(live)
    assert replayed[: len(live)] == live
    diff = volstream("diff", "live", "r.a", "--nats", url)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    n = len(live)
    assert f"{n} surface pairs ({n} at the same event time, {n} byte-identical" in diff.stdout


def test_a_replay_with_another_setting_differs_and_diff_fails(recorded: tuple[str, str]) -> None:
    url, _start = recorded
    diff = volstream("diff", "r.a", "r.smooth0", "--nats", url)
    assert diff.returncode == 1, diff.stdout + diff.stderr
    largest = float(diff.stdout.split("largest difference ")[1].split()[0])
    assert largest > 0.0
    # Past a tolerance above the largest difference (and no status change) it passes.
    loose = volstream("diff", "r.a", "r.smooth0", "--nats", url, "--tolerance", "1000")
    changes = int(loose.stdout.split("vol points; ")[1].split()[0])
    assert loose.returncode == (0 if changes == 0 else 1), loose.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "2026-03-11T12:00:10Z", "--to", "2026-03-11T12:00:00Z"), "is not before"),
        (("--from", "2020-01-01T00:00:00Z"), "outside what is retained: MD holds"),
        (("--from", "START", "--namespace", "surface.x"), "collides with live subjects"),
        (("--from", "START", "--namespace", "r.a"), "already holds"),
        (("--from", "START", "--surface-smoothness-s", "0"), "--surface-smoothness-s"),
        (("--from", "START", "--surface-model", "heston"), "heston"),
        (("--from", "yesterday"), "'yesterday' is not an ISO-8601"),
    ],
)
def test_bad_replay_input_exits_2_naming_it(
    recorded: tuple[str, str], args: tuple[str, ...], message: str
) -> None:
    url, start = recorded
    args = tuple(start if a == "START" else a for a in args)
    if "--namespace" not in args:
        args = (*args, "--namespace", "r.bad")
    result = volstream("replay", *args, "--nats", url, "--quiet")
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr, result.stderr


def test_diff_of_an_unknown_namespace_exits_2_listing_the_known(recorded: tuple[str, str]) -> None:
    url, _start = recorded
    result = volstream("diff", "r.a", "r.nope", "--nats", url)
    assert result.returncode == 2
    assert "no surfaces for 'r.nope'" in result.stderr and "r.a" in result.stderr, result.stderr


def test_replay_without_a_running_system_says_so(tmp_path: Path) -> None:
    result = volstream(
        "replay", "--from", "2026-03-11", "--namespace", "r.x", "--data-dir", str(tmp_path)
    )
    assert result.returncode == 2 and "no running system found" in result.stderr
