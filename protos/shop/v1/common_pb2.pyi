from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("undone", "tombstoned")
    UNDONE_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONED_FIELD_NUMBER: _ClassVar[int]
    undone: bool
    tombstoned: bool
    def __init__(self, undone: _Optional[bool] = ..., tombstoned: _Optional[bool] = ...) -> None: ...
