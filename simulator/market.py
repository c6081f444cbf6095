"""Venue-neutral quoting from the ground truth: instruments, tick-rounded bid/ask, L2 books
with churn and a per-book sequence, marks, IVs and greeks.

A venue protocol module (deribit.py, ...) owns one `VenueMarket` per currency, gives it the
venue's naming and `QuoteStyle`, and turns the `OptionUpdate`/`FutureUpdate` records of each
tick into its own wire format. Books evolve only for instruments somebody subscribed to
(`watchers` > 0); an unwatched book is rebuilt from the current quotes when watched again,
its sequence jumping forward as on a venue that kept trading meanwhile.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from simulator.truth import (
    SECONDS_PER_YEAR,
    CurrencyTruth,
    ExpiryTruth,
    SliceTruth,
    TruthSnapshot,
)
from volmath import black76
from volstream.scenario import Scenario

FloatArray = NDArray[np.float64]
Kind = Literal["option", "future"]
# Deribit's expiration_timestamp for perpetuals (year 3000), in ns.
PERPETUAL_EXPIRY_NS = 32_503_708_800_000 * 1_000_000
_SQRT_2PI = math.sqrt(2.0 * math.pi)
# Fast-market gauge (VenueMarket._gauge): EWMA half life, and the move per second (log,
# index or 30-day ATM vol) where spreads start widening and where they are fully widened.
FAST_HALF_LIFE_S = 2.0
FAST_FROM = 0.001
FAST_FULL = 0.005
# Requote checks (VenueMarket.reprice) run when the index moved this much (log), the
# 30-day ATM vol this much, the spread widening changed, or this long passed.
CHECK_INDEX_MOVE = 0.3e-4
CHECK_VOL_MOVE = 0.0002
CHECK_EVERY_NS = 500_000_000
MAX_LATENCY_MS = 5_000.0
# Tick gaps between deeper book levels, drawn uniformly.
_GAPS = (1, 1, 1, 2, 2, 3, 4, 6)


@dataclass(frozen=True)
class QuoteStyle:
    """How a venue quotes one currency."""

    # Premium in coin per coin (inverse) rather than USD per coin.
    inverse: bool = True
    option_tick: float = 0.0005
    option_amount_step: float = 0.1
    future_tick: float = 0.5
    future_amount_step: float = 10.0
    # Decimals of the published forward/index.
    usd_decimals: int = 2
    # Half bid/ask spread in vol at the money of a liquid ~30-day option.
    half_spread_vol: float = 0.012
    future_half_spread_bps: float = 0.15
    min_depth: int = 2
    max_depth: int = 8
    # The venue's book sequence jumps by 1..N per change (Deribit change_id jumps).
    sequence_jump_max: int = 40
    # Typical best-level size in amount steps (lognormal median).
    option_median_steps: float = 30.0
    future_median_steps: float = 2_000.0
    # Coins of underlying one native premium is quoted for: a linear per-contract venue
    # (Binance `unit`) quotes USD per contract = USD per coin x this.
    premium_coins: float = 1.0
    # The venue's forward: the truth forward shifted by this many basis points, or the
    # spot index itself (Binance prices options on the index).
    forward_offset_bps: float = 0.0
    forward_from_index: bool = False
    # Decimals (as fractions) of the published mark IV and of the bid/ask IVs; the mark is
    # priced from the rounded mark IV, so the two stay consistent.
    mark_iv_decimals: int = 4
    iv_decimals: int = 4
    greek_decimals: int = 5


class Book:
    """One L2 book in integer ticks and integer amount steps."""

    __slots__ = (
        "_amount_div",
        "_price_div",
        "_price_mul",
        "asks",
        "bids",
        "ready",
        "sequence",
        "step",
        "tick",
    )

    def __init__(self, tick: float, step: float, sequence: int) -> None:
        self.tick = tick
        self.step = step
        self.sequence = sequence
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        # False until built from quotes (or after nobody watched it for a while).
        self.ready = False
        # Dividing by an exact integer gives the double nearest the decimal price (0.0015,
        # not 0.0015000000000000002) without a round() per level.
        self._price_div = _exact_inverse(tick)
        self._amount_div = _exact_inverse(step)
        # A whole-number tick (5 USDC) multiplies exactly.
        self._price_mul = tick if float(tick).is_integer() and tick >= 1 else 0.0

    def price(self, ticks: int) -> float:
        if self._price_div:
            return ticks / self._price_div
        if self._price_mul:
            return ticks * self._price_mul
        return round(ticks * self.tick, 10)

    def amount(self, steps: int) -> float:
        if self._amount_div:
            return steps / self._amount_div
        return round(steps * self.step, 8)

    def side_levels(self, bids: bool, depth: int | None = None) -> list[tuple[float, float]]:
        side = self.bids if bids else self.asks
        keys = sorted(side, reverse=bids)
        if depth is not None:
            keys = keys[:depth]
        return [(self.price(p), self.amount(side[p])) for p in keys]

    def best(self, bids: bool) -> tuple[float, float] | None:
        side = self.bids if bids else self.asks
        if not side:
            return None
        p = max(side) if bids else min(side)
        return self.price(p), self.amount(side[p])


def _exact_inverse(unit: float) -> float:
    """1/unit when that is a whole number (0.0005 -> 2000.0), else 0.0."""
    inv = round(1.0 / unit)
    if inv >= 1 and abs(inv * unit - 1.0) < 1e-12:
        return float(inv)
    return 0.0


Change = tuple[str, float, float]


@dataclass(slots=True, eq=False)
class SimInstrument:
    currency: str
    kind: Kind
    expiry_ns: int
    strike: float
    is_call: bool
    symbol: str
    tick: float
    amount_step: float
    created_ns: int
    book: Book
    # Name of the forward the venue prices on (Deribit underlying_index).
    underlying_name: str = ""
    # "day", "week", "month" or "perpetual" (the venue's settlement period).
    period: str = "month"
    state: str = "open"
    listed: bool = True
    # Static personality, drawn at listing.
    liquidity: float = 1.0
    depth: int = 4
    unquoted_itm: bool = False
    otm_ask_missing: bool = False
    open_interest: float = 0.0
    settlement_price: float = 0.0
    volume: float = 0.0
    last_price: float | None = None
    # Number of channels (any venue connection) that need this instrument's updates.
    watchers: int = 0
    weight: float = 1.0
    # Position in the market's option arrays (VenueMarket._rebuild_open); -1: none.
    slot: int = -1

    @property
    def expiry_ms(self) -> int:
        return self.expiry_ns // 1_000_000

    @property
    def is_perpetual(self) -> bool:
        return self.kind == "future" and self.expiry_ns == PERPETUAL_EXPIRY_NS


@dataclass(slots=True)
class OptionUpdate:
    inst: SimInstrument
    timestamp_ms: int
    forward: float
    index_price: float
    mark_price: float
    # Percent, 2 decimals, as the venue publishes them; 0 for an empty side.
    mark_iv: float
    bid_iv: float
    ask_iv: float
    best_bid: tuple[float, float] | None
    best_ask: tuple[float, float] | None
    delta: float
    gamma: float
    vega: float
    theta: float
    rho: float
    # Book sequence after this update and before it (equal when the book did not move).
    sequence: int = 0
    prev_sequence: int = 0
    bid_changes: list[Change] = field(default_factory=list)
    ask_changes: list[Change] = field(default_factory=list)

    @property
    def book_changed(self) -> bool:
        return bool(self.bid_changes or self.ask_changes)


@dataclass(slots=True)
class FutureUpdate:
    inst: SimInstrument
    timestamp_ms: int
    index_price: float
    mark_price: float
    best_bid: tuple[float, float] | None
    best_ask: tuple[float, float] | None
    funding: float
    sequence: int = 0
    prev_sequence: int = 0
    bid_changes: list[Change] = field(default_factory=list)
    ask_changes: list[Change] = field(default_factory=list)

    @property
    def book_changed(self) -> bool:
        return bool(self.bid_changes or self.ask_changes)


Update = OptionUpdate | FutureUpdate


@dataclass
class ListingChanges:
    listed: list[SimInstrument] = field(default_factory=list)
    expired: list[SimInstrument] = field(default_factory=list)


class Naming:
    """Venue naming of instruments (overridden per venue)."""

    def option(self, currency: str, expiry_ns: int, strike: float, is_call: bool) -> str:
        raise NotImplementedError

    def future(self, currency: str, expiry_ns: int) -> str:
        raise NotImplementedError

    def synthetic_underlying(self, currency: str, expiry_ns: int) -> str:
        raise NotImplementedError

    def lists_future(self, expiry: ExpiryTruth) -> bool:
        return expiry.spec.period != "day"

    def lists_perpetual(self) -> bool:
        return True

    def lists_option(self, expiry: ExpiryTruth, strike: float) -> bool:
        """Whether the venue lists this strike of the truth's grid (venues list subsets)."""
        return True


# ---------------------------------------------------------------------------------------
# vectorised helpers


def implied_vol_from_coin(
    price_coin: FloatArray,
    forward: FloatArray,
    strike: FloatArray,
    t: FloatArray,
    is_call: NDArray[np.bool_],
    iterations: int = 34,
    initial: FloatArray | None = None,
) -> FloatArray:
    """IV of inverse (coin) premiums; NaN where the price has no IV.

    With `initial` (a nearby vol, e.g. the mark's), Newton steps from there settle almost
    every price in a few evaluations; whatever they do not settle, and everything without
    `initial`, is bisected with `iterations` halvings of [1e-4, 12]."""
    usd = price_coin * forward
    intrinsic = np.where(
        is_call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0)
    )
    upper = np.where(is_call, forward, strike)
    valid = (usd > intrinsic) & (usd < upper) & (t > 0) & (price_coin > 0)
    out = np.full(usd.shape, np.nan)
    todo = valid
    if initial is not None and valid.any():
        idx = np.nonzero(valid)[0]
        f, k, tt, target, call = forward[idx], strike[idx], t[idx], usd[idx], is_call[idx]
        sqrt_t = np.sqrt(tt)
        sig = np.clip(initial[idx], 0.01, 5.0)
        step = np.ones_like(sig)
        for _ in range(8):
            sd = sig * sqrt_t
            d1 = (np.log(f / k) + 0.5 * sd * sd) / sd
            vega = f * np.exp(-0.5 * d1 * d1) / _SQRT_2PI * sqrt_t
            diff = black76.price(f, k, tt, sig, call) - target
            step = diff / np.maximum(vega, 1e-300)
            sig = np.clip(sig - step, 1e-4, 12.0)
        settled = (np.abs(step) < 1e-11) & (sig > 1e-4) & (sig < 12.0)
        out[idx[settled]] = sig[settled]
        todo = valid.copy()
        todo[idx[settled]] = False
    if todo.any():
        idx = np.nonzero(todo)[0]
        f, k, tt, target, call = forward[idx], strike[idx], t[idx], usd[idx], is_call[idx]
        lo = np.full(idx.shape, 1e-4)
        hi = np.full(idx.shape, 12.0)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            too_high = black76.price(f, k, tt, mid, call) > target
            hi = np.where(too_high, mid, hi)
            lo = np.where(too_high, lo, mid)
        out[idx] = 0.5 * (lo + hi)
    return np.asarray(out, dtype=np.float64)


def black_greeks(
    forward: FloatArray,
    strike: FloatArray,
    t: FloatArray,
    sigma: FloatArray,
    is_call: NDArray[np.bool_],
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Deribit-convention greeks of the USD price: delta, gamma, vega per vol point,
    theta per calendar day, rho per 1% rate."""
    sqrt_t = np.sqrt(t)
    sd = sigma * sqrt_t
    d1 = (np.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    pdf = np.exp(-0.5 * d1 * d1) / _SQRT_2PI
    nd1 = ndtr(d1)
    delta = np.where(is_call, nd1, nd1 - 1.0)
    gamma = pdf / (forward * sd)
    vega = forward * pdf * sqrt_t / 100.0
    theta = -forward * pdf * sigma / (2.0 * sqrt_t) / 365.0
    rho = np.where(is_call, strike * t * ndtr(d2), -strike * t * ndtr(-d2)) / 100.0
    return delta, gamma, vega, theta, rho


# ---------------------------------------------------------------------------------------


class VenueMarket:
    """One venue's instruments, books and quotes for one currency."""

    def __init__(
        self,
        venue: str,
        truth: CurrencyTruth,
        style: QuoteStyle,
        naming: Naming,
        seed: int,
        now_ns: int,
    ) -> None:
        self.venue = venue
        self.truth = truth
        self.currency = truth.params.currency
        self.style = style
        self.naming = naming
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.instruments: list[SimInstrument] = []
        self.by_symbol: dict[str, SimInstrument] = {}
        self._listing_version = -1
        self._weights: FloatArray = np.zeros(0)
        self._open: list[SimInstrument] = []
        # Book changes of the current update, by instrument id, until they are packed.
        self._pending: dict[int, tuple[list[Change], list[Change], int]] = {}
        # Level sizes in amount steps: lognormal draws, picked at random (cheaper per level).
        draws = self.np_rng.lognormal(0.0, 1.0, 4096)
        self._qty_option = [max(1, int(style.option_median_steps * d)) for d in draws]
        self._qty_future = [max(1, int(style.future_median_steps * d)) for d in draws]
        # Open options in slot order and their quoting state as arrays (see _rebuild_open):
        # the market maker's spread multiplier and skew (in half spreads) of its last
        # quote, the ticks it quoted (-1: not quoting, e.g. nobody watches), when a pending
        # requote is due (0: none).
        self._opts: list[SimInstrument] = []
        self._a: dict[str, NDArray[Any]] = {}
        # Fast-market gauge: EWMA of |d log index| and |d log ATM| per second.
        self._speed = 0.0
        self.widen = 1.0
        self._last_seen: tuple[int, float, float] | None = None
        self._last_check: tuple[int, float, float, float] | None = None
        self.requotes = 0
        self.sync_listings(now_ns)

    @property
    def scenario(self) -> Scenario:
        return self.truth.config.scenario

    # -- listings -----------------------------------------------------------------
    def open_instruments(self, kind: Kind | None = None) -> list[SimInstrument]:
        return [i for i in self._open if kind is None or i.kind == kind]

    def _new_instrument(
        self, kind: Kind, expiry_ns: int, strike: float, is_call: bool, now_ns: int
    ) -> SimInstrument:
        st = self.style
        if kind == "option":
            symbol = self.naming.option(self.currency, expiry_ns, strike, is_call)
            tick, step = st.option_tick, st.option_amount_step
        else:
            symbol = self.naming.future(self.currency, expiry_ns)
            tick, step = st.future_tick, st.future_amount_step
        r = self.rng
        inst = SimInstrument(
            currency=self.currency,
            kind=kind,
            expiry_ns=expiry_ns,
            strike=strike,
            is_call=is_call,
            symbol=symbol,
            tick=tick,
            amount_step=step,
            created_ns=now_ns,
            book=Book(tick, step, r.randrange(10_000_000_000, 40_000_000_000)),
            liquidity=math.exp(r.gauss(0.0, 0.3)),
            depth=r.randint(max(1, st.min_depth), st.max_depth),
            unquoted_itm=r.random() < 0.5,
            otm_ask_missing=r.random() < 0.2,
            open_interest=round(r.lognormvariate(4.0, 1.5), 1),
            volume=round(r.lognormvariate(2.0, 1.5), 1),
        )
        return inst

    def _underlying_name(self, expiry_ns: int) -> str:
        fut = self.naming.future(self.currency, expiry_ns)
        if fut in self.by_symbol and self.by_symbol[fut].state == "open":
            return fut
        return self.naming.synthetic_underlying(self.currency, expiry_ns)

    def _add(self, inst: SimInstrument) -> None:
        self.instruments.append(inst)
        self.by_symbol[inst.symbol] = inst

    def sync_listings(self, now_ns: int) -> ListingChanges:
        """Follow the truth's expiry list: list new expiries, expire past ones."""
        changes = ListingChanges()
        if self._listing_version == self.truth.listing_version:
            return changes
        self._listing_version = self.truth.listing_version
        live = {e.expiry_ns: e for e in self.truth.expiries}
        for inst in self._open:
            if not inst.is_perpetual and inst.expiry_ns not in live:
                self._close(inst)
                changes.expired.append(inst)
        if self.naming.lists_perpetual():
            perp_symbol = self.naming.future(self.currency, PERPETUAL_EXPIRY_NS)
            if perp_symbol not in self.by_symbol:
                perp = self._new_instrument("future", PERPETUAL_EXPIRY_NS, 0.0, False, now_ns)
                perp.period = "perpetual"
                self._add(perp)
                changes.listed.append(perp)
        for e in self.truth.expiries:
            if self.naming.lists_future(e):
                sym = self.naming.future(self.currency, e.expiry_ns)
                if sym not in self.by_symbol:
                    fut = self._new_instrument("future", e.expiry_ns, 0.0, False, now_ns)
                    fut.period = e.spec.period
                    self._add(fut)
                    changes.listed.append(fut)
            for strike in e.strikes:
                if not self.naming.lists_option(e, strike):
                    continue
                for is_call in (True, False):
                    sym = self.naming.option(self.currency, e.expiry_ns, strike, is_call)
                    if sym in self.by_symbol:
                        continue
                    opt = self._new_instrument("option", e.expiry_ns, strike, is_call, now_ns)
                    opt.period = e.spec.period
                    self._add(opt)
                    changes.listed.append(opt)
        for inst in changes.listed:
            if inst.kind == "option":
                inst.underlying_name = self._underlying_name(inst.expiry_ns)
        self._rebuild_open()
        return changes

    def list_strike(self, expiry_ns: int, strike: float, now_ns: int) -> list[SimInstrument]:
        """List a new strike (call and put) on an existing expiry mid-session."""
        live = {e.expiry_ns: e for e in self.truth.expiries}
        if expiry_ns not in live:
            raise ValueError(f"no live expiry at {expiry_ns}")
        out: list[SimInstrument] = []
        for is_call in (True, False):
            sym = self.naming.option(self.currency, expiry_ns, strike, is_call)
            existing = self.by_symbol.get(sym)
            if existing is not None and existing.state == "open":
                continue
            inst = self._new_instrument("option", expiry_ns, strike, is_call, now_ns)
            inst.period = live[expiry_ns].spec.period
            inst.underlying_name = self._underlying_name(expiry_ns)
            self._add(inst)
            out.append(inst)
        self._rebuild_open()
        return out

    def expire(self, inst: SimInstrument) -> None:
        self._close(inst)
        self._rebuild_open()

    def _close(self, inst: SimInstrument) -> None:
        inst.state = "closed"
        inst.listed = False
        inst.book.bids.clear()
        inst.book.asks.clear()

    def _rebuild_open(self) -> None:
        self._open = [i for i in self.instruments if i.state == "open"]
        snap = self.truth.snapshot()
        weights = []
        for inst in self._open:
            if inst.kind == "future":
                w = 3.0
            else:
                s = snap.slice_for(inst.expiry_ns)
                if s is None:
                    w = 0.5
                else:
                    z = math.log(inst.strike / s.forward) / (s.atm_vol * math.sqrt(s.t_years))
                    days = s.t_years * 365.0
                    w = (0.25 + math.exp(-0.5 * z * z)) * (1.0 + 1.0 / math.sqrt(days + 0.5))
            inst.weight = w * inst.liquidity
            weights.append(inst.weight)
        arr = np.asarray(weights, dtype=np.float64)
        self._weights = arr / arr.sum() if arr.size else arr
        self._rebuild_option_arrays()

    def _rebuild_option_arrays(self) -> None:
        old = self._a
        old_slot = {id(i): i.slot for i in self._opts}
        for inst in self._opts:
            inst.slot = -1
        opts = [i for i in self._open if i.kind == "option"]
        for j, inst in enumerate(opts):
            inst.slot = j
        prev = np.array([old_slot.get(id(i), -1) for i in opts], dtype=np.int64)
        had = prev >= 0
        n = len(opts)

        def carry(name: str, default: float | int | bool, dtype: Any) -> NDArray[Any]:
            out = np.full(n, default, dtype=dtype)
            if name in old and had.any():
                out[had] = old[name][prev[had]]
            return out

        self._a = {
            "strike": np.array([i.strike for i in opts], dtype=np.float64),
            "is_call": np.array([i.is_call for i in opts], dtype=np.bool_),
            "expiry_ns": np.array([i.expiry_ns for i in opts], dtype=np.int64),
            "expiry_ms": np.array([i.expiry_ms for i in opts], dtype=np.int64),
            "liq": np.array([i.liquidity for i in opts], dtype=np.float64),
            "unquoted_itm": np.array([i.unquoted_itm for i in opts], dtype=np.bool_),
            "otm_ask_missing": np.array([i.otm_ask_missing for i in opts], dtype=np.bool_),
            "watched": np.array([i.watchers > 0 for i in opts], dtype=np.bool_),
            "q_half": carry("q_half", 1.0, np.float64),
            "q_skew": carry("q_skew", 0.0, np.float64),
            "q_bid": carry("q_bid", -1, np.int64),
            "q_ask": carry("q_ask", -1, np.int64),
            "due_ns": carry("due_ns", 0, np.int64),
        }
        self._opts = opts

    # -- selection ------------------------------------------------------------------
    def select(self, expected_updates: float) -> list[SimInstrument]:
        """Open instruments to update this tick: independent draws with activity weights,
        about `expected_updates` of them (each at most once)."""
        n = len(self._open)
        if n == 0 or expected_updates <= 0:
            return []
        if expected_updates >= n:
            return list(self._open)
        p = self._weights * expected_updates
        # Cap at 1 and hand the excess to the others (twice is plenty).
        for _ in range(2):
            over = p > 1.0
            if not over.any():
                break
            excess = float((p[over] - 1.0).sum())
            p[over] = 1.0
            rest = ~over
            total = float(p[rest].sum())
            if total > 0:
                p[rest] *= 1.0 + excess / total
        hits = np.nonzero(self.np_rng.random(n) < p)[0]
        return [self._open[i] for i in hits]

    # -- quoting --------------------------------------------------------------------
    def _slices(self, snap: TruthSnapshot) -> dict[int, SliceTruth]:
        return {s.expiry_ns: s for s in snap.slices}

    def forward_raw(self, s: SliceTruth) -> float:
        """The venue's forward of a slice before rounding (see QuoteStyle)."""
        st = self.style
        if st.forward_from_index:
            return self.truth.snapshot().index
        if st.forward_offset_bps:
            return s.forward * (1.0 + st.forward_offset_bps * 1e-4)
        return s.forward

    def forward_published(self, s: SliceTruth) -> float:
        return round(self.forward_raw(s), self.style.usd_decimals)

    def index_published(self, snap: TruthSnapshot) -> float:
        return round(snap.index, self.style.usd_decimals)

    def update(
        self,
        insts: Sequence[SimInstrument],
        now_ns: int,
        churn: bool = True,
        quotes: bool = True,
        requote: bool = False,
    ) -> list[Update]:
        """Quote `insts` at event time `now_ns`; with `churn`, move their books too. Without
        `quotes` the options' bid/ask IVs and greeks are left 0 (for a venue whose channels
        of this update carry only the book: solving IVs is most of an update's cost).
        A `requote` keeps each market maker's spread and skew and moves only its prices
        (the truth moved); otherwise they are drawn anew (the maker's own activity)."""
        snap = self.truth.snapshot()
        ts_ms = now_ns // 1_000_000
        options = [i for i in insts if i.kind == "option" and i.state == "open"]
        futures = [i for i in insts if i.kind == "future" and i.state == "open"]
        out: list[Update] = []
        if options:
            out.extend(self._update_options(options, snap, ts_ms, churn, quotes, requote))
        if futures:
            out.extend(self._update_futures(futures, snap, ts_ms, churn))
        return out

    def _update_options(
        self,
        insts: list[SimInstrument],
        snap: TruthSnapshot,
        ts_ms: int,
        churn: bool,
        quotes: bool = True,
        requote: bool = False,
    ) -> list[Update]:
        st = self.style
        slices = self._slices(snap)
        keep = [i for i in insts if i.expiry_ns in slices and i.expiry_ms > ts_ms]
        if not keep:
            return []
        n = len(keep)
        sl = [slices[i.expiry_ns] for i in keep]
        strike = np.array([i.strike for i in keep])
        is_call = np.array([i.is_call for i in keep])
        # The smile sits on the venue's own forward (the truth forward unless the venue
        # shifts it or prices on the index).
        fwd_truth = np.array([self.forward_raw(s) for s in sl])
        fwd = np.array([self.forward_published(s) for s in sl])
        t = (
            (np.array([i.expiry_ms for i in keep], dtype=np.float64) - ts_ms)
            / 1000.0
            / SECONDS_PER_YEAR
        )
        k = np.log(strike / fwd_truth)
        a = np.array([s.raw.a for s in sl])
        b = np.array([s.raw.b for s in sl])
        rho = np.array([s.raw.rho for s in sl])
        m = np.array([s.raw.m for s in sl])
        sig = np.array([s.raw.sigma for s in sl])
        x = k - m
        w = a + b * (rho * x + np.sqrt(x * x + sig * sig))
        t_truth = np.array([s.t_years for s in sl])
        vol = np.sqrt(np.maximum(w, 1e-12) / t_truth)
        mark_iv_pct = np.round(vol * 100.0, st.mark_iv_decimals - 2)
        mark_vol = mark_iv_pct / 100.0
        mark_usd = black76.price(fwd, strike, t, mark_vol, is_call)
        mark_native = mark_usd / fwd if st.inverse else mark_usd * st.premium_coins
        delta, gamma, vega, theta, rho_g = black_greeks(fwd, strike, t, mark_vol, is_call)

        index_px = self.index_published(snap)
        bid_px: FloatArray
        ask_px: FloatArray
        if churn:
            slots = np.array([i.slot for i in keep], dtype=np.int64)
            if (slots < 0).any():
                # Not an open option of this market any more (closed meanwhile).
                keep_mask = slots >= 0
                keep = [i for i, ok in zip(keep, keep_mask.tolist(), strict=True) if ok]
                if not keep:
                    return []
                return self._update_options(keep, snap, ts_ms, churn, quotes, requote)
            bid_t, ask_t = self._quote_ticks(slots, snap, ts_ms, fresh=not requote)
            if requote:
                self.requotes += len(keep)
            bid_l = bid_t.tolist()
            ask_l = ask_t.tolist()
            for j, inst in enumerate(keep):
                self._churn(inst, bid_l[j], ask_l[j])
        updates: list[Update] = []
        best_bid = [i.book.best(True) for i in keep]
        best_ask = [i.book.best(False) for i in keep]
        ivs_l: list[float]
        greeks: list[list[float]]
        if quotes:
            bid_px = np.array([bb[0] if bb else 0.0 for bb in best_bid])
            ask_px = np.array([ba[0] if ba else 0.0 for ba in best_ask])
            both = np.concatenate([bid_px, ask_px])
            ivs = implied_vol_from_coin(
                both if st.inverse else both / np.concatenate([fwd, fwd]) / st.premium_coins,
                np.concatenate([fwd, fwd]),
                np.concatenate([strike, strike]),
                np.concatenate([t, t]),
                np.concatenate([is_call, is_call]),
                # Bisection halves a [0, 12] bracket: enough steps for the decimals published.
                iterations=34 if st.iv_decimals <= 6 else 44,
                initial=np.concatenate([vol, vol]),
            )
            ivs_pct = np.where(np.isnan(ivs), 0.0, np.round(ivs * 100.0, st.iv_decimals - 2))
            ivs_l = ivs_pct.tolist()
            greeks = np.round(
                np.stack([delta, gamma, vega, theta, rho_g]), st.greek_decimals
            ).tolist()
        else:
            ivs_l = [0.0] * (2 * n)
            greeks = [[0.0] * n] * 5
        fwd_l = fwd.tolist()
        mark_l = mark_native.tolist()
        mark_iv_l = mark_iv_pct.tolist()
        for j, inst in enumerate(keep):
            bid_ch, ask_ch, prev_seq = self._take_changes(inst)
            updates.append(
                OptionUpdate(
                    inst,
                    ts_ms,
                    fwd_l[j],
                    index_px,
                    mark_l[j],
                    mark_iv_l[j],
                    ivs_l[j],
                    ivs_l[n + j],
                    best_bid[j],
                    best_ask[j],
                    greeks[0][j],
                    greeks[1][j],
                    greeks[2][j],
                    greeks[3][j],
                    greeks[4][j],
                    inst.book.sequence,
                    prev_seq,
                    bid_ch,
                    ask_ch,
                )
            )
        return updates

    # -- market makers ------------------------------------------------------------------
    def _quote_ticks(
        self, idx: NDArray[np.int64], snap: TruthSnapshot, ts_ms: int, fresh: bool
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Bid and ask (in ticks, 0: no quote) the market makers of the options at slots
        `idx` quote now on the truth; `fresh` draws each maker's spread multiplier and skew
        anew, else they are kept (a requote moves prices, not the maker's view). Records
        the quote as the slots' current one. Every slot's expiry must be in `snap`."""
        st = self.style
        a = self._a
        n = idx.size
        slices = self._slices(snap)
        uniq, inv = np.unique(a["expiry_ns"][idx], return_inverse=True)
        sl = [slices[e] for e in uniq.tolist()]

        def per_slice(values: list[float]) -> FloatArray:
            return np.asarray(values, dtype=np.float64)[inv]

        fwd_truth = per_slice([self.forward_raw(x) for x in sl])
        fwd = per_slice([self.forward_published(x) for x in sl])
        t_truth = per_slice([x.t_years for x in sl])
        atm = per_slice([x.atm_vol for x in sl])
        strike = a["strike"][idx]
        is_call = a["is_call"][idx]
        t = (a["expiry_ms"][idx] - ts_ms).astype(np.float64) / 1000.0 / SECONDS_PER_YEAR
        k = np.log(strike / fwd_truth)
        x = k - per_slice([s.raw.m for s in sl])
        sig = per_slice([s.raw.sigma for s in sl])
        w = per_slice([s.raw.a for s in sl]) + per_slice([s.raw.b for s in sl]) * (
            per_slice([s.raw.rho for s in sl]) * x + np.sqrt(x * x + sig * sig)
        )
        vol = np.sqrt(np.maximum(w, 1e-12) / t_truth)
        mark_vol = np.round(vol * 100.0, st.mark_iv_decimals - 2) / 100.0
        native_scale = 1.0 / fwd if st.inverse else np.full(n, st.premium_coins)
        mark_native = black76.price(fwd, strike, t, mark_vol, is_call) * native_scale
        sd = mark_vol * np.sqrt(t)
        call_delta = ndtr((np.log(fwd / strike) + 0.5 * sd * sd) / sd)
        deep_itm = np.where(is_call, call_delta, 1.0 - call_delta) > 0.93
        if fresh:
            noise = self.np_rng.standard_normal((2, n))
            a["q_half"][idx] = np.exp(0.25 * noise[0])
            a["q_skew"][idx] = np.clip(0.3 * noise[1], -0.7, 0.7)
        z = np.abs(k) / (atm * np.sqrt(t_truth))
        days = np.maximum(t_truth * 365.0, 0.05)
        half = st.half_spread_vol * (1.0 + 0.8 * z) * (1.0 + 0.5 / np.sqrt(days)) / a["liq"][idx]
        half *= a["q_half"][idx] * self.widen
        skew = a["q_skew"][idx] * half
        bid_vol = vol + skew - half
        ask_vol = vol + skew + half
        bid_raw = np.where(
            bid_vol > 0.02,
            black76.price(fwd, strike, t, np.maximum(bid_vol, 0.02), is_call) * native_scale,
            0.0,
        )
        ask_raw = black76.price(fwd, strike, t, ask_vol, is_call) * native_scale
        tick = st.option_tick
        # Bids round down, asks up, to the tick: a deep OTM ask sits at the minimum tick.
        bid_ticks = np.floor(bid_raw / tick + 1e-9).astype(np.int64)
        ask_ticks = np.ceil(ask_raw / tick - 1e-9).astype(np.int64)
        ask_ticks = np.maximum(ask_ticks, np.maximum(bid_ticks + 1, 1))
        # Worth under half a tick: offered at the minimum tick (makers compete down to it).
        ask_ticks[mark_native < 0.5 * tick] = 1
        gone = deep_itm & a["unquoted_itm"][idx]
        bid_ticks[gone] = 0
        ask_ticks[gone] = 0
        ask_ticks[(mark_native < 0.3 * tick) & a["otm_ask_missing"][idx]] = 0
        a["q_bid"][idx] = bid_ticks
        a["q_ask"][idx] = ask_ticks
        a["due_ns"][idx] = 0
        return bid_ticks, ask_ticks

    def _gauge(self, snap: TruthSnapshot, now_ns: int) -> None:
        """Update the fast-market gauge and the spread widening it implies."""
        atm = self.truth.atm_vol_curve(30.0 / 365.0)
        last = self._last_seen
        self._last_seen = (now_ns, snap.index, atm)
        if last is None or now_ns <= last[0]:
            return
        dt = (now_ns - last[0]) / 1e9
        rate = max(abs(math.log(snap.index / last[1])), abs(math.log(atm / last[2]))) / dt
        self._speed += (1.0 - 2.0 ** (-dt / FAST_HALF_LIFE_S)) * (rate - self._speed)
        fast = min(1.0, max(0.0, (self._speed - FAST_FROM) / (FAST_FULL - FAST_FROM)))
        # Quarter steps: a gauge that wobbles must not requote every option every tick.
        self.widen = 1.0 + round(4.0 * fast * self.scenario.spread_widening) / 4.0

    def reprice(self, now_ns: int) -> int:
        """Schedule a requote, after a drawn latency, of every watched option whose maker's
        price moved by a tick since it last quoted (the index, forward, smile or spread
        moved); returns how many were scheduled. A price that did not move by a tick stays."""
        a = self._a
        if not self._opts:
            return 0
        snap = self.truth.snapshot()
        widen_before = self.widen
        self._gauge(snap, now_ns)
        atm = self.truth.atm_vol_curve(30.0 / 365.0)
        last = self._last_check
        if (
            last is not None
            and self.widen == widen_before
            and now_ns - last[0] < CHECK_EVERY_NS
            and abs(math.log(snap.index / last[1])) < CHECK_INDEX_MOVE
            and abs(atm - last[2]) < CHECK_VOL_MOVE
        ):
            # Nothing moved enough to shift a price by a tick since the last look.
            return 0
        self._last_check = (now_ns, snap.index, atm, self.widen)
        ts_ms = now_ns // 1_000_000
        slices = self._slices(snap)
        live = (
            a["watched"]
            & (a["q_bid"] >= 0)
            & (a["due_ns"] == 0)
            & np.isin(a["expiry_ns"], np.fromiter(slices, dtype=np.int64, count=len(slices)))
            & (a["expiry_ms"] > ts_ms)
        )
        idx = np.nonzero(live)[0]
        if idx.size == 0:
            return 0
        held = (a["q_bid"][idx].copy(), a["q_ask"][idx].copy())
        bid_t, ask_t = self._quote_ticks(idx, snap, ts_ms, fresh=False)
        moved = (bid_t != held[0]) | (ask_t != held[1])
        # Only the moved ones get a new quote now: the rest keep theirs.
        a["q_bid"][idx] = np.where(moved, held[0], bid_t)
        a["q_ask"][idx] = np.where(moved, held[1], ask_t)
        hit = idx[moved]
        if hit.size:
            a["due_ns"][hit] = now_ns + self.latency_ns(hit.size)
        return int(hit.size)

    def latency_ns(self, n: int) -> NDArray[np.int64]:
        """`n` requote latencies: lognormal, a `lag_fraction` of them from slow makers."""
        sc = self.scenario
        rng = self.np_rng
        slow = rng.random(n) < sc.lag_fraction
        median_ms = np.where(slow, sc.lag_latency_ms, sc.latency_ms)
        ms = median_ms * np.exp(sc.latency_sigma * rng.standard_normal(n))
        capped: FloatArray = np.maximum(np.minimum(ms, MAX_LATENCY_MS) * 1e6, 1.0)
        return capped.astype(np.int64)

    def due(self, now_ns: int) -> list[SimInstrument]:
        """Options whose requote is due by `now_ns`, earliest first."""
        d = self._a.get("due_ns")
        if d is None or not d.size:
            return []
        idx = np.nonzero((d > 0) & (d <= now_ns))[0]
        idx = idx[np.argsort(d[idx], kind="stable")]
        return [self._opts[i] for i in idx.tolist()]

    def _update_futures(
        self, insts: list[SimInstrument], snap: TruthSnapshot, ts_ms: int, churn: bool
    ) -> list[Update]:
        st = self.style
        slices = self._slices(snap)
        out: list[Update] = []
        index_px = self.index_published(snap)
        for inst in insts:
            if inst.is_perpetual:
                fair = snap.index * (1.0 + snap.perpetual_premium)
            else:
                s = slices.get(inst.expiry_ns)
                if s is None:
                    continue
                fair = self.forward_raw(s)
            mark = round(fair, st.usd_decimals)
            if churn:
                half = max(
                    st.future_tick,
                    fair * st.future_half_spread_bps * 1e-4 * math.exp(0.3 * self.rng.gauss(0, 1)),
                )
                skew = self.rng.uniform(-0.5, 0.5) * half
                bt = math.floor((fair + skew - half) / st.future_tick)
                at = max(math.ceil((fair + skew + half) / st.future_tick), bt + 1)
                self._churn(inst, bt, at)
            bid_ch, ask_ch, prev_seq = self._take_changes(inst)
            out.append(
                FutureUpdate(
                    inst=inst,
                    timestamp_ms=ts_ms,
                    index_price=index_px,
                    mark_price=mark,
                    best_bid=inst.book.best(True),
                    best_ask=inst.book.best(False),
                    funding=snap.perpetual_premium if inst.is_perpetual else 0.0,
                    sequence=inst.book.sequence,
                    prev_sequence=prev_seq,
                    bid_changes=bid_ch,
                    ask_changes=ask_ch,
                )
            )
        return out

    # -- books ------------------------------------------------------------------------
    def _take_changes(self, inst: SimInstrument) -> tuple[list[Change], list[Change], int]:
        pending = self._pending.pop(id(inst), None)
        if pending is None:
            return [], [], inst.book.sequence
        return pending

    def _rand_qty(self, inst: SimInstrument) -> int:
        table = self._qty_option if inst.kind == "option" else self._qty_future
        return table[self.rng.getrandbits(12)]

    def _target_side(
        self, inst: SimInstrument, old: dict[int, int], best: int, bids: bool
    ) -> dict[int, int]:
        if best <= 0:
            return {}
        r = self.rng
        if bids:
            new = {p: q for p, q in old.items() if p < best}
        else:
            new = {p: q for p, q in old.items() if p > best}
        new[best] = old.get(best) or self._rand_qty(inst)
        if r.random() < 0.35:
            p = r.choice(list(new))
            new[p] = self._rand_qty(inst)
        if len(new) > 1 and r.random() < 0.2:
            deep = [p for p in new if p != best]
            del new[r.choice(deep)]
        far = min(new) if bids else max(new)
        while len(new) < inst.depth:
            gap = _GAPS[r.getrandbits(3)]
            far = far - gap if bids else far + gap
            if far < 1:
                break
            new[far] = self._rand_qty(inst)
        if len(new) > self.style.max_depth:
            ordered = sorted(new, reverse=bids)
            new = {p: new[p] for p in ordered[: self.style.max_depth]}
        return new

    def _diff(self, book: Book, old: dict[int, int], new: dict[int, int]) -> list[Change]:
        out: list[Change] = []
        for p, q in new.items():
            oq = old.get(p)
            if oq is None:
                out.append(("new", book.price(p), book.amount(q)))
            elif oq != q:
                out.append(("change", book.price(p), book.amount(q)))
        for p in old:
            if p not in new:
                out.append(("delete", book.price(p), 0.0))
        return out

    def _churn(self, inst: SimInstrument, best_bid: int, best_ask: int) -> None:
        book = inst.book
        r = self.rng
        if book.ready:
            # A side whose best price holds is left alone half the time: most venue
            # changes touch one side only.
            cur_bid = max(book.bids) if book.bids else 0
            cur_ask = min(book.asks) if book.asks else 0
            touch_bids = cur_bid != best_bid or r.random() < 0.5
            touch_asks = cur_ask != best_ask or r.random() < 0.5
            if not touch_bids and not touch_asks:
                touch_bids = r.random() < 0.5
                touch_asks = not touch_bids
        else:
            touch_bids = touch_asks = True
        new_bids = self._target_side(inst, book.bids, best_bid, True) if touch_bids else book.bids
        new_asks = self._target_side(inst, book.asks, best_ask, False) if touch_asks else book.asks
        bid_changes = self._diff(book, book.bids, new_bids) if touch_bids else []
        ask_changes = self._diff(book, book.asks, new_asks) if touch_asks else []
        if not bid_changes and not ask_changes and (new_bids or new_asks):
            # A selected book always moves: resize the best level of a non-empty side.
            if new_bids:
                new_bids = dict(new_bids)
                p = max(new_bids)
                new_bids[p] += r.randint(1, 5)
                bid_changes = [("change", book.price(p), book.amount(new_bids[p]))]
            else:
                new_asks = dict(new_asks)
                p = min(new_asks)
                new_asks[p] += r.randint(1, 5)
                ask_changes = [("change", book.price(p), book.amount(new_asks[p]))]
        prev_sequence = book.sequence
        if bid_changes or ask_changes:
            book.sequence += r.randint(1, self.style.sequence_jump_max)
        if not book.ready:
            # A (re)built book: its first state is a snapshot, not a change.
            book.ready = True
            bid_changes, ask_changes = [], []
            book.sequence += r.randint(1_000, 100_000)
            prev_sequence = book.sequence
        book.bids = new_bids
        book.asks = new_asks
        self._pending[id(inst)] = (bid_changes, ask_changes, prev_sequence)

    def ensure_book(self, inst: SimInstrument, now_ns: int) -> None:
        """Build the book from current quotes if it is not live (before a snapshot)."""
        self.ensure_books([inst], now_ns)

    def ensure_books(self, insts: Sequence[SimInstrument], now_ns: int) -> None:
        """`ensure_book` for many instruments at once (one vectorised quote)."""
        stale = [i for i in insts if not i.book.ready and i.state == "open"]
        if stale:
            self.update(stale, now_ns, churn=True)

    def set_watched(self, inst: SimInstrument, delta: int) -> None:
        inst.watchers = max(0, inst.watchers + delta)
        if inst.slot >= 0:
            self._a["watched"][inst.slot] = inst.watchers > 0
        if inst.watchers == 0:
            # Nobody sees it: stop moving it; it is rebuilt when watched again.
            inst.book.ready = False
            if inst.slot >= 0:
                self._a["q_bid"][inst.slot] = -1
                self._a["q_ask"][inst.slot] = -1
                self._a["due_ns"][inst.slot] = 0
