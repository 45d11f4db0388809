"""Pure clip-sampling and epoch-planning logic shared by every loader backend (no files, no decoders).

Follows torchvision's video_classification reference (`VideoClips` + `RandomClipSampler` /
`UniformClipSampler`, `references/video_classification/train.py`) unless an option says otherwise:

- clip grid: a video's frame indices are resampled to `frame_rate` (VideoClips._resample_video_idx:
  a slice with step fps/frame_rate when that is an integer, else floor(arange(floor(n * rate / fps)) * step)),
  then unfolded into clips of `clip_len` indices with `step_between_clips` between clip starts (the
  reference passes 1) and `frame_stride` between a clip's frames (unfold's dilation; torchvision: 1);
- videos with no complete clip are dropped (torchvision's behaviour); `short_videos="pad"` keeps them
  as one clip padded with the last frame (fastvid's former behaviour);
- training: each video gives min(grid size, clips_per_video) clips drawn without replacement
  (RandomClipSampler); `clip_sampling="with_replacement"` draws clips_per_video grid clips with
  replacement (fastvid's former random starts); every clip is its own sample (its own crop and flip),
  and all clips of the epoch are shuffled across the whole data set;
- evaluation: clips_per_video clips at floor(linspace(0, grid size - 1, clips_per_video)) of the grid
  (UniformClipSampler), all views of a video in one work item so its frames are decoded once;
- TSN segments (`sampler="segments"`, PaddleVideo's TSM): clip_len frames, one from each of clip_len
  equal segments of the video, random offset in training, centre in evaluation.

Random draws come from generators seeded by (seed, epoch, key) or (seed, epoch), never by the rank
or the world size, so the global order of an epoch's clips is the same for any number of ranks: a
run resumed mid-epoch on another number of ranks continues the same list (elastic resume).

Streamed (remote) sets, where a rank should download only about 1/world_size of the set, are planned
per shard instead (`shard_train_items`, the way WebDataset and MosaicML Streaming split a set): the
epoch's shards are permuted with (seed, epoch); the clips of that shard sequence are cut into
world_size contiguous, equal parts (a shard at a cut is read by both neighbours); inside its part a
rank shuffles clips within blocks of `block` consecutive shards, so it holds only a block or two of
shards at a time. Every rank gets the same number of clips (n // world_size). A resume on the same
world size continues exactly; on another world size the parts are dealt anew and each rank skips the
fraction of the epoch already done, so within that epoch some clips repeat and others are skipped
(the following epochs are exact).
"""

from __future__ import annotations

import math
import zlib

import numpy as np

from fastvid.pipeline.contract import WorkItem

SHORT_VIDEOS = ("drop", "pad")
CLIP_SAMPLING = ("without_replacement", "with_replacement")
SAMPLERS = ("clips", "segments")


def key_hash(key: str) -> int:
    """Stable 32-bit hash of a sample key (Python's hash() is salted per process)."""
    return zlib.crc32(key.encode("utf-8"))


def sample_rng(seed: int, epoch: int, key: str, stream: int = 0) -> np.random.Generator:
    """Generator for one sample in one epoch; `stream` separates temporal (0) from spatial (1+) draws."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), key_hash(key), int(stream)])


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """Generator shared by all ranks for one epoch (the global clip shuffle)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)])


# ---- clip grid (torchvision VideoClips) ---------------------------------------------------------
# Computed from numbers, never by building a video's whole frame list or grid: a sample's json says how many
# frames it has, and what is allocated stays proportional to the clips asked for, not to that number.

# Frames a video may have, before and after resampling to the frame rate (over 90 hours at 30 fps); a sample
# whose json claims more is a bad sample (fastvid.video.plan.metadata_fields), not a 22 GiB allocation.
MAX_FRAMES = 10**7


def _resampling(num_frames: int, fps: float | None, frame_rate: float | None) -> tuple[int, int | float]:
    """(length, step) of a video's frame indices resampled to `frame_rate` (VideoClips._resample_video_idx):
    resampled frame i is source frame i * step for an integer step (a slice), else floor(i * step)."""
    if frame_rate is None or not fps or fps <= 0:
        return int(num_frames), 1
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be > 0, got {frame_rate}")
    step = float(fps) / float(frame_rate)
    if step.is_integer():
        # A step past the end keeps frame 0 alone, as any larger one does (and stays a small integer).
        step = min(int(step), max(int(num_frames), 1))
        return -(-int(num_frames) // step), step
    length = num_frames * float(frame_rate) / float(fps)
    if not length <= MAX_FRAMES:  # NaN and inf included
        raise ValueError(f"{num_frames} frames at {fps:g} fps resampled to {frame_rate:g} fps would be {length:g} frames, "
                         f"more than {MAX_FRAMES}")
    return int(math.floor(length)), step


def _source_frames(positions: np.ndarray, step: int | float) -> np.ndarray:
    """Source frame indices of resampled positions (any shape)."""
    if isinstance(step, int):
        return positions.astype(np.int64) * step
    return np.floor(positions.astype(np.float64) * step).astype(np.int64)


def _check_grid_options(clip_len: int, frame_stride: int, step_between_clips: int, short_videos: str) -> None:
    if clip_len < 1 or frame_stride < 1 or step_between_clips < 1:
        raise ValueError(f"clip_len, frame_stride and step_between_clips must be >= 1 "
                         f"(got {clip_len}, {frame_stride}, {step_between_clips})")
    if short_videos not in SHORT_VIDEOS:
        raise ValueError(f"short_videos must be one of {SHORT_VIDEOS}, got {short_videos!r}")


def _grid(num_frames, clip_len, frame_stride, step_between_clips, fps, frame_rate, short_videos):
    """(K, resampled length, step, padded) of a video's clip grid: K windows of `clip_len` resampled frames,
    `frame_stride` apart (unfold's dilation), starting every `step_between_clips` (torchvision's unfold)."""
    _check_grid_options(clip_len, frame_stride, step_between_clips, short_videos)
    length, step = _resampling(num_frames, fps, frame_rate)
    span = frame_stride * (clip_len - 1) + 1
    k = (length - span) // step_between_clips + 1 if length >= span else 0
    if k == 0 and short_videos == "pad" and length:
        return 1, length, step, True
    return k, length, step, False


def num_grid_clips(num_frames: int, *, clip_len: int, frame_stride: int = 1, step_between_clips: int = 1,
                   fps: float | None = None, frame_rate: float | None = None, short_videos: str = "drop") -> int:
    """Size of a video's clip grid (0: a dropped short video), without building it."""
    return _grid(num_frames, clip_len, frame_stride, step_between_clips, fps, frame_rate, short_videos)[0]


def clip_rows(num_frames: int, rows, *, clip_len: int, frame_stride: int = 1, step_between_clips: int = 1,
              fps: float | None = None, frame_rate: float | None = None, short_videos: str = "drop") -> np.ndarray:
    """(len(rows), clip_len) int64 source frame indices of the grid clips `rows` (rows of `clip_grid`), built
    without the rest of the grid. A short video kept by short_videos="pad" is one clip padded with its last frame."""
    k, length, step, padded = _grid(num_frames, clip_len, frame_stride, step_between_clips, fps, frame_rate, short_videos)
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= k):
        raise ValueError(f"clips {rows.tolist()[:8]} are not all inside the grid of {k} clips")
    offsets = np.arange(clip_len, dtype=np.int64) * frame_stride
    if padded:
        offsets = np.minimum(offsets, length - 1)
    return _source_frames(rows[:, None] * step_between_clips + offsets[None, :], step)


def clip_grid(num_frames: int, *, clip_len: int, frame_stride: int = 1, step_between_clips: int = 1,
              fps: float | None = None, frame_rate: float | None = None, short_videos: str = "drop") -> np.ndarray:
    """(K, clip_len) int64 source frame indices of every clip of a video; K = 0 for a dropped short video."""
    kwargs = dict(clip_len=clip_len, frame_stride=frame_stride, step_between_clips=step_between_clips, fps=fps,
                  frame_rate=frame_rate, short_videos=short_videos)
    return clip_rows(num_frames, np.arange(num_grid_clips(num_frames, **kwargs)), **kwargs)


def choose_clips(num_clips: int, clips_per_video: int, train: bool, rng: np.random.Generator | None = None,
                 clip_sampling: str = "without_replacement") -> np.ndarray:
    """Indices into a video's clip grid: RandomClipSampler (train) or UniformClipSampler (eval)."""
    if num_clips <= 0:
        return np.zeros(0, np.int64)
    if not train:
        return np.floor(np.linspace(0, num_clips - 1, clips_per_video)).astype(np.int64)
    if rng is None:
        raise ValueError("training clip choice needs an rng")
    if clip_sampling == "with_replacement":
        return rng.integers(0, num_clips, size=clips_per_video).astype(np.int64)
    if clip_sampling != "without_replacement":
        raise ValueError(f"clip_sampling must be one of {CLIP_SAMPLING}, got {clip_sampling!r}")
    return rng.permutation(num_clips)[:min(num_clips, clips_per_video)].astype(np.int64)


def segment_indices(num_frames: int, num_segments: int, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """(num_segments,) frame indices, one per equal segment of the video (TSN / PaddleVideo TSM sampling).

    Segment i covers [i * n / S, (i + 1) * n / S); training takes a uniform random frame of it, evaluation
    its centre. Videos shorter than num_segments repeat frames (every segment still gives one index).
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    length = num_frames / num_segments
    starts = np.arange(num_segments) * length
    if train:
        if rng is None:
            raise ValueError("training segment sampling needs an rng")
        offsets = rng.random(num_segments) * length
    else:
        offsets = np.full(num_segments, length / 2.0)
    return np.minimum(np.floor(starts + offsets).astype(np.int64), num_frames - 1)


# ---- epoch plans --------------------------------------------------------------------------------

def rank_ranges(num_samples: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges per rank (also the split DALI readers use for shard_id/num_shards)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return [(num_samples * r // world_size, num_samples * (r + 1) // world_size) for r in range(world_size)]


def train_items(grid_sizes: list[list[int]], keys: list[list[str]], *, clips_per_video: int, seed: int, epoch: int,
                clip_sampling: str = "without_replacement") -> list[WorkItem]:
    """Every training clip of the epoch as its own one-clip WorkItem, shuffled across the whole data set.

    The list is the same on every rank and for any world size (RandomClipSampler's two steps: pick clips
    per video, then one permutation of all picked clips).
    """
    items = []
    for s, (sizes, shard_keys) in enumerate(zip(grid_sizes, keys)):
        for i, (k, key) in enumerate(zip(sizes, shard_keys)):
            for c in choose_clips(k, clips_per_video, True, sample_rng(seed, epoch, key, 0), clip_sampling):
                items.append(WorkItem(s, i, (int(c),)))
    perm = epoch_rng(seed, epoch, 0x51).permutation(len(items))
    return [items[j] for j in perm]


def shard_permutation(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """Order of the shards in one epoch of a streamed plan (the same on every rank)."""
    return epoch_rng(seed, epoch, 0x5348).permutation(num_shards)


def _clips_per_video(k: int, clips_per_video: int, clip_sampling: str) -> int:
    if k <= 0:
        return 0
    return clips_per_video if clip_sampling == "with_replacement" else min(k, clips_per_video)


def shard_part(grid_sizes: list[list[int]], *, clips_per_video: int, seed: int, epoch: int, rank: int, world_size: int,
               clip_sampling: str = "without_replacement") -> list[tuple[int, int, int]]:
    """Rank `rank`'s part of a streamed epoch: [(shard, first clip, end clip)] in the epoch's shard order, the
    clip positions counted within each shard; every rank's part holds n // world_size clips."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    counts = [sum(_clips_per_video(k, clips_per_video, clip_sampling) for k in sizes) for sizes in grid_sizes]
    order = shard_permutation(len(grid_sizes), seed, epoch)
    total = sum(counts)
    share = total // world_size
    start = total * rank // world_size
    stop = start + share
    part, position = [], 0
    for s in order:
        s = int(s)
        a, b = max(start, position), min(stop, position + counts[s])
        if a < b:
            part.append((s, a - position, b - position))
        position += counts[s]
    return part


def shard_train_items(grid_sizes: list[list[int]], keys: list[list[str]], *, clips_per_video: int, seed: int, epoch: int,
                      rank: int, world_size: int, block: int, clip_sampling: str = "without_replacement") -> list[WorkItem]:
    """A rank's training clips of a streamed epoch (see the module docstring): its contiguous part of the
    permuted shard sequence, clips shuffled within blocks of `block` shards. Each video's clips are the
    ones RandomClipSampler picks in the global plan (same per-video draws)."""
    if block < 1:
        raise ValueError(f"block must be >= 1 shard, got {block}")
    part = shard_part(grid_sizes, clips_per_video=clips_per_video, seed=seed, epoch=epoch, rank=rank,
                      world_size=world_size, clip_sampling=clip_sampling)
    items: list[WorkItem] = []
    for b in range(0, len(part), block):
        chunk = []
        for s, first, end in part[b:b + block]:
            clips = [WorkItem(s, i, (int(c),)) for i, (k, key) in enumerate(zip(grid_sizes[s], keys[s]))
                     for c in choose_clips(k, clips_per_video, True, sample_rng(seed, epoch, key, 0), clip_sampling)]
            chunk.extend(clips[first:end])
        # Seeded by the block's first shard: the same block shuffles the same way wherever it is read.
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0xB10C, part[b][0], part[b][1]])
        items.extend(chunk[j] for j in rng.permutation(len(chunk)))
    return items


def first_use_order(work: list[WorkItem]) -> list[int]:
    """The shards of a work list in the order it first reads them (what a rank's ShardStream fetches)."""
    return list(dict.fromkeys(item.shard for item in work))


def num_train_clips(grid_sizes: list[list[int]], clips_per_video: int, clip_sampling: str = "without_replacement") -> int:
    """Length of `train_items` (without building it): the epoch's training clips."""
    if clip_sampling == "with_replacement":
        return sum(clips_per_video for sizes in grid_sizes for k in sizes if k > 0)
    return sum(min(k, clips_per_video) for sizes in grid_sizes for k in sizes)


def eval_items(grid_sizes: list[list[int]], clips_per_video: int) -> list[WorkItem]:
    """One WorkItem per video with a clip grid, in shard order, holding its uniformly spaced clips."""
    return [WorkItem(s, i, tuple(int(c) for c in choose_clips(k, clips_per_video, False)))
            for s, sizes in enumerate(grid_sizes) for i, k in enumerate(sizes) if k > 0]


def train_batches(num_items: int, world_size: int, batch_size: int, start: int = 0, partial: bool = False) -> int:
    """Equal batches per rank for the clips [start, num_items) of an epoch: whole rounds of world_size x batch_size,
    plus (`partial`) one smaller round for the tail."""
    rounds, tail = divmod(max(num_items - start, 0), world_size * batch_size)
    return rounds + (1 if partial and tail else 0)


def last_batch_rows(num_items: int, world_size: int, batch_size: int, start: int = 0) -> int:
    """Rows of each rank's last batch with a partial tail round: the tail split evenly over the ranks
    (rounded up, as DistributedSampler pads its list to a multiple of the world size); batch_size without a tail."""
    tail = max(num_items - start, 0) % (world_size * batch_size)
    return -(-tail // world_size) if tail else batch_size


def rank_train_items(items: list[WorkItem], rank: int, world_size: int, batch_size: int, start: int = 0,
                     partial: bool = False) -> list[WorkItem]:
    """Rank `rank`'s clips from global position `start` on: round j gives it items[start + j*W*B + r*B : ... + B].

    A step consumes W*B consecutive clips of the global list on any world size, so a checkpoint only
    needs the global position (clips consumed) to resume on another number of ranks. The tail shorter
    than one round is dropped (drop_last on every rank) or, with `partial`, dealt as one last round of
    last_batch_rows clips per rank, padded by repeating the epoch's first clips (torchvision's
    DistributedSampler pads the same way; DataLoader keeps the smaller last batch).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    rounds = train_batches(len(items), world_size, batch_size, start)
    out = []
    for j in range(rounds):
        base = start + j * world_size * batch_size + rank * batch_size
        out.extend(items[base:base + batch_size])
    tail = items[start + rounds * world_size * batch_size:]
    if partial and tail:
        per = last_batch_rows(len(items), world_size, batch_size, start)
        padded = tail + [items[i % len(items)] for i in range(world_size * per - len(tail))]
        out.extend(padded[rank * per:(rank + 1) * per])
    return out


def eval_batches(num_items: int, world_size: int, batch_size: int, clips_per_item: int) -> int:
    """Batches per rank in evaluation: the largest rank's clips, rounded up (smaller ranks wrap around)."""
    biggest = max(e - s for s, e in rank_ranges(num_items, world_size))
    return -(-biggest * clips_per_item // batch_size)


def rank_eval_items(items: list[WorkItem], rank: int, world_size: int, batch_size: int, clips_per_item: int) -> list[WorkItem]:
    """A contiguous range of the videos per rank, wrapped around to the common batch count (repeats are
    the same keys, which video-level averaging counts once)."""
    start, end = rank_ranges(len(items), world_size)[rank]
    mine = items[start:end]
    need = -(-eval_batches(len(items), world_size, batch_size, clips_per_item) * batch_size // clips_per_item)
    if not mine:
        return []
    return [mine[i % len(mine)] for i in range(need)]
