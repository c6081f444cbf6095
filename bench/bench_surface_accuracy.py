"""Surface accuracy against the simulator's truth, end to end over a real nats-server.

    .venv/bin/python -m bench.bench_surface_accuracy [--seconds 45] [--max-expiries 4]

Simulator (four venues, BTC and ETH, expiries >= 7 days, no surface drift) -> connector ->
book -> IV -> surface, in process. Every second, each latest surface (per venue and the
consolidated surface.all.<ccy>) is compared per expiry with the truth (sim.truth, nearest in
event time; Deribit's for the consolidated surface: the same smile in log-moneyness).
Two runs side by side: the index held still (a fixed forward) and the index moving (the
simulator reprices each option's book only now and then, so stale prices on a moving forward
tilt put IVs against call IVs alike on every venue). The table is the last sample;
"mean|e|" columns average |error| over the samples taken after warm-up. The bias
columns split the error: mean (mid - truth) and (fitted - truth)
of the used quotes on the put side (k < 0) and the call side (k >= 0), in vol points.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import time

import nats

from simulator import SimConfig
from tests.pipeline import (
    CURRENCIES,
    VENUES,
    SliceError,
    SurfaceKey,
    SurfaceWatch,
    listed_expiries,
    pipeline,
)
from volstream.bus.embedded import EmbeddedNats

ALL = "all"
MIN_DAYS = 7.0
TARGET_VOL_POINTS = 0.5


def vp(x: float) -> str:
    return f"{100 * x:+6.2f}" if math.isfinite(x) else "   nan"


async def measure(
    label: str, seconds: float, max_expiries: int | None, rate: float, index_vol_scale: float
) -> str:
    sim = SimConfig(
        venues=VENUES,
        currencies=CURRENCIES,
        max_expiries=max_expiries,
        messages_per_second=rate,
        surface_drift=0.0,
        index_vol_scale=index_vol_scale,
        index_interval_s=0.5,
        min_time_to_expiry_s=MIN_DAYS * 86_400.0,
    )
    watch = SurfaceWatch()
    samples: dict[tuple[SurfaceKey, int], list[SliceError]] = {}
    with EmbeddedNats() as server:
        nc = await nats.connect(server.url)
        await watch.subscribe(nc)
        try:
            async with pipeline(
                server.url, sim, surface=True, iv_interval_ms=200, surface_interval_ms=500
            ) as p:
                keys = [(v, c) for v in (*VENUES, ALL) for c in CURRENCIES]
                listed = {
                    c: set().union(*(listed_expiries(p.handle, v, c) for v in VENUES))
                    for c in CURRENCIES
                }
                started = time.monotonic()
                warmup = min(20.0, seconds / 2)
                while time.monotonic() - started < seconds:
                    await asyncio.sleep(1.0)
                    if time.monotonic() - started < warmup:
                        continue
                    for key in keys:
                        if key not in watch.latest:
                            continue
                        truth_venue = "deribit" if key[0] == ALL else None
                        for e in watch.errors(key, truth_venue, MIN_DAYS):
                            samples.setdefault((key, e.expiry_time_ns), []).append(e)
                alive = p.alive()
        finally:
            await nc.close()
    return print_table(label, samples, listed, alive, seconds)


def print_table(
    label: str,
    samples: dict[tuple[SurfaceKey, int], list[SliceError]],
    listed: dict[str, set[int]],
    alive: bool,
    seconds: float,
) -> str:
    header = (
        f"{'venue':8s} {'ccy':3s} {'expiry':>10s} {'days':>6s} | {'atm fit':>7s} {'truth':>7s} "
        f"{'err':>6s} {'mean|e|':>7s} | {'rr25 fit':>8s} {'truth':>7s} {'err':>6s} "
        f"{'mean|e|':>7s} | {'used':>4s} {'drop':>4s} {'rmse':>5s} | "
        f"{'put mid':>7s} {'fit':>6s} {'call mid':>8s} {'fit':>6s} | dropped by reason"
    )
    print(f"\n{label}: surface accuracy vs simulator truth, {seconds:.0f} s run, vol points")
    print(header)
    print("-" * len(header))
    last: list[SliceError] = []
    mean_abs: dict[str, list[float]] = {"atm": [], "rr25": []}
    for _, errs in sorted(samples.items(), key=lambda kv: (kv[0][0][1], kv[0])):
        e = errs[-1]
        last.append(e)
        atm_mean = sum(abs(x.atm_error) for x in errs) / len(errs)
        rr_mean = sum(abs(x.rr25_error) for x in errs) / len(errs)
        mean_abs["atm"].append(atm_mean)
        mean_abs["rr25"].append(rr_mean)
        print(
            f"{e.venue:8s} {e.currency:3s} {e.expiry_label:>10s} {e.days:6.1f} | "
            f"{100 * e.atm_fit:7.2f} {100 * e.atm_truth:7.2f} {vp(e.atm_error)} "
            f"{100 * atm_mean:7.2f} | {100 * e.rr25_fit:+8.2f} {100 * e.rr25_truth:+7.2f} "
            f"{vp(e.rr25_error)} {100 * rr_mean:7.2f} | {e.quotes_used:4d} "
            f"{e.quotes_dropped:4d} {e.rmse_bp:5.0f} | {vp(e.bias[0])} {vp(e.bias[1])} "
            f"  {vp(e.bias[2])} {vp(e.bias[3])} | "
            + " ".join(f"{reason.lower()}:{n}" for reason, n in e.drops)
        )
    covered = set(samples)
    missing = [
        (v, c, x)
        for c, xs in listed.items()
        for v in (*VENUES, ALL)
        for x in xs
        if ((v, c), x) not in covered
    ]
    parts = []
    target = TARGET_VOL_POINTS / 100
    for group, rows in (
        ("consolidated", [e for e in last if e.venue == ALL]),
        ("per venue", [e for e in last if e.venue != ALL]),
    ):
        if not rows:
            parts.append(f"{group}: no slices")
            continue
        atm = [abs(e.atm_error) for e in rows]
        rr = [abs(e.rr25_error) for e in rows]
        ok = max(atm) <= target and max(rr) <= target
        parts.append(
            f"{group} max |atm| {100 * max(atm):.2f} |rr25| {100 * max(rr):.2f} "
            f"(median {100 * statistics.median(atm):.2f} / {100 * statistics.median(rr):.2f}) "
            f"{'PASS' if ok else 'MISS'}"
        )
    summary = (
        f"{label}: {len(samples)} slices, last sample vs target {TARGET_VOL_POINTS:.2f}: "
        + "; ".join(parts)
        + f"; mean over samples |atm| {100 * statistics.mean(mean_abs['atm'] or [math.nan]):.2f}"
        f" |rr25| {100 * statistics.mean(mean_abs['rr25'] or [math.nan]):.2f}; "
        f"listed expiries without a slice: {len(missing)}; services alive: {alive}"
    )
    print("summary " + summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--max-expiries", type=int, default=4, help="per currency; 0: all")
    parser.add_argument("--rate", type=float, default=250.0, help="sim messages/s per venue")
    parser.add_argument(
        "--index-vol-scale", type=float, default=1.0, help="index volatility of the moving run"
    )
    args = parser.parse_args()
    runs = (("index still", 0.0), ("index moving", args.index_vol_scale))
    summaries = [
        asyncio.run(measure(label, args.seconds, args.max_expiries or None, args.rate, scale))
        for label, scale in runs
    ]
    print("\nside by side:")
    for line in summaries:
        print("  " + line)


if __name__ == "__main__":
    main()
