"""Contract sizes carry their unit, and every venue says what its sizes count (venue-shaped
REST bodies: the recorded Deribit and OKX lists, Bybit and Binance entries)."""

from __future__ import annotations

import json
from pathlib import Path

from svc_connector.venues.binance.parse import parse_instruments as binance_instruments
from svc_connector.venues.bybit.parse import parse_instruments as bybit_instruments
from svc_connector.venues.deribit.parse import parse_instruments as deribit_instruments
from svc_connector.venues.okx.parse import parse_instruments as okx_instruments
from volstream.v1 import market_data_pb2 as md_pb

COIN = md_pb.SIZE_UNIT_COIN
USD = md_pb.SIZE_UNIT_USD
CONTRACT = md_pb.SIZE_UNIT_CONTRACT


def test_deribit_inverse_futures_are_usd_per_contract(venue_fixtures: Path) -> None:
    body = (venue_fixtures / "deribit" / "rest_get_instruments_BTC_2021-07-22.json").read_text()
    by_symbol = {i.symbol: i for i in deribit_instruments(body, 1).instruments}
    perpetual, future = by_symbol["BTC-PERPETUAL"], by_symbol["BTC-25MAR22"]
    for inverse in (perpetual, future):
        # 10 USD per contract, amounts in USD: not 10 coins.
        assert (inverse.contract_size, inverse.contract_size_unit) == (10.0, USD)
        assert inverse.contract_size_coin == 0.0 and inverse.size_unit == USD
    option = by_symbol["BTC-24SEP21-40000-P"]
    assert (option.contract_size, option.contract_size_unit, option.size_unit) == (1.0, COIN, COIN)
    assert option.contract_size_coin == 1.0
    # A USDC-linear future states its contract in coins.
    linear = {
        "tick_size": 2.5,
        "settlement_period": "month",
        "quote_currency": "USDC",
        "settlement_currency": "USDC",
        "instrument_type": "linear",
        "min_trade_amount": 0.001,
        "kind": "future",
        "is_active": True,
        "state": "open",
        "instrument_name": "BTC_USDC-29MAR24",
        "expiration_timestamp": 1711699200000,
        "contract_size": 0.001,
        "base_currency": "BTC",
    }
    (usdc,) = deribit_instruments(json.dumps({"result": [linear]}), 1).instruments
    assert (usdc.contract_size, usdc.contract_size_unit, usdc.size_unit) == (0.001, COIN, COIN)
    assert usdc.contract_size_coin == 0.001


def test_okx_sizes_count_contracts_of_ctval(venue_fixtures: Path) -> None:
    body = (venue_fixtures / "okx" / "rest_instruments_OPTION_BTC-USD_2022-05-13.json").read_text()
    options = okx_instruments(body, 1).instruments
    assert len(options) == 346
    for option in options:
        assert (option.contract_size, option.contract_size_unit) == (0.1, COIN)
        assert option.contract_size_coin == 0.1 and option.size_unit == CONTRACT
    future = {
        "instId": "BTC-USD-220527",
        "instType": "FUTURES",
        "instFamily": "BTC-USD",
        "uly": "BTC-USD",
        "settleCcy": "BTC",
        "ctVal": "100",
        "ctValCcy": "USD",
        "ctMult": "1",
        "tickSz": "0.1",
        "lotSz": "1",
        "minSz": "1",
        "expTime": "1653638400000",
        "state": "live",
    }
    (inverse,) = okx_instruments(json.dumps({"code": "0", "data": [future]}), 1).instruments
    assert (inverse.contract_size, inverse.contract_size_unit) == (100.0, USD)
    assert inverse.contract_size_coin == 0.0 and inverse.size_unit == CONTRACT


def test_bybit_counts_coins_and_binance_contracts_of_unit() -> None:
    entry = {
        "symbol": "BTC-27DEC24-100000-C",
        "status": "Trading",
        "baseCoin": "BTC",
        "settleCoin": "USDC",
        "optionsType": "Call",
        "deliveryTime": "1735286400000",
        "priceFilter": {"minPrice": "5", "maxPrice": "1000000", "tickSize": "5"},
        "lotSizeFilter": {"maxOrderQty": "500", "minOrderQty": "0.01", "qtyStep": "0.01"},
    }
    body = json.dumps({"retCode": 0, "result": {"list": [entry]}})
    (bybit,) = bybit_instruments(body, 1).instruments
    assert (bybit.contract_size, bybit.contract_size_unit, bybit.size_unit) == (1.0, COIN, COIN)
    xrp = {
        "symbol": "XRP-251219-2.5-C",
        "side": "CALL",
        "strikePrice": "2.5",
        "underlying": "XRPUSDT",
        "unit": 100,
        "expiryDate": 1766131200000,
        "quoteAsset": "USDT",
        "status": "TRADING",
        "filters": [{"filterType": "PRICE_FILTER", "tickSize": "0.0001"}],
    }
    (binance,) = binance_instruments(json.dumps({"optionSymbols": [xrp]}), 1).instruments
    assert (binance.contract_size, binance.contract_size_unit) == (100.0, COIN)
    assert binance.contract_size_coin == 100.0 and binance.size_unit == CONTRACT
