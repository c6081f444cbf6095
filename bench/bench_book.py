"""Order-book core throughput: deltas/s through BookCore.apply + tops, against a naive book.

    .venv/bin/python -m bench.bench_book [--deltas N] [--instruments N] [--levels N]
                                         [--seed N] [--repeat N]

Workload: `--instruments` books of `--levels` levels per side, then contiguous deltas of
1-3 levels each on random instruments. Activity concentrates near the touch (the level
index is geometric from the best), 60 % size changes, 20 % new levels, 20 % deletions, so
book sizes stay stable; ~30 % of deltas move a top of book. Deltas arrive as the runtime
gets them, MarketDataBatch payloads of 100 events decoded just before use (decoding is
the runtime's cost and is not timed). `tops()` is called every 1/10/100/1000 events with
the latest event time, as a runtime does per consumed NATS message or batch of messages.
`tops_into` is the same publication written straight into a TopOfBookBatch.

Reference: the same emission contract implemented the obvious way, a price->size dict per
side that sorts both sides on every top-of-book read. Both must emit identical tops; the
bench checks it before printing. Timing is the CPU time of this process (the box is
shared; wall/CPU is printed as a contention check).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from svc_book.core import BookConfig, BookCore
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

TICK = 0.0005
MS = 1_000_000


# Events per MarketDataBatch (one NATS message from the connector).
MESSAGE_EVENTS = 100


@dataclass
class Workload:
    snapshots: list[md_pb.MarketDataEvent]
    deltas: list[md_pb.MarketDataEvent]
    # The deltas as serialised MarketDataBatch messages of MESSAGE_EVENTS events.
    payloads: list[bytes]

    @classmethod
    def of(
        cls, snapshots: list[md_pb.MarketDataEvent], deltas: list[md_pb.MarketDataEvent]
    ) -> Workload:
        payloads = [
            md_pb.MarketDataBatch(
                venue="deribit", currency="BTC", events=deltas[i : i + MESSAGE_EVENTS]
            ).SerializeToString()
            for i in range(0, len(deltas), MESSAGE_EVENTS)
        ]
        return cls(snapshots, deltas, payloads)


def build_workload(instruments: int, levels: int, deltas: int, seed: int) -> Workload:
    rng = random.Random(seed)
    books: list[tuple[dict[int, float], dict[int, float]]] = []
    sequences: list[int] = []
    snapshots: list[md_pb.MarketDataEvent] = []
    for i in range(instruments):
        mid_ticks = rng.randint(200, 4000)
        bids = {mid_ticks - 1 - k: float(rng.randint(1, 50)) for k in range(levels)}
        asks = {mid_ticks + 1 + k: float(rng.randint(1, 50)) for k in range(levels)}
        books.append((bids, asks))
        seq = rng.randint(1, 10**9)
        sequences.append(seq)
        snapshots.append(
            md_pb.MarketDataEvent(
                book_snapshot=md_pb.BookSnapshot(
                    header=common_pb.EventHeader(event_time_ns=0),
                    symbol=f"BTC-27DEC24-{20000 + 1000 * i}-C",
                    bids=[_level(t, s) for t, s in sorted(bids.items(), reverse=True)],
                    asks=[_level(t, s) for t, s in sorted(asks.items())],
                    venue_sequence=seq,
                )
            )
        )
    events: list[md_pb.MarketDataEvent] = []
    t_ns = 0
    for _ in range(deltas):
        i = rng.randrange(instruments)
        bids, asks = books[i]
        changes: dict[str, list[md_pb.BookLevel]] = {"bids": [], "asks": []}
        for _ in range(rng.choice((1, 1, 2, 3))):
            is_bid = rng.random() < 0.5
            side = bids if is_bid else asks
            ordered = sorted(side, reverse=is_bid)
            depth = min(int(rng.expovariate(0.25)), len(ordered) - 1)
            roll = rng.random()
            if roll < 0.6 or len(ordered) < 5:
                tick = ordered[depth]
                side[tick] = float(rng.randint(1, 50))
            elif roll < 0.8:
                # A new level just inside or behind an existing one.
                tick = ordered[depth] + (1 if is_bid else -1) * rng.choice((-1, 1))
                if tick in side or (tick >= min(asks) if is_bid else tick <= max(bids)):
                    tick = ordered[-1] + (-1 if is_bid else 1)
                side[tick] = float(rng.randint(1, 50))
            else:
                tick = ordered[depth]
                del side[tick]
            size = side.get(tick, 0.0)
            changes["bids" if is_bid else "asks"].append(_level(tick, size))
        t_ns += rng.randint(0, 2 * MS)
        seq = sequences[i] + rng.randint(1, 5)
        events.append(
            md_pb.MarketDataEvent(
                book_delta=md_pb.BookDelta(
                    header=common_pb.EventHeader(event_time_ns=t_ns),
                    symbol=snapshots[i].book_snapshot.symbol,
                    bids=changes["bids"],
                    asks=changes["asks"],
                    venue_sequence=seq,
                    prev_venue_sequence=sequences[i],
                )
            )
        )
        sequences[i] = seq
    return Workload.of(snapshots, events)


def _level(tick: int, size: float) -> md_pb.BookLevel:
    return md_pb.BookLevel(price_native=round(tick * TICK, 4), size_native=size)


class NaiveBookCore:
    """Reference: dict per side, sort on every top-of-book read. Same emission contract."""

    def __init__(self, depth_levels: int = 10) -> None:
        self.depth_levels = depth_levels
        self.books: dict[str, tuple[dict[float, float], dict[float, float]]] = {}
        self.sequence: dict[str, int] = {}
        self.valid: dict[str, bool] = {}
        self.last_update: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.emitted: dict[str, tuple[object, ...]] = {}
        self.out_seq = 0

    def apply(self, event: md_pb.MarketDataEvent) -> None:
        if event.HasField("book_snapshot"):
            snap = event.book_snapshot
            self.books[snap.symbol] = (
                {lv.price_native: lv.size_native for lv in snap.bids},
                {lv.price_native: lv.size_native for lv in snap.asks},
            )
            self.sequence[snap.symbol] = snap.venue_sequence
            self.valid[snap.symbol] = True
            self.last_update[snap.symbol] = snap.header.event_time_ns
            self.dirty.add(snap.symbol)
        elif event.HasField("book_delta"):
            d = event.book_delta
            if not self.valid.get(d.symbol) or d.prev_venue_sequence != self.sequence[d.symbol]:
                self.valid[d.symbol] = False
                return
            bids, asks = self.books[d.symbol]
            for side, levels in ((bids, d.bids), (asks, d.asks)):
                for lv in levels:
                    if lv.size_native == 0.0:
                        side.pop(lv.price_native, None)
                    else:
                        side[lv.price_native] = lv.size_native
            self.sequence[d.symbol] = d.venue_sequence
            self.last_update[d.symbol] = d.header.event_time_ns
            self.dirty.add(d.symbol)

    def tops(self, now_ns: int) -> list[book_pb.TopOfBook]:
        out = []
        for symbol in sorted(self.dirty):
            bids, asks = self.books[symbol]
            bid_levels = sorted(bids.items(), reverse=True)
            ask_levels = sorted(asks.items())
            bid = bid_levels[0] if bid_levels else (None, None)
            ask = ask_levels[0] if ask_levels else (None, None)
            state = (*bid, *ask)
            if self.emitted.get(symbol) == state:
                continue
            self.emitted[symbol] = state
            top_bids = bid_levels[: self.depth_levels]
            top_asks = ask_levels[: self.depth_levels]
            self.out_seq += 1
            out.append(
                book_pb.TopOfBook(
                    header=common_pb.EventHeader(
                        event_time_ns=self.last_update[symbol], source="svc_book", sequence=0
                    ),
                    symbol=symbol,
                    status=book_pb.BOOK_STATUS_VALID,
                    crossed=bid[0] is not None and ask[0] is not None and bid[0] >= ask[0],
                    one_sided=(bid[0] is None) != (ask[0] is None),
                    best_bid_price_native=bid[0],
                    best_bid_size_native=bid[1],
                    best_ask_price_native=ask[0],
                    best_ask_size_native=ask[1],
                    bid_levels=len(top_bids),
                    ask_levels=len(top_asks),
                    bid_depth_size_native=sum(s for _, s in top_bids),
                    ask_depth_size_native=sum(s for _, s in top_asks),
                    last_update_time_ns=self.last_update[symbol],
                )
            )
        self.dirty.clear()
        return out


_WALL: list[float] = []


def _loaded(
    make: Callable[[], BookCore | NaiveBookCore], workload: Workload
) -> BookCore | NaiveBookCore:
    core = make()
    for event in workload.snapshots:
        core.apply(event)
    core.tops(0)
    return core


class IntoBatchBookCore(BookCore):
    """BookCore publishing with `tops_into` a TopOfBookBatch, as a runtime would."""

    def publish(self, now_ns: int) -> int:
        batch = book_pb.TopOfBookBatch(venue=self.venue, currency=self.currency)
        return self.tops_into(batch, now_ns)


def run(
    make: Callable[[], BookCore | NaiveBookCore], workload: Workload, every: int
) -> tuple[float, int]:
    """CPU seconds of apply() + tops() over all deltas, tops() every `every` events; tops out.

    Deltas arrive as the runtime gets them: MarketDataBatch payloads of MESSAGE_EVENTS
    events, each decoded just before use (decoding is not timed, ~0.15 us/delta).
    """
    core = _loaded(make, workload)
    apply = core.apply
    if isinstance(core, IntoBatchBookCore):
        publish: Callable[[int], int] = core.publish
    else:
        tops = core.tops

        def publish(now_ns: int) -> int:
            return len(tops(now_ns))

    decode = md_pb.MarketDataBatch.FromString
    emitted = 0
    pending = 0
    cpu = 0.0
    wall = 0.0
    # CPU time of this process: on a shared 2-core box, wall time mostly measures the
    # neighbours. Wall time is reported beside it as a contention check.
    for payload in workload.payloads:
        events = decode(payload).events
        start = time.process_time()
        wall_start = time.perf_counter()
        if every >= len(events):
            for event in events:
                apply(event)
            pending += len(events)
            if pending >= every:
                emitted += publish(events[len(events) - 1].book_delta.header.event_time_ns)
                pending = 0
        else:
            for offset in range(0, len(events), every):
                chunk = events[offset : offset + every]
                for event in chunk:
                    apply(event)
                # The runtime serialises and drops each top; keeping them would measure GC.
                emitted += publish(chunk[-1].book_delta.header.event_time_ns)
        cpu += time.process_time() - start
        wall += time.perf_counter() - wall_start
    _WALL.append(wall)
    return cpu, emitted


def outputs(
    make: Callable[[], BookCore | NaiveBookCore], workload: Workload, batch: int
) -> list[tuple[object, ...]]:
    """Untimed: every top emitted, for the like-for-like check."""
    core = _loaded(make, workload)
    out: list[book_pb.TopOfBook] = []
    deltas = workload.deltas
    for offset in range(0, len(deltas), batch):
        chunk = deltas[offset : offset + batch]
        for event in chunk:
            core.apply(event)
        out += core.tops(chunk[-1].book_delta.header.event_time_ns)
    return _comparable(out)


def _comparable(tops: Sequence[book_pb.TopOfBook]) -> list[tuple[object, ...]]:
    return sorted(
        (
            t.symbol,
            t.header.event_time_ns,
            t.best_bid_price_native,
            t.best_bid_size_native,
            t.best_ask_price_native,
            t.best_ask_size_native,
            t.bid_levels,
            t.ask_levels,
            round(t.bid_depth_size_native, 6),
            round(t.ask_depth_size_native, 6),
        )
        for t in tops
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=200_000)
    parser.add_argument("--instruments", type=int, default=500)
    parser.add_argument("--levels", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    workload = build_workload(args.instruments, args.levels, args.deltas, args.seed)
    levels = sum(len(e.book_delta.bids) + len(e.book_delta.asks) for e in workload.deltas)
    print(
        f"workload: {args.instruments} instruments x {args.levels} levels/side, "
        f"{args.deltas:,} deltas ({levels / args.deltas:.2f} levels/delta), "
        f"built in {time.perf_counter() - t0:.1f} s"
    )
    config = BookConfig(stale_after_ns=60_000 * MS, depth_levels=10)
    contenders: list[tuple[str, Callable[[], BookCore | NaiveBookCore]]] = [
        ("BookCore.tops()", lambda: BookCore("deribit", "BTC", config)),
        ("BookCore.tops_into(batch)", lambda: IntoBatchBookCore("deribit", "BTC", config)),
        ("naive: dict, sort on read", lambda: NaiveBookCore(depth_levels=10)),
    ]
    check = min(args.deltas, 50_000)
    sample = Workload.of(workload.snapshots, workload.deltas[:check])
    if outputs(contenders[0][1], sample, 100) != outputs(contenders[2][1], sample, 100):
        raise SystemExit("BookCore and the naive book emit different tops: not like for like")
    print(f"check: both emit identical tops over the first {check:,} deltas")
    header = (
        f"{'tops() every':>12}  {'implementation':<30} {'deltas/s':>10} {'us/delta':>9} "
        f"{'tops/delta':>10} {'vs naive':>9}"
    )
    print(header)
    print("-" * len(header))
    all_runs: list[tuple[float, int]] = []
    for every in (1, 10, 100, 1000):
        # Interleaved, so a burst of load from neighbours hits both sides alike.
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name, _ in contenders}
        for _ in range(args.repeat):
            for name, make in contenders:
                runs[name].append(run(make, workload, every))
        all_runs.extend(r for name_runs in runs.values() for r in name_runs)
        results = {name: min(name_runs, key=lambda r: r[0]) for name, name_runs in runs.items()}
        naive_seconds = results[contenders[2][0]][0]
        for name, _ in contenders:
            seconds, emitted = results[name]
            print(
                f"{every:>12}  {name:<30} {args.deltas / seconds:>10,.0f} "
                f"{1e6 * seconds / args.deltas:>9.2f} {emitted / args.deltas:>10.3f} "
                f"{naive_seconds / seconds:>8.2f}x"
            )
    cpu_total = sum(r[0] for r in all_runs)
    print(
        "deltas/s: CPU time of one core in apply() + tops(), best of --repeat runs; deltas "
        f"arrive in MarketDataBatch messages of {MESSAGE_EVENTS} events, decoded untimed "
        "(~0.15 us/delta). Target: >= 200,000 deltas/s.\n"
        f"wall/CPU over all runs: {sum(_WALL) / cpu_total:.2f} (1.00 = no contention)"
    )


if __name__ == "__main__":
    main()
