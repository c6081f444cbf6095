"""The stage kit's pure parts: the partition clock, header stamping, subject matching and the
in-process bus that runs stages without NATS (replay, equivalence checks)."""

from __future__ import annotations

import pytest

from volstream.bus.dlq import DLQ_REASON
from volstream.bus.inprocess import InProcessBus, LocalStage, Published
from volstream.bus.stage import (
    InMessage,
    Output,
    PartitionClock,
    StageInput,
    dead_letter_output,
    output_msg_id,
    stamp_header,
)
from volstream.subjects import Subjects, subject_matches
from volstream.v1 import common_pb2 as common_pb

S = 1_000_000_000


def test_clock_moves_forward_only_and_cuts_on_its_cadence() -> None:
    clock = PartitionClock(interval_ns=2 * S)
    assert not clock.due()  # no time yet
    assert clock.observe(10 * S) == 10 * S
    assert clock.observe(9 * S) == 10 * S  # late input never moves now back
    assert clock.due()  # the first cut is due at once
    assert not clock.due()
    clock.observe(11 * S)
    assert not clock.due()
    clock.observe(12 * S)
    assert clock.due() and clock.last_cut_ns == 12 * S


def test_clock_as_a_throttle_cuts_only_when_told() -> None:
    """ready() asks without recording; cut() records: a stretch with nothing to publish
    leaves the next change free to go out at once."""
    clock = PartitionClock(interval_ns=2 * S)
    assert not clock.ready()  # no time yet
    clock.observe(10 * S)
    assert clock.ready() and clock.ready()  # asking records nothing
    clock.cut()
    clock.observe(11 * S)
    assert not clock.ready()  # within the minimum interval
    clock.observe(15 * S)  # nothing was cut at 12 s: ready, and stays so until a cut
    assert clock.ready()
    clock.cut()
    assert clock.last_cut_ns == 15 * S and not clock.ready()


def test_stamp_header_owns_every_field_and_counts_per_partition() -> None:
    clock = PartitionClock(interval_ns=S, sequence=41)  # continued after a restart
    clock.observe(5 * S)
    first = stamp_header(common_pb.EventHeader(), "svc_x", clock)
    second = stamp_header(common_pb.EventHeader(), "svc_x", clock)
    assert (first.source, first.event_time_ns, first.sequence) == ("svc_x", 5 * S, 42)
    assert second.sequence == 43
    assert first.publish_time_ns > 0  # the wall-clock stamp, and the only one


@pytest.mark.parametrize(
    ("pattern", "subject", "matches"),
    [
        ("md.*.*.book", "md.deribit.btc.book", True),
        ("md.*.*.book", "md.deribit.btc.ticker", False),
        ("book.>", "book.okx.eth.keyframe", True),
        ("book.>", "book", False),
        ("book.okx.eth", "book.okx.eth.keyframe", False),
        ("iv.okx.eth", "iv.okx.eth", True),
    ],
)
def test_subject_matching_follows_nats(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


class Doubler:
    """A stage: a.<n> -> b.<n> with the number doubled; 'bad' is dead-lettered; every input
    also asks something of another service over core NATS."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        outputs = []
        for msg in batch:
            self.seen.append((msg.subject, msg.stream_seq))
            if msg.data == b"bad":
                outputs.append(dead_letter_output(Subjects(), "doubler", msg, "not a number"))
                continue
            out = f"b.{msg.subject.split('.')[1]}"
            doubled = str(2 * int(msg.data)).encode()
            outputs.append(Output(out, doubled, output_msg_id("d", out, msg)))
            outputs.append(Output("ctl.x.y", b"", "", jetstream=False))
        return outputs


class Collector:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, int]] = []

    async def handle(self, batch: list[InMessage]) -> list[Output]:
        self.got.extend((m.subject, m.data, m.stream_seq) for m in batch)
        return []


async def test_in_process_bus_routes_by_stream_and_filter_in_publish_order() -> None:
    doubler, collector = Doubler(), Collector()
    stored: list[Published] = []
    bus = InProcessBus(
        [
            LocalStage("double", [StageInput("A", "d", ["a.*"])], doubler),
            LocalStage("collect", [StageInput("B", "c", ["b.1", "b.3"])], collector),
        ],
        lambda subject: {"a": "A", "b": "B"}.get(subject.split(".")[0]),
        on_publish=stored.append,
    )
    await bus.publish_many([("a.1", b"5"), ("a.2", b"bad"), ("a.3", b"7"), ("z.9", b"1")])
    assert doubler.seen == [("a.1", 1), ("a.2", 2), ("a.3", 3)]
    # b.1 and b.3 are numbered as JetStream numbers stream B; the filter leaves b.2 out.
    assert collector.got == [("b.1", b"10", 1), ("b.3", b"14", 2)]
    assert [(m.stream, m.stream_seq, m.subject) for m in stored] == [
        ("A", 1, "a.1"),
        ("B", 1, "b.1"),
        ("A", 2, "a.2"),
        ("A", 3, "a.3"),
        ("B", 2, "b.3"),
    ]
    assert [d.headers[DLQ_REASON] for d in bus.dead_letters if d.headers] == ["not a number"]
    # z.9 is on no stream; the doubler's two core-NATS requests are counted, not stored.
    assert bus.control_messages == 3
