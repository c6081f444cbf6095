"""Our IVs from recorded venue prices against the IVs the venues published beside them.

Each venue's premium is converted as docs/venues/*.md say (Deribit: coin x underlying_price;
Bybit: USDC per coin on underlyingPrice; Binance: premium / unit on the index) with
T = (08:00 UTC expiry - message time) / 365 days.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from svc_iv.solver import BAD_INPUT, BELOW_INTRINSIC, OK, implied_vol
from volmath import black76

MS_PER_YEAR = 365 * 24 * 3600 * 1000
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}


def _expiry_ms_ddmmmyy(token: str) -> int:
    """'6AUG21' -> 08:00 UTC of that day, in ms."""
    m = re.fullmatch(r"(\d{1,2})([A-Z]{3})(\d{2})", token)
    assert m is not None, token
    day = datetime(2000 + int(m[3]), _MONTHS[m[2]], int(m[1]), 8, tzinfo=UTC)
    return int(day.timestamp() * 1000)


def _expiry_ms_yymmdd(token: str) -> int:
    day = datetime(2000 + int(token[:2]), int(token[2:4]), int(token[4:6]), 8, tzinfo=UTC)
    return int(day.timestamp() * 1000)


def _iv(
    price_usd: float, forward: float, strike: float, t: float, is_call: bool
) -> tuple[float, int]:
    iv, status = implied_vol(price_usd, forward, strike, t, is_call)
    return float(iv), int(status)


def _one_tick_iv_change(
    price_native: float,
    tick: float,
    to_usd: float,
    forward: float,
    strike: float,
    t: float,
    call: bool,
) -> float:
    """Largest IV move (fraction) of a one-tick price change either way (NaN sides ignored)."""
    here, _ = _iv(price_native * to_usd, forward, strike, t, call)
    moves = [
        abs(_iv((price_native + step) * to_usd, forward, strike, t, call)[0] - here)
        for step in (tick, -tick)
    ]
    finite = [m for m in moves if math.isfinite(m)]
    return max(finite) if finite else math.inf


# --------------------------------------------------------------------------------------
# Deribit: 89 recorded option tickers (BTC and ETH, 2021-07-22)
# --------------------------------------------------------------------------------------
def _deribit_tickers(root: Path) -> list[dict[str, Any]]:
    path = root / "deribit" / "ws_ticker_options_2021-07-22.jsonl"
    return [json.loads(line)["params"]["data"] for line in path.read_text().splitlines() if line]


def _deribit_option_ticks(root: Path) -> dict[str, float]:
    """Tick size per option from get_instruments (BTC), and for ETH the one Deribit option tick
    of that file, checked against every recorded ETH book price being a multiple of it."""
    body = json.loads((root / "deribit" / "rest_get_instruments_BTC_2021-07-22.json").read_text())
    options = [i for i in body["result"] if i["kind"] == "option"]
    ticks = {i["instrument_name"]: float(i["tick_size"]) for i in options}
    option_ticks = set(ticks.values())
    assert len(option_ticks) == 1
    (tick,) = option_ticks
    unit = Decimal(str(tick))
    for line in (
        (root / "deribit" / "ws_book_raw_options_2021-07-22.jsonl").read_text().splitlines()
    ):
        data = json.loads(line)["params"]["data"]
        if data["instrument_name"].startswith("ETH-"):
            for level in data.get("bids", []) + data.get("asks", []):
                assert Decimal(str(level[1])) % unit == 0, level
            ticks.setdefault(data["instrument_name"], tick)
    for row in _deribit_tickers(root):
        ticks.setdefault(row["instrument_name"], tick)
    # Expiries in the names agree with the venue's expiration timestamps.
    for i in options:
        assert _expiry_ms_ddmmmyy(i["instrument_name"].split("-")[1]) == i["expiration_timestamp"]
    return ticks


@pytest.mark.parametrize(
    ("price_key", "iv_key"),
    [("best_bid_price", "bid_iv"), ("best_ask_price", "ask_iv"), ("mark_price", "mark_iv")],
)
def test_deribit_recorded_ivs(venue_fixtures: Path, price_key: str, iv_key: str) -> None:
    ticks = _deribit_option_ticks(venue_fixtures)
    diffs = []
    for row in _deribit_tickers(venue_fixtures):
        if row[price_key] <= 0 or row[iv_key] == 0:  # Deribit: 0 = no quote on that side
            continue
        _, expiry, strike_text, kind = row["instrument_name"].split("-")
        strike, call = float(strike_text), kind == "C"
        t = (_expiry_ms_ddmmmyy(expiry) - row["timestamp"]) / MS_PER_YEAR
        forward = row["underlying_price"]
        ours, status = _iv(row[price_key] * forward, forward, strike, t, call)
        assert status == OK, row["instrument_name"]
        diff = ours * 100.0 - row[iv_key]  # the venue's IVs are in percent
        diffs.append(diff)
        if abs(diff) > 0.05:
            tick = ticks[row["instrument_name"]]
            bound = _one_tick_iv_change(row[price_key], tick, forward, forward, strike, t, call)
            assert abs(diff) <= bound * 100.0, (row["instrument_name"], diff, bound)
    assert len(diffs) >= 70
    assert float(np.median(np.abs(diffs))) <= 0.005


def test_deribit_greeks_conventions(venue_fixtures: Path) -> None:
    """Deribit's greeks are Black-76 greeks of the USD price: delta = our forward delta,
    vega per vol point = our vega / 100, theta per calendar day = our theta. Under one day
    to expiry Deribit's theta is a one-day decay capped at the time value, so only vega and
    delta are compared there."""
    for row in _deribit_tickers(venue_fixtures):
        _, expiry, strike_text, kind = row["instrument_name"].split("-")
        strike, call = float(strike_text), kind == "C"
        t = (_expiry_ms_ddmmmyy(expiry) - row["timestamp"]) / MS_PER_YEAR
        f, sigma, greeks = row["underlying_price"], row["mark_iv"] / 100.0, row["greeks"]
        assert float(black76.forward_delta(f, strike, t, sigma, call)) == pytest.approx(
            greeks["delta"], abs=2e-5
        )
        assert float(black76.vega(f, strike, t, sigma)) / 100.0 == pytest.approx(
            greeks["vega"], rel=2e-4, abs=1e-5
        )
        if t > 1 / 365:
            assert float(black76.theta(f, strike, t, sigma)) == pytest.approx(
                greeks["theta"], rel=3e-4
            )


# --------------------------------------------------------------------------------------
# Bybit: 3 recorded option tickers (USDC per coin, forward underlyingPrice, IVs as fractions)
# --------------------------------------------------------------------------------------
def _bybit_tickers(root: Path) -> list[tuple[int, dict[str, str]]]:
    out = []
    for line in (
        (root / "bybit" / "tardis_node_mappers_test_bybit_options.jsonl").read_text().splitlines()
    ):
        msg = json.loads(line)
        if msg.get("topic", "").startswith("tickers."):
            out.append((int(msg["ts"]), msg["data"]))
    msg = json.loads((root / "bybit" / "nautilus_ws_ticker_option.json").read_text())
    out.append((int(msg["ts"]), msg["data"]))
    return out


def test_bybit_recorded_ivs(venue_fixtures: Path) -> None:
    """All 7 quoted sides agree to 1e-4 (0.01 vol points; Bybit prints 4 decimals); the
    empty sides (price "0", IV "0") have no IV on either side."""
    compared = 0
    for ts, data in _bybit_tickers(venue_fixtures):
        _, expiry, strike_text, kind = data["symbol"].split("-")[:4]
        strike, call = float(strike_text), kind == "C"
        t = (_expiry_ms_ddmmmyy(expiry) - ts) / MS_PER_YEAR
        forward = float(data["underlyingPrice"])
        for price_key, iv_key in (
            ("bidPrice", "bidIv"),
            ("askPrice", "askIv"),
            ("markPrice", "markPriceIv"),
        ):
            ours, status = _iv(float(data[price_key]), forward, strike, t, call)
            if float(data[iv_key]) == 0.0:
                assert float(data[price_key]) == 0.0 and status == BAD_INPUT
                continue
            assert status == OK
            assert abs(ours - float(data[iv_key])) <= 1e-4, (data["symbol"], price_key, ours)
            compared += 1
    assert compared == 7


# --------------------------------------------------------------------------------------
# Binance: premium per contract / unit, forward = index
# --------------------------------------------------------------------------------------
def _decimals_quantum(text: str) -> float:
    """The resolution a number was printed with: '3475' -> 1, '19.0314' -> 1e-4."""
    exponent = Decimal(text).as_tuple().exponent
    assert isinstance(exponent, int)
    return float(Decimal(1).scaleb(exponent))


def test_binance_recorded_ticker_ivs(venue_fixtures: Path) -> None:
    """2023-10 recording: BTC-240927-25000-P tickers priced on the latest BTCUSDT index
    (BTC unit 1). Bid/ask IVs agree to 1e-5; the mark IV to within what the mark's printed
    resolution (whole USDT) can move it."""
    path = (
        venue_fixtures
        / "binance"
        / "tardis_node_mappers_test_binance_european_options_v1_2023-10.jsonl"
    )
    index = math.nan
    compared = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        msg = json.loads(line)
        data = msg["data"]
        if msg["stream"] == "BTCUSDT@index":
            index = float(data["p"])
            continue
        if not msg["stream"].endswith("@ticker"):
            continue
        _, expiry, strike_text, kind = data["s"].split("-")
        strike, call = float(strike_text), kind == "C"
        t = (_expiry_ms_yymmdd(expiry) - data["E"]) / MS_PER_YEAR
        for price_key, iv_key in (("bo", "b"), ("ao", "a")):
            ours, status = _iv(float(data[price_key]), index, strike, t, call)
            assert status == OK
            assert abs(ours - float(data[iv_key])) <= 1e-5
            compared += 1
        mark = data["mp"]
        ours, status = _iv(float(mark), index, strike, t, call)
        bound = _one_tick_iv_change(
            float(mark), _decimals_quantum(mark), 1.0, index, strike, t, call
        )
        assert status == OK and abs(ours - float(data["vo"])) <= bound
        compared += 1
    assert compared == 6


def test_binance_documentation_mark_price_examples(venue_fixtures: Path) -> None:
    """The 2025-12 `optionMarkPrice` messages are documentation examples (SOURCES.md). The
    XRP one is self-consistent (premium / unit 100 on the index gives its 260% to 1e-5);
    the BTC one quotes a deep-ITM call below intrinsic (89,000 strike, index 104,335, mark
    1,450.5): no IV exists, and each of its prices says so."""
    path = (
        venue_fixtures
        / "binance"
        / "tardis_node_mappers_test_binance_european_options_v2_2025-12.jsonl"
    )
    seen = set()
    for line in path.read_text().splitlines():
        if "optionMarkPrice" not in line:
            continue
        for data in json.loads(line)["data"]:
            _, expiry, strike_text, kind = data["s"].split("-")
            strike, call = float(strike_text), kind == "C"
            t = (_expiry_ms_yymmdd(expiry) - data["E"]) / MS_PER_YEAR
            unit = 100.0 if data["s"].startswith("XRP") else 1.0
            index = float(data["i"])
            mark, status = _iv(float(data["mp"]) / unit, index, strike, t, call)
            seen.add(data["s"])
            if data["s"].startswith("XRP"):
                assert status == OK and abs(mark - float(data["vo"])) <= 1e-5
                # No bid/ask: "0.0000" prices and "-1.0" IVs.
                assert _iv(float(data["bo"]) / unit, index, strike, t, call)[1] == BAD_INPUT
                assert float(data["b"]) == -1.0
            else:
                for key in ("bo", "ao", "mp"):
                    iv, why = _iv(float(data[key]) / unit, index, strike, t, call)
                    assert why == BELOW_INTRINSIC and math.isnan(iv)
    assert seen == {"XRP-251219-2.05-P", "BTC-251219-89000-C"}
