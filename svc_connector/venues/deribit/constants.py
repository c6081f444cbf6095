"""Deribit URLs, channel templates and limits (docs/venues/deribit.md)."""

from __future__ import annotations

from typing import Final

from svc_connector.venues.base import Endpoints, VenueLimits

VENUE: Final = "deribit"
SOURCE: Final = "connector.deribit"

LIVE: Final = Endpoints(
    ws_url="wss://www.deribit.com/ws/api/v2",
    rest_url="https://www.deribit.com/api/v2",
)
TESTNET: Final = Endpoints(
    ws_url="wss://test.deribit.com/ws/api/v2",
    rest_url="https://test.deribit.com/api/v2",
)
ENDPOINTS: Final = {"live": LIVE, "testnet": TESTNET}

# The venue's path layout, reproduced by the simulator under its own base URLs.
WS_PATH: Final = "/ws/api/v2"
REST_PATH: Final = "/api/v2"


def simulator_endpoints(http_base: str, ws_base: str) -> Endpoints:
    """REST at ``{http_base}/api/v2/public/...``, WS at ``{ws_base}/ws/api/v2``."""
    return Endpoints(
        ws_url=ws_base.rstrip("/") + WS_PATH, rest_url=http_base.rstrip("/") + REST_PATH
    )


# Channel templates. {inst} is the instrument name, {interval} "100ms" | "agg2" | "raw"
# ("raw" needs an authorised connection), {index} e.g. "btc_usd".
BOOK_CHANNEL: Final = "book.{inst}.{interval}"
TICKER_CHANNEL: Final = "ticker.{inst}.{interval}"
PRICE_INDEX_CHANNEL: Final = "deribit_price_index.{index}"
VOLATILITY_INDEX_CHANNEL: Final = "deribit_volatility_index.{index}"
INSTRUMENT_STATE_CHANNEL: Final = "instrument.state.{kind}.{currency}"
# The one order-book lifecycle state with tradable quotes (January 2026; the others:
# locked, settlement, delivered, inactive, halted, archivized; older: closed).
OPEN_STATE: Final = "open"

DEFAULT_INTERVAL: Final = "100ms"

# JSON-RPC methods.
SUBSCRIBE: Final = "public/subscribe"
UNSUBSCRIBE: Final = "public/unsubscribe"
SET_HEARTBEAT: Final = "public/set_heartbeat"
TEST: Final = "public/test"
GET_INSTRUMENTS: Final = "public/get_instruments"

# Deribit refuses heartbeat intervals below 10 s.
MIN_HEARTBEAT_INTERVAL_S: Final = 10.0

LIMITS: Final = VenueLimits(
    # Not a documented venue limit: a size that keeps one connection's burst manageable.
    max_channels_per_connection=500,
    max_connections_per_ip=32,
    # Leave most of the 32-per-IP allowance to other processes on the same address.
    default_max_connections=16,
    # Subscribes are credit-expensive: many channels per request, few requests.
    channels_per_subscribe_request=100,
    subscribe_requests_per_second=5.0,
    heartbeat_interval_s=10.0,
)

# Venue options (ConnectorConfig.venue_options) this adapter reads, with defaults.
OPTION_BOOK_INTERVAL: Final = "book_interval"  # "100ms"
OPTION_TICKER_INTERVAL: Final = "ticker_interval"  # "100ms"
# "true": also subscribe futures tickers (forwards from the same-expiry future).
OPTION_FUTURE_TICKERS: Final = "future_tickers"  # "true"
# "true": also discover USDC-linear instruments (currency=USDC) of the configured coins.
OPTION_USDC_LINEAR: Final = "usdc_linear"  # "false"
# "true": follow instrument.state.any.{ccy} to refresh discovery early on listings/expiries.
OPTION_INSTRUMENT_STATE: Final = "instrument_state"  # "true"
# Seconds: the simulator accepts shorter heartbeats than the venue's 10 s (tests only).
OPTION_MIN_HEARTBEAT: Final = "min_heartbeat_interval_s"  # "10"
