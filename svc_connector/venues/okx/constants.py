"""OKX v5 URLs, channels and limits (docs/venues/okx.md).

Simulator layout (what ``simulator`` must serve for OKX): the runtime calls
``simulator_endpoints(http_base, ws_base)`` with bases that already end in ``/okx``
(``http://127.0.0.1:8080/okx``, ``ws://127.0.0.1:8080/okx``), and the live path layout is
reproduced below them:

- REST: ``{http_base}/api/v5/public/instruments?instType=OPTION&instFamily=BTC-USD``
  (and ``instType=FUTURES``), i.e. ``Endpoints.rest_url`` = ``http_base``;
- WS:   ``{ws_base}/ws/v5/public``.
"""

from __future__ import annotations

from typing import Final

from svc_connector.venues.base import Endpoints, VenueLimits

VENUE: Final = "okx"
SOURCE: Final = "connector.okx"

# REST paths are appended to Endpoints.rest_url (the host), exactly as on the venue.
WS_PATH: Final = "/ws/v5/public"
INSTRUMENTS_PATH: Final = "/api/v5/public/instruments"
# The REST book a book is built from when the websocket sends no initial snapshot.
BOOKS_PATH: Final = "/api/v5/market/books"
REST_BOOK_DEPTH: Final = "400"
# ResubscribeRequest reason by which a session asks its client for a REST book.
REST_SNAPSHOT_REASON: Final = "no websocket snapshot: REST book"
# Updates kept per book while its REST snapshot is on its way (the oldest go first).
MAX_BUFFERED_UPDATES: Final = 1000
# REST market books: the venue allows 40 requests per 2 s per IP.
REST_BOOKS_PER_SECOND: Final = 20.0

LIVE: Final = Endpoints(ws_url="wss://ws.okx.com:8443" + WS_PATH, rest_url="https://www.okx.com")
# Demo trading (unconfirmed for public market data: the venue documents this host for demo).
TESTNET: Final = Endpoints(
    ws_url="wss://wspap.okx.com:8443" + WS_PATH, rest_url="https://www.okx.com"
)
ENDPOINTS: Final = {"live": LIVE, "testnet": TESTNET}


def simulator_endpoints(http_base: str, ws_base: str) -> Endpoints:
    """REST ``{http_base}/api/v5/...``, WS ``{ws_base}/ws/v5/public`` (bases end in ``/okx``)."""
    return Endpoints(ws_url=ws_base.rstrip("/") + WS_PATH, rest_url=http_base.rstrip("/"))


# ---- channels ----------------------------------------------------------------------------------
# volstream names one subscription "<channel>:<key>", key = instId, or instFamily for
# opt-summary ("books:BTC-USD-220527-30000-C", "opt-summary:BTC-USD").

OPT_SUMMARY: Final = "opt-summary"
BOOKS: Final = "books"
BOOKS5: Final = "books5"
BBO_TBT: Final = "bbo-tbt"
BOOKS_L2_TBT: Final = "books-l2-tbt"
BOOKS50_L2_TBT: Final = "books50-l2-tbt"
TICKERS: Final = "tickers"
INDEX_TICKERS: Final = "index-tickers"
MARK_PRICE: Final = "mark-price"
# Listings and state changes of an instrument type ("instruments:OPTION").
INSTRUMENTS: Final = "instruments"

# Snapshot then updates, sequenced by seqId/prevSeqId and checked with the CRC32 checksum.
INCREMENTAL_BOOKS: Final = frozenset({BOOKS, BOOKS_L2_TBT, BOOKS50_L2_TBT})
# The full top-N book on every push.
PERIODIC_BOOKS: Final = frozenset({BOOKS5, BBO_TBT})
# Channels whose subscription argument is the instrument family, not an instId.
FAMILY_CHANNELS: Final = frozenset({OPT_SUMMARY})
# Channels whose subscription argument is the instrument type.
TYPE_CHANNELS: Final = frozenset({INSTRUMENTS})

# Family key of opt-summary arguments; older venue versions (and recordings) use "uly".
FAMILY_KEY: Final = "instFamily"
LEGACY_FAMILY_KEY: Final = "uly"

# ---- wire words --------------------------------------------------------------------------------

SUBSCRIBE: Final = "subscribe"
UNSUBSCRIBE: Final = "unsubscribe"
PING: Final = "ping"
PONG: Final = "pong"

# ---- limits ------------------------------------------------------------------------------------

# 480 subscribe/unsubscribe requests per hour per connection: a burst for the initial
# subscription, then a rate that keeps burst + one hour of requests within 480.
SUBSCRIBE_BURST: Final = 30.0
SUBSCRIBE_REQUESTS_PER_HOUR: Final = 480
# 3 connection requests per second per IP: this connector uses two of them.
CONNECTS_PER_SECOND: Final = 2.0

LIMITS: Final = VenueLimits(
    # Not a documented venue limit: keeps one connection's snapshot burst manageable.
    max_channels_per_connection=300,
    # Not documented for public channels: a conservative cap.
    max_connections_per_ip=20,
    default_max_connections=8,
    # A request must stay under the venue's 64 KB message limit.
    channels_per_subscribe_request=100,
    subscribe_requests_per_second=(SUBSCRIBE_REQUESTS_PER_HOUR - SUBSCRIBE_BURST) / 3600.0,
    # Send "ping" when nothing was sent for this long; the venue drops silent ones at 30 s.
    heartbeat_interval_s=20.0,
)

# Venue options (ConnectorConfig.venue_options) this adapter reads, with defaults.
OPTION_BOOK_CHANNEL: Final = "book_channel"  # "books" (| "books5" | "bbo-tbt")
# "true": subscribe `tickers` of every option too (best bid/ask; the book has them already).
OPTION_OPTION_TICKERS: Final = "option_tickers"  # "false"
# "true": subscribe `mark-price` of every option (unit for options unconfirmed: see parse.py).
OPTION_MARK_PRICE: Final = "mark_price"  # "false"
# "true": discover futures and subscribe their `tickers` (a forward per expiry).
OPTION_FUTURE_TICKERS: Final = "future_tickers"  # "true"
# Quote of the option families: "USD" -> "BTC-USD" (inverse, the only OKX option family).
OPTION_FAMILY_QUOTE: Final = "family_quote"  # "USD"
# "false": do not verify books checksums (they are verified whenever non-zero).
OPTION_VERIFY_CHECKSUM: Final = "verify_checksum"  # "true"
# "true": follow the `instruments` channel to refresh discovery early on listings/expiries.
OPTION_INSTRUMENT_CHANNEL: Final = "instrument_channel"  # "true"
# REST books fetched per second when books come without a websocket snapshot.
OPTION_REST_BOOKS_PER_SECOND: Final = "rest_books_per_second"  # "20"
# A book with no snapshot this long after its subscription is confirmed gets its REST book.
OPTION_SNAPSHOT_WAIT_S: Final = "snapshot_wait_s"  # "2"
