"""Event-camera data: reading (Prophesee DAT and RAW EVT 2.0/3.0, bbox npy, plain arrays), tensor representations,
event shards and the streaming sequence loader. Names are imported lazily from their modules."""

from fastvid.events.types import EVENT_DTYPE

_EXPORTS = {
    "represent": "fastvid.events.representations",
    "represent_batch": "fastvid.events.representations",
    "REPRESENTATIONS": "fastvid.events.representations",
    "read_dat": "fastvid.events.io",
    "read_boxes": "fastvid.events.io",
    "read_events": "fastvid.events.io",
    "read_raw": "fastvid.events.raw",
    "crop_boxes": "fastvid.events.io",
    "BOX_DTYPE": "fastvid.events.io",
    "shard_events": "fastvid.events.shard_write",
    "list_segments": "fastvid.events.shard_write",
    "SOURCE_FORMATS": "fastvid.events.shard_sources",
    "iter_segments": "fastvid.events.shard_read",
    "index_segments": "fastvid.events.shard_read",
    "SegmentReader": "fastvid.events.shard_read",
    "encode_events": "fastvid.events.shard_codec",
    "decode_events": "fastvid.events.shard_codec",
    "decode_sample": "fastvid.events.shard_codec",
    "decode_window": "fastvid.events.shard_codec",
    "decode_windows": "fastvid.events.shard_device",
    "EventSequenceLoader": "fastvid.events.sequence",
}

__all__ = ["EVENT_DTYPE", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastvid.events' has no attribute {name!r}")
