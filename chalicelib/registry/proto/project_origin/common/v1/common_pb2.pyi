from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Uuid(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...

class FederatedStreamId(_message.Message):
    __slots__ = ("registry", "stream_id")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    registry: str
    stream_id: Uuid
    def __init__(self, registry: _Optional[str] = ..., stream_id: _Optional[_Union[Uuid, _Mapping]] = ...) -> None: ...
