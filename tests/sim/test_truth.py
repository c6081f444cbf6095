"""The ground truth: calendar, strike grids, arbitrage-free SVI, reproducibility, proto."""

from __future__ import annotations

import itertools
import math
import re
from datetime import UTC, datetime

import numpy as np
import pytest

from simulator.truth import (
    NS_PER_S,
    TruthConfig,
    TruthMarket,
    expiry_label,
    expiry_schedule,
    strike_grid,
    surface_proto,
    vol_index,
)
from volmath.svi import RawSvi, total_variance
from volstream.v1 import common_pb2, surface_pb2

# A Tuesday mid-morning, and a Friday evening, as fixed start times.
TUESDAY = int(datetime(2026, 3, 10, 10, 30, tzinfo=UTC).timestamp()) * NS_PER_S
FRIDAY_EVENING = int(datetime(2026, 6, 26, 20, 0, tzinfo=UTC).timestamp()) * NS_PER_S
HOUR_NS = 3600 * NS_PER_S


def butterfly_g(p: RawSvi, k: np.ndarray) -> np.ndarray:
    """Durrleman's g(k), written out independently of the module under test."""
    d = k - p.m
    s = np.sqrt(d**2 + p.sigma**2)
    w = p.a + p.b * (p.rho * d + s)
    dw = p.b * (p.rho + d / s)
    d2w = p.b * p.sigma**2 / s**3
    return (1 - k * dw / (2 * w)) ** 2 - dw**2 / 4 * (1 / w + 0.25) + d2w / 2


@pytest.mark.parametrize("start", [TUESDAY, FRIDAY_EVENING])
def test_schedule_has_realistic_expiries(start: int) -> None:
    specs = expiry_schedule(start, 12 * 3600.0, 230.0)
    assert len(specs) >= 8
    days = [(s.expiry_ns - start) / (86_400 * NS_PER_S) for s in specs]
    assert days == sorted(days)
    assert 0.5 <= days[0] <= 1.6, "nearest expiry about one day out"
    assert 120 <= days[-1] <= 230, "farthest about six months out"
    periods = {s.period for s in specs}
    assert periods == {"day", "week", "month"}
    assert any(s.quarterly for s in specs)
    for s in specs:
        d = datetime.fromtimestamp(s.expiry_ns / NS_PER_S, tz=UTC)
        assert (d.hour, d.minute, d.second) == (8, 0, 0)
        if s.period in ("week", "month"):
            assert d.weekday() == 4, f"{s.label} is not a Friday"
        if s.period == "month":
            # Last Friday of its month: a week later is next month.
            assert (d.day + 7) > [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][d.month - 1]
        if s.quarterly:
            assert d.month in (3, 6, 9, 12)


def test_expiry_label_is_deribit_style() -> None:
    ns = int(datetime(2021, 8, 6, 8, tzinfo=UTC).timestamp()) * NS_PER_S
    assert expiry_label(ns) == "6AUG21"
    ns = int(datetime(2024, 12, 27, 8, tzinfo=UTC).timestamp()) * NS_PER_S
    assert expiry_label(ns) == "27DEC24"


def test_strike_grid_is_dense_near_forward_and_spans_the_wings() -> None:
    grid = strike_grid(61_234.0, 0.55, 30 / 365, 250.0)
    assert grid == sorted(set(grid))
    assert grid[0] < 61_234.0 * 0.75 and grid[-1] > 61_234.0 * 1.3
    near = [k for k in grid if abs(math.log(k / 61_234.0)) < 0.05]
    steps = np.diff(near)
    assert len(near) >= 4 and steps.max() <= 2_000
    assert all(float(k).is_integer() for k in grid)
    assert 20 <= len(grid) <= 80


def test_levels_skew_and_term_structure_are_crypto_like() -> None:
    truth = TruthMarket(TruthConfig(), TUESDAY)
    for ccy in ("BTC", "ETH"):
        snap = truth.snapshot(ccy)
        assert len(snap.slices) >= 8
        ts = [s.t_years for s in snap.slices]
        assert ts[0] < 2 / 365 and ts[-1] > 120 / 365
        thetas = [s.theta for s in snap.slices]
        assert all(b > a for a, b in itertools.pairwise(thetas))
        for s in snap.slices:
            assert 0.45 <= s.atm_vol <= 0.80, (ccy, s.label, s.atm_vol)
            # Negative skew: the 0.9F put wing is above the 1.1F call wing.
            lo, hi = s.vol([0.9 * s.forward, 1.1 * s.forward])
            assert lo > hi
            assert s.forward > snap.index  # contango basis
            assert s.forward == pytest.approx(snap.index * math.exp(0.03 * s.t_years), rel=0.05)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_surface_stays_free_of_static_arbitrage_while_drifting(seed: int) -> None:
    cfg = TruthConfig(seed=seed, surface_drift=5.0)
    truth = TruthMarket(cfg, TUESDAY)
    k = np.linspace(-4.0, 4.0, 801)
    now = TUESDAY
    worst_g = math.inf
    for step in range(40):
        now += 3 * HOUR_NS
        truth.step(now)
        for ccy in ("BTC", "ETH"):
            snap = truth.snapshot(ccy)
            prev = None
            for s in snap.slices:
                w = total_variance(s.raw, k)
                assert np.all(w > 0)
                g = butterfly_g(s.raw, k)
                worst_g = min(worst_g, float(g.min()))
                assert g.min() >= -1e-12, (seed, step, s.label)
                if prev is not None:
                    assert np.all(w >= prev - 1e-14), f"calendar arbitrage at {s.label}"
                prev = w
                assert s.raw.b * (1 + abs(s.raw.rho)) <= 2.0
    assert worst_g >= 0.0


def test_same_seed_same_path_other_seed_other_path() -> None:
    def path(seed: int) -> list[float]:
        truth = TruthMarket(TruthConfig(seed=seed), TUESDAY)
        out = []
        for i in range(1, 50):
            truth.step(TUESDAY + i * 100_000_000)
            snap = truth.snapshot("BTC")
            out += [snap.index, snap.slices[3].raw.rho, snap.slices[3].forward]
        return out

    a, b, c = path(5), path(5), path(6)
    assert a == b
    assert a != c
    assert a[0] != a[-3], "the index moves"


def test_expired_slices_roll_off_and_new_ones_list() -> None:
    truth = TruthMarket(TruthConfig(currencies=("BTC",)), TUESDAY)
    first = truth.currencies["BTC"].expiries[0].expiry_ns
    version = truth.currencies["BTC"].listing_version
    truth.step(first + NS_PER_S)
    btc = truth.currencies["BTC"]
    assert all(e.expiry_ns > first for e in btc.expiries)
    assert btc.listing_version > version
    assert len(btc.expiries) >= 8


def test_surface_proto_is_well_formed() -> None:
    truth = TruthMarket(TruthConfig(), TUESDAY)
    snap = truth.snapshot("BTC")
    msg = surface_proto(snap, "deribit", revision=4, publish_time_ns=TUESDAY + 5)
    parsed = surface_pb2.Surface.FromString(msg.SerializeToString())
    assert parsed.model == surface_pb2.SURFACE_MODEL_TRUTH
    assert parsed.venue == "deribit" and parsed.currency == "BTC"
    assert parsed.header.event_time_ns == TUESDAY
    assert parsed.header.source == "sim.deribit"
    assert parsed.revision == 4
    assert parsed.index_price_usd == snap.index
    assert 0.4 < parsed.vol_index_30d < 0.9
    assert parsed.vol_index_30d == pytest.approx(vol_index(snap))
    assert len(parsed.slices) == len(snap.slices) >= 8
    expiries = [s.expiry_time_ns for s in parsed.slices]
    assert expiries == sorted(expiries)
    for sl, truth_slice in zip(parsed.slices, snap.slices, strict=True):
        assert re.fullmatch(r"\d{1,2}[A-Z]{3}\d{2}", sl.expiry_label)
        assert sl.forward_source == common_pb2.FORWARD_SOURCE_TRUTH
        raw = RawSvi(sl.raw.a, sl.raw.b, sl.raw.rho, sl.raw.m, sl.raw.sigma)
        assert raw == truth_slice.raw
        assert sl.time_to_expiry_years == pytest.approx(
            (sl.expiry_time_ns - TUESDAY) / 1e9 / 31_536_000
        )
        atm = math.sqrt(float(total_variance(raw, 0.0)) / sl.time_to_expiry_years)
        assert sl.metrics.atm_vol == pytest.approx(atm, rel=1e-12)
        # JW v is the ATM variance w(0)/T.
        assert sl.jw.atm_variance == pytest.approx(atm**2, rel=1e-12)
        assert sl.metrics.rr25 < 0 < sl.metrics.bf25
        assert sl.diagnostics.butterfly_arbitrage_free and sl.diagnostics.calendar_arbitrage_free
        assert sl.diagnostics.min_g >= 0
