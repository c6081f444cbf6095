"""IvCore with plain lists of events: statuses and flags, emission rules, forwards, less work."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from svc_iv.core import IvConfig, IvCore
from svc_iv.solver import implied_vol
from volmath import black76
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb

NS = 1_000_000_000
DAY_NS = 86_400 * NS
YEAR_NS = 365 * DAY_NS
EXP1 = int(datetime(2021, 8, 6, 8, tzinfo=UTC).timestamp()) * NS
EXP2 = int(datetime(2021, 9, 24, 8, tzinfo=UTC).timestamp()) * NS
NOW = EXP1 - 15 * DAY_NS
F = 40_000.0
SIGMA = 0.8

OK = iv_pb.IV_STATUS_OK
MISSING = iv_pb.IV_STATUS_MISSING_PRICE
BELOW = iv_pb.IV_STATUS_BELOW_INTRINSIC
ABOVE = iv_pb.IV_STATUS_ABOVE_UPPER_BOUND
BAD = iv_pb.IV_STATUS_BAD_INPUT
COIN = md_pb.PREMIUM_UNIT_COIN_PER_COIN
USD = md_pb.PREMIUM_UNIT_USD_PER_COIN
CONTRACT = md_pb.PREMIUM_UNIT_USD_PER_CONTRACT


def name(strike: float, call: bool, expiry: int = EXP1) -> str:
    return f"BTC-{expiry // DAY_NS}-{strike:g}-{'C' if call else 'P'}"


def inst(
    strike: float,
    call: bool,
    expiry: int = EXP1,
    unit: int = COIN,
    size: float = 1.0,
    tick: float = 0.0005,
    symbol: str | None = None,
) -> md_pb.Instrument:
    return md_pb.Instrument(
        venue="deribit",
        symbol=symbol or name(strike, call, expiry),
        currency="BTC",
        kind=md_pb.INSTRUMENT_KIND_OPTION,
        option_kind=common_pb.OPTION_KIND_CALL if call else common_pb.OPTION_KIND_PUT,
        strike_usd=strike,
        expiry_time_ns=expiry,
        premium_unit=unit,  # type: ignore[arg-type]
        contract_size_coin=size,
        tick_size_native=tick,
    )


def future(symbol: str, expiry: int) -> md_pb.Instrument:
    return md_pb.Instrument(
        venue="deribit",
        symbol=symbol,
        currency="BTC",
        kind=md_pb.INSTRUMENT_KIND_FUTURE,
        expiry_time_ns=expiry,
    )


def iset(instruments: Iterable[md_pb.Instrument]) -> md_pb.InstrumentSet:
    return md_pb.InstrumentSet(venue="deribit", currency="BTC", instruments=list(instruments))


def top(
    symbol: str,
    bid: float | None = None,
    ask: float | None = None,
    t: int = NOW,
    status: int = book_pb.BOOK_STATUS_VALID,
    **flags: bool,
) -> book_pb.TopOfBook:
    msg = book_pb.TopOfBook(
        header=common_pb.EventHeader(event_time_ns=t),
        symbol=symbol,
        status=status,  # type: ignore[arg-type]
        **flags,
    )
    if bid is not None:
        msg.best_bid_price_native = bid
        msg.best_bid_size_native = 1.0
    if ask is not None:
        msg.best_ask_price_native = ask
        msg.best_ask_size_native = 2.0
    return msg


def ticker(symbol: str, t: int = NOW, **fields: Any) -> md_pb.VenueTicker:
    return md_pb.VenueTicker(header=common_pb.EventHeader(event_time_ns=t), symbol=symbol, **fields)


def coin_price(
    strike: float, call: bool, sigma: float = SIGMA, forward: float = F, now: int = NOW
) -> float:
    t = (EXP1 - now) / YEAR_NS
    return float(black76.price(forward, strike, t, sigma, call)) / forward


def by_symbol(smile: iv_pb.Smile) -> dict[str, iv_pb.SmileQuote]:
    return {q.symbol: q for q in smile.quotes}


STRIKES = (30_000.0, 35_000.0, 40_000.0, 45_000.0, 50_000.0)


def chain_core(config: IvConfig | None = None) -> IvCore:
    core = IvCore("deribit", "BTC", config)
    core.on_instruments(iset(inst(k, c) for k in STRIKES for c in (True, False)))
    core.on_ticker(ticker(name(40_000, True), forward_usd=F, index_price_usd=F - 50))
    return core


# --------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("error")
def test_a_chain_of_bad_quotes_yields_reasons_never_an_exception() -> None:
    core = chain_core()
    events: list[book_pb.TopOfBook | md_pb.VenueTicker] = [
        # Good two-sided quote.
        top(name(40_000, True), coin_price(40_000, True, 0.78), coin_price(40_000, True, 0.82)),
        # Zero bid: not a price.
        top(name(45_000, True), 0.0, coin_price(45_000, True, 0.85)),
        # Crossed.
        top(
            name(35_000, False),
            coin_price(35_000, False, 0.85),
            coin_price(35_000, False, 0.8),
            crossed=True,
        ),
        # A call worth more than the forward; bid at the minimum tick.
        top(name(50_000, True), 0.0005, 1.2),
        # ITM call bid below intrinsic ((F - K)/F = 0.25 coin), ask missing.
        top(name(30_000, True), 0.2, None, one_sided=True),
        # Book lost its sequence: no prices, stale.
        top(name(30_000, False), 0.01, 0.02, status=book_pb.BOOK_STATUS_GAP),
        # NaN bid, infinite ask.
        top(name(50_000, False), math.nan, math.inf),
        # Unknown symbols, a ticker with a NaN forward and NaN mark.
        top("BTC-NOPE-1-C", 0.1, 0.2),
        ticker("BTC-NOPE-2-P", mark_price_native=0.1),
        ticker(name(45_000, False), forward_usd=math.nan, mark_price_native=math.nan),
    ]
    for event in events:
        if isinstance(event, book_pb.TopOfBook):
            core.on_top(event)
        else:
            core.on_ticker(event)
    (smile,) = core.flush(NOW)
    q = by_symbol(smile)
    assert smile.forward_usd == F and smile.forward_source == common_pb.FORWARD_SOURCE_VENUE

    good = q[name(40_000, True)]
    assert (good.bid_iv_status, good.ask_iv_status) == (OK, OK)
    assert good.bid_iv == pytest.approx(0.78, abs=1e-12)
    assert good.ask_iv == pytest.approx(0.82, abs=1e-12)
    assert good.mid_iv == pytest.approx(0.80, abs=1e-12)
    assert not (good.one_sided or good.crossed or good.stale or good.at_min_tick)
    assert good.mark_iv_status == MISSING and math.isnan(good.mark_iv)

    zero_bid = q[name(45_000, True)]
    assert zero_bid.bid_iv_status == BAD and math.isnan(zero_bid.bid_iv)
    assert zero_bid.ask_iv_status == OK and zero_bid.ask_iv == pytest.approx(0.85, abs=1e-12)
    assert math.isnan(zero_bid.mid_iv)  # no mid without both sides
    # Greeks fall back to the mark, then to nothing.
    assert math.isnan(zero_bid.delta_forward)

    crossed = q[name(35_000, False)]
    assert crossed.crossed and crossed.bid_iv > crossed.ask_iv
    assert (crossed.bid_iv_status, crossed.ask_iv_status) == (OK, OK)

    above = q[name(50_000, True)]
    assert above.ask_iv_status == ABOVE and math.isnan(above.ask_iv)
    assert above.bid_iv_status == OK and above.at_min_tick

    below = q[name(30_000, True)]
    assert below.bid_iv_status == BELOW and below.ask_iv_status == MISSING
    assert below.one_sided and math.isnan(below.ask_price_usd_per_coin)

    gap = q[name(30_000, False)]
    assert gap.stale and (gap.bid_iv_status, gap.ask_iv_status) == (MISSING, MISSING)

    nan_inf = q[name(50_000, False)]
    assert (nan_inf.bid_iv_status, nan_inf.ask_iv_status) == (MISSING, BAD)

    never_quoted = q[name(40_000, False)]
    assert (
        never_quoted.bid_iv_status,
        never_quoted.ask_iv_status,
        never_quoted.mark_iv_status,
    ) == (
        MISSING,
        MISSING,
        MISSING,
    )
    assert math.isnan(never_quoted.venue_mark_iv)
    assert core.stats.unknown_symbol_events == 2
    for quote in smile.quotes:
        for side in ("bid", "ask", "mark"):
            status = getattr(quote, f"{side}_iv_status")
            assert status != iv_pb.IV_STATUS_UNSPECIFIED
            assert (status == OK) == math.isfinite(getattr(quote, f"{side}_iv"))


def test_iv_and_greeks_in_every_premium_unit() -> None:
    """The same option quoted inverse, linear per coin and per 0.1-coin contract."""
    strike, t = 45_000.0, (EXP1 - NOW) / YEAR_NS
    usd = float(black76.price(F, strike, t, SIGMA, True))
    insts = [
        inst(strike, True, unit=COIN, symbol="inverse"),
        inst(strike, True, unit=USD, symbol="linear"),
        inst(strike, True, unit=CONTRACT, size=0.1, symbol="contract"),
    ]
    core = IvCore("deribit", "BTC")
    core.on_instruments(iset(insts))
    core.on_ticker(ticker("inverse", mark_price_native=usd / F, forward_usd=F, mark_iv=0.79))
    core.on_ticker(ticker("linear", mark_price_native=usd))
    core.on_ticker(ticker("contract", mark_price_native=usd * 0.1))
    (smile,) = core.flush(NOW)
    assert smile.time_to_expiry_years == pytest.approx(15 / 365, rel=1e-15)
    assert smile.expiry_label == "2021-08-06"
    assert smile.header.source == "svc_iv" and smile.header.event_time_ns == NOW
    for quote in smile.quotes:
        assert quote.mark_iv_status == OK
        assert quote.mark_iv == pytest.approx(SIGMA, abs=1e-12)
        assert quote.mark_price_usd_per_coin == pytest.approx(usd, rel=1e-14)
        assert quote.log_moneyness == pytest.approx(math.log(strike / F), rel=1e-15)
        # No bid/ask: greeks at the mark IV.
        assert quote.delta_forward == pytest.approx(
            float(black76.forward_delta(F, strike, t, SIGMA, True)), rel=1e-10
        )
        assert quote.delta_premium_adjusted == pytest.approx(
            float(black76.premium_adjusted_delta(F, strike, t, SIGMA, True)), rel=1e-10
        )
        assert quote.gamma_per_usd == pytest.approx(
            float(black76.gamma(F, strike, t, SIGMA)), rel=1e-10
        )
        assert quote.vega_usd_per_vol == pytest.approx(
            float(black76.vega(F, strike, t, SIGMA)), rel=1e-10
        )
        assert quote.theta_usd_per_day == pytest.approx(
            float(black76.theta(F, strike, t, SIGMA)), rel=1e-10
        )
    assert by_symbol(smile)["inverse"].venue_mark_iv == 0.79
    assert math.isnan(by_symbol(smile)["linear"].venue_mark_iv)


def test_flush_emits_only_changed_expiries() -> None:
    core = IvCore("deribit", "BTC")
    core.on_instruments(iset([inst(40_000, True, EXP1), inst(40_000, True, EXP2)]))
    core.on_ticker(ticker(name(40_000, True, EXP1), forward_usd=F))
    core.on_ticker(ticker(name(40_000, True, EXP2), forward_usd=F + 300))
    first = core.flush(NOW)
    assert [s.expiry_time_ns for s in first] == [EXP1, EXP2]
    assert core.flush(NOW + NS) == []  # nothing changed; time alone is not an input
    core.on_top(top(name(40_000, True, EXP2), 0.05, 0.06, t=NOW + 2 * NS))
    (only,) = core.flush(NOW + 2 * NS)
    assert only.expiry_time_ns == EXP2
    assert by_symbol(only)[name(40_000, True, EXP2)].quote_time_ns == NOW + 2 * NS
    # An index move cannot change smiles priced on venue forwards.
    core.on_index(
        md_pb.IndexPrice(header=common_pb.EventHeader(event_time_ns=NOW), price_usd=F - 10)
    )
    assert core.flush(NOW + 3 * NS) == []  # both expiries use venue forwards: index irrelevant
    assert [s.header.sequence for s in [*first, only]] == [1, 2, 3]


def test_expired_expiries_are_dropped() -> None:
    core = IvCore("deribit", "BTC")
    core.on_instruments(iset([inst(40_000, True, EXP1), inst(40_000, True, EXP2)]))
    core.on_top(top(name(40_000, True, EXP1), 0.01, 0.02))
    core.on_top(top(name(40_000, True, EXP2), 0.05, 0.06))
    smiles = core.flush(EXP1)  # T = 0 for EXP1: expired
    assert [s.expiry_time_ns for s in smiles] == [EXP2]
    assert core.expiries() == [EXP2]
    assert core.stats.expiries_dropped == 1
    core.on_top(top(name(40_000, True, EXP1), 0.01, 0.03))  # late event: no exception
    assert core.flush(EXP1 + NS) == []


def test_instruments_missing_from_the_latest_set_are_dropped_and_pending_events_apply() -> None:
    core = IvCore("deribit", "BTC")
    early = top(name(35_000, True), coin_price(35_000, True, 0.7), coin_price(35_000, True, 0.75))
    core.on_top(early)  # before any InstrumentSet: remembered
    core.on_instruments(iset([inst(40_000, True), inst(35_000, True)]))
    core.on_ticker(ticker(name(40_000, True), forward_usd=F))
    (smile,) = core.flush(NOW)
    q = by_symbol(smile)
    assert q[name(35_000, True)].bid_iv == pytest.approx(0.7, abs=1e-12)
    core.on_instruments(iset([inst(35_000, True)]))  # 40,000 delisted
    (smile,) = core.flush(NOW)
    assert list(by_symbol(smile)) == [name(35_000, True)]
    # The venue forward survives the re-listing (it belongs to the expiry).
    assert smile.forward_source == common_pb.FORWARD_SOURCE_VENUE
    assert by_symbol(smile)[name(35_000, True)].bid_iv == pytest.approx(0.7, abs=1e-12)
    other = md_pb.InstrumentSet(venue="okx", currency="BTC", instruments=[inst(1.0, True)])
    core.on_instruments(other)  # another venue's set is ignored
    assert core.stats.ignored == 1 and core.expiries() == [EXP1]


def test_forward_source_in_order_of_preference() -> None:
    strikes = (38_000.0, 40_000.0, 42_000.0)
    core = IvCore("deribit", "BTC")
    core.on_instruments(
        iset([inst(k, c) for k in strikes for c in (True, False)] + [future("BTC-6AUG21", EXP1)])
    )
    (smile,) = core.flush(NOW)
    assert smile.forward_source == common_pb.FORWARD_SOURCE_UNSPECIFIED
    assert math.isnan(smile.forward_usd)
    # No forward: every price is unusable for want of it (bad input ranks above missing).
    assert {q.mark_iv_status for q in smile.quotes} == {BAD}

    core.on_index(
        md_pb.IndexPrice(
            header=common_pb.EventHeader(event_time_ns=NOW),
            index_name="btc_usd",
            price_usd=39_900.0,
        )
    )
    (smile,) = core.flush(NOW)
    assert (smile.forward_source, smile.forward_usd) == (common_pb.FORWARD_SOURCE_INDEX, 39_900.0)
    assert smile.index_price_usd == 39_900.0

    for k in strikes:  # mids consistent with F = 40,000 (coin premiums, inverse parity)
        for c in (True, False):
            p = coin_price(k, c)
            core.on_top(top(name(k, c), p - 0.0005, p + 0.0005))
    (smile,) = core.flush(NOW)
    assert smile.forward_source == common_pb.FORWARD_SOURCE_PUT_CALL_PARITY
    assert smile.forward_usd == pytest.approx(F, rel=1e-12)

    core.on_top(top("BTC-6AUG21", 40_100.0, 40_110.0))
    (smile,) = core.flush(NOW)
    assert (smile.forward_source, smile.forward_usd) == (common_pb.FORWARD_SOURCE_FUTURE, 40_105.0)

    core.on_ticker(ticker(name(40_000, True), forward_usd=40_050.0))
    (smile,) = core.flush(NOW)
    assert (smile.forward_source, smile.forward_usd) == (common_pb.FORWARD_SOURCE_VENUE, 40_050.0)
    # A future move can no longer change this smile: nothing to emit.
    core.on_top(top("BTC-6AUG21", 40_200.0, 40_210.0))
    assert core.flush(NOW) == []


# --------------------------------------------------------------------------------------
# Less work when only the forward moved
# --------------------------------------------------------------------------------------
def _wide_chain(config: IvConfig) -> IvCore:
    """Inverse chain, prices on the 0.0005 tick (bids at or above the model price, so no
    deep-ITM bid sits exactly on intrinsic), forward from the venue ticker."""
    core = IvCore("deribit", "BTC", config)
    strikes = np.arange(25_000.0, 70_001.0, 2_500.0)
    core.on_instruments(iset(inst(k, c) for k in strikes for c in (True, False)))
    for k in strikes:
        for c in (True, False):
            sigma = 0.7 + 0.4 * abs(math.log(k / F))
            p = math.ceil(coin_price(k, c, sigma) / 0.0005) * 0.0005
            core.on_top(top(name(k, c), p, p + 0.0005))
            core.on_ticker(ticker(name(k, c), mark_price_native=p + 0.00025))
    core.on_ticker(ticker(name(40_000, True), forward_usd=F))
    return core


def _ivs(smile: iv_pb.Smile) -> np.ndarray:
    return np.array([[q.bid_iv, q.ask_iv, q.mark_iv] for q in smile.quotes])


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("policy", "move", "later_ns", "outcome", "tolerance_bp"),
    [
        # "quote": no IV moves by 0.5 bp in 5 s: nothing solved, whatever the forward did
        # (every price stays on its own forward).
        ("quote", 1e-4, 5 * NS, "skipped_solves", 0.5),
        ("quote", 2e-2, 5 * NS, "skipped_solves", 0.5),
        # A day later every IV moved: the time update s / sqrt(T) is exact.
        ("quote", 2e-2, DAY_NS, "time_updates", 1e-8),
        # "current": a forward move re-solves every quote; time alone does not.
        ("current", 1e-4, 5 * NS, "full_solves", 1e-8),
        ("current", 0.0, 5 * NS, "skipped_solves", 0.5),
        ("current", 0.0, DAY_NS, "time_updates", 1e-8),
    ],
)
def test_forward_and_time_only_moves(
    policy: str, move: float, later_ns: int, outcome: str, tolerance_bp: float
) -> None:
    """Against a core that re-solves everything: the IVs stay within the promised distance,
    and the work done is what the outcome says."""
    cores = (
        _wide_chain(IvConfig(forward_policy=policy)),
        _wide_chain(IvConfig(forward_policy=policy, incremental=False)),
    )
    for core in cores:
        core.flush(NOW)
    before = dataclasses.replace(cores[0].stats)
    later = NOW + later_ns
    results = []
    for core in cores:
        core.on_ticker(ticker(name(40_000, True), t=later, forward_usd=F * (1 + move)))
        (smile,) = core.flush(later)
        assert smile.forward_usd == F * (1 + move)
        results.append(_ivs(smile))
    incremental, exact = results
    assert np.array_equal(np.isnan(incremental), np.isnan(exact))
    gap_bp = float(np.nanmax(np.abs(incremental - exact))) / 1e-4
    assert gap_bp <= tolerance_bp
    after = cores[0].stats
    n = len(incremental)
    solved = after.quotes_solved - before.quotes_solved
    time_update = after.quotes_time_updated - before.quotes_time_updated
    skipped = after.quotes_skipped - before.quotes_skipped
    assert getattr(after, outcome) - getattr(before, outcome) == 1
    if outcome == "skipped_solves":
        assert (solved, time_update, skipped) == (0, 0, n)
        assert gap_bp > 0  # the kept IVs would have moved a little
    elif outcome == "time_updates":
        assert (solved, time_update, skipped) == (0, n, 0)
    else:
        assert (solved, time_update, skipped) == (n, 0, 0)
    assert cores[1].stats.full_solves == 2


def test_changed_quotes_are_always_solved_exactly() -> None:
    core = _wide_chain(IvConfig())
    core.flush(NOW)
    symbol = name(45_000, True)
    new_bid = coin_price(45_000, True, 0.9)
    core.on_top(top(symbol, new_bid, new_bid + 0.001, t=NOW + NS))
    (smile,) = core.flush(NOW + NS)
    quote = by_symbol(smile)[symbol]
    t = (EXP1 - NOW - NS) / YEAR_NS
    expected, _ = implied_vol(new_bid * F, F, 45_000.0, t, True)
    assert quote.bid_iv == float(expected)
    assert core.stats.partial_solves + core.stats.full_solves == 2


# --------------------------------------------------------------------------------------
# Recorded Deribit tickers through the core
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["current", "quote"])
def test_deribit_recorded_tickers_through_the_core(venue_fixtures: Path, policy: str) -> None:
    body = json.loads(
        (venue_fixtures / "deribit" / "rest_get_instruments_BTC_2021-07-22.json").read_text()
    )
    instruments = []
    for i in body["result"]:
        if i["kind"] == "option":
            instruments.append(
                inst(
                    i["strike"],
                    i["option_type"] == "call",
                    i["expiration_timestamp"] * 1_000_000,
                    tick=i["tick_size"],
                    symbol=i["instrument_name"],
                )
            )
    instruments_by_symbol = {i.symbol: i for i in instruments}
    core = IvCore("deribit", "BTC", IvConfig(forward_policy=policy))
    core.on_instruments(iset(instruments))
    path = venue_fixtures / "deribit" / "ws_ticker_options_2021-07-22.jsonl"
    checked = stale_quotes = 0
    for line in path.read_text().splitlines():
        row = json.loads(line)["params"]["data"]
        if not row["instrument_name"].startswith("BTC-"):
            continue
        t_ns = row["timestamp"] * 1_000_000
        msg = ticker(
            row["instrument_name"],
            t=t_ns,
            mark_price_native=row["mark_price"],
            forward_usd=row["underlying_price"],
            index_price_usd=row["index_price"],
            mark_iv=row["mark_iv"] / 100,
        )
        if row["best_bid_price"] > 0:
            msg.best_bid_price_native = row["best_bid_price"]
        if row["best_ask_price"] > 0:
            msg.best_ask_price_native = row["best_ask_price"]
        core.on_ticker(msg)
        smiles = {s.expiry_time_ns: s for s in core.flush(t_ns)}
        smile = smiles[instruments_by_symbol[row["instrument_name"]].expiry_time_ns]
        assert smile.forward_usd == row["underlying_price"]
        assert smile.forward_source == common_pb.FORWARD_SOURCE_VENUE
        quotes = by_symbol(smile)
        quote = quotes[row["instrument_name"]]
        # Our mark IV against the venue's (percent) and the venue's IV carried beside it.
        assert abs(quote.mark_iv * 100 - row["mark_iv"]) <= 0.02
        assert quote.venue_mark_iv == row["mark_iv"] / 100
        # Every other bid and ask of the expiry within 1 bp of an exact solve now, on the
        # forward of its last price change (log_moneyness says which).
        t = smile.time_to_expiry_years
        for q in smile.quotes:
            own_forward = q.strike_usd / math.exp(q.log_moneyness)
            for price, iv, status in (
                (q.bid_price_usd_per_coin, q.bid_iv, q.bid_iv_status),
                (q.ask_price_usd_per_coin, q.ask_iv, q.ask_iv_status),
            ):
                if status == OK:
                    exact, _ = implied_vol(price, own_forward, q.strike_usd, t, q.option_kind == 1)
                    assert abs(iv - float(exact)) <= 1e-4
                    stale_quotes += abs(own_forward / smile.forward_usd - 1.0) > 1e-9
        checked += 1
    assert checked > 40
    # "quote": the underlying moved under quotes that did not; "current": every quote is on
    # the smile's forward.
    assert (stale_quotes > 0) == (policy == "quote")
    assert core.stats.skipped_solves + core.stats.partial_solves > 0


def test_market_data_events_route_and_odd_instruments_do_not_raise() -> None:
    core = IvCore("deribit", "BTC")
    odd = [
        inst(40_000, True),
        inst(40_000, True),  # the same symbol twice
        inst(math.nan, False, symbol="nan-strike"),
        inst(-5.0, True, symbol="negative-strike"),
        inst(45_000, True, unit=md_pb.PREMIUM_UNIT_UNSPECIFIED, symbol="no-unit"),
        inst(45_000, True, unit=CONTRACT, size=0.0, symbol="zero-size"),
        inst(45_000, True, expiry=0, symbol="epoch-expiry"),
        md_pb.Instrument(symbol="no-kind", kind=md_pb.INSTRUMENT_KIND_OPTION, expiry_time_ns=EXP1),
    ]
    core.on_market_data(md_pb.MarketDataEvent(instrument_set=iset(odd)))
    core.on_market_data(
        md_pb.MarketDataEvent(
            index_price=md_pb.IndexPrice(
                header=common_pb.EventHeader(event_time_ns=NOW), price_usd=F
            )
        )
    )
    for symbol in ("nan-strike", "negative-strike", "no-unit", "zero-size", name(40_000, True)):
        core.on_market_data(
            md_pb.MarketDataEvent(ticker=ticker(symbol, mark_price_native=0.01, forward_usd=F))
        )
    core.on_market_data(md_pb.MarketDataEvent(book_reset=md_pb.BookReset(symbol="x")))  # not ours
    smiles = core.flush(NOW)
    assert [s.expiry_time_ns for s in smiles] == [EXP1]  # the epoch expiry is long expired
    q = by_symbol(smiles[0])
    assert len(smiles[0].quotes) == 5 and "no-kind" not in q
    assert q[name(40_000, True)].mark_iv_status == OK
    assert q["nan-strike"].mark_iv_status == BAD
    assert q["negative-strike"].mark_iv_status == BAD
    assert q["no-unit"].mark_iv_status == BAD  # a price without a USD value
    assert q["zero-size"].mark_iv_status == BAD
    assert q["no-unit"].bid_iv_status == MISSING  # no price at all
    assert core.stats.ignored == 1 and core.stats.expiries_dropped == 1


@pytest.mark.filterwarnings("error")
def test_random_event_storm_never_raises() -> None:
    """Random tops, tickers, index prices and instrument sets with hostile values."""
    rng = np.random.default_rng(17)
    values = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-300, 0.0005, 0.01, 0.3, 1.5, 4e4, 1e308]
    strikes = [30_000.0, 40_000.0, 50_000.0, math.nan, 0.0]
    sets = [
        iset([inst(k, c, e) for k in strikes[:3] for c in (True, False) for e in (EXP1, EXP2)]),
        iset(
            [inst(k, c, EXP2, unit=int(rng.integers(0, 4))) for k in strikes for c in (True, False)]
        ),
        iset([]),
    ]
    symbols = [name(k, c, e) for k in strikes for c in (True, False) for e in (EXP1, EXP2)]
    symbols.append("unknown")

    def pick() -> float | None:
        return None if rng.random() < 0.2 else values[int(rng.integers(len(values)))]

    core = IvCore("deribit", "BTC")
    now = NOW
    emitted = 0
    for step in range(1500):
        now += int(rng.integers(0, 10 * NS))
        roll = rng.random()
        symbol = symbols[int(rng.integers(len(symbols)))]
        if roll < 0.02:
            core.on_instruments(sets[int(rng.integers(len(sets)))])
        elif roll < 0.5:
            core.on_top(
                top(
                    symbol,
                    pick(),
                    pick(),
                    t=now,
                    status=int(rng.integers(0, 4)),
                    stale=bool(rng.random() < 0.1),
                    crossed=bool(rng.random() < 0.1),
                )
            )
        elif roll < 0.9:
            fields = {
                key: value
                for key in (
                    "mark_price_native",
                    "forward_usd",
                    "index_price_usd",
                    "mark_iv",
                    "bid_iv",
                )
                if (value := pick()) is not None
            }
            core.on_ticker(ticker(symbol, t=now, **fields))
        else:
            core.on_index(
                md_pb.IndexPrice(
                    header=common_pb.EventHeader(event_time_ns=now), price_usd=pick() or 0.0
                )
            )
        if step % 7 == 0:
            for smile in core.flush(now):
                emitted += 1
                for q in smile.quotes:
                    for side in ("bid", "ask", "mark"):
                        status = getattr(q, f"{side}_iv_status")
                        assert (status == OK) == math.isfinite(getattr(q, f"{side}_iv"))
    assert emitted > 0
    assert core.stats.flushes == 1500 // 7 + 1
