"""What one video contributes to one epoch: frame indices, crop boxes and flips of its clips.

`ClipConfig` holds the loader's sampling and preset settings; `plan_clips(config, meta, key, epoch)`
turns a sample's metadata (its shard json: num_frames, fps, width, height) into a `ClipPlan`. It is
a pure function of (config, metadata, key, epoch), called by the DALI graph's Python callback and by
the PyAV workers alike, which is why both backends cut the same clips for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastvid.data import presets as presets_mod
from fastvid.data import sampling


@dataclass(frozen=True)
class ClipConfig:
    clip_len: int
    frame_stride: int
    clips_per_video: int
    train: bool
    preset: presets_mod.Preset
    frame_rate: float | None = None
    seed: int = 0


@dataclass
class ClipPlan:
    frames: np.ndarray  # (N, T) int64 source frame indices
    boxes: np.ndarray   # (N, 4) int64 y0, x0, h, w in source pixels
    flips: np.ndarray   # (N,) bool
    out_size: tuple[int, int]


def metadata_fields(meta: dict, key: str) -> tuple[int, float | None, int, int]:
    """(num_frames, fps, height, width) from a sample's json; a clear error naming the key when absent."""
    try:
        num_frames = int(meta["num_frames"])
        height, width = int(meta["height"]), int(meta["width"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"sample {key!r}: json lacks num_frames/height/width (got {sorted(meta) if isinstance(meta, dict) else meta!r})") from None
    fps = meta.get("fps")
    return num_frames, (float(fps) if fps else None), height, width


def plan_clips(config: ClipConfig, meta: dict, key: str, epoch: int) -> ClipPlan:
    num_frames, fps, height, width = metadata_fields(meta, key)
    frames = sampling.sample_clip_indices(
        num_frames, clip_len=config.clip_len, frame_stride=config.frame_stride, clips_per_video=config.clips_per_video,
        train=config.train, fps=fps, frame_rate=config.frame_rate, seed=config.seed, epoch=epoch, key=key)
    rng = sampling.sample_rng(config.seed, epoch, key, 1) if config.train else None
    # One crop and flip per video and epoch, shared by its clips: DALI's ROI resize takes one region per
    # sample (a sample = all clips of a video decoded in one call), and both backends must agree.
    (geometry,) = presets_mod.clip_geometry(config.preset, height, width, config.train, rng, 1)
    boxes = np.tile(np.asarray(geometry.box, np.int64), (config.clips_per_video, 1))
    flips = np.full(config.clips_per_video, geometry.flip, bool)
    return ClipPlan(frames, boxes, flips, config.preset.crop_size)
