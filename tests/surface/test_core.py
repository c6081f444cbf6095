"""SurfaceCore / ConsolidatedSurfaceCore with plain lists of Smile messages."""

from __future__ import annotations

import math
import pickle
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import numpy as np
import pytest

from svc_surface.core import (
    ConsolidatedSurfaceCore,
    SurfaceConfig,
    SurfaceCore,
    _node_blobs,
    run_fit_job,
)
from svc_surface.metrics import PREMIUM_ADJUSTED, node_layout, smile_metrics
from tests.surface.builders import NOW_NS, truth_smiles, truth_surface
from tests.surface.synthetic import NS_PER_DAY, QuoteFaults
from volmath.svi import JwSvi, RawSvi, jw_to_raw
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

DAYS = [1, 2, 3, 7, 14, 21, 30, 60, 90, 180, 365]
LATER = NOW_NS + 1_000_000_000


def raw_of(s: surface_pb.ExpirySlice) -> RawSvi:
    return RawSvi(s.raw.a, s.raw.b, s.raw.rho, s.raw.m, s.raw.sigma)


def fitted_surface(seed: int = 0, **config) -> tuple[surface_pb.Surface, dict[int, RawSvi]]:
    truths = truth_surface(DAYS)
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(**config))
    for smile in truth_smiles(truths, seed=seed, noise_vol=0.003):
        core.on_smile(smile)
    surface = core.fit(LATER)
    assert surface is not None
    return surface, truths


@pytest.mark.parametrize("seed", [0, 1])
def test_atm_and_rr25_recovered_within_half_a_vol_point(seed: int) -> None:
    surface, truths = fitted_surface(seed)
    checked = 0
    for s in surface.slices:
        days = round((s.expiry_time_ns - NOW_NS) / NS_PER_DAY)
        truth = smile_metrics(truths[days], s.time_to_expiry_years)
        if days >= 7:
            assert abs(s.metrics.atm_vol - truth.atm_vol) < 0.005, days
            assert abs(s.metrics.rr25 - truth.rr25) < 0.005, days
            checked += 1
    assert checked == 8


def test_surface_message_is_complete() -> None:
    surface, _ = fitted_surface()
    assert (surface.venue, surface.currency) == ("deribit", "BTC")
    assert surface.model == surface_pb.SURFACE_MODEL_SVI
    # The core fills the payload; the stage kit stamps the header when it publishes.
    assert surface.revision == 1 and not surface.HasField("header")
    assert surface.delta_convention == common_pb.DELTA_CONVENTION_FORWARD
    assert surface.index_price_usd > 0
    assert len(surface.slices) == len(DAYS)
    expiries = [s.expiry_time_ns for s in surface.slices]
    assert expiries == sorted(expiries)
    for s in surface.slices:
        assert s.forward_usd > 0 and s.time_to_expiry_years > 0 and s.expiry_label
        jw = JwSvi(
            s.jw.atm_variance,
            s.jw.atm_skew,
            s.jw.put_wing_slope,
            s.jw.call_wing_slope,
            s.jw.min_variance,
        )
        back = jw_to_raw(jw, s.time_to_expiry_years)
        assert back.a == pytest.approx(s.raw.a, abs=1e-9)
        assert s.metrics.delta_convention == common_pb.DELTA_CONVENTION_FORWARD
        d = s.diagnostics
        assert d.quotes_used + d.quotes_dropped == len(s.quotes)
        assert d.quotes_used >= 6 and d.rmse_bp > 0 and d.max_abs_residual_bp >= d.rmse_bp
        assert d.min_g >= 0 and d.butterfly_arbitrage_free and d.calendar_arbitrage_free
        assert d.fit_time_ms > 0
        used = [q for q in s.quotes if q.used]
        assert sum(q.weight for q in used) == pytest.approx(1.0)
        for q in s.quotes:
            assert q.residual_bp == pytest.approx((q.fitted_iv - q.mid_iv) * 1e4, abs=1e-6)
            if q.fitted_iv < q.bid_iv:
                assert q.position == surface_pb.FIT_POSITION_BELOW_BID
            elif q.fitted_iv > q.ask_iv:
                assert q.position == surface_pb.FIT_POSITION_ABOVE_ASK
            else:
                assert q.position == surface_pb.FIT_POSITION_INSIDE
            assert (q.drop_reason == surface_pb.DROP_REASON_UNSPECIFIED) == q.used
            assert q.venue == "deribit" and q.symbol
        # Both sides are listed: every strike has its ITM twin dropped.
        itm = [q for q in s.quotes if q.drop_reason == surface_pb.DROP_REASON_ITM_DUPLICATE]
        assert len(itm) == len(used)
    assert [t.tenor_days for t in surface.tenors] == [1, 2, 3, 7, 14, 21, 30, 60, 90, 180, 365]
    for t in surface.tenors:
        if not t.available:
            assert not t.nodes
            continue
        assert len(t.nodes) == 19 and t.nodes[9].label == "ATM"
        assert t.metrics.delta_convention == common_pb.DELTA_CONVENTION_FORWARD
        assert t.nodes[9].vol == pytest.approx(t.metrics.atm_vol)
        assert 0.3 < t.metrics.atm_vol < 1.0
    # Every tenor lies within [1 day, 365 days] of listed expiries.
    assert all(t.available for t in surface.tenors)
    assert 0.3 < surface.vol_index_30d < 1.0


def test_refits_only_changed_slices_warm() -> None:
    truths = truth_surface(DAYS)
    # Holding off: the changed smile is a fresh noise draw, which a hold would keep.
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(hold_max_s=0.0))
    for smile in truth_smiles(truths, seed=1):
        core.on_smile(smile)
    first = core.fit(LATER)
    assert first is not None and not any(s.diagnostics.warm_start for s in first.slices)
    assert core.fit(LATER + 1) is None  # nothing changed
    # A new smile for the 30-day expiry only.
    changed = [
        s
        for s in truth_smiles(truths, seed=2, sequence=2)
        if s.expiry_label == first.slices[6].expiry_label
    ]
    changed[0].header.event_time_ns = LATER + 2
    core.on_smile(changed[0])
    second = core.fit(LATER + 3)
    assert second is not None and second.revision == 2
    for a, b in zip(first.slices, second.slices, strict=True):
        if a.expiry_label == changed[0].expiry_label:
            assert b.diagnostics.warm_start
            assert raw_of(a) != raw_of(b)
        else:
            assert raw_of(a) == raw_of(b)
            assert b.diagnostics.fit_time_ms == a.diagnostics.fit_time_ms  # reused
    again = SurfaceCore("deribit", "BTC", SurfaceConfig(publish_unchanged=True))
    for smile in truth_smiles(truths, seed=1):
        again.on_smile(smile)
    assert again.fit(LATER) is not None
    republished = again.fit(LATER + 1)
    assert republished is not None and republished.revision == 2


def shifted(smiles: list[iv_pb.Smile], shift: float, step: int) -> list[iv_pb.Smile]:
    """The smiles with every quote's vols moved by `shift`, `step` ns later."""
    out = []
    for smile in smiles:
        moved = iv_pb.Smile()
        moved.CopyFrom(smile)
        for q in moved.quotes:
            q.bid_iv, q.mid_iv, q.ask_iv = q.bid_iv + shift, q.mid_iv + shift, q.ask_iv + shift
        moved.header.event_time_ns += step
        moved.header.sequence += step
        out.append(moved)
    return out


def refit_shifted(
    core: SurfaceCore, smiles: list[iv_pb.Smile], shift: float, at_ns: int
) -> surface_pb.Surface:
    """The core's surface after the smiles, shifted by `shift` in vol, came in at `at_ns`."""
    for smile in shifted(smiles, shift, at_ns - NOW_NS):
        core.on_smile(smile)
    surface = core.fit(at_ns + 1)
    assert surface is not None
    return surface


def test_a_slice_whose_quotes_stay_within_their_noise_keeps_its_fit() -> None:
    days = [7, 30, 90]
    smiles = truth_smiles(truth_surface(days), seed=3)
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(hold_max_s=5.0))
    for smile in smiles:
        core.on_smile(smile)
    first = core.fit(LATER)
    assert first is not None
    second_s = 1_000_000_000

    revision = partial(refit_shifted, core, smiles)

    # A fit made without a prior (the first one) is refitted: the smoothing averages it.
    second = revision(0.0005, LATER + second_s)
    assert all(raw_of(a) != raw_of(b) for a, b in zip(first.slices, second.slices, strict=True))
    # A tenth of a vol point: well inside every quote's band and the noise of the mean.
    quiet = revision(0.001, LATER + 2 * second_s)
    assert [raw_of(s) for s in quiet.slices] == [raw_of(s) for s in second.slices]
    # The through-fit matrix shows the new quotes all the same.
    assert quiet.slices[0].quotes[0].mid_iv == pytest.approx(
        first.slices[0].quotes[0].mid_iv + 0.001
    )
    # A vol point: beyond the noise, every slice is refitted, and the prior moves with
    # its quotes (quotes.paired_drift), so the fit follows the whole move at once.
    moved = revision(0.01, LATER + 3 * second_s)
    assert all(raw_of(a) != raw_of(b) for a, b in zip(quiet.slices, moved.slices, strict=True))
    for before, after in zip(quiet.slices, moved.slices, strict=True):
        lift = [
            b.fitted_iv - a.fitted_iv
            for a, b in zip(before.quotes, after.quotes, strict=True)
            if a.used
        ]
        assert statistics.median(lift) == pytest.approx(0.009, abs=0.001)
    # Then held within the quotes' noise, until the hold's age runs out.
    settled = revision(0.0102, LATER + 4 * second_s)
    assert [raw_of(s) for s in settled.slices] == [raw_of(s) for s in moved.slices]
    late = revision(0.0105, LATER + 10 * second_s)
    assert all(raw_of(a) != raw_of(b) for a, b in zip(settled.slices, late.slices, strict=True))


def test_a_climb_inside_the_spreads_and_the_makers_skews_breaks_the_hold() -> None:
    """Quotes whose makers' offsets (0.8 vol points each) persist: a 0.25-vol climb of
    every quote is far inside the spreads and hidden in the offsets' scatter about the fit,
    but each quote against itself moved: the slice is refitted, not held (a vol shock)."""
    smiles = truth_smiles(truth_surface([7, 30, 90]), seed=3, noise_vol=0.008)
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(hold_max_s=5.0))
    for smile in smiles:
        core.on_smile(smile)
    assert core.fit(LATER) is not None
    at = LATER + 1_000_000_000

    revision = partial(refit_shifted, core, smiles)

    settled = revision(0.0005, at)
    # A tenth of a vol point, below the drift's floor (Prior.SHIFT_FLOOR): held.
    quiet = revision(0.0015, at + 500_000_000)
    assert [raw_of(s) for s in quiet.slices] == [raw_of(s) for s in settled.slices]
    climbed = revision(0.003, at + 1_000_000_000)
    assert all(raw_of(a) != raw_of(b) for a, b in zip(quiet.slices, climbed.slices, strict=True))


def _settled_core() -> tuple[SurfaceCore, list[iv_pb.Smile], surface_pb.Surface, int]:
    """A core whose last fit was made with a smoothing prior (so it may be held): the
    smiles, that fit and its event time."""
    smiles = truth_smiles(truth_surface([7, 30, 90]), seed=3)
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(hold_max_s=5.0))
    for smile in smiles:
        core.on_smile(smile)
    assert core.fit(LATER) is not None
    at = LATER + 1_000_000_000
    for smile in shifted(smiles, 0.0005, at - NOW_NS):
        core.on_smile(smile)
    settled = core.fit(at + 1)
    assert settled is not None
    return core, smiles, settled, at


def _revise(
    core: SurfaceCore,
    smiles: list[iv_pb.Smile],
    at_ns: int,
    edit: Callable[[iv_pb.SmileQuote], None],
) -> surface_pb.Surface:
    """The smiles as settled, `at_ns`, with `edit` applied to one mid-wing quote of each."""
    for smile in shifted(smiles, 0.0005, at_ns - NOW_NS):
        edit(smile.quotes[len(smile.quotes) // 4])
        core.on_smile(smile)
    surface = core.fit(at_ns + 1)
    assert surface is not None
    return surface


def test_a_quote_that_comes_or_goes_within_the_fit_keeps_it_held() -> None:
    core, smiles, settled, at = _settled_core()
    second_s = 1_000_000_000

    def no_iv(q: iv_pb.SmileQuote) -> None:
        q.bid_iv = math.nan  # the venue's price with no IV (e.g. at the minimum tick)

    gone = _revise(core, smiles, at + second_s, no_iv)
    assert [raw_of(s) for s in gone.slices] == [raw_of(s) for s in settled.slices]
    back = _revise(core, smiles, at + 2 * second_s, lambda q: None)
    assert [raw_of(s) for s in back.slices] == [raw_of(s) for s in settled.slices]


def test_a_new_quote_the_fit_misses_is_refitted() -> None:
    core, smiles, settled, at = _settled_core()
    second_s = 1_000_000_000

    def no_iv(q: iv_pb.SmileQuote) -> None:
        q.bid_iv = math.nan

    _revise(core, smiles, at + second_s, no_iv)

    def back_far_off(q: iv_pb.SmileQuote) -> None:
        spread = q.ask_iv - q.bid_iv
        q.bid_iv, q.mid_iv, q.ask_iv = (
            q.bid_iv + 2 * spread,
            q.mid_iv + 2 * spread,
            q.ask_iv + 2 * spread,
        )

    moved = _revise(core, smiles, at + 2 * second_s, back_far_off)
    assert all(raw_of(a) != raw_of(b) for a, b in zip(settled.slices, moved.slices, strict=True))


@pytest.mark.parametrize(("spreads", "held"), [(0.75, True), (3.0, False)])
def test_one_quote_moving_within_its_spread_is_noise_beyond_it_a_refit(
    spreads: float, held: bool
) -> None:
    core, smiles, settled, at = _settled_core()

    def moved(q: iv_pb.SmileQuote) -> None:
        d = spreads * (q.ask_iv - q.bid_iv)
        q.bid_iv, q.mid_iv, q.ask_iv = q.bid_iv + d, q.mid_iv + d, q.ask_iv + d

    after = _revise(core, smiles, at + 1_000_000_000, moved)
    same = [raw_of(a) == raw_of(b) for a, b in zip(settled.slices, after.slices, strict=True)]
    assert same == [held] * len(same)


def test_tenor_nodes_encoded_at_once_equal_nodes_added_one_by_one() -> None:
    labels = tuple(label for label, _ in node_layout())
    deltas = np.array([d for _, d in node_layout()])
    rng = np.random.default_rng(5)
    vols, strikes = rng.uniform(0.2, 1.5, (3, len(labels))), rng.uniform(1e3, 1e5, (3, len(labels)))
    vols[1, 4], strikes[2, 0] = math.nan, 0.0
    for row, blob in enumerate(_node_blobs(labels, deltas, vols, strikes)):
        merged, added = surface_pb.TenorPoint(), surface_pb.TenorPoint()
        merged.MergeFromString(blob)
        for label, delta, vol, strike in zip(labels, deltas, vols[row], strikes[row], strict=True):
            added.nodes.add(label=label, delta=delta, vol=vol, strike_usd=strike)
        assert merged.SerializeToString() == added.SerializeToString()


def test_expired_slices_are_dropped() -> None:
    truths = truth_surface([1, 7, 30])
    core = SurfaceCore("deribit", "BTC")
    for smile in truth_smiles(truths):
        core.on_smile(smile)
    after_first_expiry = NOW_NS + NS_PER_DAY + 1
    # Fresh smiles for the live expiries (the old ones would age out otherwise).
    for smile in truth_smiles(truths, now_ns=after_first_expiry - 1_000, seed=3)[1:]:
        core.on_smile(smile)
    surface = core.fit(after_first_expiry)
    assert surface is not None
    assert len(surface.slices) == 2
    assert all(s.expiry_time_ns > after_first_expiry for s in surface.slices)
    # Live expiries are ~6 and ~29 days out: tenors outside are marked, not extrapolated.
    available = {t.tenor_days: t.available for t in surface.tenors}
    assert [d for d, ok in available.items() if ok] == [7, 14, 21]


def test_slices_with_too_few_quotes_are_skipped() -> None:
    truths = truth_surface([7, 30])
    smiles = truth_smiles(truths)
    smiles[0] = truth_smiles({7: truths[7]}, n_strikes=4)[0]
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(min_quotes_per_slice=6))
    for smile in smiles:
        core.on_smile(smile)
    surface = core.fit(LATER)
    assert surface is not None and len(surface.slices) == 1
    assert len(core.last_skipped) == 1 and "usable quotes" in core.last_skipped[0].reason


def test_foreign_and_malformed_smiles_never_raise() -> None:
    truths = truth_surface([7])
    core = SurfaceCore("deribit", "BTC")
    other_venue = truth_smiles(truths, venue="okx")[0]
    other_ccy = truth_smiles(truths)[0]
    other_ccy.currency = "ETH"
    no_forward = truth_smiles(truths)[0]
    no_forward.forward_usd = math.nan
    for smile in (other_venue, other_ccy):
        core.on_smile(smile)
    assert core.rejected == {"wrong venue": 1, "wrong currency": 1}
    assert core.fit(LATER) is None
    core.on_smile(no_forward)
    assert core.fit(LATER) is None
    assert core.last_skipped[0].reason == "no forward"


def test_outlier_quote_is_dropped_and_reported() -> None:
    truths = truth_surface([30])
    smiles = truth_smiles(truths, noise_vol=0.001, faults=QuoteFaults(outlier=0.08), seed=5)
    core = SurfaceCore("deribit", "BTC")
    core.on_smile(smiles[0])
    surface = core.fit(LATER)
    assert surface is not None
    reasons = [q.drop_reason for q in surface.slices[0].quotes]
    assert surface_pb.DROP_REASON_OUTLIER in reasons
    assert surface.slices[0].diagnostics.rmse_bp < 50


def test_ssvi_model() -> None:
    surface, truths = fitted_surface(model=surface_pb.SURFACE_MODEL_SSVI)
    assert surface.model == surface_pb.SURFACE_MODEL_SSVI
    assert len(surface.slices) == len(DAYS)
    for s in surface.slices:
        d = s.diagnostics
        assert d.butterfly_arbitrage_free and d.calendar_arbitrage_free and not d.repaired
        days = round((s.expiry_time_ns - NOW_NS) / NS_PER_DAY)
        truth = smile_metrics(truths[days], s.time_to_expiry_years)
        assert abs(s.metrics.atm_vol - truth.atm_vol) < 0.03


def test_premium_adjusted_convention() -> None:
    surface, _ = fitted_surface(delta_convention=PREMIUM_ADJUSTED)
    assert surface.delta_convention == PREMIUM_ADJUSTED
    for s in surface.slices:
        assert s.metrics.delta_convention == PREMIUM_ADJUSTED
        expected = smile_metrics(raw_of(s), s.time_to_expiry_years, PREMIUM_ADJUSTED)
        assert s.metrics.rr25 == pytest.approx(expected.rr25, abs=1e-12)
    assert all(
        t.metrics.delta_convention == PREMIUM_ADJUSTED for t in surface.tenors if t.available
    )


def test_consolidated_surface_across_venues() -> None:
    days = [7, 30, 90]
    truths = truth_surface(days)
    core = ConsolidatedSurfaceCore("BTC")
    # OKX quotes a 1% higher forward; each quote's k is taken against its own forward.
    for smile in truth_smiles(truths, venue="deribit", seed=1) + truth_smiles(
        truths, venue="okx", seed=2, forward_scale=1.01, n_strikes=15
    ):
        core.on_smile(smile)
    surface = core.fit(LATER)
    assert surface is not None and surface.venue == "all"
    weights = {w.venue: w for w in surface.venue_weights}
    assert set(weights) == {"deribit", "okx"}
    assert sum(w.weight for w in weights.values()) == pytest.approx(1.0)
    assert weights["deribit"].weight > weights["okx"].weight > 0.1
    assert weights["deribit"].quotes_used == 3 * 30 and weights["okx"].quotes_used == 3 * 15
    for s in surface.slices:
        days_ = round((s.expiry_time_ns - NOW_NS) / NS_PER_DAY)
        truth = smile_metrics(truths[days_], s.time_to_expiry_years)
        assert abs(s.metrics.atm_vol - truth.atm_vol) < 0.005
        okx = [q for q in s.quotes if q.venue == "okx"]
        assert okx and all(
            q.log_moneyness == pytest.approx(math.log(q.strike_usd / (s.forward_usd)), abs=0.02)
            for q in okx
        )
    single = SurfaceCore("deribit", "BTC")
    single.on_smile(truth_smiles(truths, venue="okx")[0])
    assert single.rejected == {"wrong venue": 1}


def test_fit_job_runs_in_a_worker_process() -> None:
    truths = truth_surface([7, 30, 90])
    core = SurfaceCore("deribit", "BTC")
    for smile in truth_smiles(truths):
        core.on_smile(smile)
    job = core.prepare(LATER)
    assert job is not None
    job_copy = pickle.loads(pickle.dumps(job))
    with ProcessPoolExecutor(max_workers=1) as pool:
        result = pool.submit(run_fit_job, job_copy).result(timeout=60)
    local = run_fit_job(job)
    surface = core.apply(result)
    assert surface is not None and surface.revision == 1
    assert local.surface is not None
    assert [raw_of(s) for s in surface.slices] == [raw_of(s) for s in local.surface.slices]
    # The worker's warm-start state came back with it.
    assert core.prepare(LATER + 1) is None
    smile = truth_smiles(truths, seed=4, sequence=2)[0]
    smile.header.event_time_ns = LATER + 2
    core.on_smile(smile)
    job2 = core.prepare(LATER + 3)
    assert job2 is not None
    cached = job2.slices[1].cache
    assert cached is not None
    np.testing.assert_array_equal(np.array(cached.fit.params), np.array(raw_of(surface.slices[1])))


def test_smiles_arriving_during_a_fit_are_not_lost() -> None:
    truths = truth_surface([7, 30])
    core = SurfaceCore("deribit", "BTC")
    for smile in truth_smiles(truths):
        core.on_smile(smile)
    job = core.prepare(LATER)
    assert job is not None
    late = truth_smiles(truths, seed=9, sequence=2)[1]
    late.header.event_time_ns = LATER + 5
    core.on_smile(late)  # while the job runs elsewhere
    assert core.apply(run_fit_job(job)) is not None
    follow_up = core.prepare(LATER + 10)
    assert follow_up is not None
    assert follow_up.slices[1].smiles[0].event_time_ns == LATER + 5


def test_a_smile_ageing_out_republishes_without_it() -> None:
    truths = truth_surface([7, 30])
    core = SurfaceCore("deribit", "BTC", SurfaceConfig(max_smile_age_ns=10_000_000_000))
    for smile in truth_smiles(truths):
        core.on_smile(smile)
    first = core.fit(LATER)
    assert first is not None and len(first.slices) == 2
    fresh = truth_smiles(truths, now_ns=NOW_NS + 8_000_000_000, seed=4, sequence=2)[0]
    core.on_smile(fresh)
    later = core.fit(NOW_NS + 12_000_000_000)  # the 30-day smile is now 12 s old
    assert later is not None and len(later.slices) == 1
    assert later.slices[0].expiry_time_ns == first.slices[0].expiry_time_ns
    assert core.fit(NOW_NS + 13_000_000_000) is None  # nothing changed since
