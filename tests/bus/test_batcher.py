"""Batcher: size and time triggers, serial flushes, errors reported not swallowed."""

from __future__ import annotations

import asyncio
import time

import pytest

from volstream.bus.batcher import Batcher

from .conftest import wait_until


class Sink:
    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.flushed: list[tuple[str, list[int], float]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.running = 0
        self.max_running = 0

    async def __call__(self, key: str, items: list[int]) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if key == self.fail_on:
                raise RuntimeError(f"sink refused {key}")
            self.flushed.append((key, items, time.monotonic()))
        finally:
            self.running -= 1


async def test_size_trigger_flushes_exactly_max_items_per_key() -> None:
    sink = Sink()
    batcher: Batcher[int] = Batcher(sink, max_items=3, max_delay_s=10.0)
    for i in range(7):
        await batcher.add("a", i)
    await batcher.add("b", 100)
    assert [(k, items) for k, items, _ in sink.flushed] == [("a", [0, 1, 2]), ("a", [3, 4, 5])]
    assert batcher.pending_items == 2
    await batcher.close()
    assert [(k, items) for k, items, _ in sink.flushed][2:] == [("a", [6]), ("b", [100])]
    with pytest.raises(RuntimeError):
        await batcher.add("a", 1)


async def test_time_trigger_flushes_after_max_delay_from_first_item() -> None:
    max_delay_s = 0.4
    sink = Sink()
    batcher: Batcher[int] = Batcher(sink, max_items=1000, max_delay_s=max_delay_s)
    first_at = time.monotonic()
    await batcher.add("a", 1)
    # Blocks the loop on purpose (the timer cannot fire meanwhile), so "a" holds both items
    # whatever the machine's speed.
    time.sleep(max_delay_s / 2)  # noqa: ASYNC251
    second_at = time.monotonic()
    await batcher.add("a", 2)  # does not extend the deadline
    await batcher.add("b", 3)
    await wait_until(lambda: len(sink.flushed) >= 2, timeout_s=25 * max_delay_s)
    (key_a, items_a, at_a), (key_b, items_b, at_b) = sink.flushed
    assert (key_a, items_a, key_b, items_b) == ("a", [1, 2], "b", [3])
    # Never before max_delay_s from a key's first item (exact: the timer re-reads the clock)...
    assert at_a >= first_at + max_delay_s
    assert at_b >= second_at + max_delay_s
    # ... and counted from the first item: "a" flushes before the deadline its second item
    # would have set (the slack for scheduling is the gap between the two, max_delay_s / 2).
    assert at_a < second_at + max_delay_s
    assert at_b >= at_a
    # The timer is one task for every key, not one per item.
    timers = [t for t in asyncio.all_tasks() if t.get_name() == "volstream-batcher-timer"]
    assert len(timers) == 1
    await batcher.close()


async def test_flushes_run_serially_and_back_pressure_adders() -> None:
    sink = Sink(delay_s=0.02)
    batcher: Batcher[int] = Batcher(sink, max_items=2, max_delay_s=0.01)

    async def producer(key: str) -> None:
        for i in range(6):
            await batcher.add(key, i)

    await asyncio.gather(producer("a"), producer("b"), producer("c"))
    await batcher.flush_all()
    assert sink.max_running == 1
    per_key = {k: [x for kk, items, _ in sink.flushed if kk == k for x in items] for k in "abc"}
    assert per_key == {k: list(range(6)) for k in "abc"}
    await batcher.close()


async def test_failed_timed_flush_is_reported_with_its_items() -> None:
    sink = Sink(fail_on="bad")
    reported: list[tuple[str, list[int], str]] = []
    batcher: Batcher[int] = Batcher(
        sink,
        max_items=100,
        max_delay_s=0.01,
        on_error=lambda key, items, exc: reported.append((key, items, str(exc))),
    )
    await batcher.add("bad", 1)
    await batcher.add("good", 2)
    await wait_until(lambda: bool(reported and sink.flushed))
    assert reported == [("bad", [1], "sink refused bad")]
    assert [(k, items) for k, items, _ in sink.flushed] == [("good", [2])]
    assert batcher.errors == 1
    # A size-triggered flush raises to the caller instead.
    sized: Batcher[int] = Batcher(sink, max_items=1, max_delay_s=1.0)
    with pytest.raises(RuntimeError, match="sink refused"):
        await sized.add("bad", 9)
    await sized.close()
    await batcher.close()
