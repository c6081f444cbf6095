"""Dead letters land on dlq.<service>.<venue> with readable reason headers."""

from __future__ import annotations

from nats.aio.client import Client

from volstream.bus.dlq import (
    DLQ_REASON,
    DLQ_SEQ,
    DLQ_SERVICE,
    DLQ_STREAM,
    DLQ_SUBJECT,
    MAX_REASON_CHARS,
    DeadLetters,
    clean_reason,
    venue_of,
)
from volstream.bus.publisher import JetStreamPublisher
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry

from .conftest import make_stream, sample_value


def test_clean_reason_is_one_printable_bounded_line() -> None:
    assert clean_reason("bad\r\nframe\tx") == "bad | frame x"
    assert clean_reason("strike “K” ≠ 5") == "strike \\u201cK\\u201d \\u2260 5"
    long = clean_reason("e" * 5000)
    assert len(long) == MAX_REASON_CHARS and long.endswith("...")
    assert clean_reason("  ") == "unspecified"


def test_venue_of_subjects() -> None:
    assert venue_of("md.deribit.btc.book") == "deribit"
    assert venue_of("replay.r1.iv.okx.eth", "replay.r1") == "okx"
    assert venue_of("weird") == "unknown"


async def test_dead_letters_headers_subject_and_dedupe(nc: Client) -> None:
    subjects = Subjects("ns1")
    await make_stream(nc, "DLQ_NS1", subjects.dlq_all())
    metrics = setup_telemetry("bus-test-dlq", None)
    publisher = JetStreamPublisher(nc)
    dead = DeadLetters(publisher, subjects, "svc_iv", metrics)
    reason = "decode_error: truncated protobuf at byte 17\nwhile reading IvBatch"
    await dead.send(
        "okx", b"\x08\x96", reason, "ns1.md.okx.btc.ticker", stream="MD_NS1", stream_seq=42
    )
    await dead.send(
        "okx", b"\x08\x96", reason, "ns1.md.okx.btc.ticker", stream="MD_NS1", stream_seq=42
    )
    await dead.send_for("ns1.md.bybit.eth.book", b"{}", "unknown instrument BTC-X")
    await dead.flush()
    js = nc.jetstream()
    info = await js.stream_info("DLQ_NS1", subjects_filter=">")
    assert info.state.subjects == {"ns1.dlq.svc_iv.okx": 1, "ns1.dlq.svc_iv.bybit": 1}
    assert publisher.duplicates == 1

    stored = await js.get_last_msg("DLQ_NS1", "ns1.dlq.svc_iv.okx")
    assert stored.data == b"\x08\x96"
    headers = stored.headers or {}
    assert headers[DLQ_REASON] == (
        "decode_error: truncated protobuf at byte 17 | while reading IvBatch"
    )
    assert headers[DLQ_SERVICE] == "svc_iv"
    assert headers[DLQ_SUBJECT] == "ns1.md.okx.btc.ticker"
    assert (headers[DLQ_STREAM], headers[DLQ_SEQ]) == ("MD_NS1", "42")
    assert headers["Nats-Msg-Id"] == "dlq:svc_iv:MD_NS1:42"

    text = metrics.render().decode()
    name, svc = "volstream_dead_letters_total", "bus-test-dlq"
    assert sample_value(text, name, reason="decode_error", service=svc) == 2.0
    assert sample_value(text, name, reason="other", service=svc) == 1.0
    await publisher.close()
