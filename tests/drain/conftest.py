"""The drain tests use the cluster tests' fixtures (a real `cluster up` per test)."""

from tests.cluster.conftest import make_cluster

__all__ = ["make_cluster"]
