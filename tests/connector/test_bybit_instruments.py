"""Bybit option symbols, paged instruments-info parsing, channel planning, registry entry."""

from __future__ import annotations

from datetime import UTC, date, datetime

import orjson
import pytest

from svc_connector.venues import registry
from svc_connector.venues.base import ConnectorConfig, Endpoints
from svc_connector.venues.bybit.client import BybitSettings, plan_channel_groups
from svc_connector.venues.bybit.parse import parse_instruments, parse_instruments_page
from svc_connector.venues.bybit.symbols import currency_of, format_symbol, parse_symbol
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb


def test_symbols() -> None:
    symbol = parse_symbol("BTC-6JAN23-17500-C")
    assert symbol is not None
    assert (symbol.currency, symbol.strike, symbol.settle) == ("BTC", 17500.0, "USDC")
    assert symbol.expiry == date(2023, 1, 6)
    assert symbol.expiry_time_ns == int(datetime(2023, 1, 6, 8, tzinfo=UTC).timestamp() * 1e9)
    assert symbol.option_kind == common_pb.OPTION_KIND_CALL
    usdt = parse_symbol("BTC-27DEC24-60000-P-USDT")
    assert usdt is not None and usdt.settle == "USDT"
    assert usdt.option_kind == common_pb.OPTION_KIND_PUT
    decimal = parse_symbol("SOL-28APR23-22.5-C")
    assert decimal is not None and decimal.strike == 22.5
    assert format_symbol("BTC", date(2023, 1, 6), 17500, True) == "BTC-6JAN23-17500-C"
    assert format_symbol("BTC", date(2024, 12, 27), 60000, False, "USDT") == (
        "BTC-27DEC24-60000-P-USDT"
    )
    for bad in ("BTCUSDT", "BTC-32JAN23-1-C", "BTC-6XXX23-1-C", "BTC-6JAN23-1-X"):
        assert parse_symbol(bad) is None, bad
    assert currency_of("BTCUSDT") == "BTC" and currency_of("SOL-28APR23-30-C") == "SOL"


def _entry(symbol: str, **changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "symbol": symbol,
        "status": "Trading",
        "baseCoin": symbol.split("-")[0],
        "quoteCoin": "USD",
        "settleCoin": "USDT" if symbol.endswith("-USDT") else "USDC",
        "optionsType": "Call" if "-C" in symbol else "Put",
        "launchTime": "1672560000000",
        "deliveryTime": "1688112000000",
        "deliveryFeeRate": "0.00015",
        "priceFilter": {"minPrice": "5", "maxPrice": "10000000", "tickSize": "5"},
        "lotSizeFilter": {"maxOrderQty": "10000", "minOrderQty": "0.01", "qtyStep": "0.01"},
    }
    entry.update(changes)
    return entry


def _page(entries: list[object], cursor: str) -> bytes:
    return orjson.dumps(
        {
            "retCode": 0,
            "retMsg": "success",
            "result": {"category": "option", "nextPageCursor": cursor, "list": entries},
            "retExtInfo": {},
            "time": 1672712537130,
        }
    )


def test_instruments_page_with_cursor() -> None:
    body = _page(
        [
            _entry("BTC-30JUN23-20000-C"),
            _entry("BTC-30JUN23-20000-P-USDT"),
            _entry("BTC-30JUN23-21000-C", status="Delivering"),
        ],
        "0%2C2",
    )
    result, cursor = parse_instruments_page(body, 1)
    assert cursor == "0%2C2"
    assert result.venue_time_ns == 1672712537130 * 1_000_000
    assert result.dead_letters == []
    usdc, usdt, delivering = result.instruments
    assert usdc.strike_usd == 20000.0  # from the symbol: the list has no strike field
    assert usdc.expiry_time_ns == 1688112000000 * 1_000_000
    assert usdc.premium_unit == md_pb.PREMIUM_UNIT_USD_PER_COIN
    assert usdc.premium_currency == usdc.settlement_currency == "USDC"
    assert usdc.contract_size_coin == 1.0 and usdc.tick_size_native == 5.0
    assert usdc.min_size_native == 0.01 and usdc.is_active
    assert usdt.premium_currency == "USDT" and usdt.option_kind == common_pb.OPTION_KIND_PUT
    assert not delivering.is_active
    last, no_cursor = parse_instruments_page(_page([], ""), 1)
    assert no_cursor == "" and last.instruments == []
    assert parse_instruments(body, 1).instruments[0].symbol == "BTC-30JUN23-20000-C"


def test_bad_entries_and_error_bodies() -> None:
    body = _page(
        [
            _entry("BTC-30JUN23-20000-C"),
            _entry("NOT-A-SYMBOL"),
            _entry("BTC-30JUN23-20000-P", optionsType="Call"),
            _entry("BTC-30JUN23-19000-C", priceFilter=None),
            "x",
        ],
        "",
    )
    result = parse_instruments(body, 1)
    assert [i.symbol for i in result.instruments] == ["BTC-30JUN23-20000-C"]
    reasons = [d.reason for d in result.dead_letters]
    assert "parse strike/expiry" in reasons[0]
    assert "contradicts the symbol" in reasons[1]
    assert "'priceFilter'" in reasons[2]
    assert "not an object" in reasons[3]
    error = parse_instruments(b'{"retCode":10001,"retMsg":"params error","result":{}}', 1)
    assert error.venue_errors[0].code == "10001" and error.venue_errors[0].message == "params error"
    assert (
        "no result list"
        in parse_instruments(b'{"retCode":0,"result":{}}', 1).dead_letters[0].reason
    )


def test_channel_plan_and_settings() -> None:
    instruments = parse_instruments(
        _page(
            [
                _entry("BTC-30JUN23-20000-C"),
                _entry("ETH-30JUN23-2000-C"),
                _entry("BTC-30JUN23-21000-C", status="Delivering"),
            ],
            "",
        ),
        1,
    ).instruments
    settings = BybitSettings.from_config(ConnectorConfig(currencies=("BTC",)))
    assert plan_channel_groups(instruments, settings) == {
        "BTC-30JUN23-20000-C": ("orderbook.25.BTC-30JUN23-20000-C", "tickers.BTC-30JUN23-20000-C")
    }
    deep = BybitSettings.from_config(ConnectorConfig(venue_options={"book_depth": "100"}))
    assert plan_channel_groups(instruments, deep)["ETH-30JUN23-2000-C"][0] == (
        "orderbook.100.ETH-30JUN23-2000-C"
    )
    with pytest.raises(ValueError, match="book depth"):
        BybitSettings.from_config(ConnectorConfig(venue_options={"book_depth": "50"}))
    runtime = settings.runtime
    assert runtime.max_channels_per_connection == 2000  # the venue's per-connection cap
    assert runtime.heartbeat_interval_s == 20.0


def test_registry_entry() -> None:
    adapter = registry.get("bybit")
    assert adapter.source == "connector.bybit"
    live = adapter.resolve_endpoints(ConnectorConfig())
    assert live == Endpoints("wss://stream.bybit.com/v5/public/option", "https://api.bybit.com")
    testnet = adapter.resolve_endpoints(ConnectorConfig(environment="testnet"))
    assert testnet.ws_url == "wss://stream-testnet.bybit.com/v5/public/option"
    sim = adapter.simulator_endpoints("http://h:1/bybit", "ws://h:1/bybit/")
    assert sim == Endpoints("ws://h:1/bybit/v5/public/option", "http://h:1/bybit")
