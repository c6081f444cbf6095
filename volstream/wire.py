"""Protobuf wire framing by hand, for the hot paths that assemble messages from cached bytes.

A length-delimited field is its key (field number << 3 | wire type 2, a varint), the varint
length, then the bytes; a repeated message field is such frames one after another, and a
message is its fields concatenated. So a service can build a response or a batch by joining
bytes it serialised once (svc_api's fan-out, the connector's batches, the IV and surface
stages' vectorised quotes) and the protobuf parser reads it as if the message had been
built field by field.
"""

from __future__ import annotations

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LEN = 2


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a base-128 varint, the shortest (canonical) form."""
    if value < 0:
        raise ValueError(f"varint: {value} is negative (encode int64 as 10-byte two's complement)")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint starting at ``data[at]`` and the offset just past it."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def field_key(field_number: int, wire_type: int) -> bytes:
    """The key of a field: its number and wire type, as a varint."""
    return varint((field_number << 3) | wire_type)


def length_delimited_field(field_number: int, payload: bytes) -> bytes:
    """A whole length-delimited field: key, length, ``payload`` (a message, string, bytes)."""
    return field_key(field_number, WIRE_LEN) + varint(len(payload)) + payload


def bool_field(field_number: int, value: bool) -> bytes:
    """A bool field as proto3 writes it: nothing for false."""
    return field_key(field_number, WIRE_VARINT) + b"\x01" if value else b""
