"""The public loaders: `VideoLoader` (clips from a video shard set) and `EventSequenceLoader` (windows of
an event shard set), with the pipeline's `LastBatch` and `WorkItem`.

    from fastvid.data import VideoLoader, EventSequenceLoader
"""

from __future__ import annotations

__all__ = ["VideoLoader", "EventSequenceLoader", "LastBatch", "WorkItem"]


def __getattr__(name):
    # Imported on first use: the loaders pull in torch and their decoders.
    if name == "VideoLoader":
        from fastvid.video.loader import VideoLoader

        return VideoLoader
    if name == "EventSequenceLoader":
        from fastvid.events.sequence import EventSequenceLoader

        return EventSequenceLoader
    if name == "LastBatch":
        from fastvid.pipeline.contract import LastBatch

        return LastBatch
    if name == "WorkItem":
        from fastvid.pipeline.contract import WorkItem

        return WorkItem
    raise AttributeError(f"module 'fastvid.data' has no attribute {name!r}")
