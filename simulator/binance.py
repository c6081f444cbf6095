"""Binance options as the simulator speaks them: shapes, strings and units as in the
recordings under tests/fixtures/venues/binance (current stream API, lowercase stream names).

Routes (mounted under /binance):
  GET /eapi/v1/exchangeInfo | time | ping | index?underlying= | mark[?symbol=] | depth?symbol=
  GET /ws, /ws/<stream>[/<stream>...]   raw pushes (the data object alone)
  GET /stream[?streams=a/b/...]         combined pushes {"stream": name, "data": ...}
  (the same under /public/, /market/ and /eoptions/, the live hosts' path prefixes)
  Requests: {"method":"SUBSCRIBE"|"UNSUBSCRIBE"|"LIST_SUBSCRIPTIONS","params":[...],"id":n}
  -> {"result":null,"id":n}; errors {"error":{"code","msg"},"id":n}.

Streams (names lowercase, as the current API): `<symbol>@depth{5,10,20}[@100ms]` (the full
top-N book on every change; `U`/`u`/`pu` chain: `pu` is the previous push's `u`),
`<symbol>@depth[@100ms]` (diffs, same chain; REST depth for the start), `<symbol>@bookTicker`,
`<underlying>@optionMarkPrice` (every option of the underlying once per `mark_interval_s`:
`mp` mark, `i` index, `bo`/`ao`/`bq`/`aq` best quotes, `b`/`a`/`vo` bid/ask/mark IV as
fractions, "-1.0" when that side is empty, greeks `d`/`t`/`g`/`v` per coin),
`<underlying>@index` (`{"e":"index","s":"BTCUSDT","p"}` as in the 2023 recording: the index
stream name of the current API is not confirmed), `<underlying>@optionOpenInterest@<YYMMDD>`,
`!optionSymbol` (listings, carrying `u` = unit; shape not confirmed).

Units: premiums in USDT per contract of `unit` coins (USD per coin = price / unit); the
venue prices on the spot index (r = 0): Black-76 with F = `i` reprices `mp` from `vo`.

Venue options (SimConfig.venue_options["binance"]): `units` ({"BTC": 1, ...}, default 1),
`max_incoming_per_s` (10: more requests in a second get an error), `max_streams` (200 per
connection), `ping_interval_s` (300: server ping frames), `max_connection_age_s` (86400),
`mark_interval_s` (1.0, simulated seconds), `coarse_grid` (false: list every strike of the
truth's grid; true: only multiples of twice its finest spacing, a sparser Binance-like list).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
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
    fixed,
    option_float,
    trimmed,
    yymmdd,
)
from simulator.truth import ExpiryTruth
from simulator.venue import VenueContext

VENUE = "binance"
QUOTE = "USDT"
TOP_DEPTHS = (5, 10, 20, 50, 100)
SPEEDS = ("100ms", "500ms", "1000ms")
PATH_PREFIXES = ("", "/public", "/market", "/eoptions")
OPTIONAL_MARK_FIELDS = ("P", "hl", "ll", "rf", "d", "t", "g", "v")


def strike_text(strike: float) -> str:
    return trimmed(strike, 8)


def underlying(currency: str) -> str:
    return f"{currency}{QUOTE}"


class BinanceNaming(DashedNaming):
    def __init__(self, coarse_grid: bool = False) -> None:
        self.coarse_grid = coarse_grid

    def expiry_text(self, expiry_ns: int) -> str:
        return yymmdd(expiry_ns)

    def perpetual(self, currency: str) -> str:
        return underlying(currency)

    def synthetic_underlying(self, currency: str, expiry_ns: int) -> str:
        return underlying(currency)

    def lists_future(self, expiry: ExpiryTruth) -> bool:
        return False

    def lists_perpetual(self) -> bool:
        return False

    def lists_option(self, expiry: ExpiryTruth, strike: float) -> bool:
        # With `coarse_grid`, a sparser listing like Binance's: multiples of twice the
        # finest strike spacing.
        strikes = expiry.strikes
        if not self.coarse_grid or len(strikes) < 2:
            return True
        finest = min(b - a for a, b in itertools.pairwise(strikes))
        ratio = strike / (2.0 * finest)
        return abs(ratio - round(ratio)) < 1e-9


# Price decimals (priceScale) per currency, as in the recordings ("1420.000", "16.6000").
PRICE_SCALE = {"BTC": 3, "ETH": 4}
QTY_SCALE = 2


def binance_style(currency: str, unit: float) -> QuoteStyle:
    common: dict[str, Any] = {
        "inverse": False,
        "option_amount_step": 0.01,
        "usd_decimals": 8,
        "half_spread_vol": 0.02,
        "max_depth": 8,
        "sequence_jump_max": 25,
        "premium_coins": unit,
        "forward_from_index": True,
        "mark_iv_decimals": 8,
        "iv_decimals": 8,
        "greek_decimals": 8,
    }
    if currency == "BTC":
        return QuoteStyle(option_tick=5.0, option_median_steps=300.0, **common)
    if currency == "ETH":
        return QuoteStyle(option_tick=0.1, option_median_steps=2_000.0, **common)
    return QuoteStyle(option_tick=0.0001, option_median_steps=1_000.0, **common)


class BinanceMutator(JsonMutator):
    def payloads(self, obj: Any) -> list[dict[str, Any]]:
        if isinstance(obj, dict) and "stream" in obj and "data" in obj:
            return entries_of(obj["data"])
        return entries_of(obj)

    def rename_channel(self, obj: Any) -> None:
        # A combined stream names its channel in the envelope, a raw one by the event type.
        if isinstance(obj, dict) and "stream" in obj:
            obj["stream"] = f"simunknown@{obj['stream']}"
        for entry in self.payloads(obj):
            entry["e"] = "simUnknownEvent"


def error_frame(code: int, msg: str, req_id: object) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": req_id})


class BinanceVenue(PushVenue):
    name = VENUE
    ws_path = "/ws"
    messages_per_update = 1.0

    def __init__(self, ctx: VenueContext) -> None:
        units_opt = ctx.options.get("units", {})
        if not isinstance(units_opt, Mapping):
            raise ValueError("binance 'units' must map currency -> contract size")
        self.units: dict[str, float] = {
            ccy: float(units_opt.get(ccy, 1.0)) for ccy in ctx.truth.currencies
        }
        if any(u <= 0 for u in self.units.values()):
            raise ValueError("binance units must be positive")
        coarse = bool(ctx.options.get("coarse_grid", False))
        super().__init__(
            ctx,
            BinanceNaming(coarse),
            lambda ccy: binance_style(ccy, self.units[ccy]),
            seed_salt=79,
        )
        self.max_incoming_per_s = option_float(self.options, "max_incoming_per_s", 10.0)
        self.max_streams = int(option_float(self.options, "max_streams", 200.0))
        self.server_ping_s = option_float(self.options, "ping_interval_s", 300.0) or None
        self.max_connection_age_s = (
            option_float(self.options, "max_connection_age_s", 86_400.0) or None
        )
        self.mark_interval_ns = int(option_float(self.options, "mark_interval_s", 1.0) * 1e9)
        self._next_mark_ns = 0
        self.contract_ids: dict[str, int] = {}
        self._price_text: dict[str, NumberText] = {}
        self._qty_text = NumberText(QTY_SCALE, trim=False)

    # -- plumbing -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        for prefix in PATH_PREFIXES:
            app.router.add_get(f"{prefix}/ws", self.ws_handler)
            app.router.add_get(f"{prefix}/ws/{{streams:.+}}", self.ws_handler)
            app.router.add_get(f"{prefix}/stream", self.ws_handler)
        app.router.add_get("/eapi/v1/exchangeInfo", self._rest_exchange_info)
        app.router.add_get("/eapi/v1/time", self._rest_time)
        app.router.add_get("/eapi/v1/ping", self._rest_ping)
        app.router.add_get("/eapi/v1/index", self._rest_index)
        app.router.add_get("/eapi/v1/mark", self._rest_mark)
        app.router.add_get("/eapi/v1/depth", self._rest_depth)
        return app

    def new_session(self, session_id: int, ws: web.WebSocketResponse) -> PushSession:
        return PushSession(self, session_id, ws, BinanceMutator(OPTIONAL_MARK_FIELDS))

    def price_scale(self, currency: str) -> int:
        return PRICE_SCALE.get(currency, 4)

    def price_text(self, inst: SimInstrument) -> NumberText:
        fmt = self._price_text.get(inst.currency)
        if fmt is None:
            fmt = self._price_text[inst.currency] = NumberText(
                self.price_scale(inst.currency), trim=False
            )
        return fmt

    def size_text(self, inst: SimInstrument) -> NumberText:
        return self._qty_text

    def px(self, inst: SimInstrument, value: float) -> str:
        return self.price_text(inst)(value)

    def qty(self, value: float) -> str:
        return self._qty_text(value)

    def unit_json(self, currency: str) -> int | float:
        unit = self.units[currency]
        return int(unit) if unit.is_integer() else unit

    # -- framing: raw on /ws, wrapped on /stream ------------------------------------------
    @staticmethod
    def wrap(stream: str, data: bytes) -> bytes:
        return b'{"stream":"' + stream.encode() + b'","data":' + data + b"}"

    def push(self, key: str, frame: bytes, kind: FrameKind, symbol: str = "") -> int:
        holders = self.subs.get(key)
        if not holders:
            return 0
        wrapped: bytes | None = None
        for session in holders.values():
            if session.enveloped:
                if wrapped is None:
                    wrapped = self.wrap(key, frame)
                session.enqueue(wrapped, kind, symbol, key)
            else:
                session.enqueue(frame, kind, symbol, key)
        return len(holders)

    def send(self, session: PushSession, sub: Sub, data: bytes, kind: FrameKind) -> None:
        frame = self.wrap(sub.key, data) if session.enveloped else data
        session.enqueue(frame, kind, sub.symbol, sub.key)

    # -- REST -----------------------------------------------------------------------------
    def contract_id(self, symbol: str) -> int:
        cid = self.contract_ids.get(symbol)
        if cid is None:
            cid = self.contract_ids[symbol] = 10_000 + len(self.contract_ids) * 3 + 1
        return cid

    def symbol_json(self, inst: SimInstrument) -> dict[str, object]:
        tick = trimmed(inst.tick, 8)
        return {
            "id": self.contract_id(inst.symbol),
            "expiryDate": inst.expiry_ms,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": tick,
                    "maxPrice": "10000000",
                    "tickSize": tick,
                },
                {"filterType": "LOT_SIZE", "minQty": "0.01", "maxQty": "10000", "stepSize": "0.01"},
            ],
            "symbol": inst.symbol,
            "side": "CALL" if inst.is_call else "PUT",
            "strikePrice": strike_text(inst.strike),
            "underlying": underlying(inst.currency),
            "unit": self.unit_json(inst.currency),
            "makerFeeRate": "0.0002",
            "takerFeeRate": "0.0002",
            "liquidationFeeRate": "0.0019",
            "minQty": "0.01",
            "maxQty": "10000",
            "initialMargin": "0.15",
            "maintenanceMargin": "0.075",
            "minInitialMargin": "0.1",
            "minMaintenanceMargin": "0.05",
            "priceScale": self.price_scale(inst.currency),
            "quantityScale": QTY_SCALE,
            "quoteAsset": QUOTE,
            "status": "TRADING",
        }

    async def _rest_exchange_info(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        contracts = [
            {
                "id": n + 1,
                "baseAsset": ccy,
                "quoteAsset": QUOTE,
                "underlying": underlying(ccy),
                "settleAsset": QUOTE,
            }
            for n, ccy in enumerate(self.markets)
        ]
        symbols = [
            self.symbol_json(i) for m in self.markets.values() for i in m.open_instruments("option")
        ]
        body = {
            "timezone": "UTC",
            "serverTime": self.now_ms(),
            "optionContracts": contracts,
            "optionAssets": [{"id": 1, "name": QUOTE}],
            "optionSymbols": symbols,
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 2400,
                },
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            ],
        }
        return self.json_response(body)

    async def _rest_time(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        return self.json_response({"serverTime": self.now_ms()})

    async def _rest_ping(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        return self.json_response({})

    def _rest_error(self, code: int, msg: str) -> web.Response:
        self.counters["request_errors"] += 1
        return self.json_response({"code": code, "msg": msg}, status=400)

    def _market_of_underlying(self, name: str) -> VenueMarket | None:
        name = name.upper()
        for ccy, market in self.markets.items():
            if underlying(ccy) == name:
                return market
        return None

    async def _rest_index(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        market = self._market_of_underlying(request.query.get("underlying", ""))
        if market is None:
            return self._rest_error(-1121, "Invalid symbol.")
        px = fixed(market.index_published(market.truth.snapshot()), 8)
        return self.json_response({"time": self.now_ms(), "indexPrice": px})

    async def _rest_mark(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        symbol = request.query.get("symbol")
        out: list[dict[str, str]] = []
        for market in self.markets.values():
            insts = market.open_instruments("option")
            if symbol:
                insts = [i for i in insts if i.symbol == symbol]
            if not insts:
                continue
            for u in self.quote_now(market, insts):
                if isinstance(u, OptionUpdate):
                    entry = self.mark_entry(u)
                    out.append(
                        {
                            "symbol": entry["s"],
                            "markPrice": entry["mp"],
                            "bidIV": entry["b"],
                            "askIV": entry["a"],
                            "markIV": entry["vo"],
                            "delta": entry["d"],
                            "theta": entry["t"],
                            "gamma": entry["g"],
                            "vega": entry["v"],
                            "highPriceLimit": entry["hl"],
                            "lowPriceLimit": entry["ll"],
                            "riskFreeInterest": "0",
                        }
                    )
        if symbol and not out:
            return self._rest_error(-1121, "Invalid symbol.")
        return self.json_response(out)

    async def _rest_depth(self, request: web.Request) -> web.Response:
        self.counters["rest_requests"] += 1
        found = self.find(request.query.get("symbol", ""))
        if found is None or found[1].state != "open":
            return self._rest_error(-1121, "Invalid symbol.")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return self._rest_error(-1100, "Illegal characters found in parameter 'limit'.")
        market, inst = found
        self.quote_now(market, [inst])
        book = inst.book
        body = {
            "T": self.now_ms(),
            "u": book.sequence,
            "bids": self.level_text(inst).levels(book.bids, True, limit),
            "asks": self.level_text(inst).levels(book.asks, False, limit),
        }
        if inst.watchers == 0:
            book.ready = False
        return self.json_response(body)

    # -- frames ---------------------------------------------------------------------------
    def depth_data(
        self, inst: SimInstrument, ts_ms: int, first: int, last: int, prev: int, depth: int
    ) -> bytes:
        book = inst.book
        return orjson.dumps(
            {
                "e": "depthUpdate",
                "E": ts_ms,
                "T": ts_ms,
                "s": inst.symbol,
                "U": first,
                "u": last,
                "pu": prev,
                "b": self.level_text(inst).levels(book.bids, True, depth),
                "a": self.level_text(inst).levels(book.asks, False, depth),
            }
        )

    def diff_data(self, u: Update) -> bytes:
        inst = u.inst

        def side(changes: list[tuple[str, float, float]], bids: bool) -> list[list[str]]:
            ordered = sorted(changes, key=lambda c: -c[1] if bids else c[1])
            return [
                [self.px(inst, p), "0.00" if action == "delete" else self.qty(a)]
                for action, p, a in ordered
            ]

        return orjson.dumps(
            {
                "e": "depthUpdate",
                "E": u.timestamp_ms,
                "T": u.timestamp_ms,
                "s": inst.symbol,
                "U": u.prev_sequence + 1,
                "u": u.sequence,
                "pu": u.prev_sequence,
                "b": side(u.bid_changes, True),
                "a": side(u.ask_changes, False),
            }
        )

    def book_ticker_data(self, inst: SimInstrument, ts_ms: int) -> bytes:
        bb = inst.book.best(True)
        ba = inst.book.best(False)
        return orjson.dumps(
            {
                "e": "bookTicker",
                "u": inst.book.sequence,
                "s": inst.symbol,
                "b": self.px(inst, bb[0] if bb else 0.0),
                "B": self.qty(bb[1] if bb else 0.0),
                "a": self.px(inst, ba[0] if ba else 0.0),
                "A": self.qty(ba[1] if ba else 0.0),
                "T": ts_ms,
                "E": ts_ms,
            }
        )

    def mark_entry(self, u: OptionUpdate) -> dict[str, Any]:
        inst = u.inst
        bb, ba = u.best_bid, u.best_ask
        mark = u.mark_price
        return {
            "s": inst.symbol,
            "mp": self.px(inst, mark),
            "E": u.timestamp_ms,
            "e": "markPrice",
            "i": fixed(u.index_price, 8),
            "P": "0.0000",
            "bo": self.px(inst, bb[0] if bb else 0.0),
            "ao": self.px(inst, ba[0] if ba else 0.0),
            "bq": self.qty(bb[1] if bb else 0.0),
            "aq": self.qty(ba[1] if ba else 0.0),
            "b": trimmed(u.bid_iv / 100.0, 8) if bb and u.bid_iv > 0 else "-1.0",
            "a": trimmed(u.ask_iv / 100.0, 8) if ba and u.ask_iv > 0 else "-1.0",
            "hl": self.px(inst, mark * 1.5 + 10 * inst.tick),
            "ll": self.px(inst, max(inst.tick, mark * 0.5)),
            "vo": trimmed(u.mark_iv / 100.0, 8),
            "rf": "0.0",
            "d": trimmed(u.delta, 8),
            "t": trimmed(u.theta, 8),
            "g": trimmed(u.gamma, 8),
            "v": trimmed(u.vega, 8),
        }

    def index_data(self, market: VenueMarket, ts_ms: int) -> bytes:
        px = fixed(market.index_published(market.truth.snapshot()), 8)
        return orjson.dumps({"e": "index", "E": ts_ms, "s": underlying(market.currency), "p": px})

    def open_interest_data(self, market: VenueMarket, expiry: str, ts_ms: int) -> bytes:
        index = market.truth.snapshot().index
        data = [
            {
                "e": "openInterest",
                "E": ts_ms,
                "s": i.symbol,
                "o": fixed(i.open_interest, 2),
                "h": fixed(i.open_interest * index, 2),
            }
            for i in market.open_instruments("option")
            if yymmdd(i.expiry_ns) == expiry
        ]
        return orjson.dumps(data)

    def needs_quotes(self, market: VenueMarket) -> bool:
        # Book streams carry no IVs; mark prices are quoted on their own once per interval.
        return False

    def update_frame(
        self, market: VenueMarket, u: Update, sub: Sub
    ) -> tuple[bytes, FrameKind] | None:
        if not u.book_changed:
            return None
        inst = u.inst
        if sub.kind == SubKind.BOOK_TOP:
            data = self.depth_data(
                inst, u.timestamp_ms, u.prev_sequence + 1, u.sequence, u.prev_sequence, sub.depth
            )
            return data, FrameKind.BOOK_DELTA
        if sub.kind == SubKind.BOOK:
            return self.diff_data(u), FrameKind.BOOK_DELTA
        if sub.kind == SubKind.TICKER:
            return self.book_ticker_data(inst, u.timestamp_ms), FrameKind.OTHER
        return None

    def on_tick(self, now_ns: int, dt_s: float) -> None:
        super().on_tick(now_ns, dt_s)
        if now_ns >= self._next_mark_ns and not self.paused:
            self._next_mark_ns = now_ns + self.mark_interval_ns
            self.publish_marks(now_ns)

    def publish_marks(self, now_ns: int) -> None:
        ts = now_ns // 1_000_000
        for ccy, market in self.markets.items():
            subs = self.currency_subs.get(ccy)
            if not subs:
                continue
            marks: bytes | None = None
            for key, sub in subs.items():
                if sub.kind == SubKind.FAMILY:
                    if marks is None:
                        marks = self.marks_data(market, ts)
                    self.push(key, marks, FrameKind.TICKER)
                elif sub.kind == SubKind.PERIODIC:
                    data = self.open_interest_data(market, sub.arg, ts)
                    self.push(key, data, FrameKind.OTHER)

    def marks_data(self, market: VenueMarket, ts_ms: int) -> bytes:
        entries = [
            self.mark_entry(u)
            for u in self.quote_now(market, market.open_instruments("option"))
            if isinstance(u, OptionUpdate)
        ]
        return orjson.dumps(entries)

    def on_periodic(self, now_ns: int) -> None:
        ts = now_ns // 1_000_000
        for ccy, market in self.markets.items():
            for key, sub in self.currency_subs.get(ccy, {}).items():
                if sub.kind == SubKind.INDEX:
                    self.push(key, self.index_data(market, ts), FrameKind.OTHER)

    def announce_listing(self, market: VenueMarket, changes: ListingChanges, now_ns: int) -> None:
        ts = self.now_ms()
        for key in self.listing_subs:
            for inst in changes.listed:
                if inst.kind != "option":
                    continue
                data = {
                    "e": "optionSymbol",
                    "E": ts,
                    "s": inst.symbol,
                    "ps": underlying(inst.currency),
                    "qa": QUOTE,
                    "d": "CALL" if inst.is_call else "PUT",
                    "sp": strike_text(inst.strike),
                    "ed": inst.expiry_ms,
                    "u": self.unit_json(inst.currency),
                    "st": "TRADING",
                }
                self.push(key, orjson.dumps(data), FrameKind.OTHER, inst.symbol)

    # -- requests -------------------------------------------------------------------------
    def parse_stream(self, name: object) -> Sub | None:
        if not isinstance(name, str) or not name:
            return None
        if name == "!optionSymbol":
            return Sub(name, SubKind.LISTING, "optionSymbol", arg=name)
        head, _, rest = name.partition("@")
        if not rest:
            return None
        channel = rest.lower()
        market = self._market_of_underlying(head)
        if market is not None:
            und = head.lower()
            if channel == "optionmarkprice":
                key = f"{und}@optionMarkPrice"
                return Sub(
                    key, SubKind.FAMILY, "optionMarkPrice", currency=market.currency, arg=key
                )
            if channel == "index":
                key = f"{und}@index"
                return Sub(key, SubKind.INDEX, "index", currency=market.currency, arg=key)
            if channel.startswith("optionopeninterest@"):
                expiry = channel.split("@", 1)[1]
                if len(expiry) != 6 or not expiry.isdigit():
                    return None
                key = f"{und}@optionOpenInterest@{expiry}"
                return Sub(
                    key,
                    SubKind.PERIODIC,
                    "optionOpenInterest",
                    currency=market.currency,
                    arg=expiry,
                )
            return None
        found = self.find(head.upper())
        if found is None or found[1].state != "open" or found[1].kind != "option":
            return None
        inst = found[1]
        sym = inst.symbol.lower()
        parts = channel.split("@")
        speed = parts[1] if len(parts) > 1 else ""
        if len(parts) > 2 or (speed and speed not in SPEEDS):
            return None
        suffix = f"@{speed}" if speed else ""
        if parts[0] == "bookticker" and not speed:
            return Sub(
                f"{sym}@bookTicker", SubKind.TICKER, "bookTicker", inst.symbol, inst.currency
            )
        if parts[0] in ("depth", "depth1000"):
            key = f"{sym}@{parts[0]}{suffix}"
            return Sub(key, SubKind.BOOK, "depth", inst.symbol, inst.currency)
        if parts[0].startswith("depth") and parts[0][5:].isdigit():
            depth = int(parts[0][5:])
            if depth not in TOP_DEPTHS:
                return None
            return Sub(
                f"{sym}@depth{depth}{suffix}",
                SubKind.BOOK_TOP,
                "depth",
                inst.symbol,
                inst.currency,
                depth,
            )
        return None

    def subscribe(self, session: PushSession, names: list[object]) -> tuple[list[Sub], str]:
        """Subscribe all of `names` or none; returns the new subs or an error message."""
        subs: list[Sub] = []
        for name in names:
            sub = self.parse_stream(name)
            if sub is None:
                return [], f"Invalid request: unknown stream {name!r}"
            subs.append(sub)
        fresh = {s.key: s for s in subs if s.key not in session.subs}
        if len(session.subs) + len(fresh) > self.max_streams:
            return [], f"Invalid request: more than {self.max_streams} streams on one connection"
        added = [s for s in fresh.values() if self.add_sub(session, s)]
        return added, ""

    def on_open(self, session: PushSession, request: web.Request) -> None:
        path = request.path
        names: list[object] = []
        if "/stream" in path:
            session.enveloped = True
            streams = request.query.get("streams", "")
            names = [n for n in streams.split("/") if n]
        else:
            session.enveloped = False
            tail = request.match_info.get("streams", "")
            names = [n for n in tail.split("/") if n]
        if names:
            subs, error = self.subscribe(session, names)
            if error:
                self.counters["request_errors"] += 1
                session.enqueue(error_frame(2, error, None), FrameKind.RESPONSE)
            self.initial_frames(session, subs)

    def on_text(self, session: PushSession, text: str) -> None:
        if session.over_rate(self.max_incoming_per_s):
            self.counters["rate_limited"] += 1
            req_id = None
            try:
                msg = orjson.loads(text)
                req_id = msg.get("id") if isinstance(msg, dict) else None
            except orjson.JSONDecodeError:
                pass
            session.enqueue(
                error_frame(
                    -1003,
                    f"Too many requests: more than {self.max_incoming_per_s:g} messages per second",
                    req_id,
                ),
                FrameKind.RESPONSE,
            )
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.counters["request_errors"] += 1
            session.enqueue(
                error_frame(3, "Invalid JSON: expected value at line 1 column 1", None),
                FrameKind.RESPONSE,
            )
            return
        if not isinstance(msg, dict):
            session.enqueue(
                error_frame(2, "Invalid request: not an object", None), FrameKind.RESPONSE
            )
            return
        req_id = msg.get("id")
        method = msg.get("method")
        params = msg.get("params", [])
        if not isinstance(params, list):
            params = []
        if method == "SUBSCRIBE":
            subs, error = self.subscribe(session, params)
            if error:
                self.counters["request_errors"] += 1
                session.enqueue(error_frame(2, error, req_id), FrameKind.RESPONSE)
                return
            session.enqueue(orjson.dumps({"result": None, "id": req_id}), FrameKind.RESPONSE)
            self.initial_frames(session, subs)
        elif method == "UNSUBSCRIBE":
            for name in params:
                sub = self.parse_stream(name)
                if sub is not None:
                    self.remove_sub(session, sub.key)
            session.enqueue(orjson.dumps({"result": None, "id": req_id}), FrameKind.RESPONSE)
        elif method == "LIST_SUBSCRIPTIONS":
            body = {"result": sorted(session.subs), "id": req_id}
            session.enqueue(orjson.dumps(body), FrameKind.RESPONSE)
        else:
            self.counters["request_errors"] += 1
            msg_text = (
                f"Invalid request: unknown variant {method!r}, expected one of SUBSCRIBE,"
                " UNSUBSCRIBE, LIST_SUBSCRIPTIONS"
            )
            session.enqueue(error_frame(2, msg_text, req_id), FrameKind.RESPONSE)

    def initial_frames(self, session: PushSession, subs: list[Sub]) -> None:
        now_ns = self.ctx.clock.now_ns()
        ts = now_ns // 1_000_000
        for ccy, insts in self.instruments_by_market(subs).items():
            self.markets[ccy].ensure_books(insts, now_ns)
        for sub in subs:
            if sub.kind == SubKind.BOOK_TOP:
                found = self.find(sub.symbol)
                if found is None:
                    continue
                seq = found[1].book.sequence
                data = self.depth_data(found[1], ts, seq, seq, seq, sub.depth)
                self.send(session, sub, data, FrameKind.BOOK_SNAPSHOT)
            elif sub.kind == SubKind.TICKER:
                found = self.find(sub.symbol)
                if found is not None:
                    self.send(session, sub, self.book_ticker_data(found[1], ts), FrameKind.OTHER)
            elif sub.kind == SubKind.FAMILY:
                market = self.markets[sub.currency]
                self.send(session, sub, self.marks_data(market, ts), FrameKind.TICKER)
            elif sub.kind == SubKind.INDEX:
                self.send(
                    session, sub, self.index_data(self.markets[sub.currency], ts), FrameKind.OTHER
                )
