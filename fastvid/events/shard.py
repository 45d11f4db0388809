"""Event shards, by job: shard_codec (sample format), shard_layout (the block layout of the events),
shard_precompute (stored representations), shard_sources (dataset layouts), shard_write (segmenting +
writing), shard_read (index + reads), shard_device (decoding windows into torch tensors, GPU path). This
module only re-exports their public names so code written against the former single module keeps working."""

from fastvid.events.shard_codec import (BOXES_EXT, EVENTS_EXT, META_EXT, decode_boxes, decode_event_columns,  # noqa: F401
                                        decode_events, decode_sample, encode_boxes, encode_events, sanitize_key,
                                        segment_key)
from fastvid.events.shard_read import SegmentReader, SegmentRef, index_segments, iter_segments, opened_segments  # noqa: F401
from fastvid.events.shard_sources import GEN1_CLASSES, SOURCE_FORMATS, find_gen1_recordings  # noqa: F401
from fastvid.events.shard_write import SegmentItem, encode_segment, list_segments, shard_events  # noqa: F401
from fastvid.events.types import EVENT_DTYPE  # noqa: F401

FORMATS = tuple(SOURCE_FORMATS)

__all__ = ["BOXES_EXT", "EVENTS_EXT", "META_EXT", "decode_boxes", "decode_event_columns", "decode_events", "decode_sample",
           "encode_boxes", "encode_events", "sanitize_key", "segment_key", "SegmentReader", "SegmentRef", "index_segments", "opened_segments",
           "iter_segments", "GEN1_CLASSES", "SOURCE_FORMATS", "find_gen1_recordings", "SegmentItem", "encode_segment",
           "list_segments", "shard_events", "EVENT_DTYPE", "FORMATS"]
