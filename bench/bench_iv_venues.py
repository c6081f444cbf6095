"""Our IVs against the venues' own on every recorded Deribit, Bybit and Binance ticker in
tests/fixtures/venues, through the IV stage as it runs, under each forward policy.

    .venv/bin/python -m bench.bench_iv_venues [--interval-ms MS]

Path: each recorded frame is parsed by the venue's own ``parse_frame`` (instrument lists by
its ``parse_instruments``), the events go as MarketDataBatch messages, in recorded order,
to ``svc_iv.service.IvStage.handle_sync`` (the IV service's handler: per-message cadence
cut, IvCore, SmileBatch out) with ``--iv-forward-policy`` set each way. Every quote of a
published smile that carries a venue IV (SmileQuote.venue_bid_iv/ask/mark, GetSmile's
side-by-side) and whose ticker is newer than the last one compared is compared once.

Tickers only, no books: a venue's IV is of its ticker's price; a book top of another
moment would compare two prices. Instruments the recordings have no list for (Deribit
ETH, the Bybit and Binance options) are built from the symbol by the same parse, in the
venue's list shape, with the venue's tick (Deribit 0.0005 BTC/ETH, Bybit 5 USDC, Binance
5 USDT).

Not compared: Deribit's perpetual ticker (no IVs) and Binance's 2025-12 ``optionMarkPrice``
messages, which SOURCES.md marks as documentation examples, not recordings (the BTC one
quotes a call below intrinsic; tests/iv/test_venue_fixtures.py checks both for shape).

A difference is explained when a one-tick move of the price, at that quote (its forward,
strike and time), moves the IV at least as much. Reported per policy and venue: sides
compared, median / p99 / max |diff| in vol points, diffs above 0.05 and how many of those
the tick explains. Target (issue 18): median <= 0.005, every diff above 0.05 explained.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from replay.stages import ReplayEnv
from svc_connector.venues.base import FrameResult, InstrumentParseResult
from svc_connector.venues.binance import parse as binance
from svc_connector.venues.bybit import parse as bybit
from svc_connector.venues.deribit import parse as deribit
from svc_iv.normalise import COIN_PER_COIN, USD_PER_CONTRACT
from svc_iv.service import IvStage
from svc_iv.solver import OK, implied_vol
from volstream.bus.consumer import AckMetadata, InMessage
from volstream.config import IV_FORWARD_POLICIES, Config, Partition
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "venues"
MEDIAN_TARGET = 0.005
EXPLAIN_ABOVE = 0.05
SIDES = (("bid", "bid_iv", "venue_bid_iv"), ("ask", "ask_iv", "venue_ask_iv"))
MARK = ("mark", "mark_iv", "venue_mark_iv")


@dataclass(frozen=True, slots=True)
class Diff:
    venue: str
    symbol: str
    side: str
    ours: float
    theirs: float
    # |ours - theirs| and the IV move of a one-tick price change, both in vol points.
    diff: float
    tick_move: float

    @property
    def explained(self) -> bool:
        return self.diff <= EXPLAIN_ABOVE or self.diff <= self.tick_move


@dataclass(frozen=True, slots=True)
class Recording:
    venue: str
    instruments: list[md_pb.Instrument]
    # (receive time, FrameResult) in recorded order.
    frames: list[FrameResult]


# ---- recordings ------------------------------------------------------------------------
def _lines(path: Path) -> Iterator[str]:
    return (line for line in path.read_text().splitlines() if line.strip())


def _instruments(result: InstrumentParseResult) -> list[md_pb.Instrument]:
    assert not result.dead_letters, result.dead_letters
    return list(result.instruments)


def deribit_recording(root: Path = FIXTURES) -> Recording:
    body = (root / "deribit" / "rest_get_instruments_BTC_2021-07-22.json").read_text()
    listed = json.loads(body)
    names = {i["instrument_name"] for i in listed["result"]}
    frames = list(_lines(root / "deribit" / "ws_ticker_options_2021-07-22.jsonl"))
    # ETH options have no list in the recording: entries in the list's shape, from the name.
    template = next(i for i in listed["result"] if i["kind"] == "option")
    for raw in frames:
        symbol = json.loads(raw)["params"]["data"]["instrument_name"]
        if symbol in names:
            continue
        names.add(symbol)
        coin, expiry, strike, kind = symbol.split("-")
        listed["result"].append(
            {
                **template,
                "instrument_name": symbol,
                "base_currency": coin,
                "quote_currency": coin,
                "settlement_currency": coin,
                "price_index": f"{coin.lower()}_usd",
                "strike": float(strike),
                "option_type": "call" if kind == "C" else "put",
                "expiration_timestamp": _deribit_expiry_ms(expiry),
            }
        )
    instruments = _instruments(deribit.parse_instruments(json.dumps(listed), 0))
    units = {i.symbol: i.premium_unit for i in instruments}
    parsed = [deribit.parse_frame(raw, 0, units) for raw in frames]
    return Recording("deribit", instruments, parsed)


def _deribit_expiry_ms(token: str) -> int:
    from datetime import UTC, datetime

    day = datetime.strptime(token, "%d%b%y").replace(hour=8, tzinfo=UTC)
    return int(day.timestamp() * 1000)


def bybit_recording(root: Path = FIXTURES) -> Recording:
    raws = [
        line
        for line in _lines(root / "bybit" / "tardis_node_mappers_test_bybit_options.jsonl")
        if json.loads(line).get("topic", "").startswith("tickers.")
    ]
    raws.append((root / "bybit" / "nautilus_ws_ticker_option.json").read_text())
    symbols = sorted({json.loads(raw)["data"]["symbol"] for raw in raws})
    entries = [
        {
            "symbol": s,
            "status": "Trading",
            "baseCoin": s.split("-")[0],
            "settleCoin": "USDC",
            "optionsType": "Call" if s.split("-")[3] == "C" else "Put",
            "priceFilter": {"minPrice": "5", "maxPrice": "10000000", "tickSize": "5"},
            "lotSizeFilter": {"maxOrderQty": "500", "minOrderQty": "0.01", "qtyStep": "0.01"},
        }
        for s in symbols
    ]
    body = json.dumps({"retCode": 0, "retMsg": "success", "result": {"list": entries}})
    # The nautilus ticker predates the tardis ones: recorded order is event time order here.
    parsed = sorted(
        (bybit.parse_frame(raw, 0) for raw in raws),
        key=lambda r: r.events[0].event.ticker.header.event_time_ns,
    )
    return Recording("bybit", _instruments(bybit.parse_instruments(body, 0)), parsed)


def binance_recording(root: Path = FIXTURES) -> Recording:
    path = root / "binance" / "tardis_node_mappers_test_binance_european_options_v1_2023-10.jsonl"
    raws = list(_lines(path))
    symbols = sorted(
        {
            json.loads(raw)["data"]["s"]
            for raw in raws
            if json.loads(raw)["stream"].endswith("@ticker")
        }
    )
    entries = []
    for s in symbols:
        coin, expiry, strike, kind = s.split("-")
        entries.append(
            {
                "symbol": s,
                "side": "CALL" if kind == "C" else "PUT",
                "strikePrice": strike,
                "underlying": f"{coin}USDT",
                "unit": 1,
                "expiryDate": _binance_expiry_ms(expiry),
                "quoteAsset": "USDT",
                "status": "TRADING",
                "filters": [{"filterType": "PRICE_FILTER", "tickSize": "5"}],
            }
        )
    instruments = _instruments(binance.parse_instruments(json.dumps({"optionSymbols": entries}), 0))
    sizes = {i.symbol: i.contract_size_coin for i in instruments}
    return Recording("binance", instruments, [binance.parse_frame(raw, 0, sizes) for raw in raws])


def _binance_expiry_ms(token: str) -> int:
    from datetime import UTC, datetime

    day = datetime.strptime(token, "%y%m%d").replace(hour=8, tzinfo=UTC)
    return int(day.timestamp() * 1000)


RECORDINGS: dict[str, Callable[[], Recording]] = {
    "deribit": deribit_recording,
    "bybit": bybit_recording,
    "binance": binance_recording,
}


# ---- the IV stage -----------------------------------------------------------------------
def _metadata(seq: int) -> AckMetadata:
    return AckMetadata("BOOK", "bench", 1, seq, seq, 0, 0)


def run_stage(recording: Recording, policy: str, interval_ms: int = 200) -> list[iv_pb.SmileBatch]:
    """Every SmileBatch the IV stage publishes for the recording, and a last flush."""
    currencies = sorted({i.currency for i in recording.instruments})
    cfg = Config(
        venues=(recording.venue,),
        currencies=tuple(currencies),
        iv_interval_ms=interval_ms,
        iv_forward_policy=policy,
    ).validated()
    subjects = Subjects("")
    env = ReplayEnv(cfg, subjects, setup_telemetry("bench_iv_venues"))
    partitions = tuple(Partition(recording.venue, c) for c in currencies)
    stage = IvStage(env, partitions, offload=False)
    messages: list[tuple[str, md_pb.MarketDataBatch]] = []
    for ccy in currencies:
        instrument_set = md_pb.InstrumentSet(
            venue=recording.venue,
            currency=ccy,
            instruments=[i for i in recording.instruments if i.currency == ccy],
        )
        event = md_pb.MarketDataEvent(instrument_set=instrument_set)
        messages.append(
            (ccy, md_pb.MarketDataBatch(venue=recording.venue, currency=ccy, events=[event]))
        )
    for frame in recording.frames:
        assert not frame.dead_letters, frame.dead_letters
        for ccy in currencies:
            events = [e.event for e in frame.events if e.currency == ccy]
            if events:
                batch = md_pb.MarketDataBatch(venue=recording.venue, currency=ccy, events=events)
                messages.append((ccy, batch))
    inputs = [
        InMessage(
            subjects.book_relay(recording.venue, ccy),
            batch.SerializeToString(),
            None,
            n,
            _metadata(n),
        )
        for n, (ccy, batch) in enumerate(messages, start=1)
    ]
    outputs = [iv_pb.SmileBatch.FromString(out.payload) for out in stage.handle_sync(inputs)]
    # What is still unpublished at the end of the recording (the next message would cut it).
    for key, core in stage.cores.items():
        smiles = core.flush(stage.clocks[key].now_ns)
        if smiles:
            outputs.append(iv_pb.SmileBatch(venue=key[0], currency=key[1], smiles=smiles))
    stage.pool.shutdown(wait=True)
    return outputs


def _tick_move(quote: iv_pb.SmileQuote, price_usd: float, tick_usd: float, t: float) -> float:
    """Largest |IV move| (vol points) of the price moving one tick either way."""
    forward = quote.strike_usd / math.exp(quote.log_moneyness)
    call = quote.option_kind == common_pb.OPTION_KIND_CALL
    here, _ = implied_vol(price_usd, forward, quote.strike_usd, t, call)
    moves = []
    for step in (tick_usd, -tick_usd):
        there, status = implied_vol(price_usd + step, forward, quote.strike_usd, t, call)
        if int(status) == OK:
            moves.append(abs(float(there) - float(here)))
    return 100.0 * max(moves) if moves else math.inf


def compare(recording: Recording, batches: Iterable[iv_pb.SmileBatch]) -> list[Diff]:
    """Each venue IV against ours, once per ticker (its quote_time_ns)."""
    instruments = {i.symbol: i for i in recording.instruments}
    seen: dict[str, int] = {}
    diffs: list[Diff] = []
    for batch in batches:
        for smile in batch.smiles:
            for q in smile.quotes:
                if seen.get(q.symbol, -1) >= q.quote_time_ns:
                    continue
                seen[q.symbol] = q.quote_time_ns
                inst = instruments[q.symbol]
                forward = q.strike_usd / math.exp(q.log_moneyness)
                to_usd = (
                    forward
                    if inst.premium_unit == COIN_PER_COIN
                    else 1.0 / inst.contract_size_coin
                    if inst.premium_unit == USD_PER_CONTRACT
                    else 1.0
                )
                for side, ours_field, theirs_field in (*SIDES, MARK):
                    theirs = getattr(q, theirs_field)
                    if not math.isfinite(theirs):
                        continue
                    ours = getattr(q, ours_field)
                    price = getattr(q, f"{side}_price_usd_per_coin")
                    move = _tick_move(
                        q, price, inst.tick_size_native * to_usd, smile.time_to_expiry_years
                    )
                    diff = abs(ours - theirs) * 100.0 if math.isfinite(ours) else math.inf
                    diffs.append(Diff(recording.venue, q.symbol, side, ours, theirs, diff, move))
    return diffs


def venue_diffs(venue: str, policy: str, interval_ms: int = 200) -> list[Diff]:
    recording = RECORDINGS[venue]()
    return compare(recording, run_stage(recording, policy, interval_ms))


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    median: float
    p99: float
    worst: float
    above: int
    explained: int


def summarise(diffs: list[Diff]) -> Summary:
    values = np.array([d.diff for d in diffs]) if diffs else np.array([math.nan])
    big = [d for d in diffs if d.diff > EXPLAIN_ABOVE]
    return Summary(
        len(diffs),
        float(np.median(values)),
        float(np.percentile(values, 99)),
        float(values.max()),
        len(big),
        sum(d.explained for d in big),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval-ms", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"IV vs venue IVs on the recordings (IV stage, cadence {args.interval_ms} ms), vol pts")
    header = (
        f"{'policy':8} {'venue':8} {'side':5} {'n':>4} {'median':>8} {'p99':>8} {'max':>8}"
        f" {'>0.05':>6} {'explained':>9}"
    )
    print(header)
    print("-" * len(header))
    for policy in IV_FORWARD_POLICIES:
        every: list[Diff] = []
        for venue in RECORDINGS:
            diffs = venue_diffs(venue, policy, args.interval_ms)
            every += diffs
            for side in ("bid", "ask", "mark", "all"):
                chosen = [d for d in diffs if side in (d.side, "all")]
                if not chosen:
                    continue
                s = summarise(chosen)
                print(
                    f"{policy:8} {venue:8} {side:5} {s.count:4d} {s.median:8.4f} {s.p99:8.4f}"
                    f" {s.worst:8.4f} {s.above:6d} {s.explained:9d}"
                )
        s = summarise(every)
        print(
            f"{policy:8} {'all':8} {'all':5} {s.count:4d} {s.median:8.4f} {s.p99:8.4f}"
            f" {s.worst:8.4f} {s.above:6d} {s.explained:9d}"
        )
        worst = max(every, key=lambda d: d.diff)
        print(
            f"{'':8} worst: {worst.venue} {worst.symbol} {worst.side} ours {worst.ours:.4f}"
            f" venue {worst.theirs:.4f} one tick moves {worst.tick_move:.3f} vol pts"
        )


if __name__ == "__main__":
    main()
