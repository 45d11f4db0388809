"""Event-camera data: reading (io: Prophesee DAT, bbox npy, plain arrays; raw: EVT 2.0/3.0), tensor representations,
event shards (codec, blocks: layout v2, precompute, gpu_decode, layouts, writing, reading, segments), the one window
arithmetic (windows, labels) and its samplers (sampling), the event backend and the sequence loader (backend, sequence),
and the detector (fastvid.events.detect). Registered into the core by fastvid.events.kind."""

from __future__ import annotations

__all__ = ['represent', 'represent_batch', 'REPRESENTATIONS', 'read_dat', 'read_boxes', 'read_events', 'read_raw', 'crop_boxes', 'BOX_DTYPE', 'EVENT_DTYPE', 'shard_events', 'list_segments', 'SOURCE_FORMATS', 'iter_segments', 'index_segments', 'SegmentReader', 'encode_events', 'decode_events', 'decode_sample', 'decode_window', 'decode_windows', 'EventSequenceLoader']


def __getattr__(name):
    # Explicit imports on first use: importing the package stays cheap (no numpy, numba or torch).
    if name in ('represent', 'represent_batch', 'REPRESENTATIONS'):
        from fastvid.events import representations

        return getattr(representations, name)
    if name in ('read_dat', 'read_boxes', 'read_events', 'crop_boxes', 'BOX_DTYPE'):
        from fastvid.events import io

        return getattr(io, name)
    if name in ('read_raw',):
        from fastvid.events import raw

        return getattr(raw, name)
    if name in ('EVENT_DTYPE',):
        from fastvid.events import types

        return getattr(types, name)
    if name in ('shard_events', 'list_segments'):
        from fastvid.events import writing

        return getattr(writing, name)
    if name in ('SOURCE_FORMATS',):
        from fastvid.events import layouts

        return getattr(layouts, name)
    if name in ('iter_segments', 'index_segments', 'SegmentReader'):
        from fastvid.events import reading

        return getattr(reading, name)
    if name in ('decode_windows',):
        from fastvid.events import gpu_decode

        return getattr(gpu_decode, name)
    if name in ('encode_events', 'decode_events', 'decode_sample', 'decode_window'):
        from fastvid.events import codec

        return getattr(codec, name)
    if name in ('EventSequenceLoader',):
        from fastvid.events import sequence

        return getattr(sequence, name)
    raise AttributeError(f"module 'fastvid.events' has no attribute {name!r}")
