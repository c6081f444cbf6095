"""The surface stage's cuts (svc_surface.service): a key is refitted as soon as a smile batch
brings it something new, at most once per surface_interval_ms of event time, decided by
event times alone; the worker process that holds the state offloaded publishes exactly
what the same stage publishes inline."""

from __future__ import annotations

from pathlib import Path

from replay.compare import WALL_CLOCK_FIELDS, clear_fields
from replay.stages import ReplayEnv
from svc_surface.service import SurfaceStage
from volstream.bus.consumer import AckMetadata, InMessage
from volstream.config import Config
from volstream.subjects import Subjects
from volstream.telemetry import setup_telemetry
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

DATA = Path(__file__).parent / "data"
MS = 1_000_000
SMILES = iv_pb.SmileBatch.FromString((DATA / "sim_deribit_btc_smiles.binpb").read_bytes())
T0 = max(s.header.event_time_ns for s in SMILES.smiles)


def stage(offload: bool = False) -> SurfaceStage:
    cfg = Config(venues=("deribit",), currencies=("BTC",), surface_interval_ms=500)
    env = ReplayEnv(cfg, Subjects(), setup_telemetry("test-surface-stage"))
    return SurfaceStage(env, cfg.owned_partitions(), offload=offload)


def message(seq: int, at_ms: int, smile_step: int | None = None) -> InMessage:
    """A SmileBatch at T0 + at_ms; its smiles are new (moved by a tick, newer times) unless
    ``smile_step`` names an earlier message's, whose smiles it repeats unchanged."""
    step = seq if smile_step is None else smile_step
    batch = iv_pb.SmileBatch(venue="deribit", currency="BTC")
    batch.header.event_time_ns = T0 + at_ms * MS
    batch.header.sequence = seq
    for smile in SMILES.smiles:
        copy = batch.smiles.add()
        copy.CopyFrom(smile)
        copy.header.event_time_ns = smile.header.event_time_ns + step * MS
        copy.header.sequence = smile.header.sequence + step
        for quote in copy.quotes:
            quote.mid_iv += 1e-5 * step
    meta = AckMetadata("IV", "surface-all", 1, seq, seq, 0, 0)
    return InMessage("iv.deribit.btc", batch.SerializeToString(), None, seq, meta)


async def fitted_keys(s: SurfaceStage, msg: InMessage) -> list[str]:
    return [out.subject for out in await s.handle([msg])]


async def test_a_key_is_refitted_at_once_and_then_at_most_once_per_interval() -> None:
    s = stage()
    both = ["surface.deribit.btc", "surface.all.btc"]
    assert await fitted_keys(s, message(1, 0)) == both  # the first smiles: at once
    assert await fitted_keys(s, message(2, 200)) == []  # 200 ms later: throttled
    assert await fitted_keys(s, message(3, 400)) == []
    assert await fitted_keys(s, message(4, 600)) == both  # the first batch past 500 ms


async def test_nothing_new_leaves_the_next_change_free_to_go_out_at_once() -> None:
    s = stage()
    assert len(await fitted_keys(s, message(1, 0))) == 2
    # Past the interval but the same smiles again: no fit, and no cut recorded ...
    assert await fitted_keys(s, message(2, 600, smile_step=1)) == []
    # ... so a change 100 ms later is refitted at once (a fixed cadence would have spent
    # its cut at 600 ms and held this one until 1100 ms).
    assert len(await fitted_keys(s, message(3, 700))) == 2


async def test_the_offloaded_worker_publishes_what_the_inline_stage_does() -> None:
    inline, offloaded = stage(), stage(offload=True)
    try:
        for seq, at_ms in enumerate((0, 300, 600, 900, 1200), start=1):
            msg = message(seq, at_ms)
            a, b = await inline.handle([msg]), await offloaded.handle([msg])
            assert [(o.subject, o.msg_id) for o in a] == [(o.subject, o.msg_id) for o in b]
            for x, y in zip(a, b, strict=True):
                sx, sy = (surface_pb.Surface.FromString(o.payload) for o in (x, y))
                clear_fields(sx, WALL_CLOCK_FIELDS)
                clear_fields(sy, WALL_CLOCK_FIELDS)
                assert sx == sy
                assert sx.revision == sx.header.sequence  # counters continue in the worker
    finally:
        offloaded.close()
