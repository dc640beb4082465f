"""chatplane: instant messaging with exactly-once, ordered delivery on every device.

Only the client SDK is exported here (`from chatplane import Client`); the
tiers live in their own packages. The export is lazy so that importing the
sans-I/O parts (`chatplane.protocol`, `chatplane.delivery`) loads no I/O.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Ack", "Client", "ClientClosed", "ErrorCode", "Event", "Message", "RequestError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from chatplane import client

        return getattr(client, name)
    raise AttributeError(f"module 'chatplane' has no attribute {name!r}")
