from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OptionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTION_KIND_UNSPECIFIED: _ClassVar[OptionKind]
    OPTION_KIND_CALL: _ClassVar[OptionKind]
    OPTION_KIND_PUT: _ClassVar[OptionKind]

class ForwardSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORWARD_SOURCE_UNSPECIFIED: _ClassVar[ForwardSource]
    FORWARD_SOURCE_VENUE: _ClassVar[ForwardSource]
    FORWARD_SOURCE_FUTURE: _ClassVar[ForwardSource]
    FORWARD_SOURCE_PUT_CALL_PARITY: _ClassVar[ForwardSource]
    FORWARD_SOURCE_INDEX: _ClassVar[ForwardSource]
    FORWARD_SOURCE_INTERPOLATED: _ClassVar[ForwardSource]
    FORWARD_SOURCE_TRUTH: _ClassVar[ForwardSource]

class DeltaConvention(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DELTA_CONVENTION_UNSPECIFIED: _ClassVar[DeltaConvention]
    DELTA_CONVENTION_FORWARD: _ClassVar[DeltaConvention]
    DELTA_CONVENTION_PREMIUM_ADJUSTED: _ClassVar[DeltaConvention]
OPTION_KIND_UNSPECIFIED: OptionKind
OPTION_KIND_CALL: OptionKind
OPTION_KIND_PUT: OptionKind
FORWARD_SOURCE_UNSPECIFIED: ForwardSource
FORWARD_SOURCE_VENUE: ForwardSource
FORWARD_SOURCE_FUTURE: ForwardSource
FORWARD_SOURCE_PUT_CALL_PARITY: ForwardSource
FORWARD_SOURCE_INDEX: ForwardSource
FORWARD_SOURCE_INTERPOLATED: ForwardSource
FORWARD_SOURCE_TRUTH: ForwardSource
DELTA_CONVENTION_UNSPECIFIED: DeltaConvention
DELTA_CONVENTION_FORWARD: DeltaConvention
DELTA_CONVENTION_PREMIUM_ADJUSTED: DeltaConvention

class EventHeader(_message.Message):
    __slots__ = ("event_time_ns", "receive_time_ns", "publish_time_ns", "source", "sequence")
    EVENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    event_time_ns: int
    receive_time_ns: int
    publish_time_ns: int
    source: str
    sequence: int
    def __init__(self, event_time_ns: _Optional[int] = ..., receive_time_ns: _Optional[int] = ..., publish_time_ns: _Optional[int] = ..., source: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...
