"""The vectorised SmileQuote encoder against protobuf's own message construction."""

from __future__ import annotations

import math

import numpy as np
from google.protobuf import json_format

from svc_iv.core import IvCore
from svc_iv.wire import QuoteEncoder, smile_batch_bytes, time_varints, varint
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb


def test_time_varints_decode_to_the_value() -> None:
    values = np.array([0, 1, 127, 128, 1_626_993_723_632_000_000, 2**63 - 1, -5], dtype=np.int64)
    for value, encoded in zip(values.tolist(), time_varints(values), strict=True):
        decoded = sum((int(b) & 0x7F) << (7 * i) for i, b in enumerate(encoded))
        assert decoded == max(value, 0)
        assert all(b & 0x80 for b in encoded[:-1]) and not encoded[-1] & 0x80
    # Canonical (minimal) for every realistic event time.
    assert time_varints(values[4:5])[0].tobytes() == varint(1_626_993_723_632_000_000)


def test_encoded_quotes_equal_the_protobuf_built_ones() -> None:
    rng = np.random.default_rng(2)
    symbols = ["BTC-6AUG21-40000-C", "X", "ETH-27AUG21-4000-P" * 9, "é-unicode"]
    encoder = QuoteEncoder(symbols)
    n = len(symbols)
    expected = iv_pb.Smile(venue="deribit", expiry_label="2021-08-06")
    values: dict[str, list[object]] = {}
    for name, field in iv_pb.SmileQuote.DESCRIPTOR.fields_by_name.items():
        if name == "symbol":
            continue
        if field.type == field.TYPE_DOUBLE:
            column = rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, n)
            column[rng.random(n) < 0.3] = math.nan
            column[0] = 0.0
        elif field.type == field.TYPE_BOOL:
            column = rng.random(n) < 0.5
        elif field.type == field.TYPE_ENUM:
            column = rng.integers(0, 7 if "status" in name else 3, n)
        else:
            column = np.array([0, 1, 1_626_993_723_632_000_000, 1_700_000_000_123_456_789])
        encoder.block[name] = time_varints(column) if name == "quote_time_ns" else column
        values[name] = column.tolist()
    for j, symbol in enumerate(symbols):
        expected.quotes.add(symbol=symbol, **{k: v[j] for k, v in values.items()})
    head = iv_pb.Smile(venue="deribit", expiry_label="2021-08-06").SerializeToString()
    got = iv_pb.Smile.FromString(head + encoder.encode())
    # JSON form compares NaN as the string "NaN".
    assert json_format.MessageToDict(got) == json_format.MessageToDict(expected)
    # Refilling the block re-encodes; the template is not consumed.
    encoder.block["bid_iv"] = 0.5
    again = iv_pb.Smile.FromString(encoder.encode())
    assert [q.bid_iv for q in again.quotes] == [0.5] * n
    assert [q.symbol for q in again.quotes] == symbols


def test_smile_batch_from_serialised_smiles() -> None:
    expiries = (1_628_236_800 * 10**9, 1_632_470_400 * 10**9)
    instruments = [
        md_pb.Instrument(
            symbol=f"S{j}-{e}",
            kind=md_pb.INSTRUMENT_KIND_OPTION,
            option_kind=common_pb.OPTION_KIND_CALL,
            strike_usd=40_000.0 + 1_000 * j,
            expiry_time_ns=e,
            premium_unit=md_pb.PREMIUM_UNIT_COIN_PER_COIN,
            contract_size_coin=1.0,
        )
        for e in expiries
        for j in range(3)
    ]
    cores = IvCore("deribit", "BTC"), IvCore("deribit", "BTC")
    for core in cores:
        core.on_instruments(md_pb.InstrumentSet(instruments=instruments))
        for inst in instruments:
            core.on_ticker(
                md_pb.VenueTicker(symbol=inst.symbol, mark_price_native=0.02, forward_usd=40_000.0)
            )
    now = expiries[0] - 86_400 * 10**9
    header = common_pb.EventHeader(event_time_ns=now, source="svc_iv", sequence=7)
    framed = smile_batch_bytes(header, "deribit", "BTC", cores[0].flush_serialized(now))
    built = iv_pb.SmileBatch(
        header=header, venue="deribit", currency="BTC", smiles=cores[1].flush(now)
    )
    assert iv_pb.SmileBatch.FromString(framed) == built
    assert len(built.smiles) == 2 and all(len(s.quotes) == 3 for s in built.smiles)
