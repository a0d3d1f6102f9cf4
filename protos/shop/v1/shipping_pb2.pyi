from protos.shop.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShipmentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHIPMENT_STATE_UNSPECIFIED: _ClassVar[ShipmentState]
    SHIPMENT_STATE_SCHEDULED: _ClassVar[ShipmentState]
    SHIPMENT_STATE_RELEASED: _ClassVar[ShipmentState]
    SHIPMENT_STATE_CANCELLED: _ClassVar[ShipmentState]
SHIPMENT_STATE_UNSPECIFIED: ShipmentState
SHIPMENT_STATE_SCHEDULED: ShipmentState
SHIPMENT_STATE_RELEASED: ShipmentState
SHIPMENT_STATE_CANCELLED: ShipmentState

class ScheduleShipmentRequest(_message.Message):
    __slots__ = ("order_id", "user_id", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ...) -> None: ...

class ScheduleShipmentResponse(_message.Message):
    __slots__ = ("shipment_id", "operation")
    SHIPMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    shipment_id: str
    operation: _common_pb2.Operation
    def __init__(self, shipment_id: _Optional[str] = ..., operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class ReleaseShipmentRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class ReleaseShipmentResponse(_message.Message):
    __slots__ = ("state", "shipment_id", "operation")
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHIPMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    state: ShipmentState
    shipment_id: str
    operation: _common_pb2.Operation
    def __init__(self, state: _Optional[_Union[ShipmentState, str]] = ..., shipment_id: _Optional[str] = ..., operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...

class GetShipmentRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetShipmentResponse(_message.Message):
    __slots__ = ("order_id", "shipment_id", "state", "items")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SHIPMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    shipment_id: str
    state: ShipmentState
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    def __init__(self, order_id: _Optional[str] = ..., shipment_id: _Optional[str] = ..., state: _Optional[_Union[ShipmentState, str]] = ..., items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ...) -> None: ...
