"""Pure conversions for the dashboard: protobuf surfaces and smiles -> JSON-able dicts.

The shapes are documented in docs/dashboard.md. Vols stay fractions (the page formats them);
NaN and infinities become null, since JSON has no NaN. Nothing here reads a clock: "now" is
an argument.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from svc_api.server import expiry_label_of
from svc_api.store import SurfaceEntry, SurfaceKey
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

Json = dict[str, Any]
# The fixed tenor the overview summarises (the 30-day ATM / RR / BF of a vol desk).
OVERVIEW_TENOR_DAYS = 30
# Updates per minute are measured over this window (and over less until it has passed).
RATE_WINDOW_NS = 60 * 1_000_000_000


def num(value: float) -> float | None:
    """A float for JSON: None for NaN and infinities."""
    return value if math.isfinite(value) else None


def enum_name(enum: Any, value: int, prefix: str) -> str:
    """`DROP_REASON_ONE_SIDED` -> `one_sided`; unknown numbers stay visible as numbers."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def metrics_json(m: surface_pb.SmileMetrics) -> Json:
    return {
        "atm": num(m.atm_vol),
        "rr25": num(m.rr25),
        "bf25": num(m.bf25),
        "rr10": num(m.rr10),
        "bf10": num(m.bf10),
    }


def diagnostics_json(d: surface_pb.FitDiagnostics) -> Json:
    return {
        "quotes_used": d.quotes_used,
        "quotes_dropped": d.quotes_dropped,
        "rmse_bp": num(d.rmse_bp),
        "max_abs_residual_bp": num(d.max_abs_residual_bp),
        "min_g": num(d.min_g),
        "butterfly_ok": d.butterfly_arbitrage_free,
        "calendar_ok": d.calendar_arbitrage_free,
        "repaired": d.repaired,
        "repair_method": d.repair_method,
        "fit_time_ms": num(d.fit_time_ms),
        "warm_start": d.warm_start,
    }


def quote_fit_json(q: surface_pb.QuoteFit) -> Json:
    return {
        "symbol": q.symbol,
        "venue": q.venue,
        "kind": enum_name(common_pb.OptionKind, q.option_kind, "OPTION_KIND_"),
        "strike": num(q.strike_usd),
        "k": num(q.log_moneyness),
        "bid_iv": num(q.bid_iv),
        "ask_iv": num(q.ask_iv),
        "mid_iv": num(q.mid_iv),
        "fit_iv": num(q.fitted_iv),
        "residual_bp": num(q.residual_bp),
        "position": enum_name(surface_pb.FitPosition, q.position, "FIT_POSITION_"),
        "used": q.used,
        "drop_reason": ""
        if q.used
        else enum_name(surface_pb.DropReason, q.drop_reason, "DROP_REASON_"),
        "weight": num(q.weight),
    }


def slice_json(s: surface_pb.ExpirySlice, label: str, with_quotes: bool) -> Json:
    raw = s.raw
    out: Json = {
        "expiry": label,
        "expiry_time_ns": s.expiry_time_ns,
        "t": num(s.time_to_expiry_years),
        "forward": num(s.forward_usd),
        "forward_source": enum_name(common_pb.ForwardSource, s.forward_source, "FORWARD_SOURCE_"),
        "raw": {
            "a": num(raw.a),
            "b": num(raw.b),
            "rho": num(raw.rho),
            "m": num(raw.m),
            "sigma": num(raw.sigma),
        },
        "metrics": metrics_json(s.metrics),
        "diagnostics": diagnostics_json(s.diagnostics),
    }
    if with_quotes:
        out["quotes"] = [quote_fit_json(q) for q in s.quotes]
    return out


def tenor_json(t: surface_pb.TenorPoint) -> Json:
    return {
        "days": t.tenor_days,
        "available": t.available,
        "t": num(t.time_to_expiry_years),
        "forward": num(t.forward_usd),
        "metrics": metrics_json(t.metrics),
        "nodes": [
            {
                "label": n.label,
                "delta": num(n.delta),
                "vol": num(n.vol),
                "strike": num(n.strike_usd),
            }
            for n in t.nodes
        ],
    }


def latency_ms(surface: surface_pb.Surface) -> float | None:
    """Exchange -> surface: publish time minus the venue event time it carries."""
    h = surface.header
    if not h.event_time_ns or not h.publish_time_ns:
        return None
    return (h.publish_time_ns - h.event_time_ns) / 1e6


def surface_json(
    surface: surface_pb.Surface,
    *,
    with_quotes: bool,
    sequence: int = 0,
    stored_time_ns: int = 0,
) -> Json:

    h = surface.header
    return {
        "venue": surface.venue.lower(),
        "currency": surface.currency.upper(),
        "revision": surface.revision,
        "sequence": sequence,
        "stored_time_ns": stored_time_ns,
        "event_time_ns": h.event_time_ns,
        "publish_time_ns": h.publish_time_ns,
        "latency_ms": latency_ms(surface),
        "model": enum_name(surface_pb.SurfaceModel, surface.model, "SURFACE_MODEL_"),
        "index_price": num(surface.index_price_usd),
        "vol_index_30d": num(surface.vol_index_30d),
        "delta_convention": enum_name(
            common_pb.DeltaConvention, surface.delta_convention, "DELTA_CONVENTION_"
        ),
        "venue_weights": [
            {"venue": w.venue, "weight": num(w.weight), "quotes_used": w.quotes_used}
            for w in surface.venue_weights
        ],
        "slices": [slice_json(s, expiry_label_of(s), with_quotes) for s in surface.slices],
        "tenors": [tenor_json(t) for t in surface.tenors],
    }


def smile_quotes_json(smile: iv_pb.Smile) -> list[Json]:
    """The IV smile's quotes: our mark IV and the venue's own IVs, and the forward delta."""
    return [
        {
            "symbol": q.symbol,
            "kind": enum_name(common_pb.OptionKind, q.option_kind, "OPTION_KIND_"),
            "strike": num(q.strike_usd),
            "k": num(q.log_moneyness),
            "mark_iv": num(q.mark_iv),
            "venue_mark_iv": num(q.venue_mark_iv),
            "venue_bid_iv": num(q.venue_bid_iv),
            "venue_ask_iv": num(q.venue_ask_iv),
            "delta": num(q.delta_forward),
        }
        for q in smile.quotes
    ]


@dataclass
class RateTracker:
    """Updates per minute of each surface, from its revision counter sampled over time.

    Revisions count publications, so conflated deliveries still give the true rate. Memory
    is bounded: at most one sample per key per second, for one window."""

    window_ns: int = RATE_WINDOW_NS
    _samples: dict[SurfaceKey, deque[tuple[int, int]]] = field(default_factory=dict)

    def observe(self, key: SurfaceKey, revision: int, now_ns: int) -> None:
        samples = self._samples.setdefault(key, deque(maxlen=int(self.window_ns // 1e9) + 2))
        if samples and now_ns - samples[-1][0] < 1_000_000_000:
            return
        if samples and revision < samples[-1][1]:
            samples.clear()  # the publisher restarted its count
        samples.append((now_ns, revision))
        while len(samples) > 2 and now_ns - samples[1][0] >= self.window_ns:
            samples.popleft()

    def per_minute(self, key: SurfaceKey, revision: int, now_ns: int) -> float | None:
        samples = self._samples.get(key)
        if not samples:
            return None
        t0, r0 = samples[0]
        if now_ns - t0 < 1_000_000_000 or revision < r0:
            return None  # under a second of data: no honest rate yet
        return (revision - r0) * 60e9 / (now_ns - t0)


def overview_row(entry: SurfaceEntry, now_ns: int, stale_after_ns: int, rate: float | None) -> Json:
    s = entry.surface
    tenor = next((t for t in s.tenors if t.tenor_days == OVERVIEW_TENOR_DAYS), None)
    return {
        "venue": entry.key.venue,
        "currency": entry.key.currency,
        "revision": s.revision,
        "expiries": len(s.slices),
        "age_ms": entry.age_ns(now_ns) // 1_000_000,
        "fresh": entry.is_fresh(now_ns, stale_after_ns),
        "updates_per_min": rate,
        "latency_ms": latency_ms(s),
        "index_price": num(s.index_price_usd),
        "vol_index_30d": num(s.vol_index_30d),
        "tenor_days": OVERVIEW_TENOR_DAYS,
        "tenor_available": bool(tenor and tenor.available),
        "metrics_30d": metrics_json(tenor.metrics) if tenor and tenor.available else None,
    }
