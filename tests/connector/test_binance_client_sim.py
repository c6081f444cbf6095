"""The Binance connector against the exchange simulator over real websockets and HTTP."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tests.connector.test_deribit_client_sim import _symbols_of as symbols_of
from tests.connector.test_deribit_client_sim import busiest_book, resynced
from tests.connector.test_okx_client_sim import sim_running
from volmath.black76 import price
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb


async def test_binance_routes_partial_books_and_marks_per_contract_unit() -> None:
    async with sim_running("binance", {"units": {"BTC": 10}}) as run:
        sink = run.sink
        instruments = {
            i.symbol: i for i in sink.of_case("instrument_set")[-1].instrument_set.instruments
        }
        assert {i.contract_size_coin for i in instruments.values()} == {10.0}
        assert {i.premium_unit for i in instruments.values()} == {
            md_pb.PREMIUM_UNIT_USD_PER_CONTRACT
        }
        # Books on the public route, marks on the market route.
        urls = Counter(c.plan.url.rsplit("/", 2)[-2] for c in run.connector.connections)
        assert urls["market"] == 1 and urls["public"] >= 2
        await run.until(
            lambda s: sum(1 for e in s.of_case("ticker") if e.ticker.HasField("mark_iv")) >= 50
        )
        snapshots = sink.of_case("book_snapshot")
        assert all(e.book_snapshot.is_periodic for e in snapshots)
        assert sink.of_case("book_delta") == [] and sink.dead_letters == []
        checked = 0
        for event in sink.of_case("ticker"):
            ticker = event.ticker
            if not (ticker.HasField("mark_iv") and ticker.HasField("mark_price_native")):
                continue
            instrument = instruments[ticker.symbol]
            # USD per coin = premium / unit; it reprices from the mark IV on the index.
            assert ticker.mark_price_usd_per_coin == pytest.approx(ticker.mark_price_native / 10.0)
            assert ticker.forward_usd == ticker.index_price_usd > 0
            years = (instrument.expiry_time_ns - ticker.header.event_time_ns) / (365 * 86400e9)
            model = price(
                ticker.forward_usd,
                instrument.strike_usd,
                years,
                ticker.mark_iv,
                instrument.option_kind == common_pb.OPTION_KIND_CALL,
            )
            assert float(np.asarray(model)) == pytest.approx(
                ticker.mark_price_usd_per_coin, rel=1e-3, abs=1e-3
            )
            checked += 1
        assert checked >= 50
        index = sink.of_case("index_price")[0].index_price
        assert index.index_name == "BTCUSDT" and index.price_usd > 0


async def test_binance_diff_books_bridge_onto_rest_snapshots_and_resync() -> None:
    async with sim_running(
        "binance", venue_options={"book_mode": "diff", "depth_snapshots_per_second": "200"}
    ) as run:
        sink = run.sink
        await run.until(lambda s: len(s.of_case("book_delta")) >= 50)
        # Every book started from a REST snapshot the diffs were bridged onto.
        assert sink.counters["book.rest_snapshot"] >= len(run.options())
        assert sink.counters["book.bridged"] >= 1
        snapshot_symbols = set(symbols_of(sink, "book_snapshot"))
        assert set(run.options()) <= snapshot_symbols
        symbol = busiest_book(sink)  # the check needs a change after the resync
        await run.fault("sequence_gap", symbol=symbol)
        await run.until(resynced(symbol), 15.0)
        assert sink.counters["book.gap"] >= 1
        assert sink.dead_letters == []
        # No reconnect: the resync is a REST snapshot plus the buffered diffs.
        assert sink.counters["connection.reconnect"] == 0
        # The one rule consumers apply (svc_book has no Binance rule): every delta continues
        # the book, also the first one after a REST snapshot, which the connector emits
        # with prev = the snapshot's u (its pu is below it).
        last: dict[str, int] = {}
        for event in sink.events:
            case = event.event.WhichOneof("event")
            if case == "book_snapshot":
                last[event.event.book_snapshot.symbol] = event.event.book_snapshot.venue_sequence
            elif case == "book_reset":
                last.pop(event.event.book_reset.symbol, None)
            elif case == "book_delta":
                delta = event.event.book_delta
                assert delta.prev_venue_sequence == last[delta.symbol]
                last[delta.symbol] = delta.venue_sequence
