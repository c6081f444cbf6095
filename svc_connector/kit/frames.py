"""Never-raise decoding of whole frames and REST bodies: a frame or entry that cannot be
understood becomes a counted dead letter with the reason, never an exception."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from svc_connector.kit.fields import FieldError, as_object, raw_bytes
from svc_connector.venues.base import DeadLetter, FrameResult, InstrumentParseResult
from volstream.v1 import market_data_pb2 as md_pb


def decode_frame(raw: bytes | str, result: FrameResult) -> dict[str, Any] | None:
    """Count a frame and decode it; ``None`` after dead-lettering malformed JSON or a frame
    that is not a JSON object."""
    counts = result.counts
    counts["frames"] = counts.get("frames", 0) + 1  # not +=: Counter.__missing__ is Python
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        result.dead_letters.append(DeadLetter(raw_bytes(raw), f"malformed JSON: {exc}"))
        return None
    if not isinstance(message, dict):
        result.dead_letters.append(
            DeadLetter(raw_bytes(raw), f"not a JSON object: {type(message).__name__}")
        )
        return None
    return message


def entry_bytes(entry: object) -> bytes:
    """An entry of a decoded frame as JSON again, for its dead letter. orjson reads 1024
    levels of nesting but writes only 255: a deeper entry is named, not re-encoded."""
    try:
        return orjson.dumps(entry)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return f"<entry not re-encodable: {exc}>".encode()


def each_entry(
    entries: Iterable[object], where: str, result: FrameResult, parse_one: Callable[[Any], None]
) -> None:
    """Entries of an array channel are independent: a bad one is dead-lettered alone."""
    for entry in entries:
        try:
            parse_one(as_object(entry, where))
        except FieldError as exc:
            result.counts["bad_entry"] += 1
            result.dead_letters.append(DeadLetter(entry_bytes(entry), str(exc)))


def internal_error(raw: bytes | str, where: str, exc: Exception) -> FrameResult:
    """The result that replaces one whose making raised (a bug): a counted dead letter."""
    result = FrameResult()
    result.counts[f"{where}_internal_error"] += 1
    result.dead_letters.append(
        DeadLetter(raw_bytes(raw), f"internal {where} error: {type(exc).__name__}: {exc}")
    )
    return result


def decode_rest_object(body: bytes | str, result: InstrumentParseResult) -> dict[str, Any] | None:
    """A REST body as a JSON object; ``None`` after dead-lettering anything else."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        result.dead_letters.append(DeadLetter(raw_bytes(body), f"malformed JSON: {exc}"))
        return None
    if not isinstance(message, dict):
        result.dead_letters.append(DeadLetter(raw_bytes(body), "not a JSON object"))
        return None
    return message


def collect_instruments(
    entries: Iterable[object],
    parse_one: Callable[[dict[str, Any], Counter[str]], md_pb.Instrument | None],
    result: InstrumentParseResult,
) -> None:
    """Parse each instrument entry; a bad one (or a parser bug) is dead-lettered alone."""
    for entry in entries:
        if not isinstance(entry, dict):
            result.dead_letters.append(
                DeadLetter(entry_bytes(entry), "instrument is not an object")
            )
            continue
        try:
            instrument = parse_one(entry, result.counts)
        except FieldError as exc:
            result.dead_letters.append(DeadLetter(entry_bytes(entry), str(exc)))
            continue
        except Exception as exc:  # a parser bug must not stop discovery
            result.dead_letters.append(
                DeadLetter(entry_bytes(entry), f"internal parse error: {type(exc).__name__}: {exc}")
            )
            continue
        if instrument is not None:
            result.instruments.append(instrument)


def guarded(raw: bytes | str, result: FrameResult, dispatch: Callable[[], None]) -> None:
    """Run ``dispatch``; a FieldError or a parser bug becomes a dead letter, never an exception.

    A frame that raises yields no events (it is dead-lettered whole). Channels that carry an
    array of independent entries dead-letter a bad entry alone and keep the others.
    """
    try:
        dispatch()
    except FieldError as exc:
        result.events.clear()
        result.dead_letters.append(DeadLetter(raw_bytes(raw), str(exc)))
    except Exception as exc:  # a parser bug must not stop the connector: dead-letter it
        result.events.clear()
        result.counts["parse_internal_error"] += 1
        result.dead_letters.append(
            DeadLetter(raw_bytes(raw), f"internal parse error: {type(exc).__name__}: {exc}")
        )
