"""Machinery shared by the venue protocols (Deribit, OKX, Bybit, Binance): instrument names,
subscriptions, websocket sessions with idle timeouts and server pings, the tick loop that
quotes watched instruments within a message budget, the fault kinds and the listing faults.

A venue module subclasses `PushVenue` and provides its naming and quote style, how a request
is parsed into `Sub`s, and how an update becomes its own frames. Frames are built once per
subscription key and shared by every session holding it (see session.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from simulator.faults import FaultKind, FaultRequest
from simulator.market import (
    PERPETUAL_EXPIRY_NS,
    Book,
    ListingChanges,
    Naming,
    QuoteStyle,
    SimInstrument,
    Update,
    VenueMarket,
)
from simulator.session import FrameKind, FrameMutator, WsSession
from simulator.truth import expiry_label
from simulator.venue import VenueContext, VenueSim, VenueUrls

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# number text


def decimals_of(step: float) -> int:
    """Decimal places of a tick or step (0.0005 -> 4, 5.0 -> 0)."""
    exponent = Decimal(repr(float(step))).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def fixed(value: float, decimals: int) -> str:
    """`value` with exactly `decimals` places ("-0.000" becomes "0.000")."""
    text = f"{value:.{decimals}f}"
    if text[0] == "-" and not text.strip("-0."):
        return text[1:]
    return text


def trimmed(value: float, decimals: int) -> str:
    """`value` rounded to `decimals` places without trailing zeros ("0.018", "30316")."""
    text = f"{value:.{decimals}f}"
    if decimals:
        text = text.rstrip("0").rstrip(".")
    if text == "-0" or not text:
        return "0"
    return text


def yymmdd(expiry_ns: int) -> str:
    return datetime.fromtimestamp(expiry_ns / 1e9, tz=UTC).strftime("%y%m%d")


# ---------------------------------------------------------------------------------------
# instrument names


class DashedNaming(Naming):
    """Futures `{root}-{expiry}`, options `{root}-{expiry}-{strike}-{C|P}`: the scheme of all
    four venues, which differ only in the parts."""

    def root(self, currency: str) -> str:
        return currency

    def expiry_text(self, expiry_ns: int) -> str:
        return expiry_label(expiry_ns)

    def strike_text(self, strike: float) -> str:
        return trimmed(strike, 8)

    def perpetual(self, currency: str) -> str:
        raise NotImplementedError

    def option(self, currency: str, expiry_ns: int, strike: float, is_call: bool) -> str:
        side = "C" if is_call else "P"
        return (
            f"{self.root(currency)}-{self.expiry_text(expiry_ns)}-{self.strike_text(strike)}-{side}"
        )

    def future(self, currency: str, expiry_ns: int) -> str:
        if expiry_ns == PERPETUAL_EXPIRY_NS:
            return self.perpetual(currency)
        return f"{self.root(currency)}-{self.expiry_text(expiry_ns)}"


class NumberText:
    """Cached float -> venue string for book prices and sizes (the same few values recur)."""

    __slots__ = ("_cache", "decimals", "trim")

    def __init__(self, decimals: int, trim: bool) -> None:
        self.decimals = decimals
        self.trim = trim
        self._cache: dict[float, str] = {}

    def __call__(self, value: float) -> str:
        text = self._cache.get(value)
        if text is None:
            text = (trimmed if self.trim else fixed)(value, self.decimals)
            if len(self._cache) < 200_000:
                self._cache[value] = text
        return text


class LevelText:
    """Venue strings of book levels straight from a `Book`'s integer ticks and steps."""

    __slots__ = ("_book_amount", "_book_price", "_px", "_sz", "price_text", "size_text")

    def __init__(self, book: Book, price_text: NumberText, size_text: NumberText) -> None:
        self._book_price = book.price
        self._book_amount = book.amount
        self.price_text = price_text
        self.size_text = size_text
        self._px: dict[int, str] = {}
        self._sz: dict[int, str] = {}

    def levels(self, side: dict[int, int], bids: bool, depth: int | None = None) -> list[list[str]]:
        """[[price, size], ...] best first, at most `depth` levels."""
        keys = sorted(side, reverse=bids)
        if depth is not None:
            keys = keys[:depth]
        px, sz = self._px, self._sz
        out = []
        for k in keys:
            p = px.get(k)
            if p is None:
                p = px[k] = self.price_text(self._book_price(k))
            q = side[k]
            s = sz.get(q)
            if s is None:
                s = sz[q] = self.size_text(self._book_amount(q))
            out.append([p, s])
        return out


# ---------------------------------------------------------------------------------------
# subscriptions


class SubKind(IntEnum):
    # Snapshot, then incremental changes with a sequence.
    BOOK = 1
    # The whole top of the book on every change.
    BOOK_TOP = 2
    # Per-instrument quote channel.
    TICKER = 3
    # Per-currency aggregate of every option's quote (OKX opt-summary, Binance mark prices).
    FAMILY = 4
    INDEX = 5
    # Instrument listings.
    LISTING = 6
    # Periodic per-currency channel that watches nothing (Binance open interest).
    PERIODIC = 7


@dataclass(frozen=True, eq=False, slots=True)
class Sub:
    """One subscription as the venue understood it; `key` is unique per distinct channel."""

    key: str
    kind: SubKind
    # The venue's channel word ("books", "orderbook", "depth20", "tickers", ...).
    channel: str
    symbol: str = ""
    currency: str = ""
    depth: int = 0
    # The venue's own argument, echoed in acks and pushes (OKX arg object, stream name).
    arg: Any = None


def option_float(options: Mapping[str, object], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"venue option {key!r} must be a number")
    return float(value)


@dataclass(slots=True)
class MessageBudget:
    """A venue's message budget for market makers' requotes: a token bucket that refills
    at the venue's steady rate and holds `burst_s` seconds of it.

    Venues publish requotes as fast as the makers send them: after a jump the whole chain
    is requoted within the makers' latency, many times the quiet rate, for a few seconds.
    The steady rate caps the average, not the burst; below the rate the makers' own
    activity fills the rest (PushVenue.on_tick). The bucket starts empty: the burst
    allowance builds up from rate the requotes left unused, so a venue whose makers need
    more than the rate from the start sends the rate, never more for long (a client or a
    load generator counting frames sees the rate it set). At least one tick's share always
    fits, so `burst_s` 0 is a hard cap at the steady rate."""

    # Updates that may go out now beyond this tick's share.
    tokens: float = 0.0

    def refill(self, per_s: float, dt_s: float, burst_s: float) -> None:
        """Add `dt_s` of the steady rate `per_s` (updates per second), up to the capacity."""
        per_tick = max(per_s * dt_s, 0.0)
        capacity = max(per_s * burst_s, per_tick)
        self.tokens = min(self.tokens + per_tick, capacity)

    def take(self, wanted: int, draw: float) -> int:
        """How many of `wanted` updates go out now (the fraction of a token rounded up
        with probability equal to it, `draw` uniform in [0, 1)); they are spent."""
        sent = max(0, min(wanted, int(self.tokens + draw)))
        self.tokens -= sent
        return sent


class PushSession(WsSession):
    """A websocket connection of a push venue: its subscriptions and request accounting."""

    def __init__(
        self, venue: PushVenue, session_id: int, ws: web.WebSocketResponse, mutator: FrameMutator
    ) -> None:
        super().__init__(
            session_id, ws, mutator, venue.ctx.max_send_queue, on_counts=venue.count_frame
        )
        self.venue = venue
        self.subs: dict[str, Sub] = {}
        loop = asyncio.get_running_loop()
        self.opened_at = loop.time()
        self.last_received = self.opened_at
        self.conn_id = os.urandom(8).hex()
        # Receive times of recent requests (venues that limit incoming messages per second).
        self.recent: deque[float] = deque()
        # Whether pushes are wrapped in a stream envelope (Binance /stream vs /ws).
        self.enveloped = True
        self.pings_sent = 0

    def describe(self) -> dict[str, object]:
        """This connection's line in the venue's stats."""
        return {
            "id": self.id,
            "conn_id": self.conn_id,
            "channels": len(self.subs),
            "frames_sent": self.stats.frames_sent,
            "bytes_sent": self.stats.bytes_sent,
            "queued": len(self.out),
            "dropped_by_fault": self.stats.frames_dropped_by_fault,
            "pings_sent": self.pings_sent,
        }

    def over_rate(self, limit_per_s: float) -> bool:
        """Record one incoming request; True when it is above `limit_per_s` in the last second."""
        now = asyncio.get_running_loop().time()
        window = self.recent
        while window and now - window[0] >= 1.0:
            window.popleft()
        if len(window) >= limit_per_s:
            return True
        window.append(now)
        return False


# ---------------------------------------------------------------------------------------


class PushVenue(VenueSim):
    """Common behaviour of the four venue simulations (see module docstring)."""

    name: str
    # Notifications one instrument update makes when every channel is subscribed; turns the
    # configured message rate into instrument updates per second.
    messages_per_update: float = 1.0
    # Server side keep-alive policy (None: off); venues set these from their options.
    idle_timeout_s: float | None = None
    server_ping_s: float | None = None
    max_connection_age_s: float | None = None
    # Where the REST base and the websocket sit below the venue's mount point `/{name}`.
    rest_path: str = ""
    ws_path: str

    def __init__(
        self,
        ctx: VenueContext,
        naming: Naming,
        style_for: Callable[[str], QuoteStyle],
        seed_salt: int,
    ) -> None:
        self.ctx = ctx
        self.options: Mapping[str, object] = ctx.options
        self.naming = naming
        now = ctx.clock.now_ns()
        self.markets: dict[str, VenueMarket] = {}
        for n, (ccy, truth) in enumerate(ctx.truth.currencies.items()):
            self.markets[ccy] = VenueMarket(
                self.name, truth, style_for(ccy), naming, ctx.seed * 1000 + seed_salt + n, now
            )
        self.sessions: dict[int, PushSession] = {}
        self._next_session_id = 1
        self.subs: dict[str, dict[int, PushSession]] = {}
        self.sub_specs: dict[str, Sub] = {}
        # symbol -> {key: sub} for instrument channels somebody holds
        self.inst_subs: dict[str, dict[str, Sub]] = {}
        # currency -> {key: sub} for FAMILY / INDEX / PERIODIC channels
        self.currency_subs: dict[str, dict[str, Sub]] = {}
        self.listing_subs: dict[str, Sub] = {}
        # Options a FAMILY subscription keeps moving, per currency.
        self.family_holders: dict[str, int] = {}
        self.family_watched: dict[str, list[SimInstrument]] = {}
        self.stale_until: dict[str, float] = {}
        self.counters: dict[str, int] = {
            "connections_total": 0,
            "rest_requests": 0,
            "ws_requests": 0,
            "request_errors": 0,
            "rate_limited": 0,
            "idle_disconnects": 0,
            "age_disconnects": 0,
            "pings_sent": 0,
            "updates": 0,
            "notifications_built": 0,
            "frames_sent": 0,
            "bytes_sent": 0,
            "listed": 0,
            "expired": 0,
            # Requote-milliseconds of delay the gateway added: each tick, the requotes due
            # but waiting for the budget times the tick's length.
            "requote_ms_waited": 0,
        }
        self.frames_by_kind: dict[str, int] = {k.name.lower(): 0 for k in FrameKind}
        self.faults_applied: dict[str, int] = {}
        self._next_index_ns = 0
        self._level_texts: dict[str, LevelText] = {}
        self._texts: dict[float, NumberText] = {}
        # Subscriptions held, per kind (all sessions).
        self.kind_counts: dict[SubKind, int] = {}
        # The requotes' message budget; per currency, requotes due but not yet sent.
        self.budget = MessageBudget()
        self.rng = random.Random(ctx.seed * 1000 + seed_salt + 999)
        self.requotes_waiting: dict[str, int] = {}

    def text(self, step: float) -> NumberText:
        """The venue's number formatting for a price/size step (cached per step)."""
        fmt = self._texts.get(step)
        if fmt is None:
            fmt = self._texts[step] = NumberText(decimals_of(step), trim=True)
        return fmt

    def urls(self, host: str, port: int) -> VenueUrls:
        mount = f"{host}:{port}/{self.name}"
        return VenueUrls(
            rest_base=f"http://{mount}{self.rest_path}", ws_url=f"ws://{mount}{self.ws_path}"
        )

    # -- hooks a venue provides ----------------------------------------------------------
    def new_session(self, session_id: int, ws: web.WebSocketResponse) -> PushSession:
        raise NotImplementedError

    def on_open(self, session: PushSession, request: web.Request) -> None:
        """A connection opened (subscriptions named in the URL, ...)."""

    def on_text(self, session: PushSession, text: str) -> None:
        raise NotImplementedError

    def update_frame(
        self, market: VenueMarket, u: Update, sub: Sub
    ) -> tuple[bytes, FrameKind] | None:
        """The frame an instrument update makes on one of its subscriptions (None: nothing)."""
        raise NotImplementedError

    def needs_quotes(self, market: VenueMarket) -> bool:
        """Whether this tick's updates need bid/ask IVs and greeks (some channel shows them)."""
        return True

    def after_updates(self, market: VenueMarket, updates: list[Update], now_ns: int) -> None:
        """Aggregated channels of this tick's updates (OKX opt-summary)."""

    def on_periodic(self, now_ns: int) -> None:
        """Index pushes, periodic aggregates and book keep-alives (once per index interval)."""

    def announce_listing(self, market: VenueMarket, changes: ListingChanges, now_ns: int) -> None:
        """Push listing channels for instruments that appeared or expired."""

    def price_text(self, inst: SimInstrument) -> NumberText:
        """How the venue writes `inst`'s prices."""
        raise NotImplementedError

    def size_text(self, inst: SimInstrument) -> NumberText:
        raise NotImplementedError

    # -- plumbing -------------------------------------------------------------------------
    def level_text(self, inst: SimInstrument) -> LevelText:
        text = self._level_texts.get(inst.symbol)
        if text is None:
            text = LevelText(inst.book, self.price_text(inst), self.size_text(inst))
            self._level_texts[inst.symbol] = text
        return text

    def count_frame(self, kind: FrameKind, size: int) -> None:
        c = self.counters
        c["frames_sent"] += 1
        c["bytes_sent"] += size
        self.frames_by_kind[kind.name.lower()] += 1

    def now_ms(self) -> int:
        return self.ctx.clock.now_ns() // 1_000_000

    def find(self, symbol: str) -> tuple[VenueMarket, SimInstrument] | None:
        for market in self.markets.values():
            inst = market.by_symbol.get(symbol)
            if inst is not None:
                return market, inst
        return None

    def truth_forwards(self, currency: str) -> dict[int, float]:
        market = self.markets.get(currency.upper())
        if market is None:
            return {}
        snap = market.truth.snapshot()
        return {s.expiry_ns: market.forward_published(s) for s in snap.slices}

    @staticmethod
    def json_response(body: object, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    def push(self, key: str, frame: bytes, kind: FrameKind, symbol: str = "") -> int:
        """Queue `frame` for every holder of `key`; returns how many got it (a venue with
        per-connection framing overrides this)."""
        holders = self.subs.get(key)
        if not holders:
            return 0
        for session in holders.values():
            session.enqueue(frame, kind, symbol, key)
        return len(holders)

    # -- websocket ------------------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        sid = self._next_session_id
        self._next_session_id += 1
        session = self.new_session(sid, ws)
        self.sessions[sid] = session
        self.counters["connections_total"] += 1
        session.start()
        house: asyncio.Task[None] | None = None
        if self.idle_timeout_s or self.server_ping_s or self.max_connection_age_s:
            house = asyncio.create_task(self._housekeeping(session), name=f"sim-house-{sid}")
        loop = asyncio.get_running_loop()
        try:
            self.on_open(session, request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    text = msg.data
                elif msg.type == WSMsgType.BINARY:
                    text = msg.data.decode("utf-8", "replace")
                else:
                    break
                session.last_received = loop.time()
                if session.stalled:
                    continue
                self.counters["ws_requests"] += 1
                try:
                    self.on_text(session, text)
                except Exception:
                    # A request the venue code did not foresee must not kill the connection.
                    log.exception("%s: request handling failed", self.name)
                    self.counters["request_errors"] += 1
        finally:
            if house is not None:
                house.cancel()
            self.drop_session(session)
            await session.close()
        return ws

    async def _housekeeping(self, session: PushSession) -> None:
        loop = asyncio.get_running_loop()
        periods = [p for p in (self.idle_timeout_s, self.server_ping_s) if p]
        step = min([0.5, *(p / 4.0 for p in periods)])
        next_ping = loop.time() + (self.server_ping_s or 0.0)
        while not session.closed:
            await asyncio.sleep(step)
            now = loop.time()
            if self.idle_timeout_s and now - session.last_received > self.idle_timeout_s:
                self.counters["idle_disconnects"] += 1
                await session.close(4004, "no data received within the idle timeout")
                return
            age = self.max_connection_age_s
            if age and now - session.opened_at > age:
                self.counters["age_disconnects"] += 1
                await session.close(1000, "connection lifetime reached")
                return
            if self.server_ping_s and now >= next_ping:
                next_ping = now + self.server_ping_s
                if not session.stalled and not session.closed:
                    try:
                        await session.ws.ping(b"sim")
                    except (ConnectionError, RuntimeError):
                        return
                    session.pings_sent += 1
                    self.counters["pings_sent"] += 1

    # -- subscriptions --------------------------------------------------------------------
    def add_sub(self, session: PushSession, sub: Sub) -> bool:
        """Hold `sub` on `session`; False when the session already held it."""
        if sub.key in session.subs:
            return False
        session.subs[sub.key] = sub
        holders = self.subs.setdefault(sub.key, {})
        if not holders:
            self.sub_specs[sub.key] = sub
            if sub.symbol:
                self.inst_subs.setdefault(sub.symbol, {})[sub.key] = sub
            elif sub.kind == SubKind.LISTING:
                self.listing_subs[sub.key] = sub
            elif sub.currency:
                self.currency_subs.setdefault(sub.currency, {})[sub.key] = sub
        holders[session.id] = session
        self.kind_counts[sub.kind] = self.kind_counts.get(sub.kind, 0) + 1
        if sub.symbol:
            found = self.find(sub.symbol)
            if found is not None:
                found[0].set_watched(found[1], +1)
        elif sub.kind == SubKind.FAMILY:
            self._watch_family(sub.currency, +1)
        return True

    def remove_sub(self, session: PushSession, key: str) -> Sub | None:
        sub = session.subs.pop(key, None)
        if sub is None:
            return None
        holders = self.subs.get(key)
        self.kind_counts[sub.kind] = self.kind_counts.get(sub.kind, 1) - 1
        if holders is not None:
            holders.pop(session.id, None)
            if not holders:
                del self.subs[key]
                self.sub_specs.pop(key, None)
                if sub.symbol:
                    chans = self.inst_subs.get(sub.symbol)
                    if chans is not None:
                        chans.pop(key, None)
                        if not chans:
                            del self.inst_subs[sub.symbol]
                elif sub.kind == SubKind.LISTING:
                    self.listing_subs.pop(key, None)
                elif sub.currency:
                    chans = self.currency_subs.get(sub.currency)
                    if chans is not None:
                        chans.pop(key, None)
        if sub.symbol:
            found = self.find(sub.symbol)
            if found is not None:
                found[0].set_watched(found[1], -1)
        elif sub.kind == SubKind.FAMILY:
            self._watch_family(sub.currency, -1)
        session.forget_channel(key)
        return sub

    def drop_session(self, session: PushSession) -> None:
        for key in list(session.subs):
            self.remove_sub(session, key)
        self.sessions.pop(session.id, None)

    def _watch_family(self, currency: str, delta: int) -> None:
        market = self.markets.get(currency)
        if market is None:
            return
        before = self.family_holders.get(currency, 0)
        after = max(0, before + delta)
        self.family_holders[currency] = after
        if before == 0 and after > 0:
            watched = market.open_instruments("option")
            for inst in watched:
                market.set_watched(inst, +1)
            self.family_watched[currency] = watched
        elif before > 0 and after == 0:
            for inst in self.family_watched.pop(currency, []):
                market.set_watched(inst, -1)

    def instruments_by_market(self, subs: Iterable[Sub]) -> dict[str, list[SimInstrument]]:
        """The instruments `subs` name, per currency: new subscriptions build their books and
        quotes one batch per market."""
        per_market: dict[str, list[SimInstrument]] = {}
        for sub in subs:
            found = self.find(sub.symbol) if sub.symbol else None
            if found is not None:
                per_market.setdefault(found[0].currency, []).append(found[1])
        return per_market

    def quote_now(self, market: VenueMarket, insts: Sequence[SimInstrument]) -> list[Update]:
        """Current quotes of `insts` (books built first where nobody kept them live)."""
        now_ns = self.ctx.clock.now_ns()
        live = [i for i in insts if i.state == "open"]
        market.ensure_books(live, now_ns)
        return market.update(live, now_ns, churn=False)

    # -- tick ---------------------------------------------------------------------------
    def _is_stale(self, symbol: str, now_wall: float) -> bool:
        if not self.stale_until:
            return False
        for key in (symbol, ""):
            until = self.stale_until.get(key)
            if until is not None:
                if now_wall < until:
                    return True
                del self.stale_until[key]
        return False

    def on_tick(self, now_ns: int, dt_s: float) -> None:
        loop_time = asyncio.get_running_loop().time()
        # Market makers requote what the truth moved by a tick, after their latency
        # (docs/simulator.md section 1); a stale-quotes fault holds them back too. The
        # requotes go out as they fall due, bursting above the steady rate as far as the
        # venue's budget (a token bucket) allows; short of it each currency gets a share
        # by what it has due, earliest due first. The makers' own activity (a random
        # choice of books) fills what the requotes leave of the steady rate.
        steady = self.ctx.messages_per_second / self.messages_per_update
        self.budget.refill(steady, dt_s, self.ctx.burst_s)
        dues: dict[str, list[SimInstrument]] = {}
        for market in self.markets.values():
            changes = market.sync_listings(now_ns)
            if changes.listed or changes.expired:
                self.on_listing(market, changes, now_ns)
            market.reprice(now_ns)
            dues[market.currency] = [
                i for i in market.due(now_ns) if not self._is_stale(i.symbol, loop_time)
            ]
        wanted = sum(len(d) for d in dues.values())
        sent = self.budget.take(wanted, self.rng.random())
        filler = steady * dt_s - sent
        total_open = sum(len(m.open_instruments()) for m in self.markets.values()) or 1
        for market in self.markets.values():
            due = dues[market.currency]
            quota = len(due) if sent >= wanted else round(sent * len(due) / wanted)
            self.requotes_waiting[market.currency] = len(due) - quota
            self.counters["requote_ms_waited"] += round((len(due) - quota) * dt_s * 1e3)
            due = due[:quota]
            share = len(market.open_instruments()) / total_open
            selected = market.select(filler * share)
            chosen = [
                i for i in selected if i.watchers > 0 and not self._is_stale(i.symbol, loop_time)
            ]
            if due and chosen:
                picked = {id(i) for i in due}
                chosen = [i for i in chosen if id(i) not in picked]
            if not chosen and not due:
                continue
            quotes = self.needs_quotes(market)
            updates = market.update(chosen, now_ns, quotes=quotes) if chosen else []
            if due:
                updates += market.update(due, now_ns, quotes=quotes, requote=True)
            self.counters["updates"] += len(updates)
            self.publish_updates(market, updates)
            self.after_updates(market, updates, now_ns)
        if now_ns >= self._next_index_ns and not self.paused:
            self._next_index_ns = now_ns + int(self.ctx.index_interval_s * 1e9)
            self.on_periodic(now_ns)

    def publish_updates(self, market: VenueMarket, updates: Iterable[Update]) -> None:
        built = 0
        for u in updates:
            sym = u.inst.symbol
            chans = self.inst_subs.get(sym)
            if not chans:
                continue
            for key, sub in chans.items():
                holders = self.subs.get(key)
                if not holders:
                    continue
                made = self.update_frame(market, u, sub)
                if made is None:
                    continue
                built += 1
                self.push(key, made[0], made[1], sym)
        self.counters["notifications_built"] += built

    def on_listing(self, market: VenueMarket, changes: ListingChanges, now_ns: int) -> None:
        self.counters["listed"] += len(changes.listed)
        self.counters["expired"] += len(changes.expired)
        if self.family_holders.get(market.currency, 0) > 0:
            watched = self.family_watched.setdefault(market.currency, [])
            for inst in changes.listed:
                if inst.kind == "option":
                    market.set_watched(inst, +1)
                    watched.append(inst)
        self.announce_listing(market, changes, now_ns)

    # -- faults ---------------------------------------------------------------------------
    def _targets(self, request: FaultRequest) -> list[PushSession]:
        if request.connection_id is None:
            return [s for s in self.sessions.values() if not s.closed]
        s = self.sessions.get(request.connection_id)
        if s is None:
            raise ValueError(f"no open connection {request.connection_id}")
        return [s]

    def _currency_for(self, request: FaultRequest) -> str:
        if request.currency:
            if request.currency not in self.markets:
                raise ValueError(f"currency {request.currency} not simulated")
            return request.currency
        return next(iter(self.markets))

    async def apply_fault(self, request: FaultRequest) -> dict[str, object]:
        kind = request.kind
        result: dict[str, object] = {"kind": kind.value, "venue": self.name}
        if kind in (FaultKind.EXPIRE, FaultKind.LIST):
            result.update(self._listing_fault(request))
        elif kind == FaultKind.STALE_QUOTES:
            until = asyncio.get_running_loop().time() + request.duration_s
            self.stale_until[request.symbol or ""] = until
            result["symbol"] = request.symbol
            result["duration_s"] = request.duration_s
        else:
            done: list[int] = []
            # Frames made up and sent (the bad-input faults), so a sender can reconcile them.
            injected = 0
            for s in self._targets(request):
                if kind == FaultKind.DISCONNECT:
                    await s.close(1001, "sim fault: disconnect")
                elif kind == FaultKind.HEARTBEAT_STALL:
                    s.stall(request.duration_s)
                elif kind == FaultKind.SEQUENCE_GAP:
                    s.add_gap(request.symbol, request.count)
                elif kind == FaultKind.OUT_OF_ORDER:
                    s.add_swap(request.symbol, request.count)
                elif kind == FaultKind.DUPLICATE:
                    for _ in range(request.count):
                        if not s.duplicate_last(request.symbol):
                            break
                elif kind == FaultKind.MALFORMED:
                    for _ in range(request.count):
                        s.send_malformed()
                    injected += request.count
                elif kind in (FaultKind.WRONG_TYPES, FaultKind.UNKNOWN_CHANNEL):
                    mutate = (
                        s.mutator.wrong_types
                        if kind == FaultKind.WRONG_TYPES
                        else s.mutator.unknown_channel
                    )
                    for _ in range(request.count):
                        if not s.send_mutated(mutate):
                            break
                        injected += 1
                elif kind == FaultKind.UNKNOWN_FIELDS:
                    s.add_unknown_fields(request.count)
                elif kind == FaultKind.MISSING_FIELDS:
                    s.add_missing_fields(request.count)
                done.append(s.id)
            result["connections"] = done
            result["symbol"] = request.symbol
            result["injected"] = injected
        self.faults_applied[kind.value] = self.faults_applied.get(kind.value, 0) + 1
        return result

    def _listing_fault(self, request: FaultRequest) -> dict[str, object]:
        now_ns = self.ctx.clock.now_ns()
        if request.symbol:
            found = self.find(request.symbol)
            if found is None:
                raise ValueError(f"unknown instrument {request.symbol}")
            market, ref = found
        else:
            market = self.markets[self._currency_for(request)]
            options = market.open_instruments("option")
            if not options:
                raise ValueError("no open options")
            ref = min(options, key=lambda i: i.expiry_ns)
        if request.kind == FaultKind.EXPIRE:
            if request.symbol:
                victims = [ref] if ref.state == "open" else []
            else:
                victims = [i for i in market.open_instruments() if i.expiry_ns == ref.expiry_ns]
            for inst in victims:
                market.expire(inst)
            self.on_listing(market, ListingChanges(expired=victims), now_ns)
            return {"symbols": [i.symbol for i in victims]}
        strike = request.strike or free_strike(market, ref.expiry_ns)
        listed = market.list_strike(ref.expiry_ns, strike, now_ns)
        self.on_listing(market, ListingChanges(listed=listed), now_ns)
        return {"symbols": [i.symbol for i in listed], "strike": strike}

    def set_rate(self, messages_per_second: float) -> None:
        self.ctx = replace(self.ctx, messages_per_second=messages_per_second)

    @property
    def paused(self) -> bool:
        """A rate of 0 (POST /control/rate) pauses the periodic pushes too: a paused venue
        sends only heartbeats and answers, so a load generator can drain the pipeline."""
        return self.ctx.messages_per_second <= 0

    # -- stats / close ------------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        return {
            "connections_open": sum(1 for s in self.sessions.values() if not s.closed),
            "connections": [s.describe() for s in self.sessions.values()],
            "channels_subscribed": len(self.subs),
            "instruments_open": {ccy: len(m.open_instruments()) for ccy, m in self.markets.items()},
            "messages_per_second": self.ctx.messages_per_second,
            "burst_s": self.ctx.burst_s,
            "requotes": {ccy: m.requotes for ccy, m in self.markets.items()},
            "requotes_waiting": dict(self.requotes_waiting),
            "counters": dict(self.counters),
            "frames_by_kind": dict(self.frames_by_kind),
            "faults_applied": dict(self.faults_applied),
        }

    async def close(self) -> None:
        for s in list(self.sessions.values()):
            await s.close(1001, "simulator stopping")


def free_strike(market: VenueMarket, expiry_ns: int) -> float:
    """A strike between two listed ones near the forward (for a mid-session listing)."""
    strikes = sorted(
        {i.strike for i in market.open_instruments("option") if i.expiry_ns == expiry_ns}
    )
    snap = market.truth.snapshot()
    s = snap.slice_for(expiry_ns)
    fwd = s.forward if s else snap.index
    pairs = sorted(itertools.pairwise(strikes), key=lambda p: abs(p[0] - fwd))
    taken = set(strikes)
    for lo, hi in pairs:
        mid = (lo + hi) / 2.0
        mid = float(round(mid)) if mid >= 10 else round(mid, 2)
        if lo < mid < hi and mid not in taken:
            return mid
    return (strikes[-1] * 2.0) if strikes else float(round(fwd))


class JsonMutator(FrameMutator):
    """Field faults on JSON frames: `payloads(obj)` yields the dicts that carry the data."""

    # Made-up field names in the venue's own casing (a parser keyed on case must still cope).
    unannounced_field = "xSimUnannounced"
    new_field = "xSimNewField"
    version_field = "simVersion"
    version_value: object = "2"

    def __init__(self, optional_fields: Iterable[str]) -> None:
        self.optional_fields = tuple(optional_fields)

    def payloads(self, obj: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def add_unknown_fields(self, frame: bytes) -> bytes:
        obj = orjson.loads(frame)
        if isinstance(obj, dict):
            obj[self.unannounced_field] = True
        for entry in self.payloads(obj):
            entry[self.new_field] = {"nested": [1, 2.5, "three"], "flag": None}
            entry[self.version_field] = self.version_value
        return orjson.dumps(obj)

    def drop_optional_fields(self, frame: bytes) -> bytes:
        obj = orjson.loads(frame)
        for entry in self.payloads(obj):
            for key in self.optional_fields:
                entry.pop(key, None)
        return orjson.dumps(obj)

    def rename_channel(self, obj: Any) -> None:
        """Put `obj` (a decoded notification) on a channel of the venue's shape that nobody
        subscribed."""
        raise NotImplementedError

    def wrong_types(self, frame: bytes) -> bytes:
        """Every data field of the wrong JSON type, the envelope intact: a frame the venue's
        parser routes but cannot read."""
        obj = orjson.loads(frame)
        for entry in self.payloads(obj):
            for key, value in entry.items():
                entry[key] = wrong_type(value)
        return orjson.dumps(obj)

    def unknown_channel(self, frame: bytes) -> bytes:
        obj = orjson.loads(frame)
        self.rename_channel(obj)
        return orjson.dumps(obj)


def wrong_type(value: object) -> object:
    """A JSON value of another type than `value`'s (numbers and text swap, containers flip)."""
    if isinstance(value, bool) or value is None:
        return {"unexpected": value}
    if isinstance(value, int | float):
        return f"not-a-number:{value}"
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return {"unexpected": "list"}
    return "not-an-object"


def entries_of(value: object) -> list[dict[str, Any]]:
    """The dict entries of a `data` value (a dict or a list of dicts)."""
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [e for e in value if isinstance(e, dict)]
    return []
