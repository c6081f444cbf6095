"""Book levels: venue level lists checked and converted to (price, size), ordered best first,
and written into BookSnapshot/BookDelta (as messages or as ready wire bytes)."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from operator import itemgetter

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from svc_connector.kit.fields import FieldError, as_number
from volstream.v1 import market_data_pb2 as md_pb

TextLevel = tuple[str, str]


def text_levels(entries: object, where: str, side: str) -> list[TextLevel]:
    """``[[price, size, ...], ...]`` (strings or numbers) -> (price, size) texts as received.

    A level must have a finite price > 0 and a finite size >= 0 (size 0 deletes in deltas).
    The texts are kept because OKX checksums hash the venue's own spelling.
    """
    if not isinstance(entries, list):
        raise FieldError(f"{where}: missing or non-list '{side}'")
    levels: list[TextLevel] = []
    for entry in entries:
        # Fast path for the usual shape, a list of two or more numeric strings (this loop is
        # the hottest of the book parsers); anything else takes the checked path below.
        if type(entry) is list and len(entry) >= 2:
            price_text, size_text = entry[0], entry[1]
            if type(price_text) is str and type(size_text) is str:
                try:
                    price_float, size_float = float(price_text), float(size_text)
                except ValueError:
                    pass
                else:
                    if 0.0 < price_float < math.inf and 0.0 <= size_float < math.inf:
                        levels.append((price_text, size_text))
                        continue
        if not isinstance(entry, list | tuple) or len(entry) < 2:
            raise FieldError(f"{where}: malformed {side} entry {entry!r}")
        price_value, size_value = entry[0], entry[1]
        price, size = as_number(price_value), as_number(size_value)
        if price is None or size is None or price <= 0 or size < 0:
            raise FieldError(f"{where}: invalid {side} level {entry!r}")
        levels.append((_level_text(price_value), _level_text(size_value)))
    return levels


def number_levels(entries: object, where: str, side: str) -> list[tuple[float, float]]:
    """:func:`text_levels` as (price, size) numbers (same checks and errors), for venues
    whose strings nothing hashes."""
    if not isinstance(entries, list):
        raise FieldError(f"{where}: missing or non-list '{side}'")
    levels: list[tuple[float, float]] = []
    for entry in entries:
        if type(entry) is list and len(entry) >= 2:
            price_text, size_text = entry[0], entry[1]
            if type(price_text) is str and type(size_text) is str:
                try:
                    price, size = float(price_text), float(size_text)
                except ValueError:
                    pass
                else:
                    if 0.0 < price < math.inf and 0.0 <= size < math.inf:
                        levels.append((price, size))
                        continue
        price_text, size_text = text_levels([entry], where, side)[0]
        levels.append((float(price_text), float(size_text)))
    return levels


# One BookLevel as a length-delimited element of BookSnapshot/BookDelta ``bids`` (field 3) or
# ``asks`` (field 4): tag, length 18, then price (field 1) and size (field 2) as doubles.
_LEVEL_WIRE = struct.Struct("<BBBdBd")


BIDS_TAG = (3 << 3) | 2


ASKS_TAG = (4 << 3) | 2


def levels_wire(tag: int, levels: Iterable[tuple[float, float]]) -> bytes:
    """(price, size) levels as the wire bytes of a book's ``bids`` (:data:`BIDS_TAG`) or
    ``asks`` (:data:`ASKS_TAG`): ``book.MergeFromString`` of them appends the levels in C
    (a zero size is written explicitly; it reads back as the same message)."""
    pack = _LEVEL_WIRE.pack
    return b"".join([pack(tag, 18, 0x09, price, 0x11, size) for price, size in levels])


def wire_levels(
    entries: object, where: str, side: str, tag: int, best_first: bool | None = None
) -> bytes:
    """:func:`levels_wire` of :func:`number_levels` in one pass for the usual shape.

    ``best_first`` True (bids) or False (asks): only the live levels (size > 0), best first,
    as :func:`best_first_pairs` orders them; None: every level in venue order. Entries that
    are not numeric strings, or live levels out of order, take the general path (same
    checks, errors and result)."""
    pack = _LEVEL_WIRE.pack
    inf = math.inf
    parts: list[bytes] = []
    last = inf if best_first else -inf
    if isinstance(entries, list):
        for entry in entries:
            if type(entry) is not list or len(entry) < 2:
                break
            price_text, size_text = entry[0], entry[1]
            if type(price_text) is not str or type(size_text) is not str:
                break
            try:
                price, size = float(price_text), float(size_text)
            except ValueError:
                break
            if not (0.0 < price < inf and 0.0 <= size < inf):
                break
            if best_first is not None:
                if size == 0.0:
                    continue
                if (price > last) if best_first else (price < last):
                    break  # not in order: sorted below
                last = price
            parts.append(pack(tag, 18, 0x09, price, 0x11, size))
        else:
            return b"".join(parts)
    levels = number_levels(entries, where, side)
    if best_first is not None:
        levels = sorted(
            [level for level in levels if level[1] > 0], key=_LEVEL_PRICE, reverse=best_first
        )
    return levels_wire(tag, levels)


def add_number_levels(
    target: RepeatedCompositeFieldContainer[md_pb.BookLevel], levels: Iterable[tuple[float, float]]
) -> None:
    """Append (price, size) levels to a message's own repeated field."""
    add = target.add
    for price, size in levels:
        add(price_native=price, size_native=size)


def best_first_pairs(
    bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]]
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Live levels (size > 0) best first, like :func:`best_first` (a stable sort)."""
    return (
        sorted([level for level in bids if level[1] > 0], key=_LEVEL_PRICE, reverse=True),
        sorted([level for level in asks if level[1] > 0], key=_LEVEL_PRICE),
    )


_LEVEL_PRICE = itemgetter(0)


def _level_text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def book_levels(levels: Sequence[TextLevel]) -> list[md_pb.BookLevel]:
    return [md_pb.BookLevel(price_native=float(p), size_native=float(s)) for p, s in levels]


def add_book_levels(
    target: RepeatedCompositeFieldContainer[md_pb.BookLevel], levels: Iterable[TextLevel]
) -> None:
    """Append ``levels`` to a message's own repeated field (no BookLevel built and copied)."""
    add = target.add
    for price, size in levels:
        add(price_native=float(price), size_native=float(size))


def best_first(
    bids: list[md_pb.BookLevel], asks: list[md_pb.BookLevel]
) -> tuple[list[md_pb.BookLevel], list[md_pb.BookLevel]]:
    return (
        sorted(bids, key=lambda level: -level.price_native),
        sorted(asks, key=lambda level: level.price_native),
    )
