"""The contract between the epoch planner (fastvid.data.sampling) and the loader backends.

A backend receives a rank's ordered list of `WorkItem`s for one epoch and decodes, for each, the
listed clips of that video's clip grid (fastvid.data.plan.plan_clips gives their frames, crop boxes
and flips). Nothing else about the order or the partition over ranks is decided by a backend.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkItem:
    shard: int                            # index into the shard set's shards
    sample: int                           # sample index inside that shard
    clips: tuple[int, ...] | None = None  # which clips of the video's clip grid; None = the config's default choice
