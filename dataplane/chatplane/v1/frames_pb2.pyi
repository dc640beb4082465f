from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("id", "login", "login_ack", "send", "send_ack", "push", "push_ack", "sync", "sync_response", "history", "history_response", "heartbeat", "heartbeat_ack", "error", "reconnect", "open_direct", "open_direct_ack", "sync_hint")
    ID_FIELD_NUMBER: _ClassVar[int]
    LOGIN_FIELD_NUMBER: _ClassVar[int]
    LOGIN_ACK_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    SEND_ACK_FIELD_NUMBER: _ClassVar[int]
    PUSH_FIELD_NUMBER: _ClassVar[int]
    PUSH_ACK_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    SYNC_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    OPEN_DIRECT_FIELD_NUMBER: _ClassVar[int]
    OPEN_DIRECT_ACK_FIELD_NUMBER: _ClassVar[int]
    SYNC_HINT_FIELD_NUMBER: _ClassVar[int]
    id: int
    login: Login
    login_ack: LoginAck
    send: Send
    send_ack: SendAck
    push: Push
    push_ack: PushAck
    sync: SyncRequest
    sync_response: SyncResponse
    history: HistoryRequest
    history_response: HistoryResponse
    heartbeat: Heartbeat
    heartbeat_ack: HeartbeatAck
    error: Error
    reconnect: Reconnect
    open_direct: OpenDirect
    open_direct_ack: OpenDirectAck
    sync_hint: SyncHint
    def __init__(self, id: _Optional[int] = ..., login: _Optional[_Union[Login, _Mapping]] = ..., login_ack: _Optional[_Union[LoginAck, _Mapping]] = ..., send: _Optional[_Union[Send, _Mapping]] = ..., send_ack: _Optional[_Union[SendAck, _Mapping]] = ..., push: _Optional[_Union[Push, _Mapping]] = ..., push_ack: _Optional[_Union[PushAck, _Mapping]] = ..., sync: _Optional[_Union[SyncRequest, _Mapping]] = ..., sync_response: _Optional[_Union[SyncResponse, _Mapping]] = ..., history: _Optional[_Union[HistoryRequest, _Mapping]] = ..., history_response: _Optional[_Union[HistoryResponse, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., reconnect: _Optional[_Union[Reconnect, _Mapping]] = ..., open_direct: _Optional[_Union[OpenDirect, _Mapping]] = ..., open_direct_ack: _Optional[_Union[OpenDirectAck, _Mapping]] = ..., sync_hint: _Optional[_Union[SyncHint, _Mapping]] = ...) -> None: ...

class Login(_message.Message):
    __slots__ = ("protocol_version", "token", "inbox_seq", "client_name")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INBOX_SEQ_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    token: str
    inbox_seq: int
    client_name: str
    def __init__(self, protocol_version: _Optional[int] = ..., token: _Optional[str] = ..., inbox_seq: _Optional[int] = ..., client_name: _Optional[str] = ...) -> None: ...

class LoginAck(_message.Message):
    __slots__ = ("user_id", "device_id", "inbox_head", "heartbeat_interval_ms", "max_frame_bytes", "server_id", "max_inflight_sends")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    INBOX_HEAD_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_SENDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    inbox_head: int
    heartbeat_interval_ms: int
    max_frame_bytes: int
    server_id: str
    max_inflight_sends: int
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., inbox_head: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., server_id: _Optional[str] = ..., max_inflight_sends: _Optional[int] = ...) -> None: ...

class Send(_message.Message):
    __slots__ = ("conversation_id", "cid", "text", "payload", "content_type")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    cid: int
    text: str
    payload: bytes
    content_type: str
    def __init__(self, conversation_id: _Optional[str] = ..., cid: _Optional[int] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class SendAck(_message.Message):
    __slots__ = ("conversation_id", "seq", "message_id", "cid", "sent_at_ms", "duplicate")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    seq: int
    message_id: str
    cid: int
    sent_at_ms: int
    duplicate: bool
    def __init__(self, conversation_id: _Optional[str] = ..., seq: _Optional[int] = ..., message_id: _Optional[str] = ..., cid: _Optional[int] = ..., sent_at_ms: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("conversation_id", "seq", "message_id", "sender", "sender_device", "cid", "text", "payload", "content_type", "sent_at_ms")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENDER_DEVICE_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    seq: int
    message_id: str
    sender: str
    sender_device: str
    cid: int
    text: str
    payload: bytes
    content_type: str
    sent_at_ms: int
    def __init__(self, conversation_id: _Optional[str] = ..., seq: _Optional[int] = ..., message_id: _Optional[str] = ..., sender: _Optional[str] = ..., sender_device: _Optional[str] = ..., cid: _Optional[int] = ..., text: _Optional[str] = ..., payload: _Optional[bytes] = ..., content_type: _Optional[str] = ..., sent_at_ms: _Optional[int] = ...) -> None: ...

class InboxEntry(_message.Message):
    __slots__ = ("inbox_seq", "message")
    INBOX_SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    inbox_seq: int
    message: Message
    def __init__(self, inbox_seq: _Optional[int] = ..., message: _Optional[_Union[Message, _Mapping]] = ...) -> None: ...

class Push(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[InboxEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[InboxEntry, _Mapping]]] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("inbox_seq",)
    INBOX_SEQ_FIELD_NUMBER: _ClassVar[int]
    inbox_seq: int
    def __init__(self, inbox_seq: _Optional[int] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("after_inbox_seq", "limit")
    AFTER_INBOX_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_inbox_seq: int
    limit: int
    def __init__(self, after_inbox_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("entries", "inbox_head", "has_more")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    INBOX_HEAD_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[InboxEntry]
    inbox_head: int
    has_more: bool
    def __init__(self, entries: _Optional[_Iterable[_Union[InboxEntry, _Mapping]]] = ..., inbox_head: _Optional[int] = ..., has_more: _Optional[bool] = ...) -> None: ...

class SyncHint(_message.Message):
    __slots__ = ("inbox_head",)
    INBOX_HEAD_FIELD_NUMBER: _ClassVar[int]
    inbox_head: int
    def __init__(self, inbox_head: _Optional[int] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("conversation_id", "before_seq", "after_seq", "limit")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    before_seq: int
    after_seq: int
    limit: int
    def __init__(self, conversation_id: _Optional[str] = ..., before_seq: _Optional[int] = ..., after_seq: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("conversation_id", "messages", "head_seq", "has_more")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    head_seq: int
    has_more: bool
    def __init__(self, conversation_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., head_seq: _Optional[int] = ..., has_more: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("client_time_ms",)
    CLIENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    client_time_ms: int
    def __init__(self, client_time_ms: _Optional[int] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("client_time_ms", "server_time_ms")
    CLIENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    client_time_ms: int
    server_time_ms: int
    def __init__(self, client_time_ms: _Optional[int] = ..., server_time_ms: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "retriable", "fatal")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRIABLE_FIELD_NUMBER: _ClassVar[int]
    FATAL_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retriable: bool
    fatal: bool
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retriable: _Optional[bool] = ..., fatal: _Optional[bool] = ...) -> None: ...

class Reconnect(_message.Message):
    __slots__ = ("delay_ms", "reason", "endpoints")
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    delay_ms: int
    reason: str
    endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, delay_ms: _Optional[int] = ..., reason: _Optional[str] = ..., endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class OpenDirect(_message.Message):
    __slots__ = ("peer_user_id",)
    PEER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    peer_user_id: str
    def __init__(self, peer_user_id: _Optional[str] = ...) -> None: ...

class OpenDirectAck(_message.Message):
    __slots__ = ("conversation_id", "head_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    head_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., head_seq: _Optional[int] = ...) -> None: ...
