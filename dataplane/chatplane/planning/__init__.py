"""Capacity planning: workload arithmetic over measured per-pod figures."""
