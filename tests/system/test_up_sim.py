"""Issue 2's walking skeleton, end to end: `volstream up --sim` with every service in its own
process over a real embedded nats-server; a gRPC client gets live surfaces computed from
Deribit-protocol traffic, close to the simulator's ground truth."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import nats
import psutil
import pytest

from tests.system.conftest import STOP_WITHIN_S, UpSystem, start_up, stop_up
from volstream.bus.credentials import read_credentials
from volstream.bus.permissions import ADMIN_USER
from volstream.config import from_env
from volstream.supervisor import STOP_GRACE_S
from volstream.v1 import surface_pb2 as surface_pb
from volstream.v1 import surface_service_pb2 as api_pb

pytestmark = pytest.mark.slow

ATM_TOLERANCE = 0.01  # one vol point
# Issue 2's walking-skeleton target: a surface within 30 s of `up` (a stated product bound;
# about 6 s on a loaded 2-core machine).
FIRST_SURFACE_WITHIN_S = 30.0


def truth_surface(system: UpSystem, currency: str) -> surface_pb.Surface:
    async def fetch() -> surface_pb.Surface:
        state = system.state()  # up's NATS admits only its users: read as its admin
        password = read_credentials(Path(state["nats_credentials"]))[ADMIN_USER]
        nc = await nats.connect(state["nats_url"], user=ADMIN_USER, password=password)
        try:
            msg = await nc.jetstream().get_last_msg("SIM", f"sim.truth.deribit.{currency.lower()}")
            return surface_pb.Surface.FromString(msg.data or b"")
        finally:
            await nc.close()

    return asyncio.run(fetch())


@pytest.mark.parametrize("currency", ["BTC", "ETH"])
def test_surface_within_30s_and_close_to_truth(up_sim: UpSystem, currency: str) -> None:
    elapsed = time.monotonic() - up_sim.started_at  # type: ignore[attr-defined]
    remaining = FIRST_SURFACE_WITHIN_S - elapsed
    resp = up_sim.wait_surface("deribit", currency, min_expiries=5, timeout_s=max(remaining, 1.0))
    truth = {s.expiry_time_ns: s for s in truth_surface(up_sim, currency).slices}
    assert truth, "the simulator published no truth"
    close = []
    report = []
    for s in resp.surface.slices:
        t = truth.get(s.expiry_time_ns)
        assert t is not None, f"fitted expiry {s.expiry_label} is not a simulator expiry"
        diff = s.metrics.atm_vol - t.metrics.atm_vol
        report.append(
            f"{s.expiry_label}: fit {s.metrics.atm_vol:.4f} truth {t.metrics.atm_vol:.4f}"
        )
        if abs(diff) <= ATM_TOLERANCE:
            close.append(s.expiry_label)
    assert len(close) >= 5, "\n".join(report)


def test_stream_delivers_a_snapshot_then_at_least_one_update_per_second(up_sim: UpSystem) -> None:
    up_sim.wait_surface("deribit", "BTC", min_expiries=5, timeout_s=30)
    # Surfaces are refitted every surface_interval_ms of event time (the default under up).
    interval_s = from_env().surface_interval_ms / 1000
    window_s = 12 * interval_s
    stub = up_sim.stub()
    call = stub.StreamSurfaces(
        api_pb.StreamSurfacesRequest(venues=["deribit"], omit_quotes=True),
        timeout=10 * window_s,  # bounds a hang only
    )
    first = next(call)
    assert first.is_snapshot and {s.currency for s in first.surfaces} >= {"BTC", "ETH"}
    # Timed by the surfaces' event times (the cadence's own clock), not by when they arrive:
    # a busy machine runs the pipeline later, not less often.
    updates = 0
    btc: list[int] = []
    for msg in call:
        assert not msg.is_snapshot
        updates += 1
        btc += [s.header.event_time_ns for s in msg.surfaces if s.currency == "BTC"]
        if btc and (btc[-1] - btc[0]) / 1e9 >= window_s:
            break
    call.cancel()
    span_s = (btc[-1] - btc[0]) / 1e9
    # Never refitted sooner than the interval; at least every other interval (the slack for
    # an interval without new smiles) and so at least one update per 2 x interval_s = 1 s.
    assert all(b - a >= interval_s * 1e9 for a, b in itertools.pairwise(btc)), btc
    assert (len(btc) - 1) / span_s >= 1 / (2 * interval_s), f"{len(btc)} in {span_s:.1f}s"
    assert updates >= len(btc)


class SurfaceWatcher(threading.Thread):
    """Follows StreamSurfaces and records (currency, header.sequence, event time) seen."""

    def __init__(self, system: UpSystem) -> None:
        super().__init__(daemon=True)
        self.system = system
        self.seen: list[tuple[str, int, int, float]] = []
        self.stop_flag = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        stub = self.system.stub()
        while not self.stop_flag.is_set():
            try:
                call = stub.StreamSurfaces(
                    api_pb.StreamSurfacesRequest(venues=["deribit"], omit_quotes=True)
                )
                for msg in call:
                    for s in msg.surfaces:
                        seen = (s.currency, s.header.sequence, s.header.event_time_ns)
                        self.seen.append((*seen, time.monotonic()))
                    if self.stop_flag.is_set():
                        call.cancel()
                        return
            except grpc.RpcError:
                time.sleep(0.2)


# "nats": the embedded nats-server, restarted by `up` on the same port and store.
@pytest.mark.parametrize("service", ["connector.deribit", "book", "iv", "surface", "nats"])
def test_sigkill_of_a_service_is_survived(up_sim: UpSystem, service: str) -> None:
    up_sim.wait_surface("deribit", "BTC", min_expiries=5, timeout_s=30)
    watcher = SurfaceWatcher(up_sim)
    watcher.start()
    time.sleep(1.0)
    pid = up_sim.pid(service)
    assert pid is not None, up_sim.state()
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    deadline = killed_at + 30
    new_pid = None
    while time.monotonic() < deadline:
        new_pid = up_sim.pid(service)
        if new_pid not in (None, pid):
            break
        time.sleep(0.2)
    assert new_pid not in (None, pid), f"{service} was not restarted"
    # Surfaces keep updating after the restart: new surfaces for both currencies.
    while time.monotonic() < deadline:
        fresh = {c for c, _, _, at in watcher.seen if at > killed_at + 2.0}
        if fresh >= {"BTC", "ETH"}:
            break
        time.sleep(0.2)
    watcher.stop_flag.set()
    watcher.join(5)
    fresh = {c for c, _, _, at in watcher.seen if at > killed_at + 2.0}
    assert fresh >= {"BTC", "ETH"}, f"surfaces stopped after killing {service}"
    # No duplicate and nothing out of order downstream: per currency, the input sequence a
    # surface was computed from only moves forward.
    for ccy in ("BTC", "ETH"):
        seqs = [seq for c, seq, _, _ in watcher.seen if c == ccy]
        forward = [b > a for a, b in itertools.pairwise(seqs)]
        assert all(forward), f"{ccy}: sequences {seqs} repeat or go back after killing {service}"


def test_ctrl_c_stops_everything_within_5s(up_sim: UpSystem) -> None:
    assert STOP_GRACE_S < STOP_WITHIN_S  # the services' stop grace fits in the promise
    up_sim.wait_surface("deribit", "BTC", min_expiries=5, timeout_s=30)
    children = [p for p in psutil.Process(up_sim.proc.pid).children(recursive=True)]
    assert len(children) >= 6, children  # nats + sim + connector + book + iv + surface + api
    took = stop_up(up_sim)
    assert took < STOP_WITHIN_S, f"stop took {took:.1f}s"
    # Every child gone too, within the same STOP_WITHIN_S of the Ctrl-C.
    _, alive = psutil.wait_procs(children, timeout=max(0.0, STOP_WITHIN_S - took))
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {alive}"


def test_sigkill_of_the_supervisor_leaves_nothing_running(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`kill -9` of `volstream up` takes every child with it: services, their worker pools
    and the embedded nats-server (which once survived as an orphan)."""
    system = start_up(tmp_path_factory.mktemp("up-kill"), "--sim", "--venues", "deribit")
    try:
        deadline = time.monotonic() + 30
        wanted = {"sim", "connector.deribit", "book", "iv", "surface", "api"}
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                if wanted <= set(system.state()["services"]):
                    break
            time.sleep(0.2)
        time.sleep(2.0)  # the surface service starts its fit worker on its first batch
        children = psutil.Process(system.proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "nats-server" in names and len(children) >= 7, names
        system.proc.kill()
        system.proc.wait()
        _, alive = psutil.wait_procs(children, timeout=5)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(system.proc.pid, signal.SIGKILL)
