from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Definition(_message.Message):
    __slots__ = ("hash", "name", "version", "document_json")
    HASH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    hash: str
    name: str
    version: str
    document_json: str
    def __init__(self, hash: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., document_json: _Optional[str] = ...) -> None: ...

class GetDefinitionsRequest(_message.Message):
    __slots__ = ("with_usage",)
    WITH_USAGE_FIELD_NUMBER: _ClassVar[int]
    with_usage: bool
    def __init__(self, with_usage: _Optional[bool] = ...) -> None: ...

class DefinitionsState(_message.Message):
    __slots__ = ("history_version", "definitions", "aliases", "usage", "users")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class UsageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class UsersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: KeyList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[KeyList, _Mapping]] = ...) -> None: ...
    HISTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFINITIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    history_version: int
    definitions: _containers.RepeatedCompositeFieldContainer[Definition]
    aliases: _containers.ScalarMap[str, str]
    usage: _containers.ScalarMap[str, int]
    users: _containers.MessageMap[str, KeyList]
    def __init__(self, history_version: _Optional[int] = ..., definitions: _Optional[_Iterable[_Union[Definition, _Mapping]]] = ..., aliases: _Optional[_Mapping[str, str]] = ..., usage: _Optional[_Mapping[str, int]] = ..., users: _Optional[_Mapping[str, KeyList]] = ...) -> None: ...

class GetDefinitionsResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: DefinitionsState
    def __init__(self, state: _Optional[_Union[DefinitionsState, _Mapping]] = ...) -> None: ...

class InstallDefinitionsResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: DefinitionsState
    def __init__(self, state: _Optional[_Union[DefinitionsState, _Mapping]] = ...) -> None: ...

class KeyList(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class InstallDefinitionsRequest(_message.Message):
    __slots__ = ("history_version", "definitions", "aliases", "drop")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HISTORY_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFINITIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    history_version: int
    definitions: _containers.RepeatedCompositeFieldContainer[Definition]
    aliases: _containers.ScalarMap[str, str]
    drop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, history_version: _Optional[int] = ..., definitions: _Optional[_Iterable[_Union[Definition, _Mapping]]] = ..., aliases: _Optional[_Mapping[str, str]] = ..., drop: _Optional[_Iterable[str]] = ...) -> None: ...

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
