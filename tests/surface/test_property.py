"""Property: whatever smiles come in, a published surface is free of static arbitrage.

Checked independently of svc_surface.arbitrage: g and w are written out here and
evaluated on this test's own (denser) grids."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svc_surface.core import ConsolidatedSurfaceCore, SurfaceConfig, SurfaceCore
from tests.surface.builders import NOW_NS
from tests.surface.synthetic import NS_PER_DAY, QuoteFaults, make_smile
from volmath.svi import RawSvi
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

K_GRID = np.linspace(-3.0, 3.0, 24_001)


def w_of(p: surface_pb.SviRawParams, k: np.ndarray) -> np.ndarray:
    x = k - p.m
    return p.a + p.b * (p.rho * x + np.sqrt(x * x + p.sigma * p.sigma))


def g_of(p: surface_pb.SviRawParams, k: np.ndarray) -> np.ndarray:
    x = k - p.m
    r = np.sqrt(x * x + p.sigma * p.sigma)
    w = p.a + p.b * (p.rho * x + r)
    w1 = p.b * (p.rho + x / r)
    w2 = p.b * p.sigma * p.sigma / r**3
    return (1 - k * w1 / (2 * w)) ** 2 - w1 * w1 / 4 * (1 / w + 0.25) + w2 / 2


def grid_for(*params: surface_pb.SviRawParams) -> np.ndarray:
    local = [np.clip(p.m + p.sigma * np.linspace(-30, 30, 6001), -3.0, 3.0) for p in params]
    return np.concatenate([K_GRID, *local])


slice_strategy = st.fixed_dictionaries(
    {
        "days": st.integers(min_value=1, max_value=400),
        "atm": st.floats(min_value=0.2, max_value=1.6),
        "b_scale": st.floats(min_value=0.02, max_value=0.8),
        "rho": st.floats(min_value=-0.9, max_value=0.9),
        "m": st.floats(min_value=-0.3, max_value=0.3),
        "sigma": st.floats(min_value=0.005, max_value=0.8),
        "n_strikes": st.integers(min_value=3, max_value=30),
        "noise": st.floats(min_value=0.0, max_value=0.05),
        "spread": st.floats(min_value=0.001, max_value=0.08),
        "one_sided": st.floats(min_value=0.0, max_value=0.4),
        "crossed": st.floats(min_value=0.0, max_value=0.3),
        "outlier": st.floats(min_value=0.0, max_value=0.2),
        "both_sides": st.booleans(),
    }
)


def build_smile(
    spec: dict[str, Any], seed: int, venue: str = "deribit", forward: float = 60_000.0
) -> iv_pb.Smile:
    t = spec["days"] / 365
    sqrt_t = math.sqrt(t)
    b = spec["b_scale"] * sqrt_t
    sigma = spec["sigma"] * sqrt_t
    m = spec["m"] * sqrt_t
    rho = spec["rho"]
    # Level chosen so the ATM vol is spec["atm"]; the truth may itself be arbitrageable.
    a = spec["atm"] ** 2 * t - b * (-rho * m + math.sqrt(m * m + sigma * sigma))
    truth = RawSvi(a=max(a, 1e-6), b=b, rho=rho, m=m, sigma=sigma)
    return make_smile(
        venue=venue,
        currency="BTC",
        now_ns=NOW_NS,
        expiry_ns=NOW_NS + spec["days"] * NS_PER_DAY,
        forward=forward,
        truth=truth,
        n_strikes=spec["n_strikes"],
        span_sd=(-4.0, 3.5),
        noise_vol=spec["noise"],
        spread_vol=spec["spread"],
        rng=np.random.default_rng(seed),
        faults=QuoteFaults(
            one_sided=spec["one_sided"], crossed=spec["crossed"], outlier=spec["outlier"]
        ),
        both_sides=spec["both_sides"],
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    specs=st.lists(slice_strategy, min_size=1, max_size=7, unique_by=lambda s: s["days"]),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    model=st.sampled_from([surface_pb.SURFACE_MODEL_SVI, surface_pb.SURFACE_MODEL_SSVI]),
    consolidated=st.booleans(),
)
def test_published_surfaces_are_arbitrage_free(specs, seed, model, consolidated) -> None:
    config = SurfaceConfig(model=model, min_quotes_per_slice=5)
    core = (
        ConsolidatedSurfaceCore("BTC", config)
        if consolidated
        else SurfaceCore("deribit", "BTC", config)
    )
    for i, spec in enumerate(specs):
        core.on_smile(build_smile(spec, seed + i))
        if consolidated:  # a second venue quoting a slightly different forward
            core.on_smile(build_smile(spec, seed + 1000 + i, venue="okx", forward=60_600.0))
    surface = core.fit(NOW_NS + 1)
    if surface is None:
        return
    assert_arbitrage_free(surface)


def assert_arbitrage_free(surface: surface_pb.Surface) -> None:
    raws = [s.raw for s in surface.slices]
    ts = [s.time_to_expiry_years for s in surface.slices]
    assert ts == sorted(ts)
    for s in surface.slices:
        p = s.raw
        assert p.b >= 0 and abs(p.rho) < 1 and p.sigma > 0
        assert p.b * (1 + abs(p.rho)) <= 2 + 1e-9  # Lee: the far wings
        k = grid_for(p)
        assert float(np.min(w_of(p, k))) > 0
        assert float(np.min(g_of(p, k))) >= -1e-9, s.diagnostics.repair_method
        assert s.diagnostics.butterfly_arbitrage_free and s.diagnostics.calendar_arbitrage_free
        assert math.isfinite(s.diagnostics.min_g) and s.diagnostics.min_g >= 0
    for p0, p1 in itertools.pairwise(raws):
        k = grid_for(p0, p1)
        assert float(np.min(w_of(p1, k) - w_of(p0, k))) >= -1e-9


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    specs=st.lists(slice_strategy, min_size=2, max_size=5, unique_by=lambda s: s["days"]),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    move=st.floats(min_value=-0.03, max_value=0.03),
)
def test_warm_revisions_stay_arbitrage_free(specs, seed, move) -> None:
    # The next revision starts from the last one: warm fits, wing caps carried over and
    # fitted with the free fits, cached repairs. Each smile moves by a common shift.
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(min_quotes_per_slice=5))
    smiles = [build_smile(spec, seed + i) for i, spec in enumerate(specs)]
    for step, shift in enumerate([0.0, move]):
        for i, smile in enumerate(smiles):
            moved = iv_pb.Smile()
            moved.CopyFrom(smile)
            for q in moved.quotes:
                q.bid_iv, q.mid_iv, q.ask_iv = (
                    max(q.bid_iv + shift * (1 + 0.1 * i), 0.0),
                    max(q.mid_iv + shift * (1 + 0.1 * i), 0.01),
                    max(q.ask_iv + shift * (1 + 0.1 * i), 0.01),
                )
            moved.header.event_time_ns += step
            moved.header.sequence += step
            core.on_smile(moved)
        surface = core.fit(NOW_NS + 1 + step)
        if surface is not None:
            assert_arbitrage_free(surface)
