"""The vectorised QuoteFit encoder against a field-by-field protobuf build."""

from __future__ import annotations

import math

import numpy as np
import pytest

from svc_surface.wire import QUOTE_FIT_LAYOUT, QUOTES_FIELD, append_quote_fits, encode_quote_fits
from volstream.v1 import surface_pb2 as surface_pb

TYPES = {0: ("TYPE_ENUM", "TYPE_BOOL"), 1: ("TYPE_DOUBLE",), 2: ("TYPE_STRING",)}


def test_layout_matches_the_proto() -> None:
    fields = surface_pb.QuoteFit.DESCRIPTOR.fields_by_name
    for name, number, wire in QUOTE_FIT_LAYOUT:
        field = fields[name]
        assert field.number == number
        type_name = {v: k for k, v in field.__class__.__dict__.items() if k.startswith("TYPE_")}[
            field.type
        ]
        assert type_name in TYPES[wire], name
    # Every QuoteFit field is encoded (a new field would need adding here).
    assert {f.name for f in surface_pb.QuoteFit.DESCRIPTOR.fields} == {
        n for n, _, _ in QUOTE_FIT_LAYOUT
    }
    assert surface_pb.ExpirySlice.DESCRIPTOR.fields_by_name["quotes"].number == QUOTES_FIELD


def test_encoded_equals_field_by_field() -> None:
    rng = np.random.default_rng(1)
    n = 50
    symbols = tuple(f"BTC-27MAR26-{60000 + 1000 * i}-{'C' if i % 2 else 'P'}" for i in range(n))
    symbols = (*symbols[:-1], "é" * 200)  # non-ASCII, and a length needing a 2-byte varint
    venues = tuple("deribit" if i % 3 else "okx" for i in range(n))
    cols = {
        "option_kind": rng.integers(0, 3, n),
        "strike_usd": rng.uniform(1e3, 1e5, n),
        "log_moneyness": rng.normal(0, 0.3, n),
        "bid_iv": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0.3, 1.0, n)),
        "ask_iv": rng.uniform(0.3, 1.0, n),
        "mid_iv": np.zeros(n),  # zeros must read back as the default
        "fitted_iv": rng.uniform(0.3, 1.0, n),
        "residual_bp": rng.normal(0, 30, n),
        "position": rng.integers(0, 5, n),
        "used": rng.random(n) < 0.5,
        "drop_reason": rng.integers(0, 10, n),
        "weight": rng.random(n),
    }
    encoded = surface_pb.ExpirySlice(expiry_label="2026-03-27")
    append_quote_fits(encoded, symbols, venues, cols)
    reference = surface_pb.ExpirySlice(expiry_label="2026-03-27")
    for i in range(n):
        reference.quotes.add(
            symbol=symbols[i],
            venue=venues[i],
            **{name: v[i].item() for name, v in cols.items()},
        )
    assert len(encoded.quotes) == n
    assert encoded.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True
    )
    assert math.isnan(encoded.quotes[0].bid_iv) == math.isnan(cols["bid_iv"][0])
    assert encoded.expiry_label == "2026-03-27"


def test_rejects_enums_outside_one_byte() -> None:
    cols = {name: np.zeros(1) for name, _, wire in QUOTE_FIT_LAYOUT if wire != 2}
    cols["drop_reason"] = np.array([200])
    with pytest.raises(ValueError):
        encode_quote_fits(("x",), ("y",), cols)
