from chalicelib.registry.proto.project_origin.common.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClaimIntentRequest(_message.Message):
    __slots__ = ("certificate_id", "quantity", "random_r")
    CERTIFICATE_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    RANDOM_R_FIELD_NUMBER: _ClassVar[int]
    certificate_id: _common_pb2.FederatedStreamId
    quantity: int
    random_r: bytes
    def __init__(self, certificate_id: _Optional[_Union[_common_pb2.FederatedStreamId, _Mapping]] = ..., quantity: _Optional[int] = ..., random_r: _Optional[bytes] = ...) -> None: ...

class ClaimIntentResponse(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class ClaimIntent(_message.Message):
    __slots__ = ("certificate_id", "commitment")
    CERTIFICATE_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    certificate_id: _common_pb2.FederatedStreamId
    commitment: bytes
    def __init__(self, certificate_id: _Optional[_Union[_common_pb2.FederatedStreamId, _Mapping]] = ..., commitment: _Optional[bytes] = ...) -> None: ...
