"""Device routes: which gateway connection holds a device (base.py: the
interface and the newer-connection-wins rule; memory.py and redis.py: its
two implementations, proven alike by tests/routes/test_conformance.py)."""
