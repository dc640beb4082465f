"""chatplane: instant messaging with exactly-once, ordered delivery on every device.

Only the client SDK is exported here; the tiers live in their own packages.
"""

__version__ = "0.1.0"
