"""Surfaces to archive in tests: every field the archive keeps set to a distinct value, so a
column mapped to the wrong field cannot go unnoticed."""

from __future__ import annotations

from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import surface_pb2 as surface_pb

DAY_NS = 86_400 * 1_000_000_000
# 2026-03-11T12:00:00Z
T0_NS = 1_773_230_400 * 1_000_000_000


def surface(
    revision: int,
    venue: str = "deribit",
    currency: str = "BTC",
    event_time_ns: int | None = None,
    expiries: int = 3,
    tenors: tuple[int, ...] = (7, 30),
    quotes: int = 2,
) -> surface_pb.Surface:
    t = T0_NS + revision * 500_000_000 if event_time_ns is None else event_time_ns
    s = surface_pb.Surface(
        venue=venue,
        currency=currency,
        model=surface_pb.SURFACE_MODEL_SVI,
        index_price_usd=60_000.0 + revision,
        vol_index_30d=0.55 + revision * 1e-4,
        revision=revision,
        delta_convention=common_pb.DELTA_CONVENTION_PREMIUM_ADJUSTED,
    )
    s.header.event_time_ns = t
    s.header.receive_time_ns = t + 1_000
    s.header.publish_time_ns = t + 2_000
    s.header.source = "svc_surface"
    s.header.sequence = 1_000 + revision
    if venue == "all":
        s.venue_weights.add(venue="deribit", weight=0.75, quotes_used=30)
        s.venue_weights.add(venue="okx", weight=0.25, quotes_used=10)
    for i in range(expiries):
        e = s.slices.add(
            expiry_time_ns=T0_NS + (i + 1) * 7 * DAY_NS,
            expiry_label=f"2026-03-{18 + i:02d}",
            time_to_expiry_years=(i + 1) * 7 / 365,
            forward_usd=60_000.0 + 10 * i + revision,
            forward_source=1,
        )
        e.raw.a, e.raw.b, e.raw.rho, e.raw.m, e.raw.sigma = 0.01 * (i + 1), 0.1, -0.3, 0.02, 0.2
        e.jw.atm_variance, e.jw.atm_skew, e.jw.put_wing_slope = 0.3, -0.1, 0.6
        e.jw.call_wing_slope, e.jw.min_variance = 0.4, 0.25
        e.metrics.atm_vol = 0.5 + 0.01 * i + revision * 1e-5
        e.metrics.rr25, e.metrics.bf25 = -0.02 - 0.001 * i, 0.004 + 0.001 * i
        e.metrics.rr10, e.metrics.bf10 = -0.05, 0.012
        e.metrics.delta_convention = common_pb.DELTA_CONVENTION_PREMIUM_ADJUSTED
        d = e.diagnostics
        d.quotes_used, d.quotes_dropped, d.rmse_bp, d.max_abs_residual_bp = 20 + i, 3, 45.0, 90.0
        d.min_g, d.butterfly_arbitrage_free, d.calendar_arbitrage_free = 0.01, True, i != 1
        d.repaired, d.repair_method, d.fit_time_ms, d.warm_start = i == 2, "wings", 1.5, True
        for q in range(quotes):
            e.quotes.add(symbol=f"BTC-{i}-{q}", strike_usd=50_000.0 + q, mid_iv=0.5)
    for days in tenors:
        point = s.tenors.add(
            tenor_days=days, available=True, time_to_expiry_years=days / 365, forward_usd=60_001.0
        )
        point.metrics.atm_vol, point.metrics.rr25, point.metrics.bf25 = (
            0.5 + days * 1e-3,
            -0.02,
            0.004,
        )
        point.metrics.rr10, point.metrics.bf10 = -0.05, 0.012
        point.metrics.delta_convention = common_pb.DELTA_CONVENTION_PREMIUM_ADJUSTED
        for label, delta in (("25P", -0.25), ("ATM", 0.5), ("25C", 0.25)):
            point.nodes.add(
                label=label, delta=delta, vol=0.5 + delta / 10, strike_usd=60_000 + delta
            )
    return s


def without_quotes(s: surface_pb.Surface) -> surface_pb.Surface:
    light = surface_pb.Surface()
    light.CopyFrom(s)
    for e in light.slices:
        del e.quotes[:]
    return light
