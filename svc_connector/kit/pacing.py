"""Request pacing (venue rate limits) as a token bucket; time is an argument."""

from __future__ import annotations


class TokenBucket:
    """Request pacing: ``rate_per_s`` sustained, bursts up to ``burst``. Time is an argument."""

    def __init__(self, rate_per_s: float, burst: float, now_s: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now_s

    def _refill(self, now_s: float) -> None:
        if now_s > self._at:
            self._tokens = min(self.burst, self._tokens + (now_s - self._at) * self.rate_per_s)
            self._at = now_s

    def wait_time(self, now_s: float) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        self._refill(now_s)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate_per_s

    def take(self, now_s: float) -> None:
        self._refill(now_s)
        self._tokens -= 1
