"""Event-camera data: reading (Prophesee DAT, bbox npy, plain arrays), tensor representations,
event shards and the streaming sequence loader. Names are imported lazily from their modules."""

from fastvid.events.types import EVENT_DTYPE

_EXPORTS = {
    "represent": "fastvid.events.representations",
    "represent_batch": "fastvid.events.representations",
    "REPRESENTATIONS": "fastvid.events.representations",
    "read_dat": "fastvid.events.io",
    "read_boxes": "fastvid.events.io",
    "read_events": "fastvid.events.io",
    "iter_segments": "fastvid.events.shard",
    "EventSequenceLoader": "fastvid.events.sequence",
}

__all__ = ["EVENT_DTYPE", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastvid.events' has no attribute {name!r}")
