"""Pure implied-vol core for one partition (venue, currency): no I/O, no wall clock.

Inputs coalesce (the latest value wins per instrument) and are written straight into
per-expiry numpy arrays; `flush(now_ns)` solves what changed and returns one `Smile` per
expiry whose inputs changed since the previous flush. Every price side that needs solving
(bids, asks, marks), across all the expiries of a flush, goes through one vectorised
`implied_vol` call (its cost is mostly per call: one call per expiry cost twice as much).

Forward policy (`IvConfig.forward_policy`, CLI `--iv-forward-policy`, docs/quant.md section 2):
- "current" (default, the venues' convention): every price of an expiry is solved on the
  expiry's current forward, as Deribit, OKX and Bybit compute their own bid_iv/ask_iv.
  Market makers requote within a fraction of a second of an index move, and a price that
  did not move by a tick is not stale. A forward move therefore re-solves every quote of
  the expiries priced on it (one vectorised solver call per flush, like any other).
- "quote" (issue 6's choice): each price on the forward in force when it last changed (the
  quote's own forward). Per expiry and forward input (venue forward, future mid, put-call
  parity, index) a short `ForwardHistory` of (event time, forward) is kept; when a price
  changes its side is pinned, at the next flush, to the entry in force at the change's
  event time. Bid and ask share one time (a re-quote prices both sides); the mark has its
  own. A change of forward input (say parity -> venue forward) re-pins every quote to the
  new input's history: inputs may differ by a basis.
Behind the forward (SmileQuote.behind_forward, "current" policy only): a quote whose price
has not changed since the forward moved by enough to take its fair value outside its own
bid/ask is flagged, and the surface leaves it out until its maker requotes. At a fixed vol
a fair premium moves by delta x dF when the forward moves by dF; the quote's USD premium
moves by d_usd_per_coin_d_forward x dF (the coin price for inverse options, 0 for USD
premiums). When the two differ by more than the half spread the quote would be picked off
at a real venue, so it is no longer the maker's view; a move that leaves the fair value
inside the band (most moves in a quiet market, any move of a deep wing at the minimum tick)
flags nothing, so the venues' convention stands. dF is measured from the forward in force
`behind_forward_grace_s` after the price's change: a requote can arrive a little before the
ticker carrying the forward it was made on.
Either way SmileQuote.log_moneyness = log(K / the quote's forward); greeks use the current
forward at the quote's IV; USD prices are at the quote's forward. Measured side by side
(IV vs the venues' own IVs on the recordings): bench/bench_iv_venues.py.

Less work when only time moved: a quote whose price and forward did not change keeps its
USD price and strike, so s = sigma sqrt(T) is pinned and its IV is exactly s / sqrt(T). The
flush keeps the previous IVs when no IV would move by `skip_iv_bp` (with a safety factor),
else applies that exact time update; only changed or re-pinned quotes go to the solver.
Bound checks (intrinsic, upper bound) do not depend on T, so they cannot flip either.
`stats` counts each outcome.

Conventions and choices:
- best bid/ask come from the book service (TopOfBook); a ticker's bid/ask is used only for a
  symbol that has never had a TopOfBook (venues or replays with tickers only);
- a ticker replaces the mark and the venue IVs of its symbol (an absent field: none);
- a venue forward equal to the same ticker's index price (Binance prices on the spot index)
  is reported as FORWARD_SOURCE_INDEX;
- a book that is not VALID has no prices (MISSING_PRICE) and is flagged stale;
- mid IV = mean of the bid and ask IVs when both exist; greeks at the mid IV, else the mark IV;
- a future's TopOfBook / ticker mid is taken as USD per coin;
- an index move marks dirty only the expiries priced on the index (or without a forward),
  a future move only those not priced on a venue forward: an input below the one in use
  cannot change the smile;
- events for symbols not in the latest InstrumentSet are kept (latest per symbol, bounded)
  and applied when the symbol is listed; instruments missing from a new set are dropped.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
from numpy.typing import NDArray

from svc_iv.forward import (
    NO_FORWARD,
    ForwardEstimate,
    ForwardHistory,
    choose_forward,
    parity_forward,
)
from svc_iv.normalise import (
    COIN_PER_COIN,
    USD_PER_CONTRACT,
    d_usd_per_coin_d_forward,
    premium_usd_per_coin,
    years_to_expiry,
)
from svc_iv.solver import (
    BAD_INPUT,
    DEFAULT_HALLEY_STEPS,
    MISSING_PRICE,
    OK,
    StatusArray,
    implied_vol,
)
from svc_iv.wire import QuoteEncoder, time_varints
from volmath import black76
from volstream.config import IV_FORWARD_POLICIES
from volstream.v1 import book_pb2 as book_pb
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import iv_pb2 as iv_pb
from volstream.v1 import market_data_pb2 as md_pb

Array = NDArray[np.float64]
Mask = NDArray[np.bool_]

SOURCE: Final = "svc_iv"
BID: Final = 0
ASK: Final = 1
MARK: Final = 2
_SIDES: Final = 3
_BP: Final = 1e-4
# Which forward each price is solved on (module docstring).
FORWARD_CURRENT: Final = "current"
FORWARD_QUOTE: Final = "quote"
FORWARD_POLICIES: Final = IV_FORWARD_POLICIES

# Rank of each forward source (lower is preferred); used to decide what an input move can change.
_RANK: Final[dict[int, int]] = {
    common_pb.FORWARD_SOURCE_VENUE: 0,
    common_pb.FORWARD_SOURCE_FUTURE: 1,
    common_pb.FORWARD_SOURCE_PUT_CALL_PARITY: 2,
    common_pb.FORWARD_SOURCE_INDEX: 3,
    common_pb.FORWARD_SOURCE_UNSPECIFIED: 4,
}


@dataclass(frozen=True, slots=True)
class IvConfig:
    halley_steps: int = DEFAULT_HALLEY_STEPS
    # "current": every price on the expiry's current forward; "quote": on the forward in
    # force when the price last changed (module docstring).
    forward_policy: str = FORWARD_CURRENT
    # Near-ATM strikes in the put-call-parity median.
    parity_strikes: int = 5
    # False: every flush re-solves every quote of a changed expiry.
    incremental: bool = True
    # Time-only moves below this (bp of vol) keep the previous IVs: every kept IV stays
    # within 0.5 bp of a full re-solve (bench/bench_iv_work.py).
    skip_iv_bp: float = 0.5
    # Keep only below skip_iv_bp / safety_factor.
    skip_safety_factor: float = 2.0
    # ForwardHistory bounds: about a minute of forward changes per input, at most this many.
    # Only the gap between a price change and the next flush (plus the arrival skew between
    # forward inputs and books) must be covered: a quote is pinned once per price change.
    forward_history_s: float = 60.0
    forward_history_entries: int = 512
    # A price counts as made on the forward in force this long after its change (module
    # docstring: books and the tickers carrying the forward arrive on separate channels).
    behind_forward_grace_s: float = 0.2
    # Bound on remembered events for symbols not (yet) in the InstrumentSet.
    max_pending_symbols: int = 10_000
    source: str = SOURCE

    def __post_init__(self) -> None:
        if self.forward_policy not in FORWARD_POLICIES:
            raise ValueError(
                f"forward_policy: {self.forward_policy!r} must be one of "
                f"{', '.join(FORWARD_POLICIES)}"
            )


@dataclass(slots=True)
class IvCoreStats:
    flushes: int = 0
    smiles_emitted: int = 0
    # Each emitted expiry in exactly one bucket: every quote solved; some solved; none
    # solved but some updated for time (IV = s / sqrt(T), exact); none solved or updated.
    full_solves: int = 0
    partial_solves: int = 0
    time_updates: int = 0
    skipped_solves: int = 0
    # Per quote (an instrument with its bid, ask and mark).
    quotes_solved: int = 0
    quotes_time_updated: int = 0
    quotes_skipped: int = 0
    # Price sides passed to implied_vol.
    prices_solved: int = 0
    instrument_sets: int = 0
    # Events for symbols outside the latest InstrumentSet (kept as pending).
    unknown_symbol_events: int = 0
    # InstrumentSets or instruments of another venue/currency, options without call/put.
    ignored: int = 0
    expiries_dropped: int = 0


def _worst_per_quote(moves: Array, ok: Mask) -> Array:
    """Largest |IV move| over each quote's solvable sides; infinite when one is not finite."""
    size = np.where(ok, np.abs(moves), 0.0)
    size = np.where(ok & ~np.isfinite(moves), np.inf, size)
    return np.asarray(size.max(axis=0), dtype=np.float64)


def _unconvertible_is_bad(status: StatusArray, native: Array, usd: Array) -> StatusArray:
    """A price that exists but has no USD value (unknown unit, bad contract size) is bad
    input, not a missing price."""
    return np.where(
        (status == MISSING_PRICE) & np.isfinite(native) & np.isnan(usd), BAD_INPUT, status
    ).astype(np.int8)


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _opt(message: object, name: str) -> float:
    """An optional double field as float, NaN when absent."""
    if message.HasField(name):  # type: ignore[attr-defined]
        return float(getattr(message, name))
    return math.nan


def _iso_date(expiry_time_ns: int) -> str:
    try:
        return datetime.fromtimestamp(expiry_time_ns / 1e9, tz=UTC).date().isoformat()
    except (ValueError, OverflowError, OSError):
        return ""


@dataclass(slots=True)
class _FutureQuote:
    bid: float = math.nan
    ask: float = math.nan
    top_seen: bool = False

    @property
    def mid(self) -> float:
        if self.bid > 0.0 and self.ask >= self.bid and math.isfinite(self.ask):
            return 0.5 * (self.bid + self.ask)
        return math.nan


class _Expiry:
    """Inputs and results of every option of one expiry, as arrays indexed by slot."""

    def __init__(
        self, expiry_ns: int, instruments: list[md_pb.Instrument], config: IvConfig
    ) -> None:
        self.expiry_ns = expiry_ns
        self.label = _iso_date(expiry_ns)
        ordered = sorted(
            instruments,
            key=lambda i: (i.strike_usd, i.option_kind != common_pb.OPTION_KIND_CALL, i.symbol),
        )
        n = len(ordered)
        self.n = n
        self.symbols = [i.symbol for i in ordered]
        self.slot = {s: j for j, s in enumerate(self.symbols)}
        self.kind = np.array([i.option_kind for i in ordered], dtype=np.int32)
        self.strike = np.array([i.strike_usd for i in ordered], dtype=np.float64)
        self.is_call = self.kind == common_pb.OPTION_KIND_CALL
        self.unit = np.array([i.premium_unit for i in ordered], dtype=np.int32)
        self.size = np.array([i.contract_size_coin for i in ordered], dtype=np.float64)
        self.tick = np.array([i.tick_size_native for i in ordered], dtype=np.float64)
        self.static = [_static_key(i) for i in ordered]
        self.encoder = QuoteEncoder(self.symbols)
        # Inputs.
        self.price = np.full((_SIDES, n), np.nan)  # native bid, ask, mark
        self.bid_size = np.full(n, np.nan)
        self.ask_size = np.full(n, np.nan)
        self.top_seen = np.zeros(n, dtype=bool)
        self.top_one_sided = np.zeros(n, dtype=bool)
        self.top_crossed = np.zeros(n, dtype=bool)
        self.top_stale = np.zeros(n, dtype=bool)
        self.venue_iv = np.full((_SIDES, n), np.nan)
        self.quote_time = np.zeros(n, dtype=np.int64)
        self.venue_forward = math.nan
        self.venue_forward_time = -1
        # The venue prices on its spot index (Binance): the forward is labelled INDEX.
        self.venue_forward_is_index = False
        # Histories of this expiry's own forward inputs (the index's is the core's).
        window_ns = int(config.forward_history_s * 1e9)
        entries = config.forward_history_entries
        self.venue_history = ForwardHistory(window_ns, entries)
        self.future_history = ForwardHistory(window_ns, entries)
        self.parity_history = ForwardHistory(window_ns, entries)
        # Per side (bid, ask, mark): event time of the last price change (0: unknown, the
        # oldest forward kept applies), the own forward and whether it must be looked up.
        self.price_ns = np.zeros((_SIDES, n), dtype=np.int64)
        self.latest_price_ns = 0
        self.quote_forward = np.full((_SIDES, n), np.nan)
        self.pin_pending = np.ones((_SIDES, n), dtype=bool)
        # The history the pins come from; another one re-pins every quote.
        self.pin_history: ForwardHistory | None = None
        # Change tracking.
        self.price_changed = np.ones(n, dtype=bool)
        self.dirty = True
        self.forward_source: int = common_pb.FORWARD_SOURCE_UNSPECIFIED
        # Results and the anchor of each quote's last solve.
        self.iv = np.full((_SIDES, n), np.nan)
        self.status = np.zeros((_SIDES, n), dtype=np.int8)
        self.solved = np.zeros(n, dtype=bool)
        self.anchor_s = np.full((_SIDES, n), np.nan)
        # Call/put pairs per strike for put-call parity.
        calls = {i.strike_usd: j for j, i in enumerate(ordered) if self.is_call[j]}
        puts = {
            i.strike_usd: j
            for j, i in enumerate(ordered)
            if i.option_kind == common_pb.OPTION_KIND_PUT
        }
        common = sorted(set(calls) & set(puts))
        self.pair_call = np.array([calls[k] for k in common], dtype=np.intp)
        self.pair_put = np.array([puts[k] for k in common], dtype=np.intp)

    def adopt(self, old: _Expiry) -> None:
        """Carry the inputs of surviving symbols over from the previous structure."""
        mine = [j for j, s in enumerate(self.symbols) if s in old.slot]
        theirs = [old.slot[self.symbols[j]] for j in mine]
        if not mine:
            return
        a = np.array(mine, dtype=np.intp)
        b = np.array(theirs, dtype=np.intp)
        self.price[:, a] = old.price[:, b]
        self.venue_iv[:, a] = old.venue_iv[:, b]
        self.price_ns[:, a] = old.price_ns[:, b]
        self.quote_forward[:, a] = old.quote_forward[:, b]
        self.pin_pending[:, a] = old.pin_pending[:, b]
        for name in (
            "bid_size",
            "ask_size",
            "top_seen",
            "top_one_sided",
            "top_crossed",
            "top_stale",
            "quote_time",
        ):
            getattr(self, name)[a] = getattr(old, name)[b]
        self.venue_forward = old.venue_forward
        self.venue_forward_time = old.venue_forward_time
        self.venue_forward_is_index = old.venue_forward_is_index
        self.forward_source = old.forward_source
        self.venue_history = old.venue_history
        self.future_history = old.future_history
        self.parity_history = old.parity_history
        self.latest_price_ns = old.latest_price_ns
        self.pin_history = old.pin_history


def _static_key(i: md_pb.Instrument) -> tuple[object, ...]:
    return (
        i.option_kind,
        i.strike_usd,
        i.premium_unit,
        i.contract_size_coin,
        i.tick_size_native,
        i.expiry_time_ns,
    )


@dataclass(slots=True)
class _Plan:
    """One dirty expiry in a flush: its forward, T, USD prices and what to do per quote."""

    expiry: _Expiry
    forward: ForwardEstimate
    history: ForwardHistory | None
    t: float
    usd: Array
    solve_idx: NDArray[np.intp]
    time_update: Mask
    skipped: Mask
    estimate: Array


class IvCore:
    """Implied vols for one (venue, currency) partition; see the module docstring."""

    def __init__(self, venue: str, currency: str, config: IvConfig | None = None) -> None:
        self.venue = venue
        self.currency = currency
        self.config = config or IvConfig()
        self.stats = IvCoreStats()
        self._expiries: dict[int, _Expiry] = {}
        self._option_expiry: dict[str, int] = {}
        self._future_expiry: dict[str, int] = {}
        self._futures: dict[int, dict[str, _FutureQuote]] = {}
        self._index_usd = math.nan
        self._index_time = -1
        self._index_history = ForwardHistory(
            int(self.config.forward_history_s * 1e9), self.config.forward_history_entries
        )
        self._sequence = 0
        self._pending_tops: OrderedDict[str, book_pb.TopOfBook] = OrderedDict()
        self._pending_tickers: OrderedDict[str, md_pb.VenueTicker] = OrderedDict()
        self._known = False

    # ----------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------
    def on_instruments(self, s: md_pb.InstrumentSet) -> None:
        if not self._mine(s.venue, s.currency):
            self.stats.ignored += 1
            return
        self.stats.instrument_sets += 1
        options: dict[int, list[md_pb.Instrument]] = {}
        futures: dict[str, int] = {}
        latest = {inst.symbol: inst for inst in s.instruments}  # a repeated symbol: last wins
        for inst in latest.values():
            if not self._mine(inst.venue, inst.currency):
                self.stats.ignored += 1
            elif inst.kind == md_pb.INSTRUMENT_KIND_OPTION:
                if inst.option_kind in (common_pb.OPTION_KIND_CALL, common_pb.OPTION_KIND_PUT):
                    options.setdefault(inst.expiry_time_ns, []).append(inst)
                else:
                    self.stats.ignored += 1
            elif inst.kind == md_pb.INSTRUMENT_KIND_FUTURE:
                futures[inst.symbol] = inst.expiry_time_ns
        expiries: dict[int, _Expiry] = {}
        for expiry_ns, insts in options.items():
            old = self._expiries.get(expiry_ns)
            new = _Expiry(expiry_ns, insts, self.config)
            if old is not None and old.symbols == new.symbols and old.static == new.static:
                expiries[expiry_ns] = old
                continue
            if old is not None:
                new.adopt(old)
            expiries[expiry_ns] = new
        self._expiries = expiries
        self._option_expiry = {sym: e.expiry_ns for e in expiries.values() for sym in e.symbols}
        old_futures = self._futures
        self._future_expiry = futures
        self._futures = {}
        for sym, expiry_ns in futures.items():
            quote = old_futures.get(expiry_ns, {}).get(sym, _FutureQuote())
            self._futures.setdefault(expiry_ns, {})[sym] = quote
        self._known = True
        for sym in [p for p in self._pending_tops if self._is_known(p)]:
            self.on_top(self._pending_tops.pop(sym))
        for sym in [p for p in self._pending_tickers if self._is_known(p)]:
            self.on_ticker(self._pending_tickers.pop(sym))

    def on_top(self, t: book_pb.TopOfBook) -> None:
        expiry_ns = self._option_expiry.get(t.symbol)
        valid = t.status == book_pb.BOOK_STATUS_VALID
        bid = _opt(t, "best_bid_price_native") if valid else math.nan
        ask = _opt(t, "best_ask_price_native") if valid else math.nan
        if expiry_ns is None:
            future_expiry = self._future_expiry.get(t.symbol)
            if future_expiry is None:
                self._remember(self._pending_tops, t)
                return
            quote = self._futures[future_expiry][t.symbol]
            quote.top_seen = True
            if not (_same(quote.bid, bid) and _same(quote.ask, ask)):
                quote.bid, quote.ask = bid, ask
                self._future_moved(future_expiry, t.header.event_time_ns)
            return
        e = self._expiries[expiry_ns]
        j = e.slot[t.symbol]
        e.top_seen[j] = True
        self._set_prices(e, j, bid, ask, t.header.event_time_ns)
        e.bid_size[j] = _opt(t, "best_bid_size_native") if valid else math.nan
        e.ask_size[j] = _opt(t, "best_ask_size_native") if valid else math.nan
        e.top_one_sided[j] = t.one_sided
        e.top_crossed[j] = t.crossed
        e.top_stale[j] = t.stale or not valid
        e.quote_time[j] = max(int(e.quote_time[j]), t.header.event_time_ns)
        e.dirty = True

    def on_ticker(self, t: md_pb.VenueTicker) -> None:
        expiry_ns = self._option_expiry.get(t.symbol)
        event_ns = t.header.event_time_ns
        index = _opt(t, "index_price_usd")
        if math.isfinite(index) and index > 0.0:
            self._set_index(index, event_ns)
        if expiry_ns is None:
            future_expiry = self._future_expiry.get(t.symbol)
            if future_expiry is None:
                self._remember(self._pending_tickers, t)
                return
            quote = self._futures[future_expiry][t.symbol]
            if not quote.top_seen:
                bid = _opt(t, "best_bid_price_native")
                ask = _opt(t, "best_ask_price_native")
                if not (_same(quote.bid, bid) and _same(quote.ask, ask)):
                    quote.bid, quote.ask = bid, ask
                    self._future_moved(future_expiry, event_ns)
            return
        e = self._expiries[expiry_ns]
        j = e.slot[t.symbol]
        mark = _opt(t, "mark_price_native")
        if not _same(float(e.price[MARK, j]), mark):
            e.price[MARK, j] = mark
            e.price_changed[j] = True
            self._price_moved(e, MARK, j, event_ns)
        if not e.top_seen[j]:
            self._set_prices(
                e, j, _opt(t, "best_bid_price_native"), _opt(t, "best_ask_price_native"), event_ns
            )
            e.bid_size[j] = _opt(t, "best_bid_size_native")
            e.ask_size[j] = _opt(t, "best_ask_size_native")
        e.venue_iv[BID, j] = _opt(t, "bid_iv")
        e.venue_iv[ASK, j] = _opt(t, "ask_iv")
        e.venue_iv[MARK, j] = _opt(t, "mark_iv")
        forward = _opt(t, "forward_usd")
        if math.isfinite(forward) and forward > 0.0 and event_ns >= e.venue_forward_time:
            # Recorded at its own event time: a quote re-priced after it is on it.
            e.venue_history.record(event_ns, forward)
            e.venue_forward = forward
            e.venue_forward_time = event_ns
            e.venue_forward_is_index = forward == index
        e.quote_time[j] = max(int(e.quote_time[j]), event_ns)
        e.dirty = True

    def on_market_data(self, event: md_pb.MarketDataEvent) -> None:
        """Route a connector event: instrument sets, tickers and index prices; book events
        are the book service's business and are ignored here."""
        kind = event.WhichOneof("event")
        if kind == "instrument_set":
            self.on_instruments(event.instrument_set)
        elif kind == "ticker":
            self.on_ticker(event.ticker)
        elif kind == "index_price":
            self.on_index(event.index_price)

    def on_index(self, i: md_pb.IndexPrice) -> None:
        if math.isfinite(i.price_usd) and i.price_usd > 0.0:
            self._set_index(i.price_usd, i.header.event_time_ns)

    # ----------------------------------------------------------------------------------
    # Output
    # ----------------------------------------------------------------------------------
    def flush(self, now_ns: int) -> list[iv_pb.Smile]:
        """One Smile per live expiry whose inputs changed since the last flush."""
        return [iv_pb.Smile.FromString(data) for data in self.flush_serialized(now_ns)]

    def flush_serialized(self, now_ns: int) -> list[bytes]:
        """`flush`, with each Smile as its wire bytes: a publisher can frame them into a
        SmileBatch (`svc_iv.wire.smile_batch_bytes`) without parsing and re-serialising."""
        self.stats.flushes += 1
        for expiry_ns in [x for x in self._expiries if x <= now_ns]:
            e = self._expiries.pop(expiry_ns)
            for sym in e.symbols:
                self._option_expiry.pop(sym, None)
            self.stats.expiries_dropped += 1
        # Hostile inputs (inf, 1e308, zero forwards) must not leak RuntimeWarnings either.
        with np.errstate(all="ignore"):
            plans = [
                self._plan(self._expiries[x], now_ns)
                for x in sorted(self._expiries)
                if self._expiries[x].dirty
            ]
            # One solver call for every expiry: its cost is mostly per call, not per price.
            self._solve(plans)
            smiles = [self._finish(plan, now_ns) for plan in plans]
        self.stats.smiles_emitted += len(smiles)
        return smiles

    def expiries(self) -> list[int]:
        return sorted(self._expiries)

    # ----------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------
    def _mine(self, venue: str, currency: str) -> bool:
        return (not venue or venue.lower() == self.venue.lower()) and (
            not currency or currency.upper() == self.currency.upper()
        )

    def _is_known(self, symbol: str) -> bool:
        return symbol in self._option_expiry or symbol in self._future_expiry

    def _remember(
        self,
        store: OrderedDict[str, book_pb.TopOfBook] | OrderedDict[str, md_pb.VenueTicker],
        event: book_pb.TopOfBook | md_pb.VenueTicker,
    ) -> None:
        self.stats.unknown_symbol_events += 1
        store[event.symbol] = event  # type: ignore[assignment]
        store.move_to_end(event.symbol)
        while len(store) > self.config.max_pending_symbols:
            store.popitem(last=False)

    @staticmethod
    def _set_prices(e: _Expiry, j: int, bid: float, ask: float, event_ns: int) -> None:
        # Only a real change moves the price time: a repeated ticker or a size-only book
        # update is no re-pricing.
        if not (_same(float(e.price[BID, j]), bid) and _same(float(e.price[ASK, j]), ask)):
            e.price[BID, j] = bid
            e.price[ASK, j] = ask
            e.price_changed[j] = True
            IvCore._price_moved(e, BID, j, event_ns)
            IvCore._price_moved(e, ASK, j, event_ns)

    @staticmethod
    def _price_moved(e: _Expiry, side: int, j: int, event_ns: int) -> None:
        e.price_ns[side, j] = event_ns
        e.pin_pending[side, j] = True
        e.latest_price_ns = max(e.latest_price_ns, event_ns)

    def _set_index(self, price: float, event_ns: int) -> None:
        if event_ns < self._index_time or price == self._index_usd:
            return
        self._index_usd = price
        self._index_time = event_ns
        self._index_history.record(event_ns, price)
        for expiry_ns in self._expiries:
            self._forward_input_moved(expiry_ns, common_pb.FORWARD_SOURCE_INDEX)

    def _future_moved(self, expiry_ns: int, event_ns: int) -> None:
        e = self._expiries.get(expiry_ns)
        if e is not None:
            e.future_history.record(event_ns, self._future_mid(expiry_ns))
        self._forward_input_moved(expiry_ns, common_pb.FORWARD_SOURCE_FUTURE)

    def _forward_input_moved(self, expiry_ns: int, source: int) -> None:
        e = self._expiries.get(expiry_ns)
        if e is not None and _RANK[source] <= _RANK.get(e.forward_source, 4):
            e.dirty = True

    def _future_mid(self, expiry_ns: int) -> float:
        mids = [q.mid for q in self._futures.get(expiry_ns, {}).values()]
        good = [m for m in mids if math.isfinite(m)]
        return float(np.median(good)) if good else math.nan

    def _parity_forward(self, e: _Expiry) -> float:
        if e.pair_call.size == 0:
            return math.nan
        bid, ask, mark = e.price
        with np.errstate(all="ignore"):
            mid = np.where((bid > 0.0) & (ask >= bid), 0.5 * (bid + ask), np.nan)
        price = np.where(np.isfinite(mid), mid, mark)
        calls = e.pair_call
        puts = e.pair_put
        unit = int(e.unit[calls[0]])
        c = price[calls]
        p = price[puts]
        if unit == USD_PER_CONTRACT:
            c = c / e.size[calls]
            p = p / e.size[puts]
        same_unit = (e.unit[calls] == unit) & (e.unit[puts] == unit)
        return parity_forward(
            e.strike[calls][same_unit],
            c[same_unit],
            p[same_unit],
            inverse=unit == COIN_PER_COIN,
            strikes_used=self.config.parity_strikes,
        )

    def _forward(self, e: _Expiry) -> tuple[ForwardEstimate, ForwardHistory | None]:
        """The forward in use and the history of the input it comes from."""
        chosen = choose_forward(venue=e.venue_forward, future_mid=self._future_mid(e.expiry_ns))
        if chosen.source == common_pb.FORWARD_SOURCE_VENUE:
            if e.venue_forward_is_index:
                chosen = ForwardEstimate(chosen.value_usd, common_pb.FORWARD_SOURCE_INDEX)
            return chosen, e.venue_history
        if chosen.source == common_pb.FORWARD_SOURCE_FUTURE:
            return chosen, e.future_history
        chosen = choose_forward(parity=self._parity_forward(e), index=self._index_usd)
        if chosen.source == common_pb.FORWARD_SOURCE_PUT_CALL_PARITY:
            # Parity comes from the option prices: it dates from the latest price change.
            e.parity_history.record(e.latest_price_ns, chosen.value_usd)
            return chosen, e.parity_history
        if chosen.source == common_pb.FORWARD_SOURCE_INDEX:
            return chosen, self._index_history
        return NO_FORWARD, None

    def _pin(self, e: _Expiry, fwd: ForwardEstimate, history: ForwardHistory | None) -> Mask:
        """Set the forward of every side: the current one ("current" policy), else look up
        the own forward of every side whose price changed (or every side, when the forward
        input changed); returns the quotes whose forward changed (to be re-solved)."""
        if self.config.forward_policy == FORWARD_CURRENT:
            value = fwd.value_usd if history is not None else math.nan
            # NaN != NaN: without a forward every quote is (re-)solved to its status.
            moved = e.quote_forward != value
            e.quote_forward[:] = value
            e.pin_pending[:] = False
            return np.asarray(moved.any(axis=0), dtype=np.bool_)
        if history is not e.pin_history:
            e.pin_history = history
            e.pin_pending[:] = True
        if history is None:
            e.quote_forward[:] = math.nan
            return np.ones(e.n, dtype=bool)
        # The latest entry is the forward in use (an input may have moved without an event
        # of its own, e.g. a future delisted): quotes newer than every entry get it.
        history.record(history.latest_time, fwd.value_usd)
        pin = e.pin_pending | ~np.isfinite(e.quote_forward)
        if pin.any():
            e.quote_forward[pin] = history.at(e.price_ns[pin])
            e.pin_pending[:] = False
        return np.asarray(pin.any(axis=0), dtype=np.bool_)

    def _plan(self, e: _Expiry, now_ns: int) -> _Plan:
        """What a flush does to each quote of `e`: re-solve, update for time or keep."""
        cfg = self.config
        fwd, history = self._forward(e)
        repinned = self._pin(e, fwd, history)
        t = float(years_to_expiry(e.expiry_ns, now_ns))
        n = e.n
        # Each price in USD at its own forward (inverse premiums scale with it).
        usd = premium_usd_per_coin(e.price, e.unit, e.quote_forward, e.size)

        # The solver gets new prices, re-pinned quotes and quotes never solved. The others
        # keep forward, price and strike: s = sigma sqrt(T) is fixed, their IVs are
        # s / sqrt(T) exactly and their statuses (bounds do not depend on T) stand.
        solve = e.price_changed | repinned | ~e.solved
        if not cfg.incremental:
            solve[:] = True
        time_update = np.zeros(n, dtype=bool)
        skipped = np.zeros(n, dtype=bool)
        estimate = np.full((_SIDES, n), np.nan)
        rest = np.flatnonzero(~solve)
        if rest.size:
            updated = e.anchor_s[:, rest] / math.sqrt(t)
            ok = e.status[:, rest] == OK
            with np.errstate(invalid="ignore"):
                since_published = _worst_per_quote(updated - e.iv[:, rest], ok)
            skip = since_published * cfg.skip_safety_factor < cfg.skip_iv_bp * _BP
            skipped[rest[skip]] = True
            time_update[rest[~skip]] = True
            estimate[:, rest] = updated

        return _Plan(e, fwd, history, t, usd, np.flatnonzero(solve), time_update, skipped, estimate)

    def _finish(self, plan: _Plan, now_ns: int) -> bytes:
        e, time_update = plan.expiry, plan.time_update
        if time_update.any():
            e.iv[:, time_update] = np.where(
                e.status[:, time_update] == OK, plan.estimate[:, time_update], np.nan
            )
        e.price_changed[:] = False
        e.dirty = False
        e.forward_source = plan.forward.source
        self._count(e.n, plan.solve_idx.size, int(time_update.sum()), int(plan.skipped.sum()))
        return self._smile(e, now_ns, plan)

    def _count(self, n: int, solved: int, time_update: int, skipped: int) -> None:
        st = self.stats
        st.quotes_solved += solved
        st.prices_solved += solved * _SIDES
        st.quotes_time_updated += time_update
        st.quotes_skipped += skipped
        if solved == n:
            st.full_solves += 1
        elif solved:
            st.partial_solves += 1
        elif time_update:
            st.time_updates += 1
        else:
            st.skipped_solves += 1

    def _solve(self, plans: list[_Plan]) -> None:
        """Solve the chosen quotes of every plan in one `implied_vol` call, each side on its
        own forward, then store each quote's IVs, statuses and s = sigma sqrt(T)."""
        todo = [p for p in plans if p.solve_idx.size]
        if not todo:
            return
        prices = np.concatenate([p.usd[:, p.solve_idx].ravel() for p in todo])
        sizes = [_SIDES * p.solve_idx.size for p in todo]
        forward = np.concatenate([p.expiry.quote_forward[:, p.solve_idx].ravel() for p in todo])
        t = np.repeat([p.t for p in todo], sizes)
        strike = np.concatenate([np.tile(p.expiry.strike[p.solve_idx], _SIDES) for p in todo])
        call = np.concatenate([np.tile(p.expiry.is_call[p.solve_idx], _SIDES) for p in todo])
        iv_all, status_all = implied_vol(
            prices, forward, strike, t, call, halley_steps=self.config.halley_steps
        )
        start = 0
        for p, size in zip(todo, sizes, strict=True):
            part = slice(start, start + size)
            start += size
            self._store(p, iv_all[part], status_all[part])

    @staticmethod
    def _store(p: _Plan, iv_flat: Array, status_flat: StatusArray) -> None:
        e, idx, usd = p.expiry, p.solve_idx, p.usd
        m = idx.size
        iv = iv_flat.reshape(_SIDES, m)
        e.iv[:, idx] = iv
        e.status[:, idx] = _unconvertible_is_bad(
            status_flat.reshape(_SIDES, m), e.price[:, idx], usd[:, idx]
        )
        e.solved[idx] = True
        e.anchor_s[:, idx] = iv * math.sqrt(p.t)

    def _behind_forward(
        self,
        e: _Expiry,
        history: ForwardHistory | None,
        forward: float,
        usd: Array,
        delta: Array,
    ) -> Mask:
        """Quotes whose price did not follow a forward move that took their fair value
        outside their bid/ask (module docstring)."""
        behind = np.zeros(e.n, dtype=bool)
        if (
            self.config.forward_policy != FORWARD_CURRENT
            or history is None
            or len(history) < 2
            or not forward > 0.0
        ):
            return behind
        grace_ns = int(self.config.behind_forward_grace_s * 1e9)
        priced_ns = e.price_ns[BID] + grace_ns
        # Only prices older than the latest forward change can be behind it.
        old = np.flatnonzero(priced_ns < history.latest_time)
        if not old.size:
            return behind
        bid, ask = e.price[BID, old], e.price[ASK, old]
        d_forward = forward - history.at(priced_ns[old])
        with np.errstate(invalid="ignore"):
            follows = d_usd_per_coin_d_forward(0.5 * (bid + ask), e.unit[old])
            mismatch = np.abs((delta[old] - follows) * d_forward)
            behind[old] = mismatch > 0.5 * (usd[ASK, old] - usd[BID, old])
        return behind

    def _smile(self, e: _Expiry, now_ns: int, plan: _Plan) -> bytes:
        t, fwd, usd = plan.t, plan.forward, plan.usd
        forward = fwd.value_usd
        bid_iv, ask_iv, mark_iv = e.iv
        with np.errstate(all="ignore"):
            mid_iv = 0.5 * (bid_iv + ask_iv)
            sigma = np.where(np.isfinite(mid_iv), mid_iv, mark_iv)
            has = np.isfinite(sigma) & (t > 0.0)
            sig = np.where(has, sigma, 1.0)
            delta_fwd = np.where(
                has, black76.forward_delta(forward, e.strike, t, sig, e.is_call), np.nan
            )
            delta_pa = np.where(
                has, black76.premium_adjusted_delta(forward, e.strike, t, sig, e.is_call), np.nan
            )
            gamma = np.where(has, black76.gamma(forward, e.strike, t, sig), np.nan)
            vega = np.where(has, black76.vega(forward, e.strike, t, sig), np.nan)
            theta = np.where(has, black76.theta(forward, e.strike, t, sig), np.nan)
            bid, ask = e.price[BID], e.price[ASK]
            has_bid = np.isfinite(bid)
            has_ask = np.isfinite(ask)
            # Where the quote's IVs live: its bid/ask forward (one price time), else the
            # mark's. Greeks stay on the current forward at the quote's IV.
            own_forward = np.where(has_bid | has_ask, e.quote_forward[BID], e.quote_forward[MARK])
            log_moneyness = np.log(e.strike / own_forward)
            one_sided = e.top_one_sided | (has_bid != has_ask)
            crossed = e.top_crossed | (has_bid & has_ask & (bid >= ask))
            at_min_tick = has_bid & (e.tick > 0.0) & (bid <= e.tick * (1.0 + 1e-9))
        head = iv_pb.Smile(
            header=common_pb.EventHeader(
                event_time_ns=now_ns, source=self.config.source, sequence=self._next_sequence()
            ),
            venue=self.venue,
            currency=self.currency,
            expiry_time_ns=e.expiry_ns,
            expiry_label=e.label,
            time_to_expiry_years=t,
            forward_usd=forward,
            forward_source=fwd.source,  # type: ignore[arg-type]
            index_price_usd=self._index_usd,
        )
        block = e.encoder.block
        block["option_kind"] = e.kind
        block["strike_usd"] = e.strike
        block["log_moneyness"] = log_moneyness
        block["bid_price_usd_per_coin"] = usd[BID]
        block["ask_price_usd_per_coin"] = usd[ASK]
        block["mark_price_usd_per_coin"] = usd[MARK]
        block["bid_size_native"] = e.bid_size
        block["ask_size_native"] = e.ask_size
        block["bid_iv"] = bid_iv
        block["ask_iv"] = ask_iv
        block["mid_iv"] = mid_iv
        block["mark_iv"] = mark_iv
        block["bid_iv_status"] = e.status[BID]
        block["ask_iv_status"] = e.status[ASK]
        block["mark_iv_status"] = e.status[MARK]
        block["venue_bid_iv"] = e.venue_iv[BID]
        block["venue_ask_iv"] = e.venue_iv[ASK]
        block["venue_mark_iv"] = e.venue_iv[MARK]
        block["delta_forward"] = delta_fwd
        block["delta_premium_adjusted"] = delta_pa
        block["gamma_per_usd"] = gamma
        block["vega_usd_per_vol"] = vega
        block["theta_usd_per_day"] = theta
        block["one_sided"] = one_sided
        block["crossed"] = crossed
        block["stale"] = e.top_stale
        block["at_min_tick"] = at_min_tick
        block["quote_time_ns"] = time_varints(e.quote_time)
        block["behind_forward"] = self._behind_forward(e, plan.history, forward, usd, delta_fwd)
        return head.SerializeToString() + e.encoder.encode()

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence
