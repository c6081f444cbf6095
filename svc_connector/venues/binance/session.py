"""The Binance per-connection session (:class:`BinanceSession`): tickers assembled from the
streams that carry parts of them, the spot index as the forward, diff-book sequencing bridged
onto REST snapshots, request/response matching, header sequence stamping. Pure: no I/O, no
clock.

What it normalises for the one sequence rule (a delta applies when its
``prev_venue_sequence`` equals the book's sequence): diffs carry ``pu`` (the previous diff's
``u``) as ``prev_venue_sequence``; the first diff applied after a REST snapshot spans the
snapshot's ``lastUpdateId`` (``pu`` < it < ``u``) and is emitted with
``prev_venue_sequence`` = that ``lastUpdateId`` (``book.bridged``), so that it continues the
snapshot like any other diff.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping

import orjson

from svc_connector.kit.fields import raw_bytes
from svc_connector.kit.frames import internal_error
from svc_connector.kit.requests import PendingRequests, match_acks, request_channels
from svc_connector.kit.sequencing import BookSequencer, bridge_rest_snapshot, sequence_delta
from svc_connector.kit.tickers import TickerMerger, fill_usd_fields, ticker_fields
from svc_connector.venues.base import (
    DeadLetter,
    FrameResult,
    NormalisedEvent,
    RequestAck,
    VenueRequest,
)
from svc_connector.venues.binance import constants as c
from svc_connector.venues.binance.hot import BinanceHotPath
from svc_connector.venues.binance.parse import (
    OWNED_FIELDS,
    PER_CONTRACT,
    parse_depth_snapshot,
    parse_frame,
    stream_head_kind,
)
from volstream.v1 import market_data_pb2 as md_pb


class BinanceSession(BinanceHotPath):
    """Pure per-connection state: merged tickers, index forward, diff books, acks.

    Tickers: ``optionMarkPrice`` carries everything (quotes, IVs, greeks, mark, the index
    ``i`` = forward); the older streams split it (``ticker``: quotes, IVs, greeks, mark;
    ``markPrice``: the mark; ``bookTicker``: best bid/ask). Each stream owns its fields and
    the session emits the merged ticker (see :class:`TickerMerger`); a ticker without a
    forward of its own gets the latest index of its currency (``<UNDERLYING>@index``).

    Books: partial depth snapshots (``is_periodic``) pass through. Diffs
    (``@depth@100ms``) apply when ``pu`` equals the last ``u``; a duplicate is dropped; a
    gap or a diff without a snapshot gives a ``BookReset`` and a resync request. The
    venue's answer to a resync is a REST snapshot, fed in with :meth:`on_rest_depth`; with
    ``buffer_diffs`` the diffs that arrive meanwhile are kept (bounded) and replayed onto it:
    those at or below its ``u`` are dropped, the first one spanning it (``pu`` <= ``u`` <
    its ``u``) bridges, the rest must be contiguous.
    """

    subscribe_method = c.SUBSCRIBE
    unsubscribe_method = c.UNSUBSCRIBE

    def __init__(
        self,
        *,
        resync_timeout_ns: int = 10_000_000_000,
        contract_sizes: Mapping[str, float] | None = None,
        buffer_diffs: bool = False,
        first_request_id: int = 1,
        first_sequence: int = 1,
        sequence: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(
            first_request_id=first_request_id, first_sequence=first_sequence, sequence=sequence
        )
        self._books = BookSequencer(resync_timeout_ns)
        self._contract_sizes: dict[str, float] = dict(contract_sizes or {})
        self._tickers = TickerMerger()
        # currency -> (index name, price) of the latest IndexPrice.
        self._indices: dict[str, tuple[str, float]] = {}
        self._buffer_diffs = buffer_diffs
        self._buffers: dict[str, deque[NormalisedEvent]] = {}
        self._diff_channels: dict[str, str] = {}
        # Books whose REST snapshot awaits the diff that spans it.
        self._bridging: set[str] = set()
        self._pending = PendingRequests()

    @property
    def source(self) -> str:
        return c.SOURCE

    def set_instruments(self, instruments: Iterable[md_pb.Instrument]) -> None:
        """Contract sizes (``unit``) of known instruments (USD-per-coin conversion)."""
        for instrument in instruments:
            if instrument.contract_size_coin > 0:
                self._contract_sizes[instrument.symbol] = instrument.contract_size_coin

    def on_connected(self) -> None:
        self._books.reset()
        self._buffers.clear()
        self._bridging.clear()
        self._pending.clear()

    # ---- outgoing ----------------------------------------------------------------------------

    def encode(self, request: VenueRequest) -> str:
        request_id = self._take_request_id()
        channels = request_channels(request)
        self._pending.add(request_id, request.method, channels)
        body = {"method": request.method, "params": channels, "id": request_id}
        return orjson.dumps(body).decode()

    # ---- incoming ----------------------------------------------------------------------------

    def _on_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult:
        result = parse_frame(raw, receive_time_ns, self._contract_sizes)
        if result.acks or result.venue_errors:
            self._match_responses(result)
        if result.events:
            self._post_process(result, receive_time_ns)
        return result

    def expect_snapshot(self, symbol: str, channel: str, now_ns: int) -> None:
        """A REST snapshot of a newly subscribed diff book is on its way: keep its diffs for it
        (no reset: there was no book yet)."""
        self._diff_channels[symbol] = channel
        if self._books.last_sequence(symbol) is None and not self._books.is_resyncing(symbol):
            self._books.start_resync(symbol, now_ns)

    def on_rest_depth(self, body: bytes | str, symbol: str, receive_time_ns: int) -> FrameResult:
        """A REST book snapshot for a diff book: restart the book on it, replay buffered
        diffs. Stamped like a frame's result; never raises."""
        result = FrameResult()
        try:
            event, reason = parse_depth_snapshot(body, symbol, receive_time_ns)
            if event is None:
                result.counts["book.rest_snapshot_bad"] += 1
                result.dead_letters.append(DeadLetter(raw_bytes(body), reason))
                return result
            sequence = event.event.book_snapshot.venue_sequence
            self._books.snapshot(symbol, sequence)
            self._bridging.add(symbol)
            result.counts["book.rest_snapshot"] += 1
            result.channel = self._diff_channels.get(symbol, "")
            result.events.append(event)
            for delta in self._buffers.pop(symbol, deque()):
                result.events.extend(self._on_diff(delta, result, receive_time_ns))
        except Exception as exc:  # the client must never see an exception
            result = internal_error(body, "session", exc)
        return self.stamp(result)

    def _match_responses(self, result: FrameResult) -> None:
        def confirm(ack: RequestAck, channels: tuple[str, ...]) -> None:
            (result.subscribed if ack.method == c.SUBSCRIBE else result.unsubscribed).extend(
                channels
            )

        match_acks(result, self._pending, confirm)

    def _post_process(self, result: FrameResult, now_ns: int) -> None:
        events = result.events
        if len(events) == 1 and events[0].event.WhichOneof("event") == "book_snapshot":
            return  # a partial depth push, the usual frame: nothing to do
        owned = OWNED_FIELDS.get(stream_head_kind(result.channel)[1], ())
        events = []
        for item in result.events:
            case = item.event.WhichOneof("event")
            if case == "index_price":
                index = item.event.index_price
                self._indices[item.currency] = (index.index_name, index.price_usd)
                events.append(item)
            elif case == "ticker":
                events.append(self._merged(item, owned))
            elif case == "book_delta":
                events.extend(self._on_diff(item, result, now_ns))
            else:
                events.append(item)
        result.events = events

    def _merged(self, item: NormalisedEvent, owned: tuple[str, ...]) -> NormalisedEvent:
        ticker = item.event.ticker
        symbol = ticker.symbol
        merged = self._tickers.merge_fields(symbol, ticker_fields(ticker, owned), owned)
        latest_index = self._indices.get(item.currency)
        if "forward_usd" not in merged and latest_index is not None:
            name, price = latest_index
            merged["forward_usd"] = price
            merged["index_price_usd"] = price
            merged["forward_name"] = name
        fill_usd_fields(merged, PER_CONTRACT, self._contract_sizes.get(symbol))
        merged["header"] = ticker.header
        merged["symbol"] = symbol
        return NormalisedEvent(item.currency, "ticker", md_pb.MarketDataEvent(ticker=merged))

    def _on_diff(
        self, item: NormalisedEvent, result: FrameResult, now_ns: int
    ) -> list[NormalisedEvent]:
        delta = item.event.book_delta
        symbol = delta.symbol
        if result.channel:
            self._diff_channels[symbol] = result.channel
        channel = self._diff_channels.get(symbol, result.channel)
        # The first diff spanning the REST snapshot's update id (pu <= its u < u).
        bridged = bridge_rest_snapshot(self._books, self._bridging, item, result)
        if bridged is not None:
            return bridged
        events = sequence_delta(self._books, item, channel, result, now_ns)
        if self._buffer_diffs and events != [item] and self._books.is_resyncing(symbol):
            buffer = self._buffers.setdefault(symbol, deque(maxlen=c.MAX_BUFFERED_DELTAS))
            buffer.append(item)
            result.counts["book.buffered"] += 1
        return events
