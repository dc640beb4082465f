"""Pure manifest builders: each takes a parsed `api.ChatCluster` and returns plain dicts.

Nothing here talks to an API server; `bundle.build_all()` is the one entry point the
reconciler uses.
"""
