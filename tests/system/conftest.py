"""A whole `volstream up` as a subprocess: real nats-server, every service its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from volstream.bus.embedded import free_port
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.v1 import surface_service_pb2_grpc as api_grpc

# README: "Ctrl-C stops everything within 5 s" (each service gets STOP_GRACE_S, then NATS
# stops: volstream/supervisor.py).
STOP_WITHIN_S = 5.0
# The simulator's start (`--sim-start`): its calendar, hence the expiries fitted, is this
# Wednesday's, not today's; no expiry passes during a run (the nearest is >= 12 h away).
SIM_START = "2026-03-11T12:00:00Z"


@dataclass
class UpSystem:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    grpc_port: int
    log_path: Path

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.data_dir / "up.json").read_text()))

    def pid(self, service: str) -> int | None:
        try:
            return self.state()["services"][service]["pid"]  # type: ignore[no-any-return]
        except (FileNotFoundError, KeyError, json.JSONDecodeError):
            return None

    def stub(self) -> api_grpc.SurfaceServiceStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        return api_grpc.SurfaceServiceStub(channel)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_surface(
        self, venue: str, currency: str, min_expiries: int, timeout_s: float
    ) -> api_pb.GetSurfaceResponse:
        stub = self.stub()
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            try:
                resp = stub.GetSurface(
                    api_pb.GetSurfaceRequest(venue=venue, currency=currency, omit_quotes=True),
                    timeout=2,
                )
                if len(resp.surface.slices) >= min_expiries:
                    return resp  # type: ignore[no-any-return]  # grpc stubs are untyped
                last_error = f"{len(resp.surface.slices)} expiries"
            except grpc.RpcError as exc:
                last_error = f"{exc.code()}: {exc.details()}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(
            f"no {venue}/{currency} surface with {min_expiries} expiries: {last_error}\n"
            + self.log()[-6000:]
        )


def start_up(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> UpSystem:
    grpc_port, http_port = free_port(), free_port()
    data_dir = tmp / "data"
    log_path = tmp / "up.log"
    cmd = [
        sys.executable,
        "-m",
        "volstream.cli",
        "up",
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        cmd,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    return UpSystem(proc, data_dir, grpc_port, log_path)


def stop_up(system: UpSystem, timeout_s: float = 2 * STOP_WITHIN_S) -> float:
    """SIGINT (Ctrl-C) and wait; the seconds it took."""
    started = time.monotonic()
    if system.proc.poll() is None:
        system.proc.send_signal(signal.SIGINT)
        try:
            system.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(system.proc.pid, signal.SIGKILL)
            system.proc.wait()
            raise
    return time.monotonic() - started


@pytest.fixture(scope="module")
def up_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSystem]:
    tmp = tmp_path_factory.mktemp("up-sim")
    system = start_up(tmp, "--sim", "--sim-start", SIM_START, "--venues", "deribit")
    system.started_at = time.monotonic()  # type: ignore[attr-defined]
    try:
        yield system
    finally:
        stop_up(system)


# Files a test wrote for a person to look at (e.g. the dashboard's screenshots), named at the
# end of the run.
ARTIFACTS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in ARTIFACTS:
        terminalreporter.write_line(line)
