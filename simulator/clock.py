"""The simulator's notion of event time.

- "realtime": event time runs at the wall clock's pace from `start_ns` (default: now); ticks
  every tick interval. A start date other than today (VOLSTREAM_SIM_START, `--sim-start`)
  lists the calendar of that day: tests and runs that care about expiries pin it.
- "fast": virtual time from `start_ns`, advanced by exactly one tick interval per tick,
  ticks paced at `speed` simulated seconds per wall second (deterministic event times).
- "manual": virtual time advanced only by explicit steps (tests drive it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Literal

from volstream.config import parse_utc_ns

ClockMode = Literal["realtime", "fast", "manual"]
CLOCK_MODES: tuple[ClockMode, ...] = ("realtime", "fast", "manual")
START_ENV = "VOLSTREAM_SIM_START"


def start_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """The simulator's start time from VOLSTREAM_SIM_START (ISO-8601, UTC), or None (now)."""
    text = (os.environ if env is None else env).get(START_ENV, "")
    return parse_utc_ns(text, START_ENV) if text else None


class SimClock:
    def __init__(self, mode: ClockMode, tick_ns: int, start_ns: int | None = None) -> None:
        if mode not in CLOCK_MODES:
            raise ValueError(f"clock mode must be one of {CLOCK_MODES}, not {mode!r}")
        if tick_ns <= 0:
            raise ValueError("tick interval must be positive")
        self.mode: ClockMode = mode
        self.tick_ns = tick_ns
        wall = time.time_ns()
        self._now = start_ns if start_ns is not None else wall
        # Realtime: event time = wall clock + this offset (0 unless a start was given).
        self._offset_ns = self._now - wall
        self.ticks = 0

    @property
    def virtual(self) -> bool:
        return self.mode != "realtime"

    def now_ns(self) -> int:
        if self.mode == "realtime":
            self._now = max(self._now, time.time_ns() + self._offset_ns)
        return self._now

    def advance(self) -> int:
        """Event time of the next tick."""
        self.ticks += 1
        if self.mode == "realtime":
            self._now = max(self._now + 1, time.time_ns() + self._offset_ns)
        else:
            self._now += self.tick_ns
        return self._now
