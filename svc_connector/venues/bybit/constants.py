"""Bybit v5 option URLs, topics and limits (docs/venues/bybit.md).

Simulator layout (what ``simulator`` must serve for Bybit): the runtime calls
``simulator_endpoints(http_base, ws_base)`` with bases that already end in ``/bybit``
(``http://127.0.0.1:8080/bybit``, ``ws://127.0.0.1:8080/bybit``), and the live path layout
is reproduced below them:

- REST: ``{http_base}/v5/market/instruments-info?category=option&baseCoin=BTC&limit=1000``
  (+ ``&cursor=<nextPageCursor>``), i.e. ``Endpoints.rest_url`` = ``http_base``;
- WS:   ``{ws_base}/v5/public/option``.
"""

from __future__ import annotations

from typing import Final

from svc_connector.venues.base import Endpoints, VenueLimits

VENUE: Final = "bybit"
SOURCE: Final = "connector.bybit"

# REST paths are appended to Endpoints.rest_url (the host), exactly as on the venue.
WS_PATH: Final = "/v5/public/option"
INSTRUMENTS_PATH: Final = "/v5/market/instruments-info"

LIVE: Final = Endpoints(ws_url="wss://stream.bybit.com" + WS_PATH, rest_url="https://api.bybit.com")
TESTNET: Final = Endpoints(
    ws_url="wss://stream-testnet.bybit.com" + WS_PATH, rest_url="https://api-testnet.bybit.com"
)
ENDPOINTS: Final = {"live": LIVE, "testnet": TESTNET}


def simulator_endpoints(http_base: str, ws_base: str) -> Endpoints:
    """REST ``{http_base}/v5/...``, WS ``{ws_base}/v5/public/option`` (bases end in ``/bybit``)."""
    return Endpoints(ws_url=ws_base.rstrip("/") + WS_PATH, rest_url=http_base.rstrip("/"))


# Topics. {depth}: 25 or 100 for options.
ORDERBOOK_TOPIC: Final = "orderbook.{depth}.{symbol}"
TICKERS_TOPIC: Final = "tickers.{symbol}"
ORDERBOOK: Final = "orderbook"
TICKERS: Final = "tickers"
BOOK_DEPTHS: Final = frozenset({"25", "100"})
DEFAULT_BOOK_DEPTH: Final = "25"

# Operations.
SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"
PING: Final = "ping"
PONG: Final = "pong"
# The option stream's ack shape (the other is {"success": ..., "op": ...}).
COMMAND_RESP: Final = "COMMAND_RESP"

# instruments-info pages: at most 1000 entries each, followed with nextPageCursor.
PAGE_LIMIT: Final = 1000
MAX_PAGES: Final = 100
CATEGORY: Final = "option"
TRADING: Final = "Trading"

LIMITS: Final = VenueLimits(
    # The venue's documented cap: up to 2,000 args per option connection.
    max_channels_per_connection=2000,
    # 500 connections per 5 minutes per IP: a conservative share.
    max_connections_per_ip=50,
    default_max_connections=4,
    # Not documented for options: moderate batches.
    channels_per_subscribe_request=100,
    subscribe_requests_per_second=5.0,
    # {"op": "ping"} every 20 s.
    heartbeat_interval_s=20.0,
)

# Venue options (ConnectorConfig.venue_options) this adapter reads, with defaults.
OPTION_BOOK_DEPTH: Final = "book_depth"  # "25" (| "100")
