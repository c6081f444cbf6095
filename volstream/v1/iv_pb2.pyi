from volstream.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IvStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IV_STATUS_UNSPECIFIED: _ClassVar[IvStatus]
    IV_STATUS_OK: _ClassVar[IvStatus]
    IV_STATUS_MISSING_PRICE: _ClassVar[IvStatus]
    IV_STATUS_BELOW_INTRINSIC: _ClassVar[IvStatus]
    IV_STATUS_ABOVE_UPPER_BOUND: _ClassVar[IvStatus]
    IV_STATUS_EXPIRED: _ClassVar[IvStatus]
    IV_STATUS_BAD_INPUT: _ClassVar[IvStatus]
IV_STATUS_UNSPECIFIED: IvStatus
IV_STATUS_OK: IvStatus
IV_STATUS_MISSING_PRICE: IvStatus
IV_STATUS_BELOW_INTRINSIC: IvStatus
IV_STATUS_ABOVE_UPPER_BOUND: IvStatus
IV_STATUS_EXPIRED: IvStatus
IV_STATUS_BAD_INPUT: IvStatus

class SmileQuote(_message.Message):
    __slots__ = ("symbol", "option_kind", "strike_usd", "log_moneyness", "bid_price_usd_per_coin", "ask_price_usd_per_coin", "mark_price_usd_per_coin", "bid_size_native", "ask_size_native", "bid_iv", "ask_iv", "mid_iv", "mark_iv", "bid_iv_status", "ask_iv_status", "mark_iv_status", "venue_bid_iv", "venue_ask_iv", "venue_mark_iv", "delta_forward", "delta_premium_adjusted", "gamma_per_usd", "vega_usd_per_vol", "theta_usd_per_day", "one_sided", "crossed", "stale", "at_min_tick", "quote_time_ns", "behind_forward")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    OPTION_KIND_FIELD_NUMBER: _ClassVar[int]
    STRIKE_USD_FIELD_NUMBER: _ClassVar[int]
    LOG_MONEYNESS_FIELD_NUMBER: _ClassVar[int]
    BID_PRICE_USD_PER_COIN_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_USD_PER_COIN_FIELD_NUMBER: _ClassVar[int]
    MARK_PRICE_USD_PER_COIN_FIELD_NUMBER: _ClassVar[int]
    BID_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    ASK_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BID_IV_FIELD_NUMBER: _ClassVar[int]
    ASK_IV_FIELD_NUMBER: _ClassVar[int]
    MID_IV_FIELD_NUMBER: _ClassVar[int]
    MARK_IV_FIELD_NUMBER: _ClassVar[int]
    BID_IV_STATUS_FIELD_NUMBER: _ClassVar[int]
    ASK_IV_STATUS_FIELD_NUMBER: _ClassVar[int]
    MARK_IV_STATUS_FIELD_NUMBER: _ClassVar[int]
    VENUE_BID_IV_FIELD_NUMBER: _ClassVar[int]
    VENUE_ASK_IV_FIELD_NUMBER: _ClassVar[int]
    VENUE_MARK_IV_FIELD_NUMBER: _ClassVar[int]
    DELTA_FORWARD_FIELD_NUMBER: _ClassVar[int]
    DELTA_PREMIUM_ADJUSTED_FIELD_NUMBER: _ClassVar[int]
    GAMMA_PER_USD_FIELD_NUMBER: _ClassVar[int]
    VEGA_USD_PER_VOL_FIELD_NUMBER: _ClassVar[int]
    THETA_USD_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    ONE_SIDED_FIELD_NUMBER: _ClassVar[int]
    CROSSED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    AT_MIN_TICK_FIELD_NUMBER: _ClassVar[int]
    QUOTE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FORWARD_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    option_kind: _common_pb2.OptionKind
    strike_usd: float
    log_moneyness: float
    bid_price_usd_per_coin: float
    ask_price_usd_per_coin: float
    mark_price_usd_per_coin: float
    bid_size_native: float
    ask_size_native: float
    bid_iv: float
    ask_iv: float
    mid_iv: float
    mark_iv: float
    bid_iv_status: IvStatus
    ask_iv_status: IvStatus
    mark_iv_status: IvStatus
    venue_bid_iv: float
    venue_ask_iv: float
    venue_mark_iv: float
    delta_forward: float
    delta_premium_adjusted: float
    gamma_per_usd: float
    vega_usd_per_vol: float
    theta_usd_per_day: float
    one_sided: bool
    crossed: bool
    stale: bool
    at_min_tick: bool
    quote_time_ns: int
    behind_forward: bool
    def __init__(self, symbol: _Optional[str] = ..., option_kind: _Optional[_Union[_common_pb2.OptionKind, str]] = ..., strike_usd: _Optional[float] = ..., log_moneyness: _Optional[float] = ..., bid_price_usd_per_coin: _Optional[float] = ..., ask_price_usd_per_coin: _Optional[float] = ..., mark_price_usd_per_coin: _Optional[float] = ..., bid_size_native: _Optional[float] = ..., ask_size_native: _Optional[float] = ..., bid_iv: _Optional[float] = ..., ask_iv: _Optional[float] = ..., mid_iv: _Optional[float] = ..., mark_iv: _Optional[float] = ..., bid_iv_status: _Optional[_Union[IvStatus, str]] = ..., ask_iv_status: _Optional[_Union[IvStatus, str]] = ..., mark_iv_status: _Optional[_Union[IvStatus, str]] = ..., venue_bid_iv: _Optional[float] = ..., venue_ask_iv: _Optional[float] = ..., venue_mark_iv: _Optional[float] = ..., delta_forward: _Optional[float] = ..., delta_premium_adjusted: _Optional[float] = ..., gamma_per_usd: _Optional[float] = ..., vega_usd_per_vol: _Optional[float] = ..., theta_usd_per_day: _Optional[float] = ..., one_sided: _Optional[bool] = ..., crossed: _Optional[bool] = ..., stale: _Optional[bool] = ..., at_min_tick: _Optional[bool] = ..., quote_time_ns: _Optional[int] = ..., behind_forward: _Optional[bool] = ...) -> None: ...

class Smile(_message.Message):
    __slots__ = ("header", "venue", "currency", "expiry_time_ns", "expiry_label", "time_to_expiry_years", "forward_usd", "forward_source", "index_price_usd", "quotes")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_LABEL_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_EXPIRY_YEARS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_USD_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_PRICE_USD_FIELD_NUMBER: _ClassVar[int]
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    venue: str
    currency: str
    expiry_time_ns: int
    expiry_label: str
    time_to_expiry_years: float
    forward_usd: float
    forward_source: _common_pb2.ForwardSource
    index_price_usd: float
    quotes: _containers.RepeatedCompositeFieldContainer[SmileQuote]
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., venue: _Optional[str] = ..., currency: _Optional[str] = ..., expiry_time_ns: _Optional[int] = ..., expiry_label: _Optional[str] = ..., time_to_expiry_years: _Optional[float] = ..., forward_usd: _Optional[float] = ..., forward_source: _Optional[_Union[_common_pb2.ForwardSource, str]] = ..., index_price_usd: _Optional[float] = ..., quotes: _Optional[_Iterable[_Union[SmileQuote, _Mapping]]] = ...) -> None: ...

class SmileBatch(_message.Message):
    __slots__ = ("header", "venue", "currency", "smiles")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SMILES_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    venue: str
    currency: str
    smiles: _containers.RepeatedCompositeFieldContainer[Smile]
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., venue: _Optional[str] = ..., currency: _Optional[str] = ..., smiles: _Optional[_Iterable[_Union[Smile, _Mapping]]] = ...) -> None: ...
