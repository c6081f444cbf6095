"""Bybit v5 options as the simulator speaks them: shapes, strings and units as in the
recordings under tests/fixtures/venues/bybit and docs/venues/bybit.md.

Routes (mounted under /bybit, the live path layout below it):
  GET /v5/market/instruments-info?category=option&baseCoin=BTC[&limit=&cursor=&symbol=]
  GET /v5/market/time
  GET /v5/public/option     websocket: {"op":"subscribe"|"unsubscribe","args":[...]},
                            {"op":"ping"} -> {"op":"pong","args":[ms]}

Topics: `orderbook.{25|100}.{symbol}` (a snapshot, then deltas whose `u` is the previous
`u` + 1; `seq` a cross sequence; size "0" deletes) and `tickers.{symbol}` (prices, IVs as
fractions, "0" for an empty side, `underlyingPrice` the venue's forward). Premiums are linear:
USDC per coin.

Venue options (SimConfig.venue_options["bybit"]): `ack_style` ("op": `{"success","ret_msg",
"conn_id","req_id","op"}`; "command_resp": `{"type":"COMMAND_RESP","data":{"successTopics",
"failTopics"}}`), `idle_timeout_s` (0: off; the venue asks for a ping every 20 s but the
drop time is not documented).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from simulator.market import (
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
    NumberText,
    PushSession,
    PushVenue,
    Sub,
    SubKind,
    entries_of,
    option_float,
    trimmed,
)
from simulator.truth import expiry_label
from simulator.venue import VenueContext

VENUE = "bybit"
BOOK_DEPTHS = (25, 100)
MAX_ARGS_PER_CONNECTION = 2_000
DEFAULT_PAGE = 500
MAX_PAGE = 1_000
OPTIONAL_TICKER_FIELDS = (
    "lastPrice",
    "highPrice24h",
    "lowPrice24h",
    "openInterest",
    "turnover24h",
    "volume24h",
    "totalVolume",
    "totalTurnover",
    "delta",
    "gamma",
    "vega",
    "theta",
    "predictedDeliveryPrice",
    "change24h",
)


class BybitNaming(DashedNaming):
    def perpetual(self, currency: str) -> str:
        return f"{currency}PERP"

    def synthetic_underlying(self, currency: str, expiry_ns: int) -> str:
        return f"{currency}-{expiry_label(expiry_ns)}"

    def lists_future(self, expiry: Any) -> bool:
        return False

    def lists_perpetual(self) -> bool:
        return False


def bybit_style(currency: str) -> QuoteStyle:
    common: dict[str, Any] = {
        "inverse": False,
        "usd_decimals": 2,
        "half_spread_vol": 0.013,
        "max_depth": 8,
        # `u` of consecutive deltas differs by exactly one.
        "sequence_jump_max": 1,
        "forward_offset_bps": -3.0,
        "mark_iv_decimals": 4,
        "iv_decimals": 4,
        "greek_decimals": 8,
    }
    if currency == "BTC":
        return QuoteStyle(
            option_tick=5.0, option_amount_step=0.01, option_median_steps=300.0, **common
        )
    if currency == "ETH":
        return QuoteStyle(
            option_tick=0.1, option_amount_step=0.1, option_median_steps=100.0, **common
        )
    return QuoteStyle(option_tick=0.01, option_amount_step=1.0, option_median_steps=30.0, **common)


class BybitMutator(JsonMutator):
    def payloads(self, obj: Any) -> list[dict[str, Any]]:
        return entries_of(obj.get("data")) if isinstance(obj, dict) else []

    def rename_channel(self, obj: Any) -> None:
        if isinstance(obj, dict):
            obj["topic"] = f"simUnknown.{obj.get('topic')}"


class BybitVenue(PushVenue):
    name = VENUE
    ws_path = "/v5/public/option"
    # An update makes an orderbook delta and a ticker.
    messages_per_update = 2.0

    def __init__(self, ctx: VenueContext) -> None:
        super().__init__(ctx, BybitNaming(), bybit_style, seed_salt=53)
        style = self.options.get("ack_style", "op")
        if style not in ("op", "command_resp"):
            raise ValueError("bybit ack_style must be 'op' or 'command_resp'")
        self.ack_style = str(style)
        self.idle_timeout_s = option_float(self.options, "idle_timeout_s", 0.0) or None
        self._static: dict[str, dict[str, str]] = {}
        self._usd_text = NumberText(2, trim=True)
        self._cross_seq = 4_000_000_000
        self._msg_id = 3_000_000_000

    # -- plumbing -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v5/public/option", self.ws_handler)
        app.router.add_get("/v5/market/instruments-info", self._rest_instruments)
        app.router.add_get("/v5/market/time", self._rest_time)
        return app

    def new_session(self, session_id: int, ws: web.WebSocketResponse) -> PushSession:
        return PushSession(self, session_id, ws, BybitMutator(OPTIONAL_TICKER_FIELDS))

    def _next_ids(self) -> tuple[int, int]:
        """(cross sequence, message id) of the next frame; `seq` moves on by small jumps, as
        the venue's cross sequence also counts other books."""
        self._msg_id += 1
        self._cross_seq += 1 + self._msg_id % 7
        return self._cross_seq, self._msg_id

    # -- REST -----------------------------------------------------------------------------
    def instrument_json(self, inst: SimInstrument) -> dict[str, object]:
        tick = trimmed(inst.tick, 8)
        step = trimmed(inst.amount_step, 8)
        return {
            "symbol": inst.symbol,
            "status": "Trading" if inst.state == "open" else "Closed",
            "baseCoin": inst.currency,
            "quoteCoin": "USD",
            "settleCoin": "USDC",
            "optionsType": "Call" if inst.is_call else "Put",
            "launchTime": str(inst.created_ns // 1_000_000),
            "deliveryTime": str(inst.expiry_ms),
            "deliveryFeeRate": "0.00015",
            "priceFilter": {"minPrice": tick, "maxPrice": "10000000", "tickSize": tick},
            "lotSizeFilter": {
                "maxOrderQty": "10000" if inst.amount_step >= 0.1 else "500",
                "minOrderQty": step,
                "qtyStep": step,
            },
            "displayName": "",
        }

    def _envelope(self, result: object, code: int = 0, msg: str = "OK") -> dict[str, object]:
        return {
            "retCode": code,
            "retMsg": msg,
            "result": result,
            "retExtInfo": {},
            "time": self.now_ms(),
        }

    async def _rest_time(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        ns = self.ctx.clock.now_ns()
        return self.json_response(
            self._envelope({"timeSecond": str(ns // 1_000_000_000), "timeNano": str(ns)})
        )

    async def _rest_instruments(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        q = request.query
        category = q.get("category", "")
        if category not in ("option", "linear", "inverse", "spot"):
            return self._rest_error(10001, "params error: Category is invalid")
        if category != "option":
            return self.json_response(
                self._envelope(
                    {"category": category, "nextPageCursor": "", "list": []}, msg="success"
                )
            )
        base = q.get("baseCoin", "BTC").upper()
        symbol = q.get("symbol")
        try:
            limit = int(q.get("limit", DEFAULT_PAGE))
        except ValueError:
            return self._rest_error(10001, "params error: limit")
        if not 1 <= limit <= MAX_PAGE:
            return self._rest_error(10001, "params error: limit must be in [1, 1000]")
        offset = 0
        cursor = q.get("cursor")
        if cursor:
            try:
                offset = int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":")[1])
            except (ValueError, IndexError, UnicodeDecodeError):
                return self._rest_error(10001, "params error: cursor")
        market = self.markets.get(base)
        insts = [] if market is None else market.open_instruments("option")
        if symbol:
            insts = [i for i in insts if i.symbol == symbol]
        page = insts[offset : offset + limit]
        nxt = ""
        if offset + limit < len(insts):
            nxt = base64.urlsafe_b64encode(f"{base}:{offset + limit}".encode()).decode()
        body = {
            "category": "option",
            "nextPageCursor": nxt,
            "list": [self.instrument_json(i) for i in page],
        }
        return self.json_response(self._envelope(body, msg="success"))

    def _rest_error(self, code: int, msg: str) -> web.Response:
        self.counters["request_errors"] += 1
        return self.json_response(self._envelope({}, code, msg))

    # -- frames ---------------------------------------------------------------------------
    def price_text(self, inst: SimInstrument) -> NumberText:
        return self.text(inst.tick)

    def size_text(self, inst: SimInstrument) -> NumberText:
        return self.text(inst.amount_step)

    def _message(self, topic: str, kind: str, ts_ms: int, data: Mapping[str, object]) -> bytes:
        _, msg_id = self._next_ids()
        return orjson.dumps(
            {
                "id": f"{topic}-{msg_id}-{ts_ms}",
                "topic": topic,
                "ts": ts_ms,
                "data": data,
                "type": kind,
                "cts": ts_ms,
            }
        )

    def book_snapshot(self, sub: Sub, inst: SimInstrument, ts_ms: int) -> bytes:
        book = inst.book
        seq, _ = self._next_ids()
        data = {
            "s": inst.symbol,
            "b": self.level_text(inst).levels(book.bids, True, sub.depth),
            "a": self.level_text(inst).levels(book.asks, False, sub.depth),
            "u": book.sequence,
            "seq": seq,
        }
        return self._message(sub.key, "snapshot", ts_ms, data)

    def book_delta(self, sub: Sub, u: Update) -> bytes:
        inst = u.inst
        px = self.text(inst.tick)
        sz = self.text(inst.amount_step)

        def side(changes: list[tuple[str, float, float]], bids: bool) -> list[list[str]]:
            ordered = sorted(changes, key=lambda c: -c[1] if bids else c[1])
            return [[px(p), "0" if action == "delete" else sz(a)] for action, p, a in ordered]

        seq, _ = self._next_ids()
        data = {
            "s": inst.symbol,
            "b": side(u.bid_changes, True),
            "a": side(u.ask_changes, False),
            "u": u.sequence,
            "seq": seq,
        }
        return self._message(sub.key, "delta", u.timestamp_ms, data)

    def _static_ticker(self, inst: SimInstrument, mark: float, index: float) -> dict[str, str]:
        """Ticker fields that do not move with quotes (trades, volumes, open interest)."""
        fields = self._static.get(inst.symbol)
        if fields is None:
            if inst.last_price is None:
                inst.last_price = max(inst.tick, round(mark / inst.tick) * inst.tick)
            last = self.text(inst.tick)(inst.last_price)
            fields = {
                "lastPrice": last,
                "highPrice24h": last,
                "lowPrice24h": last,
                "openInterest": trimmed(inst.open_interest * 0.1, 2),
                "turnover24h": trimmed(inst.volume * 0.1 * index, 4),
                "volume24h": trimmed(inst.volume * 0.1, 2),
                "totalVolume": trimmed(inst.volume, 0),
                "totalTurnover": trimmed(inst.volume * index, 0),
            }
            self._static[inst.symbol] = fields
        return fields

    def ticker_data(self, u: OptionUpdate, market: VenueMarket) -> dict[str, str]:
        inst = u.inst
        px = self.text(inst.tick)
        sz = self.text(inst.amount_step)
        bb, ba = u.best_bid, u.best_ask
        static = self._static_ticker(inst, u.mark_price, u.index_price)
        usd = self._usd_text
        return {
            "symbol": inst.symbol,
            "bidPrice": px(bb[0]) if bb else "0",
            "bidSize": sz(bb[1]) if bb else "0",
            "bidIv": trimmed(u.bid_iv / 100.0, 4) if bb and u.bid_iv > 0 else "0",
            "askPrice": px(ba[0]) if ba else "0",
            "askSize": sz(ba[1]) if ba else "0",
            "askIv": trimmed(u.ask_iv / 100.0, 4) if ba and u.ask_iv > 0 else "0",
            "lastPrice": static["lastPrice"],
            "highPrice24h": static["highPrice24h"],
            "lowPrice24h": static["lowPrice24h"],
            "markPrice": trimmed(u.mark_price, 8),
            "indexPrice": usd(u.index_price),
            "markPriceIv": trimmed(u.mark_iv / 100.0, 4),
            "underlyingPrice": usd(u.forward),
            "openInterest": static["openInterest"],
            "turnover24h": static["turnover24h"],
            "volume24h": static["volume24h"],
            "totalVolume": static["totalVolume"],
            "totalTurnover": static["totalTurnover"],
            "delta": trimmed(u.delta, 8),
            "gamma": trimmed(u.gamma, 8),
            "vega": trimmed(u.vega, 8),
            "theta": trimmed(u.theta, 8),
            "predictedDeliveryPrice": "0",
            "change24h": "0",
        }

    def needs_quotes(self, market: VenueMarket) -> bool:
        return self.kind_counts.get(SubKind.TICKER, 0) > 0

    def update_frame(
        self, market: VenueMarket, u: Update, sub: Sub
    ) -> tuple[bytes, FrameKind] | None:
        if sub.kind == SubKind.BOOK:
            if not u.book_changed:
                return None
            return self.book_delta(sub, u), FrameKind.BOOK_DELTA
        if sub.kind == SubKind.TICKER and isinstance(u, OptionUpdate):
            frame = self._message(sub.key, "snapshot", u.timestamp_ms, self.ticker_data(u, market))
            return frame, FrameKind.TICKER
        return None

    # -- requests -------------------------------------------------------------------------
    def parse_topic(self, topic: object) -> Sub | None:
        if not isinstance(topic, str):
            return None
        parts = topic.split(".")
        if parts[0] == "orderbook" and len(parts) == 3 and parts[1].isdigit():
            depth = int(parts[1])
            found = self.find(parts[2])
            if depth not in BOOK_DEPTHS or found is None or found[1].state != "open":
                return None
            inst = found[1]
            return Sub(topic, SubKind.BOOK, "orderbook", inst.symbol, inst.currency, depth, topic)
        if parts[0] == "tickers" and len(parts) == 2:
            found = self.find(parts[1])
            if found is None or found[1].state != "open":
                return None
            inst = found[1]
            return Sub(topic, SubKind.TICKER, "tickers", inst.symbol, inst.currency, 0, topic)
        return None

    def _ack(
        self,
        session: PushSession,
        op: str,
        req_id: object,
        ok: list[str],
        failed: list[str],
        reason: str,
    ) -> bytes:
        body: dict[str, object] = {"success": not failed, "ret_msg": reason if failed else ""}
        body["conn_id"] = session.conn_id
        if req_id is not None:
            body["req_id"] = req_id
        body["op"] = op
        if self.ack_style == "command_resp":
            body["type"] = "COMMAND_RESP"
            body["data"] = {"successTopics": ok, "failTopics": failed}
        return orjson.dumps(body)

    def on_text(self, session: PushSession, text: str) -> None:
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.counters["request_errors"] += 1
            session.enqueue(
                self._ack(session, "", None, [], [text[:100]], "error:request not json"),
                FrameKind.RESPONSE,
            )
            return
        if not isinstance(msg, dict):
            msg = {}
        op = msg.get("op")
        req_id = msg.get("req_id")
        if op == "ping":
            pong: dict[str, object] = {"op": "pong", "args": [str(self.now_ms())]}
            if req_id is not None:
                pong["req_id"] = req_id
            pong["conn_id"] = session.conn_id
            session.enqueue(orjson.dumps(pong), FrameKind.RESPONSE)
            return
        args = msg.get("args")
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            self.counters["request_errors"] += 1
            session.enqueue(
                self._ack(session, str(op), req_id, [], [str(op)], f"error:unknown op {op!r}"),
                FrameKind.RESPONSE,
            )
            return
        ok: list[str] = []
        failed: list[str] = []
        reasons: list[str] = []
        new_subs: list[Sub] = []
        for topic in args:
            sub = self.parse_topic(topic)
            name = topic if isinstance(topic, str) else repr(topic)
            if sub is None:
                failed.append(name)
                reasons.append(f"error:handler not found,topic:{name}")
                continue
            if op == "subscribe":
                if sub.key in session.subs:
                    failed.append(name)
                    reasons.append(f"error:already subscribed,topic:{name}")
                    continue
                if len(session.subs) >= MAX_ARGS_PER_CONNECTION:
                    failed.append(name)
                    reasons.append(f"error:args count exceeds the limit,topic:{name}")
                    continue
                self.add_sub(session, sub)
                new_subs.append(sub)
                ok.append(name)
            else:
                if self.remove_sub(session, sub.key) is None:
                    failed.append(name)
                    reasons.append(f"error:not subscribed,topic:{name}")
                    continue
                ok.append(name)
        if failed:
            self.counters["request_errors"] += 1
        session.enqueue(
            self._ack(session, op, req_id, ok, failed, ";".join(reasons)), FrameKind.RESPONSE
        )
        if new_subs:
            self.initial_frames(session, new_subs)

    def initial_frames(self, session: PushSession, subs: list[Sub]) -> None:
        ts = self.now_ms()
        per_market = self.instruments_by_market(subs)
        quotes: dict[str, OptionUpdate] = {}
        for ccy, insts in per_market.items():
            for u in self.quote_now(self.markets[ccy], insts):
                if isinstance(u, OptionUpdate):
                    quotes[u.inst.symbol] = u
        for sub in subs:
            found = self.find(sub.symbol)
            if found is None:
                continue
            market, inst = found
            if sub.kind == SubKind.BOOK:
                frame = self.book_snapshot(sub, inst, ts)
                session.enqueue(frame, FrameKind.BOOK_SNAPSHOT, inst.symbol, sub.key)
            else:
                quote = quotes.get(inst.symbol)
                if quote is not None:
                    frame = self._message(sub.key, "snapshot", ts, self.ticker_data(quote, market))
                    session.enqueue(frame, FrameKind.TICKER, inst.symbol, sub.key)
