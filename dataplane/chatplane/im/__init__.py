"""The im tier: conversations, sending, sync and history."""
