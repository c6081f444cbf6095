"""Quote selection for a smile fit (docs/quant.md section 6).

One side per strike: the out-of-the-money option (its in-the-money twin is dropped as
DROP_REASON_ITM_DUPLICATE); one-sided, crossed, stale, zero-bid, one-tick and no-IV quotes
are dropped with their reason; after a first fit, outliers (far outside their own bid/ask
band relative to a robust residual scale) are dropped too. Weights on squared vol
residuals are 1 / (bid-ask spread in vol)^2 = (vega / price spread)^2, inverse variance
since a mid's noise scales with its spread; the spread is floored so that one tight quote
cannot dominate.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
from numpy.typing import NDArray
from scipy import special

from svc_surface.fit import SliceData
from volmath.svi import RawSvi, implied_vol
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import surface_pb2 as surface_pb

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

_OK_STATUSES = (iv_pb.IV_STATUS_OK, iv_pb.IV_STATUS_UNSPECIFIED)
_KEEP = surface_pb.DROP_REASON_UNSPECIFIED


@dataclass(frozen=True)
class QuoteConfig:
    # Quotes older than this (event time) count as stale; None: only the quote's flag.
    stale_after_ns: int | None = None
    # Spread floor in vol: absolute, and as a fraction of the slice's median spread.
    min_spread_vol: float = 0.002
    min_spread_median_fraction: float = 0.25
    # Outliers: distance outside the band beyond this many robust residual scales.
    outlier_threshold: float = 5.0
    outlier_min_scale_vol: float = 0.0025
    max_outlier_fraction: float = 0.2
    # Weight = 1 / spread^spread_power (2: inverse variance; 1 was the earlier default,
    # less efficient: wide wing quotes got too much say in the risk reversal).
    spread_power: float = 2.0


@dataclass(frozen=True)
class Prior:
    """The slice's last fit as a prior for the next fit (temporal smoothing).

    Each quote's least-squares target becomes (mid + weight * prior) / (1 + weight), the
    prior's vol taken at the quote's k and clipped into the quote's own bid/ask band: the
    prior damps quote noise but never holds the fit outside what the market quotes now.

    weight = d * I_prior / I_now with d = 2^(-dt / half_life): I is information, the sum of
    the quotes' weights (inverse variances); a fit carries I_now + d * I_prior forward.
    With steady quotes that makes the published slice an exponentially weighted average of
    snapshot fits with the given half life, whatever the refit cadence; a prior built on
    fewer quotes (a start-up fit on a half-filled chain) counts for less.
    """

    params: RawSvi
    # The prior slice's own time to expiry (its vols are sqrt(w / t)).
    t: float
    weight: float
    # Kept at RESET_WEIGHT after the quotes moved off it (behind_move): a reset.
    reset: bool = False
    # How far the quotes moved away from the prior since the anchor, each quote against
    # itself (paired_drift): the prior's vols are read that much higher.
    level: float = 0.0
    # The quotes are still in line with the anchor (paired_drift found no drift): the
    # next prior measures against the same anchor, so a climb too slow to show between
    # two refits shows over several.
    anchored: bool = False

    # A prior never outweighs the quotes by more than this (bounds the lag after a jump
    # that stays inside the bands).
    MAX_WEIGHT = 50.0
    # A prior outside the bands of more than this share of the quotes (by weight) is
    # stale: the market moved beyond its quotes' width, so the fit starts afresh.
    RESET_OUTSIDE_SHARE = 0.5
    # A prior the quotes moved away from as a whole, by more than SHIFT_Z standard errors
    # of their weighted mean (estimated from the quotes' own scatter around the prior) and
    # by at least SHIFT_FLOOR in vol, is behind a real move (a jump, a vol shock): it keeps
    # at most RESET_WEIGHT rather than lag the move by the half life (docs/quant.md
    # section 6). Groups
    # of fewer than SHIFT_MIN_QUOTES quotes are not judged (their scatter says too little).
    SHIFT_Z = 3.5
    SHIFT_FLOOR = 0.002
    SHIFT_MIN_QUOTES = 8
    # A prior behind a move keeps at most this weight rather than none: the test fires
    # on noise in a few per cent of quiet refits (about 8 quotes a third), and the fresh
    # quotes after a jump sit at other strikes, whose makers' persistent skews a snapshot
    # fit would take whole. The quotes move the fit halfway at once, and halfway again at
    # each refit while the test still fires.
    RESET_WEIGHT = 1.0
    # The quotes' drift since the anchor (paired_drift) is taken when beyond DRIFT_Z
    # standard errors and DRIFT_FLOOR in vol; an anchor is kept for ANCHOR_MAX_S at most
    # (as its quotes churn, their redrawn skews blur the drift's noise).
    DRIFT_Z = 3.0
    DRIFT_FLOOR = 0.0005
    ANCHOR_MAX_S = 5.0

    def vols(self, k: Array) -> Array:
        """The prior's vols at log-moneyness k, carried along the quotes' drift."""
        vol = np.asarray(implied_vol(self.params, k, self.t), dtype=np.float64)
        return vol + self.level if self.level != 0.0 else vol

    @staticmethod
    def decay(dt_s: float, half_life_s: float) -> float:
        """The share of the prior's information left after dt_s seconds."""
        if half_life_s <= 0.0 or not math.isfinite(dt_s):
            return 0.0
        return float(2.0 ** (-max(dt_s, 0.0) / half_life_s))

    def outside_share(self, k: Array, bid: Array, ask: Array, weight: Array) -> float:
        """Share of the quotes' weight whose band the prior misses."""
        prior = self.vols(k)
        with np.errstate(invalid="ignore"):
            outside = ~((prior >= bid) & (prior <= ask))
        total = float(weight.sum())
        return float(weight[outside].sum()) / total if total > 0.0 else 1.0

    def behind_move(self, k: Array, mid: Array, bid: Array, ask: Array, weight: Array) -> bool:
        """Whether the quotes moved off the prior beyond their noise: their weighted mean
        over all of them, or over each third of them by log-moneyness (put wing, centre,
        call wing), so that a tilt (a jump's stale quotes repriced, a skew move) or a
        change of curvature counts as much as a level shift.

        The noise is the quotes' own scatter around the prior (the standard error of the
        weighted mean, from the residuals about it), not their half spreads: a maker's mid
        sits well inside its spread, and spreads double in a fast market, so a half-spread
        noise band let a prior several vol points off through right after a jump."""
        prior = self.vols(k)
        with np.errstate(invalid="ignore"):
            banded = np.isfinite(bid) & np.isfinite(ask)
            ok = np.isfinite(prior) & np.isfinite(mid) & banded & (weight > 0.0)
        idx = np.flatnonzero(ok)
        by_k = idx[np.argsort(k[idx], kind="stable")]
        gap = mid - prior
        for group in (idx, *np.array_split(by_k, 3)):
            if mean_shift_is_real(
                gap[group], weight[group], self.SHIFT_Z, self.SHIFT_FLOOR, self.SHIFT_MIN_QUOTES
            ):
                return True
        return False

    def targets(self, k: Array, mid: Array, bid: Array, ask: Array) -> Array:
        """Blended targets; the prior's vols are read at its own T (a refit moves T by
        seconds, which changes nothing that matters)."""
        prior = self.vols(k)
        with np.errstate(invalid="ignore"):
            lo = np.where(np.isfinite(bid), bid, mid)
            hi = np.where(np.isfinite(ask), ask, mid)
            inside = np.clip(prior, lo, hi)
            ok = np.isfinite(inside) & (inside > 0.0)
        blended = (mid + self.weight * np.where(ok, inside, mid)) / (1.0 + self.weight)
        return np.asarray(blended, dtype=np.float64)


def mean_shift_is_real(gap: Array, weight: Array, z: float, floor: float, min_quotes: int) -> bool:
    """Whether the weighted mean of `gap` (quotes minus a reference) is beyond both `z`
    standard errors and `floor`. The standard error comes from the gaps' own scatter about
    their mean (sandwich form, n / (n - 1) corrected), so it needs no noise model; fewer
    than `min_quotes` gaps say nothing."""
    n = gap.size
    total = float(weight.sum())
    if n < max(min_quotes, 2) or total <= 0.0:
        return False
    shift = float((weight * gap).sum()) / total
    resid = gap - shift
    se = math.sqrt(float((weight * weight * resid * resid).sum()) * n / (n - 1)) / total
    # The scatter is estimated from the n quotes themselves: the z's false-alarm rate is
    # held by the Student-t quantile at n - 1 degrees of freedom (with 8 quotes a third
    # the normal 3.5 fired on noise in 2-7% of quiet refits).
    return abs(shift) > max(t_threshold(z, n - 1) * se, floor)


@dataclass(frozen=True)
class Anchor:
    """A fit its quotes were last in line with, the selection it was made on and its event
    time: the prior's drift is measured against it (paired_drift)."""

    params: RawSvi
    t: float
    selected: SelectedQuotes
    ns: int

    @functools.cached_property
    def where(self) -> dict[tuple[str, str], int]:
        """(venue, symbol) -> index of each used quote (an anchor serves several refits)."""
        sel = self.selected
        used = sel.used.tolist()
        return {key: i for i, key in enumerate(zip(sel.venue, sel.symbol, strict=True)) if used[i]}


def paired_drift(prior: Prior, anchor: Anchor, now: SelectedQuotes) -> float | None:
    """How far the quotes moved away from `prior` since `anchor`, in vol, as the weighted
    mean over the quotes used in both; 0 unless beyond its noise, None when fewer than
    Prior.SHIFT_MIN_QUOTES quotes are in both.

    Each quote is compared with itself: its mid less the prior's vol at its k now, against
    its mid less the anchor fit's vol then. A maker's persistent skew cancels in that
    difference, so a move far inside the spreads shows (a vol shock's steady climb) where
    the quotes' scatter about the fit hides it (Prior.behind_move). The noise is the
    differences' own scatter (quotes.mean_shift_is_real, at Prior.DRIFT_Z and
    DRIFT_FLOOR); a quote's difference counts up to its half spread: beyond that it is a
    maker redrawing its quote, and a move that large leaves the prior outside the bands
    (Prior.outside_share). A tilt is left to behind_move: measured this way it followed
    the quotes not yet requoted after a forward move, and raised Deribit's quiet RR25
    from 0.07 to 0.25 vol points (docs/quant.md section 6)."""
    ref = anchor.selected
    if ref.venue == now.venue and ref.symbol == now.symbol:
        i_now = i_ref = np.flatnonzero(ref.used & now.used)
    else:
        where, used = anchor.where, now.used.tolist()
        pairs = [
            (i, j)
            for i, key in enumerate(zip(now.venue, now.symbol, strict=True))
            if used[i] and (j := where.get(key)) is not None
        ]
        if len(pairs) < Prior.SHIFT_MIN_QUOTES:
            return None
        i_now, i_ref = (np.array(side, dtype=np.int64) for side in zip(*pairs, strict=True))
    if i_now.size < Prior.SHIFT_MIN_QUOTES:
        return None
    with np.errstate(invalid="ignore"):
        moved = (now.mid_iv[i_now] - prior.vols(now.k[i_now])) - (
            ref.mid_iv[i_ref] - np.asarray(implied_vol(anchor.params, ref.k[i_ref], anchor.t))
        )
        half = 0.5 * (now.ask_iv[i_now] - now.bid_iv[i_now])
        moved = np.clip(moved, -half, half)
        ok = np.isfinite(moved) & (now.weight[i_now] > 0.0)
    w, moved = now.weight[i_now][ok], moved[ok]
    if w.size < Prior.SHIFT_MIN_QUOTES:
        return None
    if not mean_shift_is_real(moved, w, Prior.DRIFT_Z, Prior.DRIFT_FLOOR, Prior.SHIFT_MIN_QUOTES):
        return 0.0
    # The move is where most of the weight moved to (the weighted median): a few makers
    # redrawing their skews the same way can pass the mean's test now and then, but they
    # do not move the median off 0.
    level = _weighted_median(moved, w)
    return level if abs(level) > Prior.DRIFT_FLOOR else 0.0


def _weighted_median(x: Array, w: Array) -> float:
    order = np.argsort(x, kind="stable")
    cum = np.cumsum(w[order])
    return float(x[order][int(np.searchsorted(cum, 0.5 * cum[-1]))])


@functools.lru_cache(maxsize=1024)
def t_threshold(z: float, dof: int) -> float:
    """The Student-t quantile at `dof` degrees of freedom with the normal `z`'s tail."""
    return float(-special.stdtrit(dof, special.ndtr(-z)))


@dataclass(frozen=True)
class SelectedQuotes:
    """Every input quote of one expiry (all venues), used or not, as parallel arrays."""

    t: float
    venue: tuple[str, ...]
    symbol: tuple[str, ...]
    option_kind: IntArray
    strike: Array
    k: Array
    bid_iv: Array
    ask_iv: Array
    mid_iv: Array
    used: BoolArray
    drop_reason: IntArray
    # Weight on the squared vol residual (0 when dropped), not normalised.
    weight: Array

    def __len__(self) -> int:
        return int(self.k.shape[0])

    @property
    def n_used(self) -> int:
        return int(np.count_nonzero(self.used))

    def slice_data(self, exclude: BoolArray | None = None, prior: Prior | None = None) -> SliceData:
        """Fit inputs of the used quotes (minus `exclude`, one flag per used quote), aimed
        at the mids blended with `prior` when given."""
        u = self.used
        if exclude is not None:
            u = u.copy()
            u[np.flatnonzero(u)[exclude]] = False
        k, mid, bid, ask = self.k[u], self.mid_iv[u], self.bid_iv[u], self.ask_iv[u]
        return SliceData(
            t=self.t,
            k=k,
            mid_vol=mid,
            bid_vol=bid,
            ask_vol=ask,
            vol_weight=self.weight[u],
            target_vol=None if prior is None else prior.targets(k, mid, bid, ask),
        )

    def fingerprint(self) -> bytes:
        """Identity of the fit inputs: equal fingerprints give the same fit."""
        h = hashlib.blake2b(digest_size=16)
        h.update(np.float64(self.t).tobytes())
        u = self.used
        for arr in (self.k[u], self.mid_iv[u], self.bid_iv[u], self.ask_iv[u], self.weight[u]):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.digest()

    def drop_outliers(self, used_flags: BoolArray) -> SelectedQuotes:
        """used_flags: one flag per used quote (True: outlier)."""
        idx = np.flatnonzero(self.used)[used_flags]
        used = self.used.copy()
        reason = self.drop_reason.copy()
        weight = self.weight.copy()
        used[idx] = False
        reason[idx] = surface_pb.DROP_REASON_OUTLIER
        weight[idx] = 0.0
        return SelectedQuotes(
            t=self.t,
            venue=self.venue,
            symbol=self.symbol,
            option_kind=self.option_kind,
            strike=self.strike,
            k=self.k,
            bid_iv=self.bid_iv,
            ask_iv=self.ask_iv,
            mid_iv=self.mid_iv,
            used=used,
            drop_reason=reason,
            weight=weight,
        )


def _median(x: Array) -> float:
    # statistics.median on a short list is ~5x faster than np.median's machinery.
    return float(statistics.median(x.tolist())) if x.size else math.nan


_NUMERIC_FIELDS = (
    "option_kind",
    "strike_usd",
    "log_moneyness",
    "bid_price_usd_per_coin",
    "ask_price_usd_per_coin",
    "bid_iv",
    "ask_iv",
    "mid_iv",
    "bid_iv_status",
    "ask_iv_status",
    "stale",
    "one_sided",
    "crossed",
    "at_min_tick",
    "quote_time_ns",
    "behind_forward",
)
_numeric_of = operator.attrgetter(*_NUMERIC_FIELDS)
_symbol_of = operator.attrgetter("symbol")


@dataclass(frozen=True)
class SmileColumns:
    """What a fit needs of one smile: its identity, forward and quotes as columns.

    Built once when the smile arrives (SmileColumns.of), not at every fit, and cheap to
    send to a fit worker process (a Smile message is serialised and parsed again)."""

    venue: str
    event_time_ns: int
    sequence: int
    forward_usd: float
    symbols: tuple[str, ...]
    # (n, 16): _NUMERIC_FIELDS of every quote.
    numeric: Array

    @staticmethod
    def of(smile: iv_pb.Smile) -> SmileColumns:
        # attrgetter + fromiter: no Python loop per quote (a third of a fit's selection).
        quotes = smile.quotes
        n = len(quotes)
        numeric = np.fromiter(
            chain.from_iterable(map(_numeric_of, quotes)),
            dtype=np.float64,
            count=n * len(_NUMERIC_FIELDS),
        ).reshape(n, len(_NUMERIC_FIELDS))
        return SmileColumns(
            venue=smile.venue,
            event_time_ns=smile.header.event_time_ns,
            sequence=smile.header.sequence,
            forward_usd=smile.forward_usd,
            symbols=tuple(map(_symbol_of, quotes)),
            numeric=numeric,
        )

    def __len__(self) -> int:
        return len(self.symbols)


def _as_columns(smile: iv_pb.Smile | SmileColumns) -> SmileColumns:
    return smile if isinstance(smile, SmileColumns) else SmileColumns.of(smile)


_STATUS_OK = np.array(_OK_STATUSES)


def _drop_reasons(cols: Array, now_ns: int | None, cfg: QuoteConfig) -> IntArray:
    """Drop reason per quote, first matching rule wins (vectorised)."""
    (
        _,
        strike,
        log_m,
        bid_p,
        ask_p,
        bid_iv,
        ask_iv,
        _,
        bid_st,
        ask_st,
        stale,
        one_sided,
        crossed,
        min_tick,
        quote_time,
        behind_forward,
    ) = cols
    with np.errstate(invalid="ignore"):
        is_stale = stale != 0.0
        if cfg.stale_after_ns is not None and now_ns is not None:
            is_stale |= (quote_time > 0) & (now_ns - quote_time > cfg.stale_after_ns)
        zero_bid = np.isfinite(bid_p) & (bid_p <= 0.0)
        one_side = (one_sided != 0.0) | ~np.isfinite(bid_p) | ~np.isfinite(ask_p)
        is_crossed = (crossed != 0.0) | (bid_p > ask_p) | (bid_iv > ask_iv)
        no_iv = ~(
            np.isfinite(bid_iv)
            & (bid_iv > 0.0)
            & np.isfinite(ask_iv)
            & (ask_iv > 0.0)
            & np.isin(bid_st, _STATUS_OK)
            & np.isin(ask_st, _STATUS_OK)
            & ((np.isfinite(strike) & (strike > 0.0)) | np.isfinite(log_m))
        )
    return np.select(
        [is_stale, behind_forward != 0.0, zero_bid, one_side, is_crossed, min_tick != 0.0, no_iv],
        [
            surface_pb.DROP_REASON_STALE,
            surface_pb.DROP_REASON_BEHIND_FORWARD,
            surface_pb.DROP_REASON_ZERO_BID,
            surface_pb.DROP_REASON_ONE_SIDED,
            surface_pb.DROP_REASON_CROSSED,
            surface_pb.DROP_REASON_MIN_TICK,
            surface_pb.DROP_REASON_NO_IV,
        ],
        default=_KEEP,
    ).astype(np.int64)


def select_quotes(
    smiles: Sequence[iv_pb.Smile | SmileColumns],
    t: float,
    now_ns: int | None = None,
    config: QuoteConfig | None = None,
    venue_multipliers: dict[str, float] | None = None,
) -> SelectedQuotes:
    """Select and weight the quotes of one expiry (one smile, or one per venue for the
    consolidated surface: each quote's k is relative to its own venue's forward)."""
    return select_quotes_many([smiles], [t], now_ns, config, venue_multipliers)[0]


def select_quotes_many(
    groups: Sequence[Sequence[iv_pb.Smile | SmileColumns]],
    ts: Sequence[float],
    now_ns: int | None = None,
    config: QuoteConfig | None = None,
    venue_multipliers: dict[str, float] | None = None,
) -> list[SelectedQuotes]:
    """select_quotes for several expiries at once (one vectorised pass over all quotes)."""
    cfg = config or QuoteConfig()
    mults = venue_multipliers or {}
    venues: list[str] = []
    symbols: list[str] = []
    blocks: list[Array] = []
    fwd_parts: list[Array] = []
    mult_parts: list[Array] = []
    smile_parts: list[IntArray] = []
    group_sizes: list[int] = []
    smile_id = 0
    for smiles in groups:
        size = 0
        for given in smiles:
            smile = _as_columns(given)
            n = len(smile)
            smile_id += 1
            if n == 0:
                continue
            size += n
            symbols.extend(smile.symbols)
            venues.extend([smile.venue] * n)
            blocks.append(smile.numeric)
            fwd_parts.append(np.full(n, smile.forward_usd))
            mult_parts.append(np.full(n, mults.get(smile.venue, 1.0)))
            smile_parts.append(np.full(n, smile_id, dtype=np.int64))
        group_sizes.append(size)
    if blocks:
        cols = np.concatenate(blocks).T
        fwd = np.concatenate(fwd_parts)
        mult = np.concatenate(mult_parts)
        smile_of = np.concatenate(smile_parts)
    else:
        cols, fwd, mult, smile_of = (
            np.zeros((len(_NUMERIC_FIELDS), 0)),
            np.zeros(0),
            np.zeros(0),
            np.zeros(0, np.int64),
        )
    kinds = cols[0].astype(np.int64)
    strikes, log_m, bid, ask, mid = cols[1], cols[2], cols[5], cols[6], cols[7]
    reasons = _drop_reasons(cols, now_ns, cfg)
    with np.errstate(invalid="ignore", divide="ignore"):
        # The IV service's log-moneyness is against the forward each quote was solved on
        # (the forward when its price last changed); the smile's forward otherwise.
        ks = np.where(
            np.isfinite(log_m),
            log_m,
            np.where(
                np.isfinite(fwd) & (fwd > 0.0) & np.isfinite(strikes) & (strikes > 0.0),
                np.log(strikes / fwd),
                np.nan,
            ),
        )
        # The venue's mid IV when it lies in the band, else the band's centre.
        mid_ok = np.isfinite(mid) & (mid > 0.0) & (bid <= mid) & (mid <= ask)
        mid = np.where(mid_ok, mid, 0.5 * (bid + ask))
    _drop_itm_duplicates(reasons, kinds, strikes, ks, smile_of)
    _drop_parity_inconsistent(reasons, kinds, strikes, ks, smile_of, cols)
    used = reasons == _KEEP
    spread = ask - bid
    weight = np.zeros(kinds.size)
    out: list[SelectedQuotes] = []
    start = 0
    for size, t in zip(group_sizes, ts, strict=True):
        part = slice(start, start + size)
        u = used[part]
        if np.any(u):
            sp = spread[part][u]
            floor = max(cfg.min_spread_vol, cfg.min_spread_median_fraction * _median(sp))
            w = np.zeros(size)
            w[u] = mult[part][u] / np.maximum(sp, floor) ** cfg.spread_power
            weight[part] = w
        out.append(
            SelectedQuotes(
                t=t,
                venue=tuple(venues[part]),
                symbol=tuple(symbols[part]),
                option_kind=kinds[part],
                strike=strikes[part],
                k=ks[part],
                bid_iv=bid[part],
                ask_iv=ask[part],
                mid_iv=mid[part],
                used=used[part],
                drop_reason=reasons[part],
                weight=weight[part],
            )
        )
        start += size
    return out


def _drop_itm_duplicates(
    reasons: IntArray, kinds: IntArray, strikes: Array, ks: Array, smile_of: IntArray
) -> None:
    """Per strike within one venue's smile, keep the OTM side when both are usable."""
    usable = np.flatnonzero(reasons == _KEEP)
    if usable.size < 2:
        return
    strike_key = np.round(strikes[usable], 8)
    order = usable[np.lexsort((kinds[usable], strike_key, smile_of[usable]))]
    first, second = order[:-1], order[1:]
    pair = (
        (smile_of[first] == smile_of[second])
        & (np.round(strikes[first], 8) == np.round(strikes[second], 8))
        & (kinds[first] != kinds[second])
    )
    a, b = first[pair], second[pair]
    otm_call = ks[a] >= 0.0
    a_is_call = kinds[a] == common_pb.OPTION_KIND_CALL
    itm = np.where(a_is_call != otm_call, a, b)
    reasons[itm] = surface_pb.DROP_REASON_ITM_DUPLICATE


# A twin dropped for one of these reasons still quotes prices that bound the strike's vol
# (a one-sided ask, a one-tick bid or a zero bid are real orders); crossed, stale or
# unsolvable twins say nothing.
_BOUNDING_TWIN = np.array(
    [
        _KEEP,
        surface_pb.DROP_REASON_ONE_SIDED,
        surface_pb.DROP_REASON_ZERO_BID,
        surface_pb.DROP_REASON_MIN_TICK,
    ]
)


def _drop_parity_inconsistent(
    reasons: IntArray,
    kinds: IntArray,
    strikes: Array,
    ks: Array,
    smile_of: IntArray,
    cols: Array,
) -> None:
    """An in-the-money quote kept because its out-of-the-money twin is unusable must
    still agree with that twin's orders: by put-call parity both share one vol, so an ITM
    bid IV above the twin's ask IV (or an ITM ask IV below its bid IV) is contradicted by
    the market. The ITM side is the one dropped (DROP_REASON_CROSSED, crossed against its
    twin): its vol hangs on the forward and on a premium that is mostly intrinsic value."""
    usable = np.flatnonzero(reasons == _KEEP)
    if usable.size == 0:
        return
    bid_iv, ask_iv, bid_st, ask_st = cols[5], cols[6], cols[8], cols[9]
    n = kinds.size
    order = np.lexsort((kinds, np.round(strikes, 8), smile_of))
    first, second = order[:-1], order[1:]
    pair = (
        (smile_of[first] == smile_of[second])
        & (np.round(strikes[first], 8) == np.round(strikes[second], 8))
        & (kinds[first] != kinds[second])
    )
    a, b = first[pair], second[pair]
    twin = np.full(n, -1, dtype=np.int64)
    twin[a], twin[b] = b, a
    is_call = kinds == common_pb.OPTION_KIND_CALL
    itm = (reasons == _KEEP) & (twin >= 0) & (is_call == (ks < 0.0))
    idx = np.flatnonzero(itm)
    if idx.size == 0:
        return
    tw = twin[idx]
    bounding = np.isin(reasons[tw], _BOUNDING_TWIN)
    with np.errstate(invalid="ignore"):
        twin_ask_ok = bounding & np.isin(ask_st[tw], _STATUS_OK) & (ask_iv[tw] > 0.0)
        twin_bid_ok = bounding & np.isin(bid_st[tw], _STATUS_OK) & (bid_iv[tw] > 0.0)
        above = twin_ask_ok & (bid_iv[idx] > ask_iv[tw])
        below = twin_bid_ok & (ask_iv[idx] < bid_iv[tw])
    reasons[idx[above | below]] = surface_pb.DROP_REASON_CROSSED


def flag_outliers(
    selected: SelectedQuotes, fitted_vol: Array, min_keep: int, config: QuoteConfig | None = None
) -> BoolArray:
    """One flag per used quote: far outside its own band compared with a robust (MAD)
    scale of the residuals. At most max_outlier_fraction of the quotes, worst first, and
    never below min_keep quotes."""
    cfg = config or QuoteConfig()
    u = selected.used
    mid, bid, ask = selected.mid_iv[u], selected.bid_iv[u], selected.ask_iv[u]
    n = mid.size
    flags = np.zeros(n, dtype=bool)
    if n == 0 or fitted_vol.shape != mid.shape:
        return flags
    outside = _outside_band(fitted_vol, bid, ask)
    # Nothing can be flagged unless some quote is beyond the smallest possible threshold.
    if not np.any(outside > cfg.outlier_threshold * cfg.outlier_min_scale_vol):
        return flags
    resid = fitted_vol - mid
    finite = np.isfinite(resid)
    if not np.any(finite):
        return flags
    centre = _median(resid[finite])
    scale = 1.4826 * _median(np.abs(resid[finite] - centre))
    scale = max(scale, cfg.outlier_min_scale_vol)
    candidate = outside > cfg.outlier_threshold * scale
    budget = min(math.floor(cfg.max_outlier_fraction * n), max(n - min_keep, 0))
    if budget <= 0 or not np.any(candidate):
        return flags
    order = np.argsort(-np.where(candidate, outside, -np.inf))[:budget]
    flags[order[candidate[order]]] = True
    return flags


def _outside_band(fitted_vol: Array, bid: Array, ask: Array) -> Array:
    out = np.where(
        fitted_vol < bid, bid - fitted_vol, np.where(fitted_vol > ask, fitted_vol - ask, 0.0)
    )
    return np.asarray(np.where(np.isfinite(out), out, np.inf), dtype=np.float64)


def suspect_fit(
    selected: SelectedQuotes, fitted_vol: Array, config: QuoteConfig | None = None
) -> bool:
    """A fit possibly pulled by bad quotes: some quote lies far outside its band (beyond
    outlier_threshold minimum scales and beyond the median spread)."""
    cfg = config or QuoteConfig()
    u = selected.used
    bid, ask = selected.bid_iv[u], selected.ask_iv[u]
    if fitted_vol.shape != bid.shape or bid.size == 0:
        return False
    outside = _outside_band(fitted_vol, bid, ask)
    limit = max(cfg.outlier_threshold * cfg.outlier_min_scale_vol, _median(ask - bid))
    return bool(np.max(outside) > limit)


def trim_worst(
    selected: SelectedQuotes, fitted_vol: Array, min_keep: int, config: QuoteConfig | None = None
) -> BoolArray:
    """The quotes (one flag per used quote) farthest outside their band, up to
    max_outlier_fraction and never below min_keep: left out of a trimmed refit."""
    cfg = config or QuoteConfig()
    u = selected.used
    outside = _outside_band(fitted_vol, selected.bid_iv[u], selected.ask_iv[u])
    n = outside.size
    flags = np.zeros(n, dtype=bool)
    budget = min(math.floor(cfg.max_outlier_fraction * n), max(n - min_keep, 0))
    if budget <= 0:
        return flags
    order = np.argsort(-outside)[:budget]
    flags[order[outside[order] > 0.0]] = True
    return flags
