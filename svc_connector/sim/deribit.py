"""Deribit API v2 as the simulator speaks it: JSON-RPC over websocket and HTTP GET, message
shapes and units as in the recordings under fixtures/venues/deribit.

Routes (mounted under /deribit):
  GET  /api/v2/public/{method}?params    JSON-RPC over HTTP (get_instruments, ticker, ...)
  POST /api/v2[/public/{method}]          JSON-RPC body over HTTP
  GET  /ws/api/v2                         websocket: subscribe, heartbeat, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from svc_connector.sim.faults import FaultKind, FaultRequest
from svc_connector.sim.market import (
    PERPETUAL_EXPIRY_NS,
    FutureUpdate,
    Naming,
    OptionUpdate,
    QuoteStyle,
    SimInstrument,
    Update,
    VenueMarket,
)
from svc_connector.sim.session import FrameKind, FrameMutator, WsSession
from svc_connector.sim.truth import ExpiryTruth, expiry_label, vol_index
from svc_connector.sim.venue import VenueContext, VenueSim, VenueUrls

log = logging.getLogger(__name__)

VENUE = "deribit"
API_VERSION = "1.2.26"
GROUPED_DEPTHS = (1, 10, 20)
INTERVALS = ("100ms", "agg2")
KINDS = ("option", "future", "spot", "future_combo", "option_combo")
# Ticker fields a "missing fields" fault removes (the venue documents them as optional).
OPTIONAL_TICKER_FIELDS = (
    "greeks",
    "stats",
    "open_interest",
    "last_price",
    "settlement_price",
    "estimated_delivery_price",
    "min_price",
    "max_price",
    "interest_rate",
)


def strike_text(strike: float) -> str:
    if float(strike).is_integer():
        return str(int(strike))
    # USDC-linear style: 'd' is the decimal point (1d02).
    return repr(float(strike)).replace(".", "d")


class DeribitNaming(Naming):
    def option(self, currency: str, expiry_ns: int, strike: float, is_call: bool) -> str:
        side = "C" if is_call else "P"
        return f"{currency}-{expiry_label(expiry_ns)}-{strike_text(strike)}-{side}"

    def future(self, currency: str, expiry_ns: int) -> str:
        if expiry_ns == PERPETUAL_EXPIRY_NS:
            return f"{currency}-PERPETUAL"
        return f"{currency}-{expiry_label(expiry_ns)}"

    def synthetic_underlying(self, currency: str, expiry_ns: int) -> str:
        return f"SYN.{currency}-{expiry_label(expiry_ns)}"

    def lists_future(self, expiry: ExpiryTruth) -> bool:
        # Deribit lists futures on the weekly, monthly and quarterly Fridays, not dailies.
        return expiry.spec.period != "day"


def deribit_style(currency: str) -> QuoteStyle:
    if currency == "BTC":
        return QuoteStyle(option_amount_step=0.1, future_tick=0.5, future_amount_step=10.0)
    if currency == "ETH":
        return QuoteStyle(
            option_amount_step=1.0,
            future_tick=0.05,
            future_amount_step=1.0,
            option_median_steps=40.0,
            future_median_steps=20_000.0,
        )
    return QuoteStyle(option_amount_step=1.0, future_tick=0.0001, future_amount_step=1.0)


def index_name(currency: str) -> str:
    return f"{currency.lower()}_usd"


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: object | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def payload(self) -> dict[str, object]:
        out: dict[str, object] = {"message": self.message, "code": self.code}
        if self.data is not None:
            out["data"] = self.data
        return out


def invalid_param(param: str, reason: str = "wrong format") -> RpcError:
    return RpcError(-32602, "Invalid params", {"reason": reason, "param": param})


class ChanKind(IntEnum):
    BOOK = 1
    GROUPED = 2
    TICKER = 3
    INDEX = 4
    DVOL = 5
    STATE = 6


@dataclass(frozen=True)
class ChannelSpec:
    kind: ChanKind
    channel: str
    symbol: str = ""
    depth: int = 0
    currency: str = ""
    # instrument.state: "option", "future" or "any"
    inst_kind: str = ""


def notification(channel: str, data: object) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
    )


HEARTBEAT_FRAME = orjson.dumps(
    {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}
)


class DeribitMutator(FrameMutator):
    def add_unknown_fields(self, frame: bytes) -> bytes:
        obj = orjson.loads(frame)
        obj["sim_unannounced"] = True
        data = obj.get("params", {}).get("data")
        if isinstance(data, dict):
            data["x_sim_new_field"] = {"nested": [1, 2.5, "three"], "flag": None}
            data["sim_version"] = 2
        return orjson.dumps(obj)

    def drop_optional_fields(self, frame: bytes) -> bytes:
        obj = orjson.loads(frame)
        data = obj.get("params", {}).get("data")
        if isinstance(data, dict):
            for key in OPTIONAL_TICKER_FIELDS:
                data.pop(key, None)
        return orjson.dumps(obj)


def _price_band(mark: float) -> tuple[float, float]:
    lo = max(0.0001, math.floor((mark - max(0.02, 0.06 * mark)) * 10_000) / 10_000)
    hi = math.ceil((mark + max(0.023, 0.08 * mark)) * 10_000) / 10_000
    return round(lo, 4), round(hi, 4)


class DeribitSession(WsSession):
    def __init__(self, venue: DeribitVenue, session_id: int, ws: web.WebSocketResponse) -> None:
        super().__init__(
            session_id,
            ws,
            DeribitMutator(),
            venue.ctx.max_send_queue,
            on_counts=venue.count_frame,
        )
        self.venue = venue
        self.channels: dict[str, ChannelSpec] = {}
        # channel -> last change_id this connection was sent (its own view of each book).
        self.book_views: dict[str, int] = {}
        self.heartbeat_interval: float | None = None
        self.awaiting_test = False
        self._heartbeat_task: asyncio.Task[None] | None = None

    def set_heartbeat(self, interval: float) -> None:
        self.heartbeat_interval = interval
        self.awaiting_test = False
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(interval))

    def disable_heartbeat(self) -> None:
        self.heartbeat_interval = None
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    async def _heartbeat_loop(self, interval: float) -> None:
        while not self.closed:
            await asyncio.sleep(interval)
            if self.closed:
                return
            if self.stalled:
                continue
            if self.awaiting_test:
                self.venue.counters["heartbeat_disconnects"] += 1
                await self.close(1000, "heartbeat: test_request not answered")
                return
            self.awaiting_test = True
            self.enqueue(HEARTBEAT_FRAME, FrameKind.HEARTBEAT)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._heartbeat_task is not None and self._heartbeat_task is not asyncio.current_task():
            self._heartbeat_task.cancel()
        await super().close(code, reason)


class DeribitVenue(VenueSim):
    name = VENUE

    def __init__(self, ctx: VenueContext) -> None:
        self.ctx = ctx
        self.naming = DeribitNaming()
        now = ctx.clock.now_ns()
        self.markets: dict[str, VenueMarket] = {}
        for n, (ccy, truth) in enumerate(ctx.truth.currencies.items()):
            self.markets[ccy] = VenueMarket(
                VENUE, truth, deribit_style(ccy), self.naming, ctx.seed * 1000 + 17 + n, now
            )
        self.sessions: dict[int, DeribitSession] = {}
        self._next_session_id = 1
        self.subs: dict[str, dict[int, DeribitSession]] = {}
        # symbol -> {channel: spec} of instrument channels somebody subscribed to
        self.inst_channels: dict[str, dict[str, ChannelSpec]] = {}
        self.state_channels: dict[str, ChannelSpec] = {}
        self.instrument_ids: dict[str, int] = {}
        self.stale_until: dict[str, float] = {}
        self.counters: dict[str, int] = {
            "connections_total": 0,
            "rest_requests": 0,
            "ws_requests": 0,
            "rpc_errors": 0,
            "heartbeat_disconnects": 0,
            "updates": 0,
            "notifications_built": 0,
            "frames_sent": 0,
            "bytes_sent": 0,
            "listed": 0,
            "expired": 0,
        }
        self.frames_by_kind: dict[str, int] = {k.name.lower(): 0 for k in FrameKind}
        self.faults_applied: dict[str, int] = {}
        self._next_index_ns = 0
        self._budget_carry = 0.0
        for market in self.markets.values():
            for inst in market.instruments:
                self._instrument_id(inst)

    # -- plumbing -------------------------------------------------------------------
    def urls(self, host: str, port: int) -> VenueUrls:
        return VenueUrls(
            rest_base=f"http://{host}:{port}/{VENUE}/api/v2",
            ws_url=f"ws://{host}:{port}/{VENUE}/ws/api/v2",
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws/api/v2", self._ws_handler)
        app.router.add_get("/ws/api/v2/", self._ws_handler)
        app.router.add_get("/api/v2/{scope}/{method}", self._rest_get)
        app.router.add_post("/api/v2/{scope}/{method}", self._rest_post)
        app.router.add_post("/api/v2", self._rest_post)
        return app

    def count_frame(self, kind: FrameKind, size: int) -> None:
        c = self.counters
        c["frames_sent"] += 1
        c["bytes_sent"] += size
        self.frames_by_kind[kind.name.lower()] += 1

    def _instrument_id(self, inst: SimInstrument) -> int:
        iid = self.instrument_ids.get(inst.symbol)
        if iid is None:
            iid = 100_000 + len(self.instrument_ids) * 7 + 3
            self.instrument_ids[inst.symbol] = iid
        return iid

    def now_ms(self) -> int:
        return self.ctx.clock.now_ns() // 1_000_000

    def find(self, symbol: str) -> tuple[VenueMarket, SimInstrument] | None:
        for market in self.markets.values():
            inst = market.by_symbol.get(symbol)
            if inst is not None:
                return market, inst
        return None

    # -- message builders -------------------------------------------------------------
    def instrument_json(self, inst: SimInstrument) -> dict[str, object]:
        ccy = inst.currency
        if inst.kind == "option":
            return {
                "tick_size": inst.tick,
                "taker_commission": 0.0003,
                "strike": float(inst.strike),
                "settlement_period": inst.period,
                "quote_currency": ccy,
                "option_type": "call" if inst.is_call else "put",
                "min_trade_amount": inst.amount_step,
                "maker_commission": 0.0003,
                "kind": "option",
                "is_active": inst.state == "open",
                "instrument_name": inst.symbol,
                "expiration_timestamp": inst.expiry_ms,
                "creation_timestamp": inst.created_ns // 1_000_000,
                "contract_size": 1.0,
                "block_trade_commission": 0.00015,
                "base_currency": ccy,
                "settlement_currency": ccy,
                "counter_currency": "USD",
                "price_index": index_name(ccy),
                "instrument_type": "reversed",
                "instrument_id": self._instrument_id(inst),
            }
        return {
            "tick_size": inst.tick,
            "taker_commission": 0.0005,
            "settlement_period": inst.period,
            "quote_currency": "USD",
            "min_trade_amount": inst.amount_step,
            "max_liquidation_commission": 0.005,
            "max_leverage": 100 if ccy == "BTC" else 50,
            "maker_commission": 0.0,
            "kind": "future",
            "is_active": inst.state == "open",
            "instrument_name": inst.symbol,
            "expiration_timestamp": inst.expiry_ms,
            "creation_timestamp": inst.created_ns // 1_000_000,
            "contract_size": inst.amount_step,
            "block_trade_commission": 0.0001,
            "base_currency": ccy,
            "settlement_currency": ccy,
            "counter_currency": "USD",
            "price_index": index_name(ccy),
            "instrument_type": "reversed",
            "instrument_id": self._instrument_id(inst),
        }

    def _stats_block(self, inst: SimInstrument, future: bool) -> dict[str, object]:
        if inst.last_price is None:
            return {"volume": None, "price_change": None, "low": None, "high": None}
        spread = inst.tick * 4
        stats: dict[str, object] = {
            "volume": inst.volume,
            "price_change": 0.0,
            "low": round(max(inst.tick, inst.last_price - spread), 8),
            "high": round(inst.last_price + spread, 8),
        }
        if future:
            stats["volume_usd"] = round(inst.volume * inst.last_price, 2)
            stats["volume_notional"] = stats["volume_usd"]
        return stats

    def _maybe_trade(self, market: VenueMarket, inst: SimInstrument, mark: float) -> None:
        r = market.rng
        if inst.settlement_price == 0.0:
            # Yesterday's settlement: options move a lot more in a day than futures.
            move = 0.02 if inst.kind == "option" else 0.003
            inst.settlement_price = round(mark * (1.0 + r.gauss(0.0, move)), 8)
            if r.random() < 0.75:
                inst.last_price = max(inst.tick, round(round(mark / inst.tick) * inst.tick, 8))
        elif r.random() < 0.02:
            inst.last_price = max(inst.tick, round(round(mark / inst.tick) * inst.tick, 8))
            inst.volume = round(inst.volume + inst.amount_step * r.randint(1, 20), 8)

    def option_ticker(self, u: OptionUpdate, market: VenueMarket) -> dict[str, object]:
        inst = u.inst
        self._maybe_trade(market, inst, u.mark_price)
        lo, hi = _price_band(u.mark_price)
        bb = u.best_bid
        ba = u.best_ask
        return {
            "underlying_price": u.forward,
            "underlying_index": inst.underlying_name,
            "timestamp": u.timestamp_ms,
            "stats": self._stats_block(inst, False),
            "state": inst.state,
            "settlement_price": inst.settlement_price,
            "open_interest": inst.open_interest,
            "min_price": lo,
            "max_price": hi,
            "mark_price": u.mark_price,
            "mark_iv": u.mark_iv,
            "last_price": inst.last_price,
            "interest_rate": 0.0,
            "instrument_name": inst.symbol,
            "index_price": u.index_price,
            "greeks": {
                "vega": u.vega,
                "theta": u.theta,
                "rho": u.rho,
                "gamma": u.gamma,
                "delta": u.delta,
            },
            "estimated_delivery_price": u.index_price,
            "bid_iv": u.bid_iv,
            "best_bid_price": bb[0] if bb else 0.0,
            "best_bid_amount": bb[1] if bb else 0.0,
            "best_ask_price": ba[0] if ba else 0.0,
            "best_ask_amount": ba[1] if ba else 0.0,
            "ask_iv": u.ask_iv,
        }

    def future_ticker(self, u: FutureUpdate, market: VenueMarket) -> dict[str, object]:
        inst = u.inst
        self._maybe_trade(market, inst, u.mark_price)
        bb = u.best_bid
        ba = u.best_ask
        out: dict[str, object] = {
            "timestamp": u.timestamp_ms,
            "state": inst.state,
            "stats": self._stats_block(inst, True),
            "index_price": u.index_price,
            "instrument_name": inst.symbol,
            "last_price": inst.last_price,
            "settlement_price": inst.settlement_price,
            "min_price": round(u.mark_price * 0.985, 2),
            "max_price": round(u.mark_price * 1.015, 2),
            "open_interest": round(inst.open_interest * 1000.0, 1),
            "mark_price": u.mark_price,
            "best_ask_price": ba[0] if ba else 0.0,
            "best_bid_price": bb[0] if bb else 0.0,
            "estimated_delivery_price": u.index_price,
            "best_ask_amount": ba[1] if ba else 0.0,
            "best_bid_amount": bb[1] if bb else 0.0,
        }
        if inst.is_perpetual:
            out["interest_value"] = round(u.funding * 10.0, 12)
            out["current_funding"] = round(u.funding, 8)
            out["funding_8h"] = round(u.funding, 8)
        return out

    def ticker_data(self, u: Update, market: VenueMarket) -> dict[str, object]:
        if isinstance(u, OptionUpdate):
            return self.option_ticker(u, market)
        return self.future_ticker(u, market)

    @staticmethod
    def book_change_data(u: Update) -> dict[str, object]:
        return {
            "type": "change",
            "timestamp": u.timestamp_ms,
            "prev_change_id": u.prev_sequence,
            "instrument_name": u.inst.symbol,
            "change_id": u.sequence,
            "bids": u.bid_changes,
            "asks": u.ask_changes,
        }

    @staticmethod
    def book_snapshot_data(inst: SimInstrument, ts_ms: int) -> dict[str, object]:
        book = inst.book
        return {
            "type": "snapshot",
            "timestamp": ts_ms,
            "instrument_name": inst.symbol,
            "change_id": book.sequence,
            "bids": [("new", p, a) for p, a in book.side_levels(True)],
            "asks": [("new", p, a) for p, a in book.side_levels(False)],
        }

    @staticmethod
    def grouped_book_data(inst: SimInstrument, depth: int, ts_ms: int) -> dict[str, object]:
        book = inst.book
        return {
            "instrument_name": inst.symbol,
            "timestamp": ts_ms,
            "change_id": book.sequence,
            "bids": book.side_levels(True, depth),
            "asks": book.side_levels(False, depth),
        }

    # -- channels ---------------------------------------------------------------------
    def parse_channel(self, channel: str) -> ChannelSpec | None:
        """The spec of a channel; None when no such channel exists (it is skipped)."""
        if not isinstance(channel, str):
            return None
        parts = channel.split(".")
        head = parts[0]
        if head in ("book", "ticker") and len(parts) >= 3:
            symbol = parts[1]
            found = self.find(symbol)
            if found is None:
                return None
            interval = parts[-1]
            if interval == "raw":
                raise RpcError(13778, "raw_subscriptions_not_available_for_unauthorized")
            if interval not in INTERVALS:
                return None
            if head == "ticker" and len(parts) == 3:
                return ChannelSpec(ChanKind.TICKER, channel, symbol, currency=found[1].currency)
            if head == "book" and len(parts) == 3:
                return ChannelSpec(ChanKind.BOOK, channel, symbol, currency=found[1].currency)
            if head == "book" and len(parts) == 5:
                group, depth_text = parts[2], parts[3]
                if group != "none" or not depth_text.isdigit():
                    return None
                depth = int(depth_text)
                if depth not in GROUPED_DEPTHS:
                    return None
                return ChannelSpec(
                    ChanKind.GROUPED, channel, symbol, depth=depth, currency=found[1].currency
                )
            return None
        if head in ("deribit_price_index", "deribit_volatility_index") and len(parts) == 2:
            name = parts[1]
            for ccy in self.markets:
                if index_name(ccy) == name:
                    kind = ChanKind.INDEX if head == "deribit_price_index" else ChanKind.DVOL
                    return ChannelSpec(kind, channel, currency=ccy)
            return None
        if head == "instrument" and len(parts) == 4 and parts[1] == "state":
            kind_text, ccy_text = parts[2].lower(), parts[3].upper()
            if kind_text not in ("option", "future", "any"):
                return None
            if ccy_text != "ANY" and ccy_text not in self.markets:
                return None
            return ChannelSpec(ChanKind.STATE, channel, currency=ccy_text, inst_kind=kind_text)
        return None

    def _add_sub(self, session: DeribitSession, spec: ChannelSpec) -> None:
        self.subs.setdefault(spec.channel, {})[session.id] = session
        if spec.symbol:
            self.inst_channels.setdefault(spec.symbol, {})[spec.channel] = spec
            found = self.find(spec.symbol)
            if found is not None:
                found[0].set_watched(found[1], +1)
        elif spec.kind == ChanKind.STATE:
            self.state_channels[spec.channel] = spec

    def _remove_sub(self, session: DeribitSession, spec: ChannelSpec) -> None:
        holders = self.subs.get(spec.channel)
        if holders is not None:
            holders.pop(session.id, None)
            if not holders:
                del self.subs[spec.channel]
                if spec.symbol:
                    chans = self.inst_channels.get(spec.symbol)
                    if chans is not None:
                        chans.pop(spec.channel, None)
                        if not chans:
                            del self.inst_channels[spec.symbol]
                elif spec.kind == ChanKind.STATE:
                    self.state_channels.pop(spec.channel, None)
        if spec.symbol:
            found = self.find(spec.symbol)
            if found is not None:
                found[0].set_watched(found[1], -1)
        session.forget_channel(spec.channel)
        session.book_views.pop(spec.channel, None)

    def subscribe(self, session: DeribitSession, channels: Iterable[object]) -> list[str]:
        specs: list[ChannelSpec] = []
        for ch in channels:
            spec = self.parse_channel(ch) if isinstance(ch, str) else None
            if spec is not None:
                specs.append(spec)
        accepted: list[str] = []
        for spec in specs:
            if spec.channel not in session.channels:
                session.channels[spec.channel] = spec
                self._add_sub(session, spec)
            if spec.channel not in accepted:
                accepted.append(spec.channel)
        return accepted

    def initial_notifications(self, session: DeribitSession, channels: list[str]) -> None:
        """What a new subscription gets first: a book snapshot, the current ticker/book."""
        now_ns = self.ctx.clock.now_ns()
        ts = now_ns // 1_000_000
        tickers: dict[str, list[SimInstrument]] = {}
        found_all: list[tuple[str, ChannelSpec, SimInstrument]] = []
        by_market: dict[str, list[SimInstrument]] = {}
        for ch in channels:
            spec = session.channels.get(ch)
            if spec is None or not spec.symbol:
                continue
            found = self.find(spec.symbol)
            if found is None:
                continue
            found_all.append((ch, spec, found[1]))
            by_market.setdefault(found[1].currency, []).append(found[1])
        for ccy, insts in by_market.items():
            self.markets[ccy].ensure_books(insts, now_ns)
        for ch, spec, inst in found_all:
            if spec.kind == ChanKind.BOOK:
                frame = notification(ch, self.book_snapshot_data(inst, ts))
                session.book_views[ch] = inst.book.sequence
                session.enqueue(frame, FrameKind.BOOK_SNAPSHOT, inst.symbol, ch)
            elif spec.kind == ChanKind.GROUPED:
                frame = notification(ch, self.grouped_book_data(inst, spec.depth, ts))
                session.enqueue(frame, FrameKind.OTHER, inst.symbol, ch)
            elif spec.kind == ChanKind.TICKER:
                tickers.setdefault(inst.currency, []).append(inst)
        for ccy, insts in tickers.items():
            market = self.markets[ccy]
            for u in market.update(insts, now_ns, churn=False):
                for ch, spec in self.inst_channels.get(u.inst.symbol, {}).items():
                    if spec.kind == ChanKind.TICKER and ch in session.channels:
                        frame = notification(ch, self.ticker_data(u, market))
                        session.enqueue(frame, FrameKind.TICKER, u.inst.symbol, ch)

    def unsubscribe(self, session: DeribitSession, channels: Iterable[object]) -> list[str]:
        removed: list[str] = []
        for ch in channels:
            if not isinstance(ch, str):
                continue
            spec = session.channels.pop(ch, None)
            if spec is not None:
                self._remove_sub(session, spec)
                removed.append(ch)
        return removed

    def drop_session(self, session: DeribitSession) -> None:
        for spec in list(session.channels.values()):
            self._remove_sub(session, spec)
        session.channels.clear()
        self.sessions.pop(session.id, None)

    # -- tick -------------------------------------------------------------------------
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
        total_open = sum(len(m.open_instruments()) for m in self.markets.values()) or 1
        # Each instrument update is two messages (book change + ticker).
        budget = self.ctx.messages_per_second * dt_s / 2.0
        for market in self.markets.values():
            changes = market.sync_listings(now_ns)
            if changes.listed or changes.expired:
                self._announce_listing(changes.listed, changes.expired, now_ns)
            share = len(market.open_instruments()) / total_open
            selected = market.select(budget * share)
            chosen = [
                i for i in selected if i.watchers > 0 and not self._is_stale(i.symbol, loop_time)
            ]
            if not chosen:
                continue
            updates = market.update(chosen, now_ns)
            self.counters["updates"] += len(updates)
            self._publish_updates(updates, market)
        if now_ns >= self._next_index_ns:
            self._next_index_ns = now_ns + int(self.ctx.index_interval_s * 1e9)
            self._publish_indices(now_ns)

    def _publish_updates(self, updates: list[Update], market: VenueMarket) -> None:
        built = 0
        for u in updates:
            sym = u.inst.symbol
            chans = self.inst_channels.get(sym)
            if not chans:
                continue
            for ch, spec in chans.items():
                holders = self.subs.get(ch)
                if not holders:
                    continue
                kind = spec.kind
                if kind == ChanKind.BOOK:
                    if not u.book_changed:
                        continue
                    frame = notification(ch, self.book_change_data(u))
                    fkind = FrameKind.BOOK_DELTA
                elif kind == ChanKind.TICKER:
                    frame = notification(ch, self.ticker_data(u, market))
                    fkind = FrameKind.TICKER
                elif kind == ChanKind.GROUPED:
                    if not u.book_changed:
                        continue
                    frame = notification(
                        ch, self.grouped_book_data(u.inst, spec.depth, u.timestamp_ms)
                    )
                    fkind = FrameKind.OTHER
                else:
                    continue
                built += 1
                for session in holders.values():
                    if kind == ChanKind.BOOK:
                        session.book_views[ch] = u.sequence
                    session.enqueue(frame, fkind, sym, ch)
        self.counters["notifications_built"] += built

    def _publish_indices(self, now_ns: int) -> None:
        ts = now_ns // 1_000_000
        for ccy, market in self.markets.items():
            name = index_name(ccy)
            idx_ch = f"deribit_price_index.{name}"
            holders = self.subs.get(idx_ch)
            snap = market.truth.snapshot()
            if holders:
                frame = notification(
                    idx_ch,
                    {"timestamp": ts, "price": market.index_published(snap), "index_name": name},
                )
                for s in holders.values():
                    s.enqueue(frame, FrameKind.OTHER, "", idx_ch)
            dvol_ch = f"deribit_volatility_index.{name}"
            holders = self.subs.get(dvol_ch)
            if holders:
                dvol = round(vol_index(snap) * 100.0, 2)
                frame = notification(
                    dvol_ch, {"volatility": dvol, "timestamp": ts, "index_name": name}
                )
                for s in holders.values():
                    s.enqueue(frame, FrameKind.OTHER, "", dvol_ch)

    def _state_channels_for(self, inst: SimInstrument) -> list[str]:
        out = []
        for ch, spec in self.state_channels.items():
            if spec.inst_kind not in ("any", inst.kind):
                continue
            if spec.currency not in ("ANY", inst.currency):
                continue
            out.append(ch)
        return out

    def _announce_listing(
        self, listed: list[SimInstrument], expired: list[SimInstrument], now_ns: int
    ) -> None:
        ts = now_ns // 1_000_000
        self.counters["listed"] += len(listed)
        self.counters["expired"] += len(expired)
        for inst in listed:
            self._instrument_id(inst)
            for ch in self._state_channels_for(inst):
                for state in ("created", "started"):
                    frame = notification(
                        ch, {"timestamp": ts, "state": state, "instrument_name": inst.symbol}
                    )
                    for s in self.subs.get(ch, {}).values():
                        s.enqueue(frame, FrameKind.OTHER, inst.symbol, ch)
        for inst in expired:
            for ch in self._state_channels_for(inst):
                frame = notification(
                    ch, {"timestamp": ts, "state": "closed", "instrument_name": inst.symbol}
                )
                for s in self.subs.get(ch, {}).values():
                    s.enqueue(frame, FrameKind.OTHER, inst.symbol, ch)
            for ch, spec in self.inst_channels.get(inst.symbol, {}).items():
                if spec.kind != ChanKind.TICKER:
                    continue
                frame = notification(ch, self._closed_ticker(inst, ts))
                for s in self.subs.get(ch, {}).values():
                    s.enqueue(frame, FrameKind.TICKER, inst.symbol, ch)

    def _closed_ticker(self, inst: SimInstrument, ts: int) -> dict[str, object]:
        market = self.markets[inst.currency]
        snap = market.truth.snapshot()
        index_px = market.index_published(snap)
        data: dict[str, object] = {
            "timestamp": ts,
            "state": "closed",
            "instrument_name": inst.symbol,
            "index_price": index_px,
            "estimated_delivery_price": index_px,
            "settlement_price": inst.settlement_price,
            "open_interest": 0.0,
            "mark_price": 0.0,
            "last_price": inst.last_price,
            "best_bid_price": 0.0,
            "best_bid_amount": 0.0,
            "best_ask_price": 0.0,
            "best_ask_amount": 0.0,
            "stats": self._stats_block(inst, inst.kind == "future"),
        }
        if inst.kind == "option":
            s = snap.slice_for(inst.expiry_ns)
            data["underlying_price"] = market.forward_published(s) if s else index_px
            data["underlying_index"] = inst.underlying_name
            data["interest_rate"] = 0.0
            data["mark_iv"] = 0.0
            data["bid_iv"] = 0.0
            data["ask_iv"] = 0.0
            data["greeks"] = {"vega": 0.0, "theta": 0.0, "rho": 0.0, "gamma": 0.0, "delta": 0.0}
        return data

    # -- JSON-RPC -------------------------------------------------------------------------
    def envelope(
        self, req_id: object, us_in: int, result: object = None, error: RpcError | None = None
    ) -> dict[str, object]:
        us_out = self.ctx.clock.now_ns() // 1000
        out: dict[str, object] = {"jsonrpc": "2.0"}
        if req_id is not None:
            out["id"] = req_id
        if error is not None:
            out["error"] = error.payload()
        else:
            out["result"] = result
        out["usIn"] = us_in
        out["usOut"] = max(us_out, us_in)
        out["usDiff"] = max(us_out - us_in, 0)
        out["testnet"] = False
        return out

    def call(
        self, method: str, params: Mapping[str, Any], session: DeribitSession | None
    ) -> object:
        """Run one JSON-RPC method; raises RpcError."""
        if method == "public/get_time":
            return self.now_ms()
        if method in ("public/test", "public/hello"):
            if session is not None:
                session.awaiting_test = False
            return {"version": API_VERSION}
        if method == "public/get_instruments":
            return self.rpc_get_instruments(params)
        if method == "public/get_instrument":
            name = params.get("instrument_name")
            found = self.find(name) if isinstance(name, str) else None
            if found is None:
                raise invalid_param("instrument_name")
            return self.instrument_json(found[1])
        if method == "public/ticker":
            return self.rpc_ticker(params)
        if method == "public/get_order_book":
            return self.rpc_order_book(params)
        if method == "public/get_index_price":
            name = params.get("index_name")
            for ccy, market in self.markets.items():
                if name == index_name(ccy):
                    px = market.index_published(market.truth.snapshot())
                    return {"index_price": px, "estimated_delivery_price": px}
            raise invalid_param("index_name")
        if session is None and method in (
            "public/subscribe",
            "public/unsubscribe",
            "public/unsubscribe_all",
            "public/set_heartbeat",
            "public/disable_heartbeat",
        ):
            raise RpcError(11094, "not_available_over_http")
        if session is not None:
            if method == "public/subscribe":
                channels = params.get("channels")
                if not isinstance(channels, list) or not channels:
                    raise invalid_param("channels")
                return self.subscribe(session, channels)
            if method == "public/unsubscribe":
                channels = params.get("channels")
                if not isinstance(channels, list):
                    raise invalid_param("channels")
                return self.unsubscribe(session, channels)
            if method == "public/unsubscribe_all":
                self.unsubscribe(session, list(session.channels))
                return "ok"
            if method == "public/set_heartbeat":
                interval = params.get("interval")
                if isinstance(interval, str):
                    with contextlib.suppress(ValueError):
                        interval = float(interval)
                if not isinstance(interval, int | float) or isinstance(interval, bool):
                    raise invalid_param("interval")
                if interval < self.ctx.min_heartbeat_interval_s:
                    raise invalid_param(
                        "interval",
                        f"must be greater or equal to {self.ctx.min_heartbeat_interval_s:g}",
                    )
                session.set_heartbeat(float(interval))
                return "ok"
            if method == "public/disable_heartbeat":
                session.disable_heartbeat()
                return "ok"
        raise RpcError(-32601, "Method not found")

    def rpc_get_instruments(self, params: Mapping[str, Any]) -> list[dict[str, object]]:
        ccy = params.get("currency")
        if not isinstance(ccy, str):
            raise invalid_param("currency")
        ccy = ccy.upper()
        if ccy != "ANY" and ccy not in self.markets:
            raise invalid_param("currency")
        kind = params.get("kind")
        if kind is not None and kind not in (
            "option",
            "future",
            "spot",
            "future_combo",
            "option_combo",
        ):
            raise invalid_param("kind")
        expired = params.get("expired", False)
        if isinstance(expired, str):
            if expired not in ("true", "false"):
                raise invalid_param("expired")
            expired = expired == "true"
        out: list[dict[str, object]] = []
        for mccy, market in self.markets.items():
            if ccy not in ("ANY", mccy):
                continue
            for inst in market.instruments:
                if kind is not None and inst.kind != kind:
                    continue
                if (inst.state != "open") != bool(expired):
                    continue
                out.append(self.instrument_json(inst))
        return out

    def _quote_now(self, name: object) -> tuple[VenueMarket, SimInstrument, Update | None]:
        found = self.find(name) if isinstance(name, str) else None
        if found is None:
            raise invalid_param("instrument_name")
        market, inst = found
        if inst.state != "open":
            return market, inst, None
        now_ns = self.ctx.clock.now_ns()
        unwatched = inst.watchers == 0
        market.ensure_book(inst, now_ns)
        ups = market.update([inst], now_ns, churn=False)
        if unwatched:
            inst.book.ready = False
        return market, inst, ups[0] if ups else None

    def rpc_ticker(self, params: Mapping[str, Any]) -> dict[str, object]:
        market, inst, u = self._quote_now(params.get("instrument_name"))
        if u is None:
            return self._closed_ticker(inst, self.now_ms())
        return self.ticker_data(u, market)

    def rpc_order_book(self, params: Mapping[str, Any]) -> dict[str, object]:
        market, inst, u = self._quote_now(params.get("instrument_name"))
        depth_raw = params.get("depth", 20)
        try:
            depth = int(depth_raw)
        except (TypeError, ValueError):
            raise invalid_param("depth") from None
        data = (
            self._closed_ticker(inst, self.now_ms()) if u is None else self.ticker_data(u, market)
        )
        data["change_id"] = inst.book.sequence
        data["bids"] = inst.book.side_levels(True, depth)
        data["asks"] = inst.book.side_levels(False, depth)
        return data

    # -- HTTP -------------------------------------------------------------------------------
    @staticmethod
    def _coerce_query(query: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in query.items():
            if key == "channels":
                out[key] = value.split(",")
            elif key in ("depth", "interval"):
                try:
                    out[key] = float(value) if "." in value else int(value)
                except ValueError:
                    out[key] = value
            else:
                out[key] = value
        return out

    def _http_response(self, body: dict[str, object]) -> web.Response:
        status = 400 if "error" in body else 200
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    async def _rest_get(self, request: web.Request) -> web.Response:
        us_in = self.ctx.clock.now_ns() // 1000
        self.counters["rest_requests"] += 1
        method = f"{request.match_info['scope']}/{request.match_info['method']}"
        try:
            result = self.call(method, self._coerce_query(request.query), None)
            body = self.envelope(None, us_in, result)
        except RpcError as err:
            self.counters["rpc_errors"] += 1
            body = self.envelope(None, us_in, error=err)
        return self._http_response(body)

    async def _rest_post(self, request: web.Request) -> web.Response:
        us_in = self.ctx.clock.now_ns() // 1000
        self.counters["rest_requests"] += 1
        raw = await request.read()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.counters["rpc_errors"] += 1
            return self._http_response(
                self.envelope(None, us_in, error=RpcError(-32700, "Parse error"))
            )
        if not isinstance(msg, dict):
            return self._http_response(
                self.envelope(None, us_in, error=RpcError(-32600, "Invalid Request"))
            )
        method = msg.get("method")
        if "method" in request.match_info:
            method = f"{request.match_info['scope']}/{request.match_info['method']}"
        params = msg.get("params") or {}
        try:
            if not isinstance(method, str) or not isinstance(params, dict):
                raise RpcError(-32600, "Invalid Request")
            body = self.envelope(msg.get("id"), us_in, self.call(method, params, None))
        except RpcError as err:
            self.counters["rpc_errors"] += 1
            body = self.envelope(msg.get("id"), us_in, error=err)
        return self._http_response(body)

    # -- websocket ---------------------------------------------------------------------------
    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        sid = self._next_session_id
        self._next_session_id += 1
        session = DeribitSession(self, sid, ws)
        self.sessions[sid] = session
        self.counters["connections_total"] += 1
        session.start()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.handle_text(session, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.handle_text(session, msg.data.decode("utf-8", "replace"))
                else:
                    break
        finally:
            self.drop_session(session)
            await session.close()
        return ws

    def handle_text(self, session: DeribitSession, text: str) -> None:
        us_in = self.ctx.clock.now_ns() // 1000
        if session.stalled:
            return
        self.counters["ws_requests"] += 1
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.counters["rpc_errors"] += 1
            err = RpcError(-32700, "Parse error")
            session.enqueue(orjson.dumps(self.envelope(None, us_in, error=err)), FrameKind.RESPONSE)
            return
        if not isinstance(msg, dict):
            err = RpcError(-32600, "Invalid Request")
            session.enqueue(orjson.dumps(self.envelope(None, us_in, error=err)), FrameKind.RESPONSE)
            return
        req_id = msg.get("id")
        method = msg.get("method")
        params = msg.get("params")
        if params is None:
            params = {}
        try:
            if not isinstance(method, str) or not isinstance(params, dict):
                raise RpcError(-32600, "Invalid Request")
            result = self.call(method, params, session)
        except RpcError as err:
            self.counters["rpc_errors"] += 1
            session.enqueue(
                orjson.dumps(self.envelope(req_id, us_in, error=err)), FrameKind.RESPONSE
            )
            return
        session.enqueue(orjson.dumps(self.envelope(req_id, us_in, result)), FrameKind.RESPONSE)
        if method == "public/subscribe" and isinstance(result, list):
            self.initial_notifications(session, result)

    # -- faults ------------------------------------------------------------------------------
    def _targets(self, request: FaultRequest) -> list[DeribitSession]:
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
        result: dict[str, object] = {"kind": kind.value, "venue": VENUE}
        if kind in (FaultKind.EXPIRE, FaultKind.LIST):
            result.update(self._listing_fault(request))
        elif kind == FaultKind.STALE_QUOTES:
            until = asyncio.get_running_loop().time() + request.duration_s
            self.stale_until[request.symbol or ""] = until
            result["symbol"] = request.symbol
            result["duration_s"] = request.duration_s
        else:
            targets = self._targets(request)
            done: list[int] = []
            for s in targets:
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
                elif kind == FaultKind.UNKNOWN_FIELDS:
                    s.add_unknown_fields(request.count)
                elif kind == FaultKind.MISSING_FIELDS:
                    s.add_missing_fields(request.count)
                done.append(s.id)
            result["connections"] = done
            result["symbol"] = request.symbol
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
            self._announce_listing([], victims, now_ns)
            return {"symbols": [i.symbol for i in victims]}
        strike = request.strike or self._free_strike(market, ref.expiry_ns)
        listed = market.list_strike(ref.expiry_ns, strike, now_ns)
        self._announce_listing(listed, [], now_ns)
        return {"symbols": [i.symbol for i in listed], "strike": strike}

    @staticmethod
    def _free_strike(market: VenueMarket, expiry_ns: int) -> float:
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
        return (strikes[-1] * 2.0) if strikes else round(fwd)

    # -- stats / close --------------------------------------------------------------------
    def stats(self) -> dict[str, object]:
        return {
            "connections_open": sum(1 for s in self.sessions.values() if not s.closed),
            "connections": [
                {
                    "id": s.id,
                    "channels": len(s.channels),
                    "frames_sent": s.stats.frames_sent,
                    "bytes_sent": s.stats.bytes_sent,
                    "queued": len(s.out),
                    "dropped_by_fault": s.stats.frames_dropped_by_fault,
                    "heartbeat_interval": s.heartbeat_interval,
                }
                for s in self.sessions.values()
            ],
            "channels_subscribed": len(self.subs),
            "instruments_open": {ccy: len(m.open_instruments()) for ccy, m in self.markets.items()},
            "counters": dict(self.counters),
            "frames_by_kind": dict(self.frames_by_kind),
            "faults_applied": dict(self.faults_applied),
        }

    async def close(self) -> None:
        for s in list(self.sessions.values()):
            await s.close(1001, "simulator stopping")
