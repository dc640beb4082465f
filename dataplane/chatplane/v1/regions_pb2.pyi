from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HelloRequest(_message.Message):
    __slots__ = ("region", "cluster", "protocol", "nonce")
    REGION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    region: str
    cluster: str
    protocol: int
    nonce: bytes
    def __init__(self, region: _Optional[str] = ..., cluster: _Optional[str] = ..., protocol: _Optional[int] = ..., nonce: _Optional[bytes] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("region", "cluster", "protocol", "key_proof", "server_id")
    REGION_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    KEY_PROOF_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    region: str
    cluster: str
    protocol: int
    key_proof: bytes
    server_id: str
    def __init__(self, region: _Optional[str] = ..., cluster: _Optional[str] = ..., protocol: _Optional[int] = ..., key_proof: _Optional[bytes] = ..., server_id: _Optional[str] = ...) -> None: ...
