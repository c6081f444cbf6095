"""The SHORT version of the chaos benchmark (bench/chaos.py; the full one runs 5 minutes with
20 stage kills, 3 nats-server kills and 2 stalls of 10 s: ``python -m bench.chaos``).

About 6 s of recorded fixed-seed market data (one venue, one currency), published over 24 s,
flows through the real book, IV and surface processes under ``volstream up``'s supervisor
while each stage is SIGKILLed once, nats-server is SIGKILLed once and one process is stalled
(SIGSTOP/SIGCONT): every message of BOOK, IV and SURFACE must be identical to the fault-free
reference, with no gap and no duplicate, and every fault must be recovered from. No timing
is asserted.
"""

from __future__ import annotations

import pytest

from bench.chaos import OUTPUT_STREAMS, ChaosOptions, report, run_chaos

pytestmark = pytest.mark.slow


async def test_chaos_short_gives_the_fault_free_history() -> None:
    result = await run_chaos(
        ChaosOptions(
            duration_s=24.0,
            service_kills=3,
            nats_kills=1,
            stalls=1,
            stall_s=2.0,
            record_s=6.0,
            venues=("deribit",),
            currencies=("BTC",),
            seed=1,
            drain_timeout_s=120.0,
        )
    )
    text = report(result)
    assert len(result.faults) == 5, text
    assert sorted(f.target for f in result.faults if f.kind == "kill") == [
        "book",
        "iv",
        "surface",
    ], text
    assert result.drained, text
    assert result.recovered == len(result.faults), text
    assert result.md_stored == result.md_records and result.md_duplicates == 0, text
    v = result.verdict
    for stream in OUTPUT_STREAMS:
        assert v.reference[stream] > 0, text
        assert v.identical[stream] == v.reference[stream] == v.stored[stream], text
        assert (v.different[stream], v.gaps[stream], v.duplicates[stream]) == (0, 0, 0), text
    assert result.ok(), text
