"""The simulator's notion of event time.

- "realtime": event time is the wall clock; ticks every tick interval.
- "fast": virtual time from `start_ns`, advanced by exactly one tick interval per tick,
  ticks paced at `speed` simulated seconds per wall second (deterministic event times).
- "manual": virtual time advanced only by explicit steps (tests drive it).
"""

from __future__ import annotations

import time
from typing import Literal

ClockMode = Literal["realtime", "fast", "manual"]
CLOCK_MODES: tuple[ClockMode, ...] = ("realtime", "fast", "manual")


class SimClock:
    def __init__(self, mode: ClockMode, tick_ns: int, start_ns: int | None = None) -> None:
        if mode not in CLOCK_MODES:
            raise ValueError(f"clock mode must be one of {CLOCK_MODES}, not {mode!r}")
        if tick_ns <= 0:
            raise ValueError("tick interval must be positive")
        self.mode: ClockMode = mode
        self.tick_ns = tick_ns
        self._now = start_ns if start_ns is not None else time.time_ns()
        self.ticks = 0

    @property
    def virtual(self) -> bool:
        return self.mode != "realtime"

    def now_ns(self) -> int:
        if self.mode == "realtime":
            self._now = max(self._now, time.time_ns())
        return self._now

    def advance(self) -> int:
        """Event time of the next tick."""
        self.ticks += 1
        if self.mode == "realtime":
            self._now = max(self._now + 1, time.time_ns())
        else:
            self._now += self.tick_ns
        return self._now
