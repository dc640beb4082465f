"""The wire protocol, free of I/O: frame codec and connection state machines.

Nothing here imports asyncio or touches a socket: bytes go in, frames and
events come out, so every rule is tested and fuzzed without a network.
"""
