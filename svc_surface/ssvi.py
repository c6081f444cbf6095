"""Surface SVI (Gatheral & Jacquier 2014): w(k, theta) with one rho and a curvature phi(theta).

w(k, theta) = theta/2 (1 + rho phi k + sqrt((phi k + rho)^2 + 1 - rho^2)), theta the ATM total
variance of each expiry. docs/quant.md section 4: power-law and Heston-like phi, the
no-arbitrage conditions, slice -> raw SVI, and a whole-surface fit that is arbitrage-free by
construction (power law: gamma <= 1/2, eta (1 + |rho|) <= 2; Heston-like:
lambda >= (1 + |rho|)/4) with theta strictly increasing in T.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import least_squares

from svc_surface.fit import SliceData, SviFitResult
from volmath.svi import RawSvi, durrleman_g, implied_vol

Array = NDArray[np.float64]
PhiKind = Literal["power_law", "heston"]


class PowerLawPhi(NamedTuple):
    """phi(theta) = eta / (theta^gamma (1 + theta)^(1 - gamma))."""

    eta: float
    gamma: float


class HestonPhi(NamedTuple):
    """phi(theta) = (1 - (1 - exp(-lambda theta)) / (lambda theta)) / (lambda theta)."""

    lam: float


Phi = PowerLawPhi | HestonPhi


def _heston_f(u: Array) -> Array:
    """f(u) = 1 - (1 - e^-u)/u, so that theta phi = f(lambda theta)/lambda."""
    small = u < 1e-4
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = 1.0 + np.expm1(-u) / u
    series = u / 2.0 - u * u / 6.0 + u**3 / 24.0
    return np.asarray(np.where(small, series, exact), dtype=np.float64)


def _heston_f_prime(u: Array) -> Array:
    small = u < 1e-3
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = -np.expm1(-u) / (u * u) - np.exp(-u) / u
    series = 0.5 - u / 3.0 + u * u / 8.0 - u**3 / 30.0
    return np.asarray(np.where(small, series, exact), dtype=np.float64)


def phi_value(phi: Phi, theta: ArrayLike) -> Array:
    th = np.asarray(theta, dtype=np.float64)
    if isinstance(phi, PowerLawPhi):
        return np.asarray(
            phi.eta / (th**phi.gamma * (1.0 + th) ** (1.0 - phi.gamma)), dtype=np.float64
        )
    u = phi.lam * th
    return np.asarray(_heston_f(u) / u, dtype=np.float64)


def theta_phi_derivative(phi: Phi, theta: ArrayLike) -> Array:
    """d/dtheta [theta phi(theta)] (calendar condition)."""
    th = np.asarray(theta, dtype=np.float64)
    if isinstance(phi, PowerLawPhi):
        g = phi.gamma
        return np.asarray(
            phi.eta * (1.0 - g) * th ** (-g) * (1.0 + th) ** (g - 2.0), dtype=np.float64
        )
    return _heston_f_prime(phi.lam * th)


def ssvi_total_variance(theta: float, rho: float, phi_val: float, k: ArrayLike) -> Array:
    kk = np.asarray(k, dtype=np.float64)
    x = phi_val * kk
    return np.asarray(
        0.5 * theta * (1.0 + rho * x + np.sqrt((x + rho) ** 2 + 1.0 - rho * rho)),
        dtype=np.float64,
    )


def ssvi_slice_to_raw(theta: float, rho: float, phi_val: float) -> RawSvi:
    """a = theta (1 - rho^2)/2, b = theta phi/2, m = -rho/phi, sigma = sqrt(1 - rho^2)/phi."""
    root = math.sqrt(1.0 - rho * rho)
    return RawSvi(
        a=0.5 * theta * (1.0 - rho * rho),
        b=0.5 * theta * phi_val,
        rho=rho,
        m=-rho / phi_val,
        sigma=root / phi_val,
    )


@dataclass(frozen=True)
class SsviArbitrageReport:
    # Butterfly, sufficient conditions (Gatheral-Jacquier Theorem 4.2), every slice:
    # theta phi (1 + |rho|) < 4 and theta phi^2 (1 + |rho|) <= 4.
    condition_theta_phi: bool
    condition_theta_phi_squared: bool
    # Analytic far wings: the total-variance slope theta phi (1 + |rho|)/2 must stay below 2,
    # else g < 0 for |k| large (often |k| ~ 10-100, beyond any practical grid).
    far_wing_ok: bool
    # Durrleman's g evaluated on the check grid.
    min_g: float
    g_negative_found: bool
    # Calendar: theta non-decreasing, 0 <= d(theta phi)/dtheta <= (1 + sqrt(1-rho^2)) phi/rho^2.
    theta_non_decreasing: bool
    calendar_derivative_ok: bool

    @property
    def sufficient_condition_violated(self) -> bool:
        return not (self.condition_theta_phi and self.condition_theta_phi_squared)

    @property
    def butterfly_arbitrage_free(self) -> bool:
        """What we know for sure: no g < 0 on the grid and none in the far wings."""
        return self.far_wing_ok and not self.g_negative_found

    @property
    def calendar_arbitrage_free(self) -> bool:
        return self.theta_non_decreasing and self.calendar_derivative_ok


def ssvi_check(
    thetas: Sequence[float],
    rho: float,
    phi: Phi,
    k_range: tuple[float, float] = (-3.0, 3.0),
    n_grid: int = 2001,
) -> SsviArbitrageReport:
    th = np.asarray(thetas, dtype=np.float64)
    ph = phi_value(phi, th)
    tp = th * ph
    abs_rho = abs(rho)
    grid = np.linspace(k_range[0], k_range[1], n_grid)
    min_g = math.inf
    for theta, phv in zip(th, ph, strict=True):
        g = durrleman_g(ssvi_slice_to_raw(float(theta), rho, float(phv)), grid)
        min_g = min(min_g, float(np.nanmin(g)))
    deriv = theta_phi_derivative(phi, th)
    upper = (1.0 + math.sqrt(1.0 - rho * rho)) * ph / (rho * rho) if rho != 0.0 else np.inf
    return SsviArbitrageReport(
        condition_theta_phi=bool(np.all(tp * (1.0 + abs_rho) < 4.0)),
        condition_theta_phi_squared=bool(np.all(tp * ph * (1.0 + abs_rho) <= 4.0)),
        far_wing_ok=bool(np.all(tp * (1.0 + abs_rho) < 4.0)),
        min_g=min_g,
        g_negative_found=min_g < 0.0,
        theta_non_decreasing=bool(np.all(np.diff(th) >= 0.0)),
        calendar_derivative_ok=bool(np.all((deriv >= 0.0) & (deriv <= upper))),
    )


@dataclass(frozen=True)
class SsviParams:
    rho: float
    phi: Phi
    # ATM total variance per slice, in the order of the slices fitted (increasing T).
    thetas: tuple[float, ...]
    ts: tuple[float, ...]

    def slice_raw(self, i: int) -> RawSvi:
        theta = self.thetas[i]
        return ssvi_slice_to_raw(theta, self.rho, float(phi_value(self.phi, theta)))


@dataclass(frozen=True)
class SsviFitResult:
    params: SsviParams
    # One per input slice, in input order, raw-SVI form of each SSVI slice.
    slices: tuple[SviFitResult, ...]
    fit_time_ms: float
    warm_start: bool


_RHO_MAX = 0.995


def _atm_total_variance(d: SliceData) -> float:
    order = np.argsort(d.k)
    w = (d.mid_vol * d.mid_vol * d.t)[order]
    return float(np.interp(0.0, d.k[order], w))


def _unpack(x: Array, kind: PhiKind, n: int) -> tuple[float, Phi, Array]:
    rho = float(x[0])
    if kind == "power_law":
        eta = 2.0 / (1.0 + abs(rho)) * float(x[1])
        phi: Phi = PowerLawPhi(eta=eta, gamma=float(x[2]))
    else:
        phi = HestonPhi(lam=(1.0 + abs(rho)) / 4.0 * (1.0 + float(x[1])))
    thetas = np.cumsum(np.exp(x[3 : 3 + n]))
    return rho, phi, thetas


def fit_ssvi_surface(
    datas: Sequence[SliceData],
    kind: PhiKind = "power_law",
    warm: SsviParams | None = None,
) -> SsviFitResult:
    """Fit one SSVI surface to all slices (weighted least squares on total variance).

    The parametrisation keeps the surface free of static arbitrage by construction:
    theta_i = theta_{i-1} + e^{x_i}; power law eta = 2/(1+|rho|) q with q in (0, 1] and
    gamma in (0, 1/2]; Heston-like lambda = (1+|rho|)/4 (1 + q), q >= 0.
    Raises ValueError on empty input.
    """
    if not datas:
        raise ValueError("SSVI fit needs at least one slice")
    started = time.perf_counter()
    order = sorted(range(len(datas)), key=lambda i: datas[i].t)
    ds = [datas[i] for i in order]
    n = len(ds)
    ks = [d.k for d in ds]
    targets = [d.mid_vol * d.mid_vol * d.t for d in ds]
    sqrt_w = []
    for d in ds:
        om = d.vol_weight / (2.0 * d.mid_vol * d.t) ** 2
        om = np.where(np.isfinite(om) & (om > 0.0), om, 0.0)
        sqrt_w.append(np.sqrt(om / max(float(om.sum()), 1e-300)))

    wanted = PowerLawPhi if kind == "power_law" else HestonPhi
    use_warm = warm is not None and len(warm.thetas) == n and isinstance(warm.phi, wanted)
    if warm is not None and use_warm:
        thetas0 = np.maximum.accumulate(np.maximum(np.asarray(warm.thetas), 1e-8))
        rho0 = warm.rho
        if isinstance(warm.phi, PowerLawPhi):
            q1 = warm.phi.eta * (1.0 + abs(rho0)) / 2.0
            q2 = warm.phi.gamma
        else:
            q1 = warm.phi.lam * 4.0 / (1.0 + abs(rho0)) - 1.0
            q2 = 0.0
    else:
        atm = np.array([max(_atm_total_variance(d), 1e-8) for d in ds])
        thetas0 = np.maximum.accumulate(atm)
        rho0, q1, q2 = -0.2, 0.5, 0.4
        if kind == "heston":
            q1 = 1.0
    incr = np.diff(np.concatenate([[0.0], thetas0]))
    incr = np.maximum(incr, 1e-6 * float(thetas0[-1]))
    x0 = np.concatenate([[rho0, q1, q2], np.log(incr)])
    if kind == "power_law":
        lo = [-_RHO_MAX, 1e-4, 0.01]
        hi = [_RHO_MAX, 1.0, 0.5]
    else:
        lo = [-_RHO_MAX, 0.0, -1.0]
        hi = [_RHO_MAX, 1e4, 1.0]
    lo += [-50.0] * n
    hi += [5.0] * n
    x0 = np.clip(x0, np.array(lo) + 1e-12, np.array(hi) - 1e-12)

    def residuals(x: Array) -> Array:
        rho, phi, thetas = _unpack(x, kind, n)
        phis = phi_value(phi, thetas)
        parts = [
            sw * (ssvi_total_variance(float(th), rho, float(ph), k) - tg)
            for sw, th, ph, k, tg in zip(sqrt_w, thetas, phis, ks, targets, strict=True)
        ]
        return np.concatenate(parts)

    res = least_squares(
        residuals,
        x0,
        bounds=(np.array(lo), np.array(hi)),
        method="trf",
        x_scale="jac",
        max_nfev=200 if use_warm else 400,
    )
    rho, phi, thetas = _unpack(np.asarray(res.x, dtype=np.float64), kind, n)
    params = SsviParams(
        rho=rho, phi=phi, thetas=tuple(float(t) for t in thetas), ts=tuple(d.t for d in ds)
    )
    elapsed_ms = (time.perf_counter() - started) * 1e3
    per_slice: dict[int, SviFitResult] = {}
    for j, (i, d) in enumerate(zip(order, ds, strict=True)):
        raw = params.slice_raw(j)
        fitted = implied_vol(raw, d.k, d.t)
        resid_bp = (fitted - d.mid_vol) * 1e4
        used = d.vol_weight > 0.0
        r_used = resid_bp[used] if np.any(used) else resid_bp
        per_slice[i] = SviFitResult(
            params=raw,
            t=d.t,
            fitted_vol=fitted,
            residuals_bp=resid_bp,
            rmse_bp=float(np.sqrt(np.mean(r_used * r_used))),
            max_abs_residual_bp=float(np.max(np.abs(r_used))),
            objective=float(2.0 * res.cost),
            fit_time_ms=elapsed_ms / n,
            warm_start=use_warm,
            iterations=int(res.nfev),
        )
    return SsviFitResult(
        params=params,
        slices=tuple(per_slice[i] for i in range(len(datas))),
        fit_time_ms=elapsed_ms,
        warm_start=use_warm,
    )
