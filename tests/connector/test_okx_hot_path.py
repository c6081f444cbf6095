"""OkxSession's hot path returns exactly what the checked path returns, frame by frame.

Two fresh sessions (``hot_path`` True / False) get the same frames: the recorded fixtures,
real simulator traffic, and perturbed copies of hot-path frames interleaved with good ones.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.bench_connector import Capture, _new_session, capture
from svc_connector.venues.okx.session import OkxSession
from tests.connector.hot_path import frame_view

NOW_NS = 1_795_000_000_000_000_000


def _compare(
    new_session: Callable[[], OkxSession], frames: Iterable[bytes | str]
) -> tuple[OkxSession, int]:
    """Feed both sessions every frame, assert equal results; (hot session, frames fed)."""
    hot, checked = new_session(), new_session()
    checked.hot_path = False
    count = 0
    for index, frame in enumerate(frames):
        expected = frame_view(checked.on_frame(frame, NOW_NS + index))
        assert frame_view(hot.on_frame(frame, NOW_NS + index)) == expected, (index, frame)
        count += 1
    assert checked.hot_hits == 0
    return hot, count


def _fixture_frames(venue_fixtures: Path) -> list[bytes]:
    frames: list[bytes] = []
    for path in sorted((venue_fixtures / "okx").glob("ws_*.jsonl")) + sorted(
        (venue_fixtures / "okx").glob("tardis_*.jsonl")
    ):
        frames.extend(line for line in path.read_bytes().splitlines() if line.strip())
    return frames


@pytest.mark.parametrize("verify", [True, False])
def test_recorded_fixtures_give_identical_results(venue_fixtures: Path, verify: bool) -> None:
    frames = _fixture_frames(venue_fixtures)
    assert len(frames) > 99
    # The recorded books have no seqId (older venue versions): those take the checked path.
    _, fed = _compare(lambda: OkxSession(verify_checksums=verify), frames)
    assert fed == len(frames)


@pytest.fixture(scope="module")
def sim_capture() -> Capture:
    return asyncio.run(capture("okx", 3000))


def _sim_session(cap: Capture) -> Callable[[], OkxSession]:
    def make() -> OkxSession:
        session = _new_session("okx", cap.instruments)
        assert isinstance(session, OkxSession)
        # The connector's shared counter starts at the clock: both sessions start at 1.
        session._shared_sequence = itertools.count(1).__next__
        return session

    return make


def test_simulator_traffic_gives_identical_results_mostly_on_the_hot_path(
    sim_capture: Capture,
) -> None:
    frames = sim_capture.frames
    # Subscribe answers interleave with data by timing and are filtered out: the count varies.
    assert len(frames) >= 1000
    hot, fed = _compare(_sim_session(sim_capture), frames)
    kinds = {orjson.loads(f).get("arg", {}).get("channel") for f in frames}
    assert {"books", "opt-summary"} <= kinds
    # The sim sends checksum 0 like the live venue: nearly every frame is a hot one.
    assert hot.hot_hits >= 0.9 * fed, (hot.hot_hits, fed)


# ---- perturbed copies ------------------------------------------------------------------------

Message = dict[str, Any]
Perturb = Callable[[Message, random.Random], None]


def _book_entry(m: Message) -> Message:
    entry: Message = m["data"][0]
    return entry


def _a_level(m: Message, rng: random.Random) -> list[Any]:
    entry = _book_entry(m)
    side = entry["bids"] or entry["asks"]
    if not side:
        entry["bids"] = side = [["0.05", "1", "0", "1"]]
    level: list[Any] = rng.choice(side)
    return level


def _set_level(index: int, value: Any) -> Perturb:
    def perturb(m: Message, rng: random.Random) -> None:
        _a_level(m, rng)[index] = value

    return perturb


def _drop(key: str) -> Perturb:
    def perturb(m: Message, rng: random.Random) -> None:
        _book_entry(m).pop(key, None)

    return perturb


def _set(key: str, value: Any) -> Perturb:
    def perturb(m: Message, rng: random.Random) -> None:
        _book_entry(m)[key] = value

    return perturb


def _shift(key: str, by: int) -> Perturb:
    def perturb(m: Message, rng: random.Random) -> None:
        _book_entry(m)[key] += by

    return perturb


def _top(key: str, value: Any) -> Perturb:
    def perturb(m: Message, rng: random.Random) -> None:
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value

    return perturb


def _short_level(m: Message, rng: random.Random) -> None:
    del _a_level(m, rng)[1:]


def _second_entry(m: Message, rng: random.Random) -> None:
    m["data"].append(copy.deepcopy(m["data"][0]))


BOOK_PERTURBATIONS: Sequence[Perturb] = (
    _drop("ts"),
    _drop("seqId"),
    _drop("prevSeqId"),
    _drop("checksum"),
    _drop("asks"),
    _set("ts", 1795257675568),
    _set("ts", ""),
    _set("ts", "17952576755x"),
    _set("ts", "99999999999999999"),
    _set("seqId", "123"),
    _set("seqId", 2**60),
    _set("seqId", "1e2"),
    _set("checksum", "0"),
    _set("prevSeqId", 1.5),
    _set("checksum", 12345),
    _set("checksum", 2**40),
    _set("checksum", None),
    _set("extra", {"unknown": [1, 2]}),
    _shift("prevSeqId", 5),
    _shift("prevSeqId", -1),
    _shift("seqId", -3),
    _set_level(0, ""),
    _set_level(0, "nan"),
    _set_level(0, "inf"),
    _set_level(0, "1e999"),
    _set_level(0, 0.05),
    _set_level(0, "-1"),
    _set_level(1, "nan"),
    _set_level(1, "-2"),
    _set_level(1, "1e999"),
    _set_level(1, "0"),
    _set_level(1, "1" * 400),
    _set_level(1, "-0"),
    _set_level(1, "-0.0"),
    _set_level(1, 7),
    _set_level(1, "1e2"),
    _set_level(2, 0),
    _set_level(3, "x"),
    _short_level,
    _second_entry,
    _top("action", None),
    _top("action", "partial"),
    _top("event", "subscribe"),
    _top("extra", 1),
    _top("arg", {"channel": "books", "instId": ""}),
    _top("arg", {"channel": "books", "instId": "XYZ"}),
    _top("arg", {"channel": "books5", "instId": "BTC-USD-261122-56500-C"}),
    _top("data", {"asks": []}),
)


def _summary_entry(m: Message, rng: random.Random) -> Message:
    entry: Message = rng.choice(m["data"])
    return entry


def _entry_set(key: str, value: Any) -> Perturb:
    def perturb(m: Message, rng: random.Random) -> None:
        entry = _summary_entry(m, rng)
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value

    return perturb


SUMMARY_PERTURBATIONS: Sequence[Perturb] = (
    _entry_set("instId", None),
    _entry_set("instId", ""),
    _entry_set("instId", "XYZ-USD-261122-1-C"),
    _entry_set("ts", None),
    _entry_set("ts", 1795257675484),
    _entry_set("deltaBS", None),
    _entry_set("deltaBS", ""),
    _entry_set("gammaBS", 0.5),
    _entry_set("vegaBS", "nan"),
    _entry_set("thetaBS", "-0"),
    _entry_set("thetaBS", "-0.0"),
    _entry_set("gammaBS", -0.0),
    _entry_set("deltaBS", 0),
    _entry_set("deltaBS", "1E-3"),
    _entry_set("markVol", "-0"),
    _entry_set("thetaBS", "1e999"),
    _entry_set("bidVol", None),
    _entry_set("bidVol", "0"),
    _entry_set("bidVol", "-1"),
    _entry_set("askVol", "inf"),
    _entry_set("markVol", 0.7),
    _entry_set("markVol", "abc"),
    _entry_set("fwdPx", None),
    _entry_set("fwdPx", ""),
    _entry_set("fwdPx", "1e308"),
    _entry_set("delta", "1e200"),
    _entry_set("newField", {"x": 1}),
    lambda m, rng: m["data"].append(5),
    lambda m, rng: m.update(data=[]),
    lambda m, rng: m.update(arg={"channel": "opt-summary", "uly": "BTC-USD"}),
    lambda m, rng: m.update(arg={"channel": "opt-summary"}),
)


def _perturbed_stream(frames: Sequence[bytes | str], seed: int) -> list[bytes | str]:
    """Every frame, plus perturbed copies of hot-path frames before or after the original,
    duplicates, and swapped (out-of-order) book updates."""
    rng = random.Random(seed)
    out: list[bytes | str] = []
    held: bytes | str | None = None
    for frame in frames:
        message = orjson.loads(frame)
        channel = message.get("arg", {}).get("channel")
        if channel == "books":
            choices = BOOK_PERTURBATIONS
        elif channel == "opt-summary":
            choices = SUMMARY_PERTURBATIONS
        else:
            out.append(frame)
            continue
        roll = rng.random()
        if roll < 0.25:
            bad = copy.deepcopy(message)
            rng.choice(choices)(bad, rng)
            copy_frame = orjson.dumps(bad)
            out.extend([copy_frame, frame] if rng.random() < 0.5 else [frame, copy_frame])
        elif roll < 0.30:
            out.extend([frame, frame])  # a duplicate
        elif roll < 0.35 and held is None and message.get("action") == "update":
            held = frame  # delivered after the next frame: out of order
            continue
        else:
            out.append(frame)
        if held is not None:
            out.append(held)
            held = None
    return out


def test_perturbed_frames_give_identical_results(sim_capture: Capture) -> None:
    frames = list(sim_capture.frames)
    for seed in (1, 2, 3):
        stream = _perturbed_stream(frames, seed)
        assert len(stream) > len(frames)
        hot, _ = _compare(_sim_session(sim_capture), stream)
        assert hot.hot_hits > len(frames) // 2


def test_every_perturbation_against_the_same_book_state(sim_capture: Capture) -> None:
    """Each perturbation of each kind of hot frame, tried one by one on a live book."""
    frames = list(sim_capture.frames)
    kinds: dict[str, bytes | str] = {}
    for frame in frames:
        message = orjson.loads(frame)
        key = f"{message.get('arg', {}).get('channel')}:{message.get('action')}"
        kinds.setdefault(key, frame)
    for key, perturbations in (
        ("books:update", BOOK_PERTURBATIONS),
        ("books:snapshot", BOOK_PERTURBATIONS),
        ("opt-summary:None", SUMMARY_PERTURBATIONS),
    ):
        base = orjson.loads(kinds[key])
        for number, perturb in enumerate(perturbations):
            bad = copy.deepcopy(base)
            perturb(bad, random.Random(number))
            position = frames.index(kinds[key])
            _compare(_sim_session(sim_capture), [*frames[:position], orjson.dumps(bad)])
