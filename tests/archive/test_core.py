"""The archiver's pure core with plain lists: rows per table, exactly once by sequence,
files rolled by size and by age, and the resume point."""

from __future__ import annotations

import pytest

from svc_archive.core import ArchiveCore, ArchiveSettings, NotArchivable
from tests.archive.surfaces import DAY_NS, T0_NS, surface, without_quotes
from volstream.archive import (
    NODES,
    SURFACES,
    TENORS,
    PartitionKey,
    read_rows,
    surface_from_rows,
    to_arrow,
)

S = 1_000_000_000


def core(roll_rows: int = 1_000_000, roll_age_s: float = 60.0) -> ArchiveCore:
    return ArchiveCore(ArchiveSettings(roll_rows=roll_rows, roll_age_ns=int(roll_age_s * S)))


def test_one_row_per_revision_and_expiry_and_tables_for_tenors_and_nodes() -> None:
    c = core()
    added = c.add(surface(1, expiries=3, tenors=(7, 30)).SerializeToString(), 11, T0_NS, 0)
    assert added.rows == 3 + 2 + 6 and not added.flushes
    flushes = {f.key.table: f for f in c.drain()}
    assert set(flushes) == {SURFACES, TENORS, NODES}
    rows = flushes[SURFACES].columns
    assert rows["revision"] == [1, 1, 1] and rows["stream_seq"] == [11, 11, 11]
    assert rows["expiry_label"] == ["2026-03-18", "2026-03-19", "2026-03-20"]
    assert rows["calendar_arbitrage_free"] == [True, False, True]
    assert flushes[NODES].columns["label"] == ["25P", "ATM", "25C"] * 2
    assert flushes[SURFACES].key == PartitionKey(SURFACES, "2026-03-11", "deribit", "BTC")


def test_the_rows_give_back_the_published_surface_without_its_quotes() -> None:
    for venue in ("deribit", "all"):
        published = surface(5, venue=venue)
        c = core()
        c.add(published.SerializeToString(), 7, T0_NS, 0)
        tables = {f.key.table: read_rows(to_arrow(f.key.table, f.columns)) for f in c.drain()}
        back = surface_from_rows(venue, "BTC", tables[SURFACES], tables[TENORS], tables[NODES])
        assert back == without_quotes(published)


def test_a_surface_without_expiries_keeps_its_revision_in_one_row() -> None:
    c = core()
    c.add(surface(2, expiries=0, tenors=()).SerializeToString(), 3, T0_NS, 0)
    (flush,) = c.drain()
    assert flush.key.table == SURFACES and flush.columns["revision"] == [2]
    assert flush.columns["expiry_time"] == [None]


def test_a_surface_at_or_below_a_partitions_high_water_is_skipped() -> None:
    c = core()
    for seq in (1, 2, 3):
        c.add(surface(seq).SerializeToString(), seq, T0_NS, 0)
    redelivered = c.add(surface(2).SerializeToString(), 2, T0_NS, 0)
    assert redelivered.rows == 0 and redelivered.skipped == 3 + 2 + 6
    (flush, *_) = c.drain()
    assert flush.first_seq == 1 and flush.last_seq == 3
    # After a restart: the high water read back from the files decides.
    key = PartitionKey(SURFACES, "2026-03-11", "deribit", "BTC")
    restarted = ArchiveCore(ArchiveSettings(), {key: 3}, durable_through=1)
    again = restarted.add(surface(3).SerializeToString(), 3, T0_NS, 0)
    assert again.skipped == 3 and again.rows == 2 + 6  # its tenors and nodes were not on disk
    assert restarted.add(surface(4).SerializeToString(), 4, T0_NS, 0).rows == 3 + 2 + 6


def test_files_roll_by_rows_and_by_age() -> None:
    c = core(roll_rows=6, roll_age_s=10)
    assert not c.add(surface(1, tenors=()).SerializeToString(), 1, T0_NS, 0).flushes
    rolled = c.add(surface(2, tenors=()).SerializeToString(), 2, T0_NS, 1 * S).flushes
    assert [(f.first_seq, f.last_seq, f.rows) for f in rolled] == [(1, 2, 6)]
    c.add(surface(3, tenors=()).SerializeToString(), 3, T0_NS, 2 * S)
    assert c.due(11 * S) == []
    (aged,) = c.due(12 * S)
    assert (aged.first_seq, aged.last_seq) == (3, 3)


def test_durable_through_stops_below_the_oldest_buffered_surface() -> None:
    c = core(roll_rows=3, roll_age_s=10)  # every deribit surface fills its own file
    c.add(surface(1, tenors=()).SerializeToString(), 1, T0_NS, 0)
    c.add(surface(1, venue="okx", expiries=1, tenors=()).SerializeToString(), 2, T0_NS, 0)
    c.add(surface(2, tenors=()).SerializeToString(), 3, T0_NS, 0)
    assert c.durable_through == 1  # okx's surface (seq 2) waits in memory
    c.drain()
    assert c.durable_through == 3


def test_partitions_follow_the_event_date() -> None:
    c = core()
    c.add(surface(1, event_time_ns=T0_NS).SerializeToString(), 1, T0_NS, 0)
    c.add(surface(2, event_time_ns=T0_NS + DAY_NS).SerializeToString(), 2, T0_NS, 0)
    dates = {f.key.date for f in c.drain() if f.key.table == SURFACES}
    assert dates == {"2026-03-11", "2026-03-12"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff", "not a Surface"),
        (surface(1, venue="").SerializeToString(), "without venue"),
        (surface(1, event_time_ns=0).SerializeToString(), "without an event time"),
    ],
)
def test_what_cannot_be_archived_says_why(payload: bytes, reason: str) -> None:
    c = core()
    with pytest.raises(NotArchivable, match=reason):
        c.add(payload, 1, T0_NS, 0)
    assert c.drain() == [] and c.durable_through == 0
