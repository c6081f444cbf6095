"""The pure surface core for one (venue, currency) partition, and the consolidated variant.

    core = SurfaceCore("deribit", "BTC")
    core.on_smile(smile)              # latest smile per expiry wins
    surface = core.fit(now_ns)        # None when there is nothing (new) to publish

fit() = prepare() + run_fit_job() + apply(): the runtime may run the CPU-heavy middle step
in a worker process (FitJob and FitJobResult are plain picklable data, run_fit_job is a
top-level pure function), keeping the event loop free:

    job = core.prepare(now_ns)
    if job is not None:
        result = await loop.run_in_executor(pool, run_fit_job, job)
        surface = core.apply(result)

Nothing here reads the wall clock except to measure fit time; "now" is the caller's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from svc_surface import arbitrage, metrics, refit, repair
from svc_surface.fit import (
    FitConfig,
    SliceData,
    SviFitResult,
    WingCaps,
    fit_svi_slices,
    wing_slopes,
)
from svc_surface.quotes import (
    _NUMERIC_FIELDS,
    Anchor,
    BoolArray,
    Prior,
    QuoteConfig,
    SelectedQuotes,
    SmileColumns,
    flag_outliers,
    paired_drift,
    select_quotes_many,
    suspect_fit,
    t_threshold,
    trim_worst,
)
from svc_surface.ssvi import SsviParams, fit_ssvi_surface
from svc_surface.wire import encode_quote_fits
from volmath.svi import RawSvi, implied_vol, raw_to_jw, total_variance, total_variance_rows
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb
from volstream.wire import varint

Array = NDArray[np.float64]
NS_PER_YEAR = 365 * 86_400 * 1_000_000_000
CONSOLIDATED_VENUE = "all"


@dataclass(frozen=True)
class SurfaceConfig:
    """Fitter configuration (the publication cadence is the caller's)."""

    # surface_pb.SURFACE_MODEL_SVI (independent slices + repair) or SURFACE_MODEL_SSVI.
    model: int = surface_pb.SURFACE_MODEL_SVI
    ssvi_phi: Literal["power_law", "heston"] = "power_law"
    # Convention of every delta-based figure (slice and tenor metrics, nodes).
    delta_convention: int = common_pb.DELTA_CONVENTION_FORWARD
    # Slices with fewer usable quotes are skipped (not published).
    min_quotes_per_slice: int = 6
    tenor_days: tuple[int, ...] = metrics.DEFAULT_TENOR_DAYS
    vol_index_days: float = 30.0
    # Smiles older than this (event time) are ignored (a silent venue ages out); None: never.
    max_smile_age_ns: int | None = 300 * 1_000_000_000
    # fit() returns None when no smile changed since the last publication, unless True.
    publish_unchanged: bool = False
    # Drop outliers after a first fit and refit.
    drop_outliers: bool = True
    # Temporal smoothing (SVI model): each refit is pulled toward the slice's last fit
    # (kept inside every quote's band), so the fit is an exponentially weighted average of
    # snapshot fits with this half life (quotes.Prior). 0 turns it off.
    smoothing_half_life_s: float = 20.0
    # A slice whose quotes did not move beyond their noise since its last refit keeps that
    # fit (no quote's bid or ask moved by more than its half spread against the fit, and
    # their weighted mean, over all quotes, the puts or the calls, by less than hold_z
    # standard errors; nor do the mids sit off the fit as a whole beyond their scatter),
    # for at most hold_max_s of event time, and not when that fit had no smoothing prior
    # or was provisional (docs/quant.md section 6). 0 turns holding off: every changed
    # slice is refitted.
    hold_max_s: float = 5.0
    hold_z: float = 2.0
    # Settling after a fast forward move: for settle_s of event time after a smile's
    # forward moved by more than fast_forward_bp since the venue's previous smile of that
    # expiry, the slice's fits are provisional: published, never held, and not taken as
    # the next fit's prior (docs/quant.md section 6). Makers requote a jump over a few
    # hundred milliseconds, and a fit on half-requoted quotes made the prior would carry
    # their error for a half life. 0 turns settling off.
    settle_s: float = 1.0
    fast_forward_bp: float = 10.0
    # Butterfly/calendar check range in log-moneyness.
    check_k_range: tuple[float, float] = arbitrage.K_CHECK_RANGE
    # Consolidated surface: weight multiplier per venue (default 1).
    venue_weight_multipliers: tuple[tuple[str, float], ...] = ()
    fit: FitConfig = field(default_factory=FitConfig)
    quotes: QuoteConfig = field(default_factory=QuoteConfig)


@dataclass(frozen=True)
class QuoteMatrix:
    """A slice's encoded through-fit matrix for given published params (reusable while
    neither the quotes nor the params change)."""

    params: RawSvi
    blob: bytes
    quotes_used: int
    quotes_dropped: int
    rmse_bp: float
    max_abs_residual_bp: float
    # (venue, normalised weight, quotes used) per venue.
    venue_shares: tuple[tuple[str, float, int], ...]


SmileKey = tuple[str, int, int]  # venue, event time, sequence


@dataclass(frozen=True)
class CappedFit:
    """A fit under calendar caps on its wing slopes (_order_wings): the caps it settled
    on, the first estimate they started from (its ratio to the settled caps corrects the
    next revision's first estimate) and the fit."""

    caps: WingCaps
    first: WingCaps
    fit: SviFitResult
    # The fingerprint of the selection it was fitted to.
    fingerprint: bytes = b""


@dataclass(frozen=True)
class SliceCache:
    """What a slice's last fit left behind: its inputs' identity and fingerprint, the
    selection, the fit and the encoded quote matrix."""

    fingerprint: bytes
    selected: SelectedQuotes
    fit: SviFitResult
    smile_keys: tuple[SmileKey, ...] = ()
    matrix: QuoteMatrix | None = None
    # The published params when an arbitrage repair or wing caps changed the fit: the
    # next repair of this slice starts from them.
    repaired: RawSvi | None = None
    # (venue, symbol) of quotes no arbitrage-free slice reached (dropped after the repair): while
    # they stay that far from the published slice, the next fit leaves them out at once.
    repair_outliers: frozenset[tuple[str, str]] = frozenset()
    # The prior of the next fit (temporal smoothing): the fit (before repair), its T,
    # when it was last refitted and the information (sum of quote weights, prior
    # included) behind it.
    prior: RawSvi | None = None
    prior_t: float = math.nan
    prior_ns: int = 0
    prior_info: float = 0.0
    # The fit the quotes were last in line with: the prior's drift is measured against
    # it (quotes.paired_drift).
    anchor: Anchor | None = None
    # The slice's last fit under calendar caps on its wings (this revision's, or an
    # earlier one's while the crossing comes and goes): the next revision fits under
    # those caps too, in the free-fit batch, and starts its cap estimate from them.
    capped: CappedFit | None = None
    # The selection `fit` was made on and the fingerprint of its inputs (an earlier
    # revision's while the slice is held): a hold is judged against them.
    fitted_to: SelectedQuotes | None = None
    fit_fingerprint: bytes = b""
    # The smoothing prior's weight in that fit (0: none, a first fit or one after a reset).
    fit_prior_weight: float = 0.0
    # The fit was made while the slice was settling after a fast forward move: the prior
    # above is an earlier, settled fit, and this one is never held.
    provisional: bool = False


@dataclass(frozen=True)
class SliceJob:
    expiry_time_ns: int
    expiry_label: str
    t: float
    forward: float
    forward_source: int
    smiles: tuple[SmileColumns, ...]
    cache: SliceCache | None
    # Within settle_s of a fast forward move (SurfaceConfig.settle_s).
    settling: bool = False


@dataclass(frozen=True)
class FitJob:
    venue: str
    currency: str
    now_ns: int
    config: SurfaceConfig
    slices: tuple[SliceJob, ...]
    index_price: float
    ssvi_warm: SsviParams | None
    # Identity of the input smiles: (venue, expiry, event time, sequence) per smile.
    inputs: tuple[tuple[str, int, int, int], ...] = ()


@dataclass(frozen=True)
class SkippedSlice:
    expiry_time_ns: int
    reason: str


@dataclass(frozen=True)
class FitJobResult:
    now_ns: int
    inputs: tuple[tuple[str, int, int, int], ...]
    # None when no slice could be published.
    surface: surface_pb.Surface | None
    caches: Mapping[int, SliceCache]
    ssvi: SsviParams | None
    skipped: tuple[SkippedSlice, ...]
    fit_time_ms: float


def _slice_time(smile: iv_pb.Smile, now_ns: int) -> float:
    """The smile's own T (its IVs were solved with it); from the expiry and the smile's
    time, or failing that now, when the smile carries none."""
    t = smile.time_to_expiry_years
    if math.isfinite(t) and t > 0.0:
        return float(t)
    at = smile.header.event_time_ns if smile.header.event_time_ns > 0 else now_ns
    return (smile.expiry_time_ns - at) / NS_PER_YEAR


class SurfaceCore:
    """Smile state per expiry for one (venue, currency); fits and publishes surfaces."""

    def __init__(self, venue: str, currency: str, config: SurfaceConfig | None = None) -> None:
        self.venue = venue
        self.currency = currency
        self.config = config or SurfaceConfig()
        self.revision = 0
        # (venue, expiry) -> latest smile, and its quotes as columns (the fit's input).
        self._smiles: dict[tuple[str, int], iv_pb.Smile] = {}
        self._columns: dict[tuple[str, int], SmileColumns] = {}
        # (venue, expiry) -> event time of the latest fast forward move (settle_s).
        self._fast_move_ns: dict[tuple[str, int], int] = {}
        self._caches: dict[int, SliceCache] = {}
        self._ssvi: SsviParams | None = None
        # Inputs of the last applied job: publication is skipped while they are unchanged.
        self._applied_inputs: tuple[tuple[str, int, int, int], ...] | None = None
        self.rejected: dict[str, int] = {}
        self.last_skipped: tuple[SkippedSlice, ...] = ()

    # -- input ---------------------------------------------------------------------------
    def _accepts_venue(self, venue: str) -> bool:
        return venue == self.venue

    def _reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def on_smile(self, smile: iv_pb.Smile, columns: SmileColumns | None = None) -> str | None:
        """Keep the latest smile per expiry (by event time). Foreign or malformed smiles are
        counted in `rejected` by reason, never raised; a smile with values the fit cannot
        use returns that reason (the stage dead-letters its message). ``columns``: the
        smile's SmileColumns.of when the caller has them (the stage reads each smile once
        for its venue's core and the consolidated one)."""
        if smile.currency != self.currency:
            self._reject("wrong currency")
            return None
        if not self._accepts_venue(smile.venue):
            self._reject("wrong venue")
            return None
        if smile.expiry_time_ns <= 0:
            self._reject("no expiry")
            return "no expiry"
        key = (smile.venue, smile.expiry_time_ns)
        old = self._smiles.get(key)
        if old is not None and old.header.event_time_ns > smile.header.event_time_ns:
            self._reject("out of order")
            return None
        if columns is None:
            columns = SmileColumns.of(smile)
        invalid = invalid_smile(smile, columns)
        if invalid is not None:
            self._reject(invalid)
            return invalid
        if old is not None and _moved_fast(old.forward_usd, smile.forward_usd, self.config):
            self._fast_move_ns[key] = smile.header.event_time_ns
        self._smiles[key] = smile
        self._columns[key] = columns
        return None

    # -- fit -----------------------------------------------------------------------------
    def _live_smiles(self, now_ns: int) -> dict[int, list[iv_pb.Smile]]:
        """Drop expired smiles (and aged-out ones from the fit); group by expiry."""
        expired = [key for key in self._smiles if key[1] <= now_ns]
        for key in expired:
            del self._smiles[key]
            del self._columns[key]
            self._fast_move_ns.pop(key, None)
            self._caches.pop(key[1], None)
        max_age = self.config.max_smile_age_ns
        groups: dict[int, list[iv_pb.Smile]] = {}
        for (_, expiry), smile in sorted(self._smiles.items()):
            if max_age is not None and now_ns - smile.header.event_time_ns > max_age:
                continue
            groups.setdefault(expiry, []).append(smile)
        return groups

    def _slice_job(self, expiry: int, smiles: list[iv_pb.Smile], now_ns: int) -> SliceJob:
        latest = max(smiles, key=lambda s: s.header.event_time_ns)
        return SliceJob(
            expiry_time_ns=expiry,
            expiry_label=latest.expiry_label,
            t=_slice_time(latest, now_ns),
            forward=latest.forward_usd,
            forward_source=int(latest.forward_source),
            smiles=tuple(self._columns[(s.venue, expiry)] for s in smiles),
            cache=self._caches.get(expiry),
            settling=self._settling(expiry, smiles, now_ns),
        )

    def _settling(self, expiry: int, smiles: list[iv_pb.Smile], now_ns: int) -> bool:
        settle_ns = self.config.settle_s * 1e9
        return any(
            now_ns - self._fast_move_ns.get((s.venue, expiry), -(2**62)) < settle_ns for s in smiles
        )

    def prepare(self, now_ns: int) -> FitJob | None:
        """The fit job for `now_ns`, or None when nothing changed since the last
        publication (and publish_unchanged is off) or there is no smile."""
        groups = self._live_smiles(now_ns)
        if not groups:
            return None
        # A new smile, an expiry or a smile ageing out all change this key.
        inputs = tuple(
            (s.venue, expiry, s.header.event_time_ns, s.header.sequence)
            for expiry, group in sorted(groups.items())
            for s in group
        )
        if inputs == self._applied_inputs and not self.config.publish_unchanged:
            return None
        index_prices = [
            s.index_price_usd
            for group in groups.values()
            for s in group
            if math.isfinite(s.index_price_usd) and s.index_price_usd > 0.0
        ]
        latest_all = max(
            (s for group in groups.values() for s in group), key=lambda s: s.header.event_time_ns
        )
        index_price = (
            latest_all.index_price_usd
            if math.isfinite(latest_all.index_price_usd) and latest_all.index_price_usd > 0.0
            else (index_prices[-1] if index_prices else math.nan)
        )
        return FitJob(
            venue=self.venue,
            currency=self.currency,
            now_ns=now_ns,
            config=self.config,
            slices=tuple(self._slice_job(e, g, now_ns) for e, g in sorted(groups.items())),
            index_price=index_price,
            ssvi_warm=self._ssvi,
            inputs=inputs,
        )

    def apply(self, result: FitJobResult) -> surface_pb.Surface | None:
        """Take a finished job's warm-start state; stamp and return the surface.

        Jobs of one partition must be applied in the order they were prepared (one in
        flight at a time is simplest); smiles that arrived meanwhile are picked up by
        the next prepare().
        """
        self._caches.update(result.caches)
        live = {expiry for _, expiry in self._smiles}
        for expiry in [e for e in self._caches if e not in live]:
            del self._caches[expiry]
        if result.ssvi is not None:
            self._ssvi = result.ssvi
        self.last_skipped = result.skipped
        self._applied_inputs = result.inputs
        if result.surface is None:
            return None
        self.revision += 1
        surface = result.surface
        surface.revision = self.revision
        return surface

    def fit(self, now_ns: int) -> surface_pb.Surface | None:
        """Refit the slices whose inputs changed (warm-started), repair arbitrage across
        slices, compute the views; None if nothing to publish."""
        job = self.prepare(now_ns)
        if job is None:
            return None
        return self.apply(run_fit_job(job))


class ConsolidatedSurfaceCore(SurfaceCore):
    """Cross-venue surface (venue "all"): each expiry fits the quotes of every venue that
    lists it, each quote's log-moneyness taken against its own venue's forward."""

    def __init__(self, currency: str, config: SurfaceConfig | None = None) -> None:
        super().__init__(CONSOLIDATED_VENUE, currency, config)

    def _accepts_venue(self, venue: str) -> bool:
        return bool(venue) and venue != CONSOLIDATED_VENUE

    def _slice_job(self, expiry: int, smiles: list[iv_pb.Smile], now_ns: int) -> SliceJob:
        job = super()._slice_job(expiry, smiles, now_ns)
        # Forward of the combined slice: quote-count-weighted geometric mean of the venues'.
        fwd = [(s.forward_usd, max(len(s.quotes), 1)) for s in smiles if s.forward_usd > 0.0]
        if not fwd:
            return job
        total = sum(n for _, n in fwd)
        forward = math.exp(sum(n * math.log(f) for f, n in fwd) / total)
        return SliceJob(
            expiry_time_ns=job.expiry_time_ns,
            expiry_label=job.expiry_label,
            t=job.t,
            forward=forward,
            forward_source=job.forward_source,
            smiles=job.smiles,
            cache=job.cache,
            settling=job.settling,
        )


# ---------------------------------------------------------------------------------------
# The pure fit job (runs anywhere, e.g. in a worker process).


def _moved_fast(before: float, after: float, cfg: SurfaceConfig) -> bool:
    """The forward moved by more than fast_forward_bp between two smiles."""
    if cfg.settle_s <= 0.0 or not (before > 0.0 and after > 0.0):
        return False
    return abs(math.log(after / before)) > cfg.fast_forward_bp * 1e-4


def _smile_keys(smiles: Sequence[SmileColumns]) -> tuple[SmileKey, ...]:
    return tuple((s.venue, s.event_time_ns, s.sequence) for s in smiles)


@dataclass
class _Working:
    job: SliceJob
    selected: SelectedQuotes
    fingerprint: bytes
    fit: SviFitResult | None = None
    # reused: the same inputs as last time; held: new quotes within their noise of the
    # ones `fit` was made on. Either way `fit` is an earlier revision's.
    reused: bool = False
    held: bool = False
    smile_keys: tuple[SmileKey, ...] = ()
    repair_outliers: frozenset[tuple[str, str]] = frozenset()
    prior: Prior | None = None
    # The fit under calendar caps on its wings (None: the fit needs none); `fit` stays
    # the free fit (warm start and smoothing prior, like a repair it is not fed back).
    capped: CappedFit | None = None
    # The fit of the selection under last revision's caps, done with the free fits.
    speculative: tuple[SelectedQuotes, SviFitResult] | None = None
    # slice_data() of (selected, prior) as last computed: the fit and the repair both need it.
    _data: tuple[SelectedQuotes, Prior | None, SliceData] | None = None

    def data(self, exclude: BoolArray | None = None) -> SliceData:
        if exclude is not None:
            return self.selected.slice_data(exclude, self.prior)
        if (
            self._data is None
            or self._data[0] is not self.selected
            or self._data[1] is not self.prior
        ):
            self._data = (self.selected, self.prior, self.selected.slice_data(None, self.prior))
        return self._data[2]

    def fitted_to(self) -> SelectedQuotes:
        """The selection `fit` was made on."""
        cache = self.job.cache
        if (self.reused or self.held) and cache is not None and cache.fitted_to is not None:
            return cache.fitted_to
        return self.selected

    def fit_fingerprint(self) -> bytes:
        """The fingerprint of the inputs `fit` was made on."""
        cache = self.job.cache
        if (self.reused or self.held) and cache is not None and cache.fit_fingerprint:
            return cache.fit_fingerprint
        return self.fingerprint

    def calibrated(self) -> SviFitResult | None:
        """The fit to publish (before any repair): the capped one when capped."""
        return self.capped.fit if self.capped is not None else self.fit

    def information(self) -> float:
        """Sum of the used quotes' weights (inverse variances)."""
        return float(self.selected.weight[self.selected.used].sum())

    def posterior_information(self) -> float:
        """Information behind this fit: its quotes plus the prior's share."""
        weight = self.prior.weight if self.prior is not None else 0.0
        return self.information() * (1.0 + weight)


def _prior(w: _Working, now_ns: int, half_life_s: float) -> Prior | None:
    """The last fit as a prior, weighted by its age and by the information behind it
    against the current quotes', carried along the quotes' drift since the anchor
    (quotes.paired_drift) (None: no smoothing)."""
    cache = w.job.cache
    if half_life_s <= 0.0 or cache is None or cache.prior is None:
        return None
    info_now = w.information()
    decay = Prior.decay((now_ns - cache.prior_ns) / 1e9, half_life_s)
    if decay <= 0.0 or info_now <= 0.0:
        return None
    weight = min(decay * cache.prior_info / info_now, Prior.MAX_WEIGHT)
    if weight <= 0.0:
        return None
    sel = w.selected
    prior = Prior(cache.prior, cache.prior_t, weight)
    anchor = cache.anchor
    if anchor is not None and now_ns - anchor.ns <= Prior.ANCHOR_MAX_S * 1e9:
        level = paired_drift(prior, anchor, sel)
        if level is not None:
            prior = replace(prior, level=level, anchored=level == 0.0)
    u = sel.used
    if prior.outside_share(sel.k[u], sel.bid_iv[u], sel.ask_iv[u], sel.weight[u]) > (
        Prior.RESET_OUTSIDE_SHARE
    ):
        return None
    if prior.behind_move(sel.k[u], sel.mid_iv[u], sel.bid_iv[u], sel.ask_iv[u], sel.weight[u]):
        # Behind a move inside the bands: a soft reset (Prior.RESET_WEIGHT).
        return replace(prior, weight=min(weight, Prior.RESET_WEIGHT), reset=True, anchored=False)
    return prior


def _select(job: FitJob) -> tuple[list[_Working], list[SkippedSlice]]:
    cfg = job.config
    skipped: list[SkippedSlice] = []
    candidates: list[tuple[SliceJob, list[SmileColumns]]] = []
    work_reused: list[_Working] = []
    for sj in job.slices:
        if not (math.isfinite(sj.t) and sj.t > 0.0):
            skipped.append(SkippedSlice(sj.expiry_time_ns, "no time to expiry"))
            continue
        if not (math.isfinite(sj.forward) and sj.forward > 0.0):
            skipped.append(SkippedSlice(sj.expiry_time_ns, "no forward"))
            continue
        usable = [s for s in sj.smiles if math.isfinite(s.forward_usd) and s.forward_usd > 0.0]
        keys = _smile_keys(usable)
        if sj.cache is not None and sj.cache.smile_keys == keys:
            # Same smiles as last time: their selection (outliers included) still holds.
            work_reused.append(
                _Working(
                    sj,
                    sj.cache.selected,
                    sj.cache.fingerprint,
                    smile_keys=keys,
                    repair_outliers=sj.cache.repair_outliers,
                )
            )
            continue
        candidates.append((sj, usable))
    selections = select_quotes_many(
        [usable for _, usable in candidates],
        [sj.t for sj, _ in candidates],
        job.now_ns,
        cfg.quotes,
        dict(cfg.venue_weight_multipliers),
    )
    work: list[_Working] = work_reused
    minimum = max(cfg.min_quotes_per_slice, 5)
    for (sj, usable), selected in zip(candidates, selections, strict=True):
        if selected.n_used < minimum:
            skipped.append(
                SkippedSlice(sj.expiry_time_ns, f"{selected.n_used} usable quotes < {minimum}")
            )
            continue
        work.append(_Working(sj, selected, selected.fingerprint(), smile_keys=_smile_keys(usable)))
    return work, skipped


def _combine(prev: SviFitResult | None, f: SviFitResult) -> SviFitResult:
    """Final fit with the first fit's warm flag and the time spent over all passes."""
    if prev is None:
        return f
    return SviFitResult(
        params=f.params,
        t=f.t,
        fitted_vol=f.fitted_vol,
        residuals_bp=f.residuals_bp,
        rmse_bp=f.rmse_bp,
        max_abs_residual_bp=f.max_abs_residual_bp,
        objective=f.objective,
        fit_time_ms=f.fit_time_ms + prev.fit_time_ms,
        warm_start=prev.warm_start,
        iterations=f.iterations + prev.iterations,
    )


def _fit_svi(work: list[_Working], cfg: SurfaceConfig, now_ns: int) -> None:
    """Fit changed slices (warm), then drop outliers: slices whose first fit looks pulled
    by bad quotes get a trimmed refit first, so outliers are judged against a fit they
    did not distort; slices that lost quotes are refitted."""
    changed: list[_Working] = []
    for w in work:
        cache = w.job.cache
        if cache is not None and cache.fingerprint == w.fingerprint:
            w.selected, w.fit, w.reused = cache.selected, cache.fit, True
            w.repair_outliers = cache.repair_outliers
        else:
            changed.append(w)
    todo: list[_Working] = []
    for w, held in zip(changed, _held_selections(changed, cfg, now_ns), strict=True):
        cache = w.job.cache
        if cache is not None and held is not None:
            w.selected, w.fit, w.held = held, cache.fit, True
            w.repair_outliers = cache.repair_outliers
        else:
            todo.append(w)
    if not todo:
        return
    if cfg.drop_outliers:
        for w in todo:
            _drop_known_repair_outliers(w, cfg)
    for w in todo:
        w.prior = _prior(w, now_ns, cfg.smoothing_half_life_s)
    warm = [w.job.cache.fit.params if w.job.cache is not None else None for w in todo]
    # Slices capped last time are fitted under those caps too, in the same batch (rows
    # cost little next to passes): _order_wings takes that fit when the caps still hold.
    again_capped = [w for w in todo if w.job.cache is not None and w.job.cache.capped is not None]
    last = [w.job.cache.capped for w in again_capped if w.job.cache is not None]
    fits = fit_svi_slices(
        [w.data() for w in todo + again_capped],
        warm + [c.fit.params for c in last if c is not None],
        cfg.fit,
        [None] * len(todo) + [c.caps for c in last if c is not None],
    )
    for w, f in zip(again_capped, fits[len(todo) :], strict=True):
        w.speculative = (w.selected, f)
    fits = fits[: len(todo)]
    for w, f in zip(todo, fits, strict=True):
        w.fit = f
    if not cfg.drop_outliers:
        return
    reference = {id(w): f.fitted_vol for w, f in zip(todo, fits, strict=True)}
    suspects = [
        w
        for w, f in zip(todo, fits, strict=True)
        if suspect_fit(w.selected, f.fitted_vol, cfg.quotes)
    ]
    if suspects:
        trims = [
            trim_worst(w.selected, w.fit.fitted_vol, cfg.min_quotes_per_slice, cfg.quotes)
            for w in suspects
            if w.fit is not None
        ]
        trimmed_data = [w.data(exclude=t) for w, t in zip(suspects, trims, strict=True)]
        trimmed = fit_svi_slices(
            trimmed_data, [w.fit.params if w.fit is not None else None for w in suspects], cfg.fit
        )
        for w, f in zip(suspects, trimmed, strict=True):
            k_used = w.selected.k[w.selected.used]
            reference[id(w)] = implied_vol(f.params, k_used, w.selected.t)
            w.fit = _combine(w.fit, f)
    again: list[_Working] = []
    for w in todo:
        flags = flag_outliers(w.selected, reference[id(w)], cfg.min_quotes_per_slice, cfg.quotes)
        if np.any(flags):
            w.selected = w.selected.drop_outliers(flags)
            again.append(w)
        elif w in suspects:
            again.append(w)  # its current fit saw the trimmed set only
    if again:
        refits = fit_svi_slices(
            [w.data() for w in again],
            [w.fit.params if w.fit is not None else None for w in again],
            cfg.fit,
        )
        for w, f in zip(again, refits, strict=True):
            w.fit = _combine(w.fit, f)


class _HoldCandidate(NamedTuple):
    ref: SelectedQuotes  # the selection the held fit was made on
    new: SelectedQuotes
    params: RawSvi
    dropped: BoolArray  # the quotes ref left out as outliers
    fresh: BoolArray  # quotes used now that the held fit did not see


def _max_changed(n_used: int) -> int:
    """How many quotes may come or go while a slice is held: a few at the edges of a
    selection flicker on every venue (a far wing's price at the minimum tick with no IV,
    the at-the-money strike's call and put swapping as the forward crosses it)."""
    return max(_HOLD_MIN_CHANGED, int(_HOLD_CHANGED_SHARE * n_used))


_HOLD_MIN_CHANGED = 2
_HOLD_CHANGED_SHARE = 0.2
# The share of a held slice's weight its quotes past their half spread may carry.
_HOLD_LOUD_SHARE = 0.1


def _hold_candidate(w: _Working, cfg: SurfaceConfig, now_ns: int) -> _HoldCandidate | None:
    """The slice may be held: a fit not older than hold_max_s, and the same quotes as that
    fit's but for a few that came or went (_max_changed)."""
    cache = w.job.cache
    if cfg.hold_max_s <= 0.0 or cache is None or cache.fitted_to is None:
        return None
    if now_ns - cache.prior_ns > cfg.hold_max_s * 1e9:
        return None  # the smoothing keeps averaging: refit now and then
    if cfg.smoothing_half_life_s > 0.0 and not cache.fit_prior_weight > 0.0:
        return None  # a first fit or one after a reset: the next refit averages it
    if w.job.settling or cache.provisional:
        return None  # quotes still following a fast forward move, or a fit made on them
    ref, new = cache.fitted_to, w.selected
    if new.symbol != ref.symbol or new.venue != ref.venue:
        return None
    dropped = ref.drop_reason == surface_pb.DROP_REASON_OUTLIER
    seen = ref.used | dropped
    changed = int(np.count_nonzero(new.used != seen))
    if changed > _max_changed(int(np.count_nonzero(seen))) or not (new.used & seen).any():
        return None
    return _HoldCandidate(ref, new, cache.fit.params, dropped, new.used & ~seen)


def _held_selections(
    ws: Sequence[_Working], cfg: SurfaceConfig, now_ns: int
) -> list[SelectedQuotes | None]:
    """Per slice: its selection, with the outliers its last fit left out, when its quotes
    did not move beyond their noise since that fit (which is then kept); None when the
    slice must be refitted (docs/quant.md section 6). Moves are measured against the fit
    (each quote's bid, ask and mid minus the fitted vol at its own k and T), so a forward
    move that carries the quotes along the smile is no move; a quote's noise is its half
    spread. A quote that came in since counts as quiet when the fit passes inside its
    bid/ask band, and it is left out of the mean moves; one that went adds nothing. Nor is
    a slice held when its mids sit off the fit as a whole beyond their own scatter (the
    batched form of quotes.mean_shift_is_real, at hold_z). The arithmetic runs once over
    every candidate slice's quotes."""
    out: list[SelectedQuotes | None] = [None] * len(ws)
    found = [(i, c) for i, w in enumerate(ws) if (c := _hold_candidate(w, cfg, now_ns)) is not None]
    if not found:
        return out
    # The quotes left out as outliers count too: one that moved may be back in line.
    used = [c.new.used for _, c in found]
    sizes = [int(np.count_nonzero(u)) for u in used]
    starts = np.cumsum([0, *sizes[:-1]])

    def column(get: Callable[[SelectedQuotes], Array], new: bool) -> Array:
        """One field of the used quotes of every candidate, new or as last fitted."""
        return np.concatenate(
            [get(c.new if new else c.ref)[u] for (_, c), u in zip(found, used, strict=True)]
        )

    p = np.repeat(np.array([tuple(c.params) for _, c in found]).reshape(-1, 5), sizes, axis=0)
    k_ref, k_new = column(lambda q: q.k, False), column(lambda q: q.k, True)
    t_ref = np.repeat(np.array([c.ref.t for _, c in found]), sizes)
    t_new = np.repeat(np.array([c.new.t for _, c in found]), sizes)
    fresh = np.concatenate([c.fresh[u] for (_, c), u in zip(found, used, strict=True)])
    seen = ~fresh
    bid_new, ask_new = column(lambda q: q.bid_iv, True), column(lambda q: q.ask_iv, True)
    with np.errstate(invalid="ignore"):
        fit_new = np.sqrt(total_variance_rows(p, k_new) / t_new)
        fit_move = fit_new - np.sqrt(total_variance_rows(p, k_ref) / t_ref)
        half = 0.5 * (column(lambda q: q.ask_iv, False) - column(lambda q: q.bid_iv, False))
        moved_bid = bid_new - column(lambda q: q.bid_iv, False) - fit_move
        moved_ask = ask_new - column(lambda q: q.ask_iv, False) - fit_move
        # NaN anywhere fails the comparisons: refit.
        inside = (bid_new <= fit_new) & (fit_new <= ask_new)
        moved = np.maximum(np.abs(moved_bid), np.abs(moved_ask))
        quiet = np.where(fresh, inside, moved <= half)
        # Beyond its whole spread (or a new quote the fit misses): never noise.
        wild = np.where(fresh, ~inside, ~(moved <= 2.0 * half))
        half = np.where(seen, half, 0.0)
    moved_mid = column(lambda q: q.mid_iv, True) - column(lambda q: q.mid_iv, False) - fit_move
    moved_mid = np.where(seen, moved_mid, 0.0)
    # The weighted mean move of the mids over all quotes, the puts and the calls.
    weight_now = column(lambda q: q.weight, True)
    weight = np.where(seen, column(lambda q: q.weight, False), 0.0)
    on_put = weight * (k_new < 0.0)
    sides = np.stack((weight, on_put, weight - on_put))
    # How far the mids sit off the held fit now, weighted as in the fit.
    gap = np.where(weight_now > 0.0, column(lambda q: q.mid_iv, True) - fit_new, 0.0)
    w2 = weight_now * weight_now
    sums = np.add.reduceat(
        np.concatenate(
            (
                sides,
                sides * moved_mid,
                sides * sides * (half * half),
                np.stack((wild, weight_now * ~quiet, weight_now)),
                np.stack((weight_now * gap, w2, w2 * gap, w2 * gap * gap, weight_now > 0.0)),
                sides * sides,
                sides * sides * moved_mid,
                sides * sides * (moved_mid * moved_mid),
                sides > 0.0,
            )
        ),
        starts,
        axis=1,
    )
    total, shift, noise2 = sums[:3], np.abs(sums[3:6]), sums[6:9]
    n_wild, loud_weight, weight_sum = sums[9], sums[10], sums[11]
    within = (shift <= cfg.hold_z * np.sqrt(noise2)) | (total <= 0.0)
    # The mids sit off the held fit as a whole, beyond their own scatter: the fit lags
    # them (a vol shock's steady climb, each step well inside the spreads, or a fit the
    # prior held back). The smoothing reset's test (quotes.mean_shift_is_real) at hold_z,
    # with its floor.
    together = _mean_shifts_are_real(
        weight_sum, sums[12], sums[13], sums[14], sums[15], sums[16], cfg.hold_z, 2
    )
    # The mids moved since the fit, each against itself, beyond the scatter of those moves
    # (not of the half spreads): a maker's persistent skew cancels in a quote's own move,
    # so a steady climb well inside the spreads shows within a second.
    drifted = np.any(
        _mean_shifts_are_real(
            total,
            sums[3:6],
            sums[17:20],
            sums[20:23],
            sums[23:26],
            sums[26:29],
            cfg.hold_z,
            Prior.SHIFT_MIN_QUOTES,
        ),
        axis=0,
    )
    # A few quotes past their half spread (within their whole one) are the noise the
    # smoothing averages away, as long as the mean moves stay within their errors and
    # they carry little of the slice's weight (their leverage on the fit).
    hold = (
        np.all(within, axis=0)
        & ~together
        & ~drifted
        & (n_wild == 0.0)
        & (loud_weight <= _HOLD_LOUD_SHARE * weight_sum)
    )
    for (i, c), ok in zip(found, hold.tolist(), strict=True):
        if ok:
            flags = c.dropped[c.new.used]
            out[i] = c.new.drop_outliers(flags) if np.any(flags) else c.new
    return out


def _mean_shifts_are_real(
    sw: Array, swg: Array, sw2: Array, sw2g: Array, sw2g2: Array, n: Array, z: float, min_n: int
) -> BoolArray:
    """quotes.mean_shift_is_real (floor Prior.SHIFT_FLOOR) from per-group sums of the
    weights w and gaps g: sum w, sum w g, sum w^2, sum w^2 g, sum w^2 g^2 and the count n
    of quotes in the group; groups of fewer than min_n quotes are not judged."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = swg / sw
        resid2 = np.maximum(sw2g2 - 2.0 * mean * sw2g + mean * mean * sw2, 0.0)
        se = np.sqrt(resid2 * n / np.maximum(n - 1.0, 1.0)) / sw
        t = np.array([t_threshold(z, max(int(k) - 1, 1)) for k in n.ravel().tolist()])
        real = np.abs(mean) > np.maximum(t.reshape(n.shape) * se, Prior.SHIFT_FLOOR)
    return np.asarray(real & (n >= min_n), dtype=np.bool_)


def _drop_known_repair_outliers(w: _Working, cfg: SurfaceConfig) -> None:
    """Quotes the last repair found out of reach of any arbitrage-free slice are dropped
    before fitting while they still miss the last published slice's vol by more than the
    outlier threshold (otherwise each fit would be pulled by them, repaired, and refitted
    without them again)."""
    cache = w.job.cache
    if cache is None or cache.repaired is None or not cache.repair_outliers:
        return
    sel = w.selected
    used = np.flatnonzero(sel.used)
    known = np.array(
        [(sel.venue[i], sel.symbol[i]) in cache.repair_outliers for i in used], dtype=bool
    )
    if not np.any(known):
        return
    published_vol = implied_vol(cache.repaired, sel.k[used], sel.t)
    miss = np.maximum(sel.bid_iv[used] - published_vol, 0.0) + np.maximum(
        published_vol - sel.ask_iv[used], 0.0
    )
    limit = cfg.quotes.outlier_threshold * cfg.quotes.outlier_min_scale_vol
    flags = known & (np.nan_to_num(miss, nan=np.inf) > limit)
    if np.any(flags) and sel.n_used - int(np.count_nonzero(flags)) >= cfg.min_quotes_per_slice:
        w.selected = sel.drop_outliers(flags)
        w.repair_outliers = frozenset((sel.venue[i], sel.symbol[i]) for i in used[flags])


def _fit_ssvi(work: list[_Working], job: FitJob) -> SsviParams | None:
    cfg = job.config
    if all(w.job.cache is not None and w.job.cache.fingerprint == w.fingerprint for w in work):
        for w in work:
            assert w.job.cache is not None
            w.selected, w.fit, w.reused = w.job.cache.selected, w.job.cache.fit, True
        return job.ssvi_warm
    res = fit_ssvi_surface([w.selected.slice_data() for w in work], cfg.ssvi_phi, job.ssvi_warm)
    if cfg.drop_outliers:
        dropped = False
        for w, f in zip(work, res.slices, strict=True):
            flags = flag_outliers(w.selected, f.fitted_vol, cfg.min_quotes_per_slice, cfg.quotes)
            if np.any(flags):
                w.selected = w.selected.drop_outliers(flags)
                dropped = True
        if dropped:
            res = fit_ssvi_surface(
                [w.selected.slice_data() for w in work], cfg.ssvi_phi, res.params
            )
    for w, f in zip(work, res.slices, strict=True):
        w.fit = f
    return res.params


def _refit_data(w: _Working, band_epsilon: float) -> refit.RefitData:
    """The used quotes as repair input: target (the mid, or the mid blended with the
    prior) and bid/ask band in total variance, weights on total variance (the fit's own
    objective)."""
    d = w.data()
    t = w.selected.t
    target = d.mid_vol if d.target_vol is None else d.target_vol
    om = d.vol_weight / (2.0 * target * t) ** 2
    with np.errstate(invalid="ignore"):
        bid = np.where(np.isfinite(d.bid_vol), np.minimum(d.bid_vol, target), target)
        ask = np.where(np.isfinite(d.ask_vol), np.maximum(d.ask_vol, target), target)
    return refit.RefitData(
        k=d.k,
        target_w=target * target * t,
        weight=om / max(float(om.sum()), 1e-300),
        lo_w=np.maximum(bid, 0.0) ** 2 * t,
        hi_w=ask * ask * t,
        band_epsilon=band_epsilon,
    )


def _repair(
    fitted: list[_Working], cfg: SurfaceConfig, memo: refit.RefitMemo
) -> list[repair.RepairOutcome]:
    return repair.repair_surface(
        [
            repair.SliceToRepair(
                t=w.job.t,
                params=w.calibrated().params,  # type: ignore[union-attr]
                data_of=partial(_refit_data, w, cfg.fit.band_epsilon),
                label=w.job.expiry_label,
                warm=w.job.cache.repaired if w.job.cache is not None else None,
            )
            for w in fitted
            if w.fit is not None
        ],
        cfg.check_k_range,
        cfg.fit.wing_bound,
        memo,
    )


_CAP_ROUNDS = 3
# Where _order_wings looks for crossings (per unit of the check range) and the calendar
# room it aims for there, relative to the later slice's total variance.
_WING_POINTS = 61
_WING_MARGIN = 1e-6
_WING_AIM = 1e-2
# Later rounds cut past the linear estimate by these factors (the refit's other
# parameters take some of a cut back).
_CUT_FACTORS = (1.0, 1.5, 2.0)
# Deeper cuts fitted beside each round's estimate (multiples of it).
_CUT_LADDER = (1.5, 2.25)


def _order_wings(fitted: list[_Working], cfg: SurfaceConfig, now_ns: int) -> None:
    """Calendar order in the extrapolated wings, inside the calibration: a slice whose
    wing (beyond its own quotes) rises above the next later slice on the check range is
    refitted with that wing's slope capped (the inner problem's box, fit_svi_slices
    wing_caps) instead of being repaired afterwards. Lowering a slope by d lowers w by
    about d |k - m| there: the first cap is the slope less what closes the worst gap,
    but never below the later slice's own slope (where the wings stop diverging: a cut
    past it would flatten the quoted wing for nothing); later rounds close what is left
    (equal slopes whose asymptotes still cross, a slice lowered that now crosses the one
    before), a few batched refits in all. Crossings inside the quotes are data conflicts,
    left to the repair. fitted: sorted by T; a slice's `fit` stays its free fit."""
    if len(fitted) < 2:
        return
    lo, hi = cfg.check_k_range
    grid = np.linspace(lo, hi, _WING_POINTS)
    quoted = []
    for w in fitted:
        k_used = w.selected.k[w.selected.used]
        quoted.append((float(k_used.min()), float(k_used.max())) if k_used.size else (hi, lo))
    caps: dict[int, WingCaps] = {}
    first: dict[int, WingCaps] = {}
    refused: set[int] = set()
    for factor in _CUT_FACTORS:
        params = [f.params for f in (w.calibrated() for w in fitted) if f is not None]
        rows = np.array([tuple(p) for p in params]).reshape(-1, 5)
        totals = total_variance_rows(np.repeat(rows, grid.size, axis=0), np.tile(grid, len(params)))
        totals = totals.reshape(len(params), grid.size)
        room = totals[1:] * (1.0 - _WING_MARGIN) - totals[:-1]
        todo: list[_CapTodo] = []
        reused = False
        for i in np.flatnonzero(np.any(room < 0.0, axis=1)).tolist():
            w, p = fitted[i], params[i]
            if i in refused:
                continue
            q_lo, q_hi = quoted[i]
            outside = (grid < q_lo) | (grid > q_hi)
            if not np.any((room[i] < 0.0) & outside):
                continue  # inside the quotes: the repair's
            # Aim past the crossing by a wider margin (hysteresis: the next revision's
            # noise should not bring it back and cost another round).
            short = np.maximum(totals[i] - totals[i + 1] * (1.0 - _WING_AIM), 0.0) * outside
            cut = factor * short / np.maximum(np.abs(grid - p.m), 0.1)
            left = grid < p.m
            own, later = wing_slopes(p), wing_slopes(params[i + 1])
            put_cut = float(np.max(cut * left, initial=0.0))
            call_cut = float(np.max(cut * ~left, initial=0.0))
            cache = w.job.cache
            old = caps.get(i, WingCaps(math.inf, math.inf))
            cuts = _Cuts(own, later, put_cut, call_cut, i not in caps, old)
            last_capped = cache.capped if cache is not None else None
            cap, estimate = _caps_for(cuts, 1.0, last_capped)
            if i not in caps:
                first[i] = estimate
            if i not in caps and cache is not None and cache.capped is not None:
                free = wing_slopes(w.fit.params) if w.fit is not None else own
                # Last revision's caps, fitted to these quotes: at hand when the slice is
                # unchanged, or made with the free fits (speculative).
                done = w.speculative
                at_hand: CappedFit | None = None
                if (w.reused or w.held) and cache.capped.fingerprint == w.fit_fingerprint():
                    at_hand = cache.capped
                elif done is not None and done[0] is w.selected:
                    at_hand = CappedFit(cache.capped.caps, first[i], done[1], w.fingerprint)
                # They still hold when the fresh estimate agrees, or when their fit
                # clears the crossing outside the quotes and they are not tighter than
                # the estimate needs (the estimate is first order: judging the fit
                # itself saves a refit on most revisions, docs/quant.md section 4).
                if at_hand is not None and (
                    _close(cache.capped.caps, cap, free)
                    or (
                        _not_too_tight(cache.capped.caps, cap, free)
                        and _clears(at_hand.fit.params, totals[i + 1], grid, outside)
                        and _atm_within_quotes(w, at_hand.fit.params, cfg)
                    )
                ):
                    w.capped, caps[i], reused = at_hand, cache.capped.caps, True
                    continue
            # The cut is a first-order estimate (the refit's other parameters take part of
            # it back): deeper cuts are fitted in the same batch (rows cost little next
            # to passes), and the shallowest that clears the crossing is taken.
            ladder = [cap]
            for scale in _CUT_LADDER:
                deeper = _caps_for(cuts, scale, last_capped)[0]
                if deeper != ladder[-1]:
                    ladder.append(deeper)
            todo.append(_CapTodo(w, i, ladder, totals[i + 1], outside))
        if not todo:
            if reused:
                continue  # the next round checks the reused fits
            return
        for item in todo:
            if item.w.held and item.w.prior is None:
                # Fitted under caps now: its new quotes, smoothed like a refit's.
                item.w.prior = _prior(item.w, now_ns, cfg.smoothing_half_life_s)
        jobs = [(item.w, cap) for item in todo for cap in item.ladder]
        refits = iter(
            fit_svi_slices(
                [w.data() for w, _ in jobs],
                [_cap_start(w) for w, _ in jobs],
                cfg.fit,
                [cap for _, cap in jobs],
            )
        )
        tried = {item.i: [(cap, next(refits)) for cap in item.ladder] for item in todo}
        # Latest expiry first: a slice is judged against the later one as it now stands.
        now_later: dict[int, Array] = {}
        for item in sorted(todo, key=lambda item: -item.i):
            later_w = now_later.get(item.i + 1, item.later)
            cap, f = next(
                (
                    (cap, f)
                    for cap, f in tried[item.i]
                    if _clears(f.params, later_w, grid, item.outside)
                ),
                tried[item.i][-1],
            )
            now_later[item.i] = total_variance(f.params, grid)
            caps[item.i] = cap
            if _atm_within_quotes(item.w, f.params, cfg):
                # A held slice's capped fit goes with the fit it holds (kept while held).
                item.w.capped = CappedFit(cap, first[item.i], f, item.w.fit_fingerprint())
            else:
                item.w.capped = None  # the repair's, with its own rules
                refused.add(item.i)


class _Cuts(NamedTuple):
    """One slice's wing cuts in a round of _order_wings."""

    own: WingCaps  # its wing slopes
    later: WingCaps  # the later slice's
    put: float  # how far to lower each slope (0: that wing does not cross)
    call: float
    first: bool  # the slice's first round (no caps yet)
    old: WingCaps  # its caps so far


def _caps_for(cuts: _Cuts, scale: float, last: CappedFit | None) -> tuple[WingCaps, WingCaps]:
    """(the caps for the cuts times scale, the first estimate before its correction).
    A first round's caps are not below the later slice's slopes (where the wings stop
    diverging) and are corrected by how last revision's estimate undershot (last)."""
    own, later = cuts.own, cuts.later
    put = own.put - scale * cuts.put if cuts.put > 0.0 else math.inf
    call = own.call - scale * cuts.call if cuts.call > 0.0 else math.inf
    estimate = WingCaps(put, call)
    if cuts.first:
        put = max(put, min(later.put, own.put))
        call = max(call, min(later.call, own.call))
        estimate = WingCaps(put, call)
        if last is not None:
            put = _corrected(put, last.first.put, last.caps.put)
            call = _corrected(call, last.first.call, last.caps.call)
    old = cuts.old
    return WingCaps(min(old.put, max(put, 0.0)), min(old.call, max(call, 0.0))), estimate


class _CapTodo(NamedTuple):
    """A slice to refit under caps: the caps to try (shallowest first), the later slice's
    total variance on the grid and where the grid lies outside the slice's quotes."""

    w: _Working
    i: int
    ladder: list[WingCaps]
    later: Array
    outside: BoolArray


# Last revision's caps are kept while the fresh estimate is at most this much tighter
# (a tighter need would mostly cross again) or this much looser (the cost: a far wing
# held up to that much flatter than needed, until the estimate moves further).
_CAP_KEEP_TIGHTER = 0.03
_CAP_KEEP_LOOSER = 0.15


def _close(last: WingCaps, fresh: WingCaps, free: WingCaps) -> bool:
    """Last revision's caps serve for fresh ones: each side within the keep window, or
    uncapped now and last time's cap above the free fit's slope (it does not bind)."""
    for a, b, own in ((last.put, fresh.put, free.put), (last.call, fresh.call, free.call)):
        if math.isinf(b):
            if not a >= own:
                return False
        elif not b * (1.0 - _CAP_KEEP_LOOSER) <= a <= b * (1.0 + _CAP_KEEP_TIGHTER):
            return False
    return True


def _not_too_tight(last: WingCaps, fresh: WingCaps, free: WingCaps) -> bool:
    """_close's lower half: last revision's caps flatten no wing by more than the keep
    window beyond what the fresh estimate asks (nor one that needs no cap)."""
    for a, b, own in ((last.put, fresh.put, free.put), (last.call, fresh.call, free.call)):
        if math.isinf(b):
            if not a >= own:
                return False
        elif not b * (1.0 - _CAP_KEEP_LOOSER) <= a:
            return False
    return True


def _clears(p: RawSvi, later: Array, grid: Array, outside: BoolArray) -> bool:
    """A slice's total variance stays below the later slice's (totals on grid) wherever
    it lies outside its own quotes, by _order_wings' margin."""
    mine = total_variance(p, grid)
    return bool(np.all(mine[outside] <= later[outside] * (1.0 - _WING_MARGIN)))


def _corrected(fresh: float, last_first: float, last_settled: float) -> float:
    """A first cap estimate corrected by how far the previous revision's first estimate
    was from the cap it settled on (estimates undershoot alike from one revision to the
    next: the refit's other parameters take part of every cut back)."""
    if not (math.isfinite(fresh) and math.isfinite(last_first) and last_first > 0.0):
        return fresh
    if not math.isfinite(last_settled):
        return fresh
    return fresh * min(last_settled / last_first, 1.0)


def _cap_start(w: _Working) -> RawSvi | None:
    """Where a capped refit starts: the slice's capped fit so far (an earlier round), else
    the previous revision's capped fit of this slice, else its free fit."""
    if w.capped is not None:
        return w.capped.fit.params
    cache = w.job.cache
    if cache is not None and cache.capped is not None:
        return cache.capped.fit.params
    return w.fit.params if w.fit is not None else None


def _atm_within_quotes(w: _Working, p: RawSvi, cfg: SurfaceConfig) -> bool:
    """The repair's rule for a capped fit too: the ATM vol moves from the free fit's only
    within the quotes' bid/ask band at the money and by no more than its width."""
    assert w.fit is not None
    t = w.job.t
    band = _refit_data(w, cfg.fit.band_epsilon).atm_band(t)
    if band is None:
        return True
    lo, hi = band
    ref = math.sqrt(max(float(total_variance(w.fit.params, 0.0)), 0.0) / t)
    atm_w = float(total_variance(p, 0.0))
    if not atm_w > 0.0:
        return False
    atm = math.sqrt(atm_w / t)
    tol = 1e-9 + 1e-9 * abs(ref)
    inside = min(lo, ref) - tol <= atm <= max(hi, ref) + tol
    return inside and abs(atm - ref) <= (hi - lo) + tol


def _exceeds(slopes: WingCaps, cap: WingCaps) -> bool:
    return bool(
        slopes.put > cap.put * (1.0 + 1e-9) + 1e-12 or slopes.call > cap.call * (1.0 + 1e-9) + 1e-12
    )


def _set_metrics(
    msg: surface_pb.SmileMetrics, values: metrics.SmileMetricsValues, convention: int
) -> None:
    msg.atm_vol = values.atm_vol
    msg.rr25 = values.rr25
    msg.bf25 = values.bf25
    msg.rr10 = values.rr10
    msg.bf10 = values.bf10
    msg.delta_convention = convention  # type: ignore[assignment]


_STRIKE = _NUMERIC_FIELDS.index("strike_usd")
# Prices and IVs: NaN (absent) or not negative.
_NOT_NEGATIVE = [
    _NUMERIC_FIELDS.index(name)
    for name in ("bid_price_usd_per_coin", "ask_price_usd_per_coin", "bid_iv", "ask_iv", "mid_iv")
]


_LOG_MONEYNESS = _NUMERIC_FIELDS.index("log_moneyness")
_IVS = [_NUMERIC_FIELDS.index(name) for name in ("bid_iv", "ask_iv", "mid_iv")]
# Bounds far outside any market (strikes e^10 away from the forward, 1000% vol): what the
# fit can square without overflowing.
MAX_ABS_LOG_MONEYNESS = 10.0
MAX_IV = 10.0
MAX_TIME_TO_EXPIRY_YEARS = 100.0
# ~30 ms: below it the fit's weights (1 / (vol T)^2) overflow and every quote drops out.
MIN_TIME_TO_EXPIRY_YEARS = 1e-9


def invalid_smile(smile: iv_pb.Smile, columns: SmileColumns) -> str | None:
    """Why the fit cannot use ``smile`` (its reason in ``rejected``), or None. The IV stage
    never publishes such values; a smile from anywhere else on the bus may hold anything,
    and a non-positive forward or time, or an infinite value, breaks the fit's maths."""
    # NaN is "absent" (a slice without a forward is skipped with that reason at the fit).
    if math.isinf(smile.forward_usd) or smile.forward_usd <= 0.0:
        return "forward not positive and finite"
    years = smile.time_to_expiry_years
    if math.isinf(years) or not MIN_TIME_TO_EXPIRY_YEARS <= years <= MAX_TIME_TO_EXPIRY_YEARS:
        return "time to expiry out of range"
    if math.isinf(smile.index_price_usd) or smile.index_price_usd < 0.0:
        return "index price negative or infinite"
    numeric = columns.numeric
    if numeric.size:
        if np.isinf(numeric).any():
            return "infinite quote value"
        strikes = numeric[:, _STRIKE]
        if not np.all(strikes > 0.0):  # NaN fails too
            return "strike not positive"
        if np.any(numeric[:, _NOT_NEGATIVE] < 0.0):  # NaN (absent) passes
            return "negative price or IV"
        # Finite but absurd values overflow the fit's squares (NaN, absent, passes).
        if np.any(np.abs(numeric[:, _LOG_MONEYNESS]) > MAX_ABS_LOG_MONEYNESS):
            return "log-moneyness out of range"
        if np.any(numeric[:, _IVS] > MAX_IV):
            return "IV out of range"
    return None


def run_fit_job(job: FitJob) -> FitJobResult:
    """Fit, repair and summarise one partition's surface. Pure: same job, same result
    (apart from the measured fit times)."""
    started = time.perf_counter()
    cfg = job.config
    work, skipped = _select(job)
    ssvi_params: SsviParams | None = None
    if work:
        if cfg.model == surface_pb.SURFACE_MODEL_SSVI:
            ssvi_params = _fit_ssvi(work, job)
        else:
            _fit_svi(work, cfg, job.now_ns)
    work.sort(key=lambda w: w.job.t)
    fitted = [w for w in work if w.fit is not None]
    svi = cfg.model != surface_pb.SURFACE_MODEL_SSVI
    if svi:
        _order_wings(fitted, cfg, job.now_ns)
    memo = refit.RefitMemo()
    outcomes = _repair(fitted, cfg, memo)
    if cfg.drop_outliers and cfg.model != surface_pb.SURFACE_MODEL_SSVI:
        # A quote the unconstrained fit went through (a lone wing quote has that
        # leverage) can be one that no arbitrage-free surface reaches: judged against
        # the repaired (or wing-capped) slice it is an outlier, and the slice is
        # refitted and repaired without it.
        again: list[_Working] = []
        for w, outcome in zip(fitted, outcomes, strict=True):
            if not (outcome.repaired or w.capped is not None) or outcome.params is None:
                continue
            sel = w.selected
            used = np.flatnonzero(sel.used)
            repaired_vol = implied_vol(outcome.params, sel.k[used], sel.t)
            flags = flag_outliers(sel, repaired_vol, cfg.min_quotes_per_slice, cfg.quotes)
            if np.any(flags):
                w.selected = sel.drop_outliers(flags)
                w.repair_outliers |= {(sel.venue[i], sel.symbol[i]) for i in used[flags]}
                again.append(w)
        if again:
            refits = fit_svi_slices(
                [w.data() for w in again],
                [w.fit.params if w.fit is not None else None for w in again],
                cfg.fit,
            )
            for w, f in zip(again, refits, strict=True):
                w.fit = _combine(w.fit, f)
                w.capped = None
                w.reused = w.held = False  # fitted now, to this selection
            _order_wings(fitted, cfg, job.now_ns)
            outcomes = _repair(fitted, cfg, memo)
    published: list[tuple[_Working, repair.RepairOutcome, RawSvi]] = []
    for w, outcome in zip(fitted, outcomes, strict=True):
        if outcome.params is None:
            reason = outcome.reason or "could not be made arbitrage-free"
            skipped.append(SkippedSlice(w.job.expiry_time_ns, reason))
            continue
        published.append((w, outcome, outcome.params))
    surface, matrices = _build_surface(job, published) if published else (None, {})
    repaired = {
        w.job.expiry_time_ns: o.params
        for w, o in zip(fitted, outcomes, strict=True)
        if (o.repaired or w.capped is not None) and o.params is not None
    }
    caches = {
        w.job.expiry_time_ns: SliceCache(
            w.fingerprint,
            w.selected,
            w.fit,
            w.smile_keys,
            matrices.get(w.job.expiry_time_ns),
            repaired.get(w.job.expiry_time_ns),
            w.repair_outliers,
            *_prior_state(w, job.now_ns),
            capped=w.capped or (w.job.cache.capped if w.job.cache is not None else None),
            fitted_to=w.fitted_to(),
            fit_fingerprint=w.fit_fingerprint(),
            fit_prior_weight=_fit_prior_weight(w),
            provisional=_provisional(w),
        )
        for w in fitted
        if w.fit is not None
    }
    return FitJobResult(
        now_ns=job.now_ns,
        inputs=job.inputs,
        surface=surface,
        caches=caches,
        ssvi=ssvi_params,
        skipped=tuple(skipped),
        fit_time_ms=(time.perf_counter() - started) * 1e3,
    )


def _fit_prior_weight(w: _Working) -> float:
    """The smoothing prior's weight in the slice's fit (an earlier revision's when reused
    or held)."""
    cache = w.job.cache
    if (w.reused or w.held) and cache is not None:
        return cache.fit_prior_weight
    return w.prior.weight if w.prior is not None and not w.prior.reset else 0.0


def _provisional(w: _Working) -> bool:
    """The slice's fit was made while it settled (an earlier revision's when reused or
    held: only a settled fit is ever held)."""
    cache = w.job.cache
    if (w.reused or w.held) and cache is not None:
        return cache.provisional
    return w.job.settling


def _prior_state(
    w: _Working, now_ns: int
) -> tuple[RawSvi | None, float, int, float, Anchor | None]:
    """(fitted params, their T, last refit time, information, anchor) for the next fit's
    prior. The anchor moves to this fit unless its quotes were still in line with the
    last one (Prior.anchored).

    The prior is the fit before any arbitrage repair: a repair is a projection of each
    publication, and feeding it back would let a repaired shape (held inside wide bands
    by a heavy prior) ratchet from fit to fit. A slice reused unfitted keeps its refit
    time and information: the prior's age counts from the data it saw."""
    cache = w.job.cache
    if w.fit is None:
        return None, math.nan, 0, 0.0, None
    if cache is not None and cache.prior is not None and (w.reused or w.held or w.job.settling):
        # Reused or held: unfitted. Settling: a provisional fit, and the settled prior
        # stays, ageing from its own refit.
        return cache.prior, cache.prior_t, cache.prior_ns, cache.prior_info, cache.anchor
    if cache is not None and cache.anchor is not None and w.prior is not None and w.prior.anchored:
        anchor = cache.anchor
    else:
        anchor = Anchor(w.fit.params, w.job.t, w.selected, now_ns)
    return w.fit.params, w.job.t, now_ns, w.posterior_information(), anchor


def _quote_matrices(items: Sequence[tuple[SelectedQuotes, RawSvi, float]]) -> list[QuoteMatrix]:
    """The through-fit matrix of each (selection, published params, T): fitted vol vs
    bid/ask for every quote. The column arithmetic runs once over every slice's quotes (a
    numpy call per slice costs more than its arithmetic)."""
    if not items:
        return []
    sels = [sel for sel, _, _ in items]
    sizes = [len(sel) for sel in sels]
    bounds = np.cumsum([0, *sizes]).tolist()
    # Each quote's slice params and T, then implied_vol's arithmetic (the same values).
    p = np.repeat(np.array([tuple(q) for _, q, _ in items]).reshape(-1, 5), sizes, axis=0)
    t = np.repeat(np.array([t for _, _, t in items], dtype=np.float64), sizes)
    k = np.concatenate([sel.k for sel in sels])
    bid = np.concatenate([sel.bid_iv for sel in sels])
    ask = np.concatenate([sel.ask_iv for sel in sels])
    with np.errstate(invalid="ignore"):
        fitted_all = np.sqrt(total_variance_rows(p, k) / t)
    resid_all = (fitted_all - np.concatenate([sel.mid_iv for sel in sels])) * 1e4
    position_all = np.full(k.size, surface_pb.FIT_POSITION_INSIDE, dtype=np.int64)
    position_all[fitted_all < bid] = surface_pb.FIT_POSITION_BELOW_BID
    position_all[fitted_all > ask] = surface_pb.FIT_POSITION_ABOVE_ASK
    no_band = ~(np.isfinite(bid) & np.isfinite(ask) & np.isfinite(fitted_all))
    position_all[no_band] = surface_pb.FIT_POSITION_NO_BAND
    out: list[QuoteMatrix] = []
    for (sel, params, _), lo, hi in zip(items, bounds[:-1], bounds[1:], strict=True):
        used_mask = sel.used
        n_used = int(np.count_nonzero(used_mask))
        total_w = float(sel.weight[used_mask].sum()) if n_used else 0.0
        resid_bp = resid_all[lo:hi]
        used_resid = resid_bp[used_mask]
        norm_w = sel.weight / total_w if total_w > 0.0 else np.zeros(len(sel))
        blob = encode_quote_fits(
            sel.symbol,
            sel.venue,
            {
                "option_kind": sel.option_kind,
                "strike_usd": sel.strike,
                "log_moneyness": sel.k,
                "bid_iv": sel.bid_iv,
                "ask_iv": sel.ask_iv,
                "mid_iv": sel.mid_iv,
                "fitted_iv": fitted_all[lo:hi],
                "residual_bp": resid_bp,
                "position": position_all[lo:hi],
                "used": used_mask,
                "drop_reason": sel.drop_reason,
                "weight": np.where(used_mask, norm_w, 0.0),
            },
        )
        shares: list[tuple[str, float, int]] = []
        venues = set(sel.venue)
        if len(venues) == 1:
            shares.append((next(iter(venues)), float(norm_w[used_mask].sum()), n_used))
        else:
            venue_arr = np.array(sel.venue)
            for venue in sorted(venues):
                in_venue = used_mask & (venue_arr == venue)
                shares.append((venue, float(norm_w[in_venue].sum()), int(in_venue.sum())))
        out.append(
            QuoteMatrix(
                params=params,
                blob=blob,
                quotes_used=n_used,
                quotes_dropped=len(sel) - n_used,
                rmse_bp=float(np.sqrt(np.mean(used_resid**2))) if n_used else math.nan,
                max_abs_residual_bp=float(np.max(np.abs(used_resid))) if n_used else math.nan,
                venue_shares=tuple(shares),
            )
        )
    return out


# TenorPoint.nodes and the DeltaNode fields (surface.proto): label = 1 (string), delta = 2,
# vol = 3, strike_usd = 4 (doubles, wire type 1).
_TENOR_NODES_FIELD = 6
_NODE_DOUBLE_TAGS = (b"\x11", b"\x19", b"\x21")


@lru_cache(maxsize=8)
def _node_template(labels: tuple[str, ...]) -> tuple[NDArray[np.uint8], NDArray[np.intp]]:
    """The wire bytes of one tenor's DeltaNodes with their doubles blank, and where each
    node's delta, vol and strike go: (nodes, 24) byte offsets."""
    blob = b""
    offsets = []
    for label in labels:
        name = label.encode()
        head = b"\x0a" + varint(len(name)) + name
        body = head + b"".join(tag + bytes(8) for tag in _NODE_DOUBLE_TAGS)
        node = bytes([(_TENOR_NODES_FIELD << 3) | 2]) + varint(len(body)) + body
        first = len(blob) + len(node) - len(body) + len(head) + 1
        offsets.append([first + 9 * j + b for j in range(3) for b in range(8)])
        blob += node
    template = np.frombuffer(blob, dtype=np.uint8)
    at = np.array(offsets, dtype=np.intp)
    at.setflags(write=False)
    return template, at


def _node_blobs(labels: tuple[str, ...], deltas: Array, vols: Array, strikes: Array) -> list[bytes]:
    """Per row of vols/strikes (tenors, nodes): bytes that, merged into a TenorPoint, append
    its DeltaNodes (equal to adding them field by field: tests/surface/test_core.py)."""
    template, at = _node_template(labels)
    rows, n = vols.shape
    values = np.empty((rows, n, 3), dtype="<f8")
    values[:, :, 0] = deltas
    values[:, :, 1] = vols
    values[:, :, 2] = strikes
    out = np.tile(template, (rows, 1))
    out[:, at] = values.view(np.uint8).reshape(rows, n, 24)
    return [r.tobytes() for r in out]


def _reusable_matrix(w: _Working, p: RawSvi) -> QuoteMatrix | None:
    """Last revision's through-fit matrix when neither the quotes nor the params changed."""
    cache = w.job.cache
    cached = cache.matrix if cache is not None and w.reused else None
    return cached if cached is not None and cached.params == p else None


def _build_surface(
    job: FitJob, published: list[tuple[_Working, repair.RepairOutcome, RawSvi]]
) -> tuple[surface_pb.Surface, dict[int, QuoteMatrix]]:
    cfg = job.config
    conv = cfg.delta_convention
    surface = surface_pb.Surface(
        venue=job.venue,
        currency=job.currency,
        model=surface_pb.SURFACE_MODEL_SSVI
        if cfg.model == surface_pb.SURFACE_MODEL_SSVI
        else surface_pb.SURFACE_MODEL_SVI,
        index_price_usd=job.index_price,
        delta_convention=conv,  # type: ignore[arg-type]
    )
    ts = [w.job.t for w, _, _ in published]
    params = [p for _, _, p in published]
    forwards = [w.job.forward for w, _, _ in published]
    spot = job.index_price if math.isfinite(job.index_price) and job.index_price > 0 else None
    tenors, tenor_smiles = metrics.interpolate_tenors(ts, params, forwards, cfg.tenor_days, spot)
    # Slice metrics, tenor metrics and tenor nodes from one batched delta solve.
    all_metrics, all_nodes = metrics.metrics_and_nodes(
        metrics.concat([metrics.SmileSet.from_slices(params, ts), tenor_smiles]),
        forwards + [tn.forward for tn in tenors if tn.available],
        conv,
    )
    n_slices = len(published)
    slice_metrics = all_metrics[:n_slices]
    tenor_metrics = all_metrics[n_slices:]
    matrices: dict[int, QuoteMatrix] = {}
    venue_weight: dict[str, float] = {}
    venue_count: dict[str, int] = {}
    n_pub = len(published)
    rebuild = [i for i, (w, _, p) in enumerate(published) if _reusable_matrix(w, p) is None]
    fresh = dict(
        zip(
            rebuild,
            _quote_matrices(
                [
                    (published[i][0].selected, published[i][2], published[i][0].job.t)
                    for i in rebuild
                ]
            ),
            strict=True,
        )
    )
    for idx, ((w, outcome, p), m) in enumerate(zip(published, slice_metrics, strict=True)):
        sj, fit = w.job, w.fit
        assert fit is not None
        es = surface.slices.add()
        es.expiry_time_ns = sj.expiry_time_ns
        es.expiry_label = sj.expiry_label
        es.time_to_expiry_years = sj.t
        es.forward_usd = sj.forward
        es.forward_source = sj.forward_source  # type: ignore[assignment]
        es.raw.a, es.raw.b, es.raw.rho, es.raw.m, es.raw.sigma = p
        jw = raw_to_jw(p, sj.t)
        es.jw.atm_variance = jw.v
        es.jw.atm_skew = jw.psi
        es.jw.put_wing_slope = jw.p
        es.jw.call_wing_slope = jw.c
        es.jw.min_variance = jw.v_tilde
        _set_metrics(es.metrics, m, conv)

        qm = fresh.get(idx) or _reusable_matrix(w, p)
        assert qm is not None
        matrices[sj.expiry_time_ns] = qm

        d = es.diagnostics
        d.quotes_used = qm.quotes_used
        d.quotes_dropped = qm.quotes_dropped
        d.rmse_bp = qm.rmse_bp
        d.max_abs_residual_bp = qm.max_abs_residual_bp
        bf = outcome.butterfly
        d.min_g = bf.min_g if bf is not None else math.nan
        d.butterfly_arbitrage_free = bf is not None and bf.arbitrage_free
        cal_prev = outcome.calendar
        cal_next = published[idx + 1][1].calendar if idx + 1 < n_pub else None
        d.calendar_arbitrage_free = all(c is None or c.arbitrage_free for c in (cal_prev, cal_next))
        d.repaired = outcome.repaired
        d.repair_method = "; ".join([outcome.method, *outcome.notes]) if outcome.repaired else ""
        d.fit_time_ms = fit.fit_time_ms
        d.warm_start = fit.warm_start
        es.MergeFromString(qm.blob)  # appends the QuoteFit rows
        for venue, share, count in qm.venue_shares:
            venue_weight[venue] = venue_weight.get(venue, 0.0) + share / n_pub
            venue_count[venue] = venue_count.get(venue, 0) + count

    # Fixed tenors and their risk nodes (every tenor's nodes encoded at once).
    row = 0
    node_blobs = _node_blobs(
        all_nodes.labels, all_nodes.deltas, all_nodes.vols[n_slices:], all_nodes.strikes[n_slices:]
    )
    for tn in tenors:
        tp = surface.tenors.add()
        tp.tenor_days = tn.tenor_days
        tp.available = tn.available
        tp.time_to_expiry_years = tn.t
        tp.forward_usd = tn.forward
        if not tn.available:
            continue
        _set_metrics(tp.metrics, tenor_metrics[row], conv)
        tp.MergeFromString(node_blobs[row])  # appends its DeltaNodes
        row += 1

    k_ranges = []
    for w, _, _ in published:
        k_used = w.selected.k[w.selected.used]
        k_ranges.append((float(k_used.min()), float(k_used.max())))
    surface.vol_index_30d = metrics.vol_index(ts, params, k_ranges, cfg.vol_index_days)

    if job.venue == CONSOLIDATED_VENUE:
        total = sum(venue_weight.values())
        for venue in sorted(venue_weight):
            vw = surface.venue_weights.add()
            vw.venue = venue
            vw.weight = venue_weight[venue] / total if total > 0 else 0.0
            vw.quotes_used = venue_count[venue]
    return surface, matrices
