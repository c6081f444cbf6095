"""The simulator process: one aiohttp server, one path prefix per venue, a tick loop that moves
the shared truth and every venue's market, control endpoints, and the truth on NATS.

    handle = await run_simulator(SimConfig(port=0, venues=("deribit", "okx", "bybit", "binance")))
    handle.urls["deribit"].ws_url      # ws://127.0.0.1:PORT/deribit/ws/api/v2
    handle.urls["deribit"].rest_base   # http://127.0.0.1:PORT/deribit/api/v2
    handle.urls["okx"].rest_base       # http://127.0.0.1:PORT/okx  (+ /api/v5/public/...)
    await handle.fault("sequence_gap", venue="okx", symbol="BTC-USD-...")
    await handle.stop()

Every venue quotes the same truth per currency, each with its own naming, units, forward,
spreads and ticks; the truth is published per venue on sim.truth.<venue>.<ccy> with that
venue's forwards.

Control: POST /control/fault {"venue","kind","symbol"?,...}; POST /control/rate
{"messages_per_second", "venue"?} (a load generator's bursts and pauses); GET /control/stats;
GET /control/truth?currency=BTC; GET /control/health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web

from simulator.binance import BinanceVenue
from simulator.bybit import BybitVenue
from simulator.clock import ClockMode, SimClock, start_from_env
from simulator.deribit import DeribitVenue
from simulator.faults import FaultRequest, parse_kind
from simulator.okx import OkxVenue
from simulator.truth import (
    TruthConfig,
    TruthMarket,
    surface_proto,
    truth_json,
)
from simulator.venue import VenueContext, VenueSim, VenueUrls
from volstream.bus.connection import credential_options
from volstream.scenario import Scenario
from volstream.subjects import Subjects
from volstream.v1 import surface_pb2

log = logging.getLogger(__name__)

# URL layout: one port, one path prefix per venue, the live path layout below it:
#   deribit  {http}/deribit/api/v2/public/...            {ws}/deribit/ws/api/v2
#   okx      {http}/okx/api/v5/public/instruments?...     {ws}/okx/ws/v5/public
#   bybit    {http}/bybit/v5/market/instruments-info?...  {ws}/bybit/v5/public/option
#   binance  {http}/binance/eapi/v1/exchangeInfo          {ws}/binance/ws, {ws}/binance/stream
VENUE_FACTORIES: dict[str, Callable[[VenueContext], VenueSim]] = {
    "deribit": DeribitVenue,
    "okx": OkxVenue,
    "bybit": BybitVenue,
    "binance": BinanceVenue,
}


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    # 0: a free port (read it from the handle).
    port: int = 0
    venues: tuple[str, ...] = ("deribit",)
    currencies: tuple[str, ...] = ("BTC", "ETH")
    seed: int = 7
    # Per venue: book-change + ticker notifications per second if every instrument's book
    # and ticker channels are subscribed (a client watching a subset gets its share).
    messages_per_second: float = 2_000.0
    # Requotes after a move may burst above that rate by this many seconds of it (a token
    # bucket; 0: the rate is a hard cap).
    burst_s: float = 30.0
    tick_interval_s: float = 0.1
    clock: ClockMode = "realtime"
    # Event time at start (default: VOLSTREAM_SIM_START when set, else now); the listed
    # expiries follow from it.
    start_time_ns: int | None = field(default_factory=start_from_env)
    # "fast" clock: simulated seconds per wall second (<= 0: as fast as possible).
    speed: float = 10.0
    nats_url: str | None = None
    # The simulator's NATS user (volstream up gives it one that may publish sim.truth.> only).
    nats_user: str | None = None
    nats_password: str | None = field(default=None, repr=False)
    namespace: str = ""
    # Truth publication period on NATS (simulated seconds).
    truth_interval_s: float = 1.0
    # Index and DVOL notification period (simulated seconds).
    index_interval_s: float = 1.0
    # Deribit rejects set_heartbeat below 10 s; tests may lower it.
    min_heartbeat_interval_s: float = 10.0
    # Frames queued for one connection before it is cut off as a slow consumer.
    max_send_queue: int = 200_000
    max_expiries: int | None = None
    surface_drift: float = 1.0
    index_vol_scale: float = 1.0
    # Expiries nearer than this at start are not listed (they would expire mid-run).
    min_time_to_expiry_s: float = 12 * 3600.0
    max_time_to_expiry_days: float = 230.0
    # Per-venue message rates overriding `messages_per_second` ({"okx": 5000.0, ...}).
    venue_rates: Mapping[str, float] = field(default_factory=dict)
    # Per-venue settings, documented in each venue module ({"binance": {"units": {...}}}).
    venue_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # Market scenario and market-maker behaviour (volstream/scenario.py, docs/simulator.md).
    scenario: Scenario = field(default_factory=Scenario)

    def rate_for(self, venue: str) -> float:
        return float(self.venue_rates.get(venue, self.messages_per_second))

    def truth_config(self) -> TruthConfig:
        return TruthConfig(
            currencies=tuple(c.upper() for c in self.currencies),
            seed=self.seed,
            max_expiries=self.max_expiries,
            surface_drift=self.surface_drift,
            index_vol_scale=self.index_vol_scale,
            min_time_to_expiry_s=self.min_time_to_expiry_s,
            max_time_to_expiry_days=self.max_time_to_expiry_days,
            scenario=self.scenario,
        )


class SimHandle:
    """A running simulator."""

    def __init__(self, config: SimConfig) -> None:
        unknown = [v for v in config.venues if v not in VENUE_FACTORIES]
        if unknown:
            raise ValueError(f"venues not simulated: {unknown}; known: {sorted(VENUE_FACTORIES)}")
        self.config = config
        self.clock = SimClock(
            config.clock, int(config.tick_interval_s * 1e9), start_ns=config.start_time_ns
        )
        self.truth = TruthMarket(config.truth_config(), self.clock.now_ns())
        ctx = VenueContext(
            truth=self.truth,
            clock=self.clock,
            seed=config.seed,
            messages_per_second=config.messages_per_second,
            tick_interval_s=config.tick_interval_s,
            index_interval_s=config.index_interval_s,
            min_heartbeat_interval_s=config.min_heartbeat_interval_s,
            max_send_queue=config.max_send_queue,
            burst_s=config.burst_s,
        )
        self.venues: dict[str, VenueSim] = {
            v: VENUE_FACTORIES[v](
                replace(
                    ctx,
                    messages_per_second=config.rate_for(v),
                    options=dict(config.venue_options.get(v, {})),
                )
            )
            for v in config.venues
        }
        self.subjects = Subjects(config.namespace)
        self.host = config.host
        self.port = 0
        self.urls: dict[str, VenueUrls] = {}
        self.truth_revision = 0
        self.truth_published = 0
        self.tick_time_s = 0.0
        self.ticks = 0
        self._started_wall = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._nats: Any = None
        self._next_truth_ns = 0
        self._last_tick_ns = self.clock.now_ns()
        self._stopping = False

    # -- public API -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def venue_urls(self, venue: str) -> VenueUrls:
        return self.urls[venue]

    def venue(self, name: str) -> VenueSim:
        return self.venues[name]

    def truth_surface(self, currency: str, venue: str = "deribit") -> surface_pb2.Surface:
        """The truth as `venue` quotes it: the same smile on the venue's own forwards."""
        sim_venue = self.venues.get(venue)
        return surface_proto(
            self.truth.snapshot(currency),
            venue,
            revision=self.truth_revision,
            publish_time_ns=time.time_ns(),
            forwards=sim_venue.truth_forwards(currency) if sim_venue is not None else None,
        )

    async def inject(self, request: FaultRequest) -> dict[str, object]:
        venue = self.venues.get(request.venue)
        if venue is None:
            raise ValueError(f"venue {request.venue!r} not simulated")
        return await venue.apply_fault(request)

    async def fault(self, kind: str, venue: str = "deribit", **kwargs: Any) -> dict[str, object]:
        """`await handle.fault("sequence_gap", symbol=..., count=1)`; see FaultRequest."""
        body: dict[str, object] = {"kind": kind, "venue": venue, **kwargs}
        parse_kind(kind)
        return await self.inject(FaultRequest.from_json(body))

    def set_rate(self, messages_per_second: object, venue: str | None = None) -> list[str]:
        """Per venue (every venue unless one is named), from the next tick; the venues set."""
        if isinstance(messages_per_second, bool) or not isinstance(
            messages_per_second, int | float
        ):
            raise ValueError("'messages_per_second' must be a number")
        if not 0 <= messages_per_second <= 1_000_000:
            raise ValueError(f"'messages_per_second' {messages_per_second} not in [0, 1e6]")
        if venue is not None and venue not in self.venues:
            raise ValueError(f"venue {venue!r} not simulated")
        names = [venue] if venue is not None else list(self.venues)
        for name in names:
            self.venues[name].set_rate(float(messages_per_second))
        return names

    def stats(self) -> dict[str, object]:
        return {
            "uptime_s": round(time.monotonic() - self._started_wall, 3),
            "clock": self.clock.mode,
            "sim_time_ns": self.clock.now_ns(),
            "ticks": self.ticks,
            "tick_cpu_ms_avg": round(1e3 * self.tick_time_s / max(self.ticks, 1), 3),
            "truth_published": self.truth_published,
            "venues": {name: v.stats() for name, v in self.venues.items()},
        }

    async def step(self, ticks: int = 1) -> int:
        """Run `ticks` ticks now (any clock; the way to drive the "manual" clock)."""
        for _ in range(ticks):
            await self._tick_once()
        await asyncio.sleep(0)
        return self.clock.now_ns()

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        for name, venue in self.venues.items():
            app.add_subapp(f"/{name}", venue.app())
        app.router.add_post("/control/fault", self._http_fault)
        app.router.add_post("/control/rate", self._http_rate)
        app.router.add_get("/control/stats", self._http_stats)
        app.router.add_get("/control/truth", self._http_truth)
        app.router.add_get("/control/health", self._http_health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        else:
            self.port = self.config.port
        self.urls = {name: v.urls(self.host, self.port) for name, v in self.venues.items()}
        if self.config.nats_url:
            import nats

            self._nats = await nats.connect(
                self.config.nats_url,
                max_reconnect_attempts=-1,
                name="volstream-sim",
                **credential_options(self.config.nats_user, self.config.nats_password),
            )
        if self.config.clock != "manual":
            self._tick_task = asyncio.create_task(self._tick_loop(), name="sim-tick")

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
        for venue in self.venues.values():
            await venue.close()
        if self._nats is not None:
            with contextlib.suppress(Exception):
                await self._nats.drain()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> SimHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- ticking ------------------------------------------------------------------------
    async def _tick_once(self) -> None:
        started = time.perf_counter()
        now = self.clock.advance()
        # A late tick does not make a bigger burst (that would only fall further behind).
        dt_s = min(max(0.0, (now - self._last_tick_ns) / 1e9), 2.0 * self.config.tick_interval_s)
        self._last_tick_ns = now
        self.truth.step(now)
        for venue in self.venues.values():
            venue.on_tick(now, dt_s)
        self.ticks += 1
        self.tick_time_s += time.perf_counter() - started
        if now >= self._next_truth_ns:
            self._next_truth_ns = now + int(self.config.truth_interval_s * 1e9)
            self.truth_revision += 1
            if self._nats is not None:
                await self._publish_truth()

    def venue_truth(self, base: surface_pb2.Surface, venue: str) -> surface_pb2.Surface:
        """`base` (one currency's truth) re-labelled for `venue`, on the venue's forwards."""
        surface = surface_pb2.Surface()
        surface.CopyFrom(base)
        surface.venue = venue
        surface.header.source = f"sim.{venue}"
        forwards = self.venues[venue].truth_forwards(base.currency)
        for slice_msg in surface.slices:
            fwd = forwards.get(slice_msg.expiry_time_ns)
            if fwd is not None:
                slice_msg.forward_usd = fwd
        return surface

    async def _publish_truth(self) -> None:
        for ccy in self.truth.currencies:
            # The smile is the same for every venue: build it once, change the forwards.
            base = surface_proto(
                self.truth.snapshot(ccy),
                "",
                revision=self.truth_revision,
                publish_time_ns=time.time_ns(),
            )
            for venue in self.venues:
                surface = self.venue_truth(base, venue)
                try:
                    await self._nats.publish(
                        self.subjects.sim_truth(venue, ccy), surface.SerializeToString()
                    )
                    self.truth_published += 1
                except Exception as exc:
                    log.warning("truth publish failed: %s", exc)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.clock == "fast":
            period = cfg.tick_interval_s / cfg.speed if cfg.speed > 0 else 0.0
        else:
            period = cfg.tick_interval_s
        next_at = loop.time()
        while True:
            try:
                await self._tick_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("simulator tick failed")
            next_at += period
            delay = next_at - loop.time()
            if delay < period * 0.25:
                # Behind (CPU starved): leave the senders at least a quarter of each period
                # rather than ticking back to back and queueing frames nobody sends.
                next_at = loop.time() + period * 0.25
                delay = period * 0.25
            await asyncio.sleep(delay)

    # -- control endpoints ----------------------------------------------------------------
    @staticmethod
    def _json(body: object, status: int = 200) -> web.Response:
        return web.Response(
            body=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
            status=status,
            content_type="application/json",
        )

    async def _http_fault(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            result = await self.inject(FaultRequest.from_json(body))
        except (ValueError, orjson.JSONDecodeError) as exc:
            return self._json({"ok": False, "error": str(exc)}, status=400)
        return self._json({"ok": True, **result})

    async def _http_rate(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("rate body must be a JSON object")
            venue = body.get("venue")
            if venue is not None and not isinstance(venue, str):
                raise ValueError("'venue' must be a string")
            venues = self.set_rate(body.get("messages_per_second"), venue)
        except (ValueError, orjson.JSONDecodeError) as exc:
            return self._json({"ok": False, "error": str(exc)}, status=400)
        return self._json({"ok": True, "venues": venues})

    async def _http_stats(self, request: web.Request) -> web.Response:
        return self._json(self.stats())

    async def _http_truth(self, request: web.Request) -> web.Response:
        ccy = request.query.get("currency", next(iter(self.truth.currencies))).upper()
        if ccy not in self.truth.currencies:
            return self._json({"ok": False, "error": f"currency {ccy} not simulated"}, 400)
        return self._json(truth_json(self.truth.snapshot(ccy)))

    async def _http_health(self, request: web.Request) -> web.Response:
        return self._json({"ok": True, "sim_time_ns": self.clock.now_ns()})


async def run_simulator(config: SimConfig | None = None) -> SimHandle:
    """Start the simulator on `config.host:config.port` and return its handle."""
    handle = SimHandle(config or SimConfig())
    try:
        await handle.start()
    except BaseException:
        await handle.stop()
        raise
    return handle
