"""OKX frame parsing against the recorded fixtures, plus bad-input outcomes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from svc_connector.venues.base import VenueRequest
from svc_connector.venues.okx.parse import parse_frame
from svc_connector.venues.okx.session import OkxSession
from tests.connector.deribit_fixtures import lines

OPTIONS_FILE = "tardis_node_mappers_test_okex_options_v5.jsonl"
BOOKS_FILE = "ws_books_checksum_BTC-USD-220527_2022-05-13.jsonl"


def okx_dir(venue_fixtures: Path) -> Path:
    return venue_fixtures / "okx"


def _push(channel: str, key: str, data: list[object], action: str | None = None) -> bytes:
    arg_key = "instFamily" if channel == "opt-summary" else "instId"
    message: dict[str, object] = {"arg": {"channel": channel, arg_key: key}, "data": data}
    if action is not None:
        message["action"] = action
    return orjson.dumps(message)


def test_options_recording_parses_with_exact_counts(venue_fixtures: Path) -> None:
    frames = lines(okx_dir(venue_fixtures) / OPTIONS_FILE)
    assert len(frames) == 8
    kinds: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for frame in frames:
        result = parse_frame(frame, 1)
        assert result.dead_letters == [] and result.venue_errors == []
        kinds.update(result.kind_counts())
        counts.update(result.counts)
    # opt-summary x2 (1 + 2 options), tickers, mark-price -> 5 tickers.
    assert kinds == {"ticker": 5, "book_delta": 1, "index_price": 1}
    assert counts["frames"] == 8
    assert counts["ticker.opt_summary"] == 3
    assert counts["ticker.tickers"] == 1 and counts["ticker.mark_price"] == 1
    assert counts["unknown_channel.trades"] == 1
    assert counts["unknown_channel.open-interest"] == 1

    # Through a session the lone books-l2-tbt update has no snapshot: reset + resubscribe.
    session = OkxSession()
    total: Counter[str] = Counter()
    resubscribes = []
    for frame in frames:
        result = session.on_frame(frame, 1)
        total.update(result.kind_counts())
        resubscribes.extend(result.resubscribes)
    assert total == {"ticker": 5, "book_reset": 1, "index_price": 1}
    assert [(r.symbol, r.channel) for r in resubscribes] == [
        ("ETH-USD-220128-3500-C", "books-l2-tbt:ETH-USD-220128-3500-C")
    ]


def test_books_recording_parses_one_snapshot_and_98_updates(venue_fixtures: Path) -> None:
    frames = lines(okx_dir(venue_fixtures) / BOOKS_FILE)
    kinds: Counter[str] = Counter()
    for frame in frames:
        data = orjson.loads(frame)
        result = parse_frame(frame, 1)
        kinds.update(result.kind_counts())
        assert result.channel == "books:BTC-USD-220527"
        event = result.events[0]
        assert (event.currency, event.kind) == ("BTC", "book")
        entry = data["data"][0]
        if data["action"] == "snapshot":
            snapshot = event.event.book_snapshot
            assert len(snapshot.bids) == len(entry["bids"])
            assert snapshot.bids[0].price_native == float(entry["bids"][0][0])
            assert snapshot.asks[0].size_native == float(entry["asks"][0][1])
            assert not snapshot.is_periodic
        else:
            delta = event.event.book_delta
            assert delta.checksum == entry["checksum"]
            assert delta.header.event_time_ns == int(entry["ts"]) * 1_000_000
            wire = entry["bids"] + entry["asks"]
            for level, raw in zip(list(delta.bids) + list(delta.asks), wire, strict=True):
                assert (level.price_native, level.size_native) == (float(raw[0]), float(raw[1]))
    assert kinds == {"book_snapshot": 1, "book_delta": 98}


def test_opt_summary_normalisation(venue_fixtures: Path) -> None:
    frames = lines(okx_dir(venue_fixtures) / OPTIONS_FILE)
    summaries = [f for f in frames if orjson.loads(f)["arg"]["channel"] == "opt-summary"]
    tickers = {
        e.event.ticker.symbol: e.event.ticker for f in summaries for e in parse_frame(f, 1).events
    }
    first = tickers["ETH-USD-211222-4000-C"]
    assert first.bid_iv == pytest.approx(0.7421960156)  # fractions already
    assert first.ask_iv == pytest.approx(0.8203208593)
    assert first.mark_iv == pytest.approx(0.7794507758)
    # deltaBS is the plain delta; delta is premium-adjusted; other greeks are the BS ones.
    assert first.delta == pytest.approx(0.2038286081)
    assert first.delta_premium_adjusted == pytest.approx(0.1975745164)
    assert first.gamma == pytest.approx(0.0013437829)
    assert first.vega == pytest.approx(0.7647227087)
    assert first.theta == pytest.approx(-16.4798150221)
    assert first.header.event_time_ns == 1640001659301 * 1_000_000
    assert not first.HasField("forward_usd")  # the 2021 recording predates fwdPx
    # "" means no bid IV.
    assert not tickers["ETH-USD-211231-9600-C"].HasField("bid_iv")
    put = tickers["ETH-USD-211227-4150-P"]
    assert not put.HasField("bid_iv") and put.ask_iv == 5.0


def test_current_opt_summary_with_forward_and_zero_ivs() -> None:
    entry = {
        "instType": "OPTION",
        "instId": "BTC-USD-241227-100000-C",
        "uly": "BTC-USD",
        "instFamily": "BTC-USD",
        "markVol": "0.55",
        "bidVol": "0",
        "askVol": "0.57",
        "fwdPx": "98765.4",
        "delta": "0.4",
        "deltaBS": "0.45",
        "gamma": "1",
        "vega": "0.001",
        "theta": "-0.002",
        "gammaBS": "0.00002",
        "vegaBS": "120.5",
        "thetaBS": "-80.1",
        "volLv": "0.5",
        "ts": "1735000000000",
    }
    result = parse_frame(_push("opt-summary", "BTC-USD", [entry]), 9)
    ticker = result.events[0].event.ticker
    assert result.channel == "opt-summary:BTC-USD"
    assert ticker.forward_usd == 98765.4
    assert not ticker.HasField("bid_iv")  # "0" -> absent
    assert ticker.mark_iv == 0.55 and ticker.ask_iv == 0.57
    assert ticker.header.receive_time_ns == 9 and ticker.header.source == "connector.okx"


def test_tickers_index_and_mark_price(venue_fixtures: Path) -> None:
    frames = {
        orjson.loads(f)["arg"]["channel"]: f for f in lines(okx_dir(venue_fixtures) / OPTIONS_FILE)
    }
    ticker = parse_frame(frames["tickers"], 1).events[0].event.ticker
    assert ticker.best_ask_price_native == 0.0005 and ticker.best_ask_size_native == 111
    assert not ticker.HasField("best_bid_price_native")  # "" bid
    # Inverse option: no USD equivalent without the family's forward (stateless parse).
    assert not ticker.HasField("best_ask_price_usd_per_coin")

    index = parse_frame(frames["index-tickers"], 1).events[0]
    assert (index.currency, index.kind) == ("ETH", "index")
    assert index.event.index_price.index_name == "ETH-USD"
    assert index.event.index_price.price_usd == 3814.05

    mark = parse_frame(frames["mark-price"], 1)
    marked = mark.events[0].event.ticker
    # The option mark looks like USD per coin (unconfirmed): no native price is derived.
    assert marked.mark_price_usd_per_coin == pytest.approx(3.8005764218904408)
    assert not marked.HasField("mark_price_native")
    assert mark.counts["mark_price.option_usd_unconfirmed"] == 1


def test_future_ticker_is_usd_per_coin() -> None:
    entry = {
        "instType": "FUTURES",
        "instId": "BTC-USD-220527",
        "bidPx": "30100.5",
        "bidSz": "12",
        "askPx": "30101",
        "askSz": "3",
        "ts": "1652459225464",
    }
    ticker = parse_frame(_push("tickers", "BTC-USD-220527", [entry]), 1).events[0].event.ticker
    assert ticker.best_bid_price_native == ticker.best_bid_price_usd_per_coin == 30100.5
    assert ticker.best_ask_price_usd_per_coin == 30101.0


def test_books5_is_a_periodic_snapshot() -> None:
    entry = {
        "asks": [["0.0105", "20", "0", "2"], ["0.011", "5", "0", "1"]],
        "bids": [["0.01", "7", "0", "1"]],
        "instId": "BTC-USD-241227-100000-C",
        "ts": "1735000000000",
        "seqId": 77,
    }
    result = parse_frame(_push("books5", "BTC-USD-241227-100000-C", [entry]), 1)
    snapshot = result.events[0].event.book_snapshot
    assert snapshot.is_periodic and snapshot.venue_sequence == 77
    assert [lv.price_native for lv in snapshot.asks] == [0.0105, 0.011]
    # A periodic book is not sequenced: a session passes it through untouched.
    assert OkxSession().on_frame(_push("books5", "X-USD", [entry]), 1).kind_counts() == {
        "book_snapshot": 1
    }


def test_pong_ping_and_events() -> None:
    session = OkxSession()
    assert session.encode(VenueRequest("ping", {}, "keep-alive")) == "ping"
    pong = session.on_frame("pong", 1)
    assert pong.counts["heartbeat.pong"] == 1 and pong.dead_letters == [] and pong.events == []
    notice = session.on_frame(
        b'{"event":"notice","code":"64008","msg":"The connection will soon be closed"}', 1
    )
    assert notice.venue_errors[0].code == "64008" and notice.venue_errors[0].method == "notice"
    other = session.on_frame(b'{"event":"channel-conn-count","channel":"books","connCount":"2"}', 1)
    assert other.counts["unknown_event.channel-conn-count"] == 1
    assert session.on_frame(b'{"something":"else"}', 1).counts["unknown_message"] == 1


def test_subscribe_acks_are_matched_per_argument() -> None:
    session = OkxSession(first_request_id=5)
    wire = orjson.loads(session.subscribe(["books:BTC-USD-220527-30000-C", "opt-summary:BTC-USD"]))
    assert wire == {
        "id": "5",
        "op": "subscribe",
        "args": [
            {"channel": "books", "instId": "BTC-USD-220527-30000-C"},
            {"channel": "opt-summary", "instFamily": "BTC-USD"},
        ],
    }
    # One ack per argument; older venue versions echo no id and "uly" for the family.
    first = session.on_frame(
        b'{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USD-220527-30000-C"},'
        b'"connId":"a1"}',
        1,
    )
    assert first.subscribed == ["books:BTC-USD-220527-30000-C"] and first.acks == []
    second = session.on_frame(
        b'{"event":"subscribe","arg":{"channel":"opt-summary","uly":"BTC-USD"},"connId":"a1"}', 2
    )
    assert second.subscribed == ["opt-summary:BTC-USD"]
    assert [(a.request_id, a.method) for a in second.acks] == [("5", "subscribe")]
    assert second.counts["response.subscribe"] == 1
    stray = session.on_frame(
        b'{"event":"unsubscribe","arg":{"channel":"books","instId":"X-USD-1"},"connId":"a1"}', 3
    )
    assert stray.unsubscribed == ["books:X-USD-1"] and stray.counts["response.unmatched"] == 1


def test_error_reply_names_the_failed_request() -> None:
    session = OkxSession(first_request_id=1)
    session.subscribe(["books:NOPE-USD-1-1-C"])
    result = session.on_frame(
        b'{"event":"error","id":"1","code":"60018","msg":"Wrong URL or channel","connId":"x"}', 1
    )
    error = result.venue_errors[0]
    assert (error.code, error.message, error.request_id) == ("60018", "Wrong URL or channel", "1")
    assert error.method == "subscribe" and error.channels == ("books:NOPE-USD-1-1-C",)
    unnamed = session.on_frame(b'{"event":"error","code":"60012","msg":"Invalid request"}', 2)
    assert unnamed.venue_errors[0].method == "" and unnamed.venue_errors[0].code == "60012"


_GOOD_SUMMARY = {"instId": "BTC-USD-241227-100000-C", "markVol": "0.5", "ts": "1735000000000"}


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b'{"arg":{"channel":"books"', "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"arg":{"instId":"X"},"data":[]}', "missing or non-string 'channel'"),
        (b'{"arg":"books","data":[]}', "'arg' is not an object"),
        (b'{"arg":{"channel":"tickers","instId":"X"}}', "non-list 'data'"),
        (
            _push("books", "BTC-USD-220527", [{"asks": [], "bids": [], "ts": "1"}]),
            "unknown book 'action'",
        ),
        (
            _push(
                "books",
                "BTC-USD-220527",
                [{"asks": [["x", "1", "0", "1"]], "bids": [], "ts": "1"}],
                "snapshot",
            ),
            "invalid asks level",
        ),
        (
            _push("books", "BTC-USD-220527", [{"asks": [], "bids": [], "ts": "soon"}], "update"),
            "non-integer 'ts'",
        ),
        (
            _push(
                "books",
                "BTC-USD-220527",
                [{"asks": [], "bids": [], "ts": "1", "seqId": 5}],
                "update",
            ),
            "'prevSeqId'",
        ),
    ],
)
def test_bad_frames_are_dead_lettered_never_raised(raw: bytes, reason_part: str) -> None:
    result = OkxSession().on_frame(raw, 1)
    assert result.events == []
    assert len(result.dead_letters) == 1
    assert result.dead_letters[0].raw == raw
    assert reason_part in result.dead_letters[0].reason


def test_a_bad_entry_of_an_array_channel_is_dead_lettered_alone() -> None:
    missing_id = {"markVol": "0.5", "ts": "1735000000000"}
    bad_index = {"instId": "BTC-USD", "ts": "1"}
    summary = OkxSession().on_frame(_push("opt-summary", "BTC-USD", [_GOOD_SUMMARY, missing_id]), 1)
    assert summary.kind_counts() == {"ticker": 1}
    assert len(summary.dead_letters) == 1 and "'instId'" in summary.dead_letters[0].reason
    assert orjson.loads(summary.dead_letters[0].raw) == missing_id
    index = OkxSession().on_frame(_push("index-tickers", "BTC-USD", [bad_index]), 1)
    assert index.events == [] and "'idxPx'" in index.dead_letters[0].reason


def test_header_sequences_are_a_per_session_counter(venue_fixtures: Path) -> None:
    frames = lines(okx_dir(venue_fixtures) / BOOKS_FILE)[:4]
    session = OkxSession(first_sequence=50)
    stamped = []
    for frame in frames:
        event = session.on_frame(frame, 1).events[0].event
        stamped.append(getattr(event, str(event.WhichOneof("event"))).header.sequence)
    assert stamped == [50, 51, 52, 53]
    session.on_connected()  # a reconnect keeps counting
    event = session.on_frame(frames[0], 1).events[0].event
    assert event.book_snapshot.header.sequence == 54


def test_instruments_channel_reports_listings_and_states() -> None:
    session = OkxSession(first_request_id=1)
    wire = orjson.loads(session.subscribe(["instruments:OPTION"]))
    assert wire["args"] == [{"channel": "instruments", "instType": "OPTION"}]
    entries = [
        {"instId": "BTC-USD-241227-100000-C", "instType": "OPTION", "state": "live"},
        {"instId": "BTC-USD-241220-90000-P", "instType": "OPTION", "state": "expired"},
        {"instType": "OPTION", "state": "live"},
    ]
    frame = orjson.dumps({"arg": {"channel": "instruments", "instType": "OPTION"}, "data": entries})
    result = session.on_frame(frame, 1)
    assert result.channel == "instruments:OPTION" and result.events == []
    assert [(s.symbol, s.state) for s in result.instrument_states] == [
        ("BTC-USD-241227-100000-C", "live"),
        ("BTC-USD-241220-90000-P", "expired"),
    ]
    assert len(result.dead_letters) == 1 and "'instId'" in result.dead_letters[0].reason
