"""BybitSession's hot path against its checked path: the same frames fed to two fresh sessions
(``hot_path`` True / False) must give exactly the same results, frame by frame.

Streams: every recorded fixture frame as is, real simulator traffic (captured through a real
connector over websockets), and perturbed copies of hot-path frames (missing fields, wrong
types, "", NaN, huge numbers, "-0", sequence gaps, duplicates, extra fields) between good ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import bench_connector
from svc_connector.venues.bybit.session import BybitSession
from tests.connector.hot_path import frame_view
from volstream.v1 import market_data_pb2 as md_pb

Frame = bytes | str


def _sessions(instruments: list[md_pb.Instrument]) -> tuple[BybitSession, BybitSession]:
    hot: BybitSession = bench_connector._new_session("bybit", instruments)
    checked: BybitSession = bench_connector._new_session("bybit", instruments)
    checked.hot_path = False
    assert hot.hot_path
    # The connector's shared counter starts at the wall clock: give each its own from 1.
    for session in (hot, checked):
        session._shared_sequence = itertools.count(1).__next__
    return hot, checked


def _compare(frames: Iterable[Frame], instruments: list[md_pb.Instrument]) -> BybitSession:
    """Feed both sessions; assert equal outputs per frame; the hot session is returned."""
    hot, checked = _sessions(instruments)
    for index, frame in enumerate(frames):
        receive_time_ns = 1_700_000_000_000_000_000 + index
        expected = frame_view(checked.on_frame(frame, receive_time_ns))
        got = frame_view(hot.on_frame(frame, receive_time_ns))
        assert got == expected, f"frame {index}: {frame!r:.400}"
    assert checked.hot_hits == 0
    return hot


# ---- (a) recorded fixtures -----------------------------------------------------------------


def _fixture_frames(path: Path) -> list[bytes]:
    if path.suffix == ".jsonl":
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    return [path.read_bytes()]  # one pretty-printed frame per .json file


def test_every_recorded_fixture_frame_gives_the_checked_result(venue_fixtures: Path) -> None:
    paths = sorted((venue_fixtures / "bybit").glob("*.json*"))
    assert len(paths) >= 4, "recorded Bybit fixtures missing"
    hits = 0
    for path in paths:
        hits += _compare(_fixture_frames(path), []).hot_hits
    # Both snapshots, the tardis book and the tickers are hot-path shapes.
    assert hits >= 5
    # And all of them in one stream (the tardis delta follows its snapshot).
    _compare([frame for path in paths for frame in _fixture_frames(path)], [])


# ---- (b) real simulator traffic ------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_capture() -> bench_connector.Capture:
    """~3000 frames a real connector received from the simulator (real websockets)."""
    return asyncio.run(bench_connector.capture("bybit", 3000))


def test_simulator_traffic_gives_the_checked_result(sim_capture: bench_connector.Capture) -> None:
    frames = sim_capture.frames
    assert len(frames) >= 1000
    hot = _compare(frames, sim_capture.instruments)
    # Books and tickers are nearly all of the traffic: the hot path must take them.
    notifications = sum(1 for frame in frames if '"topic"' in str(frame))
    assert notifications > len(frames) * 0.9
    assert hot.hot_hits >= notifications * 0.95, (hot.hot_hits, notifications, len(frames))


# ---- (c) perturbed hot-path frames ---------------------------------------------------------

SYMBOL = "BTC-27DEC24-100000-C"
BOOK_TOPIC = f"orderbook.25.{SYMBOL}"
TS = 1_735_000_000_000


def _book(kind: str, update_id: int) -> dict[str, Any]:
    return {
        "id": f"{BOOK_TOPIC}-{update_id}",
        "topic": BOOK_TOPIC,
        "ts": TS + update_id,
        "data": {
            "s": SYMBOL,
            "b": [["1500", "2.5"], ["1495", "0"], ["1490", "10.25"]],
            "a": [["1510", "1.5"], ["1520", "0"]],
            "u": update_id,
            "seq": 4_000_000_000 + update_id,
        },
        "type": kind,
        "cts": TS + update_id,
    }


def _ticker() -> dict[str, Any]:
    return {
        "id": f"tickers.{SYMBOL}-1",
        "topic": f"tickers.{SYMBOL}",
        "ts": TS,
        "data": {
            "symbol": SYMBOL,
            "bidPrice": "1500",
            "bidSize": "2.5",
            "bidIv": "0.51",
            "askPrice": "1510",
            "askSize": "1.5",
            "askIv": "0.53",
            "lastPrice": "1505",
            "markPrice": "1504.5",
            "indexPrice": "95000.1",
            "markPriceIv": "0.52",
            "underlyingPrice": "95100.5",
            "openInterest": "12.5",
            "delta": "0.45",
            "gamma": "0.00001",
            "vega": "80.5",
            "theta": "-120.25",
            "predictedDeliveryPrice": "0",
        },
        "type": "snapshot",
        "cts": TS,
    }


Edit = Callable[[dict[str, Any]], None]


def _dumps(message: object) -> str:
    """JSON without orjson's limits (integers beyond 64 bits stay in)."""
    return json.dumps(message, separators=(",", ":"))


def _set(path: tuple[str | int, ...], value: object) -> Edit:
    def edit(message: dict[str, Any]) -> None:
        target: Any = message
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _drop(path: tuple[str, ...]) -> Edit:
    def edit(message: dict[str, Any]) -> None:
        target: Any = message
        for key in path[:-1]:
            target = target[key]
        target.pop(path[-1], None)

    return edit


NUMBER_JUNK: tuple[object, ...] = (
    "",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "-1e999",
    "-0",
    "-0.0",
    "0",
    "-1",
    "-5.5",
    " 5",
    "5.",
    ".5",
    "+5",
    "05",
    "1_000",
    "0x10",
    "abc",
    "null",
    "true",
    5,
    5.5,
    0,
    -0.0,
    10**30,
    1e300,
    None,
    True,
    [],
    {},
)
INTEGER_JUNK: tuple[object, ...] = (
    "12",
    "-0",
    "1e3",
    "12.0",
    " 12",
    "abc",
    "",
    12.0,
    1e3,
    -1,
    0,
    2**63,
    2**64,
    10**30,
    None,
    True,
    [],
)


def _book_edits() -> Iterator[Edit]:
    for key in ("topic", "ts", "data", "type", "id"):
        yield _drop((key,))
    for key in ("s", "b", "a", "u", "seq"):
        yield _drop(("data", key))
    for value in INTEGER_JUNK:
        yield _set(("ts",), value)
        yield _set(("data", "u"), value)
    for value in NUMBER_JUNK:
        yield _set(("data", "b", 0, 0), value)
        yield _set(("data", "b", 1, 1), value)
        yield _set(("data", "a", 0, 1), value)
        yield _set(("data", "a", 1, 0), value)
    for level in ([], ["1500"], ["1500", "1", "extra"], "1500", None, {"p": "1"}):
        yield _set(("data", "b", 0), level)
    sides: tuple[object, ...] = ("", None, 5, {}, [[]], "x")
    for side in sides:
        yield _set(("data", "a"), side)
    for symbol in ("", "FOO", "ZZZ-27DEC24-100000-C", 5, None, "BTC-27DEC24-100000-P"):
        yield _set(("data", "s"), symbol)
    for topic in ("orderbook", "orderbookX.25.A", "orderbook.", "trades.BTC", "", 5, "tickers.X"):
        yield _set(("topic",), topic)
    for kind in ("", "Delta", "snap", 5, None):
        yield _set(("type",), kind)
    yield _set(("data",), [])
    yield _set(("data",), "x")
    yield _set(("extra",), {"nested": [1, 2, {"x": "-0"}]})
    yield _set(("data", "extra"), "-0")
    yield _set(("data", "symbol"), 5)
    yield _set(("data", "bidPrice"), "x")
    yield _set(("op",), "subscribe")


def _ticker_edits() -> Iterator[Edit]:
    numbers = [key for key, value in _ticker()["data"].items() if key != "symbol"]
    for key in numbers:
        yield _drop(("data", key))
        for value in NUMBER_JUNK:
            yield _set(("data", key), value)
    for key in ("topic", "ts", "data", "type"):
        yield _drop((key,))
    yield _drop(("data", "symbol"))
    for symbol in ("", "FOO", 5, None, "ETH-27DEC24-4000-P"):
        yield _set(("data", "symbol"), symbol)
    for value in INTEGER_JUNK:
        yield _set(("ts",), value)
    for topic in ("tickers", "tickers.", "tickersX.BTC", "orderbook.25.X"):
        yield _set(("topic",), topic)
    yield _set(("data", "u"), "x")
    yield _set(("data", "b"), [["1", "2"]])
    yield _set(("extra",), [1, "-0"])
    # Empty sides and zero IVs as the venue sends them.
    for key in ("bidPrice", "bidSize", "askPrice", "askSize", "bidIv", "askIv", "markPriceIv"):
        yield _set(("data", key), "0")


def _perturbed_stream() -> Iterator[str]:
    """Good frames with perturbed copies between them, each batch after a fresh snapshot."""
    update_id = 1000
    for edit in itertools.chain(_book_edits(), _ticker_edits()):
        yield _dumps(_book("snapshot", update_id))
        yield _dumps(_book("delta", update_id + 1))
        for base in (_book("delta", update_id + 2), _ticker(), _book("snapshot", update_id + 2)):
            bad = copy.deepcopy(base)
            # An edit for the other topic's fields may not apply: then the copy stays good.
            with contextlib.suppress(KeyError, IndexError, TypeError):
                edit(bad)
            yield _dumps(bad)
        # The next delta continues the book or not, depending on what the edit did.
        yield _dumps(_book("delta", update_id + 3))
        yield _dumps(_ticker())
        update_id += 10


def _raw_number_frames() -> Iterator[str]:
    """Numbers json.dumps cannot write, in the fields the venue sends (orjson rejects some)."""
    for number in ("1e999", "-1E400", "1" * 400, "-" + "9" * 30, "1.5", "1e3", str(2**64)):
        # "zz": a field the venue never sent (the hot path does not read it).
        for key in ("cts", "seq", "ts", "u", "zz"):
            frame = _book("delta", 7)
            target = frame if key in ("cts", "ts", "zz") else frame["data"]
            target[key] = "@"
            yield _dumps(_book("snapshot", 6))
            yield _dumps(frame).replace('"@"', number)
            yield _dumps(_book("delta", 7))


def test_perturbed_frames_give_the_checked_result() -> None:
    frames = [*_perturbed_stream(), *_raw_number_frames()]
    hot = _compare(frames, [])
    assert hot.hot_hits > len(frames) * 0.5
    assert hot.hot_misses > 300  # the perturbed ones mostly fall back


def _sequence_stream() -> Iterator[str]:
    snapshot = 5000
    yield _dumps(_book("delta", snapshot - 1))  # no snapshot yet: reset + resubscribe
    yield _dumps(_book("snapshot", snapshot))
    for step in (1, 1, 0, -1, 1, 3, 1, 1):  # duplicate, replay, gap (then resyncing)
        snapshot += step
        yield _dumps(_book("delta", snapshot))
    yield _dumps(_book("snapshot", 0))  # an empty book
    yield _dumps(_book("delta", 1))
    yield _dumps(_book("delta", 2))
    yield _dumps(_book("delta", 1))  # venue restart
    yield _dumps(_book("snapshot", 7))
    yield _dumps(_book("delta", 8))
    bad = _book("snapshot", 20)
    bad["data"]["b"] = [["1", "2"], ["3", "4"]]  # bids not best first: sorted
    yield _dumps(bad)
    yield _dumps(_book("delta", 21))


def test_sequence_oddities_give_the_checked_result() -> None:
    frames = list(_sequence_stream())
    hot = _compare(frames, [])
    assert 0 < hot.hot_hits < len(frames)
    # Same as bytes (the client may hand either).
    _compare([frame.encode() for frame in frames], [])


def test_random_mutations_give_the_checked_result() -> None:
    rng = random.Random(20261121)
    values: list[object] = [*NUMBER_JUNK, *INTEGER_JUNK]
    frames: list[str] = []
    update_id = 100
    frames.append(_dumps(_book("snapshot", update_id)))
    for _ in range(3000):
        update_id += rng.choice((1, 1, 1, 1, 0, 2, -1))
        base = _book("delta", update_id) if rng.random() < 0.7 else _ticker()
        if rng.random() < 0.3:
            data = base["data"]
            for _ in range(rng.randint(1, 3)):
                key = rng.choice(list(data))
                side: object = data[key]
                if key in ("b", "a") and isinstance(side, list) and side and rng.random() < 0.7:
                    rng.choice(side)[rng.randint(0, 1)] = rng.choice(values)
                else:
                    data[key] = rng.choice(values)
        if rng.random() < 0.05:
            update_id += 1
            frames.append(_dumps(_book("snapshot", update_id)))
        frames.append(_dumps(base))
    hot = _compare(frames, [])
    assert hot.hot_hits > 500  # gaps leave a book resyncing until its next snapshot
