from volstream.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstrumentKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTRUMENT_KIND_UNSPECIFIED: _ClassVar[InstrumentKind]
    INSTRUMENT_KIND_OPTION: _ClassVar[InstrumentKind]
    INSTRUMENT_KIND_FUTURE: _ClassVar[InstrumentKind]
    INSTRUMENT_KIND_PERPETUAL: _ClassVar[InstrumentKind]

class PremiumUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREMIUM_UNIT_UNSPECIFIED: _ClassVar[PremiumUnit]
    PREMIUM_UNIT_COIN_PER_COIN: _ClassVar[PremiumUnit]
    PREMIUM_UNIT_USD_PER_COIN: _ClassVar[PremiumUnit]
    PREMIUM_UNIT_USD_PER_CONTRACT: _ClassVar[PremiumUnit]

class SizeUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIZE_UNIT_UNSPECIFIED: _ClassVar[SizeUnit]
    SIZE_UNIT_COIN: _ClassVar[SizeUnit]
    SIZE_UNIT_USD: _ClassVar[SizeUnit]
    SIZE_UNIT_CONTRACT: _ClassVar[SizeUnit]
INSTRUMENT_KIND_UNSPECIFIED: InstrumentKind
INSTRUMENT_KIND_OPTION: InstrumentKind
INSTRUMENT_KIND_FUTURE: InstrumentKind
INSTRUMENT_KIND_PERPETUAL: InstrumentKind
PREMIUM_UNIT_UNSPECIFIED: PremiumUnit
PREMIUM_UNIT_COIN_PER_COIN: PremiumUnit
PREMIUM_UNIT_USD_PER_COIN: PremiumUnit
PREMIUM_UNIT_USD_PER_CONTRACT: PremiumUnit
SIZE_UNIT_UNSPECIFIED: SizeUnit
SIZE_UNIT_COIN: SizeUnit
SIZE_UNIT_USD: SizeUnit
SIZE_UNIT_CONTRACT: SizeUnit

class Instrument(_message.Message):
    __slots__ = ("venue", "symbol", "currency", "kind", "option_kind", "strike_usd", "expiry_time_ns", "premium_currency", "settlement_currency", "premium_unit", "contract_size_coin", "tick_size_native", "min_size_native", "underlying", "is_active", "contract_size", "contract_size_unit", "size_unit")
    VENUE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OPTION_KIND_FIELD_NUMBER: _ClassVar[int]
    STRIKE_USD_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PREMIUM_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENT_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    PREMIUM_UNIT_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_SIZE_COIN_FIELD_NUMBER: _ClassVar[int]
    TICK_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    UNDERLYING_FIELD_NUMBER: _ClassVar[int]
    IS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_SIZE_UNIT_FIELD_NUMBER: _ClassVar[int]
    SIZE_UNIT_FIELD_NUMBER: _ClassVar[int]
    venue: str
    symbol: str
    currency: str
    kind: InstrumentKind
    option_kind: _common_pb2.OptionKind
    strike_usd: float
    expiry_time_ns: int
    premium_currency: str
    settlement_currency: str
    premium_unit: PremiumUnit
    contract_size_coin: float
    tick_size_native: float
    min_size_native: float
    underlying: str
    is_active: bool
    contract_size: float
    contract_size_unit: SizeUnit
    size_unit: SizeUnit
    def __init__(self, venue: _Optional[str] = ..., symbol: _Optional[str] = ..., currency: _Optional[str] = ..., kind: _Optional[_Union[InstrumentKind, str]] = ..., option_kind: _Optional[_Union[_common_pb2.OptionKind, str]] = ..., strike_usd: _Optional[float] = ..., expiry_time_ns: _Optional[int] = ..., premium_currency: _Optional[str] = ..., settlement_currency: _Optional[str] = ..., premium_unit: _Optional[_Union[PremiumUnit, str]] = ..., contract_size_coin: _Optional[float] = ..., tick_size_native: _Optional[float] = ..., min_size_native: _Optional[float] = ..., underlying: _Optional[str] = ..., is_active: _Optional[bool] = ..., contract_size: _Optional[float] = ..., contract_size_unit: _Optional[_Union[SizeUnit, str]] = ..., size_unit: _Optional[_Union[SizeUnit, str]] = ...) -> None: ...

class InstrumentSet(_message.Message):
    __slots__ = ("header", "venue", "currency", "instruments", "listed_symbols", "delisted_symbols")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    LISTED_SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    DELISTED_SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    venue: str
    currency: str
    instruments: _containers.RepeatedCompositeFieldContainer[Instrument]
    listed_symbols: _containers.RepeatedScalarFieldContainer[str]
    delisted_symbols: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., venue: _Optional[str] = ..., currency: _Optional[str] = ..., instruments: _Optional[_Iterable[_Union[Instrument, _Mapping]]] = ..., listed_symbols: _Optional[_Iterable[str]] = ..., delisted_symbols: _Optional[_Iterable[str]] = ...) -> None: ...

class BookLevel(_message.Message):
    __slots__ = ("price_native", "size_native")
    PRICE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    price_native: float
    size_native: float
    def __init__(self, price_native: _Optional[float] = ..., size_native: _Optional[float] = ...) -> None: ...

class BookSnapshot(_message.Message):
    __slots__ = ("header", "symbol", "bids", "asks", "venue_sequence", "is_periodic")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    VENUE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    IS_PERIODIC_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    symbol: str
    bids: _containers.RepeatedCompositeFieldContainer[BookLevel]
    asks: _containers.RepeatedCompositeFieldContainer[BookLevel]
    venue_sequence: int
    is_periodic: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., symbol: _Optional[str] = ..., bids: _Optional[_Iterable[_Union[BookLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[BookLevel, _Mapping]]] = ..., venue_sequence: _Optional[int] = ..., is_periodic: _Optional[bool] = ...) -> None: ...

class BookDelta(_message.Message):
    __slots__ = ("header", "symbol", "bids", "asks", "venue_sequence", "prev_venue_sequence", "checksum")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    VENUE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREV_VENUE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    symbol: str
    bids: _containers.RepeatedCompositeFieldContainer[BookLevel]
    asks: _containers.RepeatedCompositeFieldContainer[BookLevel]
    venue_sequence: int
    prev_venue_sequence: int
    checksum: int
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., symbol: _Optional[str] = ..., bids: _Optional[_Iterable[_Union[BookLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[BookLevel, _Mapping]]] = ..., venue_sequence: _Optional[int] = ..., prev_venue_sequence: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class BookReset(_message.Message):
    __slots__ = ("header", "symbol", "reason")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    symbol: str
    reason: str
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., symbol: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class VenueTicker(_message.Message):
    __slots__ = ("header", "symbol", "best_bid_price_native", "best_bid_size_native", "best_ask_price_native", "best_ask_size_native", "mark_price_native", "bid_iv", "ask_iv", "mark_iv", "forward_usd", "forward_name", "index_price_usd", "interest_rate", "delta", "gamma", "vega", "theta", "open_interest", "mark_price_usd_per_coin", "best_bid_price_usd_per_coin", "best_ask_price_usd_per_coin", "delta_premium_adjusted")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BEST_BID_PRICE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BEST_BID_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BEST_ASK_PRICE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BEST_ASK_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    MARK_PRICE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BID_IV_FIELD_NUMBER: _ClassVar[int]
    ASK_IV_FIELD_NUMBER: _ClassVar[int]
    MARK_IV_FIELD_NUMBER: _ClassVar[int]
    FORWARD_USD_FIELD_NUMBER: _ClassVar[int]
    FORWARD_NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_PRICE_USD_FIELD_NUMBER: _ClassVar[int]
    INTEREST_RATE_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    VEGA_FIELD_NUMBER: _ClassVar[int]
    THETA_FIELD_NUMBER: _ClassVar[int]
    OPEN_INTEREST_FIELD_NUMBER: _ClassVar[int]
    MARK_PRICE_USD_PER_COIN_FIELD_NUMBER: _ClassVar[int]
    BEST_BID_PRICE_USD_PER_COIN_FIELD_NUMBER: _ClassVar[int]
    BEST_ASK_PRICE_USD_PER_COIN_FIELD_NUMBER: _ClassVar[int]
    DELTA_PREMIUM_ADJUSTED_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    symbol: str
    best_bid_price_native: float
    best_bid_size_native: float
    best_ask_price_native: float
    best_ask_size_native: float
    mark_price_native: float
    bid_iv: float
    ask_iv: float
    mark_iv: float
    forward_usd: float
    forward_name: str
    index_price_usd: float
    interest_rate: float
    delta: float
    gamma: float
    vega: float
    theta: float
    open_interest: float
    mark_price_usd_per_coin: float
    best_bid_price_usd_per_coin: float
    best_ask_price_usd_per_coin: float
    delta_premium_adjusted: float
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., symbol: _Optional[str] = ..., best_bid_price_native: _Optional[float] = ..., best_bid_size_native: _Optional[float] = ..., best_ask_price_native: _Optional[float] = ..., best_ask_size_native: _Optional[float] = ..., mark_price_native: _Optional[float] = ..., bid_iv: _Optional[float] = ..., ask_iv: _Optional[float] = ..., mark_iv: _Optional[float] = ..., forward_usd: _Optional[float] = ..., forward_name: _Optional[str] = ..., index_price_usd: _Optional[float] = ..., interest_rate: _Optional[float] = ..., delta: _Optional[float] = ..., gamma: _Optional[float] = ..., vega: _Optional[float] = ..., theta: _Optional[float] = ..., open_interest: _Optional[float] = ..., mark_price_usd_per_coin: _Optional[float] = ..., best_bid_price_usd_per_coin: _Optional[float] = ..., best_ask_price_usd_per_coin: _Optional[float] = ..., delta_premium_adjusted: _Optional[float] = ...) -> None: ...

class IndexPrice(_message.Message):
    __slots__ = ("header", "index_name", "price_usd")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_USD_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    index_name: str
    price_usd: float
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., index_name: _Optional[str] = ..., price_usd: _Optional[float] = ...) -> None: ...

class VolatilityIndex(_message.Message):
    __slots__ = ("header", "index_name", "volatility")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INDEX_NAME_FIELD_NUMBER: _ClassVar[int]
    VOLATILITY_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    index_name: str
    volatility: float
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., index_name: _Optional[str] = ..., volatility: _Optional[float] = ...) -> None: ...

class MarketDataEvent(_message.Message):
    __slots__ = ("instrument_set", "book_snapshot", "book_delta", "book_reset", "ticker", "index_price", "volatility_index")
    INSTRUMENT_SET_FIELD_NUMBER: _ClassVar[int]
    BOOK_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BOOK_DELTA_FIELD_NUMBER: _ClassVar[int]
    BOOK_RESET_FIELD_NUMBER: _ClassVar[int]
    TICKER_FIELD_NUMBER: _ClassVar[int]
    INDEX_PRICE_FIELD_NUMBER: _ClassVar[int]
    VOLATILITY_INDEX_FIELD_NUMBER: _ClassVar[int]
    instrument_set: InstrumentSet
    book_snapshot: BookSnapshot
    book_delta: BookDelta
    book_reset: BookReset
    ticker: VenueTicker
    index_price: IndexPrice
    volatility_index: VolatilityIndex
    def __init__(self, instrument_set: _Optional[_Union[InstrumentSet, _Mapping]] = ..., book_snapshot: _Optional[_Union[BookSnapshot, _Mapping]] = ..., book_delta: _Optional[_Union[BookDelta, _Mapping]] = ..., book_reset: _Optional[_Union[BookReset, _Mapping]] = ..., ticker: _Optional[_Union[VenueTicker, _Mapping]] = ..., index_price: _Optional[_Union[IndexPrice, _Mapping]] = ..., volatility_index: _Optional[_Union[VolatilityIndex, _Mapping]] = ...) -> None: ...

class MarketDataBatch(_message.Message):
    __slots__ = ("header", "venue", "currency", "events")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    venue: str
    currency: str
    events: _containers.RepeatedCompositeFieldContainer[MarketDataEvent]
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., venue: _Optional[str] = ..., currency: _Optional[str] = ..., events: _Optional[_Iterable[_Union[MarketDataEvent, _Mapping]]] = ...) -> None: ...
