"""One line for a CQL driver error, whatever shape the driver gave it.

`NoHostAvailable.errors` is a dict (host -> error) when the contact points failed, but a
list of addresses when the driver connected, then could not reach the address the server
advertises (its rpc_address): a real pod met the second shape, and describe() crashed with
AttributeError, hiding the cause (docs/kubernetes-node.md).
"""

from __future__ import annotations

from cassandra.cluster import NoHostAvailable

from chatplane.storage.cql import describe


def test_contact_points_failed_names_the_host_and_error() -> None:
    exc = NoHostAvailable("Unable to connect to any servers",
                          {"10.0.0.1:9042": ConnectionRefusedError(111, "Connection refused")})
    assert describe(exc) == "10.0.0.1:9042: [Errno 111] Connection refused"


def test_advertised_address_unreachable_names_the_addresses_tried() -> None:
    exc = NoHostAvailable("Unable to connect to any servers", ["127.0.0.1"])
    assert describe(exc) == "NoHostAvailable: Unable to connect to any servers: tried 127.0.0.1"


def test_other_errors_keep_their_type() -> None:
    assert describe(TimeoutError("slow")) == "TimeoutError: slow"
