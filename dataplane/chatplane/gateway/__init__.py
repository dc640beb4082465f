"""The gateway tier: long connections (WebSocket and raw TCP), login, pushes."""
