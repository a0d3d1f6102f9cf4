from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OperationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_STATE_UNSPECIFIED: _ClassVar[OperationState]
    OPERATION_STATE_UNKNOWN: _ClassVar[OperationState]
    OPERATION_STATE_NOT_FOUND: _ClassVar[OperationState]
    OPERATION_STATE_IN_PROGRESS: _ClassVar[OperationState]
    OPERATION_STATE_DONE: _ClassVar[OperationState]
OPERATION_STATE_UNSPECIFIED: OperationState
OPERATION_STATE_UNKNOWN: OperationState
OPERATION_STATE_NOT_FOUND: OperationState
OPERATION_STATE_IN_PROGRESS: OperationState
OPERATION_STATE_DONE: OperationState

class Item(_message.Message):
    __slots__ = ("item_id", "quantity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    quantity: int
    def __init__(self, item_id: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class CompensationRequest(_message.Message):
    __slots__ = ("order_id", "forward_idempotency_key", "reason")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    FORWARD_IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    forward_idempotency_key: str
    reason: str
    def __init__(self, order_id: _Optional[str] = ..., forward_idempotency_key: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CompensationResponse(_message.Message):
    __slots__ = ("undone", "tombstoned", "operation")
    UNDONE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONED_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    undone: bool
    tombstoned: bool
    operation: Operation
    def __init__(self, undone: _Optional[bool] = ..., tombstoned: _Optional[bool] = ..., operation: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("name", "done", "poll_after_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    POLL_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    done: bool
    poll_after_ms: int
    def __init__(self, name: _Optional[str] = ..., done: _Optional[bool] = ..., poll_after_ms: _Optional[int] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("idempotency_key",)
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    def __init__(self, idempotency_key: _Optional[str] = ...) -> None: ...

class GetOperationResponse(_message.Message):
    __slots__ = ("state", "code", "message", "response", "poll_after_ms", "method")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    POLL_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    state: OperationState
    code: str
    message: str
    response: _any_pb2.Any
    poll_after_ms: int
    method: str
    def __init__(self, state: _Optional[_Union[OperationState, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., response: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., poll_after_ms: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...
