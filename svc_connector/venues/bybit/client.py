"""Bybit I/O: REST instrument discovery (paged) and websocket connections.

:class:`BybitConnector` is a :class:`~svc_connector.session.PooledConnector` (the shared
runtime: pooled websockets, paced batched subscribes, reconnects with exponential backoff
and jitter, resubscribes, watchdog, instrument refresh with listings/delistings). Bybit
specifics:

- discovery: ``GET /v5/market/instruments-info?category=option&baseCoin=BTC&limit=1000``
  per currency, following ``nextPageCursor`` until the last page (USDC and ``-USDT``
  series alike);
- channels: per option ``orderbook.25.{symbol}`` and ``tickers.{symbol}`` (IVs, forward,
  index, greeks); up to 2,000 per connection;
- keep-alive: ``{"op": "ping"}`` every ``heartbeat_interval_s`` (20 s).

Venue options (``constants.OPTION_*``): ``book_depth`` ("25"), ``early_refresh_spacing_s``
("5", every PooledConnector).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp

from svc_connector.runtime.pool import DiscoveryFailed, PooledConnector
from svc_connector.runtime.settings import ConnectionPlan, RuntimeSettings
from svc_connector.venues.base import ConnectorConfig, EventSink, VenueRequest, VenueSession
from svc_connector.venues.bybit import constants as c
from svc_connector.venues.bybit.parse import parse_instruments_page
from svc_connector.venues.bybit.session import BybitSession
from svc_connector.venues.bybit.symbols import orderbook_topic, tickers_topic
from volstream.v1 import market_data_pb2 as md_pb


@dataclass(frozen=True, slots=True)
class BybitSettings:
    """A :class:`ConnectorConfig` resolved against Bybit's defaults."""

    runtime: RuntimeSettings
    book_depth: str

    @classmethod
    def from_config(cls, config: ConnectorConfig) -> BybitSettings:
        runtime = RuntimeSettings.resolve(c.VENUE, config, c.LIMITS, c.ENDPOINTS)
        depth = runtime.options.get(c.OPTION_BOOK_DEPTH, c.DEFAULT_BOOK_DEPTH)
        if depth not in c.BOOK_DEPTHS:
            raise ValueError(f"bybit: book depth {depth!r} is not one of {sorted(c.BOOK_DEPTHS)}")
        return cls(runtime=runtime, book_depth=depth)


def plan_channel_groups(
    instruments: Iterable[md_pb.Instrument], settings: BybitSettings
) -> dict[str, tuple[str, ...]]:
    """Per active option of a configured currency: its order book and its ticker."""
    wanted = set(settings.runtime.currencies)
    return {
        i.symbol: (orderbook_topic(i.symbol, settings.book_depth), tickers_topic(i.symbol))
        for i in instruments
        if i.is_active and i.currency in wanted and i.kind == md_pb.INSTRUMENT_KIND_OPTION
    }


class BybitConnector(PooledConnector):
    """Bybit :class:`~svc_connector.venues.base.VenueConnector` (see module docstring)."""

    def __init__(self, config: ConnectorConfig, sink: EventSink) -> None:
        self.bybit = BybitSettings.from_config(config)
        super().__init__(self.bybit.runtime, sink)

    def new_session(self) -> VenueSession:
        return BybitSession(
            resync_timeout_ns=int(self.settings.resync_timeout_s * 1e9),
            sequence=self.next_sequence,
        )

    def plan_groups(self, instruments: Sequence[md_pb.Instrument]) -> dict[str, tuple[str, ...]]:
        return plan_channel_groups(instruments, self.bybit)

    def connection_plan(self, route: str) -> ConnectionPlan:
        return ConnectionPlan(
            url=self.settings.ws_url,
            subscribe_method=c.SUBSCRIBE,
            keepalive=VenueRequest(c.PING, {}, "keep-alive"),
        )

    def book_channels(self, symbols: Iterable[str]) -> set[str]:
        return {orderbook_topic(symbol, self.bybit.book_depth) for symbol in symbols}

    async def fetch_instruments(
        self, http: aiohttp.ClientSession
    ) -> tuple[list[md_pb.Instrument], int]:
        """Every option of the configured currencies, all pages; DiscoveryFailed."""
        url = f"{self.settings.rest_url}{c.INSTRUMENTS_PATH}"
        found: dict[str, md_pb.Instrument] = {}
        venue_time_ns = 0
        for currency in self.settings.currencies:
            cursor = ""
            seen: set[str] = set()
            for _ in range(c.MAX_PAGES):
                params = {"category": c.CATEGORY, "baseCoin": currency, "limit": str(c.PAGE_LIMIT)}
                if cursor:
                    params["cursor"] = cursor
                status, body, receive_ns = await self.get(http, url, params)
                parsed, cursor = parse_instruments_page(body, receive_ns)
                await self.absorb(parsed, status, f"GET {url} {params}")
                venue_time_ns = max(venue_time_ns, parsed.venue_time_ns)
                for instrument in parsed.instruments:
                    if instrument.currency in self.settings.currencies:
                        found[instrument.symbol] = instrument
                if not cursor or cursor in seen:
                    break
                seen.add(cursor)
            else:
                raise DiscoveryFailed(f"GET {url}: more than {c.MAX_PAGES} pages for {currency}")
        return list(found.values()), venue_time_ns
