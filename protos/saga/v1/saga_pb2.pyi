import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlaceOrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLACE_ORDER_STATUS_UNSPECIFIED: _ClassVar[PlaceOrderStatus]
    SUCCESS: _ClassVar[PlaceOrderStatus]
    FAILED: _ClassVar[PlaceOrderStatus]
    PENDING: _ClassVar[PlaceOrderStatus]

class SagaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAGA_STATE_UNSPECIFIED: _ClassVar[SagaState]
    SAGA_STATE_RUNNING: _ClassVar[SagaState]
    SAGA_STATE_COMPENSATING: _ClassVar[SagaState]
    SAGA_STATE_SUCCEEDED: _ClassVar[SagaState]
    SAGA_STATE_FAILED: _ClassVar[SagaState]
    SAGA_STATE_DEAD_LETTERED: _ClassVar[SagaState]
    SAGA_STATE_RESOLVED: _ClassVar[SagaState]

class Step(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_UNSPECIFIED: _ClassVar[Step]
    STEP_CREATE_ORDER: _ClassVar[Step]
    STEP_RESERVE_INVENTORY: _ClassVar[Step]
    STEP_PROCESS_PAYMENT: _ClassVar[Step]
    STEP_SCHEDULE_SHIPMENT: _ClassVar[Step]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_FORWARD: _ClassVar[Action]
    ACTION_COMPENSATE: _ClassVar[Action]

class StepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATUS_UNSPECIFIED: _ClassVar[StepStatus]
    STEP_STATUS_PENDING: _ClassVar[StepStatus]
    STEP_STATUS_IN_FLIGHT: _ClassVar[StepStatus]
    STEP_STATUS_SUCCEEDED: _ClassVar[StepStatus]
    STEP_STATUS_FAILED: _ClassVar[StepStatus]
    STEP_STATUS_COMPENSATING: _ClassVar[StepStatus]
    STEP_STATUS_COMPENSATED: _ClassVar[StepStatus]
    STEP_STATUS_COMPENSATION_FAILED: _ClassVar[StepStatus]
PLACE_ORDER_STATUS_UNSPECIFIED: PlaceOrderStatus
SUCCESS: PlaceOrderStatus
FAILED: PlaceOrderStatus
PENDING: PlaceOrderStatus
SAGA_STATE_UNSPECIFIED: SagaState
SAGA_STATE_RUNNING: SagaState
SAGA_STATE_COMPENSATING: SagaState
SAGA_STATE_SUCCEEDED: SagaState
SAGA_STATE_FAILED: SagaState
SAGA_STATE_DEAD_LETTERED: SagaState
SAGA_STATE_RESOLVED: SagaState
STEP_UNSPECIFIED: Step
STEP_CREATE_ORDER: Step
STEP_RESERVE_INVENTORY: Step
STEP_PROCESS_PAYMENT: Step
STEP_SCHEDULE_SHIPMENT: Step
ACTION_UNSPECIFIED: Action
ACTION_FORWARD: Action
ACTION_COMPENSATE: Action
STEP_STATUS_UNSPECIFIED: StepStatus
STEP_STATUS_PENDING: StepStatus
STEP_STATUS_IN_FLIGHT: StepStatus
STEP_STATUS_SUCCEEDED: StepStatus
STEP_STATUS_FAILED: StepStatus
STEP_STATUS_COMPENSATING: StepStatus
STEP_STATUS_COMPENSATED: StepStatus
STEP_STATUS_COMPENSATION_FAILED: StepStatus

class Item(_message.Message):
    __slots__ = ("item_id", "quantity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    quantity: int
    def __init__(self, item_id: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class PaymentInfo(_message.Message):
    __slots__ = ("payment_token", "amount_cents", "currency")
    PAYMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    payment_token: str
    amount_cents: int
    currency: str
    def __init__(self, payment_token: _Optional[str] = ..., amount_cents: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class PlaceOrderRequest(_message.Message):
    __slots__ = ("order_id", "user_id", "items", "payment_info", "ttl_ms", "no_wait")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_INFO_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    user_id: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    payment_info: PaymentInfo
    ttl_ms: int
    no_wait: bool
    def __init__(self, order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., payment_info: _Optional[_Union[PaymentInfo, _Mapping]] = ..., ttl_ms: _Optional[int] = ..., no_wait: _Optional[bool] = ...) -> None: ...

class StartSagaRequest(_message.Message):
    __slots__ = ("saga_type", "key", "input", "ttl_ms", "no_wait")
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    saga_type: str
    key: str
    input: _any_pb2.Any
    ttl_ms: int
    no_wait: bool
    def __init__(self, saga_type: _Optional[str] = ..., key: _Optional[str] = ..., input: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., ttl_ms: _Optional[int] = ..., no_wait: _Optional[bool] = ...) -> None: ...

class StartSagaResponse(_message.Message):
    __slots__ = ("saga_type", "key", "saga_id", "state", "error_message", "definition_hash", "definition_version")
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_HASH_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    saga_type: str
    key: str
    saga_id: str
    state: SagaState
    error_message: str
    definition_hash: str
    definition_version: str
    def __init__(self, saga_type: _Optional[str] = ..., key: _Optional[str] = ..., saga_id: _Optional[str] = ..., state: _Optional[_Union[SagaState, str]] = ..., error_message: _Optional[str] = ..., definition_hash: _Optional[str] = ..., definition_version: _Optional[str] = ...) -> None: ...

class PlaceOrderResponse(_message.Message):
    __slots__ = ("order_id", "status", "error_message", "saga_id", "state")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    status: PlaceOrderStatus
    error_message: str
    saga_id: str
    state: SagaState
    def __init__(self, order_id: _Optional[str] = ..., status: _Optional[_Union[PlaceOrderStatus, str]] = ..., error_message: _Optional[str] = ..., saga_id: _Optional[str] = ..., state: _Optional[_Union[SagaState, str]] = ...) -> None: ...

class StepInfo(_message.Message):
    __slots__ = ("step", "status", "forward_attempts", "compensate_attempts", "last_error", "started_at", "updated_at", "waiting", "waiting_action", "waiting_since", "next_poll_at", "step_id", "kind")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    COMPENSATE_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    WAITING_ACTION_FIELD_NUMBER: _ClassVar[int]
    WAITING_SINCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_POLL_AT_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    step: Step
    status: StepStatus
    forward_attempts: int
    compensate_attempts: int
    last_error: str
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    waiting: bool
    waiting_action: Action
    waiting_since: _timestamp_pb2.Timestamp
    next_poll_at: _timestamp_pb2.Timestamp
    step_id: str
    kind: str
    def __init__(self, step: _Optional[_Union[Step, str]] = ..., status: _Optional[_Union[StepStatus, str]] = ..., forward_attempts: _Optional[int] = ..., compensate_attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., waiting: _Optional[bool] = ..., waiting_action: _Optional[_Union[Action, str]] = ..., waiting_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_poll_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_id: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class SagaEvent(_message.Message):
    __slots__ = ("seq", "at", "kind", "step", "action", "attempt", "code", "detail", "state", "next_attempt_at", "step_id")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: _timestamp_pb2.Timestamp
    kind: str
    step: Step
    action: Action
    attempt: int
    code: str
    detail: str
    state: SagaState
    next_attempt_at: _timestamp_pb2.Timestamp
    step_id: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., step: _Optional[_Union[Step, str]] = ..., action: _Optional[_Union[Action, str]] = ..., attempt: _Optional[int] = ..., code: _Optional[str] = ..., detail: _Optional[str] = ..., state: _Optional[_Union[SagaState, str]] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step_id: _Optional[str] = ...) -> None: ...

class Saga(_message.Message):
    __slots__ = ("saga_id", "order_id", "user_id", "state", "steps", "items", "created_at", "updated_at", "deadline", "last_error", "shard_id", "events", "parked_note", "saga_type", "key", "definition_hash", "definition_version")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PARKED_NOTE_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_HASH_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    order_id: str
    user_id: str
    state: SagaState
    steps: _containers.RepeatedCompositeFieldContainer[StepInfo]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    last_error: str
    shard_id: str
    events: _containers.RepeatedCompositeFieldContainer[SagaEvent]
    parked_note: str
    saga_type: str
    key: str
    definition_hash: str
    definition_version: str
    def __init__(self, saga_id: _Optional[str] = ..., order_id: _Optional[str] = ..., user_id: _Optional[str] = ..., state: _Optional[_Union[SagaState, str]] = ..., steps: _Optional[_Iterable[_Union[StepInfo, _Mapping]]] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., shard_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[SagaEvent, _Mapping]]] = ..., parked_note: _Optional[str] = ..., saga_type: _Optional[str] = ..., key: _Optional[str] = ..., definition_hash: _Optional[str] = ..., definition_version: _Optional[str] = ...) -> None: ...

class GetSagaRequest(_message.Message):
    __slots__ = ("order_id", "include_events", "saga_type", "key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    include_events: bool
    saga_type: str
    key: str
    def __init__(self, order_id: _Optional[str] = ..., include_events: _Optional[bool] = ..., saga_type: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ListSagasRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: SagaState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[SagaState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSagasResponse(_message.Message):
    __slots__ = ("sagas", "next_page_token")
    SAGAS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sagas: _containers.RepeatedCompositeFieldContainer[Saga]
    next_page_token: str
    def __init__(self, sagas: _Optional[_Iterable[_Union[Saga, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchSagaRequest(_message.Message):
    __slots__ = ("order_id", "saga_type", "key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    saga_type: str
    key: str
    def __init__(self, order_id: _Optional[str] = ..., saga_type: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class SagaUpdate(_message.Message):
    __slots__ = ("saga", "event")
    SAGA_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    saga: Saga
    event: SagaEvent
    def __init__(self, saga: _Optional[_Union[Saga, _Mapping]] = ..., event: _Optional[_Union[SagaEvent, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("saga_id", "order_id", "step", "last_error", "attempts", "parked_at", "closed", "closed_note", "shard_id", "step_id", "saga_type", "key", "action")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PARKED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    CLOSED_NOTE_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    order_id: str
    step: Step
    last_error: str
    attempts: int
    parked_at: _timestamp_pb2.Timestamp
    closed: bool
    closed_note: str
    shard_id: str
    step_id: str
    saga_type: str
    key: str
    action: Action
    def __init__(self, saga_id: _Optional[str] = ..., order_id: _Optional[str] = ..., step: _Optional[_Union[Step, str]] = ..., last_error: _Optional[str] = ..., attempts: _Optional[int] = ..., parked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., closed: _Optional[bool] = ..., closed_note: _Optional[str] = ..., shard_id: _Optional[str] = ..., step_id: _Optional[str] = ..., saga_type: _Optional[str] = ..., key: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("step", "include_closed", "page_size", "page_token")
    STEP_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CLOSED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    step: Step
    include_closed: bool
    page_size: int
    page_token: str
    def __init__(self, step: _Optional[_Union[Step, str]] = ..., include_closed: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters", "next_page_token")
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    next_page_token: str
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RetryDeadLetterRequest(_message.Message):
    __slots__ = ("order_id", "all", "step", "reason", "dry_run", "saga_type", "key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    all: bool
    step: Step
    reason: str
    dry_run: bool
    saga_type: str
    key: str
    def __init__(self, order_id: _Optional[str] = ..., all: _Optional[bool] = ..., step: _Optional[_Union[Step, str]] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ..., saga_type: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class RetryDeadLetterResponse(_message.Message):
    __slots__ = ("order_ids", "previews")
    ORDER_IDS_FIELD_NUMBER: _ClassVar[int]
    PREVIEWS_FIELD_NUMBER: _ClassVar[int]
    order_ids: _containers.RepeatedScalarFieldContainer[str]
    previews: _containers.RepeatedCompositeFieldContainer[SagaPreview]
    def __init__(self, order_ids: _Optional[_Iterable[str]] = ..., previews: _Optional[_Iterable[_Union[SagaPreview, _Mapping]]] = ...) -> None: ...

class ResolveDeadLetterRequest(_message.Message):
    __slots__ = ("order_id", "reason", "dry_run", "saga_type", "key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    reason: str
    dry_run: bool
    saga_type: str
    key: str
    def __init__(self, order_id: _Optional[str] = ..., reason: _Optional[str] = ..., dry_run: _Optional[bool] = ..., saga_type: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ResolveDeadLetterResponse(_message.Message):
    __slots__ = ("saga", "preview")
    SAGA_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    saga: Saga
    preview: SagaPreview
    def __init__(self, saga: _Optional[_Union[Saga, _Mapping]] = ..., preview: _Optional[_Union[SagaPreview, _Mapping]] = ...) -> None: ...

class ListDefinitionsRequest(_message.Message):
    __slots__ = ("include_documents",)
    INCLUDE_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    include_documents: bool
    def __init__(self, include_documents: _Optional[bool] = ...) -> None: ...

class ListDefinitionsResponse(_message.Message):
    __slots__ = ("definitions",)
    DEFINITIONS_FIELD_NUMBER: _ClassVar[int]
    definitions: _containers.RepeatedCompositeFieldContainer[DefinitionVersion]
    def __init__(self, definitions: _Optional[_Iterable[_Union[DefinitionVersion, _Mapping]]] = ...) -> None: ...

class DefinitionVersion(_message.Message):
    __slots__ = ("name", "version", "hash", "active", "sagas", "document_json", "step_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SAGAS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    STEP_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    hash: str
    active: bool
    sagas: int
    document_json: str
    step_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., hash: _Optional[str] = ..., active: _Optional[bool] = ..., sagas: _Optional[int] = ..., document_json: _Optional[str] = ..., step_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SagaPreview(_message.Message):
    __slots__ = ("order_id", "saga_id", "shard_id", "state_now", "end_state", "calls", "saga_type", "key")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    SHARD_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_NOW_FIELD_NUMBER: _ClassVar[int]
    END_STATE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    SAGA_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    saga_id: str
    shard_id: str
    state_now: SagaState
    end_state: SagaState
    calls: _containers.RepeatedCompositeFieldContainer[PlannedCall]
    saga_type: str
    key: str
    def __init__(self, order_id: _Optional[str] = ..., saga_id: _Optional[str] = ..., shard_id: _Optional[str] = ..., state_now: _Optional[_Union[SagaState, str]] = ..., end_state: _Optional[_Union[SagaState, str]] = ..., calls: _Optional[_Iterable[_Union[PlannedCall, _Mapping]]] = ..., saga_type: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class PlannedCall(_message.Message):
    __slots__ = ("step", "action", "service", "method", "idempotency_key", "attempt", "retry_of_earlier_attempt", "asks_first", "step_id")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RETRY_OF_EARLIER_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIRST_FIELD_NUMBER: _ClassVar[int]
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    step: Step
    action: Action
    service: str
    method: str
    idempotency_key: str
    attempt: int
    retry_of_earlier_attempt: bool
    asks_first: bool
    step_id: str
    def __init__(self, step: _Optional[_Union[Step, str]] = ..., action: _Optional[_Union[Action, str]] = ..., service: _Optional[str] = ..., method: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., attempt: _Optional[int] = ..., retry_of_earlier_attempt: _Optional[bool] = ..., asks_first: _Optional[bool] = ..., step_id: _Optional[str] = ...) -> None: ...
