"""The venue-adapter contract: what every venue folder provides and what the runtime calls.

Every venue lives in ``svc_connector/venues/<venue>/`` with the same file set:

=================  ==========================================================================
``constants.py``   URLs (live, testnet, simulator path layout), channel templates, limits.
``messages.py``    Shapes of the venue's wire messages: ``TypedDict`` (documentation + typing)
                   and the ``msgspec.Struct`` decoders of the hot path.
``symbols.py``     Instrument-name parsing/formatting (expiry, strike, call/put, currency).
``parse.py``       The checked path, PURE functions: one raw frame -> :class:`FrameResult`;
                   REST bodies -> :class:`InstrumentParseResult`. No I/O, no clock, never
                   raise.
``hot.py``         The fast path: a base class of the session that answers the venue's
                   usual frames exactly as the checked path would, or steps aside.
``session.py``     The :class:`VenueSession`: per-connection state over ``parse`` and ``hot``
                   (sequencing, request matching, merged tickers, header stamping).
``client.py``      The async I/O: websocket connection(s), REST discovery, reconnects.
``__init__.py``    Exposes ``ADAPTER: VenueAdapter``, the one object the registry imports.
=================  ==========================================================================

Layers, from pure to impure:

1. ``parse.parse_frame(raw, receive_time_ns) -> FrameResult``: stateless decoding and
   normalisation to protobuf. Unknown message types/channels are *counted* (``counts``) and
   ignored; a frame that cannot be understood is returned as a :class:`DeadLetter` with a
   reason. Nothing raises.
2. A per-connection *session* (:class:`VenueSession`): pure state with no I/O. It wraps the
   stateless parse and adds what needs memory: book sequence checking (gap -> a
   :class:`BookReset` event plus a :class:`ResubscribeRequest`; stale/duplicate deltas are
   dropped and counted, never applied twice), matching responses to the requests it encoded,
   and stamping ``header.sequence`` from a per-session counter. Every delta it emits obeys
   one rule (the proto's ``BookDelta.prev_venue_sequence``: it applies when that equals the
   book's sequence); a venue's exceptions are normalised in its ``session.py``. Time comes
   only from the ``receive_time_ns`` argument, so a replay of frames gives the same result.
   Each session answers its venue's dominant frames on a *hot path* (typed ``msgspec``
   decoding, no per-field Python checks) that must give exactly what the checked path gives,
   or step aside before touching any state (``hot_path = False`` turns it off; the
   equivalence is tested in ``tests/connector/test_<venue>_hot_path.py``).
3. The *connector* (:class:`VenueConnector`, in ``client.py``): discovers instruments over
   REST, plans subscriptions over one or more websocket connections, keeps them healthy and
   pushes the session's outputs into an :class:`EventSink` provided by the runtime. It never
   exits on bad input; only :meth:`VenueConnector.stop` ends it.

Conventions for events handed to the sink (see ``proto/volstream/v1/market_data.proto``):

- ``currency`` is the uppercase underlying coin ("BTC"), ``kind`` one of :data:`MD_KINDS`
  ("instrument": InstrumentSet; "book": BookSnapshot/BookDelta/BookReset; "ticker":
  VenueTicker; "index": IndexPrice/VolatilityIndex). Together with the venue they select the
  subject ``md.<venue>.<ccy>.<kind>``.
- ``header.event_time_ns`` is the venue's timestamp (ms -> ns), ``receive_time_ns`` the
  local receive time, ``source`` ``"connector.<venue>"``, ``sequence`` the session counter;
  ``publish_time_ns`` is left 0 for the runtime to set.
- IVs are fractions; a venue's "no value" (0, -1, empty) becomes an absent optional field.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

MdKind = Literal["instrument", "book", "ticker", "index"]
# Same tuple as volstream.subjects.MD_KINDS: the last token of an md.* subject.
MD_KINDS: tuple[MdKind, ...] = ("instrument", "book", "ticker", "index")


# ---------------------------------------------------------------------------------------------
# Outputs of the pure layers
# ---------------------------------------------------------------------------------------------


# Not frozen: one or two are made per event on the hot path and a frozen dataclass's
# __init__ costs about four times as much. Treat it as immutable all the same.
@dataclass(slots=True)
class NormalisedEvent:
    """One normalised event with its routing keys."""

    currency: str
    kind: MdKind
    event: md_pb.MarketDataEvent
    # The event's own header, when its maker has it at hand: the session stamps the sequence
    # and the sink the publish time through it, without a WhichOneof + getattr each time.
    header: common_pb.EventHeader | None = None

    def event_header(self) -> common_pb.EventHeader | None:
        """The header of the event's set oneof case (None when no case is set)."""
        if self.header is not None:
            return self.header
        case = self.event.WhichOneof("event")
        if case is None:
            return None
        header: common_pb.EventHeader = getattr(self.event, case).header
        return header


@dataclass(frozen=True, slots=True)
class VenueRequest:
    """A request the client must send, before venue encoding.

    ``method``/``params`` are venue terms (Deribit ``public/test`` with ``{}``; OKX ``ping``;
    Bybit ``ping``). The session's :meth:`VenueSession.encode` turns it into wire text.
    """

    method: str
    params: Mapping[str, Any]
    purpose: str


@dataclass(frozen=True, slots=True)
class ResubscribeRequest:
    """A book (or other channel) lost its sequence: unsubscribe and subscribe ``channel`` again.

    The venue answers a fresh subscription with a snapshot, which resyncs the book.
    """

    symbol: str
    channel: str
    reason: str


@dataclass(frozen=True, slots=True)
class VenueError:
    """An error the venue reported (logged and counted by the client, never fatal).

    ``method``/``channels`` are filled by the session when the error answers a request it
    encoded (e.g. the channels of a failed subscribe), empty otherwise.
    """

    code: str
    message: str
    request_id: int | str | None = None
    method: str = ""
    channels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A frame that could not be handled, for ``dlq.connector.<venue>`` with the reason."""

    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class RequestAck:
    """A successful response to a request; ``method`` is known when the session encoded it."""

    request_id: int | str | None
    method: str
    result: Any


@dataclass(frozen=True, slots=True)
class InstrumentStateChange:
    """The venue announced a listing/expiry (Deribit ``instrument.state.*``): refresh early."""

    symbol: str
    state: str


class _FrameCounts(Counter[str]):
    """An empty Counter made cheaply (one per frame): Counter.__init__ runs an update()."""

    __slots__ = ()

    # dict's own (C) __init__: with no arguments it does nothing, without a Python frame.
    __init__ = dict.__init__


@dataclass(slots=True, init=False)
class FrameResult:
    """Everything one frame produced. All lists keep arrival order; empty by default."""

    events: list[NormalisedEvent] = field(default_factory=list)
    # The venue channel/topic of a notification frame ("" for responses, heartbeats, ...).
    channel: str = ""
    # Frames the client must send now (keep-alive answers such as Deribit public/test).
    replies: list[VenueRequest] = field(default_factory=list)
    resubscribes: list[ResubscribeRequest] = field(default_factory=list)
    acks: list[RequestAck] = field(default_factory=list)
    # Channels the venue confirmed as (un)subscribed by this frame.
    subscribed: list[str] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)
    venue_errors: list[VenueError] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    instrument_states: list[InstrumentStateChange] = field(default_factory=list)
    # Named counters (e.g. "unknown_channel.trades", "book.stale_dropped"); the client adds
    # each to the sink with EventSink.count.
    counts: Counter[str] = field(default_factory=_FrameCounts)

    # Written out (init=False above): one FrameResult per frame, and the generated __init__
    # calls a default factory per field, twice the cost of list displays.
    def __init__(
        self,
        events: list[NormalisedEvent] | None = None,
        channel: str = "",
        replies: list[VenueRequest] | None = None,
        resubscribes: list[ResubscribeRequest] | None = None,
        acks: list[RequestAck] | None = None,
        subscribed: list[str] | None = None,
        unsubscribed: list[str] | None = None,
        venue_errors: list[VenueError] | None = None,
        dead_letters: list[DeadLetter] | None = None,
        instrument_states: list[InstrumentStateChange] | None = None,
        counts: Counter[str] | None = None,
    ) -> None:
        self.events = [] if events is None else events
        self.channel = channel
        self.replies = [] if replies is None else replies
        self.resubscribes = [] if resubscribes is None else resubscribes
        self.acks = [] if acks is None else acks
        self.subscribed = [] if subscribed is None else subscribed
        self.unsubscribed = [] if unsubscribed is None else unsubscribed
        self.venue_errors = [] if venue_errors is None else venue_errors
        self.dead_letters = [] if dead_letters is None else dead_letters
        self.instrument_states = [] if instrument_states is None else instrument_states
        self.counts = _FrameCounts() if counts is None else counts

    def extend(self, other: FrameResult) -> None:
        """Append ``other``'s outputs after this result's (used when combining frames)."""
        self.events.extend(other.events)
        self.replies.extend(other.replies)
        self.resubscribes.extend(other.resubscribes)
        self.acks.extend(other.acks)
        self.subscribed.extend(other.subscribed)
        self.unsubscribed.extend(other.unsubscribed)
        self.venue_errors.extend(other.venue_errors)
        self.dead_letters.extend(other.dead_letters)
        self.instrument_states.extend(other.instrument_states)
        self.counts.update(other.counts)

    def kind_counts(self) -> Counter[str]:
        """How many events of each MarketDataEvent oneof case ("ticker", "book_delta", ...)."""
        return Counter(str(e.event.WhichOneof("event")) for e in self.events)


@dataclass(slots=True)
class InstrumentParseResult:
    """Instruments decoded from one REST response (pure ``parse_instruments``)."""

    instruments: list[md_pb.Instrument] = field(default_factory=list)
    # Venue's response time (ns) when it states one, else 0 (the caller uses receive time).
    venue_time_ns: int = 0
    venue_errors: list[VenueError] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


# ---------------------------------------------------------------------------------------------
# What the runtime provides: the sink
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class EventSink(Protocol):
    """Where a connector delivers its output. One sink per venue connector (it knows the venue).

    ``emit`` (per event) or ``emit_all`` (per frame) is awaited in arrival order: keep it
    cheap (append to a batch); back-pressure by awaiting. Counter names are dotted, without
    the venue (the sink adds it as a label), e.g. ``frames``, ``dead_letters``,
    ``book.gap``, ``connection.state.live``.
    """

    async def emit(self, currency: str, kind: MdKind, event: md_pb.MarketDataEvent) -> None: ...

    async def emit_all(self, events: list[NormalisedEvent]) -> None:
        """``emit`` of every event in order (one await per frame instead of one per event)."""
        ...

    async def dead_letter(self, raw: bytes, reason: str) -> None: ...

    def count(self, name: str, value: int = 1) -> None: ...

    def count_all(self, counts: Mapping[str, int]) -> None:
        """``count`` of every (name, value) (one call per frame instead of one per name)."""
        ...


class MemorySink:
    """A complete in-process :class:`EventSink`: keeps everything in lists (tools, tests).

    ``wait_for`` lets a caller await a condition over what has arrived so far.
    """

    def __init__(self) -> None:
        self.events: list[NormalisedEvent] = []
        self.dead_letters: list[DeadLetter] = []
        self.counters: Counter[str] = Counter()
        self._waiters: list[tuple[Callable[[MemorySink], bool], Any]] = []

    async def emit(self, currency: str, kind: MdKind, event: md_pb.MarketDataEvent) -> None:
        self.events.append(NormalisedEvent(currency, kind, event))
        self._wake()

    async def emit_all(self, events: list[NormalisedEvent]) -> None:
        self.events.extend(events)
        self._wake()

    async def dead_letter(self, raw: bytes, reason: str) -> None:
        self.dead_letters.append(DeadLetter(raw, reason))
        self._wake()

    def count(self, name: str, value: int = 1) -> None:
        self.counters[name] += value
        self._wake()

    def count_all(self, counts: Mapping[str, int]) -> None:
        self.counters.update(counts)
        self._wake()

    def of_case(self, case: str) -> list[md_pb.MarketDataEvent]:
        """Events whose oneof case is ``case`` ("ticker", "book_snapshot", ...)."""
        return [e.event for e in self.events if e.event.WhichOneof("event") == case]

    async def wait_for(self, condition: Callable[[MemorySink], bool], timeout_s: float) -> None:
        """Return once ``condition(self)`` holds; raise TimeoutError after ``timeout_s``."""
        if condition(self):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout_s)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _wake(self) -> None:
        for condition, future in list(self._waiters):
            if not future.done() and condition(self):
                future.set_result(None)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where to connect. ``rest_url`` is the base that REST paths are appended to."""

    ws_url: str
    rest_url: str


@dataclass(frozen=True, slots=True)
class VenueLimits:
    """A venue's defaults for connection planning and pacing (overridable in the config)."""

    # Channels one websocket carries before the planner opens another connection.
    max_channels_per_connection: int
    # Connections per IP the venue allows; the planner never exceeds the configured share.
    max_connections_per_ip: int
    # Connections this connector may use (<= max_connections_per_ip; leave room for others).
    default_max_connections: int
    channels_per_subscribe_request: int
    subscribe_requests_per_second: float
    heartbeat_interval_s: float


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """Venue-independent connector settings. ``None`` means "the venue's default".

    ``environment`` selects one of the adapter's ``endpoints`` ("live", "testnet") unless
    ``endpoints`` is given explicitly (e.g. from :attr:`VenueAdapter.simulator_endpoints`).
    ``venue_options`` holds venue-specific knobs; each adapter documents the keys it reads.
    """

    currencies: tuple[str, ...] = ("BTC", "ETH")
    environment: str = "live"
    endpoints: Endpoints | None = None
    max_channels_per_connection: int | None = None
    max_connections: int | None = None
    channels_per_subscribe_request: int | None = None
    subscribe_requests_per_second: float | None = None
    heartbeat_interval_s: float | None = None
    # A connection that receives nothing for this long is considered dead and reconnected.
    watchdog_timeout_s: float | None = None
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    # A connection that stayed up this long resets the reconnect backoff.
    stable_after_s: float = 60.0
    instrument_refresh_s: float = 300.0
    rest_timeout_s: float = 15.0
    # A book resync that got no snapshot after this long is requested again.
    resync_timeout_s: float = 10.0
    venue_options: Mapping[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# What each venue provides
# ---------------------------------------------------------------------------------------------


class VenueSession(Protocol):
    """The one session protocol: pure per-connection state (no I/O, no clock) that every venue
    session implements and the runtime drives. See module docstring, layer 2."""

    # False: every frame takes the checked path (tests and benches compare the two).
    hot_path: bool
    # Frames the hot path answered so far (the runtime reports the rise as
    # ``frames.hot_path``; a falling share means the venue changed a message).
    hot_hits: int

    @property
    def source(self) -> str:
        """``header.source`` of the events it produces, e.g. ``"connector.deribit"``."""
        ...

    def on_connected(self) -> None:
        """A new websocket is up: forget book sequences and pending requests (not the counter)."""
        ...

    def on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        """Decode one frame, apply sequencing, stamp headers. Never raises."""
        ...

    def encode(self, request: VenueRequest) -> str:
        """Wire text for ``request``; remembers it so that the response can be matched."""
        ...

    def subscribe(self, channels: Sequence[str]) -> str:
        """Wire text subscribing ``channels`` (encoded and remembered like :meth:`encode`)."""
        ...

    def unsubscribe(self, channels: Sequence[str]) -> str:
        """Wire text unsubscribing ``channels``."""
        ...

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None:
        """What discovery knows of the instruments (premium units, contract sizes, ...)."""
        ...


class VenueConnector(Protocol):
    """A running venue connection pool (``client.py``)."""

    async def run(self) -> None:
        """Run until :meth:`stop`; never returns because of bad input or venue errors."""
        ...

    async def stop(self) -> None:
        """Close every connection and return once all tasks are done."""
        ...

    def status(self) -> Mapping[str, Any]:
        """Health snapshot: connection states, channel counts, last receive times."""
        ...

    def resync_books(self, symbols: Iterable[str]) -> int:
        """Ask the venue again for snapshots of these books (a downstream consumer such as a
        restarted svc_book lost them); returns how many were requested. Called by the runtime
        for requests on ``ctl.connector.<venue>.resync``."""
        ...


ConnectorFactory = Callable[[ConnectorConfig, EventSink], VenueConnector]
SessionFactory = Callable[[], VenueSession]
SimulatorEndpoints = Callable[[str, str], Endpoints]
InstrumentParser = Callable[[bytes | str, int], InstrumentParseResult]


@dataclass(frozen=True, slots=True)
class VenueAdapter:
    """The registry entry of one venue: everything the runtime needs to run it.

    - ``name``: lowercase subject token ("deribit").
    - ``endpoints``: named environments ("live", "testnet").
    - ``simulator_endpoints(http_base, ws_base)``: the venue's URL layout on the simulator
      (e.g. ``http://127.0.0.1:8080`` -> REST ``.../api/v2``, WS ``ws://.../ws/api/v2``).
    - ``new_session()``: a fresh :class:`VenueSession` (pure; replay and tests use it alone).
    - ``parse_instruments(body, receive_time_ns)``: pure REST instrument decoding.
    - ``make_connector(config, sink)``: the running connector.
    """

    name: str
    endpoints: Mapping[str, Endpoints]
    limits: VenueLimits
    simulator_endpoints: SimulatorEndpoints
    new_session: SessionFactory
    parse_instruments: InstrumentParser
    make_connector: ConnectorFactory

    @property
    def source(self) -> str:
        return f"connector.{self.name}"

    def resolve_endpoints(self, config: ConnectorConfig) -> Endpoints:
        """The config's explicit endpoints, else the named environment's."""
        if config.endpoints is not None:
            return config.endpoints
        try:
            return self.endpoints[config.environment]
        except KeyError:
            known = ", ".join(sorted(self.endpoints))
            raise ValueError(
                f"{self.name}: unknown environment {config.environment!r} (known: {known})"
            ) from None


class ConnectionState(StrEnum):
    """Lifecycle of one websocket connection (logged and counted on every change)."""

    IDLE = "idle"
    CONNECTING = "connecting"
    SUBSCRIBING = "subscribing"
    LIVE = "live"
    BACKING_OFF = "backing_off"
    STOPPED = "stopped"
