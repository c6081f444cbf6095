"""Bybit frame parsing against the recorded fixtures, book sequencing, acks, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from svc_connector.venues.base import FrameResult, VenueRequest
from svc_connector.venues.bybit.parse import parse_frame
from svc_connector.venues.bybit.session import BybitSession
from tests.connector.deribit_fixtures import Books, lines

TARDIS_FILE = "tardis_node_mappers_test_bybit_options.jsonl"


def bybit_dir(venue_fixtures: Path) -> Path:
    return venue_fixtures / "bybit"


def _run(session: BybitSession, frames: list[bytes], start_ns: int = 0) -> FrameResult:
    total = FrameResult()
    for offset, frame in enumerate(frames):
        total.extend(session.on_frame(frame, start_ns + offset))
    return total


@pytest.mark.parametrize(
    ("name", "stateless", "with_session"),
    [
        (
            TARDIS_FILE,
            {"book_snapshot": 2, "book_delta": 1, "ticker": 2},
            {"book_snapshot": 2, "book_delta": 1, "ticker": 2},
        ),
        ("nautilus_ws_ticker_option.json", {"ticker": 1}, {"ticker": 1}),
        ("nautilus_ws_orderbook_snapshot_LINEAR_BTCUSDT.json", {"book_snapshot": 1}, None),
        # A delta alone has no snapshot to apply to.
        ("nautilus_ws_orderbook_delta_LINEAR_BTCUSDT.json", {"book_delta": 1}, {"book_reset": 1}),
    ],
)
def test_recordings_parse_with_exact_counts(
    venue_fixtures: Path,
    name: str,
    stateless: dict[str, int],
    with_session: dict[str, int] | None,
) -> None:
    path = bybit_dir(venue_fixtures) / name
    frames = lines(path) if path.suffix == ".jsonl" else [path.read_bytes()]
    kinds: Counter[str] = Counter()
    for frame in frames:
        result = parse_frame(frame, 1)
        assert result.dead_letters == [] and result.venue_errors == []
        kinds.update(result.kind_counts())
    assert kinds == stateless
    session_kinds = _run(BybitSession(), frames).kind_counts()
    assert session_kinds == (with_session or stateless)


def test_tardis_recording_books_and_unknown_topic(venue_fixtures: Path) -> None:
    frames = lines(bybit_dir(venue_fixtures) / TARDIS_FILE)
    result = _run(BybitSession(), frames)
    assert result.counts["unknown_channel.publicTrade"] == 1
    assert result.counts["book.gap"] == 0 and result.resubscribes == []
    snapshots = [e.event.book_snapshot for e in result.events if e.event.HasField("book_snapshot")]
    empty, sol = snapshots
    # The empty book comes as a snapshot with u 0.
    assert empty.symbol == "BTC-30JUN23-45000-P" and empty.venue_sequence == 0
    assert len(empty.bids) == len(empty.asks) == 0
    assert sol.venue_sequence == 24641
    delta = next(e for e in result.events if e.event.HasField("book_delta")).event.book_delta
    # A delta follows when its u is the last u + 1.
    assert (delta.prev_venue_sequence, delta.venue_sequence) == (24641, 24642)
    assert [(lv.price_native, lv.size_native) for lv in delta.asks] == [(1.74, 0.0), (1.75, 46.0)]
    books = Books()
    for event in result.events:
        books.apply(event.event)
    assert books.top("SOL-28APR23-30-C") == ((0.01, 50.0), (1.75, 46.0))
    currencies = {e.event.WhichOneof("event"): e.currency for e in result.events}
    assert currencies["book_delta"] == "SOL"


def test_ticker_normalisation(venue_fixtures: Path) -> None:
    raw = (bybit_dir(venue_fixtures) / "nautilus_ws_ticker_option.json").read_bytes()
    result = parse_frame(raw, 3)
    assert result.channel == "tickers.BTC-6JAN23-17500-C"
    event = result.events[0]
    assert (event.currency, event.kind) == ("BTC", "ticker")
    ticker = event.event.ticker
    assert ticker.header.event_time_ns == 1672917511074 * 1_000_000
    # bidPrice/bidSize/bidIv "0": the side is empty, the IV absent.
    assert not ticker.HasField("best_bid_price_native") and not ticker.HasField("bid_iv")
    assert ticker.best_ask_price_native == 10.0 and ticker.best_ask_size_native == 5.1
    assert ticker.ask_iv == 0.514 and ticker.mark_iv == 0.4896  # fractions
    assert ticker.forward_usd == 16815.1  # underlyingPrice
    assert ticker.index_price_usd == 16823.73
    assert ticker.open_interest == 49.85 and ticker.delta == 0.047831
    # USDC per coin: the USD equivalents are the native prices.
    assert ticker.mark_price_usd_per_coin == ticker.mark_price_native == 7.86976724
    assert ticker.best_ask_price_usd_per_coin == 10.0


def test_tardis_tickers(venue_fixtures: Path) -> None:
    frames = lines(bybit_dir(venue_fixtures) / TARDIS_FILE)
    tickers = {
        e.event.ticker.symbol: e.event.ticker
        for f in frames
        for e in parse_frame(f, 1).events
        if e.kind == "ticker"
    }
    sol = tickers["SOL-28APR23-24-C"]
    assert (sol.bid_iv, sol.ask_iv, sol.mark_iv) == (0.6004, 2.0007, 1.4674)
    assert sol.best_bid_price_native == 0.34 and sol.forward_usd == 20.93
    eth = tickers["ETH-30JUN23-200-P"]
    assert not eth.HasField("best_ask_price_native") and not eth.HasField("ask_iv")
    assert eth.bid_iv == 1.4744 and eth.forward_usd == 1886.16 and eth.index_price_usd == 1871.27


# ---- sequencing -----------------------------------------------------------------------------

SYMBOL = "BTC-27DEC24-60000-C"
TOPIC = f"orderbook.25.{SYMBOL}"


def _book(kind: str, u: int, bids: list[list[str]], asks: list[list[str]] | None = None) -> bytes:
    data = {"s": SYMBOL, "b": bids, "a": asks or [], "u": u, "seq": 1000 + u}
    return orjson.dumps({"topic": TOPIC, "type": kind, "ts": 1735000000000 + u, "data": data})


def test_empty_snapshot_then_first_delta_applies() -> None:
    result = _run(BybitSession(), [_book("snapshot", 0, []), _book("delta", 1, [["100", "2"]])])
    assert result.kind_counts() == {"book_snapshot": 1, "book_delta": 1}
    books = Books()
    for event in result.events:
        books.apply(event.event)
    assert books.top(SYMBOL) == ((100.0, 2.0), None)


def test_gap_duplicate_and_venue_restart() -> None:
    session = BybitSession(resync_timeout_ns=10**12)
    start = _run(session, [_book("snapshot", 10, [["100", "1"]]), _book("delta", 11, [])])
    assert start.kind_counts() == {"book_snapshot": 1, "book_delta": 1}
    duplicate = session.on_frame(_book("delta", 11, []), 5)
    assert duplicate.events == [] and duplicate.counts["book.stale_dropped"] == 1
    gap = session.on_frame(_book("delta", 13, []), 6)
    assert gap.kind_counts() == {"book_reset": 1} and gap.counts["book.gap"] == 1
    assert [(r.symbol, r.channel) for r in gap.resubscribes] == [(SYMBOL, TOPIC)]
    # The fresh snapshot after resubscribing resyncs.
    assert _run(session, [_book("snapshot", 20, []), _book("delta", 21, [])]).kind_counts() == {
        "book_snapshot": 1,
        "book_delta": 1,
    }
    # A delta with u 1 on a book that had moved on: the venue restarted.
    restart = session.on_frame(_book("delta", 1, [["99", "1"]]), 9)
    assert restart.kind_counts() == {"book_reset": 1}
    assert restart.counts["book.venue_restart"] == 1 and len(restart.resubscribes) == 1
    # The restart snapshot (u 1) starts the book again.
    again = _run(session, [_book("snapshot", 1, [["99", "1"]]), _book("delta", 2, [])], 10)
    assert again.kind_counts() == {"book_snapshot": 1, "book_delta": 1}


def test_recorded_linear_snapshot_and_delta_are_not_one_chain(venue_fixtures: Path) -> None:
    folder = bybit_dir(venue_fixtures)
    frames = [
        (folder / "nautilus_ws_orderbook_snapshot_LINEAR_BTCUSDT.json").read_bytes(),
        (folder / "nautilus_ws_orderbook_delta_LINEAR_BTCUSDT.json").read_bytes(),
    ]
    result = _run(BybitSession(), frames)
    assert result.kind_counts() == {"book_snapshot": 1, "book_reset": 1}
    assert result.events[0].currency == "BTC"  # "BTCUSDT" -> BTC
    assert result.counts["book.gap"] == 1
    assert result.resubscribes[0].channel == "orderbook.50.BTCUSDT"


# ---- requests and responses -------------------------------------------------------------------


def test_both_ack_shapes() -> None:
    session = BybitSession(first_request_id=3)
    wire = orjson.loads(session.subscribe([TOPIC, f"tickers.{SYMBOL}"]))
    assert wire == {"req_id": "3", "op": "subscribe", "args": [TOPIC, f"tickers.{SYMBOL}"]}
    plain = session.on_frame(
        b'{"success":true,"ret_msg":"","conn_id":"c1","req_id":"3","op":"subscribe"}', 1
    )
    assert plain.subscribed == [TOPIC, f"tickers.{SYMBOL}"]
    assert [(a.request_id, a.method) for a in plain.acks] == [("3", "subscribe")]

    session.subscribe(["orderbook.25.BAD", "tickers.BAD", "tickers.OK"])
    command = session.on_frame(
        orjson.dumps(
            {
                "type": "COMMAND_RESP",
                "success": True,
                "ret_msg": "",
                "conn_id": "c1",
                "req_id": "4",
                "data": {
                    "successTopics": ["tickers.OK"],
                    "failTopics": ["orderbook.25.BAD", "tickers.BAD"],
                },
            }
        ),
        2,
    )
    assert command.subscribed == ["tickers.OK"]
    assert [(a.request_id, a.method) for a in command.acks] == [("4", "subscribe")]
    error = command.venue_errors[0]
    assert error.code == "fail_topics" and error.channels == ("orderbook.25.BAD", "tickers.BAD")
    assert command.counts["subscribe.failed_topics"] == 2

    session.subscribe(["orderbook.25.NOPE"])
    refused = session.on_frame(
        b'{"success":false,"ret_msg":"error:handler not found","conn_id":"c1","req_id":"5",'
        b'"op":"subscribe"}',
        3,
    )
    assert refused.acks == [] and refused.subscribed == []
    assert refused.venue_errors[0].message == "error:handler not found"
    assert refused.venue_errors[0].method == "subscribe"
    assert refused.venue_errors[0].channels == ("orderbook.25.NOPE",)

    session.unsubscribe([TOPIC])
    gone = session.on_frame(
        b'{"success":true,"ret_msg":"","conn_id":"c1","req_id":"6","op":"unsubscribe"}', 4
    )
    assert gone.unsubscribed == [TOPIC] and gone.subscribed == []


def test_ping_and_pong() -> None:
    session = BybitSession(first_request_id=9)
    assert orjson.loads(session.encode(VenueRequest("ping", {}, "keep-alive"))) == {
        "req_id": "9",
        "op": "ping",
    }
    for frame in (
        b'{"req_id":"9","op":"pong","args":["1675418560633"],"conn_id":"c1"}',
        b'{"success":true,"ret_msg":"pong","conn_id":"c1","req_id":"9","op":"ping"}',
    ):
        result = session.on_frame(frame, 1)
        assert result.counts["heartbeat.pong"] == 1
        assert result.acks == [] and result.dead_letters == []


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b'{"topic":"tickers.X"', "malformed JSON"),
        (b'"text"', "not a JSON object"),
        (b'{"topic":"tickers.X","ts":1,"data":[1]}', "non-object 'data'"),
        (b'{"topic":"tickers.X","ts":1,"data":{"bidIv":"0.5"}}', "'symbol'"),
        (
            b'{"topic":"orderbook.25.X","type":"delta","ts":1,"data":{"s":"BTC-1JAN25-1-C","b":[],"a":[]}}',
            "'u'",
        ),
        (
            b'{"topic":"orderbook.25.X","type":"weird","ts":1,"data":{"s":"BTC-1JAN25-1-C","b":[],"a":[],"u":1}}',
            "book 'type'",
        ),
        (
            b'{"topic":"orderbook.25.X","type":"delta","ts":1,"data":{"s":"BTC-1JAN25-1-C","b":[["1"]],"a":[],"u":1}}',
            "malformed b entry",
        ),
        (
            b'{"topic":"orderbook.25.X","type":"delta","ts":1,"data":{"s":"BTC-1JAN25-1-C","b":[["-1","1"]],"a":[],"u":1}}',
            "invalid b level",
        ),
    ],
)
def test_bad_frames_are_dead_lettered_never_raised(raw: bytes, reason_part: str) -> None:
    result = BybitSession().on_frame(raw, 1)
    assert result.events == []
    assert len(result.dead_letters) == 1 and result.dead_letters[0].raw == raw
    assert reason_part in result.dead_letters[0].reason


def test_unknown_messages_and_bad_optional_fields_are_counted() -> None:
    session = BybitSession()
    assert session.on_frame(b'{"hello":1}', 1).counts["unknown_message"] == 1
    assert (
        session.on_frame(b'{"topic":"kline.1.X","data":{}}', 1).counts["unknown_channel.kline"] == 1
    )
    result = session.on_frame(
        orjson.dumps(
            {
                "topic": f"tickers.{SYMBOL}",
                "ts": 1,
                "data": {"symbol": SYMBOL, "markPriceIv": "n/a", "markPrice": "10"},
            }
        ),
        1,
    )
    assert result.kind_counts() == {"ticker": 1}
    assert result.counts["ticker.bad_field.markPriceIv"] == 1
    assert not result.events[0].event.ticker.HasField("mark_iv")
