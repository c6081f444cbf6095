"""IvCore work reduction on a simulated Deribit-style stream: the incremental core (skip /
time update / re-solve) against a core that re-solves every quote of a changed expiry, fed the
same events side by side in one run.

    .venv/bin/python -m bench.bench_iv_work [--seconds S] [--expiries N] [--requote-share Q]
                                           [--interval-ms MS] [--seed N]
                                           [--forward-policy current|quote]

Stream: the simulator's own truth process (`simulator.truth.TruthMarket`: index as a
GBM at the currency's ~50% vol, basis per expiry, a drifting SSVI smile) stepped every 100 ms.
Per step each expiry's forward is re-published (Deribit carries `underlying_price` on every
ticker: one ticker per expiry here), and a share `--requote-share` of the options are
re-quoted: bid/ask at the truth vol -/+ a vol half-spread, rounded out to Deribit's ticks
(0.0001 BTC below 0.005, else 0.0005; a bid under one tick is no bid), with a fresh mark. A
re-quote that rounds to the same prices is no change, as on the venue. The index is published
every second. Both cores flush every `--interval-ms` of event time.

Reported: per quote in emitted smiles, the share re-solved, time-updated and skipped
(re-solves avoided = the last two); the largest |IV error| against the full re-solve of
skipped and of time-updated quotes, per priced side (bid, ask, mark), in vol basis
points (target <= 0.5 bp); quotes whose status differs between the two cores; and the time per
flush (serialised Smiles out) of each core, as CPU time of the flushing thread (the machine
may be shared; wall time would measure the neighbours).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from simulator.truth import TruthConfig, TruthMarket
from svc_iv.core import IvConfig, IvCore
from volmath import black76
from volstream.config import IV_FORWARD_POLICIES
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb

NS = 1_000_000_000
STEP_NS = 100_000_000
BP = 1e-4
START_NS = 1_790_000_000 * NS
HALF_SPREAD_VOL = 0.015
Array = NDArray[np.float64]


def deribit_tick(price_coin: float) -> float:
    return 0.0001 if price_coin < 0.005 else 0.0005


@dataclass
class Chain:
    """The options of one currency as the venue lists them."""

    symbols: list[str]
    expiry: NDArray[np.int64]
    strike: Array
    is_call: NDArray[np.bool_]
    carrier: dict[int, int] = field(default_factory=dict)  # expiry -> index of its ticker
    mark: Array = field(default_factory=lambda: np.zeros(0))


def list_chain(truth: TruthMarket, ccy: str) -> tuple[Chain, md_pb.InstrumentSet]:
    cur = truth.currencies[ccy]
    symbols: list[str] = []
    expiry: list[int] = []
    strike: list[float] = []
    calls: list[bool] = []
    iset = md_pb.InstrumentSet(venue="deribit", currency=ccy)
    for e in cur.expiries:
        for k in e.strikes:
            for call in (True, False):
                sym = f"{ccy}-{e.label}-{k:g}-{'C' if call else 'P'}"
                symbols.append(sym)
                expiry.append(e.expiry_ns)
                strike.append(k)
                calls.append(call)
                iset.instruments.add(
                    symbol=sym,
                    venue="deribit",
                    currency=ccy,
                    kind=md_pb.INSTRUMENT_KIND_OPTION,
                    option_kind=common_pb.OPTION_KIND_CALL if call else common_pb.OPTION_KIND_PUT,
                    strike_usd=k,
                    expiry_time_ns=e.expiry_ns,
                    premium_unit=md_pb.PREMIUM_UNIT_COIN_PER_COIN,
                    contract_size_coin=1.0,
                    tick_size_native=0.0001,
                )
    chain = Chain(
        symbols,
        np.array(expiry, dtype=np.int64),
        np.array(strike),
        np.array(calls),
        mark=np.full(len(symbols), math.nan),
    )
    strikes = chain.strike
    for e in cur.expiries:
        idx = np.flatnonzero(chain.expiry == e.expiry_ns)
        chain.carrier[e.expiry_ns] = int(idx[np.argmin(np.abs(strikes[idx] - cur.index))])
    return chain, iset


class Stream:
    """Events of one currency: forwards every step, re-quotes of a random share of options."""

    def __init__(self, truth: TruthMarket, ccy: str, requote_share: float, seed: int) -> None:
        self.truth = truth
        self.ccy = ccy
        self.chain, self.instruments = list_chain(truth, ccy)
        self.requote_share = requote_share
        self.rng = np.random.default_rng(seed)
        self.prices_sent = 0

    def quotes(self, idx: NDArray[np.intp], now_ns: int) -> tuple[Array, Array, Array, Array]:
        """Truth-based bid, ask (ticks) and mark (coin per coin), and each option's forward."""
        snap = self.truth.snapshot(self.ccy)
        c = self.chain
        fwd = np.empty(idx.size)
        vol = np.empty(idx.size)
        t = np.empty(idx.size)
        for s in snap.slices:
            m = c.expiry[idx] == s.expiry_ns
            fwd[m] = s.forward
            vol[m] = s.vol(c.strike[idx][m])
            t[m] = s.t_years
        k, call = c.strike[idx], c.is_call[idx]
        mark = black76.price(fwd, k, t, vol, call) / fwd
        low = black76.price(fwd, k, t, np.maximum(vol - HALF_SPREAD_VOL, 0.01), call) / fwd
        high = black76.price(fwd, k, t, vol + HALF_SPREAD_VOL, call) / fwd
        ticks = np.where(mark < 0.005, 0.0001, 0.0005)
        bid = np.floor(low / ticks) * ticks
        ask = np.maximum(np.ceil(high / ticks) * ticks, bid + ticks)
        bid = np.where(bid >= 0.0001, bid, math.nan)
        return bid, ask, mark, fwd

    def events(
        self, now_ns: int, first: bool
    ) -> tuple[list[book_pb.TopOfBook], list[md_pb.VenueTicker], md_pb.IndexPrice | None]:
        c = self.chain
        n = len(c.symbols)
        # The first step quotes everything; later steps a random share.
        requoted = self.rng.random(n) < self.requote_share
        idx = np.arange(n) if first else np.flatnonzero(requoted)
        header = common_pb.EventHeader(event_time_ns=now_ns)
        tops: list[book_pb.TopOfBook] = []
        tickers: list[md_pb.VenueTicker] = []
        bid, ask, mark, _fwd = self.quotes(idx, now_ns)
        for j, b, a, mk in zip(
            idx.tolist(), bid.tolist(), ask.tolist(), mark.tolist(), strict=True
        ):
            top = book_pb.TopOfBook(
                header=header,
                symbol=c.symbols[j],
                status=book_pb.BOOK_STATUS_VALID,
                best_ask_price_native=a,
                best_ask_size_native=10.0,
            )
            if math.isfinite(b):
                top.best_bid_price_native = b
                top.best_bid_size_native = 10.0
            tops.append(top)
            c.mark[j] = round(mk, 8)
        self.prices_sent += 3 * idx.size
        # One ticker per expiry carries the forward (and its option's current mark).
        snap = self.truth.snapshot(self.ccy)
        for s in snap.slices:
            carrier = c.carrier.get(s.expiry_ns)
            if carrier is None or not math.isfinite(c.mark[carrier]):
                continue
            tickers.append(
                md_pb.VenueTicker(
                    header=header,
                    symbol=c.symbols[carrier],
                    mark_price_native=float(c.mark[carrier]),
                    forward_usd=round(s.forward, 2),
                    index_price_usd=round(snap.index, 2),
                )
            )
        for j in idx.tolist():
            if j in c.carrier.values():
                continue
            tickers.append(
                md_pb.VenueTicker(
                    header=header, symbol=c.symbols[j], mark_price_native=float(c.mark[j])
                )
            )
        index = None
        if now_ns % NS == 0:
            index = md_pb.IndexPrice(header=header, price_usd=round(snap.index, 2))
        return tops, tickers, index


@dataclass
class SideErrors:
    """Largest |incremental - full| per outcome, in vol bp, over bid/ask/mark."""

    skipped_bp: float = 0.0
    time_update_bp: float = 0.0
    skipped_quotes: int = 0
    time_update_quotes: int = 0
    status_mismatches: int = 0
    time_update_errors: list[float] = field(default_factory=list)


def ivs(smile: iv_pb.Smile) -> tuple[Array, NDArray[np.int32]]:
    iv = np.array([(q.bid_iv, q.ask_iv, q.mark_iv) for q in smile.quotes], dtype=np.float64)
    st = np.array(
        [(q.bid_iv_status, q.ask_iv_status, q.mark_iv_status) for q in smile.quotes],
        dtype=np.int32,
    )
    return iv, st


def compare(
    inc: list[bytes],
    full: list[bytes],
    previous: dict[int, Array],
    errors: SideErrors,
) -> None:
    assert len(inc) == len(full), "both cores emit the same expiries"
    for a_bytes, b_bytes in zip(inc, full, strict=True):
        a = iv_pb.Smile.FromString(a_bytes)
        b = iv_pb.Smile.FromString(b_bytes)
        assert a.expiry_time_ns == b.expiry_time_ns
        iv_a, st_a = ivs(a)
        iv_b, st_b = ivs(b)
        errors.status_mismatches += int((st_a != st_b).any(axis=1).sum())
        both = np.isfinite(iv_a) & np.isfinite(iv_b)
        diff = np.where(both, np.abs(iv_a - iv_b), 0.0).max(axis=1) / BP
        prev = previous.get(a.expiry_time_ns)
        if prev is not None and prev.shape == iv_a.shape:
            # Kept: every side bit-for-bit the previously published IV.
            kept = ((iv_a == prev) | (np.isnan(iv_a) & np.isnan(prev))).all(axis=1)
        else:
            kept = np.zeros(len(iv_a), dtype=bool)
        exact = diff == 0.0
        linear = ~kept & ~exact
        if kept.any():
            errors.skipped_bp = max(errors.skipped_bp, float(diff[kept].max()))
            errors.skipped_quotes += int(kept.sum())
        if linear.any():
            errors.time_update_bp = max(errors.time_update_bp, float(diff[linear].max()))
            errors.time_update_quotes += int(linear.sum())
            errors.time_update_errors.extend(diff[linear].tolist())
        previous[a.expiry_time_ns] = iv_a


@dataclass
class Variant:
    name: str
    core: IvCore
    times: list[float] = field(default_factory=list)
    errors: SideErrors = field(default_factory=SideErrors)
    previous: dict[int, Array] = field(default_factory=dict)
    last: list[bytes] = field(default_factory=list)


def run(
    seconds: float,
    expiries: int | None,
    share: float,
    interval_ms: int,
    seed: int,
    configs: dict[str, IvConfig] | None = None,
    forward_policy: str = "current",
) -> None:
    truth = TruthMarket(
        TruthConfig(currencies=("BTC",), seed=seed, max_expiries=expiries), START_NS
    )
    stream = Stream(truth, "BTC", share, seed)
    configs = configs or {"incremental (default)": IvConfig(forward_policy=forward_policy)}
    variants = [Variant(name, IvCore("deribit", "BTC", cfg)) for name, cfg in configs.items()]
    reference = IvConfig(incremental=False, forward_policy=forward_policy)
    full = Variant("full re-solve", IvCore("deribit", "BTC", reference))
    every = [*variants, full]
    for v in every:
        v.core.on_instruments(stream.instruments)
    steps = int(seconds * NS / STEP_NS)
    interval_ns = interval_ms * 1_000_000
    last_flush = 0
    index_moves: list[float] = []
    forward_moves: list[float] = []
    last_index = truth.snapshot("BTC").index
    flush_fwd = {s.expiry_ns: s.forward for s in truth.snapshot("BTC").slices}
    for step in range(steps + 1):
        now = START_NS + step * STEP_NS
        truth.step(now)
        snap = truth.snapshot("BTC")
        index_moves.append(abs(snap.index / last_index - 1.0))
        last_index = snap.index
        tops, tickers, index = stream.events(now, first=step == 0)
        for v in every:
            for top in tops:
                v.core.on_top(top)
            for ticker in tickers:
                v.core.on_ticker(ticker)
            if index is not None:
                v.core.on_index(index)
        if now - last_flush < interval_ns:
            continue
        last_flush = now
        for s in snap.slices:
            forward_moves.append(abs(s.forward / flush_fwd.get(s.expiry_ns, s.forward) - 1.0))
            flush_fwd[s.expiry_ns] = s.forward
        # Rotate who flushes first: no variant always gets the warm caches.
        order = every[step // 2 % len(every) :] + every[: step // 2 % len(every)]
        for v in order:
            # CPU time of this thread: the machine may be shared, wall time is noisy.
            start = time.thread_time()
            v.last = v.core.flush_serialized(now)
            if step:
                v.times.append(time.thread_time() - start)
        for v in variants:
            compare(v.last, full.last, v.previous, v.errors if step else SideErrors())
    report(variants, full, stream, index_moves, forward_moves, seconds)


def report(
    variants: list[Variant],
    full: Variant,
    stream: Stream,
    index_moves: list[float],
    forward_moves: list[float],
    seconds: float,
) -> None:
    n = len(stream.chain.symbols)
    expiries = len(stream.chain.carrier)
    every = [*variants, full]
    print(
        f"stream: BTC, {expiries} expiries, {n} options, {seconds:.0f} s of event time, "
        f"re-quote share {stream.requote_share:.1%} per 100 ms, {len(full.times)} flushes"
    )
    print(
        f"index move per 100 ms: median {np.median(index_moves) / BP:.2f} bp, "
        f"max {max(index_moves) / BP:.2f} bp; forward move per flush: "
        f"median {np.median(forward_moves) / BP:.2f} bp, max {max(forward_moves) / BP:.2f} bp"
    )
    for v in variants:
        c = v.core.config
        print(f"{v.name}: skip_iv_bp={c.skip_iv_bp}, skip_safety_factor={c.skip_safety_factor}")
    print()

    def share(v: Variant, part: str) -> str:
        st = v.core.stats
        total = st.quotes_solved + st.quotes_time_updated + st.quotes_skipped
        value = {
            "solved": st.quotes_solved,
            "first": st.quotes_time_updated,
            "skipped": st.quotes_skipped,
            "avoided": st.quotes_time_updated + st.quotes_skipped,
        }[part]
        return f"{value / total:.1%}"

    def err(v: Variant, part: str) -> str:
        if v is full:
            return "0 (reference)"
        e = v.errors
        if part == "skipped":
            return f"{e.skipped_bp:.3f}"
        if part == "first":
            return f"{e.time_update_bp:.3f}"
        if part == "p99":
            return f"{np.percentile(e.time_update_errors, 99):.3f}" if e.time_update_errors else "-"
        return str(e.status_mismatches)

    def ms(v: Variant, how: str) -> str:
        t = v.times
        value = {
            "median": statistics.median(t),
            "mean": statistics.fmean(t),
            "p99": float(np.percentile(t, 99)),
        }[how]
        return f"{1e3 * value:.3f}"

    rows: list[tuple[str, list[str]]] = [
        (
            "quotes in emitted smiles",
            [
                str(
                    v.core.stats.quotes_solved
                    + v.core.stats.quotes_time_updated
                    + v.core.stats.quotes_skipped
                )
                for v in every
            ],
        ),
        ("re-solved", [share(v, "solved") for v in every]),
        ("time-updated", [share(v, "first") for v in every]),
        ("skipped (IVs kept)", [share(v, "skipped") for v in every]),
        ("re-solves avoided", [share(v, "avoided") for v in every]),
        ("max |IV err| skipped (bp)", [err(v, "skipped") for v in every]),
        ("max |IV err| time update (bp)", [err(v, "first") for v in every]),
        ("p99 |IV err| time update (bp)", [err(v, "p99") for v in every]),
        ("quotes with another IvStatus", [err(v, "status") for v in every]),
        ("flush CPU time median (ms)", [ms(v, "median") for v in every]),
        ("flush CPU time mean (ms)", [ms(v, "mean") for v in every]),
        ("flush CPU time p99 (ms)", [ms(v, "p99") for v in every]),
    ]
    width = max(len(r[0]) for r in rows)
    cols = [max(len(v.name), 14) for v in every]
    print(
        f"{'':<{width}}  " + "  ".join(f"{v.name:>{w}}" for v, w in zip(every, cols, strict=True))
    )
    for name, cells in rows:
        print(
            f"{name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols, strict=True))
        )
    print()
    target = 0.5
    for v in variants:
        worst = max(v.errors.skipped_bp, v.errors.time_update_bp)
        verdict = "within" if worst <= target else "ABOVE"
        speed = statistics.fmean(full.times) / statistics.fmean(v.times)
        print(
            f"{v.name}: worst error {worst:.3f} bp, {verdict} the {target} bp target; "
            f"mean flush CPU time {1 / speed:.2f}x the full re-solve's"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--expiries", type=int, default=None, help="nearest N (default all)")
    parser.add_argument("--requote-share", type=float, default=0.01)
    parser.add_argument("--interval-ms", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--forward-policy", choices=IV_FORWARD_POLICIES, default=IV_FORWARD_POLICIES[0]
    )
    args = parser.parse_args()
    print(f"forward policy: {args.forward_policy}")
    run(
        args.seconds,
        args.expiries,
        args.requote_share,
        args.interval_ms,
        args.seed,
        forward_policy=args.forward_policy,
    )


if __name__ == "__main__":
    main()
