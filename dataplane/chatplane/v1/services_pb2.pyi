from chatplane.v1 import frames_pb2 as _frames_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Delivery(_message.Message):
    __slots__ = ("user_id", "entry")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    entry: _frames_pb2.InboxEntry
    def __init__(self, user_id: _Optional[str] = ..., entry: _Optional[_Union[_frames_pb2.InboxEntry, _Mapping]] = ...) -> None: ...

class ClientRequest(_message.Message):
    __slots__ = ("user_id", "device_id", "frame")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    frame: bytes
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., frame: _Optional[bytes] = ...) -> None: ...

class ClientReply(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: bytes
    def __init__(self, frame: _Optional[bytes] = ...) -> None: ...

class ClientRequests(_message.Message):
    __slots__ = ("user_id", "device_id", "frames")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., frames: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ClientReplies(_message.Message):
    __slots__ = ("frames", "not_handled")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    NOT_HANDLED_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    not_handled: str
    def __init__(self, frames: _Optional[_Iterable[bytes]] = ..., not_handled: _Optional[str] = ...) -> None: ...

class SendLanes(_message.Message):
    __slots__ = ("lanes", "stream_id", "stream_timeout_ms", "stream_trace")
    LANES_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TRACE_FIELD_NUMBER: _ClassVar[int]
    lanes: _containers.RepeatedCompositeFieldContainer[ClientRequests]
    stream_id: int
    stream_timeout_ms: int
    stream_trace: str
    def __init__(self, lanes: _Optional[_Iterable[_Union[ClientRequests, _Mapping]]] = ..., stream_id: _Optional[int] = ..., stream_timeout_ms: _Optional[int] = ..., stream_trace: _Optional[str] = ...) -> None: ...

class SendLanesReply(_message.Message):
    __slots__ = ("lanes", "stream_id", "stream_code", "stream_details")
    LANES_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_CODE_FIELD_NUMBER: _ClassVar[int]
    STREAM_DETAILS_FIELD_NUMBER: _ClassVar[int]
    lanes: _containers.RepeatedCompositeFieldContainer[ClientReplies]
    stream_id: int
    stream_code: int
    stream_details: str
    def __init__(self, lanes: _Optional[_Iterable[_Union[ClientReplies, _Mapping]]] = ..., stream_id: _Optional[int] = ..., stream_code: _Optional[int] = ..., stream_details: _Optional[str] = ...) -> None: ...

class InboxHeadsRequest(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class InboxHeadsReply(_message.Message):
    __slots__ = ("heads", "store_id")
    class HeadsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HEADS_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.ScalarMap[str, int]
    store_id: str
    def __init__(self, heads: _Optional[_Mapping[str, int]] = ..., store_id: _Optional[str] = ...) -> None: ...

class GroupHeadsRequest(_message.Message):
    __slots__ = ("conversation_ids",)
    CONVERSATION_IDS_FIELD_NUMBER: _ClassVar[int]
    conversation_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupHeadsReply(_message.Message):
    __slots__ = ("heads",)
    class HeadsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    HEADS_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.ScalarMap[str, int]
    def __init__(self, heads: _Optional[_Mapping[str, int]] = ...) -> None: ...

class AppendEventRequest(_message.Message):
    __slots__ = ("user_id", "device", "cid", "message_id", "sent_at_ms", "content_type", "payload")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device: str
    cid: int
    message_id: str
    sent_at_ms: int
    content_type: str
    payload: bytes
    def __init__(self, user_id: _Optional[str] = ..., device: _Optional[str] = ..., cid: _Optional[int] = ..., message_id: _Optional[str] = ..., sent_at_ms: _Optional[int] = ..., content_type: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class AppendEventReply(_message.Message):
    __slots__ = ("seq", "duplicate")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    duplicate: bool
    def __init__(self, seq: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class FanOutEntry(_message.Message):
    __slots__ = ("seq", "user_ids", "fresh")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    fresh: bool
    def __init__(self, seq: _Optional[int] = ..., user_ids: _Optional[_Iterable[str]] = ..., fresh: _Optional[bool] = ...) -> None: ...

class FanOutRequest(_message.Message):
    __slots__ = ("conversation_id", "entries")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    entries: _containers.RepeatedCompositeFieldContainer[FanOutEntry]
    def __init__(self, conversation_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[FanOutEntry, _Mapping]]] = ...) -> None: ...

class FanOutReply(_message.Message):
    __slots__ = ("written", "failed")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    written: int
    failed: str
    def __init__(self, written: _Optional[int] = ..., failed: _Optional[str] = ...) -> None: ...

class FanOutRequests(_message.Message):
    __slots__ = ("requests", "stream_id", "stream_timeout_ms", "stream_trace")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TRACE_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[FanOutRequest]
    stream_id: int
    stream_timeout_ms: int
    stream_trace: str
    def __init__(self, requests: _Optional[_Iterable[_Union[FanOutRequest, _Mapping]]] = ..., stream_id: _Optional[int] = ..., stream_timeout_ms: _Optional[int] = ..., stream_trace: _Optional[str] = ...) -> None: ...

class FanOutReplies(_message.Message):
    __slots__ = ("replies", "stream_id", "stream_code", "stream_details")
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_CODE_FIELD_NUMBER: _ClassVar[int]
    STREAM_DETAILS_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[FanOutReply]
    stream_id: int
    stream_code: int
    stream_details: str
    def __init__(self, replies: _Optional[_Iterable[_Union[FanOutReply, _Mapping]]] = ..., stream_id: _Optional[int] = ..., stream_code: _Optional[int] = ..., stream_details: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("user_id", "device_id", "gateway_id", "conn_id", "opened_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    CONN_ID_FIELD_NUMBER: _ClassVar[int]
    OPENED_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    gateway_id: str
    conn_id: str
    opened_ms: int
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., conn_id: _Optional[str] = ..., opened_ms: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("routes", "refresh")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    refresh: bool
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., refresh: _Optional[bool] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterRequest(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class UnregisterReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeliverRequest(_message.Message):
    __slots__ = ("deliveries", "stream_id", "stream_timeout_ms", "stream_trace")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TRACE_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    stream_id: int
    stream_timeout_ms: int
    stream_trace: str
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., stream_id: _Optional[int] = ..., stream_timeout_ms: _Optional[int] = ..., stream_trace: _Optional[str] = ...) -> None: ...

class DeliverReply(_message.Message):
    __slots__ = ("pushed", "unreachable", "stream_id", "stream_code", "stream_details")
    PUSHED_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_CODE_FIELD_NUMBER: _ClassVar[int]
    STREAM_DETAILS_FIELD_NUMBER: _ClassVar[int]
    pushed: int
    unreachable: int
    stream_id: int
    stream_code: int
    stream_details: str
    def __init__(self, pushed: _Optional[int] = ..., unreachable: _Optional[int] = ..., stream_id: _Optional[int] = ..., stream_code: _Optional[int] = ..., stream_details: _Optional[str] = ...) -> None: ...

class GroupDelivery(_message.Message):
    __slots__ = ("conversation_id", "messages", "members")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    messages: _containers.RepeatedCompositeFieldContainer[_frames_pb2.Message]
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_frames_pb2.Message, _Mapping]]] = ..., members: _Optional[_Iterable[str]] = ...) -> None: ...

class DeliverGroupRequest(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupDelivery]
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupDelivery, _Mapping]]] = ...) -> None: ...

class DeliverGroupReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class PresenceRequest(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PresenceReply(_message.Message):
    __slots__ = ("devices",)
    class DevicesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.ScalarMap[str, int]
    def __init__(self, devices: _Optional[_Mapping[str, int]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("deliveries", "stream_id", "stream_timeout_ms", "stream_trace")
    DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    STREAM_TRACE_FIELD_NUMBER: _ClassVar[int]
    deliveries: _containers.RepeatedCompositeFieldContainer[Delivery]
    stream_id: int
    stream_timeout_ms: int
    stream_trace: str
    def __init__(self, deliveries: _Optional[_Iterable[_Union[Delivery, _Mapping]]] = ..., stream_id: _Optional[int] = ..., stream_timeout_ms: _Optional[int] = ..., stream_trace: _Optional[str] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("pushed", "stream_id", "stream_code", "stream_details")
    PUSHED_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_CODE_FIELD_NUMBER: _ClassVar[int]
    STREAM_DETAILS_FIELD_NUMBER: _ClassVar[int]
    pushed: int
    stream_id: int
    stream_code: int
    stream_details: str
    def __init__(self, pushed: _Optional[int] = ..., stream_id: _Optional[int] = ..., stream_code: _Optional[int] = ..., stream_details: _Optional[str] = ...) -> None: ...

class GroupPushRequest(_message.Message):
    __slots__ = ("conversation_id", "head_seq", "frame", "user_ids")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    head_seq: int
    frame: bytes
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_id: _Optional[str] = ..., head_seq: _Optional[int] = ..., frame: _Optional[bytes] = ..., user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupPushReply(_message.Message):
    __slots__ = ("pushed",)
    PUSHED_FIELD_NUMBER: _ClassVar[int]
    pushed: int
    def __init__(self, pushed: _Optional[int] = ...) -> None: ...

class KickRequest(_message.Message):
    __slots__ = ("routes", "reason")
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    reason: str
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class KickReply(_message.Message):
    __slots__ = ("kicked",)
    KICKED_FIELD_NUMBER: _ClassVar[int]
    kicked: int
    def __init__(self, kicked: _Optional[int] = ...) -> None: ...
