from protos.shop.v1 import inventory_pb2 as _inventory_pb2
from protos.shop.v1 import order_pb2 as _order_pb2
from protos.shop.v1 import shipping_pb2 as _shipping_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FaultRule(_message.Message):
    __slots__ = ("method", "order_id_prefix", "error_rate", "error_code", "latency_ms", "hang_rate", "apply_then_fail_rate")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    HANG_RATE_FIELD_NUMBER: _ClassVar[int]
    APPLY_THEN_FAIL_RATE_FIELD_NUMBER: _ClassVar[int]
    method: str
    order_id_prefix: str
    error_rate: float
    error_code: str
    latency_ms: int
    hang_rate: float
    apply_then_fail_rate: float
    def __init__(self, method: _Optional[str] = ..., order_id_prefix: _Optional[str] = ..., error_rate: _Optional[float] = ..., error_code: _Optional[str] = ..., latency_ms: _Optional[int] = ..., hang_rate: _Optional[float] = ..., apply_then_fail_rate: _Optional[float] = ...) -> None: ...

class SetFaultsRequest(_message.Message):
    __slots__ = ("rules", "seed")
    RULES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[FaultRule]
    seed: int
    def __init__(self, rules: _Optional[_Iterable[_Union[FaultRule, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class SetFaultsResponse(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: int
    def __init__(self, rules: _Optional[int] = ...) -> None: ...

class ClearFaultsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearFaultsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetLedgerRequest(_message.Message):
    __slots__ = ("order_id", "order_ids")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_IDS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    order_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, order_id: _Optional[str] = ..., order_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyRecord(_message.Message):
    __slots__ = ("service", "method", "idempotency_key", "applied_count", "tombstoned", "code", "in_progress")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONED_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    service: str
    method: str
    idempotency_key: str
    applied_count: int
    tombstoned: bool
    code: str
    in_progress: bool
    def __init__(self, service: _Optional[str] = ..., method: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., applied_count: _Optional[int] = ..., tombstoned: _Optional[bool] = ..., code: _Optional[str] = ..., in_progress: _Optional[bool] = ...) -> None: ...

class OrderLedger(_message.Message):
    __slots__ = ("order_id", "order_created", "order_cancelled", "reserved_net", "charged_cents", "refunded_cents", "shipment_scheduled", "shipment_cancelled", "keys", "points", "order_state", "reservation_state", "shipment_state")
    class ReservedNetEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_CREATED_FIELD_NUMBER: _ClassVar[int]
    ORDER_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_NET_FIELD_NUMBER: _ClassVar[int]
    CHARGED_CENTS_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_CENTS_FIELD_NUMBER: _ClassVar[int]
    SHIPMENT_SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    SHIPMENT_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    ORDER_STATE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_STATE_FIELD_NUMBER: _ClassVar[int]
    SHIPMENT_STATE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    order_created: bool
    order_cancelled: bool
    reserved_net: _containers.ScalarMap[str, int]
    charged_cents: int
    refunded_cents: int
    shipment_scheduled: bool
    shipment_cancelled: bool
    keys: _containers.RepeatedCompositeFieldContainer[KeyRecord]
    points: _containers.RepeatedCompositeFieldContainer[PointsLedger]
    order_state: _order_pb2.OrderState
    reservation_state: _inventory_pb2.ReservationState
    shipment_state: _shipping_pb2.ShipmentState
    def __init__(self, order_id: _Optional[str] = ..., order_created: _Optional[bool] = ..., order_cancelled: _Optional[bool] = ..., reserved_net: _Optional[_Mapping[str, int]] = ..., charged_cents: _Optional[int] = ..., refunded_cents: _Optional[int] = ..., shipment_scheduled: _Optional[bool] = ..., shipment_cancelled: _Optional[bool] = ..., keys: _Optional[_Iterable[_Union[KeyRecord, _Mapping]]] = ..., points: _Optional[_Iterable[_Union[PointsLedger, _Mapping]]] = ..., order_state: _Optional[_Union[_order_pb2.OrderState, str]] = ..., reservation_state: _Optional[_Union[_inventory_pb2.ReservationState, str]] = ..., shipment_state: _Optional[_Union[_shipping_pb2.ShipmentState, str]] = ...) -> None: ...

class PointsLedger(_message.Message):
    __slots__ = ("user_id", "awarded", "revoked", "balance")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AWARDED_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    awarded: int
    revoked: int
    balance: int
    def __init__(self, user_id: _Optional[str] = ..., awarded: _Optional[int] = ..., revoked: _Optional[int] = ..., balance: _Optional[int] = ...) -> None: ...

class GetLedgerResponse(_message.Message):
    __slots__ = ("ledgers",)
    LEDGERS_FIELD_NUMBER: _ClassVar[int]
    ledgers: _containers.RepeatedCompositeFieldContainer[OrderLedger]
    def __init__(self, ledgers: _Optional[_Iterable[_Union[OrderLedger, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MethodStat(_message.Message):
    __slots__ = ("method", "code", "count")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    method: str
    code: str
    count: int
    def __init__(self, method: _Optional[str] = ..., code: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class OperationStat(_message.Message):
    __slots__ = ("method", "accepted", "completed", "cancelled")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    method: str
    accepted: int
    completed: int
    cancelled: int
    def __init__(self, method: _Optional[str] = ..., accepted: _Optional[int] = ..., completed: _Optional[int] = ..., cancelled: _Optional[int] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("stats", "operations")
    STATS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[MethodStat]
    operations: _containers.RepeatedCompositeFieldContainer[OperationStat]
    def __init__(self, stats: _Optional[_Iterable[_Union[MethodStat, _Mapping]]] = ..., operations: _Optional[_Iterable[_Union[OperationStat, _Mapping]]] = ...) -> None: ...

class StockLevel(_message.Message):
    __slots__ = ("item_id", "quantity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    quantity: int
    def __init__(self, item_id: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class SetStockRequest(_message.Message):
    __slots__ = ("levels",)
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    levels: _containers.RepeatedCompositeFieldContainer[StockLevel]
    def __init__(self, levels: _Optional[_Iterable[_Union[StockLevel, _Mapping]]] = ...) -> None: ...

class SetStockResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStockRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStockResponse(_message.Message):
    __slots__ = ("levels",)
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    levels: _containers.RepeatedCompositeFieldContainer[StockLevel]
    def __init__(self, levels: _Optional[_Iterable[_Union[StockLevel, _Mapping]]] = ...) -> None: ...
