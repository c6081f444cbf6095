"""Binance options URLs, streams and limits (docs/venues/binance.md).

Two stream APIs exist and both are understood:

- current: host ``wss://fstream.binance.com`` with two routes, ``/public/stream`` (depth,
  bookTicker, trades, optionTicker) and ``/market/stream`` (optionMarkPrice, index, open
  interest); stream names are lowercase (``btc-251219-89000-c@depth20@100ms``,
  ``btcusdt@optionMarkPrice``);
- older ``eoptions``: ``wss://nbstream.binance.com/eoptions/stream`` for everything, names
  as the venue spells symbols (``BTC-231027-34000-C@depth100@100ms``, ``XRP@markPrice``,
  ``BTCUSDT@index``, ``BTC-240927-25000-P@ticker``).

``Endpoints.ws_url`` is the stream *host base*; a route path is appended per connection.

Simulator layout (what ``simulator`` must serve for Binance): the runtime calls
``simulator_endpoints(http_base, ws_base)`` with bases that already end in ``/binance``
(``http://127.0.0.1:8080/binance``, ``ws://127.0.0.1:8080/binance``), and the live path
layout is reproduced below them:

- REST: ``{http_base}/eapi/v1/exchangeInfo`` and ``{http_base}/eapi/v1/depth?symbol=..&limit=..``
  (the diff-book mode's snapshots), i.e. ``Endpoints.rest_url`` = ``http_base``;
- WS:   ``{ws_base}/public/stream`` and ``{ws_base}/market/stream`` (combined streams:
  ``{"stream", "data"}`` frames; ``SUBSCRIBE``/``UNSUBSCRIBE`` requests with ids).
"""

from __future__ import annotations

from typing import Final

from svc_connector.venues.base import Endpoints, VenueLimits

VENUE: Final = "binance"
SOURCE: Final = "connector.binance"

# REST paths are appended to Endpoints.rest_url (the host), exactly as on the venue.
EXCHANGE_INFO_PATH: Final = "/eapi/v1/exchangeInfo"
DEPTH_PATH: Final = "/eapi/v1/depth"

LIVE: Final = Endpoints(ws_url="wss://fstream.binance.com", rest_url="https://eapi.binance.com")
# The venue's options testnet (unconfirmed for REST).
TESTNET: Final = Endpoints(
    ws_url="wss://fstream.binancefuture.com", rest_url="https://testnet.binancefuture.com"
)
# The older stream API (one route for every stream).
EOPTIONS: Final = Endpoints(
    ws_url="wss://nbstream.binance.com/eoptions", rest_url="https://eapi.binance.com"
)
ENDPOINTS: Final = {"live": LIVE, "testnet": TESTNET, "eoptions": EOPTIONS}


def simulator_endpoints(http_base: str, ws_base: str) -> Endpoints:
    """REST ``{http_base}/eapi/v1/...``, WS ``{ws_base}/{public|market}/stream`` (bases end
    in ``/binance``)."""
    return Endpoints(ws_url=ws_base.rstrip("/"), rest_url=http_base.rstrip("/"))


# ---- stream APIs and routes -------------------------------------------------------------------

API_CURRENT: Final = "current"
API_EOPTIONS: Final = "eoptions"
APIS: Final = frozenset({API_CURRENT, API_EOPTIONS})

ROUTE_PUBLIC: Final = "public"
ROUTE_MARKET: Final = "market"
# Path appended to Endpoints.ws_url for each route, per API.
ROUTE_PATHS: Final = {
    API_CURRENT: {ROUTE_PUBLIC: "/public/stream", ROUTE_MARKET: "/market/stream"},
    API_EOPTIONS: {ROUTE_PUBLIC: "/stream", ROUTE_MARKET: "/stream"},
}

# ---- stream names ------------------------------------------------------------------------------
# Kinds are matched case-insensitively (the current API spells them optionMarkPrice, ...).

PARTIAL_DEPTH_STREAM: Final = "{symbol}@depth{levels}@100ms"
DIFF_DEPTH_STREAM: Final = "{symbol}@depth@100ms"
OPTION_MARK_PRICE_STREAM: Final = "{underlying}@optionMarkPrice"
BOOK_TICKER_STREAM: Final = "{symbol}@bookTicker"
INDEX_STREAM: Final = "{underlying}@index"
LEGACY_TICKER_STREAM: Final = "{symbol}@ticker"
LEGACY_MARK_PRICE_STREAM: Final = "{coin}@markPrice"

# Partial book depth streams: the full top-N book each push.
PARTIAL_DEPTH_LEVELS: Final = frozenset({"5", "10", "20", "50", "100"})
# Diff depth streams ("depth" alone; "depth1000" in the older API, unconfirmed).
DIFF_DEPTH_LEVELS: Final = frozenset({"", "1000"})
DEFAULT_DEPTH_LEVELS: Final = "20"

BOOK_MODE_PARTIAL: Final = "partial"
BOOK_MODE_DIFF: Final = "diff"

# ---- wire words --------------------------------------------------------------------------------

SUBSCRIBE: Final = "SUBSCRIBE"
UNSUBSCRIBE: Final = "UNSUBSCRIBE"

# ---- limits ------------------------------------------------------------------------------------

LIMITS: Final = VenueLimits(
    # Documented: 200 streams per connection.
    max_channels_per_connection=200,
    # 300 connection attempts per 5 minutes per IP: a conservative share.
    max_connections_per_ip=50,
    default_max_connections=10,
    channels_per_subscribe_request=100,
    # Documented: 10 incoming messages per second per connection (pongs included).
    subscribe_requests_per_second=4.0,
    # The server pings every 5 minutes (websockets answers); no application keep-alive.
    heartbeat_interval_s=300.0,
)
# A connection receiving nothing for this long is dead (marks arrive every second).
WATCHDOG_TIMEOUT_S: Final = 120.0
# Connections live at most 24 h: renew them before that.
MAX_CONNECTION_AGE_S: Final = 23.5 * 3600
# REST depth snapshots (diff-book mode): levels per snapshot, and a pace that keeps the
# REST request weight low (the venue's weight per depth request and per-minute budget are
# unconfirmed for options: a few hundred books take minutes to start in diff mode).
DEPTH_SNAPSHOT_LIMIT: Final = 100
DEPTH_SNAPSHOTS_PER_SECOND: Final = 2.0
# Deltas kept per book while a REST snapshot is on its way (diff-book mode).
MAX_BUFFERED_DELTAS: Final = 1000

# Venue options (ConnectorConfig.venue_options) this adapter reads, with defaults.
OPTION_STREAM_API: Final = "stream_api"  # "current" ("eoptions" for the eoptions environment)
# "partial": <symbol>@depth20@100ms full books; "diff": <symbol>@depth@100ms diffs bridged
# onto REST snapshots.
OPTION_BOOK_MODE: Final = "book_mode"  # "partial"
OPTION_DEPTH_LEVELS: Final = "depth_levels"  # "20"
# "true": also subscribe <symbol>@bookTicker (best bid/ask between mark pushes).
OPTION_BOOK_TICKER: Final = "book_ticker"  # "false"
# "true": subscribe <underlying>@index (the current API also carries the index in marks).
OPTION_INDEX_STREAM: Final = "index_stream"  # "false" (current), "true" (eoptions)
# REST depth snapshots per second in diff-book mode.
OPTION_DEPTH_SNAPSHOTS_PER_SECOND: Final = "depth_snapshots_per_second"  # "2"
