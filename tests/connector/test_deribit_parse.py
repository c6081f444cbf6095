"""Deribit frame parsing against the recorded fixtures, plus bad-input outcomes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from svc_connector.venues.base import VenueRequest
from svc_connector.venues.deribit.parse import parse_frame
from svc_connector.venues.deribit.session import DeribitSession
from tests.connector.deribit_fixtures import deribit_dir, lines, receive_times_ns


def test_ws_options_recording_parses_with_exact_counts(venue_fixtures: Path) -> None:
    folder = deribit_dir(venue_fixtures)
    frames = lines(folder / "ws_options_2021-07-22.jsonl")
    received = receive_times_ns(folder / "ws_options_2021-07-22.recv_ts.jsonl")
    assert len(frames) == len(received) == 137

    session = DeribitSession(first_request_id=0)
    # Line 0 is the request the recorder sent: encode the same request so that the
    # venue's response (id 0) is matched to it.
    sent = orjson.loads(frames[0])
    text = session.encode(VenueRequest(sent["method"], sent["params"], "subscribe"))
    assert orjson.loads(text)["id"] == sent["id"] == 0

    kinds: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    subscribed: list[str] = []
    currencies: Counter[str] = Counter()
    for frame, receive_ns in zip(frames, received, strict=True):
        result = session.on_frame(frame, receive_ns)
        assert result.dead_letters == []
        assert result.venue_errors == []
        assert result.resubscribes == []
        kinds.update(result.kind_counts())
        counts.update(result.counts)
        subscribed.extend(result.subscribed)
        for event in result.events:
            currencies[event.currency] += 1
            case = event.event.WhichOneof("event")
            header = getattr(event.event, str(case)).header
            assert header.receive_time_ns == receive_ns
            assert header.source == "connector.deribit"
            assert header.event_time_ns > 1_626_993_700 * 10**9

    assert kinds == {"ticker": 89, "book_snapshot": 10, "book_delta": 36}
    assert counts["frames"] == 137
    assert counts["unknown_method.public/subscribe"] == 1  # the recorder's own request line
    assert counts["response.public/subscribe"] == 1
    assert counts.get("book.gap", 0) == 0 and counts.get("book.stale_dropped", 0) == 0
    # The response lists all 30 requested channels (in another order).
    assert sorted(subscribed) == sorted(sent["params"]["channels"])
    assert len(subscribed) == 30
    assert set(currencies) == {"BTC", "ETH"}


def test_ticker_recording_normalises_every_ticker(venue_fixtures: Path) -> None:
    frames = lines(deribit_dir(venue_fixtures) / "ws_ticker_options_2021-07-22.jsonl")
    assert len(frames) == 89
    with_bid = without_bid = 0
    for frame in frames:
        data = orjson.loads(frame)["params"]["data"]
        result = parse_frame(frame, 1)
        assert result.kind_counts() == {"ticker": 1}
        ticker = result.events[0].event.ticker
        assert result.events[0].kind == "ticker"
        assert ticker.symbol == data["instrument_name"]
        assert ticker.header.event_time_ns == data["timestamp"] * 1_000_000
        assert ticker.mark_iv == pytest.approx(data["mark_iv"] / 100)
        assert ticker.forward_usd == data["underlying_price"]
        assert ticker.forward_name == data["underlying_index"]
        assert ticker.index_price_usd == data["index_price"]
        assert ticker.delta == data["greeks"]["delta"]
        assert ticker.vega == data["greeks"]["vega"]
        # Inverse options: USD per coin = coin premium x forward.
        assert ticker.mark_price_usd_per_coin == pytest.approx(
            data["mark_price"] * data["underlying_price"]
        )
        if data["best_bid_amount"] > 0:
            with_bid += 1
            assert ticker.best_bid_price_native == data["best_bid_price"]
            assert ticker.bid_iv == pytest.approx(data["bid_iv"] / 100)
        else:
            without_bid += 1
            # Empty side: price 0 / IV 0 on the wire become absent fields.
            assert not ticker.HasField("best_bid_price_native")
            assert not ticker.HasField("best_bid_price_usd_per_coin")
            assert not ticker.HasField("bid_iv")
        if data["ask_iv"] == 0:
            assert not ticker.HasField("ask_iv")
    assert with_bid == 76 and without_bid == 13


def test_book_recording_has_10_snapshots_and_36_changes(venue_fixtures: Path) -> None:
    frames = lines(deribit_dir(venue_fixtures) / "ws_book_raw_options_2021-07-22.jsonl")
    kinds: Counter[str] = Counter()
    for frame in frames:
        data = orjson.loads(frame)["params"]["data"]
        result = parse_frame(frame, 1)
        kinds.update(result.kind_counts())
        event = result.events[0].event
        if data["type"] == "snapshot":
            snapshot = event.book_snapshot
            assert snapshot.venue_sequence == data["change_id"]
            assert not snapshot.is_periodic
            assert len(snapshot.bids) == len(data["bids"])
            bid_prices = [level.price_native for level in snapshot.bids]
            ask_prices = [level.price_native for level in snapshot.asks]
            assert bid_prices == sorted(bid_prices, reverse=True)
            assert ask_prices == sorted(ask_prices)
        else:
            delta = event.book_delta
            assert delta.prev_venue_sequence == data["prev_change_id"]
            assert delta.venue_sequence == data["change_id"]
            wire = [(a, p, s) for a, p, s in data["bids"]] + [(a, p, s) for a, p, s in data["asks"]]
            levels = list(delta.bids) + list(delta.asks)
            for (action, price, amount), level in zip(wire, levels, strict=True):
                assert level.price_native == price
                assert level.size_native == (0.0 if action == "delete" else amount)
    assert kinds == {"book_snapshot": 10, "book_delta": 36}


def test_grouped_snapshot_parses_without_type_or_prev_change_id(venue_fixtures: Path) -> None:
    raw = (deribit_dir(venue_fixtures) / "nautilus_ws_book_grouped_snapshot.json").read_bytes()
    result = DeribitSession().on_frame(raw, 7)
    assert result.dead_letters == []
    assert result.channel == "book.BTC-PERPETUAL.none.10.100ms"
    assert result.kind_counts() == {"book_snapshot": 1}
    snapshot = result.events[0].event.book_snapshot
    assert snapshot.is_periodic
    assert snapshot.symbol == "BTC-PERPETUAL"
    assert snapshot.venue_sequence == 136725664747
    assert (len(snapshot.bids), len(snapshot.asks)) == (10, 10)
    assert snapshot.bids[0].price_native == 89532.5 and snapshot.bids[0].size_native == 254900.0
    assert snapshot.asks[0].price_native == 89533.0
    assert result.events[0].currency == "BTC"


def test_test_request_produces_public_test_reply(venue_fixtures: Path) -> None:
    raw = (deribit_dir(venue_fixtures) / "nautilus_ws_test_request.json").read_bytes()
    session = DeribitSession(first_request_id=41)
    result = session.on_frame(raw, 1)
    assert result.events == [] and result.dead_letters == []
    assert result.replies == [VenueRequest("public/test", {}, "test_request reply")]
    wire = orjson.loads(session.encode(result.replies[0]))
    assert wire == {"jsonrpc": "2.0", "id": 41, "method": "public/test", "params": {}}
    # The venue's answer to our public/test is matched, not counted as unknown.
    answer = session.on_frame(b'{"jsonrpc":"2.0","id":41,"result":{"version":"1.2.26"}}', 2)
    assert answer.counts["response.public/test"] == 1
    assert answer.acks[0].method == "public/test"


def test_current_perpetual_ticker_fields(venue_fixtures: Path) -> None:
    raw = (deribit_dir(venue_fixtures) / "nautilus_ws_ticker.json").read_bytes()
    result = parse_frame(raw, 1)
    ticker = result.events[0].event.ticker
    assert ticker.symbol == "BTC-PERPETUAL"
    # A perpetual is quoted in USD per coin: the USD equivalents equal the native prices.
    assert ticker.mark_price_usd_per_coin == ticker.mark_price_native == 92281.78
    assert ticker.best_bid_price_usd_per_coin == 92283.5
    assert not ticker.HasField("mark_iv") and not ticker.HasField("forward_usd")
    assert ticker.open_interest == 1132329370.0


def test_rest_order_book_response_is_an_ack_not_an_event(venue_fixtures: Path) -> None:
    raw = (deribit_dir(venue_fixtures) / "nautilus_http_get_order_book.json").read_bytes()
    result = parse_frame(raw, 1)
    assert result.events == [] and result.dead_letters == []
    assert result.acks[0].request_id == 3
    assert result.counts["response"] == 1


def _notification(channel: str, data: object) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
    )


def test_price_index_and_dvol_normalise() -> None:
    index = parse_frame(
        _notification(
            "deribit_price_index.eth_usd",
            {"timestamp": 1626993723632, "price": 2006.72, "index_name": "eth_usd"},
        ),
        5,
    )
    assert index.kind_counts() == {"index_price": 1}
    assert (index.events[0].currency, index.events[0].kind) == ("ETH", "index")
    price = index.events[0].event.index_price
    assert (price.index_name, price.price_usd) == ("eth_usd", 2006.72)
    assert price.header.event_time_ns == 1626993723632 * 1_000_000

    dvol = parse_frame(
        _notification(
            "deribit_volatility_index.btc_usd",
            {"volatility": 75.4, "timestamp": 1626993723632, "index_name": "btc_usd"},
        ),
        5,
    )
    assert (dvol.events[0].currency, dvol.events[0].kind) == ("BTC", "index")
    assert dvol.events[0].event.volatility_index.volatility == pytest.approx(0.754)


def test_usdc_linear_ticker_usd_per_coin_is_native() -> None:
    result = parse_frame(
        _notification(
            "ticker.MATIC_USDC-9MAR24-1d02-C.100ms",
            {
                "timestamp": 1709900000000,
                "instrument_name": "MATIC_USDC-9MAR24-1d02-C",
                "mark_price": 0.0345,
                "mark_iv": 80.0,
                "underlying_price": 1.05,
                "underlying_index": "matic_usdc",
                "best_bid_price": 0.03,
                "best_bid_amount": 100.0,
                "best_ask_price": 0.0,
                "best_ask_amount": 0.0,
            },
        ),
        1,
    )
    ticker = result.events[0].event.ticker
    assert result.events[0].currency == "MATIC"
    assert ticker.mark_price_usd_per_coin == 0.0345
    assert ticker.best_bid_price_usd_per_coin == 0.03
    assert not ticker.HasField("best_ask_price_native")
    assert ticker.mark_iv == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":', "malformed JSON"),
        (b"\xff\xfe not json", "malformed JSON"),
        (b"[1,2,3]", "not a JSON object"),
        (b'{"jsonrpc":"2.0","method":"subscription"}', "missing 'params'"),
        (
            _notification("ticker.BTC-6AUG21-40000-C.100ms", {"timestamp": 1}),
            "missing or non-string 'instrument_name'",
        ),
        (
            _notification(
                "ticker.BTC-6AUG21-40000-C.100ms",
                {"instrument_name": "BTC-6AUG21-40000-C", "timestamp": "soon"},
            ),
            "non-numeric 'timestamp'",
        ),
        (
            _notification(
                "book.BTC-6AUG21-40000-C.100ms",
                {
                    "type": "change",
                    "timestamp": 1,
                    "instrument_name": "BTC-6AUG21-40000-C",
                    "change_id": 5,
                    "bids": [],
                    "asks": [],
                },
            ),
            "prev_change_id",
        ),
        (
            _notification(
                "book.BTC-6AUG21-40000-C.100ms",
                {
                    "type": "snapshot",
                    "timestamp": 1,
                    "instrument_name": "BTC-6AUG21-40000-C",
                    "change_id": 5,
                    "bids": [["new", 0.1]],
                    "asks": [],
                },
            ),
            "malformed bids entry",
        ),
        (
            _notification(
                "book.BTC-6AUG21-40000-C.100ms",
                {
                    "type": "snapshot",
                    "timestamp": 1,
                    "instrument_name": "BTC-6AUG21-40000-C",
                    "change_id": 5,
                    "bids": [["teleport", 0.1, 1.0]],
                    "asks": [],
                },
            ),
            "unknown book action",
        ),
        (
            _notification("deribit_price_index.btc_usd", {"timestamp": 1, "index_name": "btc_usd"}),
            "'price'",
        ),
        (_notification("ticker.X.100ms", [1, 2]), "'data' is not an object"),
        (b'{"jsonrpc":"2.0","id":3,"error":"boom"}', "'error' is not an object"),
    ],
)
def test_bad_frames_are_dead_lettered_never_raised(raw: bytes, reason_part: str) -> None:
    result = DeribitSession().on_frame(raw, 1)
    assert result.events == []
    assert len(result.dead_letters) == 1
    assert result.dead_letters[0].raw == raw
    assert reason_part in result.dead_letters[0].reason


def test_unknown_channels_and_methods_are_counted_and_ignored() -> None:
    session = DeribitSession()
    frames = [
        _notification("trades.BTC-6AUG21-40000-C.raw", [{"price": 1}]),
        _notification("markprice.options.btc_usd", [{"iv": 0.7}]),
        _notification("book.BTC-6AUG21-40000-C.none.10", {}),
        b'{"jsonrpc":"2.0","method":"something_new","params":{}}',
        b'{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"heartbeat"}}',
        b'{"jsonrpc":"2.0","usIn":1}',
    ]
    counts: Counter[str] = Counter()
    for frame in frames:
        result = session.on_frame(frame, 1)
        assert result.events == [] and result.dead_letters == [] and result.replies == []
        counts.update(result.counts)
    assert counts["unknown_channel.trades"] == 1
    assert counts["unknown_channel.markprice"] == 1
    assert counts["unknown_channel.book_shape"] == 1
    assert counts["unknown_method.something_new"] == 1
    assert counts["heartbeat.heartbeat"] == 1
    assert counts["unknown_message"] == 1


def test_venue_error_reply_names_the_failed_request() -> None:
    session = DeribitSession(first_request_id=7)
    session.subscribe(["book.BTC-6AUG21-40000-C.raw"])
    result = session.on_frame(
        b'{"jsonrpc":"2.0","id":7,"error":{"message":"unauthorized","code":13778}}', 1
    )
    assert result.dead_letters == [] and result.events == []
    assert len(result.venue_errors) == 1
    error = result.venue_errors[0]
    assert (error.code, error.message, error.request_id) == ("13778", "unauthorized", 7)
    assert error.method == "public/subscribe"
    assert error.channels == ("book.BTC-6AUG21-40000-C.raw",)
    # An unmatched error is still reported, without a method.
    other = session.on_frame(b'{"jsonrpc":"2.0","id":99,"error":{"code":10028}}', 2)
    assert other.venue_errors[0].method == "" and other.venue_errors[0].code == "10028"


def test_subscribe_response_reports_refused_channels() -> None:
    session = DeribitSession(first_request_id=1)
    session.subscribe(["ticker.BTC-6AUG21-40000-C.100ms", "ticker.BTC-1JAN20-1-C.100ms"])
    result = session.on_frame(
        b'{"jsonrpc":"2.0","id":1,"result":["ticker.BTC-6AUG21-40000-C.100ms"]}', 1
    )
    assert result.subscribed == ["ticker.BTC-6AUG21-40000-C.100ms"]
    assert result.counts["subscribe.unconfirmed_channels"] == 1
    session.unsubscribe(["ticker.BTC-6AUG21-40000-C.100ms"])
    gone = session.on_frame(
        b'{"jsonrpc":"2.0","id":2,"result":["ticker.BTC-6AUG21-40000-C.100ms"]}', 2
    )
    assert gone.unsubscribed == ["ticker.BTC-6AUG21-40000-C.100ms"] and gone.subscribed == []


def test_header_sequences_are_a_per_session_counter(venue_fixtures: Path) -> None:
    frames = lines(deribit_dir(venue_fixtures) / "ws_ticker_options_2021-07-22.jsonl")[:5]
    session = DeribitSession(first_sequence=100)
    sequences = [session.on_frame(f, 1).events[0].event.ticker.header.sequence for f in frames]
    assert sequences == [100, 101, 102, 103, 104]
    session.on_connected()  # a reconnect keeps counting
    assert session.on_frame(frames[0], 1).events[0].event.ticker.header.sequence == 105


def test_instrument_state_notification_requests_refresh() -> None:
    result = parse_frame(
        _notification(
            "instrument.state.any.btc",
            {"timestamp": 1, "state": "created", "instrument_name": "BTC-6AUG21-40000-C"},
        ),
        1,
    )
    assert [(s.symbol, s.state) for s in result.instrument_states] == [
        ("BTC-6AUG21-40000-C", "created")
    ]
    assert result.events == []


def test_event_kinds_match_subject_kinds(venue_fixtures: Path) -> None:
    frames = lines(deribit_dir(venue_fixtures) / "ws_options_2021-07-22.jsonl")
    kinds_by_case: dict[str, set[str]] = {}
    for frame in frames:
        for event in parse_frame(frame, 1).events:
            kinds_by_case.setdefault(str(event.event.WhichOneof("event")), set()).add(event.kind)
    assert kinds_by_case == {
        "ticker": {"ticker"},
        "book_snapshot": {"book"},
        "book_delta": {"book"},
    }


def test_closed_instrument_ticker_has_no_mark_or_ivs() -> None:
    result = parse_frame(
        _notification(
            "ticker.BTC-6AUG21-40000-C.100ms",
            {
                "timestamp": 1628236800000,
                "state": "closed",
                "instrument_name": "BTC-6AUG21-40000-C",
                "mark_price": 0.0,
                "mark_iv": 0.0,
                "bid_iv": 0.0,
                "ask_iv": 0.0,
                "underlying_price": 40100.0,
                "best_bid_price": 0.0,
                "best_bid_amount": 0.0,
                "best_ask_price": 0.0,
                "best_ask_amount": 0.0,
            },
        ),
        1,
    )
    ticker = result.events[0].event.ticker
    for field in (
        "mark_price_native",
        "mark_price_usd_per_coin",
        "mark_iv",
        "bid_iv",
        "ask_iv",
        "best_bid_price_native",
        "best_ask_price_native",
    ):
        assert not ticker.HasField(field), field
    assert ticker.forward_usd == 40100.0
