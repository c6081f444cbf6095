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
    fixed = _tagged_rows(n).copy()
    for name, _, wire in _FIXED_FIELDS:
        values = columns[name]
        if wire == 0:
            ints = np.asarray(values, dtype=np.int64)
            # One reduction: negative values wrap to huge ones as unsigned.
            if ints.size and int(ints.view(np.uint64).max()) > 127:
                raise ValueError(f"{name}: enum values must be in [0, 128)")
            fixed[name] = ints
        else:
            fixed[name] = values
    header_bytes, body_at, header_at = _layout(symbol, venue)
    out = np.empty(header_bytes.size + n * FIXED_SIZE, dtype=np.uint8)
    out[body_at] = fixed.view(np.uint8).reshape(n, FIXED_SIZE)
    out[header_at] = header_bytes
    return out.tobytes()


@lru_cache(maxsize=64)
def _tagged_rows(n: int) -> NDArray[np.void]:
    """n fixed parts with every tag written (copied, then the values filled in)."""
    rows = np.zeros(n, dtype=_FIXED_DTYPE)
    for name, number, wire in _FIXED_FIELDS:
        rows[f"{name}_tag"] = (number << 3) | wire
    rows.setflags(write=False)
    return rows


@lru_cache(maxsize=256)
def _layout(
    symbol: tuple[str, ...], venue: tuple[str, ...]
) -> tuple[NDArray[np.uint8], NDArray[np.intp], NDArray[np.bool_]]:
    """For one slice's quote list (the same from revision to revision while its quotes
    stay listed): every row's header bytes back to back, where each row's fixed part goes
    in the output (n, FIXED_SIZE) and which output bytes are header bytes, so the rows are
    interleaved by two numpy writes instead of a Python join per row."""
    headers = list(map(_header, symbol, venue))
    lengths = np.array([len(h) for h in headers], dtype=np.intp)
    starts = np.cumsum(lengths + FIXED_SIZE) - FIXED_SIZE  # each row's fixed part
    body_at = starts[:, None] + np.arange(FIXED_SIZE)[None, :]
    header_at = np.ones(int(lengths.sum()) + len(headers) * FIXED_SIZE, dtype=bool)
    header_at[body_at] = False
    blob = np.frombuffer(b"".join(headers), dtype=np.uint8)
    body_at.setflags(write=False)
    header_at.setflags(write=False)
    return blob, body_at, header_at


def append_quote_fits(
    expiry_slice: surface_pb.ExpirySlice,
    symbol: tuple[str, ...],
    venue: tuple[str, ...],
    columns: Columns,
) -> None:
    expiry_slice.MergeFromString(encode_quote_fits(symbol, venue, columns))
