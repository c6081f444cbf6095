"""`volstream up` against the live venues with no internet: nothing crashes or spins; the
connector logs a clear connection error and retries with backoff; health is NOT_SERVING."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.system.conftest import STOP_WITHIN_S, start_up, stop_up

pytestmark = pytest.mark.slow


def test_up_without_internet_retries_and_reports_not_serving(tmp_path: Path) -> None:
    # An unroutable venue address stands in for "no internet" on machines that have it.
    system = start_up(tmp_path, "--venues", "deribit", env={"https_proxy": "", "HTTPS_PROXY": ""})
    try:
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                channel = grpc.insecure_channel(f"127.0.0.1:{system.grpc_port}")
                status = (
                    health_pb2_grpc.HealthStub(channel)
                    .Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    .status
                )
                break
            except grpc.RpcError:
                time.sleep(0.5)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING, system.log()[-4000:]

        def connector_errors() -> list[str]:
            return [
                ln
                for ln in system.log().splitlines()
                if ln.startswith("connector.deribit")
                and "deribit" in ln.lower()
                and ("error" in ln.lower() or "fail" in ln.lower())
            ]

        # Let the connector fail and back off a few times (the deadline bounds a hang only).
        deadline = time.monotonic() + 60
        while len(connector_errors()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert system.proc.poll() is None, system.log()[-4000:]
        pid = system.pid("connector.deribit")
        assert pid is not None
        proc = psutil.Process(pid)
        cpu = proc.cpu_percent(interval=2.0)
        assert cpu < 30.0, f"connector spins at {cpu}% CPU while offline"
        state = system.state()["services"]
        assert state["connector.deribit"]["restarts"] == 0, "connector crashed instead of retrying"
        connector_lines = [ln for ln in system.log().splitlines() if ln.startswith("connector")]
        assert len(connector_errors()) >= 2, "\n".join(connector_lines[-30:])
    finally:
        assert stop_up(system) < STOP_WITHIN_S
