from protos.shop.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AwardPointsRequest(_message.Message):
    __slots__ = ("order_id", "user_id", "points")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    points: int
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., points: _Optional[int] = ...) -> None: ...

class AwardPointsResponse(_message.Message):
    __slots__ = ("award_id", "balance", "operation")
    AWARD_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    award_id: str
    balance: int
    operation: _common_pb2.Operation
    def __init__(self, award_id: _Optional[str] = ..., balance: _Optional[int] = ..., operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...
