"""Venue-independent connector pieces: planning, pacing, state machine, registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from svc_connector.kit.connection_state import ConnectionStateMachine
from svc_connector.kit.pacing import TokenBucket
from svc_connector.kit.sequencing import BookSequencer, DeltaVerdict
from svc_connector.kit.subscriptions import ChannelAllocator, batched, diff_symbols
from svc_connector.venues import registry
from svc_connector.venues.base import ConnectionState, ConnectorConfig, Endpoints, VenueSession
from svc_connector.venues.deribit.client import DeribitSettings, plan_channel_groups
from svc_connector.venues.deribit.parse import parse_instruments
from tests.connector.deribit_fixtures import deribit_dir


def _groups(n: int, size: int = 2, prefix: str = "i") -> dict[str, tuple[str, ...]]:
    return {
        f"{prefix}{k:04d}": tuple(f"{prefix}{k:04d}.ch{j}" for j in range(size)) for k in range(n)
    }


def test_allocator_spreads_within_budget_and_keeps_assignments_stable() -> None:
    allocator = ChannelAllocator(max_channels_per_connection=100, max_connections=32)
    first = allocator.update(_groups(120))  # 240 channels -> 3 connections
    assert first.connections == 3 and first.over_budget == 0
    assert all(load <= 100 for load in allocator.loads())
    assert sum(len(d.subscribe) for d in first.per_connection.values()) == 240
    before = {i: set(allocator.channels_of(i)) for i in range(3)}

    # New listings go to existing connections with room; nothing moves.
    grown = _groups(120) | _groups(10, prefix="n")
    second = allocator.update(grown)
    assert second.connections == 3
    assert all(not d.unsubscribe for d in second.per_connection.values())
    assert sorted(ch for d in second.per_connection.values() for ch in d.subscribe) == sorted(
        ch for channels in _groups(10, prefix="n").values() for ch in channels
    )
    for index, channels in before.items():
        assert channels <= set(allocator.channels_of(index))

    # Expiries are unsubscribed from the connection that holds them.
    shrunk = {k: v for k, v in grown.items() if not k.startswith("i00")}
    third = allocator.update(shrunk)
    gone = sorted(ch for d in third.per_connection.values() for ch in d.unsubscribe)
    assert gone == sorted(ch for k, v in grown.items() if k.startswith("i00") for ch in v)
    assert all(not d.subscribe for d in third.per_connection.values())
    assert sum(allocator.loads()) == sum(len(v) for v in shrunk.values())


def test_allocator_opens_connections_up_to_the_cap_then_exceeds_budget() -> None:
    allocator = ChannelAllocator(max_channels_per_connection=10, max_connections=2)
    diff = allocator.update(_groups(15))  # 30 channels, room for 20
    assert diff.connections == 2
    assert diff.over_budget > 0
    assert sum(allocator.loads()) == 30  # nothing dropped
    with pytest.raises(ValueError, match="positive"):
        ChannelAllocator(0, 1)


def test_allocator_group_change_stays_on_its_connection() -> None:
    allocator = ChannelAllocator(100, 4)
    allocator.update({"a": ("a.book", "a.ticker")})
    diff = allocator.update({"a": ("a.ticker", "a.trades")})
    assert diff.per_connection[0].unsubscribe == ["a.book"]
    assert diff.per_connection[0].subscribe == ["a.trades"]
    assert allocator.loads() == [2]


def test_token_bucket_paces_requests() -> None:
    bucket = TokenBucket(rate_per_s=5.0, burst=1.0, now_s=0.0)
    assert bucket.wait_time(0.0) == 0.0
    bucket.take(0.0)
    assert bucket.wait_time(0.0) == pytest.approx(0.2)
    assert bucket.wait_time(0.1) == pytest.approx(0.1)
    assert bucket.wait_time(0.2) == 0.0


def test_batched() -> None:
    assert list(batched(["a", "b", "c", "d", "e"], 2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(batched([], 3)) == []


def test_diff_symbols() -> None:
    assert diff_symbols({"a", "b"}, {"b", "c"}) == (["c"], ["a"])


def test_state_machine_allows_the_lifecycle_and_refuses_the_rest() -> None:
    machine = ConnectionStateMachine()
    path = [
        ConnectionState.CONNECTING,
        ConnectionState.SUBSCRIBING,
        ConnectionState.LIVE,
        ConnectionState.BACKING_OFF,
        ConnectionState.CONNECTING,
        ConnectionState.BACKING_OFF,
        ConnectionState.STOPPED,
    ]
    for state in path:
        change = machine.transition(state, "test")
        assert change is not None and change.current == state
    assert machine.changes == len(path)
    assert machine.transition(ConnectionState.LIVE, "after stop") is None
    assert machine.refused == 1 and machine.state == ConnectionState.STOPPED
    fresh = ConnectionStateMachine()
    assert fresh.transition(ConnectionState.LIVE, "skip connecting") is None


def test_book_sequencer_verdicts() -> None:
    books = BookSequencer(resync_timeout_ns=100)
    assert books.check_delta("x", 1, 2, 0) == DeltaVerdict.NO_SNAPSHOT
    books.snapshot("x", 10)
    assert books.check_delta("x", 10, 11, 0) == DeltaVerdict.APPLY
    assert books.check_delta("x", 10, 11, 0) == DeltaVerdict.STALE
    assert books.check_delta("x", 11, 11, 0) == DeltaVerdict.APPLY  # keep-alive: prev == seq
    assert books.check_delta("x", 12, 13, 0) == DeltaVerdict.GAP
    books.start_resync("x", 0)
    assert books.check_delta("x", 13, 14, 50) == DeltaVerdict.RESYNCING
    assert books.check_delta("x", 14, 15, 150) == DeltaVerdict.RESYNC_AGAIN
    books.snapshot("x", 20)
    assert books.last_sequence("x") == 20


def test_deribit_channel_plan_from_recorded_instruments(venue_fixtures: Path) -> None:
    body = (deribit_dir(venue_fixtures) / "rest_get_instruments_BTC_2021-07-22.json").read_bytes()
    instruments = parse_instruments(body, 1).instruments
    settings = DeribitSettings.from_config(ConnectorConfig(currencies=("BTC",)))
    groups = plan_channel_groups(instruments, settings)
    assert groups["index:BTC"] == (
        "deribit_price_index.btc_usd",
        "deribit_volatility_index.btc_usd",
    )
    assert groups["state:BTC"] == ("instrument.state.any.btc",)
    assert groups["BTC-6AUG21-40000-C"] == (
        "book.BTC-6AUG21-40000-C.100ms",
        "ticker.BTC-6AUG21-40000-C.100ms",
    )
    assert groups["BTC-PERPETUAL"] == ("ticker.BTC-PERPETUAL.100ms",)
    channels = sum(len(v) for v in groups.values())
    assert channels == 390 * 2 + 8 + 2 + 1
    allocator = ChannelAllocator(settings.max_channels_per_connection, settings.max_connections)
    diff = allocator.update(groups)
    assert diff.connections == 2 and max(allocator.loads()) <= 500  # 791 channels / 500


def test_registry_lists_deribit_and_resolves_endpoints() -> None:
    assert "deribit" in registry.names()
    adapter = registry.get("Deribit")
    assert adapter.name == "deribit" and adapter.source == "connector.deribit"
    assert adapter.resolve_endpoints(ConnectorConfig()).ws_url == "wss://www.deribit.com/ws/api/v2"
    testnet = adapter.resolve_endpoints(ConnectorConfig(environment="testnet"))
    assert testnet.rest_url == "https://test.deribit.com/api/v2"
    sim = adapter.simulator_endpoints("http://127.0.0.1:8080/", "ws://127.0.0.1:8080")
    assert sim == Endpoints("ws://127.0.0.1:8080/ws/api/v2", "http://127.0.0.1:8080/api/v2")
    with pytest.raises(ValueError, match="unknown environment"):
        adapter.resolve_endpoints(ConnectorConfig(environment="moon"))
    with pytest.raises(KeyError, match="unknown venue"):
        registry.get("kraken")
    session: VenueSession = adapter.new_session()
    assert session.source == "connector.deribit"
    assert registry.all_adapters()["deribit"] is adapter
