"""Binance options I/O: REST discovery, websocket connections, REST book snapshots.

:class:`BinanceConnector` is a :class:`~svc_connector.session.PooledConnector` (the shared
runtime: pooled websockets, paced batched subscribes, reconnects with exponential backoff
and jitter, resubscribes, watchdog, instrument refresh with listings/delistings). Binance
specifics:

- discovery: ``GET /eapi/v1/exchangeInfo`` (every underlying in one body);
- two routes on the current API: per option book streams on ``/public/stream``
  (``<symbol>@depth20@100ms`` full books, or ``<symbol>@depth@100ms`` diffs), per
  underlying ``<underlying>@optionMarkPrice`` (quotes, IVs, greeks, index) on
  ``/market/stream``; the older ``eoptions`` API uses ``<SYMBOL>@ticker``,
  ``<COIN>@markPrice`` and ``<UNDERLYING>@index`` on one URL;
- limits: 200 streams and 10 incoming messages per second per connection (paced
  SUBSCRIBE requests); connections are renewed before the venue's 24 h lifetime; the
  server's pings are answered by the websocket library;
- diff books (``book_mode=diff``): once a depth stream is confirmed, and on every resync,
  ``GET /eapi/v1/depth`` (paced) gives the snapshot the session bridges the buffered diffs
  onto.

Venue options (``constants.OPTION_*``): ``stream_api`` ("current"; "eoptions" for the
eoptions environment), ``book_mode`` ("partial"), ``depth_levels`` ("20"), ``book_ticker``
("false"), ``index_stream`` ("false" current / "true" eoptions),
``depth_snapshots_per_second`` ("2"), ``early_refresh_spacing_s`` ("5").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp

from svc_connector.kit.pacing import TokenBucket
from svc_connector.runtime.connection import WsConnection
from svc_connector.runtime.pool import DiscoveryFailed, PooledConnector
from svc_connector.runtime.settings import (
    ConnectionPlan,
    RuntimeSettings,
    option_flag,
    option_float,
)
from svc_connector.venues.base import (
    ConnectorConfig,
    EventSink,
    FrameResult,
    ResubscribeRequest,
    VenueSession,
)
from svc_connector.venues.binance import constants as c
from svc_connector.venues.binance.parse import parse_instruments
from svc_connector.venues.binance.session import BinanceSession
from svc_connector.venues.binance.symbols import split_stream, underlying_of
from volstream.v1 import market_data_pb2 as md_pb

_MARKET_GROUP = "market:"


@dataclass(frozen=True, slots=True)
class BinanceSettings:
    """A :class:`ConnectorConfig` resolved against Binance's defaults."""

    runtime: RuntimeSettings
    api: str
    book_mode: str
    depth_levels: str
    book_ticker: bool
    index_stream: bool
    depth_snapshots_per_second: float

    @classmethod
    def from_config(cls, config: ConnectorConfig) -> BinanceSettings:
        runtime = RuntimeSettings.resolve(
            c.VENUE, config, c.LIMITS, c.ENDPOINTS, watchdog_timeout_s=c.WATCHDOG_TIMEOUT_S
        )
        options = runtime.options
        legacy_environment = config.environment == c.API_EOPTIONS and config.endpoints is None
        api = options.get(
            c.OPTION_STREAM_API, c.API_EOPTIONS if legacy_environment else c.API_CURRENT
        )
        if api not in c.APIS:
            raise ValueError(f"binance: unknown stream API {api!r}")
        book_mode = options.get(c.OPTION_BOOK_MODE, c.BOOK_MODE_PARTIAL)
        if book_mode not in (c.BOOK_MODE_PARTIAL, c.BOOK_MODE_DIFF):
            raise ValueError(f"binance: unknown book mode {book_mode!r}")
        levels = options.get(c.OPTION_DEPTH_LEVELS, c.DEFAULT_DEPTH_LEVELS)
        if levels not in c.PARTIAL_DEPTH_LEVELS:
            raise ValueError(f"binance: depth levels {levels!r} not in {c.PARTIAL_DEPTH_LEVELS}")
        return cls(
            runtime=runtime,
            api=api,
            book_mode=book_mode,
            depth_levels=levels,
            book_ticker=option_flag(options, c.OPTION_BOOK_TICKER, False),
            index_stream=option_flag(options, c.OPTION_INDEX_STREAM, api == c.API_EOPTIONS),
            depth_snapshots_per_second=option_float(
                options, c.OPTION_DEPTH_SNAPSHOTS_PER_SECOND, c.DEPTH_SNAPSHOTS_PER_SECOND
            ),
        )

    def stream_symbol(self, symbol: str) -> str:
        """The current API wants lowercase stream names; eoptions the venue's spelling."""
        return symbol.lower() if self.api == c.API_CURRENT else symbol

    def depth_stream(self, symbol: str) -> str:
        name = self.stream_symbol(symbol)
        if self.book_mode == c.BOOK_MODE_DIFF:
            return c.DIFF_DEPTH_STREAM.format(symbol=name)
        return c.PARTIAL_DEPTH_STREAM.format(symbol=name, levels=self.depth_levels)


def plan_channel_groups(
    instruments: Iterable[md_pb.Instrument], settings: BinanceSettings
) -> dict[str, tuple[str, ...]]:
    """Channel groups: ``market:<ccy>`` (marks + index of the currency's underlyings, on the
    market route) and, per active option, its book (+ ticker/bookTicker) on the public route.
    """
    wanted = set(settings.runtime.currencies)
    underlyings: dict[str, set[str]] = {ccy: set() for ccy in settings.runtime.currencies}
    groups: dict[str, tuple[str, ...]] = {}
    for instrument in instruments:
        if instrument.currency not in wanted or instrument.kind != md_pb.INSTRUMENT_KIND_OPTION:
            continue
        underlyings[instrument.currency].add(instrument.underlying)
        if not instrument.is_active:
            continue
        symbol = instrument.symbol
        channels = [settings.depth_stream(symbol)]
        if settings.api == c.API_EOPTIONS:
            channels.append(c.LEGACY_TICKER_STREAM.format(symbol=symbol))
        if settings.book_ticker:
            channels.append(c.BOOK_TICKER_STREAM.format(symbol=settings.stream_symbol(symbol)))
        groups[symbol] = tuple(channels)
    for currency, names in underlyings.items():
        market: list[str] = []
        for underlying in sorted(names or {underlying_of(currency)}):
            if settings.api == c.API_CURRENT:
                market.append(c.OPTION_MARK_PRICE_STREAM.format(underlying=underlying.lower()))
            if settings.index_stream:
                market.append(c.INDEX_STREAM.format(underlying=settings.stream_symbol(underlying)))
        if settings.api == c.API_EOPTIONS:
            market.append(c.LEGACY_MARK_PRICE_STREAM.format(coin=currency))
        groups[_MARKET_GROUP + currency] = tuple(market)
    return groups


class BinanceConnector(PooledConnector):
    """Binance :class:`~svc_connector.venues.base.VenueConnector` (see module docstring)."""

    def __init__(self, config: ConnectorConfig, sink: EventSink) -> None:
        self.binance = BinanceSettings.from_config(config)
        super().__init__(self.binance.runtime, sink)
        self._depth_bucket = TokenBucket(
            self.binance.depth_snapshots_per_second, 1.0, time.monotonic()
        )
        self._depth_lock = asyncio.Lock()
        self._depth_in_flight: set[str] = set()
        self._depth_tasks: set[asyncio.Task[None]] = set()

    def new_session(self) -> VenueSession:
        return BinanceSession(
            resync_timeout_ns=int(self.settings.resync_timeout_s * 1e9),
            buffer_diffs=self.binance.book_mode == c.BOOK_MODE_DIFF,
            sequence=self.next_sequence,
        )

    def plan_groups(self, instruments: Sequence[md_pb.Instrument]) -> dict[str, tuple[str, ...]]:
        return plan_channel_groups(instruments, self.binance)

    def route_of(self, group_key: str) -> str:
        return c.ROUTE_MARKET if group_key.startswith(_MARKET_GROUP) else c.ROUTE_PUBLIC

    def connection_plan(self, route: str) -> ConnectionPlan:
        path = c.ROUTE_PATHS[self.binance.api][route]
        return ConnectionPlan(
            url=f"{self.settings.ws_url}{path}",
            subscribe_method=c.SUBSCRIBE,
            max_age_s=c.MAX_CONNECTION_AGE_S,
        )

    def book_channels(self, symbols: Iterable[str]) -> set[str]:
        """Only diff books can be resynced; partial books are complete on every push."""
        if self.binance.book_mode != c.BOOK_MODE_DIFF:
            return set()
        return {self.binance.depth_stream(symbol) for symbol in symbols}

    def resync_books(self, symbols: Iterable[str]) -> int:
        """Diff books: fetch REST snapshots (resubscribing a stream sends none)."""
        if self.binance.book_mode != c.BOOK_MODE_DIFF:
            return 0
        asked = 0
        for symbol in symbols:
            channel = self.binance.depth_stream(symbol)
            conn = next((conn for conn in self.connections if channel in conn.desired), None)
            if conn is not None and self._fetch_depth_soon(conn, symbol):
                asked += 1
        if asked:
            self.sink.count("book.resync_requested", asked)
        return asked

    def on_resubscribe(self, conn: WsConnection, request: ResubscribeRequest) -> bool:
        if self.binance.book_mode != c.BOOK_MODE_DIFF:
            return False  # a partial stream's next push is a full book anyway
        self._fetch_depth_soon(conn, request.symbol)
        return True

    def on_result(self, conn: WsConnection, result: FrameResult) -> None:
        """Diff books: once the venue confirms a depth stream, fetch its REST snapshot."""
        super().on_result(conn, result)
        session = conn.session
        if self.binance.book_mode != c.BOOK_MODE_DIFF or not isinstance(session, BinanceSession):
            return
        now_ns = time.time_ns()
        for channel in result.subscribed:
            head, kind, _ = split_stream(channel)
            if kind.startswith("depth") and kind[5:] in c.DIFF_DEPTH_LEVELS:
                symbol = head.upper()
                session.expect_snapshot(symbol, channel, now_ns)
                self._fetch_depth_soon(conn, symbol)

    async def stop(self) -> None:
        for task in list(self._depth_tasks):
            task.cancel()
        await super().stop()

    def _fetch_depth_soon(self, conn: WsConnection, symbol: str) -> bool:
        if symbol in self._depth_in_flight:
            return False
        self._depth_in_flight.add(symbol)
        task = asyncio.create_task(self._fetch_depth(conn, symbol), name=f"binance-depth-{symbol}")
        self._depth_tasks.add(task)
        task.add_done_callback(self._depth_tasks.discard)
        return True

    async def _fetch_depth(self, conn: WsConnection, symbol: str) -> None:
        """GET the REST book of ``symbol`` (paced) and hand it to the connection's session."""
        try:
            async with self._depth_lock:
                wait = self._depth_bucket.wait_time(time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
                self._depth_bucket.take(time.monotonic())
            http = self.http
            session = conn.session
            if http is None or not isinstance(session, BinanceSession):
                return
            url = f"{self.settings.rest_url}{c.DEPTH_PATH}"
            params = {"symbol": symbol, "limit": str(c.DEPTH_SNAPSHOT_LIMIT)}
            try:
                status, body, receive_ns = await self.get(http, url, params)
            except DiscoveryFailed as exc:
                # The session asks again after its resync timeout.
                self.log.warning("binance: depth snapshot of %s failed: %s", symbol, exc)
                self.sink.count("book.rest_snapshot_failed")
                return
            if status != 200:
                self.sink.count("book.rest_snapshot_http_error")
                return
            await conn.deliver(session.on_rest_depth(body, symbol, receive_ns))
        finally:
            self._depth_in_flight.discard(symbol)

    async def fetch_instruments(
        self, http: aiohttp.ClientSession
    ) -> tuple[list[md_pb.Instrument], int]:
        """Every option of the configured currencies; DiscoveryFailed."""
        url = f"{self.settings.rest_url}{c.EXCHANGE_INFO_PATH}"
        status, body, receive_ns = await self.get(http, url, {})
        parsed = parse_instruments(body, receive_ns)
        await self.absorb(parsed, status, f"GET {url}")
        wanted = set(self.settings.currencies)
        return [i for i in parsed.instruments if i.currency in wanted], parsed.venue_time_ns
