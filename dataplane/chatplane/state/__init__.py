"""The state tier: which device is connected where, and delivery to it."""
