from protos.shop.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    RESERVATION_STATE_HELD: _ClassVar[ReservationState]
    RESERVATION_STATE_SOLD: _ClassVar[ReservationState]
    RESERVATION_STATE_RELEASED: _ClassVar[ReservationState]
RESERVATION_STATE_UNSPECIFIED: ReservationState
RESERVATION_STATE_HELD: ReservationState
RESERVATION_STATE_SOLD: ReservationState
RESERVATION_STATE_RELEASED: ReservationState

class ReserveInventoryRequest(_message.Message):
    __slots__ = ("order_id", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    def __init__(self, order_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ...) -> None: ...

class ReserveInventoryResponse(_message.Message):
    __slots__ = ("reservation_id", "operation")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    operation: _common_pb2.Operation
    def __init__(self, reservation_id: _Optional[str] = ..., operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class ConfirmReservationRequest(_message.Message):
    __slots__ = ("order_id", "reservation_idempotency_key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    reservation_idempotency_key: str
    def __init__(self, order_id: _Optional[str] = ..., reservation_idempotency_key: _Optional[str] = ...) -> None: ...

class ConfirmReservationResponse(_message.Message):
    __slots__ = ("state", "reservation_id", "operation")
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    state: ReservationState
    reservation_id: str
    operation: _common_pb2.Operation
    def __init__(self, state: _Optional[_Union[ReservationState, str]] = ..., reservation_id: _Optional[str] = ..., operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("order_id", "reservation_idempotency_key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    reservation_idempotency_key: str
    def __init__(self, order_id: _Optional[str] = ..., reservation_idempotency_key: _Optional[str] = ...) -> None: ...

class GetReservationResponse(_message.Message):
    __slots__ = ("order_id", "reservation_id", "state", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    reservation_id: str
    state: ReservationState
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    def __init__(self, order_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ..., items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ...) -> None: ...
