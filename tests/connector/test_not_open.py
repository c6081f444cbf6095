"""An instrument that is not open publishes no IV and leaves every smile at once; a ticker
never yields an IV for a price it dropped. Messages shaped like the venues' own: Deribit's
lifecycle states (January 2026) on tickers, REST and ``instrument.state``; OKX's
``instruments`` channel and REST ``state``; Bybit's and Binance's REST ``status``."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from typing import Any

import orjson
import pytest

from bench.bench_connector import _new_session
from svc_connector.runtime.pool import PooledConnector
from svc_connector.venues import registry
from svc_connector.venues.base import ConnectorConfig, MemorySink
from svc_connector.venues.binance.parse import parse_instruments as binance_instruments
from svc_connector.venues.bybit.client import BybitSettings, plan_channel_groups
from svc_connector.venues.bybit.parse import parse_instruments as bybit_instruments
from svc_connector.venues.deribit import DeribitSession
from svc_connector.venues.deribit.parse import parse_frame, parse_instruments
from svc_connector.venues.okx.parse import parse_instruments as okx_instruments
from svc_iv.core import IvCore
from tests.connector.hot_path import frame_view
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb

NOT_OPEN = ("locked", "settlement", "delivered", "inactive", "halted", "archivized")
CALL = "BTC-6AUG21-40000-C"
PUT = "BTC-6AUG21-40000-P"
EXPIRY_MS = 1628236800000  # 6 Aug 2021 08:00 UTC
T0_MS = 1626993723632


def _rest_option(name: str, **extra: Any) -> dict[str, Any]:
    """A get_instruments entry as Deribit sends it since January 2026."""
    return {
        "tick_size": 0.0005,
        "strike": 40000.0,
        "settlement_period": "week",
        "quote_currency": "BTC",
        "option_type": "call" if name.endswith("-C") else "put",
        "min_trade_amount": 0.1,
        "kind": "option",
        "is_active": True,
        "state": "open",
        "instrument_name": name,
        "expiration_timestamp": EXPIRY_MS,
        "contract_size": 1.0,
        "base_currency": "BTC",
        "settlement_currency": "BTC",
        "price_index": "btc_usd",
        **extra,
    }


def _instruments(*entries: dict[str, Any]) -> list[md_pb.Instrument]:
    parsed = parse_instruments(json.dumps({"jsonrpc": "2.0", "result": list(entries)}), 1)
    assert not parsed.dead_letters
    return list(parsed.instruments)


def _ticker(name: str, ms: int, **over: Any) -> str:
    data: dict[str, Any] = {
        "underlying_price": 40210.5,
        "underlying_index": "BTC-6AUG21",
        "timestamp": ms,
        "state": "open",
        "settlement_price": 0.0,
        "open_interest": 12.0,
        "mark_price": 0.0402,
        "mark_iv": 80.11,
        "last_price": 0.04,
        "interest_rate": 0.0,
        "instrument_name": name,
        "index_price": 40190.2,
        "greeks": {"vega": 40.1, "theta": -90.2, "rho": 5.1, "gamma": 0.00004, "delta": 0.52},
        "bid_iv": 78.5,
        "best_bid_price": 0.0395,
        "best_bid_amount": 3.0,
        "best_ask_price": 0.041,
        "best_ask_amount": 2.5,
        "ask_iv": 81.9,
        **over,
    }
    channel = f"ticker.{name}.raw"
    message = {
        "jsonrpc": "2.0",
        "method": "subscription",
        "params": {"channel": channel, "data": data},
    }
    return json.dumps(message)


def _core(instruments: list[md_pb.Instrument]) -> IvCore:
    core = IvCore("deribit", "BTC")
    core.on_instruments(
        md_pb.InstrumentSet(venue="deribit", currency="BTC", instruments=instruments)
    )
    return core


def _feed(core: IvCore, raw: str, t_ms: int) -> iv_pb.Smile:
    for event in parse_frame(raw, t_ms * 1_000_000).events:
        core.on_market_data(event.event)
    (smile,) = core.flush(t_ms * 1_000_000)
    return smile


def _quote(smile: iv_pb.Smile, symbol: str) -> iv_pb.SmileQuote:
    return {q.symbol: q for q in smile.quotes}[symbol]


# ---- Deribit --------------------------------------------------------------------------------
@pytest.mark.parametrize("state", NOT_OPEN)
def test_a_deribit_ticker_not_open_yields_no_price_and_no_iv(state: str) -> None:
    core = _core(_instruments(_rest_option(CALL), _rest_option(PUT)))
    quote = _quote(_feed(core, _ticker(CALL, T0_MS), T0_MS), CALL)
    assert math.isfinite(quote.bid_iv) and math.isfinite(quote.mark_iv)
    # The same prices and IVs, but the book is no longer open.
    raw = _ticker(CALL, T0_MS + 100, state=state)
    (event,) = parse_frame(raw, 1).events
    ticker = event.event.ticker
    for field in ("best_bid_price_native", "best_ask_price_native", "mark_price_native"):
        assert not ticker.HasField(field), field
    for field in ("bid_iv", "ask_iv", "mark_iv", "delta"):
        assert not ticker.HasField(field), field
    assert ticker.forward_usd == 40210.5 and ticker.index_price_usd == 40190.2
    # The state is news for the connector too (withdrawn like an instrument.state change).
    assert [(s.symbol, s.state) for s in parse_frame(raw, 1).instrument_states] == [(CALL, state)]
    quote = _quote(_feed(core, raw, T0_MS + 100), CALL)
    assert [quote.bid_iv_status, quote.ask_iv_status, quote.mark_iv_status] == [
        iv_pb.IV_STATUS_MISSING_PRICE
    ] * 3
    for value in (quote.bid_iv, quote.ask_iv, quote.mark_iv, quote.venue_bid_iv):
        assert math.isnan(value)


def test_a_dropped_side_or_mark_leaves_no_iv_behind() -> None:
    core = _core(_instruments(_rest_option(CALL), _rest_option(PUT)))
    _feed(core, _ticker(CALL, T0_MS), T0_MS)
    # Deribit's empty side: price 0 (or null) with amount 0, IV 0; a mark of 0.
    raw = _ticker(
        CALL,
        T0_MS + 100,
        best_bid_price=0.0,
        best_bid_amount=0.0,
        bid_iv=0.0,
        best_ask_price=None,
        best_ask_amount=0.0,
        ask_iv=0.0,
        mark_price=0.0,
    )
    quote = _quote(_feed(core, raw, T0_MS + 100), CALL)
    for value in (quote.bid_iv, quote.ask_iv, quote.mark_iv, quote.venue_bid_iv):
        assert math.isnan(value)
    assert quote.bid_iv_status == iv_pb.IV_STATUS_MISSING_PRICE


def test_hot_and_checked_paths_agree_on_every_state() -> None:
    instruments = _instruments(_rest_option(CALL))
    sessions = []
    for hot_path in (False, True):
        session = _new_session("deribit", instruments)
        assert isinstance(session, DeribitSession)
        session._shared_sequence = itertools.count(1).__next__
        session.hot_path = hot_path
        sessions.append(session)
    checked, hot = sessions
    frames = [_ticker(CALL, T0_MS + i, state=s) for i, s in enumerate(("open", *NOT_OPEN))]
    for frame in frames:
        assert frame_view(hot.on_frame(frame, 5)) == frame_view(checked.on_frame(frame, 5))
    assert hot.hot_hits == 1  # the open one; the others go to the checked path


def test_deribit_rest_state_decides_activity() -> None:
    entries = [_rest_option(CALL, state=s) for s in NOT_OPEN]
    for instrument in _instruments(*entries):
        assert not instrument.is_active
    (open_one,) = _instruments(_rest_option(CALL))
    assert open_one.is_active
    # Older bodies without `state`: is_active.
    old = _rest_option(CALL, is_active=False)
    del old["state"]
    (instrument,) = _instruments(old)
    assert not instrument.is_active


def _state_frame(name: str, state: str) -> str:
    channel = "instrument.state.any.any"
    data = {"timestamp": T0_MS, "state": state, "instrument_name": name}
    return json.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
    )


@pytest.mark.parametrize(
    ("venue", "symbols", "frame"),
    [
        ("deribit", (CALL, PUT), _state_frame(CALL, "halted")),
        ("deribit", (CALL, PUT), _ticker(CALL, T0_MS, state="locked")),
        (
            "okx",
            ("BTC-USD-210806-40000-C", "BTC-USD-210806-40000-P"),
            orjson.dumps(
                {
                    "arg": {"channel": "instruments", "instType": "OPTION"},
                    "data": [
                        {
                            "instId": "BTC-USD-210806-40000-C",
                            "instType": "OPTION",
                            "state": "suspend",
                        }
                    ],
                }
            ).decode(),
        ),
    ],
)
def test_a_state_change_withdraws_the_instrument_from_every_smile_at_once(
    venue: str, symbols: tuple[str, str], frame: str
) -> None:
    """The connector publishes a new InstrumentSet without it at once (no REST refresh in
    between); the IV core's next smile leaves it out."""

    async def scenario() -> tuple[list[md_pb.MarketDataEvent], MemorySink]:
        sink = MemorySink()
        connector = registry.get(venue).make_connector(ConnectorConfig(currencies=("BTC",)), sink)
        assert isinstance(connector, PooledConnector)
        instruments = [
            md_pb.Instrument(
                venue=venue,
                symbol=s,
                currency="BTC",
                kind=md_pb.INSTRUMENT_KIND_OPTION,
                option_kind=common_pb.OPTION_KIND_CALL
                if s.endswith("C")
                else common_pb.OPTION_KIND_PUT,
                strike_usd=40_000.0,
                expiry_time_ns=EXPIRY_MS * 1_000_000,
                premium_unit=md_pb.PREMIUM_UNIT_COIN_PER_COIN,
                contract_size_coin=1.0,
                tick_size_native=0.0005,
                is_active=True,
            )
            for s in symbols
        ]
        connector.instruments = {"BTC": {i.symbol: i for i in instruments}}
        session = connector.new_session()
        result = session.on_frame(frame, 1)
        connector.on_result(None, result)  # type: ignore[arg-type]
        await sink.wait_for(lambda s: bool(s.of_case("instrument_set")), 5.0)
        return [
            md_pb.MarketDataEvent(instrument_set=md_pb.InstrumentSet(instruments=instruments))
        ], sink

    (before,), sink = asyncio.run(scenario())
    (withdrawn,) = sink.of_case("instrument_set")
    closed, still_open = symbols
    assert withdrawn.instrument_set.delisted_symbols == [closed]
    assert [i.symbol for i in withdrawn.instrument_set.instruments] == [still_open]
    assert sink.counters["discovery.withdrawn"] == 1
    assert sink.counters["discovery.early_refresh"] == 1

    core = IvCore(venue, "BTC")
    core.on_instruments(before.instrument_set)
    (smile,) = core.flush(T0_MS * 1_000_000)
    assert {q.symbol for q in smile.quotes} == set(symbols)
    core.on_instruments(withdrawn.instrument_set)
    (smile,) = core.flush(T0_MS * 1_000_000 + 1)
    assert [q.symbol for q in smile.quotes] == [still_open]


# ---- OKX, Bybit, Binance: REST states ---------------------------------------------------------
def test_okx_bybit_binance_rest_states_other_than_trading_are_inactive() -> None:
    okx = okx_instruments(
        orjson.dumps(
            {
                "code": "0",
                "data": [
                    {
                        "instId": f"BTC-USD-210806-4000{n}-C",
                        "instType": "OPTION",
                        "instFamily": "BTC-USD",
                        "uly": "BTC-USD",
                        "optType": "C",
                        "stk": f"4000{n}",
                        "expTime": str(EXPIRY_MS),
                        "settleCcy": "BTC",
                        "ctVal": "0.01",
                        "ctValCcy": "BTC",
                        "ctMult": "1",
                        "tickSz": "0.0005",
                        "lotSz": "1",
                        "minSz": "1",
                        "state": state,
                    }
                    for n, state in enumerate(("live", "suspend", "preopen", "expired"))
                ],
            }
        ),
        1,
    )
    assert [i.is_active for i in okx.instruments] == [True, False, False, False]

    def bybit_entry(n: int, status: str) -> dict[str, Any]:
        return {
            "symbol": f"BTC-6AUG21-4000{n}-C",
            "status": status,
            "baseCoin": "BTC",
            "settleCoin": "USDC",
            "optionsType": "Call",
            "deliveryTime": str(EXPIRY_MS),
            "priceFilter": {"minPrice": "5", "maxPrice": "1000000", "tickSize": "5"},
            "lotSizeFilter": {"maxOrderQty": "500", "minOrderQty": "0.01", "qtyStep": "0.01"},
        }

    statuses = ("Trading", "PreLaunch", "Delivering", "Closed")
    body = {"retCode": 0, "result": {"list": [bybit_entry(n, s) for n, s in enumerate(statuses)]}}
    bybit = bybit_instruments(json.dumps(body), 1)
    assert [i.is_active for i in bybit.instruments] == [True, False, False, False]
    settings = BybitSettings.from_config(ConnectorConfig(currencies=("BTC",)))
    assert list(plan_channel_groups(bybit.instruments, settings)) == ["BTC-6AUG21-40000-C"]

    entries = [
        {
            "symbol": f"BTC-210806-4000{n}-C",
            "side": "CALL",
            "strikePrice": f"4000{n}",
            "underlying": "BTCUSDT",
            "unit": 1,
            "expiryDate": EXPIRY_MS,
            "quoteAsset": "USDT",
            "status": status,
            "filters": [{"filterType": "PRICE_FILTER", "tickSize": "5"}],
        }
        for n, status in enumerate(("TRADING", "PENDING_TRADING", "BREAK", "CLOSE"))
    ]
    binance = binance_instruments(json.dumps({"optionSymbols": entries}), 1)
    assert [i.is_active for i in binance.instruments] == [True, False, False, False]


# ---- Combinations never enter a smile ---------------------------------------------------------
def test_deribit_combinations_never_enter_a_smile() -> None:
    """get_instruments lists combos beside options (kind option_combo / future_combo); they
    are skipped and counted, and a combo's ticker never becomes a quote."""
    combo = _rest_option(
        "BTC-CS-6AUG21-40000_45000",
        kind="option_combo",
        option_type=None,
        strike=None,
    )
    future_combo = {
        **_rest_option("BTC-FS-6AUG21_PERP"),
        "kind": "future_combo",
        "quote_currency": "USD",
    }
    body = json.dumps({"result": [_rest_option(CALL), _rest_option(PUT), combo, future_combo]})
    parsed = parse_instruments(body, 1)
    assert [i.symbol for i in parsed.instruments] == [CALL, PUT]
    assert parsed.counts["instrument.skipped.option_combo"] == 1
    assert parsed.counts["instrument.skipped.future_combo"] == 1
    core = _core(list(parsed.instruments))
    smile = _feed(core, _ticker(CALL, T0_MS), T0_MS)
    for event in parse_frame(_ticker("BTC-CS-6AUG21-40000_45000", T0_MS + 1), 1).events:
        core.on_market_data(event.event)
    core.on_instruments(
        md_pb.InstrumentSet(venue="deribit", currency="BTC", instruments=list(parsed.instruments))
    )
    smiles = core.flush(T0_MS * 1_000_000 + 2_000_000)
    assert {q.symbol for s in [smile, *smiles] for q in s.quotes} == {CALL, PUT}
    assert core.stats.unknown_symbol_events == 1
