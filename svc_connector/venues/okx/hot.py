"""The OKX hot path: ``books`` pushes and ``opt-summary`` decoded with msgspec Structs and
normalised directly, with exactly the checked path's result (see :class:`OkxHotPath`).

What it checks so that nothing after its decision raises: timestamps whose nanoseconds fit an
int64, sequences a float holds exactly (the checked path's float round trip alters others),
checksums that fit the int32 field.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import msgspec
import orjson

from svc_connector.kit.book_levels import ASKS_TAG, BIDS_TAG
from svc_connector.kit.fields import MS_TO_NS
from svc_connector.kit.sequencing import BookSequencer
from svc_connector.kit.stamping import StampingSession
from svc_connector.kit.tickers import PRICE_FIELDS, TickerMerger, fill_usd_fields
from svc_connector.venues.base import FrameResult, NormalisedEvent
from svc_connector.venues.okx import constants as c
from svc_connector.venues.okx import messages as msg
from svc_connector.venues.okx.checksum import OkxChecksumBook
from svc_connector.venues.okx.parse import EXACT_INT, cached_currency_of, fill_header
from svc_connector.venues.okx.symbols import premium_unit_from_id
from volstream.v1 import market_data_pb2 as md_pb

# What the hot path checks so that nothing after its decision raises: timestamps whose
# nanoseconds fit an int64, sequences a float holds exactly (the checked path's float round
# trip alters others), checksums that fit the int32 field.
_MAX_TS_MS: Final = 9_000_000_000_000  # x 1e6 ns < 2**63


_MAX_CHECKSUM: Final = 2**31


_INF: Final = math.inf


_MINUS_ZERO_TEXT: Final = '"-0"'


_MINUS_ZERO_BYTES: Final = b'"-0"'


# One BookLevel on the wire, as svc_connector.session.levels_wire writes it.
_pack_level: Final = struct.Struct("<BBBdBd").pack


def _orjson_reads(raw: bytes | str) -> bool:
    """Whether the checked path's orjson reads ``raw``. The Structs skip the fields they do
    not read, unchecked; orjson refuses some of those anywhere in a frame (a number that
    overflows a double, a lone surrogate, invalid UTF-8) and the checked path dead-letters
    the frame, so the hot path must leave it there. Asked only of frames the Structs took:
    a validating parse costs ~5 us a frame, a fifth of a regex scan for the same cases."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def _hot_ts(text: str) -> int | None:
    """A millisecond timestamp string as the checked path reads it, or None to fall back."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value < _MAX_TS_MS else None


def _minus_zero(raw: bytes | str) -> bool:
    """Whether ``raw`` has a "-0" string, the one number msgspec reads differently (0.0,
    float() -0.0). Asked only when a decoded value is 0 (a search of the whole frame)."""
    return _MINUS_ZERO_TEXT in raw if isinstance(raw, str) else _MINUS_ZERO_BYTES in raw


def _hot_levels(
    wire: list[bytes], tag: int, levels: list[list[float]], skip_empty: bool = False
) -> bool | None:
    """Append ``levels`` to ``wire`` as a book's ``bids``/``asks`` (``tag``) wire bytes
    (:func:`levels_wire`), the levels :func:`text_levels` + :func:`add_book_levels` would
    add; None for anything the checked path would reject (the caller then falls back),
    else whether a size was 0 (see :func:`_minus_zero`)."""
    zeros = False
    for level in levels:
        if len(level) < 2:
            return None
        price, size = level[0], level[1]
        if not (0.0 < price < _INF and 0.0 <= size < _INF):
            return None
        if size == 0.0:
            zeros = True
            if skip_empty:
                continue
        wire.append(_pack_level(tag, 18, 0x09, price, 0x11, size))
    return zeros


def _hot_summary_values(entry: msg.HotSummary) -> tuple[float, ...] | None:
    """(bid IV, ask IV, mark IV, forward, delta, delta premium adjusted, gamma, vega, theta)
    as :func:`_summary_fields_fast` reads them (0 = no value for the first four); None to
    fall back."""
    bid_text, ask_text, mark_text, forward_text = (
        entry.bidVol,
        entry.askVol,
        entry.markVol,
        entry.fwdPx,
    )
    try:
        bid = float(bid_text) if bid_text else 0.0
        ask = float(ask_text) if ask_text else 0.0
        mark = float(mark_text) if mark_text else 0.0
        forward = float(forward_text) if forward_text else 0.0
    except ValueError:
        return None
    delta, delta_adjusted = entry.deltaBS, entry.delta
    gamma, vega, theta = entry.gammaBS, entry.vegaBS, entry.thetaBS
    total = bid + ask + mark + forward + delta + delta_adjusted + gamma + vega + theta
    if not math.isfinite(total):
        return None
    return (bid, ask, mark, forward, delta, delta_adjusted, gamma, vega, theta)


# Merged ticker fields that make fill_usd_fields add or drop a USD twin.
_NATIVE_PRICES: Final = frozenset(native for native, _ in PRICE_FIELDS)


def _merge_summary(merger: TickerMerger, symbol: str, values: tuple[float, ...]) -> dict[str, Any]:
    """:meth:`TickerMerger.merge_fields` of an opt-summary entry's fields
    (:func:`_hot_summary_values`) for ``OPT_SUMMARY_FIELDS``, without a dict per entry;
    returns the merger's own dict (read it, do not change it)."""
    current = merger.current(symbol)
    bid, ask, mark, forward, delta, delta_adjusted, gamma, vega, theta = values
    # An IV or forward of 0 (or less) is "no value": cleared, as merge_fields does. Written
    # out: a loop over (name, value) pairs costs a tuple per pair, ~150 entries a frame.
    if bid > 0:
        current["bid_iv"] = bid
    else:
        current.pop("bid_iv", None)
    if ask > 0:
        current["ask_iv"] = ask
    else:
        current.pop("ask_iv", None)
    if mark > 0:
        current["mark_iv"] = mark
    else:
        current.pop("mark_iv", None)
    if forward > 0:
        current["forward_usd"] = forward
    else:
        current.pop("forward_usd", None)
    current["delta"] = delta
    current["delta_premium_adjusted"] = delta_adjusted
    current["gamma"] = gamma
    current["vega"] = vega
    current["theta"] = theta
    return current


class OkxHotPath(StampingSession):
    """The hot path of :class:`~svc_connector.venues.okx.session.OkxSession`: the usual push
    frames (``books`` updates and snapshots, ``opt-summary``) decoded into msgspec Structs
    (messages.py) and normalised without the checked path's generic layers. It answers
    exactly what the checked path would, or None before touching any state. The session
    state it reads and moves on is declared here and made by the session.
    """

    _books: BookSequencer
    _strings: dict[str, OkxChecksumBook]
    _verify_checksums: bool
    _premium_units: dict[str, md_pb.PremiumUnit]
    _contract_sizes: dict[str, float]
    _tickers: TickerMerger
    # Books built from a REST snapshot (waiting for it, or for the update that spans it):
    # the checked path's business.
    _rest_books: dict[str, Any]
    _bridging: set[str]

    def _hot_frame(self, raw: bytes | str, now_ns: int) -> FrameResult | None:
        """The hot path: the usual push frames (``books`` updates and snapshots,
        ``opt-summary``) decoded into msgspec Structs (messages.py) and normalised without
        the checked path's generic layers, which cost several times the decode per frame.

        Returns exactly what the checked path would (events stamped), or None before
        changing any state for anything else: replies, other channels, a decode or type
        error, a value the checked path would reject, count or read another way, a sequence
        that does not continue the book, a checksum to verify. Everything that can raise
        happens before the first state change.
        """
        try:
            book = msg.BOOK_PUSH_DECODER.decode(raw)
        except msgspec.MsgspecError:
            pass
        else:
            if book.event is not None or book.arg.channel not in c.INCREMENTAL_BOOKS:
                return None
            if not _orjson_reads(raw):
                return None
            if book.action == "update":
                return self._hot_update(raw, book, now_ns)
            if book.action == "snapshot":
                return self._hot_snapshot(raw, book, now_ns)
            return None
        try:
            summary = msg.SUMMARY_PUSH_DECODER.decode(raw)
        except msgspec.MsgspecError:
            return None
        if summary.event is not None or summary.arg.channel != c.OPT_SUMMARY:
            return None
        if not _orjson_reads(raw):
            return None
        return self._hot_summaries(raw, summary, now_ns)

    def _hot_update(
        self, raw: bytes | str, push: msg.HotBookPush, now_ns: int
    ) -> FrameResult | None:
        symbol = push.arg.instId
        currency = cached_currency_of(symbol) if symbol else None
        if currency is None or len(push.data) != 1:
            return None
        entry = push.data[0]
        sequence, prev, checksum = entry.seqId, entry.prevSeqId, entry.checksum
        if (
            sequence is None
            or prev is None
            or not -EXACT_INT < sequence < EXACT_INT
            or prev != self._books.last_sequence(symbol)  # also None: no book, resyncing
            or symbol in self._strings  # its checksum book needs the venue's strings
            or symbol in self._bridging
        ):
            return None
        body = self._hot_book_body(raw, entry, skip_empty=False)
        if body is None:
            return None
        checksum_count, levels, timestamp_ms = body
        bids, asks = entry.bids, entry.asks
        event = md_pb.MarketDataEvent()
        delta = event.book_delta
        delta.MergeFromString(levels)
        header = delta.header
        fill_header(header, timestamp_ms, now_ns)
        delta.symbol = symbol
        delta.venue_sequence = sequence
        delta.prev_venue_sequence = prev
        delta.checksum = checksum
        # Decided: from here on nothing raises.
        self._books.check_delta(symbol, prev, sequence, now_ns)  # APPLY: prev == last
        header.sequence = self._take_sequence()
        result = FrameResult(
            [NormalisedEvent(currency, "book", event, header)], f"{push.arg.channel}:{symbol}"
        )
        counts = result.counts
        counts["frames"] = 1
        counts[
            "book.keepalive" if not bids and not asks and prev == sequence else "book.update"
        ] = 1
        counts[checksum_count] = 1
        return result

    def _hot_snapshot(
        self, raw: bytes | str, push: msg.HotBookPush, now_ns: int
    ) -> FrameResult | None:
        symbol = push.arg.instId
        currency = cached_currency_of(symbol) if symbol else None
        if currency is None or len(push.data) != 1:
            return None
        entry = push.data[0]
        sequence = entry.seqId
        if (
            sequence is None
            or not -EXACT_INT < sequence < EXACT_INT
            or symbol in self._rest_books
            or symbol in self._bridging
        ):
            return None
        # A snapshot keeps the levels with a size (size 0 deletes only in updates).
        body = self._hot_book_body(raw, entry, skip_empty=True)
        if body is None:
            return None
        checksum_count, levels, timestamp_ms = body
        event = md_pb.MarketDataEvent()
        snapshot = event.book_snapshot
        snapshot.MergeFromString(levels)
        header = snapshot.header
        fill_header(header, timestamp_ms, now_ns)
        snapshot.symbol = symbol
        snapshot.venue_sequence = sequence
        # Decided: from here on nothing raises.
        self._books.snapshot(symbol, sequence)
        self._strings.pop(symbol, None)
        header.sequence = self._take_sequence()
        result = FrameResult(
            [NormalisedEvent(currency, "book", event, header)], f"{push.arg.channel}:{symbol}"
        )
        counts = result.counts
        counts["frames"] = 1
        counts["book.snapshot"] = 1
        counts[checksum_count] = 1
        return result

    def _hot_book_body(
        self, raw: bytes | str, entry: msg.HotBook, skip_empty: bool
    ) -> tuple[str, bytes, int] | None:
        """What a books update and a snapshot check alike: (checksum counter, the levels'
        wire bytes, the venue timestamp in ms); None for the checked path."""
        checksum = entry.checksum
        if checksum == 0:
            checksum_count = "book.checksum_absent"
        elif not self._verify_checksums and -_MAX_CHECKSUM <= checksum < _MAX_CHECKSUM:
            checksum_count = "book.checksum_not_verified"
        else:
            return None  # to verify (or out of range): the checked path
        timestamp_ms = _hot_ts(entry.ts)
        if timestamp_ms is None:
            return None
        wire: list[bytes] = []
        bid_zeros = _hot_levels(wire, BIDS_TAG, entry.bids, skip_empty=skip_empty)
        ask_zeros = _hot_levels(wire, ASKS_TAG, entry.asks, skip_empty=skip_empty)
        if (
            bid_zeros is None
            or ask_zeros is None
            or ((bid_zeros or ask_zeros) and _minus_zero(raw))
        ):
            return None
        return checksum_count, b"".join(wire), timestamp_ms

    def _hot_summaries(
        self, raw: bytes | str, push: msg.HotSummaryPush, now_ns: int
    ) -> FrameResult | None:
        units = self._premium_units
        parsed: list[tuple[str, str, int, tuple[float, ...], md_pb.PremiumUnit]] = []
        zeros = False
        for entry in push.data:
            symbol = entry.instId
            currency = cached_currency_of(symbol) if symbol else None
            timestamp_ms = _hot_ts(entry.ts)
            values = _hot_summary_values(entry)
            if currency is None or timestamp_ms is None or values is None:
                return None
            unit = units.get(symbol) or premium_unit_from_id(symbol)
            parsed.append((symbol, currency, timestamp_ms * MS_TO_NS, values, unit))
            zeros = zeros or 0.0 in values[4:]
        if zeros and _minus_zero(raw):
            return None
        # Decided: from here on nothing raises.
        arg = push.arg
        key = arg.instId or arg.instFamily or arg.uly
        result = FrameResult(channel=f"{c.OPT_SUMMARY}:{key}" if key else c.OPT_SUMMARY)
        merger = self._tickers
        sizes = self._contract_sizes
        events = result.events
        take_sequence = self._take_sequence
        source = c.SOURCE
        for symbol, currency, event_time_ns, values, unit in parsed:
            merged = _merge_summary(merger, symbol, values)
            if not _NATIVE_PRICES.isdisjoint(merged):
                merged = dict(merged)  # gets USD twins the merger does not keep
                fill_usd_fields(merged, unit, sizes.get(symbol))
            event = md_pb.MarketDataEvent()
            ticker = event.ticker
            header = ticker.header
            header.event_time_ns = event_time_ns
            header.receive_time_ns = now_ns
            header.source = source
            ticker.symbol = symbol
            for name, value in merged.items():
                setattr(ticker, name, value)
            header.sequence = take_sequence()
            events.append(NormalisedEvent(currency, "ticker", event, header))
        counts = result.counts
        counts["frames"] = 1
        if parsed:
            counts["ticker.opt_summary"] = len(parsed)
        return result
