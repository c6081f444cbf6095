"""Plain-text tables of surfaces for the terminal: what `volstream surface` and
`volstream watch` print (volstream.cli wires the commands).

Vols, risk reversals and butterflies in vol points (percent); "-" where a value is missing.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Sequence
from typing import Any

from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

# Delta nodes shown as columns of the tenor table (vol %).
TENOR_NODE_COLUMNS = ("5P", "10P", "25P", "ATM", "25C", "10C", "5C")


def _pct(value: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(value) else f"{value * 100:.{digits}f}"


def _num(value: float, fmt: str) -> str:
    return "-" if not math.isfinite(value) else format(value, fmt)


def _time(ns: int) -> str:
    if ns <= 0:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns (left for the first), a rule under the header."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def _expiry_label(expiry_slice: surface_pb.ExpirySlice) -> str:
    if expiry_slice.expiry_label:
        return expiry_slice.expiry_label
    return dt.datetime.fromtimestamp(expiry_slice.expiry_time_ns / 1e9, dt.UTC).date().isoformat()


def render_term_structure(surface: surface_pb.Surface) -> str:
    """Header, one row per expiry (forward, ATM, RR/BF, fit quality), then the fixed tenors.

    Vols, risk reversals and butterflies in vol points (percent).
    """
    model = surface_pb.SurfaceModel.Name(surface.model).removeprefix("SURFACE_MODEL_")
    head = (
        f"{surface.venue}/{surface.currency}  model {model}  revision {surface.revision}  "
        f"index {_num(surface.index_price_usd, ',.2f')}  "
        f"30d vol index {_pct(surface.vol_index_30d)}  "
        f"published {_time(surface.header.publish_time_ns)}"
    )
    if surface.venue_weights:
        head += "\nvenue weights  " + "  ".join(
            f"{w.venue} {w.weight * 100:.1f}% ({w.quotes_used} quotes)"
            for w in surface.venue_weights
        )
    rows = []
    for s in surface.slices:
        m, d = s.metrics, s.diagnostics
        arb = ("B" if not d.butterfly_arbitrage_free else "") + (
            "C" if not d.calendar_arbitrage_free else ""
        )
        rows.append(
            [
                _expiry_label(s),
                _num(s.time_to_expiry_years * 365.0, ".1f"),
                _num(s.forward_usd, ",.2f"),
                _pct(m.atm_vol),
                _pct(m.rr25),
                _pct(m.bf25),
                _pct(m.rr10),
                _pct(m.bf10),
                f"{d.quotes_used}/{d.quotes_used + d.quotes_dropped}",
                _num(d.rmse_bp, ".1f"),
                arb or "ok",
            ]
        )
    parts = [
        head,
        render_table(
            [
                "expiry",
                "days",
                "forward",
                "ATM%",
                "RR25",
                "BF25",
                "RR10",
                "BF10",
                "used",
                "rmse_bp",
                "arb",
            ],
            rows,
        ),
    ]
    if surface.tenors:
        # Risk nodes as columns: the standard ones that the surface carries, in put-to-call order.
        present = {n.label for t in surface.tenors for n in t.nodes}
        node_labels = [label for label in TENOR_NODE_COLUMNS if label in present]
        tenor_rows = []
        for t in surface.tenors:
            if not t.available:
                tenor_rows.append(
                    [f"{t.tenor_days}d", "-", "-", "-", "-", *("-" for _ in node_labels), "n/a"]
                )
                continue
            vols = {n.label: n.vol for n in t.nodes}
            tenor_rows.append(
                [
                    f"{t.tenor_days}d",
                    _num(t.forward_usd, ",.2f"),
                    _pct(t.metrics.atm_vol),
                    _pct(t.metrics.rr25),
                    _pct(t.metrics.bf25),
                    *(_pct(vols.get(label, math.nan)) for label in node_labels),
                    "",
                ]
            )
        parts.append(
            render_table(["tenor", "forward", "ATM%", "RR25", "BF25", *node_labels, ""], tenor_rows)
        )
    return "\n\n".join(parts)


def render_smile(expiry_slice: surface_pb.ExpirySlice, smile: iv_pb.Smile | None = None) -> str:
    """One row per quote of the fit: strike, k, bid/mid/ask IV, fitted IV, residual, status;
    with the IV smile, the venue's mark IV beside ours."""
    venue_mark = {q.symbol: q.venue_mark_iv for q in smile.quotes} if smile else {}
    raw = expiry_slice.raw
    head = (
        f"expiry {_expiry_label(expiry_slice)}  T {_num(expiry_slice.time_to_expiry_years, '.4f')}y"
        f"  forward {_num(expiry_slice.forward_usd, ',.2f')}"
        f"  ATM {_pct(expiry_slice.metrics.atm_vol)}%"
        f"  SVI a={raw.a:.5f} b={raw.b:.5f} rho={raw.rho:.4f} m={raw.m:.4f} sigma={raw.sigma:.4f}"
    )
    rows = []
    for q in sorted(expiry_slice.quotes, key=lambda q: (q.strike_usd, q.option_kind)):
        kind = {1: "C", 2: "P"}.get(q.option_kind, "?")
        status = (
            "used"
            if q.used
            else surface_pb.DropReason.Name(q.drop_reason).removeprefix("DROP_REASON_").lower()
        )
        rows.append(
            [
                q.symbol or f"{q.strike_usd:g}{kind}",
                _num(q.strike_usd, ",.0f"),
                kind,
                _num(q.log_moneyness, ".3f"),
                _pct(q.bid_iv),
                _pct(q.mid_iv),
                _pct(q.ask_iv),
                _pct(q.fitted_iv),
                _num(q.residual_bp, ".1f"),
                _pct(venue_mark.get(q.symbol, math.nan)),
                status,
            ]
        )
    if not rows and smile is not None:
        for sq in sorted(smile.quotes, key=lambda q: (q.strike_usd, q.option_kind)):
            kind = {1: "C", 2: "P"}.get(sq.option_kind, "?")
            rows.append(
                [
                    sq.symbol,
                    _num(sq.strike_usd, ",.0f"),
                    kind,
                    _num(sq.log_moneyness, ".3f"),
                    _pct(sq.bid_iv),
                    _pct(sq.mid_iv),
                    _pct(sq.ask_iv),
                    "-",
                    "-",
                    _pct(sq.venue_mark_iv),
                    "no fit",
                ]
            )
    table = render_table(
        [
            "symbol",
            "strike",
            "C/P",
            "k",
            "bid%",
            "mid%",
            "ask%",
            "fit%",
            "resid_bp",
            "venue_mark%",
            "status",
        ],
        rows,
    )
    return f"{head}\n{table}"


def render_update_line(surface: surface_pb.Surface, now_ns: int | None = None) -> str:
    """One line per surface for `volstream watch`: 30d ATM/RR/BF when the tenor exists."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    age_ms = (
        (now_ns - surface.header.publish_time_ns) / 1e6
        if surface.header.publish_time_ns
        else math.nan
    )
    tenor = next((t for t in surface.tenors if t.tenor_days == 30 and t.available), None)
    front = surface.slices[0].metrics if surface.slices else None
    metrics = tenor.metrics if tenor else front
    label = "30d" if tenor else ("front" if front else "-")
    atm = _pct(metrics.atm_vol) if metrics else "-"
    rr = _pct(metrics.rr25) if metrics else "-"
    bf = _pct(metrics.bf25) if metrics else "-"
    return (
        f"{_time(surface.header.publish_time_ns)}  {surface.venue + '/' + surface.currency:<12}"
        f" rev {surface.revision:<6} {label} ATM {atm:>6}  RR25 {rr:>6}  BF25 {bf:>6}"
        f"  expiries {len(surface.slices):>2}  age {_num(age_ms, '.0f')} ms"
    )


def render_history(points: Sequence[Any]) -> str:
    """`volstream history`: one row per point (event time, revision, ATM, RR/BF 25 and 10
    delta in vol points, forward)."""
    rows = [
        [
            _time(p.time.ToNanoseconds()),
            str(p.revision),
            _pct(p.metrics.atm_vol),
            _pct(p.metrics.rr25),
            _pct(p.metrics.bf25),
            _pct(p.metrics.rr10),
            _pct(p.metrics.bf10),
            _num(p.forward_usd, ",.2f"),
        ]
        for p in points
    ]
    headers = ["time", "revision", "atm", "rr25", "bf25", "rr10", "bf10", "forward"]
    return render_table(headers, rows)
