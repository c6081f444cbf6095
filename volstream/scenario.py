"""The simulator's market scenarios as a setting: names, parameters, ranges, parsing.

A plain table (no maths): `simulator/truth.py` and `simulator/market.py` apply it, and the
CLI (`--sim-scenario`, `python -m simulator --scenario`) validates it without importing the
simulator. The text form is ``NAME`` or ``NAME:key=value,key=value`` (docs/simulator.md
section 2 lists every parameter with its meaning, default and range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from volstream.config import ConfigError


@dataclass(frozen=True)
class Scenario:
    name: str = "quiet"
    # Index drift, fraction per hour (trending: +0.02 = +2% an hour).
    drift_per_hour: float = 0.0
    # Multiplier on the index volatility (the truth's 30-day ATM vol).
    index_vol: float = 1.0
    # Index jump: total log move (0.03 = +3%), spread linearly over jump_duration_s,
    # starting jump_at_s of event time after the simulator's start.
    jump_size: float = 0.0
    jump_at_s: float = 30.0
    jump_duration_s: float = 1.0
    # Volatility shock: the truth's ATM vol rises by shock_vol_pts (vol points, every
    # expiry) linearly over shock_duration_s, starting shock_at_s after the start.
    shock_vol_pts: float = 0.0
    shock_at_s: float = 30.0
    shock_duration_s: float = 60.0
    # Market makers' requote latency after a move that shifts their price by a tick:
    # lognormal with this median (ms) and log-sd; lag_fraction of the requotes come from
    # slow makers, with median lag_latency_ms.
    latency_ms: float = 60.0
    latency_sigma: float = 0.6
    lag_fraction: float = 0.1
    lag_latency_ms: float = 400.0
    # Spreads widen by up to this factor minus one in a fast market (index or ATM vol
    # moving 0.5%/s or more, averaged over a 2 s half life): 1.0 doubles them.
    spread_widening: float = 1.0

    def text(self) -> str:
        """The canonical text form (what `parse_scenario` reads back)."""
        base = SCENARIOS[self.name] if self.name in SCENARIOS else Scenario(self.name)
        diffs = [
            f"{f.name}={getattr(self, f.name):g}"
            for f in fields(self)
            if f.name != "name" and getattr(self, f.name) != getattr(base, f.name)
        ]
        return self.name + (":" + ",".join(diffs) if diffs else "")


SCENARIOS: dict[str, Scenario] = {
    "quiet": Scenario("quiet"),
    "trending": Scenario("trending", drift_per_hour=0.02),
    "jump": Scenario("jump", jump_size=0.03),
    "volshock": Scenario("volshock", shock_vol_pts=10.0),
}

# Inclusive ranges of every numeric parameter.
RANGES: dict[str, tuple[float, float]] = {
    "drift_per_hour": (-0.5, 0.5),
    "index_vol": (0.0, 10.0),
    "jump_size": (-0.5, 0.5),
    "jump_at_s": (0.0, 86_400.0),
    "jump_duration_s": (0.05, 3_600.0),
    "shock_vol_pts": (-30.0, 100.0),
    "shock_at_s": (0.0, 86_400.0),
    "shock_duration_s": (0.05, 3_600.0),
    "latency_ms": (1.0, 5_000.0),
    "latency_sigma": (0.0, 2.0),
    "lag_fraction": (0.0, 1.0),
    "lag_latency_ms": (1.0, 10_000.0),
    "spread_widening": (0.0, 10.0),
}


def valid_text() -> str:
    """The valid names and parameter ranges, for error messages."""
    ranges = ", ".join(f"{k} [{lo:g}, {hi:g}]" for k, (lo, hi) in RANGES.items())
    return f"scenarios: {', '.join(SCENARIOS)}; parameters: {ranges}"


def parse_scenario(text: str, setting: str = "sim_scenario") -> Scenario:
    """``NAME[:key=value,...]`` -> Scenario; ConfigError naming the bad part and listing
    the valid names and ranges."""
    name, _, params = text.strip().partition(":")
    name = name.strip().lower()
    if name not in SCENARIOS:
        raise ConfigError(f"{setting}: unknown scenario {name!r}; {valid_text()}")
    scenario = SCENARIOS[name]
    changes: dict[str, Any] = {}
    for item in params.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in RANGES:
            raise ConfigError(f"{setting}: unknown parameter {item.strip()!r}; {valid_text()}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(
                f"{setting}: {key}={raw.strip()!r} is not a number; {valid_text()}"
            ) from None
        lo, hi = RANGES[key]
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ConfigError(
                f"{setting}: {key}={raw.strip()} is outside [{lo:g}, {hi:g}]; {valid_text()}"
            )
        changes[key] = value
    return replace(scenario, **changes)
