"""Deribit instrument names and REST instrument parsing."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest

from svc_connector.venues.deribit.parse import parse_instruments
from svc_connector.venues.deribit.symbols import (
    currency_of,
    currency_of_index,
    format_future_name,
    format_option_name,
    parse_instrument_name,
    premium_unit_from_name,
)
from tests.connector.deribit_fixtures import deribit_dir
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb


def test_inverse_option_name() -> None:
    symbol = parse_instrument_name("BTC-6AUG21-40000-C")
    assert symbol is not None
    assert (symbol.currency, symbol.quote, symbol.strike) == ("BTC", "", 40000.0)
    assert symbol.kind == md_pb.INSTRUMENT_KIND_OPTION
    assert symbol.option_kind == common_pb.OPTION_KIND_CALL
    assert symbol.expiry == date(2021, 8, 6)
    assert symbol.expiry_time_ns == int(datetime(2021, 8, 6, 8, tzinfo=UTC).timestamp() * 1e9)
    assert format_option_name("BTC", date(2021, 8, 6), 40000, True) == "BTC-6AUG21-40000-C"


def test_usdc_linear_option_name_with_decimal_strike() -> None:
    symbol = parse_instrument_name("MATIC_USDC-9MAR24-1d02-C")
    assert symbol is not None
    assert (symbol.currency, symbol.quote, symbol.is_linear) == ("MATIC", "USDC", True)
    assert symbol.strike == pytest.approx(1.02)
    assert symbol.expiry == date(2024, 3, 9)
    assert format_option_name("MATIC", date(2024, 3, 9), 1.02, True, "USDC") == (
        "MATIC_USDC-9MAR24-1d02-C"
    )
    assert premium_unit_from_name("MATIC_USDC-9MAR24-1d02-C") == md_pb.PREMIUM_UNIT_USD_PER_COIN
    assert premium_unit_from_name("BTC-6AUG21-40000-P") == md_pb.PREMIUM_UNIT_COIN_PER_COIN


@pytest.mark.parametrize(
    ("name", "kind", "expiry"),
    [
        ("BTC-25MAR22", md_pb.INSTRUMENT_KIND_FUTURE, date(2022, 3, 25)),
        ("BTC_USDC-29MAR24", md_pb.INSTRUMENT_KIND_FUTURE, date(2024, 3, 29)),
        ("BTC-PERPETUAL", md_pb.INSTRUMENT_KIND_PERPETUAL, None),
        ("ETH_USDC-PERPETUAL", md_pb.INSTRUMENT_KIND_PERPETUAL, None),
    ],
)
def test_future_names(name: str, kind: int, expiry: date | None) -> None:
    symbol = parse_instrument_name(name)
    assert symbol is not None and symbol.kind == kind and symbol.expiry == expiry
    assert format_future_name(symbol.currency, expiry, symbol.quote) == name
    assert premium_unit_from_name(name) == md_pb.PREMIUM_UNIT_USD_PER_COIN


@pytest.mark.parametrize(
    "name",
    ["BTC_USDC", "BTC-FS-29DEC23_PERP", "BTC-6AUG21-40000-X", "BTC-31FEB21-1-C", "", "BTC-6XYZ21"],
)
def test_other_names_are_not_parsed(name: str) -> None:
    assert parse_instrument_name(name) is None


def test_currency_helpers() -> None:
    assert currency_of("MATIC_USDC-9MAR24-1d02-C") == "MATIC"
    assert currency_of("ETH-30JUL21-2800-C") == "ETH"
    assert currency_of_index("btc_usd") == "BTC"
    assert currency_of_index("nonsense") is None


def test_rest_get_instruments_recording(venue_fixtures: Path) -> None:
    path = deribit_dir(venue_fixtures) / "rest_get_instruments_BTC_2021-07-22.json"
    body = path.read_bytes()
    result = parse_instruments(body, 123)
    assert result.dead_letters == [] and result.venue_errors == []
    kinds = Counter(i.kind for i in result.instruments)
    assert kinds[md_pb.INSTRUMENT_KIND_OPTION] == 390
    assert kinds[md_pb.INSTRUMENT_KIND_FUTURE] + kinds[md_pb.INSTRUMENT_KIND_PERPETUAL] == 8
    assert kinds[md_pb.INSTRUMENT_KIND_PERPETUAL] == 1
    assert result.venue_time_ns == orjson.loads(body)["usOut"] * 1000

    raw = {entry["instrument_name"]: entry for entry in orjson.loads(body)["result"]}
    for instrument in result.instruments:
        entry = raw[instrument.symbol]
        assert instrument.venue == "deribit" and instrument.currency == "BTC"
        # Options: coins per contract; inverse futures and the perpetual: USD per contract.
        assert instrument.contract_size == entry["contract_size"]
        if entry["kind"] == "option":
            assert instrument.contract_size_coin == entry["contract_size"]
            assert instrument.contract_size_unit == instrument.size_unit == md_pb.SIZE_UNIT_COIN
        else:
            assert instrument.contract_size_coin == 0.0
            assert instrument.contract_size_unit == instrument.size_unit == md_pb.SIZE_UNIT_USD
        assert instrument.tick_size_native == entry["tick_size"]
        assert instrument.min_size_native == entry["min_trade_amount"]
        assert instrument.settlement_currency == "BTC"  # inverse: settles in the coin
        assert instrument.is_active == entry["is_active"]
        if instrument.kind == md_pb.INSTRUMENT_KIND_OPTION:
            parsed = parse_instrument_name(instrument.symbol)
            assert parsed is not None
            assert instrument.strike_usd == entry["strike"] == parsed.strike
            assert instrument.expiry_time_ns == entry["expiration_timestamp"] * 1_000_000
            # The venue's expiry equals 08:00 UTC on the date in the name.
            assert instrument.expiry_time_ns == parsed.expiry_time_ns
            assert instrument.premium_unit == md_pb.PREMIUM_UNIT_COIN_PER_COIN
            assert instrument.premium_currency == "BTC"
            expected_kind = (
                common_pb.OPTION_KIND_CALL
                if entry["option_type"] == "call"
                else common_pb.OPTION_KIND_PUT
            )
            assert instrument.option_kind == expected_kind
        else:
            # Futures are quoted in USD per coin (quote_currency "USD").
            assert instrument.premium_unit == md_pb.PREMIUM_UNIT_USD_PER_COIN
            # 10 USD per contract (inverse), not 10 coins.
            assert instrument.contract_size == 10.0 and instrument.contract_size_coin == 0.0
    perpetual = next(i for i in result.instruments if i.kind == md_pb.INSTRUMENT_KIND_PERPETUAL)
    assert perpetual.symbol == "BTC-PERPETUAL" and perpetual.expiry_time_ns == 0


def test_current_usdc_linear_instrument_fields_are_read_by_name() -> None:
    entry = {
        "tick_size": 0.0001,
        "taker_commission": 0.0005,
        "strike": 1.02,
        "settlement_period": "day",
        "settlement_currency": "USDC",
        "quote_currency": "USDC",
        "price_index": "matic_usdc",
        "option_type": "call",
        "min_trade_amount": 1.0,
        "kind": "option",
        "is_active": True,
        "instrument_type": "linear",
        "instrument_name": "MATIC_USDC-9MAR24-1d02-C",
        "instrument_id": 350000,
        "expiration_timestamp": 1709971200000,
        "counter_currency": "USDC",
        "contract_size": 10.0,
        "base_currency": "MATIC",
    }
    body = orjson.dumps({"jsonrpc": "2.0", "result": [entry], "usOut": 1709900000000000})
    result = parse_instruments(body, 1)
    assert result.dead_letters == []
    instrument = result.instruments[0]
    assert instrument.currency == "MATIC"
    assert instrument.premium_unit == md_pb.PREMIUM_UNIT_USD_PER_COIN
    assert instrument.premium_currency == "USDC" and instrument.settlement_currency == "USDC"
    assert instrument.contract_size_coin == 10.0
    assert instrument.underlying == "matic_usdc"
    assert instrument.strike_usd == pytest.approx(1.02)


def test_reversed_instrument_type_without_quote_is_coin_per_coin() -> None:
    entry = {
        "instrument_name": "ETH-1DEC23-2000-C",
        "kind": "option",
        "option_type": "call",
        "strike": 2000,
        "expiration_timestamp": 1701417600000,
        "tick_size": 0.0001,
        "contract_size": 1,
        "min_trade_amount": 1,
        "base_currency": "ETH",
        "instrument_type": "reversed",
        "is_active": True,
    }
    result = parse_instruments(orjson.dumps({"result": [entry]}), 1)
    assert result.instruments[0].premium_unit == md_pb.PREMIUM_UNIT_COIN_PER_COIN
    assert result.instruments[0].settlement_currency == "ETH"


def test_bad_instrument_entries_are_dead_lettered_alone() -> None:
    good = {
        "instrument_name": "BTC-6AUG21-40000-C",
        "kind": "option",
        "option_type": "call",
        "strike": 40000,
        "expiration_timestamp": 1628236800000,
        "tick_size": 0.0005,
        "contract_size": 1,
        "min_trade_amount": 0.1,
        "base_currency": "BTC",
        "quote_currency": "BTC",
        "is_active": True,
    }
    no_strike = {k: v for k, v in good.items() if k != "strike"} | {"instrument_name": "BTC-X"}
    no_size = {k: v for k, v in good.items() if k != "contract_size"}
    spot = {"instrument_name": "BTC_USDC", "kind": "spot"}
    body = orjson.dumps({"result": [good, no_strike, no_size, spot, 5]})
    result = parse_instruments(body, 1)
    assert [i.symbol for i in result.instruments] == ["BTC-6AUG21-40000-C"]
    reasons = [d.reason for d in result.dead_letters]
    assert len(reasons) == 3
    assert "'strike'" in reasons[0] and "'contract_size'" in reasons[1]
    assert "not an object" in reasons[2]
    assert result.counts["instrument.skipped.spot"] == 1


def test_venue_error_and_garbage_bodies() -> None:
    error = parse_instruments(
        b'{"jsonrpc":"2.0","error":{"code":10047,"message":"matching_engine_queue_full"}}', 1
    )
    assert error.instruments == [] and error.venue_errors[0].code == "10047"
    garbage = parse_instruments(b"<html>502</html>", 1)
    assert garbage.instruments == [] and "malformed JSON" in garbage.dead_letters[0].reason
    no_list = parse_instruments(b'{"result": {"a": 1}}', 1)
    assert "no result list" in no_list.dead_letters[0].reason
