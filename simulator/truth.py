"""Ground truth of the simulated market: per currency, a spot index, expiries, forwards and an
arbitrage-free raw SVI slice per expiry, all known exactly at every moment.

The surface is built as power-law SSVI (docs/quant.md section 4) with gamma = 1/2 and
eta (1 + |rho|) <= 2, which is free of butterfly and calendar arbitrage, then expressed per
expiry as raw SVI. State moves with event time only (`step(now_ns)`), driven by a seeded RNG,
so a run is reproducible for a given seed and sequence of step times.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr

from volmath import black76
from volmath.svi import RawSvi, total_variance
from volstream.scenario import Scenario
from volstream.v1 import common_pb2, surface_pb2

NS_PER_S = 1_000_000_000
SECONDS_PER_YEAR = 365.0 * 86_400.0
NS_PER_YEAR = SECONDS_PER_YEAR * NS_PER_S
EXPIRY_HOUR_UTC = 8
SSVI_GAMMA = 0.5
# Keeps eta (1 + |rho|) strictly inside the power-law SSVI no-arbitrage bound of 2.
ETA_BOUND = 1.9
MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DVOL_DAYS = 30.0

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class CurrencyParams:
    """Static shape of one currency's market (vols and rates are annual fractions)."""

    currency: str
    initial_index: float
    atm_vol_short: float
    atm_vol_long: float
    term_decay_years: float
    rho: float
    eta: float
    basis_short: float
    basis_long: float
    # Smallest strike spacing the venue would use near the money.
    strike_step_floor: float


DEFAULT_PARAMS: dict[str, CurrencyParams] = {
    "BTC": CurrencyParams("BTC", 60_000.0, 0.48, 0.58, 0.15, -0.15, 0.7, 0.045, 0.08, 250.0),
    "ETH": CurrencyParams("ETH", 3_000.0, 0.62, 0.72, 0.15, -0.12, 0.75, 0.04, 0.075, 10.0),
}


def default_params(currency: str) -> CurrencyParams:
    ccy = currency.upper()
    if ccy in DEFAULT_PARAMS:
        return DEFAULT_PARAMS[ccy]
    return CurrencyParams(ccy, 100.0, 0.75, 0.85, 0.15, -0.12, 0.75, 0.04, 0.07, 0.5)


@dataclass(frozen=True)
class TruthConfig:
    currencies: tuple[str, ...] = ("BTC", "ETH")
    seed: int = 7
    # Expiries closer than this at start are not listed (they would expire mid-test).
    min_time_to_expiry_s: float = 12 * 3600.0
    max_time_to_expiry_days: float = 230.0
    # Keep only the nearest N expiries (None: all the schedule gives).
    max_expiries: int | None = None
    # Multiplier on the random drift of the surface shape (0 freezes the shape; index still moves).
    surface_drift: float = 1.0
    # Multiplier on the index volatility (0 freezes the index).
    index_vol_scale: float = 1.0
    params: tuple[CurrencyParams, ...] = ()
    # Index drift, jump and volatility shock (times from the start), and how the venues'
    # market makers requote (docs/simulator.md section 2).
    scenario: Scenario = field(default_factory=Scenario)

    def params_for(self, currency: str) -> CurrencyParams:
        for p in self.params:
            if p.currency == currency.upper():
                return p
        return default_params(currency)


# ---------------------------------------------------------------------------------------
# expiry calendar


def expiry_label(expiry_ns: int) -> str:
    """Deribit-style date label, day not zero-padded: 6AUG21, 27DEC24."""
    d = datetime.fromtimestamp(expiry_ns / NS_PER_S, tz=UTC)
    return f"{d.day}{MONTHS[d.month - 1]}{d.year % 100:02d}"


def _at_expiry_hour(d: date) -> int:
    dt = datetime(d.year, d.month, d.day, EXPIRY_HOUR_UTC, tzinfo=UTC)
    return int(dt.timestamp()) * NS_PER_S


def _last_friday(year: int, month: int) -> date:
    last_day = calendar.monthrange(year, month)[1]
    d = date(year, month, last_day)
    return d - timedelta(days=(d.weekday() - 4) % 7)


def _add_months(year: int, month: int, n: int) -> tuple[int, int]:
    idx = year * 12 + (month - 1) + n
    return idx // 12, idx % 12 + 1


@dataclass(frozen=True)
class ExpirySpec:
    expiry_ns: int
    # "day", "week" or "month" (quarterlies are months too, as on Deribit).
    period: str
    quarterly: bool = False

    @property
    def label(self) -> str:
        return expiry_label(self.expiry_ns)


def expiry_schedule(
    now_ns: int,
    min_time_to_expiry_s: float = 12 * 3600.0,
    max_time_to_expiry_days: float = 230.0,
) -> list[ExpirySpec]:
    """Dailies, weeklies (Fridays), monthlies (last Friday) and quarterlies, at 08:00 UTC."""
    now = datetime.fromtimestamp(now_ns / NS_PER_S, tz=UTC)
    lo = now_ns + int(min_time_to_expiry_s * NS_PER_S)
    hi = now_ns + int(max_time_to_expiry_days * 86_400 * NS_PER_S)
    found: dict[int, ExpirySpec] = {}

    def add(d: date, period: str, quarterly: bool = False) -> None:
        ns = _at_expiry_hour(d)
        if not lo <= ns <= hi:
            return
        prev = found.get(ns)
        rank = {"day": 0, "week": 1, "month": 2}
        if prev is None or rank[period] > rank[prev.period] or (quarterly and not prev.quarterly):
            found[ns] = ExpirySpec(ns, period, quarterly or (prev.quarterly if prev else False))

    today = now.date()
    dailies = 0
    d = today
    while dailies < 3:
        if lo <= _at_expiry_hour(d) <= hi:
            add(d, "day")
            dailies += 1
        d += timedelta(days=1)
        if d > today + timedelta(days=10):
            break
    fridays = 0
    d = today + timedelta(days=(4 - today.weekday()) % 7)
    while fridays < 3 and d <= today + timedelta(days=40):
        if lo <= _at_expiry_hour(d):
            add(d, "week")
            fridays += 1
        d += timedelta(days=7)
    monthlies = 0
    for n in range(0, 6):
        y, m = _add_months(now.year, now.month, n)
        lf = _last_friday(y, m)
        if lo <= _at_expiry_hour(lf) and monthlies < 3:
            add(lf, "month")
            monthlies += 1
    for n in range(0, 13):
        y, m = _add_months(now.year, now.month, n)
        if m in (3, 6, 9, 12):
            add(_last_friday(y, m), "month", quarterly=True)
    return [found[k] for k in sorted(found)]


# ---------------------------------------------------------------------------------------
# strike grids


def nice_step(x: float) -> float:
    """The 1, 2, 2.5 or 5 times a power of ten nearest to x (in ratio)."""
    if x <= 0:
        raise ValueError("step must be positive")
    base = 10.0 ** math.floor(math.log10(x))
    candidates = [mult * base for mult in (1.0, 2.0, 2.5, 5.0, 10.0)]
    return min(candidates, key=lambda c: abs(math.log(c / x)))


def strike_grid(forward: float, atm_vol: float, t_years: float, step_floor: float) -> list[float]:
    """Deribit-like strikes: fine spacing near the forward, coarser in the wings."""
    sd = max(atm_vol * math.sqrt(max(t_years, 1e-6)), 0.02)
    inner = max(nice_step(forward * sd / 8.0), step_floor)
    middle = nice_step(inner * 2.0)
    outer = nice_step(inner * 5.0)
    strikes: set[float] = set()
    reaches = (min(1.5 * sd, 0.3), min(3.0 * sd, 0.7), min(max(4.5 * sd, 0.15), 1.3))
    for step, reach in zip((inner, middle, outer), reaches, strict=True):
        lo = forward * math.exp(-reach)
        hi = forward * math.exp(reach)
        k = math.ceil(lo / step) * step
        while k <= hi + 1e-9:
            if k > 0:
                strikes.add(round(k, 8))
            k += step
    return sorted(strikes)


# ---------------------------------------------------------------------------------------
# slices


@dataclass(frozen=True)
class SliceTruth:
    expiry_ns: int
    label: str
    period: str
    t_years: float
    forward: float
    raw: RawSvi
    # ATM total variance.
    theta: float

    @property
    def atm_vol(self) -> float:
        return math.sqrt(self.theta / self.t_years)

    def vol(self, strikes: FloatArray | list[float] | float) -> FloatArray:
        k = np.log(np.asarray(strikes, dtype=np.float64) / self.forward)
        return np.asarray(np.sqrt(total_variance(self.raw, k) / self.t_years), dtype=np.float64)


@dataclass(frozen=True)
class TruthSnapshot:
    """The whole truth of one currency at one event time (immutable)."""

    currency: str
    time_ns: int
    index: float
    slices: tuple[SliceTruth, ...]
    perpetual_premium: float

    def slice_for(self, expiry_ns: int) -> SliceTruth | None:
        for s in self.slices:
            if s.expiry_ns == expiry_ns:
                return s
        return None


def ssvi_raw(theta: float, rho: float, eta: float) -> RawSvi:
    """Power-law SSVI slice (gamma 1/2) as raw SVI (docs/quant.md section 4)."""
    phi = eta / (theta**SSVI_GAMMA * (1.0 + theta) ** (1.0 - SSVI_GAMMA))
    return RawSvi(
        a=theta * (1.0 - rho * rho) / 2.0,
        b=theta * phi / 2.0,
        rho=rho,
        m=-rho / phi,
        sigma=math.sqrt(1.0 - rho * rho) / phi,
    )


def durrleman_g(p: RawSvi, k: FloatArray) -> FloatArray:
    x = k - p.m
    root = np.sqrt(x * x + p.sigma * p.sigma)
    w = p.a + p.b * (p.rho * x + root)
    w1 = p.b * (p.rho + x / root)
    w2 = p.b * p.sigma * p.sigma / root**3
    g = (1.0 - k * w1 / (2.0 * w)) ** 2 - (w1 * w1 / 4.0) * (1.0 / w + 0.25) + w2 / 2.0
    return np.asarray(g, dtype=np.float64)


def jw_params(p: RawSvi, t: float) -> tuple[float, float, float, float, float]:
    """(v, psi, p, c, v~) of a raw slice (docs/quant.md section 4)."""
    root_m = math.sqrt(p.m * p.m + p.sigma * p.sigma)
    v = (p.a + p.b * (-p.rho * p.m + root_m)) / t
    sqrt_wt = math.sqrt(v * t)
    psi = p.b / (2.0 * sqrt_wt) * (p.rho - p.m / root_m)
    put_slope = p.b * (1.0 - p.rho) / sqrt_wt
    call_slope = p.b * (1.0 + p.rho) / sqrt_wt
    v_min = (p.a + p.b * p.sigma * math.sqrt(1.0 - p.rho * p.rho)) / t
    return v, psi, put_slope, call_slope, v_min


def strike_at_forward_delta(s: SliceTruth, call_delta: float) -> float:
    """Log-moneyness where the forward call delta N(d1) equals `call_delta` (bisection)."""
    lo, hi = -6.0, 6.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        w = float(total_variance(s.raw, mid))
        d1 = (-mid + 0.5 * w) / math.sqrt(w)
        # N(d1) falls as k rises on an arbitrage-free slice.
        if float(ndtr(d1)) > call_delta:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def variance_swap_total_variance(s: SliceTruth, points: int = 801) -> float:
    """2 * integral of OTM prices / K^2 dK, on the truth smile (DVOL/VIX style)."""
    sd = math.sqrt(s.theta)
    k = np.linspace(-8.0 * sd - 0.05, 8.0 * sd + 0.05, points)
    vol = np.sqrt(total_variance(s.raw, k) / s.t_years)
    strikes = s.forward * np.exp(k)
    otm = black76.price(s.forward, strikes, s.t_years, vol, k >= 0.0) / s.forward
    integrand = 2.0 * otm * np.exp(-k)
    return float(np.sum((integrand[1:] + integrand[:-1]) * np.diff(k)) / 2.0)


def vol_index(snapshot: TruthSnapshot, days: float = DVOL_DAYS) -> float:
    """30-day variance-swap vol (fraction), interpolated in total variance between expiries."""
    target = days / 365.0
    if not snapshot.slices:
        return float("nan")
    ts = np.array([s.t_years for s in snapshot.slices])
    ws = np.array([variance_swap_total_variance(s) for s in snapshot.slices])
    if target <= ts[0]:
        return math.sqrt(ws[0] / ts[0])
    if target >= ts[-1]:
        return math.sqrt(ws[-1] / ts[-1])
    w = float(np.interp(target, ts, ws))
    return math.sqrt(w / target)


# ---------------------------------------------------------------------------------------
# the moving market


@dataclass
class ExpiryTruth:
    spec: ExpirySpec
    # Reference strike grid, fixed when the expiry is listed (venues list these).
    strikes: tuple[float, ...]

    @property
    def expiry_ns(self) -> int:
        return self.spec.expiry_ns

    @property
    def label(self) -> str:
        return self.spec.label


@dataclass
class CurrencyTruth:
    """One currency's truth; mutated only by `step` and `roll_expiries`."""

    params: CurrencyParams
    config: TruthConfig
    rng: np.random.Generator
    time_ns: int
    index: float
    # Multiplier on the ATM term structure (OU in log around 1).
    level: float = 1.0
    rho: float = 0.0
    eta: float = 1.0
    basis_shift: float = 0.0
    # The scenario's ATM vol shock in force (fraction, added to every expiry's ATM vol).
    vol_shift: float = 0.0
    # Event time the scenario's clock counts from (the truth's creation).
    start_ns: int = 0
    expiries: list[ExpiryTruth] = field(default_factory=list)
    # Bumped whenever the expiry list changes so venues know to resync their listings.
    listing_version: int = 0
    _cache: TruthSnapshot | None = None

    @classmethod
    def create(
        cls, params: CurrencyParams, config: TruthConfig, rng: np.random.Generator, now_ns: int
    ) -> CurrencyTruth:
        truth = cls(
            params=params,
            config=config,
            rng=rng,
            time_ns=now_ns,
            index=params.initial_index,
            rho=params.rho,
            eta=params.eta,
            start_ns=now_ns,
        )
        truth.roll_expiries(now_ns)
        return truth

    # -- model pieces ---------------------------------------------------------------
    def atm_vol_curve(self, t: float) -> float:
        p = self.params
        return (
            self.level
            * (
                p.atm_vol_long
                + (p.atm_vol_short - p.atm_vol_long) * math.exp(-t / p.term_decay_years)
            )
            + self.vol_shift
        )

    def basis(self, t: float) -> float:
        p = self.params
        return (
            p.basis_long + (p.basis_short - p.basis_long) * math.exp(-t / 0.25) + self.basis_shift
        )

    def t_years(self, expiry_ns: int) -> float:
        return (expiry_ns - self.time_ns) / NS_PER_YEAR

    # -- evolution ------------------------------------------------------------------
    def step(self, now_ns: int) -> None:
        """Advance to event time `now_ns` (no-op when time does not move forward)."""
        dt = (now_ns - self.time_ns) / NS_PER_YEAR
        if dt <= 0:
            return
        z_index, z_level, z_rho, z_eta, z_basis = self.rng.standard_normal(5)
        # Vol rises when the index falls: correlate the level shock with the index shock.
        z_level = -0.5 * z_index + math.sqrt(1 - 0.25) * z_level
        sc = self.config.scenario
        vol = self.atm_vol_curve(30 / 365) * self.config.index_vol_scale * sc.index_vol
        trend = sc.drift_per_hour * dt * SECONDS_PER_YEAR / 3600.0
        jump = sc.jump_size * self._window_share(now_ns, sc.jump_at_s, sc.jump_duration_s)
        self.index *= math.exp(vol * math.sqrt(dt) * z_index - 0.5 * vol * vol * dt + trend + jump)
        if sc.shock_vol_pts:
            done = self._window_done(now_ns, sc.shock_at_s, sc.shock_duration_s)
            self.vol_shift = sc.shock_vol_pts / 100.0 * done
        drift = self.config.surface_drift
        if drift > 0:
            sq = math.sqrt(dt)
            log_level = math.log(self.level)
            log_level += -50.0 * log_level * dt + 0.6 * drift * sq * z_level
            self.level = min(max(math.exp(log_level), 0.6), 1.6)
            self.rho += 20.0 * (self.params.rho - self.rho) * dt + 0.4 * drift * sq * z_rho
            self.rho = min(max(self.rho, -0.6), -0.03)
            self.eta += 20.0 * (self.params.eta - self.eta) * dt + 0.5 * drift * sq * z_eta
            self.eta = min(max(self.eta, 0.3), ETA_BOUND / (1.0 + abs(self.rho)))
            self.basis_shift += -30.0 * self.basis_shift * dt + 0.05 * drift * sq * z_basis
        self.time_ns = now_ns
        self._cache = None

    def _window_done(self, now_ns: int, at_s: float, duration_s: float) -> float:
        """Share of the scenario window [at, at + duration] (s from the start) gone by."""
        elapsed = (now_ns - self.start_ns) / NS_PER_S - at_s
        return min(1.0, max(0.0, elapsed / duration_s))

    def _window_share(self, now_ns: int, at_s: float, duration_s: float) -> float:
        """Share of the window that falls between the last step and `now_ns`."""
        return self._window_done(now_ns, at_s, duration_s) - self._window_done(
            self.time_ns, at_s, duration_s
        )

    def roll_expiries(self, now_ns: int) -> bool:
        """Drop expired expiries and list the schedule's new ones; True if anything changed."""
        self.time_ns = max(self.time_ns, now_ns)
        alive = [e for e in self.expiries if e.expiry_ns > self.time_ns]
        changed = len(alive) != len(self.expiries)
        known = {e.expiry_ns for e in alive}
        schedule = expiry_schedule(
            self.time_ns, self.config.min_time_to_expiry_s, self.config.max_time_to_expiry_days
        )
        if self.config.max_expiries is not None:
            schedule = schedule[: self.config.max_expiries]
        for spec in schedule:
            if spec.expiry_ns in known:
                continue
            t = self.t_years(spec.expiry_ns)
            fwd = self.index * math.exp(self.basis(t) * t)
            grid = strike_grid(fwd, self.atm_vol_curve(t), t, self.params.strike_step_floor)
            alive.append(ExpiryTruth(spec, tuple(grid)))
            changed = True
        alive.sort(key=lambda e: e.expiry_ns)
        if changed:
            self.expiries = alive
            self.listing_version += 1
            self._cache = None
        return changed

    # -- views ----------------------------------------------------------------------
    def snapshot(self) -> TruthSnapshot:
        if self._cache is not None:
            return self._cache
        slices: list[SliceTruth] = []
        prev_theta = 0.0
        for e in self.expiries:
            t = self.t_years(e.expiry_ns)
            if t <= 0:
                continue
            atm = self.atm_vol_curve(t)
            # Calendar no-arbitrage needs theta non-decreasing in T.
            theta = max(atm * atm * t, prev_theta * (1.0 + 1e-6) + 1e-12)
            prev_theta = theta
            forward = self.index * math.exp(self.basis(t) * t)
            slices.append(
                SliceTruth(
                    expiry_ns=e.expiry_ns,
                    label=e.label,
                    period=e.spec.period,
                    t_years=t,
                    forward=forward,
                    raw=ssvi_raw(theta, self.rho, self.eta),
                    theta=theta,
                )
            )
        self._cache = TruthSnapshot(
            currency=self.params.currency,
            time_ns=self.time_ns,
            index=self.index,
            slices=tuple(slices),
            perpetual_premium=0.0002 * math.tanh(self.basis_shift * 50.0),
        )
        return self._cache


class TruthMarket:
    """The truth of every configured currency, stepped together."""

    def __init__(self, config: TruthConfig, now_ns: int) -> None:
        self.config = config
        seeds = np.random.SeedSequence(config.seed).spawn(len(config.currencies))
        self.currencies: dict[str, CurrencyTruth] = {}
        for ccy, seed in zip(config.currencies, seeds, strict=True):
            self.currencies[ccy.upper()] = CurrencyTruth.create(
                config.params_for(ccy), config, np.random.default_rng(seed), now_ns
            )
        self.time_ns = now_ns

    def step(self, now_ns: int) -> None:
        for truth in self.currencies.values():
            truth.step(now_ns)
            if truth.expiries and truth.expiries[0].expiry_ns <= now_ns:
                truth.roll_expiries(now_ns)
        self.time_ns = max(self.time_ns, now_ns)

    def snapshot(self, currency: str) -> TruthSnapshot:
        return self.currencies[currency.upper()].snapshot()

    def set_scenario(self, scenario: Scenario) -> None:
        """Switch scenario mid-run (its times still count from the start), e.g. to place a
        jump once a pipeline is warm."""
        self.config = replace(self.config, scenario=scenario)
        for truth in self.currencies.values():
            truth.config = self.config


# ---------------------------------------------------------------------------------------
# publication


def smile_metrics(s: SliceTruth) -> surface_pb2.SmileMetrics:
    def vol_at(k: float) -> float:
        return math.sqrt(float(total_variance(s.raw, k)) / s.t_years)

    atm = s.atm_vol
    out = surface_pb2.SmileMetrics(
        atm_vol=atm, delta_convention=common_pb2.DELTA_CONVENTION_FORWARD
    )
    for delta, rr_field, bf_field in ((0.25, "rr25", "bf25"), (0.10, "rr10", "bf10")):
        call = vol_at(strike_at_forward_delta(s, delta))
        put = vol_at(strike_at_forward_delta(s, 1.0 - delta))
        setattr(out, rr_field, call - put)
        setattr(out, bf_field, 0.5 * (call + put) - atm)
    return out


def surface_proto(
    snapshot: TruthSnapshot,
    venue: str,
    revision: int = 0,
    publish_time_ns: int = 0,
    with_metrics: bool = True,
    forwards: Mapping[int, float] | None = None,
) -> surface_pb2.Surface:
    """The truth as a Surface (model SURFACE_MODEL_TRUTH).

    `forwards` (expiry ns -> USD) replaces the slices' forwards with a venue's own: every
    venue quotes the same smile in log-moneyness against its own forward."""
    grid = np.linspace(-3.0, 3.0, 241)
    surface = surface_pb2.Surface(
        header=common_pb2.EventHeader(
            event_time_ns=snapshot.time_ns,
            receive_time_ns=snapshot.time_ns,
            publish_time_ns=publish_time_ns,
            source=f"sim.{venue}",
            sequence=revision,
        ),
        venue=venue,
        currency=snapshot.currency,
        model=surface_pb2.SURFACE_MODEL_TRUTH,
        index_price_usd=snapshot.index,
        vol_index_30d=vol_index(snapshot),
        revision=revision,
        delta_convention=common_pb2.DELTA_CONVENTION_FORWARD,
    )
    prev_w: FloatArray | None = None
    for s in snapshot.slices:
        v, psi, p_slope, c_slope, v_min = jw_params(s.raw, s.t_years)
        w = total_variance(s.raw, grid)
        calendar_free = prev_w is None or bool(np.all(w >= prev_w - 1e-14))
        prev_w = w
        min_g = float(np.min(durrleman_g(s.raw, grid)))
        slice_msg = surface_pb2.ExpirySlice(
            expiry_time_ns=s.expiry_ns,
            expiry_label=s.label,
            time_to_expiry_years=s.t_years,
            forward_usd=forwards.get(s.expiry_ns, s.forward) if forwards else s.forward,
            forward_source=common_pb2.FORWARD_SOURCE_TRUTH,
            raw=surface_pb2.SviRawParams(
                a=s.raw.a, b=s.raw.b, rho=s.raw.rho, m=s.raw.m, sigma=s.raw.sigma
            ),
            jw=surface_pb2.SviJwParams(
                atm_variance=v,
                atm_skew=psi,
                put_wing_slope=p_slope,
                call_wing_slope=c_slope,
                min_variance=v_min,
            ),
            metrics=smile_metrics(s)
            if with_metrics
            else surface_pb2.SmileMetrics(atm_vol=s.atm_vol),
            diagnostics=surface_pb2.FitDiagnostics(
                min_g=min_g,
                butterfly_arbitrage_free=min_g >= 0.0,
                calendar_arbitrage_free=calendar_free,
            ),
        )
        surface.slices.append(slice_msg)
    return surface


def truth_json(snapshot: TruthSnapshot) -> dict[str, object]:
    """A plain view of the truth for the HTTP control endpoint."""
    return {
        "currency": snapshot.currency,
        "time_ns": snapshot.time_ns,
        "index": snapshot.index,
        "vol_index_30d": vol_index(snapshot),
        "slices": [
            {
                "expiry_ns": s.expiry_ns,
                "label": s.label,
                "period": s.period,
                "t_years": s.t_years,
                "forward": s.forward,
                "atm_vol": s.atm_vol,
                "raw": s.raw._asdict(),
            }
            for s in snapshot.slices
        ],
    }
