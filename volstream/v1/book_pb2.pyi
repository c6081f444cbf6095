from volstream.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BookStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOOK_STATUS_UNSPECIFIED: _ClassVar[BookStatus]
    BOOK_STATUS_VALID: _ClassVar[BookStatus]
    BOOK_STATUS_AWAITING_SNAPSHOT: _ClassVar[BookStatus]
    BOOK_STATUS_GAP: _ClassVar[BookStatus]
BOOK_STATUS_UNSPECIFIED: BookStatus
BOOK_STATUS_VALID: BookStatus
BOOK_STATUS_AWAITING_SNAPSHOT: BookStatus
BOOK_STATUS_GAP: BookStatus

class TopOfBook(_message.Message):
    __slots__ = ("header", "symbol", "status", "crossed", "one_sided", "stale", "best_bid_price_native", "best_bid_size_native", "best_ask_price_native", "best_ask_size_native", "bid_levels", "ask_levels", "bid_depth_size_native", "ask_depth_size_native", "last_update_time_ns")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CROSSED_FIELD_NUMBER: _ClassVar[int]
    ONE_SIDED_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    BEST_BID_PRICE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BEST_BID_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BEST_ASK_PRICE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BEST_ASK_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    BID_LEVELS_FIELD_NUMBER: _ClassVar[int]
    ASK_LEVELS_FIELD_NUMBER: _ClassVar[int]
    BID_DEPTH_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    ASK_DEPTH_SIZE_NATIVE_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    symbol: str
    status: BookStatus
    crossed: bool
    one_sided: bool
    stale: bool
    best_bid_price_native: float
    best_bid_size_native: float
    best_ask_price_native: float
    best_ask_size_native: float
    bid_levels: int
    ask_levels: int
    bid_depth_size_native: float
    ask_depth_size_native: float
    last_update_time_ns: int
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., symbol: _Optional[str] = ..., status: _Optional[_Union[BookStatus, str]] = ..., crossed: _Optional[bool] = ..., one_sided: _Optional[bool] = ..., stale: _Optional[bool] = ..., best_bid_price_native: _Optional[float] = ..., best_bid_size_native: _Optional[float] = ..., best_ask_price_native: _Optional[float] = ..., best_ask_size_native: _Optional[float] = ..., bid_levels: _Optional[int] = ..., ask_levels: _Optional[int] = ..., bid_depth_size_native: _Optional[float] = ..., ask_depth_size_native: _Optional[float] = ..., last_update_time_ns: _Optional[int] = ...) -> None: ...

class TopOfBookBatch(_message.Message):
    __slots__ = ("header", "venue", "currency", "tops", "is_keyframe")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TOPS_FIELD_NUMBER: _ClassVar[int]
    IS_KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    venue: str
    currency: str
    tops: _containers.RepeatedCompositeFieldContainer[TopOfBook]
    is_keyframe: bool
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., venue: _Optional[str] = ..., currency: _Optional[str] = ..., tops: _Optional[_Iterable[_Union[TopOfBook, _Mapping]]] = ..., is_keyframe: _Optional[bool] = ...) -> None: ...
