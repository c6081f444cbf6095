from volstream.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SurfaceModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SURFACE_MODEL_UNSPECIFIED: _ClassVar[SurfaceModel]
    SURFACE_MODEL_SVI: _ClassVar[SurfaceModel]
    SURFACE_MODEL_SSVI: _ClassVar[SurfaceModel]
    SURFACE_MODEL_TRUTH: _ClassVar[SurfaceModel]

class DropReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_REASON_UNSPECIFIED: _ClassVar[DropReason]
    DROP_REASON_ONE_SIDED: _ClassVar[DropReason]
    DROP_REASON_CROSSED: _ClassVar[DropReason]
    DROP_REASON_STALE: _ClassVar[DropReason]
    DROP_REASON_ZERO_BID: _ClassVar[DropReason]
    DROP_REASON_MIN_TICK: _ClassVar[DropReason]
    DROP_REASON_OUTLIER: _ClassVar[DropReason]
    DROP_REASON_NO_IV: _ClassVar[DropReason]
    DROP_REASON_BOOK_INVALID: _ClassVar[DropReason]
    DROP_REASON_ITM_DUPLICATE: _ClassVar[DropReason]
    DROP_REASON_BEHIND_FORWARD: _ClassVar[DropReason]

class FitPosition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIT_POSITION_UNSPECIFIED: _ClassVar[FitPosition]
    FIT_POSITION_BELOW_BID: _ClassVar[FitPosition]
    FIT_POSITION_INSIDE: _ClassVar[FitPosition]
    FIT_POSITION_ABOVE_ASK: _ClassVar[FitPosition]
    FIT_POSITION_NO_BAND: _ClassVar[FitPosition]
SURFACE_MODEL_UNSPECIFIED: SurfaceModel
SURFACE_MODEL_SVI: SurfaceModel
SURFACE_MODEL_SSVI: SurfaceModel
SURFACE_MODEL_TRUTH: SurfaceModel
DROP_REASON_UNSPECIFIED: DropReason
DROP_REASON_ONE_SIDED: DropReason
DROP_REASON_CROSSED: DropReason
DROP_REASON_STALE: DropReason
DROP_REASON_ZERO_BID: DropReason
DROP_REASON_MIN_TICK: DropReason
DROP_REASON_OUTLIER: DropReason
DROP_REASON_NO_IV: DropReason
DROP_REASON_BOOK_INVALID: DropReason
DROP_REASON_ITM_DUPLICATE: DropReason
DROP_REASON_BEHIND_FORWARD: DropReason
FIT_POSITION_UNSPECIFIED: FitPosition
FIT_POSITION_BELOW_BID: FitPosition
FIT_POSITION_INSIDE: FitPosition
FIT_POSITION_ABOVE_ASK: FitPosition
FIT_POSITION_NO_BAND: FitPosition

class SviRawParams(_message.Message):
    __slots__ = ("a", "b", "rho", "m", "sigma")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    a: float
    b: float
    rho: float
    m: float
    sigma: float
    def __init__(self, a: _Optional[float] = ..., b: _Optional[float] = ..., rho: _Optional[float] = ..., m: _Optional[float] = ..., sigma: _Optional[float] = ...) -> None: ...

class SviJwParams(_message.Message):
    __slots__ = ("atm_variance", "atm_skew", "put_wing_slope", "call_wing_slope", "min_variance")
    ATM_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    ATM_SKEW_FIELD_NUMBER: _ClassVar[int]
    PUT_WING_SLOPE_FIELD_NUMBER: _ClassVar[int]
    CALL_WING_SLOPE_FIELD_NUMBER: _ClassVar[int]
    MIN_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    atm_variance: float
    atm_skew: float
    put_wing_slope: float
    call_wing_slope: float
    min_variance: float
    def __init__(self, atm_variance: _Optional[float] = ..., atm_skew: _Optional[float] = ..., put_wing_slope: _Optional[float] = ..., call_wing_slope: _Optional[float] = ..., min_variance: _Optional[float] = ...) -> None: ...

class SmileMetrics(_message.Message):
    __slots__ = ("atm_vol", "rr25", "bf25", "rr10", "bf10", "delta_convention")
    ATM_VOL_FIELD_NUMBER: _ClassVar[int]
    RR25_FIELD_NUMBER: _ClassVar[int]
    BF25_FIELD_NUMBER: _ClassVar[int]
    RR10_FIELD_NUMBER: _ClassVar[int]
    BF10_FIELD_NUMBER: _ClassVar[int]
    DELTA_CONVENTION_FIELD_NUMBER: _ClassVar[int]
    atm_vol: float
    rr25: float
    bf25: float
    rr10: float
    bf10: float
    delta_convention: _common_pb2.DeltaConvention
    def __init__(self, atm_vol: _Optional[float] = ..., rr25: _Optional[float] = ..., bf25: _Optional[float] = ..., rr10: _Optional[float] = ..., bf10: _Optional[float] = ..., delta_convention: _Optional[_Union[_common_pb2.DeltaConvention, str]] = ...) -> None: ...

class QuoteFit(_message.Message):
    __slots__ = ("symbol", "venue", "option_kind", "strike_usd", "log_moneyness", "bid_iv", "ask_iv", "mid_iv", "fitted_iv", "residual_bp", "position", "used", "drop_reason", "weight")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    OPTION_KIND_FIELD_NUMBER: _ClassVar[int]
    STRIKE_USD_FIELD_NUMBER: _ClassVar[int]
    LOG_MONEYNESS_FIELD_NUMBER: _ClassVar[int]
    BID_IV_FIELD_NUMBER: _ClassVar[int]
    ASK_IV_FIELD_NUMBER: _ClassVar[int]
    MID_IV_FIELD_NUMBER: _ClassVar[int]
    FITTED_IV_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_BP_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    venue: str
    option_kind: _common_pb2.OptionKind
    strike_usd: float
    log_moneyness: float
    bid_iv: float
    ask_iv: float
    mid_iv: float
    fitted_iv: float
    residual_bp: float
    position: FitPosition
    used: bool
    drop_reason: DropReason
    weight: float
    def __init__(self, symbol: _Optional[str] = ..., venue: _Optional[str] = ..., option_kind: _Optional[_Union[_common_pb2.OptionKind, str]] = ..., strike_usd: _Optional[float] = ..., log_moneyness: _Optional[float] = ..., bid_iv: _Optional[float] = ..., ask_iv: _Optional[float] = ..., mid_iv: _Optional[float] = ..., fitted_iv: _Optional[float] = ..., residual_bp: _Optional[float] = ..., position: _Optional[_Union[FitPosition, str]] = ..., used: _Optional[bool] = ..., drop_reason: _Optional[_Union[DropReason, str]] = ..., weight: _Optional[float] = ...) -> None: ...

class FitDiagnostics(_message.Message):
    __slots__ = ("quotes_used", "quotes_dropped", "rmse_bp", "max_abs_residual_bp", "min_g", "butterfly_arbitrage_free", "calendar_arbitrage_free", "repaired", "repair_method", "fit_time_ms", "warm_start")
    QUOTES_USED_FIELD_NUMBER: _ClassVar[int]
    QUOTES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    RMSE_BP_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_RESIDUAL_BP_FIELD_NUMBER: _ClassVar[int]
    MIN_G_FIELD_NUMBER: _ClassVar[int]
    BUTTERFLY_ARBITRAGE_FREE_FIELD_NUMBER: _ClassVar[int]
    CALENDAR_ARBITRAGE_FREE_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    REPAIR_METHOD_FIELD_NUMBER: _ClassVar[int]
    FIT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    WARM_START_FIELD_NUMBER: _ClassVar[int]
    quotes_used: int
    quotes_dropped: int
    rmse_bp: float
    max_abs_residual_bp: float
    min_g: float
    butterfly_arbitrage_free: bool
    calendar_arbitrage_free: bool
    repaired: bool
    repair_method: str
    fit_time_ms: float
    warm_start: bool
    def __init__(self, quotes_used: _Optional[int] = ..., quotes_dropped: _Optional[int] = ..., rmse_bp: _Optional[float] = ..., max_abs_residual_bp: _Optional[float] = ..., min_g: _Optional[float] = ..., butterfly_arbitrage_free: _Optional[bool] = ..., calendar_arbitrage_free: _Optional[bool] = ..., repaired: _Optional[bool] = ..., repair_method: _Optional[str] = ..., fit_time_ms: _Optional[float] = ..., warm_start: _Optional[bool] = ...) -> None: ...

class ExpirySlice(_message.Message):
    __slots__ = ("expiry_time_ns", "expiry_label", "time_to_expiry_years", "forward_usd", "forward_source", "raw", "jw", "metrics", "diagnostics", "quotes")
    EXPIRY_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    EXPIRY_LABEL_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_EXPIRY_YEARS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_USD_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    JW_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    QUOTES_FIELD_NUMBER: _ClassVar[int]
    expiry_time_ns: int
    expiry_label: str
    time_to_expiry_years: float
    forward_usd: float
    forward_source: _common_pb2.ForwardSource
    raw: SviRawParams
    jw: SviJwParams
    metrics: SmileMetrics
    diagnostics: FitDiagnostics
    quotes: _containers.RepeatedCompositeFieldContainer[QuoteFit]
    def __init__(self, expiry_time_ns: _Optional[int] = ..., expiry_label: _Optional[str] = ..., time_to_expiry_years: _Optional[float] = ..., forward_usd: _Optional[float] = ..., forward_source: _Optional[_Union[_common_pb2.ForwardSource, str]] = ..., raw: _Optional[_Union[SviRawParams, _Mapping]] = ..., jw: _Optional[_Union[SviJwParams, _Mapping]] = ..., metrics: _Optional[_Union[SmileMetrics, _Mapping]] = ..., diagnostics: _Optional[_Union[FitDiagnostics, _Mapping]] = ..., quotes: _Optional[_Iterable[_Union[QuoteFit, _Mapping]]] = ...) -> None: ...

class DeltaNode(_message.Message):
    __slots__ = ("label", "delta", "vol", "strike_usd")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    VOL_FIELD_NUMBER: _ClassVar[int]
    STRIKE_USD_FIELD_NUMBER: _ClassVar[int]
    label: str
    delta: float
    vol: float
    strike_usd: float
    def __init__(self, label: _Optional[str] = ..., delta: _Optional[float] = ..., vol: _Optional[float] = ..., strike_usd: _Optional[float] = ...) -> None: ...

class TenorPoint(_message.Message):
    __slots__ = ("tenor_days", "available", "time_to_expiry_years", "forward_usd", "metrics", "nodes")
    TENOR_DAYS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_EXPIRY_YEARS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_USD_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    tenor_days: int
    available: bool
    time_to_expiry_years: float
    forward_usd: float
    metrics: SmileMetrics
    nodes: _containers.RepeatedCompositeFieldContainer[DeltaNode]
    def __init__(self, tenor_days: _Optional[int] = ..., available: _Optional[bool] = ..., time_to_expiry_years: _Optional[float] = ..., forward_usd: _Optional[float] = ..., metrics: _Optional[_Union[SmileMetrics, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[DeltaNode, _Mapping]]] = ...) -> None: ...

class VenueWeight(_message.Message):
    __slots__ = ("venue", "weight", "quotes_used")
    VENUE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    QUOTES_USED_FIELD_NUMBER: _ClassVar[int]
    venue: str
    weight: float
    quotes_used: int
    def __init__(self, venue: _Optional[str] = ..., weight: _Optional[float] = ..., quotes_used: _Optional[int] = ...) -> None: ...

class Surface(_message.Message):
    __slots__ = ("header", "venue", "currency", "model", "index_price_usd", "slices", "tenors", "vol_index_30d", "venue_weights", "revision", "delta_convention")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_PRICE_USD_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    TENORS_FIELD_NUMBER: _ClassVar[int]
    VOL_INDEX_30D_FIELD_NUMBER: _ClassVar[int]
    VENUE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DELTA_CONVENTION_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.EventHeader
    venue: str
    currency: str
    model: SurfaceModel
    index_price_usd: float
    slices: _containers.RepeatedCompositeFieldContainer[ExpirySlice]
    tenors: _containers.RepeatedCompositeFieldContainer[TenorPoint]
    vol_index_30d: float
    venue_weights: _containers.RepeatedCompositeFieldContainer[VenueWeight]
    revision: int
    delta_convention: _common_pb2.DeltaConvention
    def __init__(self, header: _Optional[_Union[_common_pb2.EventHeader, _Mapping]] = ..., venue: _Optional[str] = ..., currency: _Optional[str] = ..., model: _Optional[_Union[SurfaceModel, str]] = ..., index_price_usd: _Optional[float] = ..., slices: _Optional[_Iterable[_Union[ExpirySlice, _Mapping]]] = ..., tenors: _Optional[_Iterable[_Union[TenorPoint, _Mapping]]] = ..., vol_index_30d: _Optional[float] = ..., venue_weights: _Optional[_Iterable[_Union[VenueWeight, _Mapping]]] = ..., revision: _Optional[int] = ..., delta_convention: _Optional[_Union[_common_pb2.DeltaConvention, str]] = ...) -> None: ...
