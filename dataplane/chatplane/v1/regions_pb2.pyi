from chatplane.v1 import frames_pb2 as _frames_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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

class HomeOffer(_message.Message):
    __slots__ = ("region", "kind", "key", "home", "epoch", "confirmed")
    REGION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    HOME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    region: str
    kind: str
    key: str
    home: str
    epoch: int
    confirmed: bool
    def __init__(self, region: _Optional[str] = ..., kind: _Optional[str] = ..., key: _Optional[str] = ..., home: _Optional[str] = ..., epoch: _Optional[int] = ..., confirmed: _Optional[bool] = ...) -> None: ...

class HomeRow(_message.Message):
    __slots__ = ("home", "epoch", "confirmed")
    HOME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    home: str
    epoch: int
    confirmed: bool
    def __init__(self, home: _Optional[str] = ..., epoch: _Optional[int] = ..., confirmed: _Optional[bool] = ...) -> None: ...

class ForwardedSend(_message.Message):
    __slots__ = ("region", "user_id", "device_id", "conversation_id", "cid", "text", "payload", "content_type")
    REGION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    region: str
    user_id: str
    device_id: str
    conversation_id: str
    cid: int
    text: str
    payload: bytes
    content_type: str
    def __init__(self, region: _Optional[str] = ..., user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., cid: _Optional[int] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class ForwardedAck(_message.Message):
    __slots__ = ("message", "duplicate", "error_code", "error", "not_home")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NOT_HOME_FIELD_NUMBER: _ClassVar[int]
    message: _frames_pb2.Message
    duplicate: bool
    error_code: int
    error: str
    not_home: HomeRow
    def __init__(self, message: _Optional[_Union[_frames_pb2.Message, _Mapping]] = ..., duplicate: _Optional[bool] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ..., not_home: _Optional[_Union[HomeRow, _Mapping]] = ...) -> None: ...

class ForwardedGroupOp(_message.Message):
    __slots__ = ("region", "user_id", "device_id", "op")
    REGION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    region: str
    user_id: str
    device_id: str
    op: _frames_pb2.GroupOp
    def __init__(self, region: _Optional[str] = ..., user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., op: _Optional[_Union[_frames_pb2.GroupOp, _Mapping]] = ...) -> None: ...

class ForwardedGroupAck(_message.Message):
    __slots__ = ("ack", "error_code", "error", "not_home")
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NOT_HOME_FIELD_NUMBER: _ClassVar[int]
    ack: _frames_pb2.GroupOpAck
    error_code: int
    error: str
    not_home: HomeRow
    def __init__(self, ack: _Optional[_Union[_frames_pb2.GroupOpAck, _Mapping]] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ..., not_home: _Optional[_Union[HomeRow, _Mapping]] = ...) -> None: ...

class ForwardedAdminChange(_message.Message):
    __slots__ = ("region", "conversation_id", "add", "remove", "dissolve")
    REGION_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    DISSOLVE_FIELD_NUMBER: _ClassVar[int]
    region: str
    conversation_id: str
    add: _containers.RepeatedScalarFieldContainer[str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    dissolve: bool
    def __init__(self, region: _Optional[str] = ..., conversation_id: _Optional[str] = ..., add: _Optional[_Iterable[str]] = ..., remove: _Optional[_Iterable[str]] = ..., dissolve: _Optional[bool] = ...) -> None: ...

class ForwardedFriendOp(_message.Message):
    __slots__ = ("region", "user_id", "device_id", "op")
    REGION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    region: str
    user_id: str
    device_id: str
    op: _frames_pb2.FriendOp
    def __init__(self, region: _Optional[str] = ..., user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., op: _Optional[_Union[_frames_pb2.FriendOp, _Mapping]] = ...) -> None: ...

class ForwardedFriendAck(_message.Message):
    __slots__ = ("relation", "error_code", "error", "not_home", "log_position")
    RELATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NOT_HOME_FIELD_NUMBER: _ClassVar[int]
    LOG_POSITION_FIELD_NUMBER: _ClassVar[int]
    relation: _frames_pb2.Relation
    error_code: int
    error: str
    not_home: HomeRow
    log_position: int
    def __init__(self, relation: _Optional[_Union[_frames_pb2.Relation, _Mapping]] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ..., not_home: _Optional[_Union[HomeRow, _Mapping]] = ..., log_position: _Optional[int] = ...) -> None: ...

class ReplicateRequest(_message.Message):
    __slots__ = ("region", "after")
    REGION_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    region: str
    after: int
    def __init__(self, region: _Optional[str] = ..., after: _Optional[int] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("lsn", "epoch", "message", "inbox_user", "inbox_seq")
    LSN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    INBOX_USER_FIELD_NUMBER: _ClassVar[int]
    INBOX_SEQ_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    epoch: int
    message: _frames_pb2.Message
    inbox_user: str
    inbox_seq: int
    def __init__(self, lsn: _Optional[int] = ..., epoch: _Optional[int] = ..., message: _Optional[_Union[_frames_pb2.Message, _Mapping]] = ..., inbox_user: _Optional[str] = ..., inbox_seq: _Optional[int] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("entries", "scanned_to", "head")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SCANNED_TO_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    scanned_to: int
    head: int
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., scanned_to: _Optional[int] = ..., head: _Optional[int] = ...) -> None: ...

class AppliedRequest(_message.Message):
    __slots__ = ("region", "applied_to")
    REGION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_TO_FIELD_NUMBER: _ClassVar[int]
    region: str
    applied_to: int
    def __init__(self, region: _Optional[str] = ..., applied_to: _Optional[int] = ...) -> None: ...

class AppliedReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HandOffRequest(_message.Message):
    __slots__ = ("region", "kind", "key", "resume")
    REGION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    region: str
    kind: str
    key: str
    resume: bool
    def __init__(self, region: _Optional[str] = ..., kind: _Optional[str] = ..., key: _Optional[str] = ..., resume: _Optional[bool] = ...) -> None: ...

class HandOffReply(_message.Message):
    __slots__ = ("home", "log_head", "head_seq")
    HOME_FIELD_NUMBER: _ClassVar[int]
    LOG_HEAD_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    home: HomeRow
    log_head: int
    head_seq: int
    def __init__(self, home: _Optional[_Union[HomeRow, _Mapping]] = ..., log_head: _Optional[int] = ..., head_seq: _Optional[int] = ...) -> None: ...

class FenceRequest(_message.Message):
    __slots__ = ("region", "lost", "grant", "lift")
    REGION_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    region: str
    lost: str
    grant: int
    lift: bool
    def __init__(self, region: _Optional[str] = ..., lost: _Optional[str] = ..., grant: _Optional[int] = ..., lift: _Optional[bool] = ...) -> None: ...

class HomeHead(_message.Message):
    __slots__ = ("kind", "key", "head")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    head: int
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., head: _Optional[int] = ...) -> None: ...

class FenceReply(_message.Message):
    __slots__ = ("fenced", "reason", "applied_to", "heads", "taken_by")
    FENCED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPLIED_TO_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    TAKEN_BY_FIELD_NUMBER: _ClassVar[int]
    fenced: bool
    reason: str
    applied_to: int
    heads: _containers.RepeatedCompositeFieldContainer[HomeHead]
    taken_by: str
    def __init__(self, fenced: _Optional[bool] = ..., reason: _Optional[str] = ..., applied_to: _Optional[int] = ..., heads: _Optional[_Iterable[_Union[HomeHead, _Mapping]]] = ..., taken_by: _Optional[str] = ...) -> None: ...

class NotifyRequest(_message.Message):
    __slots__ = ("region", "after", "stream")
    REGION_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    region: str
    after: int
    stream: str
    def __init__(self, region: _Optional[str] = ..., after: _Optional[int] = ..., stream: _Optional[str] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("position", "conversation_id", "epoch", "first_seq", "last_seq", "recipients")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECIPIENTS_FIELD_NUMBER: _ClassVar[int]
    position: int
    conversation_id: str
    epoch: int
    first_seq: int
    last_seq: int
    recipients: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, position: _Optional[int] = ..., conversation_id: _Optional[str] = ..., epoch: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., recipients: _Optional[_Iterable[str]] = ...) -> None: ...

class NoticeBatch(_message.Message):
    __slots__ = ("notices", "head", "stream", "first")
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    notices: _containers.RepeatedCompositeFieldContainer[Notice]
    head: int
    stream: str
    first: int
    def __init__(self, notices: _Optional[_Iterable[_Union[Notice, _Mapping]]] = ..., head: _Optional[int] = ..., stream: _Optional[str] = ..., first: _Optional[int] = ...) -> None: ...
