from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AloneWish(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALONE_KEEP: _ClassVar[AloneWish]
    ALONE_SET: _ClassVar[AloneWish]
    ALONE_CLEAR: _ClassVar[AloneWish]
ALONE_KEEP: AloneWish
ALONE_SET: AloneWish
ALONE_CLEAR: AloneWish

class LeaseRequest(_message.Message):
    __slots__ = ("region", "ttl_ms", "alone")
    REGION_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    ALONE_FIELD_NUMBER: _ClassVar[int]
    region: str
    ttl_ms: int
    alone: AloneWish
    def __init__(self, region: _Optional[str] = ..., ttl_ms: _Optional[int] = ..., alone: _Optional[_Union[AloneWish, str]] = ...) -> None: ...

class LeaseReply(_message.Message):
    __slots__ = ("held", "alone", "taken_by", "taken_grant", "reason")
    HELD_FIELD_NUMBER: _ClassVar[int]
    ALONE_FIELD_NUMBER: _ClassVar[int]
    TAKEN_BY_FIELD_NUMBER: _ClassVar[int]
    TAKEN_GRANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    held: bool
    alone: bool
    taken_by: str
    taken_grant: int
    reason: str
    def __init__(self, held: _Optional[bool] = ..., alone: _Optional[bool] = ..., taken_by: _Optional[str] = ..., taken_grant: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class TakeoverRequest(_message.Message):
    __slots__ = ("region", "lost")
    REGION_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    region: str
    lost: str
    def __init__(self, region: _Optional[str] = ..., lost: _Optional[str] = ...) -> None: ...

class TakeoverReply(_message.Message):
    __slots__ = ("granted", "grant", "reason")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    grant: int
    reason: str
    def __init__(self, granted: _Optional[bool] = ..., grant: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...
