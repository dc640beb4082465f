"""chatplane_operator: the kopf operator that turns a ChatCluster into per-region workloads.

Layers: `api` (the contract) -> `specs` (pure manifest builders) -> `status` (pure status
computation) -> `applying` / `reconciling` (API I/O) -> `handlers` (kopf decorators only).
"""
