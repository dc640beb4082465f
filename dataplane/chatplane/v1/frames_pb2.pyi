from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FriendAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRIEND_ACTION_UNSPECIFIED: _ClassVar[FriendAction]
    REQUEST: _ClassVar[FriendAction]
    ACCEPT: _ClassVar[FriendAction]
    DECLINE: _ClassVar[FriendAction]
    REMOVE: _ClassVar[FriendAction]
    BLOCK: _ClassVar[FriendAction]
    UNBLOCK: _ClassVar[FriendAction]

class GroupAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_ACTION_UNSPECIFIED: _ClassVar[GroupAction]
    INVITE: _ClassVar[GroupAction]
    ADD: _ClassVar[GroupAction]
    JOIN: _ClassVar[GroupAction]
    LEAVE: _ClassVar[GroupAction]
    KICK: _ClassVar[GroupAction]
    SET_ROLE: _ClassVar[GroupAction]
    RENAME: _ClassVar[GroupAction]
    DISSOLVE: _ClassVar[GroupAction]
    DECLINE_INVITATION: _ClassVar[GroupAction]
FRIEND_ACTION_UNSPECIFIED: FriendAction
REQUEST: FriendAction
ACCEPT: FriendAction
DECLINE: FriendAction
REMOVE: FriendAction
BLOCK: FriendAction
UNBLOCK: FriendAction
GROUP_ACTION_UNSPECIFIED: GroupAction
INVITE: GroupAction
ADD: GroupAction
JOIN: GroupAction
LEAVE: GroupAction
KICK: GroupAction
SET_ROLE: GroupAction
RENAME: GroupAction
DISSOLVE: GroupAction
DECLINE_INVITATION: GroupAction

class Frame(_message.Message):
    __slots__ = ("id", "login", "login_ack", "send", "send_ack", "push", "push_ack", "sync", "sync_response", "history", "history_response", "heartbeat", "heartbeat_ack", "error", "reconnect", "open_direct", "open_direct_ack", "sync_hint", "friend_op", "friend_op_ack", "friends", "friends_response", "group_create", "group_op", "group_op_ack", "members", "members_response", "conversations", "conversations_response", "mark_read", "mark_read_ack", "receipts", "receipts_response", "group_push", "invitations", "invitations_response")
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
    FRIEND_OP_FIELD_NUMBER: _ClassVar[int]
    FRIEND_OP_ACK_FIELD_NUMBER: _ClassVar[int]
    FRIENDS_FIELD_NUMBER: _ClassVar[int]
    FRIENDS_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GROUP_CREATE_FIELD_NUMBER: _ClassVar[int]
    GROUP_OP_FIELD_NUMBER: _ClassVar[int]
    GROUP_OP_ACK_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATIONS_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MARK_READ_FIELD_NUMBER: _ClassVar[int]
    MARK_READ_ACK_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GROUP_PUSH_FIELD_NUMBER: _ClassVar[int]
    INVITATIONS_FIELD_NUMBER: _ClassVar[int]
    INVITATIONS_RESPONSE_FIELD_NUMBER: _ClassVar[int]
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
    friend_op: FriendOp
    friend_op_ack: FriendOpAck
    friends: FriendsRequest
    friends_response: FriendsResponse
    group_create: GroupCreate
    group_op: GroupOp
    group_op_ack: GroupOpAck
    members: MembersRequest
    members_response: MembersResponse
    conversations: ConversationsRequest
    conversations_response: ConversationsResponse
    mark_read: MarkRead
    mark_read_ack: MarkReadAck
    receipts: ReceiptsRequest
    receipts_response: ReceiptsResponse
    group_push: GroupPush
    invitations: InvitationsRequest
    invitations_response: InvitationsResponse
    def __init__(self, id: _Optional[int] = ..., login: _Optional[_Union[Login, _Mapping]] = ..., login_ack: _Optional[_Union[LoginAck, _Mapping]] = ..., send: _Optional[_Union[Send, _Mapping]] = ..., send_ack: _Optional[_Union[SendAck, _Mapping]] = ..., push: _Optional[_Union[Push, _Mapping]] = ..., push_ack: _Optional[_Union[PushAck, _Mapping]] = ..., sync: _Optional[_Union[SyncRequest, _Mapping]] = ..., sync_response: _Optional[_Union[SyncResponse, _Mapping]] = ..., history: _Optional[_Union[HistoryRequest, _Mapping]] = ..., history_response: _Optional[_Union[HistoryResponse, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., reconnect: _Optional[_Union[Reconnect, _Mapping]] = ..., open_direct: _Optional[_Union[OpenDirect, _Mapping]] = ..., open_direct_ack: _Optional[_Union[OpenDirectAck, _Mapping]] = ..., sync_hint: _Optional[_Union[SyncHint, _Mapping]] = ..., friend_op: _Optional[_Union[FriendOp, _Mapping]] = ..., friend_op_ack: _Optional[_Union[FriendOpAck, _Mapping]] = ..., friends: _Optional[_Union[FriendsRequest, _Mapping]] = ..., friends_response: _Optional[_Union[FriendsResponse, _Mapping]] = ..., group_create: _Optional[_Union[GroupCreate, _Mapping]] = ..., group_op: _Optional[_Union[GroupOp, _Mapping]] = ..., group_op_ack: _Optional[_Union[GroupOpAck, _Mapping]] = ..., members: _Optional[_Union[MembersRequest, _Mapping]] = ..., members_response: _Optional[_Union[MembersResponse, _Mapping]] = ..., conversations: _Optional[_Union[ConversationsRequest, _Mapping]] = ..., conversations_response: _Optional[_Union[ConversationsResponse, _Mapping]] = ..., mark_read: _Optional[_Union[MarkRead, _Mapping]] = ..., mark_read_ack: _Optional[_Union[MarkReadAck, _Mapping]] = ..., receipts: _Optional[_Union[ReceiptsRequest, _Mapping]] = ..., receipts_response: _Optional[_Union[ReceiptsResponse, _Mapping]] = ..., group_push: _Optional[_Union[GroupPush, _Mapping]] = ..., invitations: _Optional[_Union[InvitationsRequest, _Mapping]] = ..., invitations_response: _Optional[_Union[InvitationsResponse, _Mapping]] = ...) -> None: ...

class Login(_message.Message):
    __slots__ = ("protocol_version", "token", "inbox_seq", "client_name", "store_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INBOX_SEQ_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    token: str
    inbox_seq: int
    client_name: str
    store_id: str
    def __init__(self, protocol_version: _Optional[int] = ..., token: _Optional[str] = ..., inbox_seq: _Optional[int] = ..., client_name: _Optional[str] = ..., store_id: _Optional[str] = ...) -> None: ...

class LoginAck(_message.Message):
    __slots__ = ("user_id", "device_id", "inbox_head", "heartbeat_interval_ms", "max_frame_bytes", "server_id", "max_inflight_sends", "store_id", "region", "max_users_per_request")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    INBOX_HEAD_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_SENDS_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    MAX_USERS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    inbox_head: int
    heartbeat_interval_ms: int
    max_frame_bytes: int
    server_id: str
    max_inflight_sends: int
    store_id: str
    region: str
    max_users_per_request: int
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., inbox_head: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., max_frame_bytes: _Optional[int] = ..., server_id: _Optional[str] = ..., max_inflight_sends: _Optional[int] = ..., store_id: _Optional[str] = ..., region: _Optional[str] = ..., max_users_per_request: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("after_inbox_seq", "limit", "conversations")
    AFTER_INBOX_SEQ_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    after_inbox_seq: int
    limit: int
    conversations: _containers.RepeatedCompositeFieldContainer[ConversationCursor]
    def __init__(self, after_inbox_seq: _Optional[int] = ..., limit: _Optional[int] = ..., conversations: _Optional[_Iterable[_Union[ConversationCursor, _Mapping]]] = ...) -> None: ...

class ConversationCursor(_message.Message):
    __slots__ = ("conversation_id", "seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("entries", "inbox_head", "has_more", "groups")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    INBOX_HEAD_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[InboxEntry]
    inbox_head: int
    has_more: bool
    groups: _containers.RepeatedCompositeFieldContainer[GroupDelta]
    def __init__(self, entries: _Optional[_Iterable[_Union[InboxEntry, _Mapping]]] = ..., inbox_head: _Optional[int] = ..., has_more: _Optional[bool] = ..., groups: _Optional[_Iterable[_Union[GroupDelta, _Mapping]]] = ...) -> None: ...

class GroupDelta(_message.Message):
    __slots__ = ("conversation_id", "head_seq", "joined_seq", "messages", "has_more")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    JOINED_SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    head_seq: int
    joined_seq: int
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    has_more: bool
    def __init__(self, conversation_id: _Optional[str] = ..., head_seq: _Optional[int] = ..., joined_seq: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class GroupPush(_message.Message):
    __slots__ = ("conversation_id", "messages", "compressed", "head_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    compressed: bytes
    head_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., compressed: _Optional[bytes] = ..., head_seq: _Optional[int] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ...) -> None: ...

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

class FriendOp(_message.Message):
    __slots__ = ("action", "user_id", "note")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    action: FriendAction
    user_id: str
    note: str
    def __init__(self, action: _Optional[_Union[FriendAction, str]] = ..., user_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class FriendOpAck(_message.Message):
    __slots__ = ("relation",)
    RELATION_FIELD_NUMBER: _ClassVar[int]
    relation: Relation
    def __init__(self, relation: _Optional[_Union[Relation, _Mapping]] = ...) -> None: ...

class Relation(_message.Message):
    __slots__ = ("user_id", "friend", "request_sent", "request_received", "note", "blocked", "updated_at_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FRIEND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    friend: bool
    request_sent: bool
    request_received: bool
    note: str
    blocked: bool
    updated_at_ms: int
    def __init__(self, user_id: _Optional[str] = ..., friend: _Optional[bool] = ..., request_sent: _Optional[bool] = ..., request_received: _Optional[bool] = ..., note: _Optional[str] = ..., blocked: _Optional[bool] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class FriendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FriendsResponse(_message.Message):
    __slots__ = ("friends", "incoming", "outgoing", "blocked")
    FRIENDS_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_FIELD_NUMBER: _ClassVar[int]
    BLOCKED_FIELD_NUMBER: _ClassVar[int]
    friends: _containers.RepeatedCompositeFieldContainer[Relation]
    incoming: _containers.RepeatedCompositeFieldContainer[Relation]
    outgoing: _containers.RepeatedCompositeFieldContainer[Relation]
    blocked: _containers.RepeatedCompositeFieldContainer[Relation]
    def __init__(self, friends: _Optional[_Iterable[_Union[Relation, _Mapping]]] = ..., incoming: _Optional[_Iterable[_Union[Relation, _Mapping]]] = ..., outgoing: _Optional[_Iterable[_Union[Relation, _Mapping]]] = ..., blocked: _Optional[_Iterable[_Union[Relation, _Mapping]]] = ...) -> None: ...

class GroupCreate(_message.Message):
    __slots__ = ("name", "members", "cid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CID_FIELD_NUMBER: _ClassVar[int]
    name: str
    members: _containers.RepeatedScalarFieldContainer[str]
    cid: int
    def __init__(self, name: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., cid: _Optional[int] = ...) -> None: ...

class GroupOp(_message.Message):
    __slots__ = ("conversation_id", "action", "user_ids", "role", "name")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    action: GroupAction
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    role: str
    name: str
    def __init__(self, conversation_id: _Optional[str] = ..., action: _Optional[_Union[GroupAction, str]] = ..., user_ids: _Optional[_Iterable[str]] = ..., role: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GroupOpAck(_message.Message):
    __slots__ = ("conversation_id", "seq", "invited")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INVITED_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    seq: int
    invited: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_id: _Optional[str] = ..., seq: _Optional[int] = ..., invited: _Optional[_Iterable[str]] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("user_id", "role", "joined_seq")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    JOINED_SEQ_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    role: str
    joined_seq: int
    def __init__(self, user_id: _Optional[str] = ..., role: _Optional[str] = ..., joined_seq: _Optional[int] = ...) -> None: ...

class MembersRequest(_message.Message):
    __slots__ = ("conversation_id", "after_user_id", "limit")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    after_user_id: str
    limit: int
    def __init__(self, conversation_id: _Optional[str] = ..., after_user_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class MembersResponse(_message.Message):
    __slots__ = ("members", "has_more", "total")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    has_more: bool
    total: int
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., has_more: _Optional[bool] = ..., total: _Optional[int] = ...) -> None: ...

class GroupEvent(_message.Message):
    __slots__ = ("action", "actor", "user_ids", "role", "name")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    action: GroupAction
    actor: str
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    role: str
    name: str
    def __init__(self, action: _Optional[_Union[GroupAction, str]] = ..., actor: _Optional[str] = ..., user_ids: _Optional[_Iterable[str]] = ..., role: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ConversationSummary(_message.Message):
    __slots__ = ("conversation_id", "kind", "name", "last_message", "unread", "read_seq", "head_seq", "last_activity_ms", "members")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    kind: str
    name: str
    last_message: Message
    unread: int
    read_seq: int
    head_seq: int
    last_activity_ms: int
    members: int
    def __init__(self, conversation_id: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., last_message: _Optional[_Union[Message, _Mapping]] = ..., unread: _Optional[int] = ..., read_seq: _Optional[int] = ..., head_seq: _Optional[int] = ..., last_activity_ms: _Optional[int] = ..., members: _Optional[int] = ...) -> None: ...

class ConversationsRequest(_message.Message):
    __slots__ = ("before_activity_ms", "before_id", "limit")
    BEFORE_ACTIVITY_MS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    before_activity_ms: int
    before_id: str
    limit: int
    def __init__(self, before_activity_ms: _Optional[int] = ..., before_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ConversationsResponse(_message.Message):
    __slots__ = ("conversations", "has_more")
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    conversations: _containers.RepeatedCompositeFieldContainer[ConversationSummary]
    has_more: bool
    def __init__(self, conversations: _Optional[_Iterable[_Union[ConversationSummary, _Mapping]]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class MarkRead(_message.Message):
    __slots__ = ("conversation_id", "seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class MarkReadAck(_message.Message):
    __slots__ = ("conversation_id", "read_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    read_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., read_seq: _Optional[int] = ...) -> None: ...

class ReceiptsRequest(_message.Message):
    __slots__ = ("conversation_id", "seq", "after_user_id", "limit")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AFTER_USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    seq: int
    after_user_id: str
    limit: int
    def __init__(self, conversation_id: _Optional[str] = ..., seq: _Optional[int] = ..., after_user_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ReceiptsResponse(_message.Message):
    __slots__ = ("read", "unread", "has_more")
    READ_FIELD_NUMBER: _ClassVar[int]
    UNREAD_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    read: _containers.RepeatedScalarFieldContainer[str]
    unread: _containers.RepeatedScalarFieldContainer[str]
    has_more: bool
    def __init__(self, read: _Optional[_Iterable[str]] = ..., unread: _Optional[_Iterable[str]] = ..., has_more: _Optional[bool] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("friend", "read", "receipt", "invitation")
    FRIEND_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    INVITATION_FIELD_NUMBER: _ClassVar[int]
    friend: FriendEvent
    read: ReadEvent
    receipt: ReceiptEvent
    invitation: InvitationEvent
    def __init__(self, friend: _Optional[_Union[FriendEvent, _Mapping]] = ..., read: _Optional[_Union[ReadEvent, _Mapping]] = ..., receipt: _Optional[_Union[ReceiptEvent, _Mapping]] = ..., invitation: _Optional[_Union[InvitationEvent, _Mapping]] = ...) -> None: ...

class FriendEvent(_message.Message):
    __slots__ = ("action", "actor", "user_id", "note")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    action: FriendAction
    actor: str
    user_id: str
    note: str
    def __init__(self, action: _Optional[_Union[FriendAction, str]] = ..., actor: _Optional[str] = ..., user_id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ReadEvent(_message.Message):
    __slots__ = ("conversation_id", "read_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    read_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., read_seq: _Optional[int] = ...) -> None: ...

class ReceiptEvent(_message.Message):
    __slots__ = ("conversation_id", "reader", "read_seq")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    READ_SEQ_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    reader: str
    read_seq: int
    def __init__(self, conversation_id: _Optional[str] = ..., reader: _Optional[str] = ..., read_seq: _Optional[int] = ...) -> None: ...

class InvitationEvent(_message.Message):
    __slots__ = ("conversation_id", "inviter", "name")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    INVITER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    inviter: str
    name: str
    def __init__(self, conversation_id: _Optional[str] = ..., inviter: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class InvitationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Invitation(_message.Message):
    __slots__ = ("conversation_id", "inviter", "name", "at_ms")
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    INVITER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    conversation_id: str
    inviter: str
    name: str
    at_ms: int
    def __init__(self, conversation_id: _Optional[str] = ..., inviter: _Optional[str] = ..., name: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class InvitationsResponse(_message.Message):
    __slots__ = ("invitations",)
    INVITATIONS_FIELD_NUMBER: _ClassVar[int]
    invitations: _containers.RepeatedCompositeFieldContainer[Invitation]
    def __init__(self, invitations: _Optional[_Iterable[_Union[Invitation, _Mapping]]] = ...) -> None: ...
