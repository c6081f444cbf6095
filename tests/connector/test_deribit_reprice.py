"""Recorded Deribit marks reprice with Black-76 from the normalised ticker fields.

USD price = Black-76(F = underlying_price, K, T, mark_iv) and the coin mark = USD price / F,
with T from the ticker timestamp to 08:00 UTC on the expiry date in the instrument name.
The wire rounds mark_iv to 0.01 vol points, which moves far out-of-the-money marks by more
than 4 significant digits, and a few marks are not quite contemporaneous with the displayed
underlying_price (BTC-30JUL21-24000-P moves 0.08% between two tickers with the same IV and
forward). So: every mark matches to 3 significant digits or within what the IV rounding
(±0.005 vol points) and the 1e-6 price floor explain; at least 95% match to 4 significant
digits (or that rounding bound); the median relative error is below 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from svc_connector.venues.deribit.parse import parse_frame
from svc_connector.venues.deribit.symbols import parse_instrument_name
from tests.connector.deribit_fixtures import deribit_dir, lines
from volmath.black76 import price
from volstream.v1 import common_pb2 as common_pb

YEAR_NS = 365 * 86_400 * 10**9
IV_ROUNDING = 0.00005  # 0.005 vol points as a fraction
PRICE_FLOOR = 1e-6


def test_recorded_marks_reprice_with_black76(venue_fixtures: Path) -> None:
    frames = lines(deribit_dir(venue_fixtures) / "ws_ticker_options_2021-07-22.jsonl")
    relative_errors = []
    four_digits: list[bool] = []
    for frame in frames:
        ticker = parse_frame(frame, 0).events[0].event.ticker
        symbol = parse_instrument_name(ticker.symbol)
        assert symbol is not None and symbol.expiry_time_ns is not None and symbol.strike
        t = (symbol.expiry_time_ns - ticker.header.event_time_ns) / YEAR_NS
        forward = ticker.forward_usd
        is_call = symbol.option_kind == common_pb.OPTION_KIND_CALL
        sigmas = np.array(
            [ticker.mark_iv - IV_ROUNDING, ticker.mark_iv, ticker.mark_iv + IV_ROUNDING]
        )
        coin = price(forward, symbol.strike, t, sigmas, is_call) / forward
        mark = ticker.mark_price_native
        error = abs(coin[1] - mark)
        rounding_bound = abs(coin[2] - coin[0]) / 2 + PRICE_FLOOR / 2
        assert error <= max(1e-3 * mark, rounding_bound), (ticker.symbol, coin[1], mark)
        four_digits.append(error <= max(5e-4 * mark, rounding_bound))
        # The USD-per-coin mark is the Black-76 USD price.
        assert abs(ticker.mark_price_usd_per_coin - coin[1] * forward) <= max(
            1e-3 * ticker.mark_price_usd_per_coin, rounding_bound * forward
        )
        relative_errors.append(error / mark)
    assert len(relative_errors) == 89
    errors = np.array(relative_errors)
    assert np.median(errors) < 1e-4
    assert np.mean(four_digits) >= 0.95


def test_venue_example_put_reprices_to_five_digits(venue_fixtures: Path) -> None:
    frames = lines(deribit_dir(venue_fixtures) / "ws_ticker_options_2021-07-22.jsonl")
    tickers = [parse_frame(f, 0).events[0].event.ticker for f in frames]
    put = next(t for t in tickers if t.symbol == "BTC-31DEC21-34000-P")
    symbol = parse_instrument_name(put.symbol)
    assert symbol is not None and symbol.expiry_time_ns is not None
    t = (symbol.expiry_time_ns - put.header.event_time_ns) / YEAR_NS
    coin = float(price(put.forward_usd, 34000.0, t, put.mark_iv, False)) / put.forward_usd
    assert abs(coin - put.mark_price_native) / put.mark_price_native < 5e-5
