"""Deribit I/O: REST instrument discovery and websocket connections.

:class:`DeribitConnector` is a :class:`~svc_connector.runtime.PooledConnector` (the shared
runtime: pooled websockets, paced batched subscribes, reconnects with exponential backoff
and jitter, resubscribes, watchdog, instrument refresh with listings/delistings). Deribit
specifics:

- discovery: ``GET /api/v2/public/get_instruments?currency=BTC&kind=option&expired=false``
  (and ``kind=future``) per currency, plus ``currency=USDC`` when USDC-linear is enabled;
- channels (:func:`plan_channel_groups`): per currency the price index, DVOL and
  ``instrument.state.any.{ccy}``; per option its book and ticker; per future its ticker.
  An ``instrument.state`` listing or expiry of a followed currency refreshes discovery early;
- keep-alive: JSON-RPC ``public/set_heartbeat`` right after connecting; the venue then
  sends a heartbeat every interval and asks for ``public/test`` now and then (the session
  answers it); the watchdog reconnects after three silent intervals.

Venue options read from ``ConnectorConfig.venue_options`` (see ``constants.OPTION_*``):
``book_interval`` ("100ms"), ``ticker_interval`` ("100ms"), ``future_tickers`` ("true"),
``usdc_linear`` ("false"), ``instrument_state`` ("true"), ``early_refresh_spacing_s`` ("5",
every PooledConnector), ``min_heartbeat_interval_s`` ("10"; only the simulator accepts less).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import aiohttp

from svc_connector.runtime.pool import PooledConnector
from svc_connector.runtime.settings import (
    ConnectionPlan,
    RuntimeSettings,
    option_flag,
    option_float,
)
from svc_connector.venues.base import ConnectorConfig, EventSink, VenueRequest, VenueSession
from svc_connector.venues.deribit import constants as c
from svc_connector.venues.deribit.parse import parse_instruments
from svc_connector.venues.deribit.session import DeribitSession
from svc_connector.venues.deribit.symbols import currency_of, index_name
from volstream.v1 import market_data_pb2 as md_pb


@dataclass(frozen=True, slots=True)
class DeribitSettings:
    """A :class:`ConnectorConfig` resolved against Deribit's defaults."""

    runtime: RuntimeSettings
    book_interval: str
    ticker_interval: str
    future_tickers: bool
    usdc_linear: bool
    instrument_state: bool

    @classmethod
    def from_config(cls, config: ConnectorConfig) -> DeribitSettings:
        options = config.venue_options
        # The venue refuses set_heartbeat below 10 s (the simulator accepts less).
        min_heartbeat = option_float(options, c.OPTION_MIN_HEARTBEAT, c.MIN_HEARTBEAT_INTERVAL_S)
        heartbeat = max(min_heartbeat, config.heartbeat_interval_s or c.LIMITS.heartbeat_interval_s)
        runtime = RuntimeSettings.resolve(
            c.VENUE,
            replace(config, heartbeat_interval_s=heartbeat),
            c.LIMITS,
            c.ENDPOINTS,
            # The venue sends a heartbeat every interval: three missed ones mean a dead link.
            watchdog_heartbeats=3.0,
        )
        return cls(
            runtime=runtime,
            book_interval=options.get(c.OPTION_BOOK_INTERVAL, c.DEFAULT_INTERVAL),
            ticker_interval=options.get(c.OPTION_TICKER_INTERVAL, c.DEFAULT_INTERVAL),
            future_tickers=option_flag(options, c.OPTION_FUTURE_TICKERS, True),
            usdc_linear=option_flag(options, c.OPTION_USDC_LINEAR, False),
            instrument_state=option_flag(options, c.OPTION_INSTRUMENT_STATE, True),
        )

    # The pool budget, read by callers that size a ChannelAllocator for a plan.
    @property
    def max_channels_per_connection(self) -> int:
        return self.runtime.max_channels_per_connection

    @property
    def max_connections(self) -> int:
        return self.runtime.max_connections


# ---------------------------------------------------------------------------------------------
# planning (pure)
# ---------------------------------------------------------------------------------------------


def index_channels(currency: str) -> tuple[str, ...]:
    name = index_name(currency)
    return (
        c.PRICE_INDEX_CHANNEL.format(index=name),
        c.VOLATILITY_INDEX_CHANNEL.format(index=name),
    )


def book_channel(symbol: str, interval: str) -> str:
    return c.BOOK_CHANNEL.format(inst=symbol, interval=interval)


def ticker_channel(symbol: str, interval: str) -> str:
    return c.TICKER_CHANNEL.format(inst=symbol, interval=interval)


def plan_channel_groups(
    instruments: Iterable[md_pb.Instrument], settings: DeribitSettings
) -> dict[str, tuple[str, ...]]:
    """Channel groups to subscribe: group key -> channels that stay on one connection.

    Per currency: price index + DVOL (and ``instrument.state.any.{ccy}`` when enabled); per
    active option: book + ticker; per active future/perpetual: ticker (when enabled).
    """
    currencies = settings.runtime.currencies
    groups: dict[str, tuple[str, ...]] = {}
    for currency in currencies:
        groups[f"index:{currency}"] = index_channels(currency)
        if settings.instrument_state:
            groups[f"state:{currency}"] = (
                c.INSTRUMENT_STATE_CHANNEL.format(kind="any", currency=currency.lower()),
            )
    wanted = set(currencies)
    for instrument in instruments:
        if not instrument.is_active or instrument.currency not in wanted:
            continue
        symbol = instrument.symbol
        if instrument.kind == md_pb.INSTRUMENT_KIND_OPTION:
            groups[symbol] = (
                book_channel(symbol, settings.book_interval),
                ticker_channel(symbol, settings.ticker_interval),
            )
        elif settings.future_tickers and instrument.kind in (
            md_pb.INSTRUMENT_KIND_FUTURE,
            md_pb.INSTRUMENT_KIND_PERPETUAL,
        ):
            groups[symbol] = (ticker_channel(symbol, settings.ticker_interval),)
    return groups


def set_heartbeat_request(interval_s: float) -> VenueRequest:
    """``public/set_heartbeat`` (whole seconds go out as an integer, as the venue documents)."""
    interval: int | float = int(interval_s) if float(interval_s).is_integer() else interval_s
    return VenueRequest(c.SET_HEARTBEAT, {"interval": interval}, "heartbeat")


def connection_plan(settings: RuntimeSettings) -> ConnectionPlan:
    """One route: set the venue heartbeat first; no client keep-alive (the venue sends its
    heartbeats and ``test_request``s, which the session answers)."""
    return ConnectionPlan(
        url=settings.ws_url,
        subscribe_method=c.SUBSCRIBE,
        opening=(set_heartbeat_request(settings.heartbeat_interval_s),),
    )


# ---------------------------------------------------------------------------------------------
# the connector
# ---------------------------------------------------------------------------------------------


class DeribitConnector(PooledConnector):
    """Deribit :class:`~svc_connector.venues.base.VenueConnector` (see module docstring)."""

    def __init__(self, config: ConnectorConfig, sink: EventSink) -> None:
        self.deribit = DeribitSettings.from_config(config)
        super().__init__(self.deribit.runtime, sink)

    # Older name of next_sequence (bench/bench_connector.py builds sessions with it).
    def new_session(self) -> VenueSession:
        return DeribitSession(
            resync_timeout_ns=int(self.settings.resync_timeout_s * 1e9),
            sequence=self.next_sequence,
        )

    def plan_groups(self, instruments: Sequence[md_pb.Instrument]) -> dict[str, tuple[str, ...]]:
        return plan_channel_groups(instruments, self.deribit)

    def connection_plan(self, route: str) -> ConnectionPlan:
        return connection_plan(self.settings)

    def book_channels(self, symbols: Iterable[str]) -> set[str]:
        return {book_channel(symbol, self.deribit.book_interval) for symbol in symbols}

    def currency_of(self, symbol: str) -> str | None:
        return currency_of(symbol)

    async def fetch_instruments(
        self, http: aiohttp.ClientSession
    ) -> tuple[list[md_pb.Instrument], int]:
        """Every option and future of the configured currencies; DiscoveryFailed."""
        queries = list(self.settings.currencies)
        if self.deribit.usdc_linear:
            queries.append("USDC")
        url = f"{self.settings.rest_url}/{c.GET_INSTRUMENTS}"
        found: dict[str, md_pb.Instrument] = {}
        venue_time_ns = 0
        for currency in queries:
            for kind in ("option", "future"):
                params = {"currency": currency, "kind": kind, "expired": "false"}
                status, body, receive_ns = await self.get(http, url, params)
                parsed = parse_instruments(body, receive_ns)
                await self.absorb(parsed, status, f"GET {url} {params}")
                venue_time_ns = max(venue_time_ns, parsed.venue_time_ns or receive_ns)
                for instrument in parsed.instruments:
                    if instrument.currency in self.settings.currencies:
                        found[instrument.symbol] = instrument
        return list(found.values()), venue_time_ns
