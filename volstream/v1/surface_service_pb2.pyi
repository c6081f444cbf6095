import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from volstream.v1 import iv_pb2 as _iv_pb2
from volstream.v1 import surface_pb2 as _surface_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SurfaceSummary(_message.Message):
    __slots__ = ("venue", "currency", "expiries", "revision", "event_time_ns", "publish_time_ns", "age_ms", "fresh")
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EXPIRIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    AGE_MS_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    venue: str
    currency: str
    expiries: int
    revision: int
    event_time_ns: int
    publish_time_ns: int
    age_ms: int
    fresh: bool
    def __init__(self, venue: _Optional[str] = ..., currency: _Optional[str] = ..., expiries: _Optional[int] = ..., revision: _Optional[int] = ..., event_time_ns: _Optional[int] = ..., publish_time_ns: _Optional[int] = ..., age_ms: _Optional[int] = ..., fresh: _Optional[bool] = ...) -> None: ...

class ListSurfacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSurfacesResponse(_message.Message):
    __slots__ = ("surfaces",)
    SURFACES_FIELD_NUMBER: _ClassVar[int]
    surfaces: _containers.RepeatedCompositeFieldContainer[SurfaceSummary]
    def __init__(self, surfaces: _Optional[_Iterable[_Union[SurfaceSummary, _Mapping]]] = ...) -> None: ...

class GetSurfaceRequest(_message.Message):
    __slots__ = ("venue", "currency", "omit_quotes")
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OMIT_QUOTES_FIELD_NUMBER: _ClassVar[int]
    venue: str
    currency: str
    omit_quotes: bool
    def __init__(self, venue: _Optional[str] = ..., currency: _Optional[str] = ..., omit_quotes: _Optional[bool] = ...) -> None: ...

class GetSurfaceResponse(_message.Message):
    __slots__ = ("surface",)
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    surface: _surface_pb2.Surface
    def __init__(self, surface: _Optional[_Union[_surface_pb2.Surface, _Mapping]] = ...) -> None: ...

class GetSmileRequest(_message.Message):
    __slots__ = ("venue", "currency", "expiry")
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    venue: str
    currency: str
    expiry: str
    def __init__(self, venue: _Optional[str] = ..., currency: _Optional[str] = ..., expiry: _Optional[str] = ...) -> None: ...

class GetSmileResponse(_message.Message):
    __slots__ = ("slice", "smile")
    SLICE_FIELD_NUMBER: _ClassVar[int]
    SMILE_FIELD_NUMBER: _ClassVar[int]
    slice: _surface_pb2.ExpirySlice
    smile: _iv_pb2.Smile
    def __init__(self, slice: _Optional[_Union[_surface_pb2.ExpirySlice, _Mapping]] = ..., smile: _Optional[_Union[_iv_pb2.Smile, _Mapping]] = ...) -> None: ...

class GetSurfaceAtRequest(_message.Message):
    __slots__ = ("venue", "currency", "time", "omit_quotes")
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    OMIT_QUOTES_FIELD_NUMBER: _ClassVar[int]
    venue: str
    currency: str
    time: _timestamp_pb2.Timestamp
    omit_quotes: bool
    def __init__(self, venue: _Optional[str] = ..., currency: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., omit_quotes: _Optional[bool] = ...) -> None: ...

class GetSurfaceAtResponse(_message.Message):
    __slots__ = ("surface",)
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    surface: _surface_pb2.Surface
    def __init__(self, surface: _Optional[_Union[_surface_pb2.Surface, _Mapping]] = ...) -> None: ...

class StreamSurfacesRequest(_message.Message):
    __slots__ = ("venues", "currencies", "min_interval_ms", "omit_quotes")
    VENUES_FIELD_NUMBER: _ClassVar[int]
    CURRENCIES_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    OMIT_QUOTES_FIELD_NUMBER: _ClassVar[int]
    venues: _containers.RepeatedScalarFieldContainer[str]
    currencies: _containers.RepeatedScalarFieldContainer[str]
    min_interval_ms: int
    omit_quotes: bool
    def __init__(self, venues: _Optional[_Iterable[str]] = ..., currencies: _Optional[_Iterable[str]] = ..., min_interval_ms: _Optional[int] = ..., omit_quotes: _Optional[bool] = ...) -> None: ...

class StreamSurfacesResponse(_message.Message):
    __slots__ = ("surfaces", "is_snapshot")
    SURFACES_FIELD_NUMBER: _ClassVar[int]
    IS_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    surfaces: _containers.RepeatedCompositeFieldContainer[_surface_pb2.Surface]
    is_snapshot: bool
    def __init__(self, surfaces: _Optional[_Iterable[_Union[_surface_pb2.Surface, _Mapping]]] = ..., is_snapshot: _Optional[bool] = ...) -> None: ...

class GetMetricHistoryRequest(_message.Message):
    __slots__ = ("venue", "currency", "tenor_days", "expiry", "start_time", "end_time", "step")
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TENOR_DAYS_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    venue: str
    currency: str
    tenor_days: int
    expiry: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    step: _duration_pb2.Duration
    def __init__(self, venue: _Optional[str] = ..., currency: _Optional[str] = ..., tenor_days: _Optional[int] = ..., expiry: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class MetricPoint(_message.Message):
    __slots__ = ("time", "revision", "metrics", "forward_usd", "time_to_expiry_years")
    TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_USD_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_EXPIRY_YEARS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    revision: int
    metrics: _surface_pb2.SmileMetrics
    forward_usd: float
    time_to_expiry_years: float
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., metrics: _Optional[_Union[_surface_pb2.SmileMetrics, _Mapping]] = ..., forward_usd: _Optional[float] = ..., time_to_expiry_years: _Optional[float] = ...) -> None: ...

class GetMetricHistoryResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ...) -> None: ...
