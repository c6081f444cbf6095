"""BinanceSession's hot path against its checked path: the same frames fed to two fresh
sessions (``hot_path`` True / False) must give exactly the same results, frame by frame.

Streams: every recorded fixture frame as is, real simulator traffic (captured through a real
connector over websockets), and perturbed copies of hot-path frames (missing fields, wrong
types, "", NaN, huge numbers, sequence oddities, extra fields) between good ones.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import bench_connector
from svc_connector.venues.binance.session import BinanceSession
from tests.connector.hot_path import frame_view
from volstream.v1 import market_data_pb2 as md_pb

Frame = bytes | str


def _sessions(instruments: list[md_pb.Instrument]) -> tuple[BinanceSession, BinanceSession]:
    hot: BinanceSession = bench_connector._new_session("binance", instruments)
    checked: BinanceSession = bench_connector._new_session("binance", instruments)
    checked.hot_path = False
    assert hot.hot_path
    # The connector's shared counter starts at the wall clock: give each its own from 1.
    for session in (hot, checked):
        session._shared_sequence = itertools.count(1).__next__
    return hot, checked


def _compare(
    frames: Iterable[Frame],
    instruments: list[md_pb.Instrument],
    hits: list[bool] | None = None,
) -> BinanceSession:
    """Feed both sessions; assert equal outputs per frame and equal ticker and index state;
    the hot session is returned (``hits`` gets, per frame, whether the hot path took it)."""
    hot, checked = _sessions(instruments)
    for index, frame in enumerate(frames):
        receive_time_ns = 1_700_000_000_000_000_000 + index
        expected = frame_view(checked.on_frame(frame, receive_time_ns))
        before = hot.hot_hits
        got = frame_view(hot.on_frame(frame, receive_time_ns))
        assert got == expected, f"frame {index}: {frame!r:.300}"
        if hits is not None:
            hits.append(hot.hot_hits > before)
    assert checked.hot_hits == 0
    assert hot._tickers._fields == checked._tickers._fields
    assert hot._indices == checked._indices
    return hot


def _is_marks(frame: Frame) -> bool:
    return "@optionMarkPrice" in (frame if isinstance(frame, str) else frame.decode())[:60]


# ---- (a) recorded fixtures -----------------------------------------------------------------


def test_every_recorded_fixture_frame_gives_the_checked_result(venue_fixtures: Path) -> None:
    paths = sorted((venue_fixtures / "binance").glob("*.jsonl"))
    assert paths, "no recorded Binance fixtures"
    marks = 0
    for path in paths:
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        hits: list[bool] = []
        _compare(lines, [], hits)
        # The recorded optionMarkPrice pushes are the usual shape: the hot path takes them.
        taken = [hit for line, hit in zip(lines, hits, strict=True) if _is_marks(line)]
        assert all(taken)
        marks += len(taken)
    assert marks >= 2


# ---- (b) real simulator traffic ------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_capture() -> bench_connector.Capture:
    """~3000 frames a real connector received from the simulator (real websockets)."""
    return asyncio.run(bench_connector.capture("binance", 3000))


def test_simulator_traffic_gives_the_checked_result(sim_capture: bench_connector.Capture) -> None:
    frames = sim_capture.frames
    assert len(frames) >= 1000
    hot = _compare(frames, sim_capture.instruments)
    depth = sum(1 for frame in frames if "@depth" in str(frame)[:80])
    # The hot path takes the partial depth pushes (nearly all of the traffic).
    assert depth > len(frames) * 0.5
    assert hot.hot_hits >= depth * 0.95, (hot.hot_hits, depth, len(frames))


# ---- (c) perturbed hot-path frames ---------------------------------------------------------

STREAM = "btc-251219-89000-c@depth20@100ms"
SYMBOL = "BTC-251219-89000-C"


def _good(update_id: int) -> dict[str, Any]:
    return {
        "stream": STREAM,
        "data": {
            "e": "depthUpdate",
            "E": 1765983419936 + update_id,
            "T": 1765983419928 + update_id,
            "s": SYMBOL,
            "U": update_id,
            "u": update_id,
            "pu": update_id - 1,
            "b": [["16.6000", "150.23"], ["16.4000", "10.00"], ["16.2000", "0.00"]],
            "a": [["18.8000", "70.00"], ["20.6000", "240.88"]],
        },
    }


Edit = Callable[[dict[str, Any]], None]


def _dumps(message: object) -> bytes:
    """JSON without orjson's limits (integers beyond 64 bits stay in)."""
    return json.dumps(message, separators=(",", ":")).encode()


def _set(key: str, value: object) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data[key] = value

    return edit


def _drop(key: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data.pop(key, None)

    return edit


def _level(side: str, index: int, position: int, value: object) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data[side][index][position] = value

    return edit


_ODD_NUMBERS: list[object] = [
    "", "nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1", "0", "-0", "0.0", " 1",
    "1_0", "+1", ".5", "5.", "0x10", "abc", None, True, 1.5, 2, 1e300, 10**30, -3, "1e-320",
    [], {},
]  # fmt: skip

_EDITS: list[Edit] = [
    *(_drop(key) for key in ("e", "E", "T", "s", "U", "u", "pu", "b", "a")),
    *(_set(key, value) for key in ("E", "u", "T", "U", "pu") for value in _ODD_NUMBERS),
    _set("E", "1765983419936"), _set("E", 1765983419936.0), _set("E", 10**20), _set("E", 0),
    _set("u", "12345"), _set("u", 12345.0), _set("u", 2**53), _set("u", 2**53 - 1),
    _set("u", 2**63), _set("s", ""), _set("s", 5), _set("s", "XYZ"), _set("s", None),
    _set("s", "ETH-251219-3000-P"), _set("e", 3), _set("b", None), _set("a", "x"),
    _set("b", []), _set("a", []), _set("extra", 1), _set("extra", "1e999"),
    _set("b", [["16.6000", "1", "x"]]), _set("b", [["16.6000"]]), _set("b", [[]]),
    _set("b", [["16.4000", "1"], ["16.6000", "2"]]),  # out of order: sorted
    _set("a", [["20.6000", "1"], ["18.8000", "2"]]),
    _set("b", [["16.6000", "1"], ["16.6000", "2"]]),  # equal prices
    _set("a", [["18.8000", "0"], ["17.0000", "0"], ["19.0000", "2"]]),  # empty, out of order
    _set("b", [[16.6, 1], [16.4, 2.5]]),  # JSON numbers
    *(_level(side, 0, pos, value) for side in "ba" for pos in (0, 1) for value in _ODD_NUMBERS),
]  # fmt: skip


def _frame_variants(rng: random.Random) -> list[Frame]:
    frames: list[Frame] = []
    update_id = 1000
    for edit in _EDITS:
        update_id += 1
        frames.append(orjson.dumps(_good(update_id)))
        message = _good(update_id + 1)
        edit(message["data"])
        frames.append(_dumps(message))
        update_id += 1
    good = orjson.dumps(_good(5000))
    frames += [good, good]  # duplicate
    frames += [orjson.dumps(_good(4000)), orjson.dumps(_good(6000))]  # out of order, gap
    # Frame-level oddities: other streams, extra keys, raw text tricks, non-objects.
    base = _good(7000)
    for stream in (
        "btc-251219-89000-c@depth@100ms",
        "btc-251219-89000-c@depth7@100ms",
        "btc-251219-89000-c@DEPTH20@100ms",
        "btc-251219-89000-c@depth100@100ms",
        "btc-251219-89000-c@bookTicker",
        "btc-251219-89000-c",
        "",
    ):
        frames.append(orjson.dumps({**base, "stream": stream}))
    frames.append(orjson.dumps({**base, "id": 3}))
    frames.append(orjson.dumps({"data": base["data"]}))
    frames.append(orjson.dumps({"stream": 5, "data": base["data"]}))
    frames.append(orjson.dumps({"stream": STREAM, "data": [base["data"]]}))
    text = orjson.dumps(base).decode()
    frames += [
        text,  # a str frame
        "\ufeff" + text,
        text + " ",
        text.replace('"u":7000', '"u":7000,"x":1e999'),
        text.replace('"u":7000', '"u":7000,"x":99999999999999999999999999'),
        text.replace('"s":"', '"s":"\\u0041'),
        text.replace('"s":"', '"s":"\\ud800'),
        text.replace('"e":"depthUpdate","E":1765983426936', '"E":1765983426936,"E":1'),
        text[:-1],
        "[]",
        "null",
        b"\xff" + text.encode(),
    ]
    # Random mixes of the variants (so that sequences and counters interleave).
    mixed = list(frames)
    rng.shuffle(mixed)
    return frames + mixed


def test_perturbed_frames_give_the_checked_result() -> None:
    frames = _frame_variants(random.Random(7))
    hot = _compare(frames, [])
    assert hot.hot_hits > len(_EDITS)  # the good frames between the odd ones took it


def test_random_levels_give_the_checked_result() -> None:
    rng = random.Random(11)
    spellings: list[Callable[[float], object]] = [
        lambda x: f"{x:.4f}",
        lambda x: repr(x),
        lambda x: f"{x:.2e}",
        lambda x: x,
        lambda x: str(int(x)),
    ]
    frames: list[Frame] = []
    for update_id in range(1, 400):
        message = _good(update_id)
        data = message["data"]
        for side, sign in (("b", -1.0), ("a", 1.0)):
            start = rng.uniform(1, 5000) if side == "b" else rng.uniform(5000, 9000)
            levels = []
            # One spelling per side mostly (mixed ones often round out of order).
            side_spell = rng.choice(spellings) if rng.random() < 0.8 else None
            price = start
            for _ in range(rng.randint(0, 20)):
                price = max(price + sign * rng.choice([0.0, 0.1, 5.0, 50.0]), 1e-9)
                size = rng.choice([0.0, rng.uniform(0, 500), 1e-7, 1e15])
                spell = side_spell or rng.choice(spellings)
                levels.append([spell(price), spell(size)])
            if rng.random() < 0.1:
                rng.shuffle(levels)
            data[side] = levels
        frames.append(orjson.dumps(message))
    hot = _compare(frames, [])
    assert hot.hot_hits > len(frames) // 4


def test_hot_path_result_is_a_stamped_partial_snapshot() -> None:
    session = BinanceSession()
    result = session.on_frame(orjson.dumps(_good(42)), 99)
    assert session.hot_hits == 1
    [item] = result.events
    snapshot = item.event.book_snapshot
    assert (item.currency, item.kind, snapshot.symbol) == ("BTC", "book", SYMBOL)
    assert snapshot.is_periodic and snapshot.venue_sequence == 42
    assert [(level.price_native, level.size_native) for level in snapshot.bids] == [
        (16.6, 150.23),
        (16.4, 10.0),
    ]
    assert [level.price_native for level in snapshot.asks] == [18.8, 20.6]
    assert snapshot.header.sequence == 1 and snapshot.header.receive_time_ns == 99
    assert snapshot.header.event_time_ns == (1765983419936 + 42) * 1_000_000
    assert dict(result.counts) == {"frames": 1, "book.partial_snapshot": 1}
    # A copy with a NaN size is left to the checked path (which dead-letters it).
    odd = copy.deepcopy(_good(43))
    odd["data"]["a"][0][1] = "nan"
    dead = session.on_frame(orjson.dumps(odd), 100)
    assert session.hot_hits == 1 and dead.events == [] and len(dead.dead_letters) == 1


# ---- optionMarkPrice pushes ----------------------------------------------------------------

MARK_NUMBERS = ("mp", "i", "bo", "ao", "bq", "aq", "b", "a", "vo", "rf", "d", "t", "g", "v")


def _mark_entry(symbol: str, timestamp_ms: int, index: float, k: int) -> dict[str, Any]:
    """An entry as the venue spells it (every number a string; "-1.0" IV = no quote)."""
    return {
        "s": symbol, "mp": f"{10.5 + k:.3f}", "E": timestamp_ms, "e": "markPrice",
        "i": f"{index:.8f}", "P": "0.0000", "bo": f"{10.0 + k:.3f}", "ao": f"{11.0 + k:.3f}",
        "bq": f"{1.5 + k % 3:.2f}", "aq": "0.00" if k % 4 == 0 else "2.25",
        "b": "-1.0" if k % 3 == 0 else "0.61234", "a": "0.70123", "hl": "20.0", "ll": "5.0",
        "vo": "0.65432", "rf": "0.0", "d": f"{0.5 - k / 50:.8f}", "t": "-1.2", "g": "0.00001",
        "v": "0.0", "extra_unused_by_none": None,
    }  # fmt: skip


def _marks_frame(symbols: list[str], step: int, underlying: str = "btcusdt") -> dict[str, Any]:
    entries = [
        _mark_entry(symbol, 1795257694772 + 1000 * step, 60000.0 + step, k)
        for k, symbol in enumerate(symbols)
    ]
    for entry in entries:
        entry.pop("extra_unused_by_none")
    return {"stream": f"{underlying}@optionMarkPrice", "data": entries}


def _built_marks(capture: bench_connector.Capture, count: int) -> list[bytes]:
    """Pushes for the captured instruments (the simulator sends one per underlying a second)."""
    frames = []
    for underlying, currency in (("btcusdt", "BTC"), ("ethusdt", "ETH")):
        symbols = [i.symbol for i in capture.instruments if i.currency == currency][:400]
        frames += [orjson.dumps(_marks_frame(symbols, step, underlying)) for step in range(count)]
    return frames


def test_simulator_mark_pushes_take_the_hot_path(sim_capture: bench_connector.Capture) -> None:
    captured = [frame for frame in sim_capture.frames if _is_marks(frame)]
    # Few are captured (one per underlying a second): add built ones and varied copies.
    varied: list[Frame] = []
    for frame in captured:
        message = orjson.loads(frame)
        for step in (1, 2):
            for entry in message["data"]:
                entry["E"] += 1000 * step
                entry["mp"] = f"{float(entry['mp']) * 1.01:.4f}"
                entry["bo"] = "0.000" if step == 2 else entry["bo"]
            varied.append(orjson.dumps(message))
    frames = captured + varied + _built_marks(sim_capture, 3)
    assert len(frames) >= 6
    hits: list[bool] = []
    stream = [*frames, *sim_capture.frames[:300], *frames]
    hot = _compare(stream, sim_capture.instruments, hits)
    marks = [hit for frame, hit in zip(stream, hits, strict=True) if _is_marks(frame)]
    assert marks and all(marks), hits
    assert hot.hot_hits >= len(marks)


MARK_SYMBOLS = [
    "BTC-251219-89000-C",
    "BTC-251219-90000-P",
    "BTC-251226-95000-C",
    "ETH-251219-3000-P",
]


def _mark_instruments() -> list[md_pb.Instrument]:
    """Units for some of the symbols (one is left without: counted, USD values absent)."""
    return [
        md_pb.Instrument(symbol=MARK_SYMBOLS[0], currency="BTC", contract_size_coin=1.0),
        md_pb.Instrument(symbol=MARK_SYMBOLS[1], currency="BTC", contract_size_coin=0.01),
        md_pb.Instrument(symbol=MARK_SYMBOLS[3], currency="ETH", contract_size_coin=100.0),
    ]


_MARK_ODD: list[object] = [
    "", "0", "-1", "nan", "1e999", 1.25, 0, -2, 10**30, None, "-0", "-0.0", -0.0, "abc",
    True, " 1", "5e-324", "1e308", "-1e-400", "\\u0031", [],
]  # fmt: skip


def _mark_variants() -> list[tuple[Frame, bool]]:
    """(frame, whether it is a good one) with odd copies between good ones."""
    frames: list[tuple[Frame, bool]] = []
    step = 0

    def good() -> dict[str, Any]:
        nonlocal step
        step += 1
        return _marks_frame(MARK_SYMBOLS, step)

    def odd(edit: Callable[[list[dict[str, Any]]], object]) -> None:
        frames.append((orjson.dumps(good()), True))
        message = good()
        edit(message["data"])
        frames.append((_dumps(message).replace(b"\\\\u", b"\\u"), False))

    def setter(position: int, key: str, value: object) -> Callable[[list[dict[str, Any]]], object]:
        def edit(entries: list[dict[str, Any]]) -> None:
            entries[position][key] = value

        return edit

    def dropper(position: int, key: str) -> Callable[[list[dict[str, Any]]], object]:
        def edit(entries: list[dict[str, Any]]) -> None:
            entries[position].pop(key)

        return edit

    for key in MARK_NUMBERS:
        for value in _MARK_ODD:
            odd(setter(1, key, value))
        odd(dropper(2, key))
    for key in ("s", "E", "e", "P", "hl", "ll"):
        odd(dropper(0, key))
    for value in ("XYZ-1", "", 5, None, "BTC-251219-99999-C", "ETH-251219-3000-P", "xrp-1-2-C"):
        odd(setter(1, "s", value))  # unknown symbol, bad ones, other currency
    for value in ("1795257694772", 1795257694772.0, -1, 10**20, True, None, " 17"):
        odd(setter(0, "E", value))
    odd(setter(2, "unknown", "1"))
    odd(setter(2, "unknown", 1e300))
    odd(setter(0, "P", 1))
    odd(lambda entries: entries.reverse())  # out of order
    odd(lambda entries: entries.append(dict(entries[0], mp="99.0")))  # a symbol twice
    odd(lambda entries: entries.insert(1, "not an object"))  # type: ignore[arg-type]
    odd(lambda entries: entries.clear())
    odd(lambda entries: [entry.update(i="0") for entry in entries])  # no index in the push
    odd(lambda entries: [entry.update(i="-1") for entry in entries[:2]])  # index from the 3rd
    odd(lambda entries: [entry.pop("i") for entry in entries])
    # Other streams that share the merged tickers and the index, between pushes.
    index = {
        "stream": "BTCUSDT@index",
        "data": {"e": "index", "E": 1795257694772, "s": "BTCUSDT", "p": "61000.5"},
    }
    book_ticker = {
        "stream": f"{MARK_SYMBOLS[0].lower()}@bookTicker",
        "data": {"e": "bookTicker", "u": 1, "s": MARK_SYMBOLS[0], "b": "9.0", "B": "1.0",
                 "a": "12.0", "A": "2.0", "T": 1795257694772, "E": 1795257694772},
    }  # fmt: skip
    for message in (index, book_ticker):
        frames.append((orjson.dumps(message), False))
        no_index = good()
        for entry in no_index["data"]:
            entry["i"] = "0"
        frames.append((orjson.dumps(no_index), True))
        frames.append((orjson.dumps(good()), True))
    # Frame-level oddities.
    base = good()
    for stream in (
        "@optionMarkPrice",
        "btcusdt@optionmarkprice",
        "xyzusdt@optionMarkPrice",
        "ethusdt@optionMarkPrice",
        "btcusdt@markPrice",
        "BTCUSDT@optionMarkPrice",
    ):
        frames.append((orjson.dumps({**base, "stream": stream}), False))
    frames.append((orjson.dumps({**base, "id": 1}), False))
    frames.append((orjson.dumps({"stream": base["stream"], "data": base["data"][0]}), False))
    text = orjson.dumps(good()).decode()
    frames += [(text, True), (text[:-1], False), (" " + text, False)]
    return frames


def test_perturbed_mark_pushes_give_the_checked_result() -> None:
    variants = _mark_variants()
    frames = [frame for frame, _ in variants]
    rng = random.Random(5)
    mixed = list(frames)
    rng.shuffle(mixed)
    for instruments in ([], _mark_instruments()):
        hits: list[bool] = []
        _compare(frames + mixed, instruments, hits)
        # Every good push takes the hot path.
        assert all(
            hit
            for (_, is_good), hit in zip(variants, hits[: len(variants)], strict=True)
            if is_good
        )
        assert sum(hits) > len(MARK_NUMBERS) * len(_MARK_ODD)


def test_hot_mark_push_result() -> None:
    session = BinanceSession(contract_sizes={MARK_SYMBOLS[0]: 1.0})
    result = session.on_frame(orjson.dumps(_marks_frame(MARK_SYMBOLS, 1)), 7)
    assert session.hot_hits == 1
    assert [item.kind for item in result.events] == ["ticker"] * 4 + ["index"]
    assert [item.header.sequence for item in result.events if item.header] == [1, 2, 3, 4, 5]
    for item in result.events:
        # The header handed over is the event's own (the sink and stamp use it).
        header = item.header
        assert header is not None and header is item.event_header()
        case = item.event.WhichOneof("event")
        assert case is not None and getattr(item.event, case).header.sequence == header.sequence
    ticker = result.events[0].event.ticker
    assert ticker.mark_price_usd_per_coin == ticker.mark_price_native == 10.5
    assert ticker.forward_usd == 60001.0 and ticker.forward_name == "BTCUSDT"
    assert not result.events[1].event.ticker.HasField("mark_price_usd_per_coin")
    assert result.events[4].event.index_price.price_usd == 60001.0
    assert dict(result.counts) == {
        "frames": 1,
        "ticker.mark_price": 4,
        "ticker.unknown_contract_size": 3,
        "index_price.from_marks": 1,
    }


def test_mark_stream_owns_every_merged_field() -> None:
    """The hot path relies on it (no second USD fill after the merge)."""
    from svc_connector.venues.binance.parse import OWNED_FIELDS

    every = set(OWNED_FIELDS["optionmarkprice"])
    assert all(set(owned) <= every for owned in OWNED_FIELDS.values())
