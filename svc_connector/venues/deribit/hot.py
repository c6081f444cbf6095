"""The Deribit hot path: book changes and tickers (~96% of the traffic) decoded and checked in
C by msgspec and built directly, with exactly the checked path's result (see
:class:`DeribitHotPath`).

The checked path spends most of a frame in Python (dict lookups, per-field type checks,
generic dispatch). The hot path only takes frames whose result it can prove identical to the
checked path's, and returns None before touching any state for anything else (the checked
path then handles the frame).
"""

from __future__ import annotations

from typing import Final

import msgspec

from svc_connector.kit.book_levels import ASKS_TAG, BIDS_TAG, best_first_pairs, levels_wire
from svc_connector.kit.fields import MS_TO_NS
from svc_connector.kit.sequencing import BookSequencer
from svc_connector.kit.stamping import StampingSession
from svc_connector.venues.base import FrameResult, MdKind, NormalisedEvent
from svc_connector.venues.deribit import constants as c
from svc_connector.venues.deribit.messages import HotData, HotNotification
from svc_connector.venues.deribit.parse import cached_currency_of
from svc_connector.venues.deribit.symbols import premium_unit_from_name
from volstream.v1 import common_pb2 as common_pb
from volstream.v1 import market_data_pb2 as md_pb

# Book changes and tickers are ~96% of the traffic. The checked path above spends most of a
# frame in Python (dict lookups, per-field type checks, generic dispatch); the hot path lets
# msgspec decode and type-check the frame in C and builds the one event directly. It only
# takes frames whose result it can prove identical to the checked path's, and returns None
# before touching any state for anything else (the checked path then handles the frame).
_hot_decode: Final = msgspec.json.Decoder(HotNotification).decode


_INT64_MAX: Final = 2**63 - 1


# Timestamps whose nanoseconds fit an int64 (msgspec ints are unbounded; orjson turns
# integers beyond 64 bits into floats, so only in-range ints read the same both ways).
_MAX_TIMESTAMP_MS: Final = _INT64_MAX // MS_TO_NS


def _fill_ticker(data: HotData, ticker: md_pb.VenueTicker, unit: md_pb.PremiumUnit) -> None:
    """:func:`_parse_ticker`'s fields from a decoded ticker (same rules), set in place (cheaper
    than its dict and constructor here: the values are at hand)."""
    bid_price, bid_size = data.best_bid_price, data.best_bid_amount
    # An empty side comes as price 0 (or null) with amount 0.
    if bid_price is not None and bid_size is not None and bid_size > 0:
        ticker.best_bid_price_native = bid_price
        ticker.best_bid_size_native = bid_size
    else:
        bid_price = None
    ask_price, ask_size = data.best_ask_price, data.best_ask_amount
    if ask_price is not None and ask_size is not None and ask_size > 0:
        ticker.best_ask_price_native = ask_price
        ticker.best_ask_size_native = ask_size
    else:
        ask_price = None
    mark = data.mark_price
    if mark is not None:
        if mark > 0:
            ticker.mark_price_native = mark
        else:
            mark = None
    iv = data.bid_iv
    if iv is not None and iv > 0:
        ticker.bid_iv = iv / 100.0
    iv = data.ask_iv
    if iv is not None and iv > 0:
        ticker.ask_iv = iv / 100.0
    iv = data.mark_iv
    if iv is not None and iv > 0:
        ticker.mark_iv = iv / 100.0
    forward = data.underlying_price
    if forward is not None:
        if forward > 0:
            ticker.forward_usd = forward
        else:
            forward = None
    value = data.underlying_index
    if value is not None:
        ticker.forward_name = value
    number = data.index_price
    if number is not None and number > 0:
        ticker.index_price_usd = number
    number = data.interest_rate
    if number is not None:
        ticker.interest_rate = number
    number = data.open_interest
    if number is not None:
        ticker.open_interest = number
    greeks = data.greeks
    if greeks is not None:
        if greeks.delta is not None:
            ticker.delta = greeks.delta
        if greeks.gamma is not None:
            ticker.gamma = greeks.gamma
        if greeks.vega is not None:
            ticker.vega = greeks.vega
        if greeks.theta is not None:
            ticker.theta = greeks.theta
    if unit == md_pb.PREMIUM_UNIT_COIN_PER_COIN:
        if forward is None:
            return
        if mark is not None:
            ticker.mark_price_usd_per_coin = mark * forward
        if bid_price is not None:
            ticker.best_bid_price_usd_per_coin = bid_price * forward
        if ask_price is not None:
            ticker.best_ask_price_usd_per_coin = ask_price * forward
    elif unit == md_pb.PREMIUM_UNIT_USD_PER_COIN:
        if mark is not None:
            ticker.mark_price_usd_per_coin = mark
        if bid_price is not None:
            ticker.best_bid_price_usd_per_coin = bid_price
        if ask_price is not None:
            ticker.best_ask_price_usd_per_coin = ask_price


class DeribitHotPath(StampingSession):
    """The hot path of :class:`~svc_connector.venues.deribit.session.DeribitSession`: book
    snapshots, changes that continue their book, and tickers, decoded and type-checked in C
    by msgspec (messages.py) and built directly. It answers exactly what the checked path
    would, or None before touching any state. The session state it reads and moves on is
    declared here and made by the session.
    """

    _books: BookSequencer
    _premium_units: dict[str, md_pb.PremiumUnit]

    def _hot_frame(self, raw: bytes | str, receive_time_ns: int) -> FrameResult | None:
        """The hot path: a book or ticker notification's FrameResult, exactly as the checked
        path would return it, with the same state changes; or None, with no state touched,
        for any frame it does not cover (the checked path then takes it).

        Covered: ``book.{inst}.{interval}`` snapshots and changes that continue the book
        (``prev_change_id`` = the book's last ``change_id``, no resync in flight), and
        ``ticker.{inst}.{interval}``, when every field has the JSON type the checked path
        takes without counting or dead-lettering anything.
        """
        # Deribit frames are ASCII; this also keeps out invalid UTF-8 (msgspec lets it
        # through in unread places, orjson refuses it).
        if not raw.isascii():
            return None
        try:
            message = _hot_decode(raw)
        except msgspec.MsgspecError:
            return None
        params = message.params
        channel = params.channel
        data = params.data
        symbol = data.instrument_name
        timestamp_ms = data.timestamp
        # Out-of-range values would make protobuf raise halfway (the checked path then
        # dead-letters the frame).
        if (
            message.method != "subscription"
            or channel.count(".") != 2
            or not symbol
            or not 0 <= timestamp_ms <= _MAX_TIMESTAMP_MS
            or not 0 <= receive_time_ns <= _INT64_MAX
        ):
            return None
        currency = cached_currency_of(symbol)
        if currency is None:
            return None
        event = md_pb.MarketDataEvent()
        if channel.startswith("ticker."):
            if data.state is not None and data.state != c.OPEN_STATE:
                return None  # not open: the checked path drops its prices
            ticker = event.ticker
            ticker.symbol = symbol
            unit = self._premium_units.get(symbol) or premium_unit_from_name(symbol)
            _fill_ticker(data, ticker, unit)
            header = ticker.header
            count = "ticker"
            md_kind: MdKind = "ticker"
        elif channel.startswith("book."):
            header_or_none = self._hot_book(data, symbol, event, receive_time_ns)
            if header_or_none is None:
                return None
            header = header_or_none
            count = "book.change" if data.type == "change" else "book.snapshot"
            md_kind = "book"
        else:
            return None
        header.event_time_ns = timestamp_ms * MS_TO_NS
        header.receive_time_ns = receive_time_ns
        header.source = c.SOURCE
        header.sequence = self._take_sequence()
        result = FrameResult(
            events=[NormalisedEvent(currency, md_kind, event, header)], channel=channel
        )
        counts = result.counts
        counts["frames"] = 1
        counts[count] = 1
        return result

    def _hot_book(
        self, data: HotData, symbol: str, event: md_pb.MarketDataEvent, now_ns: int
    ) -> common_pb.EventHeader | None:
        """A book snapshot or a change that continues the book into ``event``, and the book's
        state moved on as the checked path would; None (nothing touched) for anything else."""
        kind, change_id, bids, asks = data.type, data.change_id, data.bids, data.asks
        if change_id is None or bids is None or asks is None or not 0 <= change_id <= _INT64_MAX:
            return None
        if kind == "change":
            prev = data.prev_change_id
            # 0 (just listed), gaps, duplicates, a resync or no snapshot yet: checked path.
            if prev is None or prev == 0 or prev != self._books.last_sequence(symbol):
                return None
            delta = event.book_delta
            # The levels as wire bytes, appended in C (a level added per call costs several
            # times more); a zero size reads back as the same message.
            delta.MergeFromString(
                levels_wire(
                    BIDS_TAG,
                    [
                        (price, 0.0 if action == "delete" else amount)
                        for action, price, amount in bids
                    ],
                )
                + levels_wire(
                    ASKS_TAG,
                    [
                        (price, 0.0 if action == "delete" else amount)
                        for action, price, amount in asks
                    ],
                )
            )
            delta.symbol = symbol
            delta.venue_sequence = change_id
            delta.prev_venue_sequence = prev
            self._books.check_delta(symbol, prev, change_id, now_ns)  # APPLY: prev == last
            return delta.header
        if kind == "snapshot":
            snapshot = event.book_snapshot
            snapshot.symbol = symbol
            # Deletes have size 0: best_first_pairs drops them, as from the checked path.
            live_bids, live_asks = best_first_pairs(
                [(price, amount) for action, price, amount in bids if action != "delete"],
                [(price, amount) for action, price, amount in asks if action != "delete"],
            )
            snapshot.MergeFromString(
                levels_wire(BIDS_TAG, live_bids) + levels_wire(ASKS_TAG, live_asks)
            )
            snapshot.venue_sequence = change_id
            self._books.snapshot(symbol, change_id)
            return snapshot.header
        return None
