from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RingEpoch(_message.Message):
    __slots__ = ("epoch", "vnodes", "created_at_epoch_ms", "shards")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_EPOCH_MS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    vnodes: int
    created_at_epoch_ms: int
    shards: _containers.RepeatedCompositeFieldContainer[RingShard]
    def __init__(self, epoch: _Optional[int] = ..., vnodes: _Optional[int] = ..., created_at_epoch_ms: _Optional[int] = ..., shards: _Optional[_Iterable[_Union[RingShard, _Mapping]]] = ...) -> None: ...

class RingShard(_message.Message):
    __slots__ = ("id", "address")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RingHistory(_message.Message):
    __slots__ = ("epochs",)
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    epochs: _containers.RepeatedCompositeFieldContainer[RingEpoch]
    def __init__(self, epochs: _Optional[_Iterable[_Union[RingEpoch, _Mapping]]] = ...) -> None: ...

class GetRingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRingResponse(_message.Message):
    __slots__ = ("history",)
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    history: RingHistory
    def __init__(self, history: _Optional[_Union[RingHistory, _Mapping]] = ...) -> None: ...

class InstallRingRequest(_message.Message):
    __slots__ = ("history",)
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    history: RingHistory
    def __init__(self, history: _Optional[_Union[RingHistory, _Mapping]] = ...) -> None: ...

class InstallRingResponse(_message.Message):
    __slots__ = ("history",)
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    history: RingHistory
    def __init__(self, history: _Optional[_Union[RingHistory, _Mapping]] = ...) -> None: ...
