"""Video loaders over fastvid shards: DALI (GPU NVDEC or CPU) and a PyAV fallback."""

_EXPORTS = {"VideoLoader": "fastvid.data.loader"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastvid.data' has no attribute {name!r}")
