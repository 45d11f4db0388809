"""Video loaders over fastvid shards: one VideoLoader, backends from a registry (fastvid.data.backends)."""

_EXPORTS = {"VideoLoader": "fastvid.data.loader", "LastBatch": "fastvid.data.contract", "WorkItem": "fastvid.data.contract"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastvid.data' has no attribute {name!r}")
