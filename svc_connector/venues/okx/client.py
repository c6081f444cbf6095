"""OKX I/O: REST instrument discovery and websocket connections.

:class:`OkxConnector` is a :class:`~svc_connector.session.PooledConnector` (the shared
runtime: pooled websockets, paced batched subscribes, reconnects with exponential backoff
and jitter, resubscribes, watchdog, instrument refresh with listings/delistings). OKX
specifics:

- discovery: ``GET /api/v5/public/instruments?instType=OPTION&instFamily=BTC-USD`` per
  currency (and ``instType=FUTURES`` for forwards);
- channels: per currency ``opt-summary`` (IVs, forwards, greeks of the whole family) and
  ``index-tickers``; per option a ``books`` channel (optionally ``tickers``/``mark-price``);
  per future ``tickers``; ``instruments`` (type OPTION): a listing or state change of a
  followed currency refreshes discovery early;
- books without a websocket snapshot (OKX's announced change): the session asks for the
  REST book ``GET /api/v5/market/books?instId=&sz=400`` (paced), fetched here and handed
  back to it (:meth:`OkxSession.on_rest_book`);
- keep-alive: the text ``ping`` whenever nothing was sent for ``heartbeat_interval_s``
  (20 s; the venue drops a connection silent for 30 s), answered by ``pong``; the watchdog
  reconnects when not even the ``pong`` comes back;
- limits: 480 subscribe requests per hour per connection (a burst, then a paced rate),
  3 connection attempts per second per IP (a shared gate).

Venue options (``constants.OPTION_*``): ``book_channel`` ("books"), ``option_tickers``
("false"), ``mark_price`` ("false"), ``future_tickers`` ("true"), ``family_quote`` ("USD"),
``verify_checksum`` ("true"), ``instrument_channel`` ("true"), ``rest_books_per_second``
("20"), ``snapshot_wait_s`` ("2"), ``early_refresh_spacing_s`` ("5", every PooledConnector).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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
    VenueRequest,
    VenueSession,
)
from svc_connector.venues.okx import constants as c
from svc_connector.venues.okx.parse import parse_instruments
from svc_connector.venues.okx.session import OkxSession
from svc_connector.venues.okx.symbols import channel_name, currency_of, family_of
from volstream.v1 import market_data_pb2 as md_pb

_BOOK_CHANNELS = c.INCREMENTAL_BOOKS | c.PERIODIC_BOOKS


@dataclass(frozen=True, slots=True)
class OkxSettings:
    """A :class:`ConnectorConfig` resolved against OKX's defaults."""

    runtime: RuntimeSettings
    book_channel: str
    option_tickers: bool
    mark_price: bool
    future_tickers: bool
    family_quote: str
    verify_checksum: bool
    instrument_channel: bool
    rest_books_per_second: float
    snapshot_wait_s: float

    @classmethod
    def from_config(cls, config: ConnectorConfig) -> OkxSettings:
        runtime = RuntimeSettings.resolve(
            c.VENUE, config, c.LIMITS, c.ENDPOINTS, subscribe_burst=c.SUBSCRIBE_BURST
        )
        options = runtime.options
        book_channel = options.get(c.OPTION_BOOK_CHANNEL, c.BOOKS)
        if book_channel not in _BOOK_CHANNELS:
            raise ValueError(f"okx: unknown book channel {book_channel!r}")
        return cls(
            runtime=runtime,
            book_channel=book_channel,
            option_tickers=option_flag(options, c.OPTION_OPTION_TICKERS, False),
            mark_price=option_flag(options, c.OPTION_MARK_PRICE, False),
            future_tickers=option_flag(options, c.OPTION_FUTURE_TICKERS, True),
            family_quote=options.get(c.OPTION_FAMILY_QUOTE, "USD").upper(),
            verify_checksum=option_flag(options, c.OPTION_VERIFY_CHECKSUM, True),
            instrument_channel=option_flag(options, c.OPTION_INSTRUMENT_CHANNEL, True),
            rest_books_per_second=option_float(
                options, c.OPTION_REST_BOOKS_PER_SECOND, c.REST_BOOKS_PER_SECOND
            ),
            snapshot_wait_s=option_float(options, c.OPTION_SNAPSHOT_WAIT_S, 2.0),
        )

    def family(self, currency: str) -> str:
        return family_of(currency, self.family_quote)


def plan_channel_groups(
    instruments: Iterable[md_pb.Instrument], settings: OkxSettings
) -> dict[str, tuple[str, ...]]:
    """Channel groups to subscribe: group key -> channels that stay on one connection.

    Per currency: ``opt-summary`` + ``index-tickers`` of its family; ``instruments:OPTION``
    (when enabled); per active option: its book (+ ``tickers``/``mark-price`` when enabled);
    per active future/swap: ``tickers`` (when enabled).
    """
    groups: dict[str, tuple[str, ...]] = {}
    if settings.instrument_channel:
        groups["listings"] = (channel_name(c.INSTRUMENTS, "OPTION"),)
    for currency in settings.runtime.currencies:
        family = settings.family(currency)
        groups[f"family:{currency}"] = (
            channel_name(c.OPT_SUMMARY, family),
            channel_name(c.INDEX_TICKERS, family),
        )
    wanted = set(settings.runtime.currencies)
    for instrument in instruments:
        if not instrument.is_active or instrument.currency not in wanted:
            continue
        symbol = instrument.symbol
        if instrument.kind == md_pb.INSTRUMENT_KIND_OPTION:
            channels = [channel_name(settings.book_channel, symbol)]
            if settings.option_tickers:
                channels.append(channel_name(c.TICKERS, symbol))
            if settings.mark_price:
                channels.append(channel_name(c.MARK_PRICE, symbol))
            groups[symbol] = tuple(channels)
        elif settings.future_tickers and instrument.kind in (
            md_pb.INSTRUMENT_KIND_FUTURE,
            md_pb.INSTRUMENT_KIND_PERPETUAL,
        ):
            groups[symbol] = (channel_name(c.TICKERS, symbol),)
    return groups


class OkxConnector(PooledConnector):
    """OKX :class:`~svc_connector.venues.base.VenueConnector` (see module docstring)."""

    def __init__(self, config: ConnectorConfig, sink: EventSink) -> None:
        self.okx = OkxSettings.from_config(config)
        super().__init__(self.okx.runtime, sink, connects_per_second=c.CONNECTS_PER_SECOND)
        rate = self.okx.rest_books_per_second
        self._books_bucket = TokenBucket(rate, 1.0, time.monotonic())
        self._books_lock = asyncio.Lock()
        self._book_tasks: set[asyncio.Task[None]] = set()
        self._books_in_flight: set[str] = set()

    def new_session(self) -> VenueSession:
        return OkxSession(
            resync_timeout_ns=int(self.settings.resync_timeout_s * 1e9),
            verify_checksums=self.okx.verify_checksum,
            sequence=self.next_sequence,
        )

    def plan_groups(self, instruments: Sequence[md_pb.Instrument]) -> dict[str, tuple[str, ...]]:
        return plan_channel_groups(instruments, self.okx)

    def connection_plan(self, route: str) -> ConnectionPlan:
        return ConnectionPlan(
            url=self.settings.ws_url,
            subscribe_method=c.SUBSCRIBE,
            keepalive=VenueRequest(c.PING, {}, "keep-alive"),
        )

    def book_channels(self, symbols: Iterable[str]) -> set[str]:
        return {channel_name(self.okx.book_channel, symbol) for symbol in symbols}

    def currency_of(self, symbol: str) -> str | None:
        return currency_of(symbol)

    def on_resubscribe(self, conn: WsConnection, request: ResubscribeRequest) -> bool:
        """A book without a websocket snapshot: fetch its REST book (others resubscribe)."""
        if request.reason != c.REST_SNAPSHOT_REASON:
            return False
        if request.symbol in self._books_in_flight:
            return True
        self._books_in_flight.add(request.symbol)
        self._spawn(self._fetch_book(conn, request.symbol))
        return True

    def on_result(self, conn: WsConnection, result: FrameResult) -> None:
        """A confirmed book subscription: its REST book if no snapshot came in time."""
        super().on_result(conn, result)
        for channel in result.subscribed:
            name, _, symbol = channel.partition(":")
            if name in c.INCREMENTAL_BOOKS and symbol:
                self._spawn(self._check_snapshot(conn, symbol, channel))

    async def _check_snapshot(self, conn: WsConnection, symbol: str, channel: str) -> None:
        await asyncio.sleep(self.okx.snapshot_wait_s)
        session = conn.session
        if (
            isinstance(session, OkxSession)
            and symbol not in self._books_in_flight
            and session.expect_rest_book(symbol, channel, time.time_ns())
        ):
            self.sink.count("book.no_ws_snapshot")
            self._books_in_flight.add(symbol)
            await self._fetch_book(conn, symbol)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._book_tasks.add(task)
        task.add_done_callback(self._book_tasks.discard)

    async def stop(self) -> None:
        for task in list(self._book_tasks):
            task.cancel()
        await super().stop()

    async def _fetch_book(self, conn: WsConnection, symbol: str) -> None:
        """GET the REST book of ``symbol`` (paced) and hand it to the connection's session;
        on failure the session asks again after its resync timeout."""
        try:
            await self._fetch_book_paced(conn, symbol)
        finally:
            self._books_in_flight.discard(symbol)

    async def _fetch_book_paced(self, conn: WsConnection, symbol: str) -> None:
        async with self._books_lock:
            wait = self._books_bucket.wait_time(time.monotonic())
            if wait > 0:
                await asyncio.sleep(wait)
            self._books_bucket.take(time.monotonic())
        http, session = self.http, conn.session
        if http is None or not isinstance(session, OkxSession):
            return
        url = f"{self.settings.rest_url}{c.BOOKS_PATH}"
        params = {"instId": symbol, "sz": c.REST_BOOK_DEPTH}
        try:
            _, body, receive_ns = await self.get(http, url, params)
        except DiscoveryFailed as exc:
            self.log.warning("okx: REST book of %s failed: %s", symbol, exc)
            self.sink.count("book.rest_snapshot_failed")
            return
        await conn.deliver(session.on_rest_book(body, symbol, receive_ns))

    async def fetch_instruments(
        self, http: aiohttp.ClientSession
    ) -> tuple[list[md_pb.Instrument], int]:
        """Options (and futures) of each configured currency's family; DiscoveryFailed."""
        inst_types = ["OPTION", "FUTURES"] if self.okx.future_tickers else ["OPTION"]
        url = f"{self.settings.rest_url}{c.INSTRUMENTS_PATH}"
        found: dict[str, md_pb.Instrument] = {}
        for currency in self.settings.currencies:
            for inst_type in inst_types:
                params = {"instType": inst_type, "instFamily": self.okx.family(currency)}
                status, body, receive_ns = await self.get(http, url, params)
                parsed = parse_instruments(body, receive_ns)
                await self.absorb(parsed, status, f"GET {url} {params}")
                for instrument in parsed.instruments:
                    if instrument.currency in self.settings.currencies:
                        found[instrument.symbol] = instrument
        # The venue states no server time in this body: the receive time stands in.
        return list(found.values()), 0
