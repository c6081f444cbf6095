"""volstream.wire: hand framing reads back what it writes."""

from __future__ import annotations

import pytest

from volstream.wire import read_varint, varint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**35 + 7, 2**63 - 1])
def test_read_varint_reads_back_varint_and_moves_past_it(value: int) -> None:
    data = b"\xff" + varint(value) + b"\x01"
    assert read_varint(data, 1) == (value, 1 + len(varint(value)))


def test_a_truncated_varint_is_an_index_error() -> None:
    with pytest.raises(IndexError):
        read_varint(varint(300)[:1], 0)
