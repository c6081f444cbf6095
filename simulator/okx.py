"""OKX v5 as the simulator speaks it: message shapes, strings and units as in the recordings
under tests/fixtures/venues/okx and docs/venues/okx.md.

Routes (mounted under /okx, the live path layout below it):
  GET /api/v5/public/instruments?instType=OPTION|FUTURES&instFamily=BTC-USD (or uly=)
  GET /api/v5/public/time
  GET /ws/v5/public        websocket: subscribe / unsubscribe, text ping -> pong

Channels: `books` (also `books-l2-tbt`, `books50-l2-tbt`: snapshot then updates with
seqId/prevSeqId and the CRC32 checksum of the top 25 levels; a keep-alive update with empty
sides and prevSeqId == seqId after `book_keepalive_s` without a change), `books5` and
`bbo-tbt` (full top of book each change), `tickers`, `mark-price` (options in USD per coin,
as the recordings suggest), `opt-summary` per family (IVs as fractions, `fwdPx`, greeks:
`delta` premium-adjusted, `*BS` Black-Scholes in USD), `index-tickers`, `instruments`
(new listings). Option premiums are inverse: coin per coin, USD = premium x `fwdPx`.

Venue options (SimConfig.venue_options["okx"]): `idle_timeout_s` (30: a connection that
sends nothing for this long is closed with 4004), `book_keepalive_s` (60), `checksums`
(false: books carry checksum 0 as the live venue has since June 2026; true: the real CRC32),
`ws_snapshots` (true; false: a `books` subscription gets no initial snapshot, only updates,
as OKX announced for August 2026: the book is built from REST `GET /api/v5/market/books`,
which carries its `seqId`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from simulator.market import (
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
    NumberText,
    PushSession,
    PushVenue,
    Sub,
    SubKind,
    entries_of,
    option_float,
    trimmed,
    yymmdd,
)
from simulator.venue import VenueContext
from svc_connector.venues.okx.checksum import okx_checksum

VENUE = "okx"
INCREMENTAL = ("books", "books-l2-tbt", "books50-l2-tbt")
TOP_DEPTHS = {"books5": 5, "bbo-tbt": 1}
CHECKSUM_DEPTH = 25
SUMMARY_CHUNK = 200
# opt-summary fields a "missing fields" fault removes (greeks and leverage).
OPTIONAL_SUMMARY_FIELDS = (
    "delta",
    "gamma",
    "vega",
    "theta",
    "lever",
    "realVol",
    "volLv",
    "deltaBS",
    "gammaBS",
    "thetaBS",
    "vegaBS",
    "open24h",
    "high24h",
    "low24h",
    "sodUtc0",
    "sodUtc8",
    "volCcy24h",
    "vol24h",
    "last",
    "lastSz",
)
_ORDER_COUNTS = ("1", "1", "2", "1", "3", "1", "4", "2")


def strike_text(strike: float) -> str:
    return trimmed(strike, 8)


def family(currency: str) -> str:
    return f"{currency}-USD"


class OkxNaming(DashedNaming):
    def root(self, currency: str) -> str:
        return family(currency)

    def expiry_text(self, expiry_ns: int) -> str:
        return yymmdd(expiry_ns)

    def perpetual(self, currency: str) -> str:
        return f"{family(currency)}-SWAP"

    def synthetic_underlying(self, currency: str, expiry_ns: int) -> str:
        return family(currency)

    def lists_perpetual(self) -> bool:
        return False


def okx_style(currency: str) -> QuoteStyle:
    common: dict[str, Any] = {
        "inverse": True,
        "option_tick": 0.0005,
        "option_amount_step": 1.0,
        "future_amount_step": 1.0,
        "usd_decimals": 2,
        "half_spread_vol": 0.015,
        "max_depth": 10,
        "sequence_jump_max": 6,
        "option_median_steps": 60.0,
        "future_median_steps": 3_000.0,
        "forward_offset_bps": 2.0,
        "mark_iv_decimals": 10,
        "iv_decimals": 10,
        "greek_decimals": 10,
    }
    if currency == "BTC":
        return QuoteStyle(future_tick=0.1, **common)
    if currency == "ETH":
        return QuoteStyle(future_tick=0.01, **common)
    return QuoteStyle(future_tick=0.0001, **common)


def contract_value(currency: str) -> str:
    """Coins per option contract (ctVal, with ctMult 1)."""
    return {"BTC": "0.01", "ETH": "0.1"}.get(currency, "1")


def future_contract_usd(currency: str) -> str:
    return "100" if currency == "BTC" else "10"


class OkxMutator(JsonMutator):
    def payloads(self, obj: Any) -> list[dict[str, Any]]:
        return entries_of(obj.get("data")) if isinstance(obj, dict) else []

    def rename_channel(self, obj: Any) -> None:
        arg = obj.get("arg") if isinstance(obj, dict) else None
        if isinstance(arg, dict):
            arg["channel"] = "sim-unknown"


class OkxSession(PushSession):
    pass


def error_frame(code: str, msg: str, conn_id: str, req_id: object = None) -> bytes:
    body: dict[str, object] = {}
    if req_id is not None:
        body["id"] = req_id
    body.update({"event": "error", "code": code, "msg": msg, "connId": conn_id})
    return orjson.dumps(body)


class OkxVenue(PushVenue):
    name = VENUE
    ws_path = "/ws/v5/public"
    messages_per_update = 1.0

    def __init__(self, ctx: VenueContext) -> None:
        super().__init__(ctx, OkxNaming(), okx_style, seed_salt=31)
        self.idle_timeout_s = option_float(self.options, "idle_timeout_s", 30.0) or None
        self.book_keepalive_ns = int(option_float(self.options, "book_keepalive_s", 60.0) * 1e9)
        checksums = self.options.get("checksums", False)
        if not isinstance(checksums, bool):
            raise ValueError("venue option 'checksums' must be a boolean")
        # The live venue sends checksum 0 since June 2026 (docs/venues/okx.md); tests can
        # ask for real ones.
        self.checksums = checksums
        ws_snapshots = self.options.get("ws_snapshots", True)
        if not isinstance(ws_snapshots, bool):
            raise ValueError("venue option 'ws_snapshots' must be a boolean")
        self.ws_snapshots = ws_snapshots
        # symbol -> sim time of the last books push (snapshot, update or keep-alive)
        self.book_pushed_ns: dict[str, int] = {}
        self._usd_text = NumberText(2, trim=True)

    # -- plumbing -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws/v5/public", self.ws_handler)
        app.router.add_get("/api/v5/public/instruments", self._rest_instruments)
        app.router.add_get("/api/v5/public/time", self._rest_time)
        app.router.add_get("/api/v5/market/books", self._rest_books)
        return app

    def new_session(self, session_id: int, ws: web.WebSocketResponse) -> PushSession:
        return OkxSession(self, session_id, ws, OkxMutator(OPTIONAL_SUMMARY_FIELDS))

    def market_of_family(self, name: object) -> VenueMarket | None:
        if not isinstance(name, str) or not name.endswith("-USD"):
            return None
        return self.markets.get(name[:-4])

    # -- REST -----------------------------------------------------------------------------
    def instrument_json(self, inst: SimInstrument) -> dict[str, str]:
        ccy = inst.currency
        state = "live" if inst.state == "open" else "expired"
        common = {
            "alias": "",
            "baseCcy": "",
            "category": "1",
            "ctMult": "1",
            "expTime": str(inst.expiry_ms),
            "instFamily": family(ccy),
            "instId": inst.symbol,
            "listTime": str(inst.created_ns // 1_000_000),
            "lotSz": "1",
            "maxIcebergSz": "1000000",
            "maxLmtAmt": "20000000",
            "maxLmtSz": "1000000",
            "maxMktAmt": "",
            "maxMktSz": "5000",
            "maxStopSz": "5000",
            "maxTriggerSz": "1000000",
            "maxTwapSz": "1000000",
            "minSz": "1",
            "quoteCcy": "",
            "ruleType": "normal",
            "settleCcy": ccy,
            "state": state,
            "tickSz": trimmed(inst.tick, 8),
            "uly": family(ccy),
        }
        if inst.kind == "option":
            return {
                **common,
                "ctType": "",
                "ctVal": contract_value(ccy),
                "ctValCcy": ccy,
                "instType": "OPTION",
                "lever": "",
                "optType": "C" if inst.is_call else "P",
                "stk": strike_text(inst.strike),
            }
        return {
            **common,
            "alias": self._future_alias(inst),
            "ctType": "inverse",
            "ctVal": future_contract_usd(ccy),
            "ctValCcy": "USD",
            "instType": "FUTURES",
            "lever": "100",
            "optType": "",
            "stk": "",
        }

    def _future_alias(self, inst: SimInstrument) -> str:
        """this_week / next_week / this_month / next_month / quarter / next_quarter."""
        market = self.markets[inst.currency]
        group = _alias_group(inst)
        same = sorted(
            i.expiry_ns for i in market.open_instruments("future") if _alias_group(i) == group
        )
        nearest = not same or inst.expiry_ns <= same[0]
        if group == "quarter":
            return "quarter" if nearest else "next_quarter"
        return ("this_" if nearest else "next_") + group

    async def _rest_time(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        return self.json_response({"code": "0", "msg": "", "data": [{"ts": str(self.now_ms())}]})

    async def _rest_instruments(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        q = request.query
        inst_type = q.get("instType", "")
        if not inst_type:
            return self._rest_error("50014", "Parameter instType can not be empty.")
        if inst_type not in ("OPTION", "FUTURES", "SWAP", "SPOT", "MARGIN"):
            return self._rest_error("51000", "Parameter instType error")
        fam = q.get("instFamily") or q.get("uly")
        inst_id = q.get("instId")
        if inst_type == "OPTION" and not fam and not inst_id:
            return self._rest_error("50014", "Parameter uly or instFamily can not be empty.")
        kind = {"OPTION": "option", "FUTURES": "future"}.get(inst_type)
        out: list[dict[str, str]] = []
        for ccy, market in self.markets.items():
            if fam and fam != family(ccy):
                continue
            for inst in market.open_instruments():
                if inst.kind != kind or (inst_id and inst.symbol != inst_id):
                    continue
                out.append(self.instrument_json(inst))
        return self.json_response({"code": "0", "msg": "", "data": out})

    async def _rest_books(self, request: web.Request) -> web.Response:
        """The order book as the websocket's books channel would snapshot it, with seqId."""
        self.counters["rest_requests"] += 1
        inst_id = request.query.get("instId")
        if not inst_id:
            return self._rest_error("50014", "Parameter instId can not be empty.")
        found = self.find(inst_id)
        if found is None or found[1].state != "open":
            return self._rest_error("51001", "Instrument ID does not exist.")
        try:
            depth = int(request.query.get("sz", "1"))
        except ValueError:
            return self._rest_error("51000", "Parameter sz error")
        depth = max(1, min(depth, 400))
        inst = found[1]
        data = {
            "asks": self._levels(inst, False, depth),
            "bids": self._levels(inst, True, depth),
            "ts": str(self.now_ms()),
            "seqId": inst.book.sequence,
        }
        return self.json_response({"code": "0", "msg": "", "data": [data]})

    def _rest_error(self, code: str, msg: str) -> web.Response:
        self.counters["request_errors"] += 1
        return self.json_response({"code": code, "msg": msg, "data": []}, status=400)

    # -- frames ---------------------------------------------------------------------------
    def price_text(self, inst: SimInstrument) -> NumberText:
        return self.text(inst.tick)

    def size_text(self, inst: SimInstrument) -> NumberText:
        return self.text(inst.amount_step)

    def _levels(self, inst: SimInstrument, bids: bool, depth: int | None = None) -> list[list[str]]:
        """[price, size, "0", number of orders] strings, best first."""
        side = inst.book.bids if bids else inst.book.asks
        return [
            [p, s, "0", _ORDER_COUNTS[ord(p[-1]) & 7]]
            for p, s in self.level_text(inst).levels(side, bids, depth)
        ]

    def _checksum(self, inst: SimInstrument) -> int:
        if not self.checksums:
            return 0
        text = self.level_text(inst)
        book = inst.book
        bids = text.levels(book.bids, True, CHECKSUM_DEPTH)
        asks = text.levels(book.asks, False, CHECKSUM_DEPTH)
        return okx_checksum(bids, asks, max(len(bids), len(asks)))

    def book_snapshot(self, sub: Sub, inst: SimInstrument, ts_ms: int) -> bytes:
        book = inst.book
        bids = self._levels(inst, True)
        asks = self._levels(inst, False)
        data = {
            "asks": asks,
            "bids": bids,
            "ts": str(ts_ms),
            "checksum": (
                okx_checksum(bids[:CHECKSUM_DEPTH], asks[:CHECKSUM_DEPTH]) if self.checksums else 0
            ),
            "prevSeqId": -1,
            "seqId": book.sequence,
        }
        return orjson.dumps({"arg": sub.arg, "action": "snapshot", "data": [data]})

    def book_update(self, sub: Sub, u: Update) -> bytes:
        inst = u.inst
        px = self.text(inst.tick)
        sz = self.text(inst.amount_step)

        def side(changes: list[tuple[str, float, float]], bids: bool) -> list[list[str]]:
            ordered = sorted(changes, key=lambda c: -c[1] if bids else c[1])
            out = []
            for action, p, a in ordered:
                if action == "delete":
                    out.append([px(p), "0", "0", "0"])
                else:
                    price = px(p)
                    out.append([price, sz(a), "0", _ORDER_COUNTS[ord(price[-1]) & 7]])
            return out

        data = {
            "asks": side(u.ask_changes, False),
            "bids": side(u.bid_changes, True),
            "ts": str(u.timestamp_ms),
            "checksum": self._checksum(inst),
            "prevSeqId": u.prev_sequence,
            "seqId": u.sequence,
        }
        return orjson.dumps({"arg": sub.arg, "action": "update", "data": [data]})

    def keepalive_update(self, sub: Sub, inst: SimInstrument, ts_ms: int) -> bytes:
        seq = inst.book.sequence
        data = {
            "asks": [],
            "bids": [],
            "ts": str(ts_ms),
            "checksum": self._checksum(inst),
            "prevSeqId": seq,
            "seqId": seq,
        }
        return orjson.dumps({"arg": sub.arg, "action": "update", "data": [data]})

    def book_top(self, sub: Sub, inst: SimInstrument, ts_ms: int) -> bytes:
        book = inst.book
        data: dict[str, object] = {
            "asks": self._levels(inst, False, sub.depth),
            "bids": self._levels(inst, True, sub.depth),
        }
        if sub.channel == "books5":
            data["instId"] = inst.symbol
        data["ts"] = str(ts_ms)
        data["seqId"] = book.sequence
        return orjson.dumps({"arg": sub.arg, "data": [data]})

    def ticker_entry(self, u: Update) -> dict[str, str]:
        inst = u.inst
        px = self.text(inst.tick)
        sz = self.text(inst.amount_step)
        bb, ba = u.best_bid, u.best_ask
        last = inst.last_price
        if last is None:
            last = max(inst.tick, round(u.mark_price / inst.tick) * inst.tick)
            inst.last_price = last
        last_text = px(last)
        return {
            "instType": "OPTION" if inst.kind == "option" else "FUTURES",
            "instId": inst.symbol,
            "last": last_text,
            "lastSz": "1",
            "askPx": px(ba[0]) if ba else "",
            "askSz": sz(ba[1]) if ba else "",
            "bidPx": px(bb[0]) if bb else "",
            "bidSz": sz(bb[1]) if bb else "",
            "open24h": last_text,
            "high24h": last_text,
            "low24h": last_text,
            "volCcy24h": trimmed(inst.volume * 0.01, 4),
            "vol24h": trimmed(inst.volume, 0),
            "sodUtc0": last_text,
            "sodUtc8": last_text,
            "ts": str(u.timestamp_ms),
        }

    def mark_entry(self, u: Update) -> dict[str, str]:
        inst = u.inst
        if isinstance(u, OptionUpdate):
            # Options: USD per coin (the recordings' markPx is far above the coin premium).
            mark = trimmed(u.mark_price * u.forward, 10)
            inst_type = "OPTION"
        else:
            mark = trimmed(u.mark_price, 2)
            inst_type = "FUTURES"
        return {
            "instType": inst_type,
            "instId": inst.symbol,
            "markPx": mark,
            "ts": str(u.timestamp_ms),
        }

    def summary_entry(self, u: OptionUpdate) -> dict[str, str]:
        fwd = u.forward
        coin_mark = u.mark_price

        def vol(pct: float) -> str:
            return trimmed(pct / 100.0, 10) if pct > 0 else ""

        return {
            "instType": "OPTION",
            "instId": u.inst.symbol,
            "uly": family(u.inst.currency),
            # Premium-adjusted greeks of the coin-settled option (OKX `PA`).
            "delta": trimmed(u.delta - coin_mark, 10),
            "gamma": trimmed(u.gamma * fwd, 10),
            "vega": trimmed(u.vega / fwd, 10),
            "theta": trimmed(u.theta / fwd, 10),
            "lever": trimmed(1.0 / coin_mark, 4) if coin_mark > 1e-12 else "0",
            "markVol": trimmed(u.mark_iv / 100.0, 10),
            "bidVol": vol(u.bid_iv),
            "askVol": vol(u.ask_iv),
            "realVol": "",
            "volLv": "",
            "deltaBS": trimmed(u.delta, 10),
            "gammaBS": trimmed(u.gamma, 10),
            "thetaBS": trimmed(u.theta, 10),
            "vegaBS": trimmed(u.vega, 10),
            "fwdPx": self._usd_text(fwd),
            "ts": str(u.timestamp_ms),
        }

    def summary_frames(self, sub: Sub, updates: list[OptionUpdate]) -> list[bytes]:
        out = []
        for i in range(0, len(updates), SUMMARY_CHUNK):
            data = [self.summary_entry(u) for u in updates[i : i + SUMMARY_CHUNK]]
            out.append(orjson.dumps({"arg": sub.arg, "data": data}))
        return out

    def index_frame(self, sub: Sub, market: VenueMarket, ts_ms: int) -> bytes:
        px = trimmed(market.index_published(market.truth.snapshot()), 2)
        data = {
            "instId": family(market.currency),
            "idxPx": px,
            "open24h": px,
            "high24h": px,
            "low24h": px,
            "sodUtc0": px,
            "sodUtc8": px,
            "ts": str(ts_ms),
        }
        return orjson.dumps({"arg": sub.arg, "data": [data]})

    def needs_quotes(self, market: VenueMarket) -> bool:
        # Only opt-summary shows IVs and greeks.
        subs = self.currency_subs.get(market.currency, {})
        return any(sub.kind == SubKind.FAMILY for sub in subs.values())

    def update_frame(
        self, market: VenueMarket, u: Update, sub: Sub
    ) -> tuple[bytes, FrameKind] | None:
        if sub.kind == SubKind.BOOK:
            if not u.book_changed:
                return None
            self.book_pushed_ns[u.inst.symbol] = u.timestamp_ms * 1_000_000
            return self.book_update(sub, u), FrameKind.BOOK_DELTA
        if sub.kind == SubKind.BOOK_TOP:
            if not u.book_changed:
                return None
            return self.book_top(sub, u.inst, u.timestamp_ms), FrameKind.OTHER
        if sub.channel == "tickers":
            return orjson.dumps({"arg": sub.arg, "data": [self.ticker_entry(u)]}), FrameKind.TICKER
        if sub.channel == "mark-price":
            return orjson.dumps({"arg": sub.arg, "data": [self.mark_entry(u)]}), FrameKind.TICKER
        return None

    def after_updates(self, market: VenueMarket, updates: list[Update], now_ns: int) -> None:
        subs = self.currency_subs.get(market.currency)
        if not subs:
            return
        options = [u for u in updates if isinstance(u, OptionUpdate)]
        if not options:
            return
        for key, sub in subs.items():
            if sub.kind != SubKind.FAMILY:
                continue
            for frame in self.summary_frames(sub, options):
                self.push(key, frame, FrameKind.TICKER)

    def on_periodic(self, now_ns: int) -> None:
        ts = now_ns // 1_000_000
        for ccy, market in self.markets.items():
            for key, sub in self.currency_subs.get(ccy, {}).items():
                if sub.kind == SubKind.INDEX:
                    self.push(key, self.index_frame(sub, market, ts), FrameKind.OTHER)
        # A book nobody changed for a while gets a keep-alive update.
        for symbol, chans in self.inst_subs.items():
            last = self.book_pushed_ns.get(symbol)
            if last is None or now_ns - last < self.book_keepalive_ns:
                continue
            found = self.find(symbol)
            if found is None or found[1].state != "open" or not found[1].book.ready:
                continue
            self.book_pushed_ns[symbol] = now_ns
            for key, sub in chans.items():
                if sub.kind == SubKind.BOOK:
                    self.push(key, self.keepalive_update(sub, found[1], ts), FrameKind.HEARTBEAT)

    def announce_listing(self, market: VenueMarket, changes: ListingChanges, now_ns: int) -> None:
        for key, sub in self.listing_subs.items():
            kind = "option" if sub.arg.get("instType") == "OPTION" else "future"
            data = [self.instrument_json(i) for i in changes.listed if i.kind == kind]
            if data:
                self.push(key, orjson.dumps({"arg": sub.arg, "data": data}), FrameKind.OTHER)

    # -- requests -------------------------------------------------------------------------
    def on_text(self, session: PushSession, text: str) -> None:
        if text == "ping":
            session.enqueue(b"pong", FrameKind.RESPONSE)
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.counters["request_errors"] += 1
            session.enqueue(
                error_frame("60012", f"Invalid request: {text[:200]}", session.conn_id),
                FrameKind.RESPONSE,
            )
            return
        req_id = msg.get("id") if isinstance(msg, dict) else None
        op = msg.get("op") if isinstance(msg, dict) else None
        args = msg.get("args") if isinstance(msg, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list) or not args:
            self.counters["request_errors"] += 1
            session.enqueue(
                error_frame("60012", f"Invalid request: {text[:200]}", session.conn_id, req_id),
                FrameKind.RESPONSE,
            )
            return
        accepted: list[Sub] = []
        for arg in args:
            sub, error = self.parse_arg(arg)
            if sub is None:
                self.counters["request_errors"] += 1
                session.enqueue(
                    error_frame("60018", error, session.conn_id, req_id), FrameKind.RESPONSE
                )
                continue
            ack: dict[str, object] = {}
            if req_id is not None:
                ack["id"] = req_id
            ack.update({"event": op, "arg": sub.arg, "connId": session.conn_id})
            if op == "subscribe":
                self.add_sub(session, sub)
                accepted.append(sub)
            else:
                self.remove_sub(session, sub.key)
            session.enqueue(orjson.dumps(ack), FrameKind.RESPONSE)
        if accepted:
            self.initial_frames(session, accepted)

    def parse_arg(self, arg: object) -> tuple[Sub | None, str]:
        if not isinstance(arg, dict):
            return None, f"Invalid request: {arg!r}"
        channel = arg.get("channel")
        where = json.dumps(arg, separators=(",", ":"))
        bad = (
            f"Wrong URL or channel:{channel}, {where} doesn't exist. Please use the correct"
            " URL, channel and parameters referring to API document."
        )
        if not isinstance(channel, str):
            return None, bad
        inst_id = arg.get("instId")
        if channel in INCREMENTAL or channel in TOP_DEPTHS or channel in ("tickers", "mark-price"):
            found = self.find(inst_id) if isinstance(inst_id, str) else None
            if found is None or found[1].state != "open":
                return None, bad
            inst = found[1]
            clean = {"channel": channel, "instId": inst.symbol}
            if channel in INCREMENTAL:
                kind, depth = SubKind.BOOK, 0
            elif channel in TOP_DEPTHS:
                kind, depth = SubKind.BOOK_TOP, TOP_DEPTHS[channel]
            else:
                kind, depth = SubKind.TICKER, 0
            return (
                Sub(
                    f"{channel}:{inst.symbol}",
                    kind,
                    channel,
                    inst.symbol,
                    inst.currency,
                    depth,
                    clean,
                ),
                "",
            )
        if channel == "opt-summary":
            for fam_key in ("instFamily", "uly"):
                fam = arg.get(fam_key)
                if fam is None:
                    continue
                market = self.market_of_family(fam)
                if market is None:
                    return None, bad
                clean = {"channel": channel, fam_key: fam}
                return Sub(
                    f"{channel}:{fam_key}:{fam}",
                    SubKind.FAMILY,
                    channel,
                    currency=market.currency,
                    arg=clean,
                ), ""
            return None, bad
        if channel == "index-tickers":
            name = inst_id if isinstance(inst_id, str) else ""
            ccy = name.split("-")[0]
            if name not in (f"{ccy}-USD", f"{ccy}-USDT") or ccy not in self.markets:
                return None, bad
            clean = {"channel": channel, "instId": name}
            return Sub(f"{channel}:{name}", SubKind.INDEX, channel, currency=ccy, arg=clean), ""
        if channel == "instruments":
            inst_type = arg.get("instType")
            if inst_type not in ("OPTION", "FUTURES"):
                return None, bad
            clean = {"channel": channel, "instType": inst_type}
            return Sub(f"{channel}:{inst_type}", SubKind.LISTING, channel, arg=clean), ""
        return None, bad

    def initial_frames(self, session: PushSession, subs: list[Sub]) -> None:
        now_ns = self.ctx.clock.now_ns()
        ts = now_ns // 1_000_000
        per_market = self.instruments_by_market(subs)
        quotes: dict[str, Update] = {}
        for ccy, insts in per_market.items():
            for u in self.quote_now(self.markets[ccy], insts):
                quotes[u.inst.symbol] = u
        for sub in subs:
            if sub.symbol:
                found = self.find(sub.symbol)
                if found is None:
                    continue
                inst = found[1]
                if sub.kind == SubKind.BOOK:
                    self.book_pushed_ns[inst.symbol] = now_ns
                    if not self.ws_snapshots:
                        continue  # updates only: the client builds the book from REST
                    session.enqueue(
                        self.book_snapshot(sub, inst, ts),
                        FrameKind.BOOK_SNAPSHOT,
                        inst.symbol,
                        sub.key,
                    )
                elif sub.kind == SubKind.BOOK_TOP:
                    session.enqueue(
                        self.book_top(sub, inst, ts), FrameKind.OTHER, inst.symbol, sub.key
                    )
                else:
                    quote = quotes.get(inst.symbol)
                    if quote is None:
                        continue
                    entry = (
                        self.ticker_entry(quote)
                        if sub.channel == "tickers"
                        else self.mark_entry(quote)
                    )
                    frame = orjson.dumps({"arg": sub.arg, "data": [entry]})
                    session.enqueue(frame, FrameKind.TICKER, inst.symbol, sub.key)
            elif sub.kind == SubKind.FAMILY:
                market = self.markets[sub.currency]
                ups = [
                    u
                    for u in self.quote_now(market, market.open_instruments("option"))
                    if isinstance(u, OptionUpdate)
                ]
                for frame in self.summary_frames(sub, ups):
                    session.enqueue(frame, FrameKind.TICKER, "", sub.key)
            elif sub.kind == SubKind.INDEX:
                frame = self.index_frame(sub, self.markets[sub.currency], ts)
                session.enqueue(frame, FrameKind.OTHER, "", sub.key)
            elif sub.kind == SubKind.LISTING:
                kind = "option" if sub.arg["instType"] == "OPTION" else "future"
                data = [
                    self.instrument_json(i)
                    for m in self.markets.values()
                    for i in m.open_instruments(kind)  # type: ignore[arg-type]
                ]
                session.enqueue(
                    orjson.dumps({"arg": sub.arg, "data": data}), FrameKind.OTHER, "", sub.key
                )


def _alias_group(inst: SimInstrument) -> str:
    if inst.period == "week":
        return "week"
    month = datetime.fromtimestamp(inst.expiry_ns / 1e9, tz=UTC).month
    return "quarter" if month in (3, 6, 9, 12) else "month"
