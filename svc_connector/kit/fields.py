"""Checked field access on decoded JSON: readers that look every field up by name, accept
numbers and numeric strings, and raise :class:`FieldError` (which becomes a dead letter with
its text) only for fields an event cannot do without; small text helpers.

Venues send numbers as JSON numbers or as numeric strings ("0.7794"), an empty side as "" or
"0", and add fields over time."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

MS_TO_NS = 1_000_000
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Milliseconds whose nanoseconds fit an int64 (the proto's time fields).
MAX_TIMESTAMP_MS = INT64_MAX // MS_TO_NS


class FieldError(Exception):
    """A required field is missing or malformed: the frame becomes a dead letter with this text."""


def ms_to_ns(timestamp_ms: int) -> int:
    """A venue time in milliseconds as int64 nanoseconds; FieldError when it does not fit
    (a JSON integer has no bound, protobuf's int64 fields have)."""
    if not -MAX_TIMESTAMP_MS <= timestamp_ms <= MAX_TIMESTAMP_MS:
        raise FieldError(f"timestamp out of range: {timestamp_ms} ms")
    return timestamp_ms * MS_TO_NS


def int64(value: int, key: str, where: str) -> int:
    """``value`` when it fits a protobuf int64 field (a venue sequence), else FieldError."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise FieldError(f"{where}: '{key}' out of the int64 range: {value}")
    return value


def as_number(value: object) -> float | None:
    """A finite float from a JSON number or a numeric string; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def req_number(data: Mapping[str, object], key: str, where: str) -> float:
    number = as_number(data.get(key))
    if number is None:
        raise FieldError(f"{where}: missing or non-numeric '{key}'")
    return number


def req_integer(data: Mapping[str, object], key: str, where: str) -> int:
    """An integer from a JSON integer or a digit string (``"1640001600039"``)."""
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.lstrip("-").isdigit():  # not "¹": int() refuses it
            return int(text)
    raise FieldError(f"{where}: missing or non-integer '{key}'")


def req_text(data: Mapping[str, object], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise FieldError(f"{where}: missing or non-string '{key}'")
    return value


def opt_number(
    data: Mapping[str, object], key: str, counts: Counter[str], where: str
) -> float | None:
    """Optional number: absent, null or "" -> None; anything unreadable is counted, then None."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if type(value) is str:  # the usual spelling, read inline (as_number does the same)
        try:
            parsed = float(value)
        except ValueError:
            number: float | None = None
        else:
            number = parsed if parsed - parsed == 0.0 else None  # not NaN nor an infinity
    else:
        number = as_number(value)
    if number is None:
        counts[f"{where}.bad_field.{key}"] += 1
    return number


def positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


def iv_fraction(value: float | None) -> float | None:
    """A venue IV that is already a fraction; 0 and negatives (-1) mean "no value"."""
    return value if value is not None and value > 0 else None


# ---- readers for venues whose JSON numbers are typed (Deribit): a numeric string is refused.


def is_json_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number (int or float, not a bool, not a numeric string)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def req_json_number(data: Mapping[str, object], key: str, where: str) -> float:
    value = data.get(key)
    if not is_json_number(value):
        raise FieldError(f"{where}: missing or non-numeric '{key}'")
    return float(value)


def req_json_int(data: Mapping[str, object], key: str, where: str) -> int:
    """A JSON number as an int (a float is truncated, as the venue's integers may be sent)."""
    value = data.get(key)
    if not is_json_number(value):
        raise FieldError(f"{where}: missing or non-numeric '{key}'")
    return int(value)


def opt_json_number(
    data: Mapping[str, object], key: str, counts: Counter[str], where: str
) -> float | None:
    """Optional JSON number: absent/null -> None; a wrong type is counted, then None."""
    value = data.get(key)
    if value is None:
        return None
    # Fast path: a finite float (inf - inf and nan - nan are nan).
    if type(value) is float and value - value == 0.0:
        return value
    if not is_json_number(value):
        counts[f"{where}.bad_field.{key}"] += 1
        return None
    return float(value)


def safe_token(text: str) -> str:
    """A counter-name fragment from venue text (bounded, no spaces)."""
    cleaned = "".join(ch if ch.isalnum() or ch in "_-/" else "_" for ch in text[:40])
    return cleaned or "empty"


def cached(
    lookup: Callable[[str], str | None], limit: int = 100_000
) -> Callable[[str], str | None]:
    """``lookup`` remembering its answers (a symbol's currency is asked for every event);
    ``None`` answers are not kept. Bounded: forgets everything when ``limit`` is reached."""
    answers: dict[str, str] = {}

    def cached_lookup(key: str) -> str | None:
        answer = answers.get(key)
        if answer is None:
            answer = lookup(key)
            if answer is not None:
                if len(answers) >= limit:
                    answers.clear()
                answers[key] = answer
        return answer

    return cached_lookup


def raw_bytes(raw: bytes | str) -> bytes:
    return raw.encode("utf-8", "replace") if isinstance(raw, str) else bytes(raw)


def as_object(value: object, where: str, what: str = "data entry") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(f"{where}: {what} is not an object")
    return value


def request_id_of(value: object) -> int | str | None:
    if isinstance(value, bool):
        return None
    return value if isinstance(value, int | str) else None
