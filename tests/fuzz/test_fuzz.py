"""The fuzzing campaign's regression side (bench/fuzz.py): every input kept in
tests/fixtures/fuzz/corpus/ (each one found a crash before its fix) is replayed, and every
target runs a short, derandomized campaign, so a change that brings a crash back fails here.

The long campaign is ``python -m bench.fuzz`` (100,000 inputs per target)."""

from __future__ import annotations

import asyncio
import math
import random
import warnings
from pathlib import Path

import pytest

from bench import fuzz
from svc_book.service import BookStage, stage_inputs
from svc_connector.venues.binance.parse import parse_frame as binance_parse_frame
from svc_connector.venues.okx.parse import parse_frame as okx_parse_frame
from svc_connector.venues.okx.parse import parse_instruments as okx_parse_instruments
from svc_surface.core import SurfaceCore
from tests.bus.conftest import sample_value
from tests.connector.hot_path import frame_view
from volstream.bus.connection import connect
from volstream.bus.consumer import AckMetadata, InMessage
from volstream.bus.dlq import DLQ_REASON, DLQ_SUBJECT
from volstream.bus.embedded import EmbeddedNats
from volstream.bus.stage import StageRunner
from volstream.bus.streams import StreamLimits, default_stream_specs, ensure_streams
from volstream.telemetry import reason_kind, setup_telemetry
from volstream.v1 import iv_pb2 as iv_pb

TARGETS = fuzz.all_targets()
CORPUS = sorted(fuzz.corpus())

# Inputs per target in the suite: well under a second each on a quiet 2-core machine (a
# surface fit costs ~0.1 s and an input may fit several times, hence its few).
SHORT_RUN = {name: 100 for name in TARGETS} | {
    "deribit.rest": 40,
    "okx.rest": 40,
    "okx.hot": 50,
    "binance.hot": 50,
    "book.decode": 40,
    "iv.decode": 60,
    "surface.decode": 40,
    "surface.fit": 3,
}


@pytest.fixture(autouse=True)
def _quiet_numpy() -> None:
    warnings.filterwarnings("ignore", category=RuntimeWarning)


def test_every_target_has_seeds_and_a_short_run() -> None:
    assert set(SHORT_RUN) == set(TARGETS)
    for venue in fuzz.VENUES:
        assert len(fuzz.venue_frames(venue)) >= 20, venue
        assert f"{venue}.parse" in TARGETS and f"{venue}.hot" in TARGETS
    for stage in fuzz.STAGES:
        assert len(fuzz.stage_seeds(stage)) >= 20, stage


def test_the_corpus_holds_inputs_for_the_fixed_crashes() -> None:
    names = {target for _path, target, _example in CORPUS}
    assert len(CORPUS) >= 10
    assert {"okx.hot", "surface.fit"} <= names


@pytest.mark.parametrize(
    ("path", "target", "example"), CORPUS, ids=[f"{t}/{p.stem}" for p, t, _ in CORPUS]
)
def test_corpus_input_is_handled_without_a_crash(
    path: Path, target: str, example: fuzz.Example
) -> None:
    verdict = fuzz.verdict_of(TARGETS[target], example)
    assert verdict.kind != "crash", f"{path.name}: {verdict.detail}"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_short_derandomized_campaign_finds_no_crash(name: str) -> None:
    tally = fuzz.campaign(TARGETS[name], SHORT_RUN[name], derandomize=True)
    assert tally.tried >= SHORT_RUN[name] // 2  # hypothesis may stop early, never at 0
    assert not tally.crashes, dict(tally.crashes)
    # Mutations reach both sides: clean rejects and inputs that go through.
    assert tally.rejects and tally.ok, (tally.ok, dict(tally.rejects))


# ---- one regression test per fix ------------------------------------------------------------


def _ticker_frame(timestamp: str) -> bytes:
    return (
        b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.BTC-24SEP21-'
        b'8000-P.raw","data":{"instrument_name":"BTC-24SEP21-8000-P","timestamp":'
        + timestamp.encode()
        + b',"mark_price":0.01,"underlying_price":40000.0}}}'
    )


@pytest.mark.parametrize("timestamp", ["1626993724337000", "-1626993724337000", "9223372036855"])
def test_a_timestamp_beyond_int64_nanoseconds_is_a_reasoned_dead_letter(timestamp: str) -> None:
    """Before: protobuf refused the int64 (ValueError) and the safety net dead-lettered the
    frame as an internal parse error (a bug)."""
    session = fuzz.new_session("deribit")
    for hot in (True, False):
        session.hot_path = hot
        result = session.on_frame(_ticker_frame(timestamp), fuzz.RECEIVE_NS)
        assert not result.events
        [letter] = result.dead_letters
        assert letter.reason.startswith("timestamp out of range"), letter.reason


def test_the_same_timestamp_inside_the_range_is_an_event() -> None:
    result = fuzz.new_session("deribit").on_frame(_ticker_frame("1626993724337"), 0)
    assert [e.kind for e in result.events] == ["ticker"]


def test_a_sequence_beyond_int64_is_a_reasoned_dead_letter() -> None:
    frame = (
        b'{"u":123456789012345678901234,"pu":1,"s":"BTC-251219-89000-C","b":[["1","1"]],'
        b'"a":[],"e":"depthUpdate","E":1765983420778,"T":1765983420778}'
    )
    result = binance_parse_frame(b'{"stream":"btc@depth","data":' + frame + b"}", fuzz.RECEIVE_NS)
    assert result.dead_letters
    assert not any(d.reason.startswith("internal") for d in result.dead_letters)


@pytest.mark.parametrize("text", ["1\u00b9", "\u00b2"])
def test_a_digit_string_int_refuses_is_a_reasoned_dead_letter(text: str) -> None:
    """Before: str.isdigit() took superscripts, then int() raised inside the parser."""
    from svc_connector.kit.fields import FieldError, req_integer

    with pytest.raises(FieldError):
        req_integer({"u": text}, "u", "where")


def test_an_entry_nested_too_deep_to_re_encode_is_dead_lettered_alone() -> None:
    """Before: orjson reads 1024 levels but writes 255, and the dead letter's re-encoding of
    the entry raised inside the parser's error path."""
    deep = "[" * 600 + "1" + "]" * 600
    body = (
        '{"code":"0","data":[' + deep + ',{"instType":"OPTION","instId":"BTC-USD-220527-30000-C"}]}'
    ).encode()
    result = okx_parse_instruments(body, 0)
    assert result.dead_letters
    assert result.dead_letters[0].raw.startswith(b"<entry not re-encodable")
    assert not any(d.reason.startswith("internal") for d in result.dead_letters)


def test_okx_checksum_beyond_int32_is_a_reasoned_dead_letter() -> None:
    frame = (
        b'{"arg":{"channel":"books","instId":"BTC-USD-220527"},"action":"update","data":[{"asks":'
        b'[["30238.8","2","0","1"]],"bids":[],"ts":"1652437412345","checksum":4294967296}]}'
    )
    [letter] = okx_parse_frame(frame, 0).dead_letters
    assert "'checksum' out of the int32 range" in letter.reason


@pytest.mark.parametrize(
    "edit",
    [
        b'"instType":1' + b"0" * 400 + b",",  # orjson: a number beyond a double
        b'"instType":"\xff",',  # invalid UTF-8
        b'"instType":"\\ud800",',  # a lone surrogate escape
    ],
)
def test_okx_hot_path_leaves_frames_orjson_refuses_to_the_checked_path(edit: bytes) -> None:
    """Before: the hot path skipped the unread field and published what the checked path
    dead-letters."""
    seeds = [f for f in fuzz.venue_frames("okx") if b'"opt-summary"' in f and b'"instType":' in f]
    frame = seeds[0].replace(b'"instType":', edit + b'"instTyp2":', 1)
    checked, hot = fuzz.new_session("okx"), fuzz.new_session("okx")
    checked.hot_path = False
    want = frame_view(checked.on_frame(frame, fuzz.RECEIVE_NS))
    assert want["dead_letters"] and not want["events"]
    assert frame_view(hot.on_frame(frame, fuzz.RECEIVE_NS)) == want
    assert hot.hot_hits == 0


def _seed_smile() -> iv_pb.Smile:
    for subject, payload in fuzz.stage_seeds("surface"):
        for smile in iv_pb.SmileBatch.FromString(payload).smiles:
            if len(smile.quotes) >= 5 and subject.startswith("iv.deribit"):
                return smile
    raise AssertionError("no deribit smile in the seeds")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("forward_usd", -1.0, "forward not positive and finite"),
        ("forward_usd", math.inf, "forward not positive and finite"),
        ("time_to_expiry_years", 0.0, "time to expiry out of range"),
        ("time_to_expiry_years", 4.8e-292, "time to expiry out of range"),
        ("index_price_usd", -math.inf, "index price negative or infinite"),
        ("strike_usd", -5.0, "strike not positive"),
        ("bid_iv", math.inf, "infinite quote value"),
        ("ask_iv", -0.5, "negative price or IV"),
    ],
)
def test_a_smile_the_fit_cannot_use_is_rejected_with_its_reason(
    field: str, value: float, reason: str
) -> None:
    """Before: such smiles reached the fit and raised from its maths (math domain error in
    metrics, "SVI fit needs positive weights", NaN in the refit)."""
    smile = _seed_smile()
    setattr(
        smile.quotes[0] if field in iv_pb.SmileQuote.DESCRIPTOR.fields_by_name else smile,
        field,
        value,
    )
    core = SurfaceCore("deribit", smile.currency)
    assert core.on_smile(smile) == reason
    assert core.rejected == {reason: 1}


def test_the_surface_stage_dead_letters_a_message_with_an_unusable_smile() -> None:
    smile = _seed_smile()
    smile.forward_usd = -1.0
    batch = iv_pb.SmileBatch(venue="deribit", currency=smile.currency, smiles=[smile])
    batch.header.event_time_ns = smile.header.event_time_ns
    example = ((f"iv.deribit.{smile.currency.lower()}", batch.SerializeToString()),)
    verdict = fuzz.verdict_of(TARGETS["surface.fit"], example)
    assert verdict.kind == "reject" and "forward not positive" in verdict.detail


# ---- the real runtime: a reject is stored in the DLQ with its reason and counted ---------------


async def test_rejects_reach_the_dlq_stream_with_their_reason_and_the_metric(
    nats_server: EmbeddedNats,
) -> None:
    """Mutated MarketDataBatch inputs through the real book stage on a real nats-server: each
    reject is a stored dead letter (payload kept, reason in its header) and is counted in
    volstream_dead_letters_total."""
    env = fuzz.stage_env()
    subjects = env.subjects
    admin = await connect(nats_server.url, "fuzz-admin")
    await ensure_streams(admin.jetstream(), default_stream_specs(subjects, StreamLimits.compact()))
    partitions = env.cfg.owned_partitions()
    generate = fuzz.stage_generator("book")
    rejected: list[tuple[str, bytes, str]] = []
    n = 0
    while len(rejected) < 5:
        n += 1
        subject, payload = generate(random.Random(n))[0]
        if not subject.endswith(".book"):
            continue
        msg = InMessage(subject, payload, None, 1, AckMetadata("MD", "probe", 1, 1, 1, 0, 0))
        outputs = await BookStage(env, partitions).handle([msg])
        letters = [o for o in outputs if o.headers and DLQ_REASON in o.headers]
        if letters:
            rejected.append((subject, payload, letters[0].headers[DLQ_REASON]))  # type: ignore[index]
    for subject, payload, _ in rejected:
        await admin.jetstream().publish(subject, payload)
    metrics = setup_telemetry("fuzz-book-dlq", None)
    nc = await connect(nats_server.url, "fuzz-book")
    stage = BookStage(env, partitions)
    runner = StageRunner(nc, "book", subjects, stage_inputs(env, partitions), stage, metrics)
    await runner.start()
    dlq = subjects.stream_name("DLQ")
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while (await admin.jetstream().stream_info(dlq)).state.messages < len(rejected):
            assert asyncio.get_running_loop().time() < deadline, "dead letters not stored"
            await asyncio.sleep(0.05)
    finally:
        await runner.stop()
        await nc.close()
    stored = []
    for seq in range(1, len(rejected) + 1):
        letter = await admin.jetstream().get_msg(dlq, seq)
        assert letter.headers is not None
        stored.append((letter.headers[DLQ_SUBJECT], letter.data, letter.headers[DLQ_REASON]))
    await admin.close()
    assert [(s, p) for s, p, _ in stored] == [(s, p) for s, p, _ in rejected]
    assert all(reason for _, _, reason in stored)
    text = metrics.render().decode()
    counted = [
        sample_value(text, "volstream_dead_letters_total", reason=kind, service="fuzz-book-dlq")
        for kind in {reason_kind(r) for _, _, r in stored}
    ]
    total = sum(value or 0.0 for value in counted)
    assert total == len(rejected)
