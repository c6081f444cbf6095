"""Pure parts of the API: store, request validation, health statuses, decoding, wire framing."""

from __future__ import annotations

import grpc
import pytest

from svc_api.feed import decode_smiles, decode_surface, parse_ack_subject
from svc_api.health import SERVICE_NAME, health_statuses, surface_health_name
from svc_api.requests import (
    ApiError,
    format_time_ns,
    parse_expiry,
    parse_key,
    parse_stream_request,
    parse_time,
)
from svc_api.store import StreamFilter, SurfaceKey, SurfaceStore, stream_message
from tests.api.conftest import FIRST_EXPIRY_NS, make_smile, make_surface
from volstream.config import parse_rfc3339_ns
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_service_pb2 as api_pb
from volstream.wire import WIRE_VARINT, bool_field, field_key, length_delimited_field, varint

KNOWN = ("deribit", "okx", "bybit", "binance", "all")
SEC = 1_000_000_000


def test_latest_wins_by_stream_sequence_and_keys_are_normalised() -> None:
    store = SurfaceStore()
    assert store.apply_surface(make_surface("Deribit", "btc", 1), sequence=10).accepted
    assert store.apply_surface(make_surface("deribit", "BTC", 2), sequence=12).accepted
    older = store.apply_surface(make_surface("deribit", "BTC", 3), sequence=11)
    assert not older.accepted and "sequence 11 <= stored 12" in older.reason
    entry = store.latest("DERIBIT", "btc")
    assert entry is not None and entry.surface.revision == 2
    assert entry.key == SurfaceKey("deribit", "BTC")
    assert store.version == 2


def test_without_sequence_a_lower_revision_is_refused() -> None:
    store = SurfaceStore()
    store.apply_surface(make_surface("okx", "ETH", 5))
    outcome = store.apply_surface(make_surface("okx", "ETH", 4))
    assert not outcome.accepted and "revision 4 < stored 5" in outcome.reason


def test_invalid_surface_is_refused_with_a_reason_not_an_exception() -> None:
    store = SurfaceStore()
    outcome = store.apply_surface(make_surface("der ibit", "BTC", 1))
    assert not outcome.accepted and "venue" in outcome.reason
    outcome = store.apply_surface(make_surface("deribit", "B", 1))
    assert not outcome.accepted and "currency" in outcome.reason
    assert store.list() == [] and store.rejected == 2


def test_freshness_uses_publish_time_and_the_given_clock() -> None:
    store = SurfaceStore()
    store.apply_surface(make_surface("deribit", "BTC", 1, publish_time_ns=100 * SEC))
    entry = store.list()[0]
    assert store.freshness(entry, 105 * SEC, 10 * SEC).fresh
    stale = store.freshness(entry, 111 * SEC, 10 * SEC)
    assert stale.age_ms == 11_000 and not stale.fresh
    # No publish time in the header: the stream's store time stands in.
    bare = make_surface("okx", "BTC", 1)
    bare.header.publish_time_ns = 0
    store.apply_surface(bare, stored_time_ns=200 * SEC)
    bare_entry = store.latest("okx", "BTC")
    assert bare_entry is not None and bare_entry.publish_time_ns == 200 * SEC


def test_changed_since_gives_latest_state_per_key_once() -> None:
    store = SurfaceStore()
    for rev in range(1, 6):
        store.apply_surface(make_surface("deribit", "BTC", rev))
    store.apply_surface(make_surface("okx", "BTC", 1))
    version, changed = store.changed_since(0, StreamFilter())
    assert [(e.key.venue, e.surface.revision) for e in changed] == [("deribit", 5), ("okx", 1)]
    assert store.changed_since(version, StreamFilter()) == (version, [])
    store.apply_surface(make_surface("okx", "BTC", 2))
    only_okx = StreamFilter(venues=frozenset({"okx"}))
    _, changed = store.changed_since(version, only_okx)
    assert [e.surface.revision for e in changed] == [2]
    _, changed = store.changed_since(version, StreamFilter(venues=frozenset({"deribit"})))
    assert changed == []


def test_cached_frames_are_the_protobuf_encoding() -> None:
    store = SurfaceStore()
    store.apply_surface(make_surface("deribit", "BTC", 1))
    store.apply_surface(make_surface("okx", "BTC", 7))
    entries = store.list()
    payload = stream_message((e.surface_frame(True) for e in entries), True)
    parsed = api_pb.StreamSurfacesResponse.FromString(payload)
    assert parsed.is_snapshot
    assert [s.revision for s in parsed.surfaces] == [1, 7]
    assert all(len(sl.quotes) == 0 for s in parsed.surfaces for sl in s.slices)
    assert len(entries[0].surface.slices[0].quotes) == 20  # the stored surface is untouched
    full = api_pb.GetSurfaceResponse.FromString(entries[0].surface_frame(False))
    assert full.surface == entries[0].surface
    # Long payloads need multi-byte varint lengths.
    big = b"x" * 300_000
    assert length_delimited_field(1, big)[:4] == bytes([0x0A, 0xE0, 0xA7, 0x12])


def test_wire_helpers_write_what_protobuf_writes() -> None:
    for value in (0, 1, 127, 128, 300, 16_383, 16_384, 2**35, 2**64 - 1):
        header = common_pb.EventHeader(sequence=value)  # uint64 field 5
        assert header.SerializeToString() == (
            field_key(5, WIRE_VARINT) + varint(value) if value else b""
        )
    request = api_pb.StreamSurfacesRequest(omit_quotes=True)  # bool field 4
    assert request.SerializeToString() == bool_field(4, True)
    assert bool_field(4, False) == b""
    with pytest.raises(ValueError, match="negative"):
        varint(-1)


def test_smiles_are_kept_per_expiry_and_expired_ones_dropped() -> None:
    store = SurfaceStore()
    key = SurfaceKey("deribit", "BTC")
    assert store.apply_smile(make_smile("deribit", "BTC", FIRST_EXPIRY_NS)).accepted
    assert store.smile(key, FIRST_EXPIRY_NS) is not None
    late = make_smile("deribit", "BTC", FIRST_EXPIRY_NS + SEC)
    late.header.event_time_ns = FIRST_EXPIRY_NS + 1  # the first expiry has passed
    store.apply_smile(late)
    assert store.smile(key, FIRST_EXPIRY_NS) is None
    assert store.smile_by_label(key, late.expiry_label) is not None
    assert not store.apply_smile(iv_pb.Smile(venue="deribit", currency="BTC")).accepted


def test_request_validation_messages_are_precise() -> None:
    err = parse_key("kraken", "BTC", KNOWN)
    assert isinstance(err, ApiError) and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown venue 'kraken'" in err.message and "deribit" in err.message
    err = parse_key("deribit", "B$C", KNOWN)
    assert isinstance(err, ApiError) and "malformed currency 'B$C'" in err.message
    err = parse_key("", "BTC", KNOWN)
    assert isinstance(err, ApiError) and "venue is required" in err.message
    assert parse_key(" OKX ", "eth", KNOWN) == SurfaceKey("okx", "ETH")
    assert parse_expiry("2030-01-04") == "2030-01-04"
    bad_date = parse_expiry("2030-13-01")
    assert isinstance(bad_date, ApiError) and "2030-13-01" in bad_date.message
    bad_format = parse_expiry("04JAN30")
    assert isinstance(bad_format, ApiError) and "ISO date" in bad_format.message


def test_time_validation() -> None:
    now = 1_700_000_000 * SEC
    req = api_pb.GetSurfaceAtRequest(venue="deribit", currency="BTC")
    err = parse_time(req, now)
    assert isinstance(err, ApiError) and "time is required" in err.message
    req.time.seconds, req.time.nanos = 1_600_000_000, 5
    assert parse_time(req, now) == 1_600_000_000 * SEC + 5
    req.time.nanos = 2_000_000_000
    err = parse_time(req, now)
    assert isinstance(err, ApiError) and "nanos" in err.message
    req.time.seconds, req.time.nanos = 1_800_000_000, 0
    err = parse_time(req, now)
    assert isinstance(err, ApiError) and "in the future" in err.message


def test_stream_request_validation() -> None:
    query = parse_stream_request(
        api_pb.StreamSurfacesRequest(venues=["OKX"], currencies=["btc"], min_interval_ms=250),
        KNOWN,
    )
    assert not isinstance(query, ApiError)
    assert query.filter == StreamFilter(frozenset({"okx"}), frozenset({"BTC"}))
    assert query.min_interval_ms == 250
    err = parse_stream_request(api_pb.StreamSurfacesRequest(venues=["ftx"]), KNOWN)
    assert isinstance(err, ApiError) and err.message.startswith("venues: unknown venue 'ftx'")
    err = parse_stream_request(api_pb.StreamSurfacesRequest(min_interval_ms=-1), KNOWN)
    assert isinstance(err, ApiError) and "negative" in err.message


def test_health_statuses_any_and_all_policies() -> None:
    store = SurfaceStore()
    store.apply_surface(make_surface("deribit", "BTC", 1, publish_time_ns=100 * SEC))
    expected = [SurfaceKey("okx", "BTC")]
    statuses = health_statuses(store, expected, 101 * SEC, 5 * SEC, "any")
    assert statuses[""] and statuses[SERVICE_NAME]
    assert statuses[surface_health_name(SurfaceKey("deribit", "BTC"))]
    assert not statuses["volstream.v1.SurfaceService/okx/BTC"]
    assert not health_statuses(store, expected, 101 * SEC, 5 * SEC, "all")[""]
    assert not health_statuses(store, expected, 110 * SEC, 5 * SEC, "any")[""]
    assert not health_statuses(SurfaceStore(), [], 0, 5 * SEC, "any")[""]


def test_decode_surface_checks_subject_and_content() -> None:
    surface = make_surface("deribit", "BTC", 1)
    assert decode_surface("surface.deribit.btc", surface.SerializeToString()) == surface
    assert "subject says okx/btc" in str(
        decode_surface("surface.okx.btc", surface.SerializeToString())
    )
    assert "not a volstream.v1.Surface" in str(decode_surface("surface.deribit.btc", b"\xff\xff"))
    assert "without venue" in str(decode_surface("surface.deribit.btc", b""))
    namespaced = decode_surface(
        "replay.r1.surface.deribit.btc", surface.SerializeToString(), "replay.r1"
    )
    assert namespaced == surface


def test_decode_smiles_accepts_batches_and_single_smiles() -> None:
    smile = make_smile("okx", "ETH", FIRST_EXPIRY_NS)
    single = decode_smiles("iv.okx.eth", smile.SerializeToString())
    assert isinstance(single, list) and single[0] == smile
    batch = iv_pb.SmileBatch(venue="okx", currency="ETH")
    inner = batch.smiles.add()
    inner.CopyFrom(smile)
    inner.venue = ""  # left to the batch
    decoded = decode_smiles("iv.okx.eth", batch.SerializeToString())
    assert isinstance(decoded, list) and decoded[0].venue == "okx"
    assert "subject says deribit/eth" in str(
        decode_smiles("iv.deribit.eth", smile.SerializeToString())
    )
    assert isinstance(decode_smiles("iv.okx.eth", b"\x08\x01\xff"), str)


def test_ack_subject_and_timestamps() -> None:
    meta = parse_ack_subject("$JS.ACK.SURFACE.c1.1.42.7.1700000000123456789.3")
    assert meta is not None and (meta.stream_sequence, meta.num_pending) == (42, 3)
    assert meta.stored_time_ns == 1_700_000_000_123_456_789
    v2 = parse_ack_subject("$JS.ACK.dom.acc.SURFACE.c1.1.43.8.1700000000000000001.0.rnd")
    assert v2 is not None and v2.stream_sequence == 43 and v2.stored_time_ns % SEC == 1
    assert parse_ack_subject("_INBOX.x") is None
    assert parse_rfc3339_ns("2023-11-14T22:13:20.000000005Z") == 1_700_000_000 * SEC + 5
    assert parse_rfc3339_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * SEC
    assert parse_rfc3339_ns(format_time_ns(1_700_000_000 * SEC + 123)) == 1_700_000_000 * SEC + 123


def test_api_config_from_volstream_config() -> None:
    from pathlib import Path

    from svc_api.config import ApiConfig
    from volstream.config import Config

    cfg = Config(
        grpc_port=6000,
        api_stale_ms=2_000,
        api_token="tok",
        venues=("deribit", "okx"),
        currencies=("BTC",),
        namespace="replay.r1",
    )
    api = ApiConfig.from_config(cfg, host="127.0.0.1")
    assert (api.port, api.stale_after_ms, api.token, api.host) == (6000, 2_000, "tok", "127.0.0.1")
    assert api.namespace == "replay.r1"
    assert set(api.venues) == {"deribit", "okx", "bybit", "binance", "all"}
    assert api.expected_surfaces == (("deribit", "BTC"), ("okx", "BTC"), ("all", "BTC"))
    with pytest.raises(ValueError, match="tls_cert/tls_key"):
        ApiConfig(tls_cert=Path("c.pem")).validated()
    with pytest.raises(ValueError, match="health_policy"):
        ApiConfig(health_policy="most").validated()  # type: ignore[arg-type]
