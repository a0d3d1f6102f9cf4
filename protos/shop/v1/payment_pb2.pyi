from protos.shop.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChargePaymentRequest(_message.Message):
    __slots__ = ("order_id", "user_id", "payment_token", "amount_cents", "currency")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    payment_token: str
    amount_cents: int
    currency: str
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., payment_token: _Optional[str] = ..., amount_cents: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class ChargePaymentResponse(_message.Message):
    __slots__ = ("charge_id", "operation")
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    charge_id: str
    operation: _common_pb2.Operation
    def __init__(self, charge_id: _Optional[str] = ..., operation: _Optional[_Union[_common_pb2.Operation, _Mapping]] = ...) -> None: ...
