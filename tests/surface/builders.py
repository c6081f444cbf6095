"""Builders for surface tests: smiles from a known SVI truth."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tests.surface.synthetic import NS_PER_DAY, QuoteFaults, crypto_like_slice, make_smile
from volmath.svi import RawSvi
from volstream.v1 import iv_pb2 as iv_pb

NOW_NS = 1_767_254_400 * 1_000_000_000  # 2026-01-01 08:00 UTC
SPOT = 60_000.0


def truth_surface(days: Sequence[int]) -> dict[int, RawSvi]:
    """Crypto-like truth per expiry (days), ATM vol rising slowly with maturity."""
    return {d: crypto_like_slice(d / 365, 0.55 + 0.1 * math.sqrt(d / 365)) for d in days}


def forward_for(days: int) -> float:
    return SPOT * math.exp(0.05 * days / 365)


def truth_smiles(
    truths: dict[int, RawSvi],
    *,
    venue: str = "deribit",
    now_ns: int = NOW_NS,
    noise_vol: float = 0.002,
    n_strikes: int = 30,
    seed: int = 0,
    sequence: int = 1,
    faults: QuoteFaults | None = None,
    forward_scale: float = 1.0,
) -> list[iv_pb.Smile]:
    rng = np.random.default_rng(seed)
    return [
        make_smile(
            venue=venue,
            currency="BTC",
            now_ns=now_ns,
            expiry_ns=NOW_NS + d * NS_PER_DAY,
            forward=forward_for(d) * forward_scale,
            truth=p,
            n_strikes=n_strikes,
            noise_vol=noise_vol,
            rng=rng,
            faults=faults,
            index_price=SPOT * forward_scale,
            sequence=sequence,
        )
        for d, p in truths.items()
    ]


def g_independent(p: RawSvi, k: np.ndarray) -> np.ndarray:
    """Durrleman's g written out again, not through volmath.svi."""
    x = k - p.m
    r = np.sqrt(x * x + p.sigma**2)
    w = p.a + p.b * (p.rho * x + r)
    w1 = p.b * (p.rho + x / r)
    w2 = p.b * p.sigma**2 / r**3
    return (1 - k * w1 / (2 * w)) ** 2 - w1**2 / 4 * (1 / w + 0.25) + w2 / 2
