"""Fuzzing campaign: every venue parser (checked and hot paths) and every stage's decode get
structure-aware hostile input, and none of it may crash.

    .venv/bin/python -m bench.fuzz [--examples 100000] [--target NAME ...] [--seed N]
    .venv/bin/python -m bench.fuzz --list
    .venv/bin/python -m bench.fuzz seed --md md.bin     # rebuild the seed files (needs the sim)

Targets (``--list``):

- ``<venue>.parse``: ``svc_connector/venues/<venue>/parse.py::parse_frame``, one frame;
- ``<venue>.hot``: a short run of frames through two sessions of the venue, one with its hot
  path (``hot.py``) on and one with it off; both must give the same results frame by frame;
- ``<venue>.rest``: ``parse_instruments`` on REST bodies (Deribit and OKX, whose recorded
  bodies are the seeds);
- ``book.decode``, ``iv.decode``, ``surface.decode``: the stage handlers (``BookStage``,
  ``IvStage``, ``SurfaceStage``) over a short run of bus messages of one partition, as their
  runtime calls them.

Inputs are mutations of real frames and messages (``tests/fixtures/venues/`` and the seed
files in ``tests/fixtures/fuzz/seeds/``, recorded from the simulator): values replaced by
other types, missing or extra fields, huge numbers, NaN/inf as strings and as bare tokens,
unicode, deep nesting, truncated or corrupted text; for the stages, protobuf fields set to
NaN, infinities, extremes, empty or foreign strings, cleared oneofs, repeated entries
dropped or duplicated, and the bytes truncated, flipped or extended. Hypothesis generates
them (``Phase.generate`` only: the campaign counts, it does not stop at the first failure).

Verdicts per input:

- **crash**: an exception escaped; or the parser's safety net caught one (a dead letter
  whose reason starts with "internal", i.e. a bug, not a reasoned reject); or the hot path
  raised or answered differently from the checked path. Each distinct crash is written to
  ``tests/fixtures/fuzz/corpus/<target>/`` (``--save-crashes``), which the test suite replays.
- **reject**: dead-lettered with a reason (counted by the reason's leading word, the label the
  ``dead_letters`` metric uses);
- **ok**: handled.

The test suite replays the corpus and runs a short, derandomized campaign per target
(``tests/fuzz/``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import math
import random
import re
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tests.connector.hot_path import frame_view
from volstream.bus.consumer import AckMetadata, InMessage
from volstream.bus.dlq import DLQ_REASON
from volstream.v1 import market_data_pb2 as md_pb

ROOT = Path(__file__).resolve().parents[1]
FUZZ_DIR = ROOT / "tests" / "fixtures" / "fuzz"
SEED_DIR = FUZZ_DIR / "seeds"
CORPUS_DIR = FUZZ_DIR / "corpus"
VENUE_FIXTURES = ROOT / "tests" / "fixtures" / "venues"
VENUES = ("deribit", "okx", "bybit", "binance")
STAGES = ("book", "iv", "surface")
RECEIVE_NS = 1_700_000_000_000_000_000

# One input: (subject, payload) messages in order. Venue frames use the subject "ws".
Message_ = tuple[str, bytes]
Example = tuple[Message_, ...]


# ---- verdicts and tallies --------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    kind: str  # "ok", "reject" or "crash"
    detail: str = ""


OK = Verdict("ok")


class Crash(Exception):
    """A finding that is a bug although nothing escaped (a caught internal error, a hot path
    that answers differently from the checked path)."""


@dataclass
class Tally:
    target: str
    tried: int = 0
    ok: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    crashes: Counter[str] = field(default_factory=Counter)
    crash_examples: dict[str, Example] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, verdict: Verdict, example: Example) -> None:
        """Count ``verdict``; crashes are grouped by their signature with numbers taken out
        (one timestamp overflow is one bug, whatever the value)."""
        self.tried += 1
        if verdict.kind == "ok":
            self.ok += 1
        elif verdict.kind == "reject":
            self.rejects[verdict.detail] += 1
        else:
            signature = _DIGITS.sub("N", verdict.detail)
            self.crashes[signature] += 1
            self.crash_examples.setdefault(signature, example)


_DIGITS = re.compile(r"-?[0-9]+")


def crash_signature(exc: BaseException) -> str:
    """Exception type, message head and the innermost frame in this repository's code."""
    if isinstance(exc, Crash):
        return str(exc)[:300]
    where = "?"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename)
        if ROOT in path.parents and ".venv" not in path.parts and path.name != "fuzz.py":
            where = f"{path.relative_to(ROOT)}:{frame.lineno}"
            break
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}({text}) at {where}"


def reject_label(reason: str) -> str:
    if not reason.strip():
        raise Crash("a dead letter without a reason")
    return _reason_head(reason)


def _reason_head(reason: str) -> str:
    """A short, stable label for a free-text reason: its first ``: ``-separated part that
    reads as prose (two words or more), numbers and quoted values taken out."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"|-?[0-9]+", "", reason)
    parts = [part.strip() for part in text.split(": ")]
    for part in parts:
        if sum(1 for word in part.split() if any(ch.isalpha() for ch in word)) >= 2:
            return part[:60]
    return parts[0][:60] or "other"


# ---- JSON mutations ---------------------------------------------------------------------------

# Bare tokens that JSON encoders will not write: put in place of a value after encoding.
RAW_TOKENS = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1E+400",
    "-0",
    "0.0e0",
    "123456789012345678901234567890",
    "-123456789012345678901234567890",
    "18446744073709551616",
    "9223372036854775808",
    "-9223372036854775809",
    "1" + "0" * 400,
    "0." + "0" * 400 + "1",
    "1.7976931348623157e308",
    "5e-324",
    "00012",
    "+1",
    ".5",
    "1.",
    "undefined",
)
JUNK_VALUES: tuple[object, ...] = (
    None,
    True,
    False,
    0,
    -1,
    1,
    0.0,
    -0.0,
    1.5,
    1e308,
    -1e308,
    2**63 - 1,
    -(2**63),
    "",
    " ",
    "0",
    "-1",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "0x10",
    "1_000",
    "１２３",
    "٣",
    "snapshot",
    "update",
    "delete",
    "change",
    "BTC",
    "btc",
    "ETH-30JUL21-2800-C",
    "BTC-30JUN23-45000-P",
    "BTC-USD-220527-30000-C",
    "BTC-251219-89000-C",
    "BTC-1JAN00-0-C",
    "BTC-99XXX99-1-Q",
    "é",
    "\u202e",
    "\ud7ff",
    "\x00",
    "a" * 1000,
    [],
    {},
    [[]],
    [["new", 1.0, 1.0]],
    [["1", "2", "0", "1"]],
    [["1", "2"]],
    {"a": 1},
)
_RAW_MARK = "\u0000RAW"


class _Raw:
    """A placeholder for a bare token (see RAW_TOKENS)."""

    def __init__(self, token: str) -> None:
        self.token = token


# Code points for random text: ASCII, Latin-1, BMP letters, surrogates' neighbours, emoji.
_TEXT_RANGES = (
    (0x20, 0x7E),
    (0x00, 0x1F),
    (0xA0, 0xFF),
    (0x400, 0x4FF),
    (0xD7F0, 0xD7FF),
    (0x1F600, 0x1F64F),
)


def random_text(rng: random.Random, longest: int = 12) -> str:
    low, high = _TEXT_RANGES[rng.randrange(len(_TEXT_RANGES))]
    return "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(0, longest)))


def random_double(rng: random.Random) -> float:
    """Any 64-bit pattern: NaNs, infinities, subnormals and everything else."""
    value: float = struct.unpack("<d", rng.randbytes(8))[0]
    return value


def json_junk(rng: random.Random) -> object:
    """A value of any JSON type, or a bare token, to put where another value was."""
    pick = rng.randrange(8)
    if pick <= 2:
        return JUNK_VALUES[rng.randrange(len(JUNK_VALUES))]
    if pick == 3:
        return _Raw(RAW_TOKENS[rng.randrange(len(RAW_TOKENS))])
    if pick == 4:
        return rng.randint(-(2**63), 2**63 - 1)
    if pick == 5:
        value = random_double(rng)
        return value if math.isfinite(value) else _Raw(repr(value))
    if pick == 6:
        return random_text(rng)
    return _nested(rng.randint(0, 3000))


def _nested(depth: int) -> object:
    """A value nested ``depth`` lists deep (written as text: encoders refuse deep nesting)."""
    return _Raw("[" * depth + "1" + "]" * depth)


def _slots(doc: object, limit: int = 400) -> list[tuple[Any, Any]]:
    """(container, key) of every value in ``doc`` (dict keys and list indexes), breadth first."""
    found: list[tuple[Any, Any]] = []
    queue: list[object] = [doc]
    at = 0
    while at < len(queue) and len(found) < limit:
        node = queue[at]
        at += 1
        if isinstance(node, dict):
            for key, value in node.items():
                found.append((node, key))
                queue.append(value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                found.append((node, index))
                queue.append(value)
    return found


def _as_text(value: object) -> object:
    """A number as a numeric string and back: venues disagree on the spelling."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and abs(number) < 2**63 else number
    return value


def mutate_json(rng: random.Random, seed: bytes) -> bytes:
    """``seed`` with 0 to 4 structural edits, then maybe a text edit."""
    try:
        doc: object = orjson.loads(seed)
    except orjson.JSONDecodeError:
        doc = None
    if doc is not None and rng.randrange(10) > 0:
        for _ in range(rng.randint(0, 4)):
            doc = _edit_tree(rng, doc)
        text = _dumps(doc)
    else:
        text = seed
    if rng.randrange(6) == 0:
        text = text_edit(rng, text)
    return text


def _edit_tree(rng: random.Random, doc: object) -> object:
    slots = _slots(doc)
    if not slots:
        return json_junk(rng)
    container, key = slots[rng.randrange(len(slots))]
    op = rng.randrange(10)
    value = container[key]
    if op <= 3:
        container[key] = json_junk(rng)
    elif op == 4:
        del container[key]
    elif op == 5:
        container[key] = _as_text(value)
    elif op == 6:
        # Another value of the frame in this place (a price where a size goes, ...).
        other_container, other_key = slots[rng.randrange(len(slots))]
        other = other_container[other_key]
        container[key] = (
            other if isinstance(other, str | int | float | _Raw) or other is None else [other]
        )
    elif op == 7:
        container[key] = ([value], {"v": value}, [value, value])[rng.randrange(3)]
    elif op == 8 and isinstance(container, dict):
        name = ("zz", "", "é", "data", "type", "id", "code", "seq", "ts")[rng.randrange(9)]
        container[name] = json_junk(rng)
    elif op == 8:
        container.insert(key, json_junk(rng))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        container[key] = (value * 1e300, -value, value + 1, value - 1, value * 1000, 0)[
            rng.randrange(6)
        ]
    else:
        container[key] = json_junk(rng)
    return doc


def _dumps(doc: object) -> bytes:
    raws: list[str] = []

    def default(value: object) -> object:
        if isinstance(value, _Raw):
            raws.append(value.token)
            return f"{_RAW_MARK}{len(raws) - 1}"
        raise TypeError

    try:
        text = orjson.dumps(doc, default=default)
    except (TypeError, orjson.JSONEncodeError):
        return b"{}"  # a document orjson cannot write (a cycle made by an edit)
    for index, token in enumerate(raws):
        text = text.replace(f'"\\u0000RAW{index}"'.encode(), token.encode(), 1)
    return text


def text_edit(rng: random.Random, text: bytes) -> bytes:
    """Truncated, corrupted or extended text."""
    n = len(text)
    at = rng.randint(0, n)
    op = rng.randrange(8)
    if op == 0:
        return text[:at]
    if op == 1:
        return text[:at] + rng.randbytes(rng.randint(0, 8)) + text[at:]
    if op == 2 and n:
        at = min(at, n - 1)
        return text[:at] + bytes([text[at] ^ (1 << rng.randrange(8))]) + text[at + 1 :]
    if op == 3:
        bad = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80")[rng.randrange(4)]
        return text[:at] + bad + text[at:]
    if op == 4:
        return text + (b" ", b"x", b"}", b"\n{}", b"\x00")[rng.randrange(5)]
    if op == 5:
        depth = rng.randint(1, 5000)
        return b"[" * depth + b"]" * (depth if rng.randrange(2) else 0)
    if op == 6:
        return (b"", b"null", b"[]", b"1", b'"x"', b"{}", b"\xef\xbb\xbf{}")[rng.randrange(7)]
    return text.replace(b'"', b"", 1)


# ---- protobuf mutations -----------------------------------------------------------------------

DOUBLES = (
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    -1.0,
    1e-300,
    5e-324,
    1e300,
    -1e300,
    1.7976931348623157e308,
    2.0**63,
)
INTS = (0, -1, 1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**62)
STRINGS = (
    "",
    "deribit",
    "all",
    "BTC",
    "btc",
    "XRP",
    "BTC-1JAN00-0-C",
    "BTC-99XXX99-1-Q",
    "a.b",
    "*",
    ">",
    "é",
    "\u202e",
    "x" * 300,
)
# Descriptors typed loosely: the upb and pure-Python classes differ in their stubs.
_F: Any = FieldDescriptor


def _proto_slots(message: Message, limit: int = 300) -> list[tuple[Message, Any, int]]:
    """(message, field, index) of the fields reached breadth first: set and unset scalars,
    repeated fields (index -1) and their entries, sub-messages."""
    found: list[tuple[Message, Any, int]] = []
    queue = [message]
    at = 0
    while at < len(queue) and len(found) < limit:
        node = queue[at]
        at += 1
        for fd in node.DESCRIPTOR.fields:
            if _is_repeated(fd):
                items = getattr(node, fd.name)
                found.append((node, fd, -1))
                for index, item in enumerate(items):
                    found.append((node, fd, index))
                    if fd.type == _F.TYPE_MESSAGE:
                        queue.append(item)
            elif fd.type == _F.TYPE_MESSAGE:
                found.append((node, fd, -1))
                if node.HasField(fd.name):
                    queue.append(getattr(node, fd.name))
            else:
                found.append((node, fd, -1))
    return found


def _is_repeated(fd: Any) -> bool:
    if hasattr(fd, "is_repeated"):
        return bool(fd.is_repeated)
    return bool(fd.label == _F.LABEL_REPEATED)


def _scalar(rng: random.Random, fd: Any) -> object:
    t = fd.type
    if t in (_F.TYPE_DOUBLE, _F.TYPE_FLOAT):
        value = DOUBLES[rng.randrange(len(DOUBLES))] if rng.randrange(2) else random_double(rng)
        if t == _F.TYPE_FLOAT and math.isfinite(value) and abs(value) > 3e38:
            value = math.copysign(math.inf, value)
        return value
    if t in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64):
        return (
            INTS[rng.randrange(len(INTS))] if rng.randrange(2) else rng.randint(-(2**63), 2**63 - 1)
        )
    if t in (_F.TYPE_INT32, _F.TYPE_SINT32, _F.TYPE_SFIXED32):
        return rng.randint(-(2**31), 2**31 - 1)
    if t in (_F.TYPE_UINT64, _F.TYPE_FIXED64):
        return rng.randint(0, 2**64 - 1)
    if t in (_F.TYPE_UINT32, _F.TYPE_FIXED32):
        return rng.randint(0, 2**32 - 1)
    if t == _F.TYPE_BOOL:
        return bool(rng.randrange(2))
    if t == _F.TYPE_ENUM:
        values = fd.enum_type.values
        return (
            values[rng.randrange(len(values))].number if rng.randrange(3) else rng.randint(-5, 99)
        )
    if t == _F.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 16))
    return STRINGS[rng.randrange(len(STRINGS))] if rng.randrange(2) else random_text(rng)


def _edit_proto(rng: random.Random, message: Message) -> None:
    slots = _proto_slots(message)
    node, fd, index = slots[rng.randrange(len(slots))]
    op = rng.randrange(6)
    if _is_repeated(fd):
        items = getattr(node, fd.name)
        if index < 0 or op == 0:
            if op <= 1:
                node.ClearField(fd.name)
            elif len(items):
                # Repeat an entry (a level, a ticker, a smile twice in one message).
                entry = items[rng.randrange(len(items))]
                items.extend([entry] * rng.randint(1, 3))
            return
        if op == 1:
            del items[index]
        elif fd.type != _F.TYPE_MESSAGE:
            items[index] = _scalar(rng, fd)
        else:
            _edit_proto(rng, items[index])
        return
    if fd.type == _F.TYPE_MESSAGE:
        if op <= 1:
            node.ClearField(fd.name)
        else:
            getattr(node, fd.name).SetInParent()
        return
    if op == 0 and (fd.has_presence or fd.containing_oneof is not None):
        node.ClearField(fd.name)
        return
    setattr(node, fd.name, _scalar(rng, fd))


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def byte_edit(rng: random.Random, data: bytes) -> bytes:
    """Truncated, flipped or extended protobuf bytes (wire-level damage)."""
    n = len(data)
    at = rng.randint(0, n)
    op = rng.randrange(7)
    if op == 0:
        return data[:at]
    if op == 1 and n:
        at = min(at, n - 1)
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
    if op == 2:
        return data[:at] + rng.randbytes(rng.randint(1, 12)) + data[at:]
    if op == 3:
        # A well-formed field of any number and wire type, possibly unknown to the schema.
        number = rng.randint(1, 40)
        wire = (0, 1, 2, 5)[rng.randrange(4)]
        tag = _varint(number << 3 | wire)
        if wire == 0:
            body = _varint(INTS[rng.randrange(len(INTS))])
        elif wire in (1, 5):
            body = rng.randbytes(8 if wire == 1 else 4)
        else:
            payload = rng.randbytes(rng.randint(0, 20))
            body = _varint(len(payload) + (0, 0, 1, 1000)[rng.randrange(4)]) + payload
        return data[:at] + tag + body + data[at:]
    if op == 4:
        return data + data[: rng.randint(0, n)]
    if op == 5:
        return rng.randbytes(rng.randint(0, 64))
    return b""


def mutate_proto(rng: random.Random, seed: bytes, message_type: type[Message]) -> bytes:
    """``seed`` decoded, 0 to 4 field edits, re-encoded, then maybe damaged as bytes."""
    message = message_type.FromString(seed)
    for _ in range(rng.randint(0, 4)):
        _edit_proto(rng, message)
    data = message.SerializeToString()
    if rng.randrange(5) == 0:
        data = byte_edit(rng, data)
    return data


# ---- seeds ------------------------------------------------------------------------------------


def _lines(path: Path) -> list[bytes]:
    if path.suffix == ".jsonl":
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    return [path.read_bytes()]


@cache
def venue_frames(venue: str) -> tuple[bytes, ...]:
    """Recorded venue frames (fixtures) then simulator frames (seeds), in recorded order."""
    frames: list[bytes] = []
    for path in sorted((VENUE_FIXTURES / venue).glob("*.json*")):
        if "rest_" in path.name or "recv_ts" in path.name or "http_" in path.name:
            continue
        frames.extend(_lines(path))
    sim = SEED_DIR / f"{venue}.jsonl"
    if sim.exists():
        frames.extend(_lines(sim))
    return tuple(frames)


@cache
def venue_instruments(venue: str) -> tuple[md_pb.Instrument, ...]:
    path = SEED_DIR / f"{venue}.instruments.pb"
    if not path.exists():
        return ()
    return tuple(md_pb.InstrumentSet.FromString(path.read_bytes()).instruments)


@cache
def rest_bodies(venue: str) -> tuple[bytes, ...]:
    """Recorded REST bodies, their lists cut to a few entries (the shape is what matters, and
    a body of 400 instruments would make each input 30 times slower)."""
    return tuple(
        trim_json(p.read_bytes(), 12) for p in sorted((VENUE_FIXTURES / venue).glob("rest_*.json"))
    )


def trim_json(frame: bytes, longest: int) -> bytes:
    """``frame`` with every list cut to ``longest`` entries (unchanged if not JSON)."""
    try:
        doc = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return frame

    def cut(node: object) -> object:
        if isinstance(node, list):
            return [cut(item) for item in node[:longest]]
        if isinstance(node, dict):
            return {key: cut(value) for key, value in node.items()}
        return node

    return orjson.dumps(cut(doc))


def trim_proto(message: Message, longest: int) -> None:
    """Every repeated field of ``message`` (recursively) cut to ``longest`` entries, keeping
    entries spread over the list (a smile keeps wings and centre)."""
    for fd, value in message.ListFields():
        if _is_repeated(fd):
            if len(value) > longest:
                step = len(value) / longest
                kept = [value[int(i * step)] for i in range(longest)]
                if fd.type == _F.TYPE_MESSAGE:
                    kept = [type(k).FromString(k.SerializeToString()) for k in kept]
                    del value[:]
                    value.extend(kept)
                else:
                    value[:] = kept
            if fd.type == _F.TYPE_MESSAGE:
                for item in value:
                    trim_proto(item, longest)
        elif fd.type == _F.TYPE_MESSAGE:
            trim_proto(value, longest)


_LEN = struct.Struct("<II")


def write_records(path: Path, records: Sequence[Message_]) -> None:
    with path.open("wb") as f:
        for subject, payload in records:
            raw = subject.encode()
            f.write(_LEN.pack(len(raw), len(payload)))
            f.write(raw)
            f.write(payload)


def read_records(path: Path) -> list[Message_]:
    data = path.read_bytes()
    out: list[Message_] = []
    at = 0
    while at < len(data):
        n_subject, n_payload = _LEN.unpack_from(data, at)
        at += _LEN.size
        subject = data[at : at + n_subject].decode()
        at += n_subject
        out.append((subject, data[at : at + n_payload]))
        at += n_payload
    return out


@cache
def stage_seeds(stage: str) -> tuple[Message_, ...]:
    """The stage's input messages recorded from the pipeline (``seed`` command), in order."""
    path = SEED_DIR / f"{stage}.records"
    return tuple(read_records(path)) if path.exists() else ()


# ---- targets ----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    # Makes one input from a seeded random generator (see from_seed).
    generate: Callable[[random.Random], Example]
    run: Callable[[Example], Verdict]
    # Run before the campaign; the stage targets make their handlers here.
    setup: Callable[[], None] = lambda: None


def _window(rng: random.Random, seeds: Sequence[Any], longest: int) -> list[Any]:
    """A run of consecutive seeds (state that builds up: snapshot then changes)."""
    start = rng.randrange(len(seeds))
    return list(seeds[start : start + rng.randint(1, longest)])


def from_seed(generate: Callable[[random.Random], Example]) -> st.SearchStrategy[Example]:
    """Hypothesis draws one 64-bit seed per input and ``generate`` mutates with it: one draw
    instead of dozens keeps the engine's cost per input small (100,000 inputs per target),
    and an input is still reproduced from the seed hypothesis recorded."""
    return st.integers(0, 2**64 - 1).map(lambda n: generate(random.Random(n)))


def frames_generator(venue: str, longest: int) -> Callable[[random.Random], Example]:
    seeds = venue_frames(venue)

    def generate(rng: random.Random) -> Example:
        window = _window(rng, seeds, longest)
        out = []
        for frame in window:
            if len(window) > 1 and rng.randrange(3) == 0:
                out.append(("ws", frame))
            else:
                out.append(("ws", mutate_json(rng, frame)))
        return tuple(out)

    return generate


def _check_frame_result(result: Any) -> Verdict:
    """Crash for a caught internal error; reject for a dead letter; else ok."""
    rejects = []
    for letter in result.dead_letters:
        if letter.reason.startswith("internal"):
            raise Crash(letter.reason[:300])
        rejects.append(reject_label(letter.reason))
    for item in result.events:
        item.event.SerializeToString()  # a value protobuf refuses would raise here
    return Verdict("reject", rejects[0]) if rejects else OK


def _parse_target(venue: str) -> Target:
    module = __import__(f"svc_connector.venues.{venue}.parse", fromlist=["parse_frame"])
    parse_frame = module.parse_frame

    def run(example: Example) -> Verdict:
        verdict = OK
        for _subject, frame in example:
            v = _check_frame_result(parse_frame(frame, RECEIVE_NS))
            if v.kind == "reject":
                verdict = v
        return verdict

    return Target(f"{venue}.parse", frames_generator(venue, 1), run)


def new_session(venue: str) -> Any:
    """The connector's own session for ``venue`` (as the pool makes it), with a plain header
    sequence counter, and the seed instruments."""
    from svc_connector.runtime.pool import PooledConnector
    from svc_connector.venues import registry
    from svc_connector.venues.base import ConnectorConfig, MemorySink

    connector = registry.get(venue).make_connector(
        ConnectorConfig(currencies=("BTC", "ETH")), MemorySink()
    )
    assert isinstance(connector, PooledConnector)
    session: Any = connector.new_session()
    session.set_instruments(venue_instruments(venue))
    session._shared_sequence = itertools.count(1).__next__
    return session


def _hot_target(venue: str) -> Target:
    def run(example: Example) -> Verdict:
        checked, hot = new_session(venue), new_session(venue)
        checked.hot_path = False
        verdict = OK
        for index, (_subject, frame) in enumerate(example):
            now = RECEIVE_NS + index * 1_000_000
            expected = checked.on_frame(frame, now)
            # A hot path may raise to step aside (before it touches any state): on_frame then
            # takes the checked path. One that raised too late shows as a difference.
            answer = hot.on_frame(frame, now)
            got, want = frame_view(answer), frame_view(expected)
            if got != want:
                differ = sorted(k for k in want if got[k] != want[k])
                raise Crash(f"hot path differs from the checked path in {', '.join(differ)}")
            v = _check_frame_result(expected)
            if v.kind == "reject":
                verdict = v
        return verdict

    return Target(f"{venue}.hot", frames_generator(venue, 4), run)


def _rest_target(venue: str) -> Target:
    module = __import__(f"svc_connector.venues.{venue}.parse", fromlist=["parse_instruments"])

    bodies = rest_bodies(venue)

    def generate(rng: random.Random) -> Example:
        return (("rest", mutate_json(rng, bodies[rng.randrange(len(bodies))])),)

    def run(example: Example) -> Verdict:
        result = module.parse_instruments(example[0][1], RECEIVE_NS)
        for instrument in result.instruments:
            instrument.SerializeToString()
        return _check_frame_result_like(result.dead_letters)

    return Target(f"{venue}.rest", generate, run)


def _check_frame_result_like(dead_letters: Sequence[Any]) -> Verdict:
    for letter in dead_letters:
        if letter.reason.startswith("internal"):
            raise Crash(letter.reason[:300])
    if dead_letters:
        return Verdict("reject", reject_label(dead_letters[0].reason))
    return OK


# The stage handlers run on one event loop, made once.
_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    return _LOOP


@cache
def stage_env() -> Any:
    from replay.stages import ReplayEnv
    from volstream.config import Config
    from volstream.subjects import Subjects
    from volstream.telemetry import setup_telemetry

    cfg = Config(venues=VENUES, currencies=("BTC", "ETH"))
    return ReplayEnv(cfg, Subjects(cfg.namespace), setup_telemetry("fuzz"))


def new_stage(stage: str) -> Any:
    """The production handler of ``stage`` over every partition, on this thread."""
    from svc_book.service import BookStage
    from svc_iv.service import IvStage
    from svc_surface.service import SurfaceStage

    env = stage_env()
    partitions = env.cfg.owned_partitions()
    if stage == "book":
        return BookStage(env, partitions)
    if stage == "iv":
        return IvStage(env, partitions, offload=False)
    return SurfaceStage(env, partitions, offload=False)


def _stage_message_type(subject: str) -> type[Message]:
    from volstream.v1 import book_pb2, iv_pb2

    parts = subject.split(".")
    if parts[0] == "md" or (parts[0] == "book" and parts[-1] == "md"):
        return md_pb.MarketDataBatch
    if parts[0] == "book":
        return book_pb2.TopOfBookBatch
    return iv_pb2.SmileBatch


OTHER_SUBJECTS = (
    "md.deribit.btc.book",
    "md.nowhere.btc.ticker",
    "md.deribit.xrp.book",
    "book.okx.xrp",
    "book.okx.eth.keyframe",
    "iv.all.btc",
    "iv.deribit",
    "surface.deribit.btc",
)


def stage_generator(stage: str) -> Callable[[random.Random], Example]:
    seeds = stage_seeds(stage)

    def generate(rng: random.Random) -> Example:
        window = _window(rng, seeds, 4)
        out = []
        for subject, payload in window:
            if len(window) > 1 and rng.randrange(3) == 0:
                out.append((subject, payload))
            else:
                out.append((subject, mutate_proto(rng, payload, _stage_message_type(subject))))
        # Now and then a message on a subject of another partition or stage.
        if rng.randrange(20) == 0:
            out.append((OTHER_SUBJECTS[rng.randrange(len(OTHER_SUBJECTS))], out[-1][1]))
        return tuple(out)

    return generate


# A cut time no partition reaches: the surface stage then never comes due to fit.
NEVER_NS = 2**62


def _stage_target(stage: str, fit: bool = True) -> Target:
    """The stage's handler over one input. ``fit`` False (surface only): its cadence never
    comes due, so the input is decoded and folded into the cores without the SVI fit (a fit
    costs ~0.1 s; ``surface.fit`` runs the whole handler on fewer inputs)."""

    def run(example: Example) -> Verdict:
        handler = new_stage(stage)
        if not fit:
            for clock in handler.clocks.values():
                clock.last_cut_ns = NEVER_NS
        try:
            batch = [
                InMessage(
                    subject, payload, None, seq, AckMetadata("FUZZ", "fuzz", 1, seq, seq, 0, 0)
                )
                for seq, (subject, payload) in enumerate(example, 1)
            ]
            verdict = OK
            # One message per handle() call, as the in-process bus and a slow live consumer
            # deliver them, so each output is checked against its input.
            for msg in batch:
                if stage == "iv":
                    outputs = handler.handle_sync([msg])
                else:
                    outputs = _loop().run_until_complete(handler.handle([msg]))
                for out in outputs:
                    if out.headers and DLQ_REASON in out.headers:
                        if out.payload != msg.data:
                            raise Crash("a dead letter without the original payload")
                        verdict = Verdict("reject", reject_label(out.headers[DLQ_REASON]))
                    elif out.jetstream and not out.subject.endswith(".md"):
                        # (book.<venue>.<ccy>.md relays its input verbatim, undecoded.)
                        _decode_output(out.subject, out.payload)
            return verdict
        finally:
            if stage == "iv":
                handler.pool.shutdown(wait=False)

    name = f"{stage}.fit" if stage == "surface" and fit else f"{stage}.decode"
    return Target(name, stage_generator(stage), run)


def _decode_output(subject: str, payload: bytes) -> None:
    """What a stage publishes must decode (its consumer would dead-letter it otherwise)."""
    from volstream.v1 import surface_pb2

    kind = subject.split(".")[0]
    if kind == "surface":
        surface_pb2.Surface.FromString(payload)
    elif kind in ("book", "iv"):
        _stage_message_type(subject).FromString(payload)


def all_targets() -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for venue in VENUES:
        targets[f"{venue}.parse"] = _parse_target(venue)
        targets[f"{venue}.hot"] = _hot_target(venue)
        if rest_bodies(venue):
            targets[f"{venue}.rest"] = _rest_target(venue)
    for stage in STAGES:
        target = _stage_target(stage, fit=stage != "surface")
        targets[target.name] = target
    targets["surface.fit"] = _stage_target("surface", fit=True)
    return targets


# ---- the campaign -----------------------------------------------------------------------------


def verdict_of(target: Target, example: Example) -> Verdict:
    try:
        return target.run(example)
    except Exception as exc:
        return Verdict("crash", crash_signature(exc))


def campaign(
    target: Target, examples: int, *, seed: int | None = None, derandomize: bool = False
) -> Tally:
    """Run ``examples`` generated inputs through ``target``; never stops at a crash."""
    tally = Tally(target.name)
    target.setup()

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=derandomize,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    @given(from_seed(target.generate))
    def one(example: Example) -> None:
        tally.add(verdict_of(target, example), example)

    if seed is not None and not derandomize:
        one = hypothesis_seed(seed)(one)
    started = time.perf_counter()
    one()
    tally.seconds = time.perf_counter() - started
    return tally


# ---- corpus -----------------------------------------------------------------------------------


def encode_example(target: str, example: Example, note: str) -> bytes:
    return orjson.dumps(
        {
            "target": target,
            "note": note,
            "messages": [
                {"subject": s, "payload_b64": base64.b64encode(p).decode()} for s, p in example
            ],
        },
        option=orjson.OPT_INDENT_2,
    )


def decode_example(data: bytes) -> tuple[str, Example]:
    doc = orjson.loads(data)
    return doc["target"], tuple(
        (m["subject"], base64.b64decode(m["payload_b64"])) for m in doc["messages"]
    )


def save_example(target: str, example: Example, note: str, folder: Path = CORPUS_DIR) -> Path:
    data = encode_example(target, example, note)
    path = folder / target / f"{hashlib.sha1(data).hexdigest()[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def corpus(folder: Path = CORPUS_DIR) -> Iterator[tuple[Path, str, Example]]:
    for path in sorted(folder.glob("*/*.json")):
        target, example = decode_example(path.read_bytes())
        yield path, target, example


# ---- seeds (``seed`` command) -----------------------------------------------------------------


def build_seeds(md_path: Path, frames_per_venue: int) -> None:
    """Record simulator frames per venue and the stages' input messages (run once; the
    results are committed)."""
    from bench.bench_connector import capture

    SEED_DIR.mkdir(parents=True, exist_ok=True)
    for venue in VENUES:
        captured = asyncio.run(capture(venue, frames_per_venue * 4))
        frames = [f.encode() if isinstance(f, str) else f for f in captured.frames]
        chosen = [
            trim_json(f, 10) if len(f) > 4096 else f for f in _diverse(frames, frames_per_venue)
        ]
        (SEED_DIR / f"{venue}.jsonl").write_bytes(b"\n".join(chosen) + b"\n")
        symbols = {s for f in chosen for s in _symbols_in(f)}
        kept = [i for i in captured.instruments if i.symbol in symbols]
        instrument_set = md_pb.InstrumentSet(venue=venue, instruments=kept)
        (SEED_DIR / f"{venue}.instruments.pb").write_bytes(instrument_set.SerializeToString())
        print(f"{venue}: {len(chosen)} frames, {len(kept)} instruments")
    asyncio.run(_stage_seed_records(md_path))


def _symbols_in(frame: bytes) -> set[str]:
    text = frame.decode("utf-8", "replace")
    return {
        word.strip('"') for word in text.replace(",", " ").replace(":", " ").split() if "-" in word
    }


def _diverse(frames: list[bytes], wanted: int) -> list[bytes]:
    """The first frames in order (books build up) plus the first of every other shape."""
    head = frames[: wanted // 2]
    seen = {_shape(f) for f in head}
    extra = []
    for frame in frames[wanted // 2 :]:
        shape = _shape(frame)
        if shape not in seen:
            seen.add(shape)
            extra.append(frame)
    return (head + extra)[:wanted]


def _shape(frame: bytes) -> str:
    try:
        doc = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return "?"
    if not isinstance(doc, dict):
        return type(doc).__name__
    parts = []
    for key in ("method", "topic", "stream", "e", "type", "action", "event", "op"):
        value = doc.get(key)
        if isinstance(value, str):
            parts.append(f"{key}={value.split('.')[0]}")
    params = doc.get("params")
    if isinstance(params, dict) and isinstance(params.get("channel"), str):
        parts.append(params["channel"].split(".")[0])
    arg = doc.get("arg")
    if isinstance(arg, dict):
        parts.append(str(arg.get("channel")))
    data = doc.get("data")
    if isinstance(data, dict) and isinstance(data.get("e"), str):
        parts.append(data["e"])
    return "/".join(parts) or ",".join(sorted(doc)[:3])


# Stage seeds: two partitions, the nearest expiries, few levels: small messages that keep
# the campaign fast and still reach the cores' deep paths (fits included).
SEED_PARTITIONS = (("deribit", "btc"), ("okx", "eth"))
SEED_EXPIRIES = 2
SEED_MESSAGES = 60
SEED_LIST_LENGTH = 16


async def _stage_seed_records(md_path: Path) -> None:
    from bench.golden_stages import read_records as golden_records
    from replay.stages import close_stages, local_stages
    from volstream.bus.inprocess import InProcessBus

    records = [
        (s, p) for s, p in golden_records(md_path) if tuple(s.split(".")[1:3]) in SEED_PARTITIONS
    ]
    expiries: dict[str, set[int]] = {}
    for subject, payload in records:
        if subject.endswith(".instrument"):
            batch = md_pb.MarketDataBatch.FromString(payload)
            for event in batch.events:
                times = sorted({i.expiry_time_ns for i in event.instrument_set.instruments})
                expiries.setdefault(subject, set()).update(times[:SEED_EXPIRIES])
    keep_symbols: set[str] = set()
    trimmed: list[Message_] = []
    for subject, payload in records:
        batch = md_pb.MarketDataBatch.FromString(payload)
        if subject.endswith(".instrument"):
            for event in batch.events:
                s = event.instrument_set
                kept = [i for i in s.instruments if i.expiry_time_ns in expiries[subject]]
                del s.instruments[:]
                s.instruments.extend(kept)
                keep_symbols.update(i.symbol for i in kept)
        else:
            events = [
                e
                for e in batch.events
                if _event_symbol(e) in keep_symbols or _event_symbol(e) == ""
            ]
            del batch.events[:]
            batch.events.extend(events)
            if not events:
                continue
        trimmed.append((subject, batch.SerializeToString()))
    env = stage_env()
    stages = local_stages(env)
    published: list[Message_] = []
    streams = {"md": "MD", "book": "BOOK", "iv": "IV", "surface": "SURFACE"}
    bus = InProcessBus(
        stages,
        lambda s: streams.get(s.split(".", 1)[0]),
        on_publish=lambda m: published.append((m.subject, m.payload)),
    )
    for subject, payload in trimmed:
        await bus.publish(subject, payload)
    await close_stages(stages)
    by_stage = {"book": "md", "iv": "book", "surface": "iv"}
    for stage, source in by_stage.items():
        chosen = [(s, p) for s, p in published if s.split(".")[0] == source][: SEED_MESSAGES * 3]
        # Spread over the recording: the start (instruments, first snapshots) and later.
        picked = (
            chosen[: SEED_MESSAGES // 2] + chosen[SEED_MESSAGES // 2 :: 4][: SEED_MESSAGES // 2]
        )
        picked = [(s, trim_record(s, p)) for s, p in picked]
        write_records(SEED_DIR / f"{stage}.records", picked)
        size = sum(len(p) for _, p in picked)
        print(f"{stage}: {len(picked)} seed messages, {size} bytes")


def trim_record(subject: str, payload: bytes) -> bytes:
    """A stage seed with its lists cut (events, tops, smiles, quotes, levels, instruments)."""
    message = _stage_message_type(subject).FromString(payload)
    trim_proto(message, SEED_LIST_LENGTH)
    return message.SerializeToString()


def _event_symbol(event: md_pb.MarketDataEvent) -> str:
    case = event.WhichOneof("event")
    if case is None:
        return ""
    return str(getattr(getattr(event, case), "symbol", ""))


# ---- command line -----------------------------------------------------------------------------


def print_table(tallies: Sequence[Tally]) -> None:
    print(
        f"{'target':<16} {'inputs':>8} {'ok':>8} {'rejects':>8} {'crashes':>8} {'s':>7}"
        "  top reject reasons"
    )
    for t in tallies:
        top = ", ".join(f"{r} {n}" for r, n in t.rejects.most_common(4))
        print(
            f"{t.target:<16} {t.tried:>8} {t.ok:>8} {sum(t.rejects.values()):>8} "
            f"{sum(t.crashes.values()):>8} {t.seconds:>7.1f}  {top}"
        )
    for t in tallies:
        for signature, n in t.crashes.most_common():
            print(f"CRASH {t.target}: {n} x {signature}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", nargs="?", default="run", choices=("run", "seed"))
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--target", action="append", default=[], help="a target name (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed")
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument(
        "--save-crashes", action="store_true", help="write each crash to the corpus"
    )
    parser.add_argument(
        "--md", type=Path, help="seed: an MD recording (bench.golden_stages record)"
    )
    parser.add_argument("--frames", type=int, default=60, help="seed: frames kept per venue")
    args = parser.parse_args(argv)
    if args.command == "seed":
        if args.md is None or not args.md.is_file():
            parser.error(f"seed needs --md with an MD recording, got {args.md}")
        build_seeds(args.md, args.frames)
        return 0
    targets = all_targets()
    if args.list:
        print("\n".join(targets))
        return 0
    unknown = [name for name in args.target if name not in targets]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)} (known: {', '.join(targets)})")
    if args.examples < 1:
        parser.error(f"--examples must be at least 1, got {args.examples}")
    tallies = []
    for name in args.target or list(targets):
        tally = campaign(targets[name], args.examples, seed=args.seed)
        tallies.append(tally)
        print_table([tally])
        sys.stdout.flush()
        if args.save_crashes:
            for signature, example in tally.crash_examples.items():
                print(f"  saved {save_example(name, example, signature)}")
    print()
    print_table(tallies)
    return 1 if any(t.crashes for t in tallies) else 0


if __name__ == "__main__":
    raise SystemExit(main())
