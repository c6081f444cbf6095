"""The command line: invalid flags and config values exit with status 2 naming them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from volstream.config import Config, ConfigError, from_env, to_env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "volstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["up", "--grpc-port", "99999"], {}, "--grpc-port"),
        (["up", "--venues", "ftx"], {}, "venues"),
        (["up", "--currencies", "bitcoin!"], {}, "currencies"),
        (["up", "--bogus"], {}, "--bogus"),
        (["up", "--sim-rate", "-5"], {}, "--sim-rate"),
        (["up", "--bind", "everywhere"], {}, "bind_host: 'everywhere'"),
        (["up", "--sim", "--sim-start", "2026-13-01"], {}, "sim_start: '2026-13-01'"),
        (["up", "--sim"], {"VOLSTREAM_SIM_START": "friday"}, "sim_start: 'friday'"),
        (["svc", "nosuch"], {}, "name"),
        (["up"], {"VOLSTREAM_HTTP_PORT": "http"}, "VOLSTREAM_HTTP_PORT"),
        (["up", "--nats", "localhost:4222"], {}, "nats_url"),
        (["up", "--tls-cert", "/tmp/x.pem"], {}, "tls_cert"),
        (["up"], {"VOLSTREAM_REBUILD": "rewind"}, "rebuild: 'rewind'"),
        (["up"], {"VOLSTREAM_STREAM_REPLICAS": "7"}, "stream_replicas: 7"),
        (["up", "--iv-forward-policy", "sticky"], {}, "--iv-forward-policy"),
        (["up"], {"VOLSTREAM_IV_FORWARD_POLICY": "sticky"}, "iv_forward_policy: 'sticky'"),
    ],
)
def test_invalid_flag_or_value_exits_2_naming_it(
    args: list[str], env: dict[str, str], named: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2, result
    assert named in result.stderr, result.stderr


def test_env_round_trip_reproduces_config() -> None:
    cfg = Config(venues=("deribit",), currencies=("BTC",), grpc_port=1234, api_token="t")
    assert from_env(to_env(cfg)).validated() == cfg


def test_env_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="VOLSTREAM_SURFACE_INTERVAL_MS"):
        from_env({"VOLSTREAM_SURFACE_INTERVAL_MS": "soon"})


@pytest.mark.parametrize("policy", ["current", "quote"])
def test_forward_policy_reaches_live_and_replay_config(policy: str) -> None:
    from volstream.cli import build_parser, config_from_args

    assert Config().iv_forward_policy == "current"
    parser = build_parser()
    live = parser.parse_args(["up", "--sim", "--iv-forward-policy", policy])
    replay = parser.parse_args(
        [
            "replay",
            "--from",
            "2026-12-07T09:00Z",
            "--namespace",
            "r1",
            "--iv-forward-policy",
            policy,
        ]
    )
    for args in (live, replay):
        assert config_from_args(args, Config()).iv_forward_policy == policy
