"""What one work item contributes to one epoch: frame indices, crop boxes and flips of its clips.

`ClipConfig` holds the loader's sampling and preset settings; `plan_clips(config, meta, key, epoch,
clips)` turns a sample's metadata (its shard json: num_frames, fps, width, height) and the clip
indices of a `WorkItem` into a `ClipPlan`. It is a pure function of its arguments, called by the
DALI graph's Python callback and by the PyAV workers alike, so both backends cut the same clips.

Each training clip has its own crop and flip (drawn from (seed, epoch, key, clip)), as torchvision
transforms every clip on its own. An evaluation item holds T temporal clips x S spatial views: the
rows are clip-major (clip 0 view 0, clip 0 view 1, ...), the S views of a clip share its frames, so
a backend decodes every distinct frame of the video once and cuts all views from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastvid.video import presets as presets_mod
from fastvid.video import sampling


@dataclass(frozen=True)
class ClipConfig:
    clip_len: int
    frame_stride: int
    clips_per_video: int                  # training: clips drawn per video; evaluation: temporal views T
    train: bool
    preset: presets_mod.Preset
    frame_rate: float | None = None
    seed: int = 0
    step_between_clips: int = 1           # torchvision's frames_between_clips (the reference passes 1)
    short_videos: str = "drop"            # drop | pad
    clip_sampling: str = "without_replacement"
    sampler: str = "clips"                # clips (VideoClips grid) | segments (TSN: one frame per segment)
    spatial_views: int = 1                # evaluation: spatial views S per clip (1 centre, 3 along the long side)

    def __post_init__(self):
        if self.sampler not in sampling.SAMPLERS:
            raise ValueError(f"sampler must be one of {sampling.SAMPLERS}, got {self.sampler!r}")
        if self.clip_sampling not in sampling.CLIP_SAMPLING:
            raise ValueError(f"clip_sampling must be one of {sampling.CLIP_SAMPLING}, got {self.clip_sampling!r}")
        if self.short_videos not in sampling.SHORT_VIDEOS:
            raise ValueError(f"short_videos must be one of {sampling.SHORT_VIDEOS}, got {self.short_videos!r}")
        if self.spatial_views not in (1, 3):
            raise ValueError(f"spatial_views must be 1 or 3, got {self.spatial_views}")

    @property
    def views_per_clip(self) -> int:
        return 1 if self.train else self.spatial_views


@dataclass
class ClipPlan:
    frames: np.ndarray  # (N, T) int64 source frame indices
    boxes: np.ndarray   # (N, 4) int64 y0, x0, h, w in source pixels
    flips: np.ndarray   # (N,) bool
    out_size: tuple[int, int]
    clips: np.ndarray   # (N,) the grid clip each row comes from (views of one clip repeat it)


# Bounds of what a sample's json may claim (a hostile or broken json is a bad sample, never an allocation):
MAX_SIDE = 16384  # pixels, each side (beyond every codec's limit)


def _whole_number(meta: dict, key: str, field: str, low: int, high: int) -> int:
    value = meta[field]
    try:
        number = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = float("nan")
    if not (math.isfinite(number) and number.is_integer() and low <= number <= high):
        raise ValueError(f"sample {key!r}: json field {field} is {value!r}, not a whole number in [{low}, {high}]")
    return int(number)


def metadata_fields(meta: dict, key: str) -> tuple[int, float | None, int, int]:
    """(num_frames, fps, height, width) from a sample's json, checked: whole numbers within bounds (num_frames
    <= sampling.MAX_FRAMES, sides <= MAX_SIDE), fps finite and positive or absent. Anything else is a
    ValueError naming the sample and the field (the loaders skip, count and log the sample)."""
    if not isinstance(meta, dict) or any(f not in meta for f in ("num_frames", "height", "width")):
        raise ValueError(f"sample {key!r}: json lacks num_frames/height/width (got {sorted(meta) if isinstance(meta, dict) else meta!r})")
    num_frames = _whole_number(meta, key, "num_frames", 0, sampling.MAX_FRAMES)
    height, width = (_whole_number(meta, key, side, 1, MAX_SIDE) for side in ("height", "width"))
    fps = meta.get("fps")
    if fps is None:
        return num_frames, None, height, width
    try:
        rate = float("nan") if isinstance(fps, bool) else float(fps)
    except (TypeError, ValueError, OverflowError):
        rate = float("nan")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"sample {key!r}: json field fps is {fps!r}, not a finite positive number")
    return num_frames, rate, height, width


def grid_size(config: ClipConfig, meta: dict, key: str) -> int:
    """Number of clips in a video's grid (0: dropped); for TSN segments, the number of segment draws."""
    num_frames, fps, _, _ = metadata_fields(meta, key)
    if config.sampler == "segments":
        return config.clips_per_video if num_frames > 0 else 0
    return sampling.num_grid_clips(num_frames, fps=fps, **_grid_options(config))


def grid_sizes(shard_set, config: ClipConfig) -> list[list[int]]:
    """Clip-grid size of every sample of a shard set ([shard][sample]), from the shard jsons (read once)."""
    from fastvid.video.reader import sample_metadata

    out = []
    for si, shard in enumerate(shard_set.shards):
        sizes = []
        for i, key in enumerate(shard.keys):
            try:
                sizes.append(grid_size(config, sample_metadata(shard_set, si, i), key))
            except ValueError:
                # Unusable metadata: keep the sample in the plan as one clip, so the backend reports it as a
                # failed sample (skipped, counted, logged) like any other broken sample.
                sizes.append(1)
        out.append(sizes)
    return out


def _grid_options(config: ClipConfig) -> dict:
    return dict(clip_len=config.clip_len, frame_stride=config.frame_stride, step_between_clips=config.step_between_clips,
                frame_rate=config.frame_rate, short_videos=config.short_videos)


def video_grid(config: ClipConfig, meta: dict, key: str) -> np.ndarray:
    """Every clip of a video's grid (the planner itself only builds the rows it uses)."""
    num_frames, fps, _, _ = metadata_fields(meta, key)
    return sampling.clip_grid(num_frames, fps=fps, **_grid_options(config))


def default_clips(config: ClipConfig, meta: dict, key: str, epoch: int) -> np.ndarray:
    """The clips a video gives when a work item does not list them (the epoch planner's own choice)."""
    k = grid_size(config, meta, key)
    if config.sampler == "segments":
        return np.arange(k, dtype=np.int64) if config.train else np.arange(config.clips_per_video, dtype=np.int64)
    rng = sampling.sample_rng(config.seed, epoch, key, 0) if config.train else None
    return sampling.choose_clips(k, config.clips_per_video, config.train, rng, config.clip_sampling)


def _segment_frames(config: ClipConfig, num_frames: int, key: str, epoch: int, clips: np.ndarray) -> np.ndarray:
    if config.train:
        return np.stack([sampling.segment_indices(num_frames, config.clip_len, True, _clip_rng(config, epoch, key, c, 0))
                         for c in clips])
    # Evaluation: view t of T takes the point (t + 0.5) / T of each segment (T = 1: its centre).
    length = num_frames / config.clip_len
    rows = []
    for c in clips:
        frac = (int(c) + 0.5) / config.clips_per_video
        rows.append(np.minimum(np.floor(np.arange(config.clip_len) * length + frac * length).astype(np.int64), num_frames - 1))
    return np.stack(rows)


def _clip_rng(config: ClipConfig, epoch: int, key: str, clip: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([config.seed & 0xFFFFFFFF, int(epoch), sampling.key_hash(key), 1 + stream, int(clip)])


def plan_clips(config: ClipConfig, meta: dict, key: str, epoch: int, clips=None) -> ClipPlan:
    """Frames, boxes and flips of the listed grid `clips` (None: `default_clips`) of one video."""
    num_frames, fps, height, width = metadata_fields(meta, key)
    if num_frames < 1:
        raise ValueError(f"sample {key!r} has no frames (num_frames={num_frames})")
    clips = default_clips(config, meta, key, epoch) if clips is None else np.asarray(clips, np.int64).reshape(-1)
    if len(clips) == 0:
        raise ValueError(f"sample {key!r}: no clip of {config.clip_len} frames fits its {num_frames} frames "
                         "(short videos are dropped; short_videos='pad' keeps them)")
    if config.sampler == "segments":
        frames = _segment_frames(config, num_frames, key, epoch, clips)
    else:
        size = grid_size(config, meta, key)
        if clips.max() >= size or clips.min() < 0:
            raise ValueError(f"sample {key!r}: clip {int(clips.max())} is outside its grid of {size} clips")
        frames = sampling.clip_rows(num_frames, clips, fps=fps, **_grid_options(config))
    if config.train:
        geometry = [presets_mod.clip_geometry(config.preset, height, width, True, _clip_rng(config, epoch, key, c, 1), 1)[0]
                    for c in clips]
        rows = np.arange(len(clips))
    else:
        views = presets_mod.view_geometry(config.preset, height, width, config.spatial_views)
        geometry = [g for _ in clips for g in views]
        rows = np.repeat(np.arange(len(clips)), len(views))
    boxes = np.asarray([g.box for g in geometry], np.int64).reshape(-1, 4)
    flips = np.asarray([g.flip for g in geometry], bool)
    return ClipPlan(frames[rows], boxes, flips, config.preset.crop_size, clips[rows])


def plan_work(config, meta: dict, key: str, epoch: int, item) -> ClipPlan:
    """The ClipPlan of one work item: `plan_clips`, told which clips when the item names them."""
    if item.clips is None:
        return plan_clips(config, meta, key, epoch)
    return plan_clips(config, meta, key, epoch, clips=item.clips)
