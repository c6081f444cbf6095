"""The surface service end to end over a real nats-server: simulator (all four venues, BTC and
ETH) -> connector -> book -> IV -> surface, each an in-process asyncio task.

Proves: a surface on surface.<venue>.<ccy> for every venue and currency with every listed
expiry, and the consolidated surface.all.<ccy> with all of them and venue weights over the
four venues summing to 1. Accuracy against the simulator's truth (sim.truth.<venue>.<ccy>,
the nearest in event time), for every expiry of at least 7 days, ATM vol and 25-delta risk
reversal (forward delta, as the truth):
- consolidated: every slice within half a vol point;
- per venue: the median slice within half a vol point, every slice within 2.

The truth is held still (no surface drift, no index moves): the simulator reprices an
option's book only now and then, so on a moving forward its stale prices tilt put IVs
against call IVs, the same way on every venue (a risk-reversal error of about a vol point
per 0.1% forward move on a week-long expiry); bench.bench_surface_accuracy measures both.
A single venue's week-long smile is quoted several vol points wide with noisy mids, which
its ~35 usable quotes average only down to about a vol point at worst; the four venues
together meet half a point.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import nats
import pytest

from svc_connector.sim import SimConfig
from tests.pipeline import (
    CURRENCIES,
    VENUES,
    SliceError,
    SurfaceWatch,
    listed_expiries,
    pipeline,
    wait_until,
)
from volstream.bus.embedded import EmbeddedNats

ALL = "all"
MIN_DAYS = 7.0
TARGET = 0.005  # half a vol point: consolidated slices, and the median venue slice
# Per-venue noise bound (measured worst: 1.3 vol points over 32 slices in the bench).
VENUE_SLICE_TOLERANCE = 0.02
# Fits after every expiry is present: later fits see refreshed quotes on every strike.
SETTLE_FITS = 3


def describe(e: SliceError) -> str:
    return (
        f"{e.venue:8s} {e.currency} {e.expiry_label:>8s} {e.days:6.1f}d "
        f"atm {e.atm_fit:.4f}/{e.atm_truth:.4f} ({100 * e.atm_error:+.2f}) "
        f"rr25 {e.rr25_fit:+.4f}/{e.rr25_truth:+.4f} ({100 * e.rr25_error:+.2f}) "
        f"used {e.quotes_used} dropped {e.quotes_dropped} rmse {e.rmse_bp:.0f}bp "
        f"truth lag {e.truth_lag_s:.1f}s"
    )


async def test_sim_to_surfaces_over_nats(nats_server: EmbeddedNats) -> None:
    sim = SimConfig(
        venues=VENUES,
        currencies=CURRENCIES,
        max_expiries=2,
        messages_per_second=250.0,
        surface_drift=0.0,
        index_vol_scale=0.0,
        index_interval_s=0.5,
        min_time_to_expiry_s=MIN_DAYS * 86_400.0,
    )
    watch = SurfaceWatch()
    nc = await nats.connect(nats_server.url)
    await watch.subscribe(nc)
    try:
        async with pipeline(
            nats_server.url, sim, surface=True, iv_interval_ms=200, surface_interval_ms=500
        ) as p:
            wanted = {(v, c): listed_expiries(p.handle, v, c) for v in VENUES for c in CURRENCIES}
            for ccy in CURRENCIES:
                wanted[(ALL, ccy)] = set().union(*(wanted[(v, ccy)] for v in VENUES))
            assert all(wanted.values()), wanted
            complete_at: dict[tuple[str, str], int] = {}

            def complete() -> bool:
                for key, expiries in wanted.items():
                    if key not in complete_at and watch.expiries(key) >= expiries:
                        complete_at[key] = watch.arrivals[key]
                return len(complete_at) == len(wanted) and all(
                    watch.arrivals[k] - n >= SETTLE_FITS for k, n in complete_at.items()
                )

            await wait_until(complete, 45, 0.25)
            missing = {
                k: sorted(x - watch.expiries(k)) for k, x in wanted.items() if k not in complete_at
            }
            assert not missing, f"surfaces lacking expiries: {missing}"
            assert complete(), {k: watch.arrivals[k] - n for k, n in complete_at.items()}
            assert p.alive()

            errors: list[SliceError] = []
            for key in sorted(wanted):
                venue, ccy = key
                surface = watch.latest[key]
                assert surface.venue == venue and surface.currency == ccy
                assert {s.expiry_time_ns for s in surface.slices} >= wanted[key]
                if venue == ALL:
                    weights = {w.venue: w.weight for w in surface.venue_weights}
                    assert set(weights) == set(VENUES), weights
                    assert math.fsum(weights.values()) == pytest.approx(1.0, abs=1e-9)
                    assert all(w > 0.0 for w in weights.values()), weights
                    assert all(w.quotes_used > 0 for w in surface.venue_weights)
                    print(
                        f"{ccy} venue weights: "
                        + ", ".join(
                            f"{w.venue} {w.weight:.3f} ({w.quotes_used} quotes)"
                            for w in surface.venue_weights
                        )
                    )
                # The consolidated surface against Deribit's truth: the same smile in
                # log-moneyness (each venue's only differs by forwards).
                slices = watch.errors(key, "deribit" if venue == ALL else None, MIN_DAYS)
                assert {e.expiry_time_ns for e in slices} == wanted[key], key
                errors.extend(slices)
            report = "\n".join(describe(e) for e in errors)
            print("\n" + report)
            assert all(e.truth_lag_s <= 2.0 for e in errors), report
            consolidated = [e for e in errors if e.venue == ALL]
            venues = [e for e in errors if e.venue != ALL]
            assert len(consolidated) >= len(CURRENCIES) and len(venues) >= len(VENUES)
            measures: tuple[tuple[str, Callable[[SliceError], float]], ...] = (
                ("atm", lambda e: abs(e.atm_error)),
                ("rr25", lambda e: abs(e.rr25_error)),
            )
            for name, error in measures:
                worst_all = max(consolidated, key=error)
                worst_venue = max(venues, key=error)
                median_venue = statistics.median(error(e) for e in venues)
                print(
                    f"{name}: consolidated max |error| {100 * error(worst_all):.2f}, per venue "
                    f"max {100 * error(worst_venue):.2f} median {100 * median_venue:.2f} "
                    "vol points"
                )
                assert error(worst_all) <= TARGET, describe(worst_all)
                assert median_venue <= TARGET, report
                assert error(worst_venue) <= VENUE_SLICE_TOLERANCE, describe(worst_venue)
    finally:
        await nc.close()
