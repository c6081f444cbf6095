"""Deribit API v2 as the simulator speaks it: JSON-RPC over websocket and HTTP GET, message
shapes and units as in the recordings under tests/fixtures/venues/deribit.

Routes (mounted under /deribit):
  GET  /api/v2/public/{method}?params    JSON-RPC over HTTP (get_instruments, ticker, ...)
  POST /api/v2[/public/{method}]          JSON-RPC body over HTTP
  GET  /ws/api/v2                         websocket: subscribe, heartbeat, ...
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

from simulator.market import (
    FutureUpdate,
    ListingChanges,
    OptionUpdate,
    QuoteStyle,
    SimInstrument,
    Update,
    VenueMarket,
)
from simulator.session import FrameKind
from simulator.streaming import (
    DashedNaming,
    JsonMutator,
    PushSession,
    PushVenue,
    Sub,
    SubKind,
)
from simulator.truth import ExpiryTruth, expiry_label, vol_index
from simulator.venue import VenueContext

VENUE = "deribit"
API_VERSION = "1.2.26"
GROUPED_DEPTHS = (1, 10, 20)
INTERVALS = ("100ms", "agg2")
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


class DeribitNaming(DashedNaming):
    def strike_text(self, strike: float) -> str:
        return strike_text(strike)

    def perpetual(self, currency: str) -> str:
        return f"{currency}-PERPETUAL"

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


def notification(channel: str, data: object) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
    )


HEARTBEAT_FRAME = orjson.dumps(
    {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}}
)


class DeribitMutator(JsonMutator):
    # snake_case, like the venue's own fields.
    unannounced_field = "sim_unannounced"
    new_field = "x_sim_new_field"
    version_field = "sim_version"
    version_value = 2

    def __init__(self) -> None:
        super().__init__(OPTIONAL_TICKER_FIELDS)

    def payloads(self, obj: Any) -> list[dict[str, Any]]:
        data = obj.get("params", {}).get("data")
        return [data] if isinstance(data, dict) else []

    def rename_channel(self, obj: Any) -> None:
        params = obj.get("params") if isinstance(obj, dict) else None
        if isinstance(params, dict):
            params["channel"] = f"sim_unknown.{params.get('channel')}"


def _price_band(mark: float) -> tuple[float, float]:
    lo = max(0.0001, math.floor((mark - max(0.02, 0.06 * mark)) * 10_000) / 10_000)
    hi = math.ceil((mark + max(0.023, 0.08 * mark)) * 10_000) / 10_000
    return round(lo, 4), round(hi, 4)


class DeribitSession(PushSession):
    """A connection with Deribit's own keep-alive: heartbeat test_requests it must answer."""

    def __init__(self, venue: DeribitVenue, session_id: int, ws: web.WebSocketResponse) -> None:
        super().__init__(venue, session_id, ws, DeribitMutator())
        self.heartbeat_interval: float | None = None
        self.awaiting_test = False
        self._heartbeat_task: asyncio.Task[None] | None = None

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "heartbeat_interval": self.heartbeat_interval}

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


class DeribitVenue(PushVenue):
    name = VENUE
    rest_path = "/api/v2"
    ws_path = "/ws/api/v2"
    # Each instrument update is two messages (book change + ticker).
    messages_per_update = 2.0

    def __init__(self, ctx: VenueContext) -> None:
        super().__init__(ctx, DeribitNaming(), deribit_style, seed_salt=17)
        self.counters["rpc_errors"] = 0
        self.counters["heartbeat_disconnects"] = 0
        self.instrument_ids: dict[str, int] = {}
        for market in self.markets.values():
            for inst in market.instruments:
                self._instrument_id(inst)

    # -- plumbing -------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws/api/v2", self.ws_handler)
        app.router.add_get("/ws/api/v2/", self.ws_handler)
        app.router.add_get("/api/v2/{scope}/{method}", self._rest_get)
        app.router.add_post("/api/v2/{scope}/{method}", self._rest_post)
        app.router.add_post("/api/v2", self._rest_post)
        return app

    def new_session(self, session_id: int, ws: web.WebSocketResponse) -> DeribitSession:
        return DeribitSession(self, session_id, ws)

    def truth_forwards(self, currency: str) -> dict[int, float]:
        # The reference surface keeps the truth's unrounded forwards for Deribit.
        return {}

    @property
    def inst_channels(self) -> dict[str, dict[str, Sub]]:
        """Instrument channels somebody holds, per symbol (tests/book reads this name)."""
        return self.inst_subs

    def _instrument_id(self, inst: SimInstrument) -> int:
        iid = self.instrument_ids.get(inst.symbol)
        if iid is None:
            iid = 100_000 + len(self.instrument_ids) * 7 + 3
            self.instrument_ids[inst.symbol] = iid
        return iid

    # -- message builders -------------------------------------------------------------
    def instrument_json(self, inst: SimInstrument) -> dict[str, object]:
        ccy = inst.currency
        head: dict[str, object]
        if inst.kind == "option":
            head = {
                "tick_size": inst.tick,
                "taker_commission": 0.0003,
                "strike": float(inst.strike),
                "settlement_period": inst.period,
                "quote_currency": ccy,
                "option_type": "call" if inst.is_call else "put",
                "min_trade_amount": inst.amount_step,
                "maker_commission": 0.0003,
                "kind": "option",
            }
            contract_size, block_commission = 1.0, 0.00015
        else:
            head = {
                "tick_size": inst.tick,
                "taker_commission": 0.0005,
                "settlement_period": inst.period,
                "quote_currency": "USD",
                "min_trade_amount": inst.amount_step,
                "max_liquidation_commission": 0.005,
                "max_leverage": 100 if ccy == "BTC" else 50,
                "maker_commission": 0.0,
                "kind": "future",
            }
            contract_size, block_commission = inst.amount_step, 0.0001
        return {
            **head,
            "is_active": inst.state == "open",
            "instrument_name": inst.symbol,
            "expiration_timestamp": inst.expiry_ms,
            "creation_timestamp": inst.created_ns // 1_000_000,
            "contract_size": contract_size,
            "block_trade_commission": block_commission,
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
    def parse_channel(self, channel: object) -> Sub | None:
        """The subscription a channel names; None when no such channel exists (it is skipped)."""
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
            ccy = found[1].currency
            if head == "ticker" and len(parts) == 3:
                return Sub(channel, SubKind.TICKER, head, symbol, ccy)
            if head == "book" and len(parts) == 3:
                return Sub(channel, SubKind.BOOK, head, symbol, ccy)
            if head == "book" and len(parts) == 5:
                group, depth_text = parts[2], parts[3]
                if group != "none" or not depth_text.isdigit():
                    return None
                depth = int(depth_text)
                if depth not in GROUPED_DEPTHS:
                    return None
                return Sub(channel, SubKind.BOOK_TOP, head, symbol, ccy, depth)
            return None
        if head in ("deribit_price_index", "deribit_volatility_index") and len(parts) == 2:
            name = parts[1]
            for ccy in self.markets:
                if index_name(ccy) == name:
                    return Sub(channel, SubKind.INDEX, head, currency=ccy)
            return None
        if head == "instrument" and len(parts) == 4 and parts[1] == "state":
            kind_text, ccy_text = parts[2].lower(), parts[3].upper()
            if kind_text not in ("option", "future", "any"):
                return None
            if ccy_text != "ANY" and ccy_text not in self.markets:
                return None
            # `arg`: the instrument kind the channel announces ("any" for all).
            return Sub(channel, SubKind.LISTING, head, currency=ccy_text, arg=kind_text)
        return None

    def subscribe(self, session: PushSession, channels: Iterable[object]) -> list[str]:
        # Every channel is checked before any is held: a refused one fails the whole request.
        subs = [sub for ch in channels if (sub := self.parse_channel(ch)) is not None]
        accepted: list[str] = []
        for sub in subs:
            self.add_sub(session, sub)
            if sub.key not in accepted:
                accepted.append(sub.key)
        return accepted

    def initial_notifications(self, session: PushSession, channels: list[str]) -> None:
        """What a new subscription gets first: a book snapshot, the current ticker/book."""
        now_ns = self.ctx.clock.now_ns()
        ts = now_ns // 1_000_000
        subs = [sub for ch in channels if (sub := session.subs.get(ch)) is not None]
        for ccy, insts in self.instruments_by_market(subs).items():
            self.markets[ccy].ensure_books(insts, now_ns)
        tickers: dict[str, list[SimInstrument]] = {}
        for sub in subs:
            found = self.find(sub.symbol) if sub.symbol else None
            if found is None:
                continue
            inst = found[1]
            if sub.kind == SubKind.BOOK:
                frame = notification(sub.key, self.book_snapshot_data(inst, ts))
                session.enqueue(frame, FrameKind.BOOK_SNAPSHOT, inst.symbol, sub.key)
            elif sub.kind == SubKind.BOOK_TOP:
                frame = notification(sub.key, self.grouped_book_data(inst, sub.depth, ts))
                session.enqueue(frame, FrameKind.OTHER, inst.symbol, sub.key)
            elif sub.kind == SubKind.TICKER:
                tickers.setdefault(inst.currency, []).append(inst)
        for ccy, insts in tickers.items():
            market = self.markets[ccy]
            for u in market.update(insts, now_ns, churn=False):
                for ch, sub in self.inst_subs.get(u.inst.symbol, {}).items():
                    if sub.kind == SubKind.TICKER and ch in session.subs:
                        frame = notification(ch, self.ticker_data(u, market))
                        session.enqueue(frame, FrameKind.TICKER, u.inst.symbol, ch)

    def unsubscribe(self, session: PushSession, channels: Iterable[object]) -> list[str]:
        removed = [ch for ch in channels if isinstance(ch, str)]
        return [ch for ch in removed if self.remove_sub(session, ch) is not None]

    # -- pushes -----------------------------------------------------------------------
    def update_frame(
        self, market: VenueMarket, u: Update, sub: Sub
    ) -> tuple[bytes, FrameKind] | None:
        if sub.kind == SubKind.TICKER:
            return notification(sub.key, self.ticker_data(u, market)), FrameKind.TICKER
        if not u.book_changed:
            return None
        if sub.kind == SubKind.BOOK:
            return notification(sub.key, self.book_change_data(u)), FrameKind.BOOK_DELTA
        if sub.kind == SubKind.BOOK_TOP:
            data = self.grouped_book_data(u.inst, sub.depth, u.timestamp_ms)
            return notification(sub.key, data), FrameKind.OTHER
        return None

    def on_periodic(self, now_ns: int) -> None:
        ts = now_ns // 1_000_000
        for ccy, market in self.markets.items():
            name = index_name(ccy)
            idx_ch = f"deribit_price_index.{name}"
            snap = market.truth.snapshot()
            if self.subs.get(idx_ch):
                price = market.index_published(snap)
                data = {"timestamp": ts, "price": price, "index_name": name}
                self.push(idx_ch, notification(idx_ch, data), FrameKind.OTHER)
            dvol_ch = f"deribit_volatility_index.{name}"
            if self.subs.get(dvol_ch):
                dvol = round(vol_index(snap) * 100.0, 2)
                data = {"volatility": dvol, "timestamp": ts, "index_name": name}
                self.push(dvol_ch, notification(dvol_ch, data), FrameKind.OTHER)

    def _state_channels_for(self, inst: SimInstrument) -> list[str]:
        return [
            key
            for key, sub in self.listing_subs.items()
            if sub.arg in ("any", inst.kind) and sub.currency in ("ANY", inst.currency)
        ]

    def announce_listing(self, market: VenueMarket, changes: ListingChanges, now_ns: int) -> None:
        ts = now_ns // 1_000_000

        def state_frame(ch: str, inst: SimInstrument, state: str) -> bytes:
            return notification(
                ch, {"timestamp": ts, "state": state, "instrument_name": inst.symbol}
            )

        for inst in changes.listed:
            self._instrument_id(inst)
            for ch in self._state_channels_for(inst):
                for state in ("created", "started"):
                    self.push(ch, state_frame(ch, inst, state), FrameKind.OTHER, inst.symbol)
        for inst in changes.expired:
            for ch in self._state_channels_for(inst):
                self.push(ch, state_frame(ch, inst, "closed"), FrameKind.OTHER, inst.symbol)
            for ch, sub in self.inst_subs.get(inst.symbol, {}).items():
                if sub.kind == SubKind.TICKER:
                    frame = notification(ch, self._closed_ticker(inst, ts))
                    self.push(ch, frame, FrameKind.TICKER, inst.symbol)

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
                self.unsubscribe(session, list(session.subs))
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
        return self.json_response(body, 400 if "error" in body else 200)

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
    def on_text(self, session: PushSession, text: str) -> None:
        assert isinstance(session, DeribitSession)
        us_in = self.ctx.clock.now_ns() // 1000
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
