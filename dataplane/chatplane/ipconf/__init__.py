"""The ipconf tier: tells a client which gateways to connect to."""
