"""Deribit's hot path (msgspec decode of book and ticker notifications) against the checked
path: two fresh sessions, one with ``hot_path`` off, get the same frames at the same receive
times and must return exactly the same results, frame by frame.

Streams: every recorded fixture file as is, real simulator traffic (real sim + websockets),
and perturbed copies of hot-path frames (missing fields, wrong types, "", "nan", huge
numbers, sequence gaps, duplicates, reordering, unknown fields) among good ones.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.bench_connector import Capture, _new_session, capture
from svc_connector.venues.deribit import DeribitSession, parse_instruments
from tests.connector.hot_path import frame_view
from volstream.v1 import market_data_pb2 as md_pb

Frame = bytes | str


def _session(instruments: list[md_pb.Instrument]) -> DeribitSession:
    """The connector's own session, its shared sequence counter (clock-based) swapped for a
    plain one so that two sessions stamp the same header sequences."""
    session = _new_session("deribit", instruments)
    assert isinstance(session, DeribitSession)
    session._shared_sequence = itertools.count(1).__next__
    return session


def _compare(
    frames: Sequence[Frame],
    instruments: Iterable[md_pb.Instrument] = (),
    step_ns: int = 0,
) -> DeribitSession:
    """Feed ``frames`` to a checked and a hot session; assert equal results; return the hot one."""
    instruments = list(instruments)
    checked, hot = _session(instruments), _session(instruments)
    checked.hot_path = False
    for index, frame in enumerate(frames):
        now_ns = 1_700_000_000_000_000_000 + index * step_ns
        expected = frame_view(checked.on_frame(frame, now_ns))
        got = frame_view(hot.on_frame(frame, now_ns))
        assert got == expected, f"frame {index}: {frame!r:.300}"
    assert checked.hot_hits == 0
    return hot


# ---- recorded fixtures -----------------------------------------------------------------------


def _fixture_frames(path: Path) -> list[bytes]:
    if path.suffix == ".jsonl":
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    return [path.read_bytes()]


@pytest.fixture(scope="module")
def recorded_instruments(venue_fixtures: Path) -> list[md_pb.Instrument]:
    body = (venue_fixtures / "deribit" / "rest_get_instruments_BTC_2021-07-22.json").read_bytes()
    instruments = parse_instruments(body, 0).instruments
    assert len(instruments) > 100
    return instruments


def test_every_recorded_fixture_file_gives_identical_results(
    venue_fixtures: Path, recorded_instruments: list[md_pb.Instrument]
) -> None:
    paths = sorted((venue_fixtures / "deribit").glob("*.json*"))
    assert len(paths) >= 8
    hits = 0
    for path in paths:
        frames = _fixture_frames(path)
        for instruments in ((), recorded_instruments):
            hits += _compare(frames, instruments, step_ns=1_000_000).hot_hits
    # The book and ticker recordings are hot-path traffic (~250 notifications, twice).
    assert hits > 300


# ---- real simulator traffic ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_capture() -> Capture:
    """3000 frames a real connector received from the real simulator over websockets."""
    captured = asyncio.run(capture("deribit", 3000))
    # Subscribe answers are left out; how many interleave with the data depends on timing.
    assert len(captured.frames) >= 1500
    return captured


def test_simulator_traffic_gives_identical_results_mostly_on_the_hot_path(
    sim_capture: Capture,
) -> None:
    frames = sim_capture.frames
    hot = _compare(frames, sim_capture.instruments, step_ns=100_000)
    # Book snapshots/changes and tickers are ~99.9% of the sim traffic.
    assert hot.hot_hits >= 0.95 * len(frames), (hot.hot_hits, len(frames))


def test_simulator_traffic_without_instruments_gives_identical_results(
    sim_capture: Capture,
) -> None:
    """Premium units then come from the symbols' names."""
    hot = _compare(sim_capture.frames[:1500])
    assert hot.hot_hits >= 0.95 * 1500


# ---- perturbed frames ------------------------------------------------------------------------

JUNK: tuple[object, ...] = (
    "",
    "nan",
    "inf",
    "0.5",
    None,
    True,
    False,
    [],
    {},
    -1,
    0,
    0.0,
    -0.0,
    1e308,
    -1e308,
    10**30,
    -(10**30),
    2**63,
    2**63 - 1,
    2**64,
    -(2**63),
    1.5,
    12345678901234567890123,
)
TICKER_KEYS = (
    "instrument_name",
    "timestamp",
    "best_bid_price",
    "best_bid_amount",
    "best_ask_price",
    "best_ask_amount",
    "mark_price",
    "bid_iv",
    "ask_iv",
    "mark_iv",
    "underlying_price",
    "underlying_index",
    "index_price",
    "interest_rate",
    "open_interest",
    "state",
    "greeks",
)
BOOK_KEYS = ("instrument_name", "timestamp", "type", "change_id", "prev_change_id", "bids", "asks")
# Raw text edits (JSON that orjson and msgspec might read differently).
TEXT_EDITS: tuple[tuple[str, str], ...] = (
    ('"timestamp":', '"timestamp":1e999,"timestamp":'),
    ('"timestamp":', '"timestamp":1.0e3,"x":'),
    ('"data":{', '"data":{"timestamp":1,'),
    ('"data":{', '"data":{"instrument_name":"ETH-1JAN30-1-C",'),
    ('"params":{', '"params":{"channel":"ticker.x.y",'),
    ('"method":"subscription"', '"method":"subscription","method":"heartbeat"'),
    ('"method":"subscription"', '"method":"subscription","error":{"code":1}'),
    ('"jsonrpc":"2.0"', '"jsonrpc":"2.0","id":7,"result":[]'),
    ("}}}", "}}} "),
    ("}}}", "}}}x"),
    ("}}}", "}}"),
    ('"instrument_name":"', '"instrument_name":"\\ud800'),
    ('"instrument_name":"', '"instrument_name":"\\u00e9'),
    ('"channel":"', '"channel":"\\u0062'),
    (".0,", ".0e400,"),
    (".0,", "00000000000000000000000000000000000000000000000000000000000000,"),
    ("[", "[[1],"),
    # Unread places: orjson refuses a number beyond a double anywhere in the frame.
    ('"data":{', '"data":{"zz":1e400,'),
    ('"data":{', '"data":{"zz":[1' + "0" * 400 + "],"),
    ('"data":{', '"data":{"zz":{"a":"\\u00e9"},'),
    ('"stats":{', '"stats":{"v":1E+999,'),
    ('"greeks":{', '"greeks":{"zz":1,'),
    ('"jsonrpc":"2.0"', '"jsonrpc":"2.0","usOut":-1e999'),
)


BYTE_EDITS: tuple[tuple[bytes, bytes], ...] = (
    (b'"data":{', b'"data":{"zz":"\xff\xfe",'),
    (b'"state":"', b'"state":"\xc0\xaf'),
    (b'"stats":{', b'"stats":{"\xed\xa0\x80":1,'),
    (b'"underlying_index":"', b'"underlying_index":"\xff'),
    (b'"instrument_name":"', b'"instrument_name":"\xc3\xa9'),  # valid: e-acute
)


def _dumps(message: object) -> str:
    # json, not orjson: it writes integers beyond 64 bits.
    return json.dumps(message, separators=(",", ":"))


def _perturb_data(data: dict[str, Any], keys: Sequence[str], rng: random.Random) -> None:
    key = rng.choice(keys)
    roll = rng.random()
    if roll < 0.15:
        data.pop(key, None)
    elif roll < 0.25:
        data[f"unknown_{rng.randint(0, 9)}"] = rng.choice(JUNK)
    elif key in ("bids", "asks") and isinstance(data.get(key), list) and data[key]:
        side = data[key]
        entry = list(side[rng.randrange(len(side))])
        where = rng.randrange(4)
        if where == 3:
            entry.append(1.0)
        else:
            entry[where] = rng.choice((*JUNK, "new", "change", "delete", "update"))
        side[rng.randrange(len(side))] = entry
    elif key == "greeks" and isinstance(data.get(key), dict) and rng.random() < 0.7:
        data[key][rng.choice(("delta", "gamma", "vega", "theta", "rho"))] = rng.choice(JUNK)
    elif key == "instrument_name" and rng.random() < 0.5:
        data[key] = rng.choice(("XYZ-1JAN30-1-C", "BTC-PERPETUAL", "ETH-30JUL21-2800-C", "BTC"))
    elif key == "state" and rng.random() < 0.7:
        # The lifecycle states (January 2026): not open -> the checked path drops the prices.
        data[key] = rng.choice(
            ("open", "locked", "settlement", "delivered", "inactive", "halted", "archivized")
        )
    elif key == "type" and rng.random() < 0.5:
        data[key] = rng.choice(("snapshot", "change", "update", "SNAPSHOT"))
    elif key in ("prev_change_id", "change_id") and isinstance(data.get(key), int):
        data[key] += rng.choice((-2, -1, 1, 2, -(10**6)))
    else:
        data[key] = rng.choice(JUNK)


def _perturbed(frame: Frame, rng: random.Random) -> list[Frame]:
    """Bad or odd copies of one hot-path frame (several, when it is a replay)."""
    text = frame.decode() if isinstance(frame, bytes) else frame
    roll = rng.random()
    if isinstance(frame, bytes) and roll < 0.05:  # invalid UTF-8, mostly where nothing reads it
        old_bytes, new_bytes = rng.choice(BYTE_EDITS)
        return [frame.replace(old_bytes, new_bytes, 1)]
    if roll < 0.15:
        old, new = rng.choice(TEXT_EDITS)
        return [text.replace(old, new, 1)]
    if roll < 0.25:  # duplicate
        return [text, text]
    message = orjson.loads(text)
    data = message["params"]["data"]
    channel: str = message["params"]["channel"]
    if roll < 0.35:
        message["params"]["channel"] = rng.choice(
            (channel + ".x", channel.split(".")[0], "trades" + channel[4:], "book..", "book.x.y")
        )
    elif roll < 0.4:
        message["method"] = rng.choice(("heartbeat", "Subscription", None, 1))
    elif roll < 0.45:
        message["params"]["data"] = rng.choice((None, [], "x", 1))
    else:
        _perturb_data(data, BOOK_KEYS if channel.startswith("book.") else TICKER_KEYS, rng)
    out = _dumps(message)
    return [out.encode() if isinstance(frame, bytes) else out]


def _perturbed_stream(frames: Sequence[Frame], seed: int, rate: float) -> list[Frame]:
    rng = random.Random(seed)
    stream: list[Frame] = []
    held: list[Frame] = []  # changes held back and re-sent later: out of order
    for frame in frames:
        text = frame.decode() if isinstance(frame, bytes) else frame
        hot_shaped = '"method":"subscription"' in text and (
            '"channel":"book.' in text or '"channel":"ticker.' in text
        )
        if hot_shaped and rng.random() < rate:
            if rng.random() < 0.1 and '"type":"change"' in text:
                held.append(frame)
                continue
            stream.extend(_perturbed(frame, rng))
            if rng.random() < 0.5:
                stream.append(frame)  # the good one too
        else:
            stream.append(frame)
        if held and rng.random() < 0.05:
            stream.append(held.pop(0))
    stream.extend(held)
    return stream


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_perturbed_simulator_frames_give_identical_results(sim_capture: Capture, seed: int) -> None:
    stream = _perturbed_stream(sim_capture.frames, seed, rate=0.05)
    # 0.2 s apart: resyncs time out and are requested again.
    hot = _compare(stream, sim_capture.instruments, step_ns=200_000_000)
    assert hot.hot_hits >= 0.5 * len(stream)


def test_heavily_perturbed_recorded_frames_give_identical_results(
    venue_fixtures: Path, recorded_instruments: list[md_pb.Instrument]
) -> None:
    frames: list[Frame] = []
    for name in ("ws_book_raw_options_2021-07-22.jsonl", "ws_ticker_options_2021-07-22.jsonl"):
        frames.extend(_fixture_frames(venue_fixtures / "deribit" / name))
    for seed in range(20):
        stream = _perturbed_stream(frames, seed, rate=0.5)
        _compare(stream, recorded_instruments, step_ns=1_000_000_000)
        _compare(stream)


def test_every_junk_value_in_every_field_gives_identical_results(sim_capture: Capture) -> None:
    """Each read field of a good change and a good ticker, set to each junk value or removed."""
    frames = sim_capture.frames
    # The first change whose book had a snapshot before it (which instruments change first
    # depends on the simulator's calendar, hence on the date).
    snapshots: dict[str, Frame] = {}
    snapshot: Frame | None = None
    change: Frame | None = None
    for frame in frames:
        if '"channel":"book.' not in frame:
            continue
        data = orjson.loads(frame)["params"]["data"]
        symbol = data["instrument_name"]
        if data.get("type") == "snapshot":
            snapshots[symbol] = frame  # the latest: the change chains to it
        elif data.get("type") == "change" and symbol in snapshots:
            snapshot, change = snapshots[symbol], frame
            break
    assert snapshot is not None and change is not None, "no book change after its snapshot"
    ticker = next(f for f in frames if '"channel":"ticker.' in f)
    cases: list[Frame] = []
    for good, keys in ((change, BOOK_KEYS), (ticker, TICKER_KEYS)):
        for key in keys:
            for value in (*JUNK, "missing"):
                message = copy.deepcopy(orjson.loads(good))
                data = message["params"]["data"]
                if value == "missing":
                    data.pop(key)
                else:
                    data[key] = value
                cases.append(_dumps(message))
    for case in cases:
        # A fresh pair per case: the snapshot, the odd frame, then the good change.
        hot = _compare([snapshot, case, change, ticker], sim_capture.instruments)
        assert hot.hot_hits >= 1
    # The unperturbed pair takes the hot path all the way.
    assert _compare([snapshot, change, ticker], sim_capture.instruments).hot_hits == 3
