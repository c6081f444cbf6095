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
        (["up", "--sim", "--sim-scenario", "crash"], {}, "unknown scenario 'crash'"),
        (["svc", "sim", "--sim-scenario", "jump:jump_size=0.9"], {}, "jump_size=0.9 is outside"),
        (["up", "--sim"], {"VOLSTREAM_SIM_SCENARIO": "quiet:speed=2"}, "'speed=2'"),
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


def test_bad_scenario_lists_the_valid_ones() -> None:
    result = run_cli("up", "--sim", "--sim-scenario", "volshock:shock_vol_pts=500")
    assert result.returncode == 2, result
    assert "shock_vol_pts=500 is outside [-30, 100]" in result.stderr, result.stderr
    assert "scenarios: quiet, trending, jump, volshock" in result.stderr
    assert "lag_fraction [0, 1]" in result.stderr


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("crash", "unknown scenario 'crash'"),
        ("jump:jump_size=big", "jump_size='big' is not a number"),
        ("jump:jump_size=nan", "jump_size=nan is outside"),
        ("quiet:latency_ms=0", "latency_ms=0 is outside [1, 5000]"),
        ("quiet:speed=2", "unknown parameter 'speed=2'"),
    ],
)
def test_scenario_text_is_checked(text: str, named: str) -> None:
    from volstream.scenario import parse_scenario

    with pytest.raises(ConfigError, match="scenarios: quiet, trending, jump, volshock") as err:
        parse_scenario(text)
    assert named in str(err.value)
    parsed = parse_scenario("volshock:shock_vol_pts=5,lag_fraction=0.5")
    assert (parsed.shock_vol_pts, parsed.lag_fraction, parsed.latency_ms) == (5.0, 0.5, 60.0)
    assert parse_scenario(parsed.text()) == parsed


@pytest.mark.parametrize("scenario", ["nosuch", "trending:drift_per_hour=3"])
def test_simulator_scenario_flag_exits_2_listing_the_valid_ones(
    scenario: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulator.__main__ import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(["--scenario", scenario])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--scenario" in err and "quiet, trending, jump, volshock" in err
    assert parse_args(["--scenario", "jump:jump_size=0.05"]).scenario.jump_size == 0.05
