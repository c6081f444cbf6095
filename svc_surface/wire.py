"""Vectorised protobuf encoding of the through-fit matrix (repeated QuoteFit).

A surface carries one QuoteFit per quote (about a thousand per partition); building them
field by field in Python cost more than the whole SVI fit. Here the fixed-size part of
every QuoteFit (its enums, bool and doubles) is laid out with a numpy structured array in
wire format, each symbol/venue header is cached, and the bytes are merged into the
ExpirySlice in one parse. Fields are written explicitly even when zero, which proto3
parsers read back as the default: the parsed message equals a field-by-field build
(tests/surface/test_wire.py checks it, and that the field numbers and types below match
surface.proto).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from itertools import chain

import numpy as np
from numpy.typing import NDArray

from volstream.v1 import surface_pb2 as surface_pb
from volstream.wire import varint

Columns = Mapping[str, NDArray[np.float64] | NDArray[np.int64] | NDArray[np.bool_]]

# QuoteFit field numbers (surface.proto) and wire types: 0 varint, 1 fixed64, 2 length.
QUOTE_FIT_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("symbol", 1, 2),
    ("venue", 2, 2),
    ("option_kind", 3, 0),
    ("strike_usd", 4, 1),
    ("log_moneyness", 5, 1),
    ("bid_iv", 6, 1),
    ("ask_iv", 7, 1),
    ("mid_iv", 8, 1),
    ("fitted_iv", 9, 1),
    ("residual_bp", 10, 1),
    ("position", 11, 0),
    ("used", 12, 0),
    ("drop_reason", 13, 0),
    ("weight", 14, 1),
)
# ExpirySlice.quotes
QUOTES_FIELD = 10

_FIXED_FIELDS = [f for f in QUOTE_FIT_LAYOUT if f[2] != 2]
_FIXED_DTYPE = np.dtype(
    [
        item
        for name, _, wire in _FIXED_FIELDS
        for item in ((f"{name}_tag", "u1"), (name, "<f8" if wire == 1 else "u1"))
    ]
)
FIXED_SIZE = _FIXED_DTYPE.itemsize  # 80 bytes


@lru_cache(maxsize=65_536)
def _header(symbol: str, venue: str) -> bytes:
    """Repeated-field tag + length of the whole QuoteFit, then its two strings."""
    sym, ven = symbol.encode(), venue.encode()
    body = b"\x0a" + varint(len(sym)) + sym + b"\x12" + varint(len(ven)) + ven
    size = len(body) + FIXED_SIZE
    return bytes([(QUOTES_FIELD << 3) | 2]) + varint(size) + body


def encode_quote_fits(
    symbol: tuple[str, ...],
    venue: tuple[str, ...],
    columns: Columns,
) -> bytes:
    """Bytes that, merged into an ExpirySlice, append one QuoteFit per row.

    columns: every non-string QuoteFit field by name, one array per field. Enum values
    must be in [0, 128) (one-byte varints).
    """
    n = len(symbol)
    fixed = np.zeros(n, dtype=_FIXED_DTYPE)
    for name, number, wire in _FIXED_FIELDS:
        fixed[f"{name}_tag"] = (number << 3) | wire
        values = columns[name]
        if wire == 0:
            ints = np.asarray(values, dtype=np.int64)
            if ints.size and (ints.min() < 0 or ints.max() > 127):
                raise ValueError(f"{name}: enum values must be in [0, 128)")
            fixed[name] = ints
        else:
            fixed[name] = values
    raw = fixed.tobytes()
    headers = list(map(_header, symbol, venue))
    bodies = [raw[i : i + FIXED_SIZE] for i in range(0, n * FIXED_SIZE, FIXED_SIZE)]
    return b"".join(chain.from_iterable(zip(headers, bodies, strict=True)))


def append_quote_fits(
    expiry_slice: surface_pb.ExpirySlice,
    symbol: tuple[str, ...],
    venue: tuple[str, ...],
    columns: Columns,
) -> None:
    expiry_slice.MergeFromString(encode_quote_fits(symbol, venue, columns))
