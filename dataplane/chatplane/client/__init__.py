"""The chatplane client SDK (asyncio)."""

from chatplane.client.client import Ack, Client, ClientClosed, Message
from chatplane.protocol.errors import ErrorCode, RequestError

__all__ = ["Ack", "Client", "ClientClosed", "ErrorCode", "Message", "RequestError"]
