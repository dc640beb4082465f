"""The chatplane client SDK (asyncio)."""

from chatplane.client.client import Ack, Client, ClientClosed, Message
from chatplane.client.social import ConversationInfo, Event, MemberInfo, Receipts, Relation
from chatplane.protocol.errors import ErrorCode, RequestError

__all__ = ["Ack", "Client", "ClientClosed", "ConversationInfo", "ErrorCode", "Event",
           "MemberInfo", "Message", "Receipts", "Relation", "RequestError"]
