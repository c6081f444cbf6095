"""OKX instrument ids, REST instrument parsing, channel planning, registry entry."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest

from svc_connector.kit.subscriptions import ChannelAllocator
from svc_connector.venues import registry
from svc_connector.venues.base import ConnectorConfig, Endpoints
from svc_connector.venues.okx.client import OkxSettings, plan_channel_groups
from svc_connector.venues.okx.parse import parse_instruments
from svc_connector.venues.okx.symbols import (
    channel_arg,
    channel_of_arg,
    format_future_id,
    format_option_id,
    parse_instrument_id,
    premium_unit_from_id,
)
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

INSTRUMENTS_FILE = "rest_instruments_OPTION_BTC-USD_2022-05-13.json"


def test_option_and_future_ids() -> None:
    option = parse_instrument_id("BTC-USD-220514-22000-C")
    assert option is not None
    assert (option.currency, option.quote, option.family, option.strike) == (
        "BTC",
        "USD",
        "BTC-USD",
        22000.0,
    )
    assert option.option_kind == common_pb.OPTION_KIND_CALL and option.is_inverse
    assert option.expiry == date(2022, 5, 14)
    assert option.expiry_time_ns == int(datetime(2022, 5, 14, 8, tzinfo=UTC).timestamp() * 1e9)
    assert format_option_id("BTC", date(2022, 5, 14), 22000, True) == "BTC-USD-220514-22000-C"
    future = parse_instrument_id("BTC-USD-220527")
    assert future is not None and future.kind == md_pb.INSTRUMENT_KIND_FUTURE
    assert format_future_id("BTC", date(2022, 5, 27)) == "BTC-USD-220527"
    swap = parse_instrument_id("ETH-USDT-SWAP")
    assert swap is not None and swap.kind == md_pb.INSTRUMENT_KIND_PERPETUAL
    assert format_future_id("ETH", None, "USDT") == "ETH-USDT-SWAP"
    assert premium_unit_from_id("BTC-USD-220514-22000-P") == md_pb.PREMIUM_UNIT_COIN_PER_COIN
    assert premium_unit_from_id("BTC-USD-220527") == md_pb.PREMIUM_UNIT_USD_PER_COIN
    for bad in ("BTC-USD", "BTC-USD-221332-1-C", "BTC-USD-220514-22000-X", ""):
        assert parse_instrument_id(bad) is None, bad


def test_channel_names_round_trip_through_venue_arguments() -> None:
    assert channel_arg("books:BTC-USD-220514-22000-C") == {
        "channel": "books",
        "instId": "BTC-USD-220514-22000-C",
    }
    assert channel_arg("opt-summary:BTC-USD") == {"channel": "opt-summary", "instFamily": "BTC-USD"}
    assert channel_arg("nonsense") is None
    assert channel_of_arg({"channel": "opt-summary", "uly": "ETH-USD"}) == "opt-summary:ETH-USD"
    assert channel_of_arg({"channel": "books"}) is None


def test_rest_instruments_recording(venue_fixtures: Path) -> None:
    body = (venue_fixtures / "okx" / INSTRUMENTS_FILE).read_bytes()
    result = parse_instruments(body, 1)
    assert result.dead_letters == [] and result.venue_errors == []
    assert len(result.instruments) == 346
    assert result.counts["instrument.option"] == 346
    raw = {entry["instId"]: entry for entry in orjson.loads(body)["data"]}
    calls = 0
    for instrument in result.instruments:
        entry = raw[instrument.symbol]
        parsed = parse_instrument_id(instrument.symbol)
        assert parsed is not None
        assert instrument.venue == "okx" and instrument.currency == "BTC"
        assert instrument.kind == md_pb.INSTRUMENT_KIND_OPTION
        # Contract size = ctVal x ctMult (1 x 0.1 BTC in 2022).
        assert instrument.contract_size_coin == pytest.approx(
            float(entry["ctVal"]) * float(entry["ctMult"])
        )
        assert instrument.contract_size_coin == pytest.approx(0.1)
        assert instrument.tick_size_native == float(entry["tickSz"])
        assert instrument.strike_usd == float(entry["stk"]) == parsed.strike
        assert instrument.expiry_time_ns == int(entry["expTime"]) * 1_000_000
        assert instrument.expiry_time_ns == parsed.expiry_time_ns  # 08:00 UTC
        assert instrument.premium_unit == md_pb.PREMIUM_UNIT_COIN_PER_COIN
        assert instrument.premium_currency == instrument.settlement_currency == "BTC"
        assert instrument.underlying == "BTC-USD"  # from "uly" (no instFamily in 2022)
        assert instrument.is_active
        calls += instrument.option_kind == common_pb.OPTION_KIND_CALL
    assert calls == 173


def _option(**changes: str) -> dict[str, str]:
    entry = {
        "instType": "OPTION",
        "instId": "BTC-USD-241227-100000-C",
        "instFamily": "BTC-USD",
        "uly": "BTC-USD",
        "optType": "C",
        "stk": "100000",
        "expTime": "1735286400000",
        "settleCcy": "BTC",
        "ctVal": "1",
        "ctMult": "0.01",
        "ctValCcy": "BTC",
        "tickSz": "0.0001",
        "lotSz": "1",
        "minSz": "1",
        "state": "live",
    }
    entry.update(changes)
    return entry


def test_current_fields_contract_size_and_futures() -> None:
    future = {
        "instType": "FUTURES",
        "instId": "BTC-USD-241227",
        "instFamily": "BTC-USD",
        "settleCcy": "BTC",
        "ctVal": "100",
        "ctMult": "1",
        "ctValCcy": "USD",
        "tickSz": "0.1",
        "lotSz": "1",
        "expTime": "1735286400000",
        "state": "live",
    }
    suspended = _option(instId="BTC-USD-241227-90000-P", optType="P", stk="90000", state="suspend")
    body = orjson.dumps({"code": "0", "msg": "", "data": [_option(), suspended, future]})
    result = parse_instruments(body, 1)
    option, put, dated = result.instruments
    assert option.contract_size_coin == pytest.approx(0.01)  # 0.01 BTC since 2024
    assert option.expiry_time_ns == 1735286400000 * 1_000_000
    assert put.option_kind == common_pb.OPTION_KIND_PUT and not put.is_active
    assert dated.kind == md_pb.INSTRUMENT_KIND_FUTURE
    assert dated.premium_unit == md_pb.PREMIUM_UNIT_USD_PER_COIN
    assert dated.contract_size_coin == 0.0  # a USD face value, not coins
    assert result.counts["instrument.face_not_in_coin"] == 1


def test_bad_entries_errors_and_garbage() -> None:
    no_type = _option(optType="")
    no_size = {k: v for k, v in _option().items() if k != "ctVal"}
    spot = {"instType": "SPOT", "instId": "BTC-USDT"}
    result = parse_instruments(
        orjson.dumps({"code": "0", "data": [_option(), no_type, no_size, spot, 3]}), 1
    )
    assert [i.symbol for i in result.instruments] == ["BTC-USD-241227-100000-C"]
    reasons = [d.reason for d in result.dead_letters]
    assert "'optType'" in reasons[0] and "'ctVal'" in reasons[1] and "not an object" in reasons[2]
    assert result.counts["instrument.skipped.SPOT"] == 1
    error = parse_instruments(b'{"code":"51001","msg":"Instrument ID does not exist","data":[]}', 1)
    assert error.venue_errors[0].code == "51001" and error.instruments == []
    assert "malformed JSON" in parse_instruments(b"<html>", 1).dead_letters[0].reason
    assert "no data list" in parse_instruments(b'{"code":"0"}', 1).dead_letters[0].reason


def test_channel_plan_from_recorded_instruments(venue_fixtures: Path) -> None:
    body = (venue_fixtures / "okx" / INSTRUMENTS_FILE).read_bytes()
    instruments = parse_instruments(body, 1).instruments
    settings = OkxSettings.from_config(ConnectorConfig(currencies=("BTC",)))
    groups = plan_channel_groups(instruments, settings)
    assert groups["family:BTC"] == ("opt-summary:BTC-USD", "index-tickers:BTC-USD")
    assert groups["BTC-USD-220514-22000-C"] == ("books:BTC-USD-220514-22000-C",)
    assert groups["listings"] == ("instruments:OPTION",)
    assert sum(len(v) for v in groups.values()) == 346 + 3
    allocator = ChannelAllocator(settings.runtime.max_channels_per_connection, 8)
    assert allocator.update(groups).connections == 2  # 349 channels / 300
    # Optional channels per option.
    richer = OkxSettings.from_config(
        ConnectorConfig(
            currencies=("BTC",), venue_options={"option_tickers": "true", "mark_price": "1"}
        )
    )
    assert plan_channel_groups(instruments, richer)["BTC-USD-220514-22000-C"] == (
        "books:BTC-USD-220514-22000-C",
        "tickers:BTC-USD-220514-22000-C",
        "mark-price:BTC-USD-220514-22000-C",
    )
    with pytest.raises(ValueError, match="book channel"):
        OkxSettings.from_config(ConnectorConfig(venue_options={"book_channel": "books9"}))


def test_limits_pace_subscribes_within_480_per_hour() -> None:
    runtime = OkxSettings.from_config(ConnectorConfig()).runtime
    per_hour = runtime.subscribe_burst + runtime.subscribe_requests_per_second * 3600
    assert per_hour <= 480
    assert runtime.heartbeat_interval_s < 30  # the venue drops connections silent for 30 s


def test_registry_entry() -> None:
    adapter = registry.get("OKX")
    assert adapter.name == "okx" and adapter.source == "connector.okx"
    assert (
        adapter.resolve_endpoints(ConnectorConfig()).ws_url == "wss://ws.okx.com:8443/ws/v5/public"
    )
    sim = adapter.simulator_endpoints("http://127.0.0.1:8080/okx/", "ws://127.0.0.1:8080/okx")
    assert sim == Endpoints("ws://127.0.0.1:8080/okx/ws/v5/public", "http://127.0.0.1:8080/okx")
    assert adapter.new_session().source == "connector.okx"
    assert "okx" in registry.names()
