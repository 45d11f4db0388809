"""Pure clip-sampling and rank-partitioning logic shared by every loader backend.

Nothing here touches files or decoders, so the DALI backend (inside its graph, through a Python
callback), the PyAV backend (inside DataLoader workers) and the tests all compute exactly the same
frame indices for a given (seed, epoch, key, clip).

Policies:
- training takes `clips_per_video` random starts per video per epoch (temporal jitter), drawn from
  a generator seeded by (seed, epoch, crc32(key)), so a clip does not depend on the order in which
  samples arrive, on the backend or on the number of workers;
- evaluation takes `clips_per_video` evenly spaced starts (torchvision's UniformClipSampler:
  linspace over all valid starts), deterministic;
- the distance between sampled frames is `frame_stride`, or `frame_stride * fps / frame_rate` when a
  target frame rate is given (torchvision's --frame-rate resampling), possibly fractional;
- videos shorter than a clip are padded by repeating their last frame, never skipped;
- ranks take contiguous ranges of the (per-epoch permuted) sample list, the same split as DALI's
  readers (`shard_id`/`num_shards`); every rank yields the same number of batches: training drops
  the tail (the smallest rank decides), evaluation pads by wrapping around the rank's own samples
  (the largest rank decides; wrapped clips repeat keys, so per-key averaging is unaffected).
"""

from __future__ import annotations

import math
import zlib

import numpy as np


def key_hash(key: str) -> int:
    """Stable 32-bit hash of a sample key (Python's hash() is salted per process)."""
    return zlib.crc32(key.encode("utf-8"))


def sample_rng(seed: int, epoch: int, key: str, stream: int = 0) -> np.random.Generator:
    """Generator for one sample in one epoch; `stream` separates temporal (0) from spatial (1) draws."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), key_hash(key), int(stream)])


def frame_step(frame_stride: int, fps: float | None = None, frame_rate: float | None = None) -> float:
    """Distance in source frames between two sampled frames."""
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    if frame_rate is None or not fps or fps <= 0:
        return float(frame_stride)
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be > 0, got {frame_rate}")
    return float(frame_stride) * float(fps) / float(frame_rate)


def clip_span(clip_len: int, step: float) -> int:
    """Number of source frames covered by one clip (first to last sampled frame, inclusive)."""
    return int(math.floor((clip_len - 1) * step)) + 1


def max_clip_start(num_frames: int, clip_len: int, step: float) -> int:
    """Largest start whose clip fits in the video; 0 for videos shorter than one clip."""
    return max(int(num_frames) - clip_span(clip_len, step), 0)


def train_clip_starts(num_frames: int, clip_len: int, step: float, clips_per_video: int, rng: np.random.Generator) -> np.ndarray:
    """`clips_per_video` independent uniform random starts in [0, max_clip_start]."""
    high = max_clip_start(num_frames, clip_len, step)
    return rng.integers(0, high + 1, size=clips_per_video).astype(np.int64)


def eval_clip_starts(num_frames: int, clip_len: int, step: float, clips_per_video: int) -> np.ndarray:
    """`clips_per_video` evenly spaced starts from 0 to max_clip_start (torchvision's uniform sampler)."""
    high = max_clip_start(num_frames, clip_len, step)
    return np.floor(np.linspace(0, high, clips_per_video) + 0.5).astype(np.int64)


def clip_frame_indices(start: int, clip_len: int, step: float, num_frames: int) -> np.ndarray:
    """Frame indices of one clip; indices past the end repeat the last frame (short-video padding)."""
    offsets = np.floor(np.arange(clip_len) * step + 1e-9).astype(np.int64)
    return np.minimum(int(start) + offsets, max(int(num_frames) - 1, 0))


def sample_clip_indices(num_frames: int, *, clip_len: int, frame_stride: int, clips_per_video: int = 1, train: bool = True,
                        fps: float | None = None, frame_rate: float | None = None, seed: int = 0, epoch: int = 0,
                        key: str = "") -> np.ndarray:
    """(clips_per_video, clip_len) int64 frame indices of the clips a video contributes this epoch."""
    if num_frames < 1:
        raise ValueError(f"sample {key!r} has no frames (num_frames={num_frames})")
    step = frame_step(frame_stride, fps, frame_rate)
    if train:
        starts = train_clip_starts(num_frames, clip_len, step, clips_per_video, sample_rng(seed, epoch, key, 0))
    else:
        starts = eval_clip_starts(num_frames, clip_len, step, clips_per_video)
    return np.stack([clip_frame_indices(s, clip_len, step, num_frames) for s in starts])


# ---- rank partitioning -------------------------------------------------------------------------

def rank_ranges(num_samples: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) sample ranges per rank: the split DALI readers use for shard_id/num_shards."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return [(num_samples * r // world_size, num_samples * (r + 1) // world_size) for r in range(world_size)]


def batches_per_epoch(num_samples: int, world_size: int, batch_size: int, clips_per_video: int, drop_last: bool) -> int:
    """Batches every rank yields per epoch (identical on all ranks so DDP never waits on an uneven tail)."""
    sizes = [e - s for s, e in rank_ranges(num_samples, world_size)]
    if drop_last:
        return min(sizes) * clips_per_video // batch_size
    return -(-max(sizes) * clips_per_video // batch_size)


def videos_per_epoch(num_batches: int, batch_size: int, clips_per_video: int) -> int:
    """Videos a rank must read to fill `num_batches` batches (the last video may contribute only some clips)."""
    return -(-num_batches * batch_size // clips_per_video)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Order of the tar shards in one epoch: a (seed, epoch) permutation when shuffling, identical on all ranks."""
    if not shuffle:
        return np.arange(num_shards)
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), 0x5A4D]).permutation(num_shards)


def rank_epoch_samples(shard_sizes: list[int], rank: int, world_size: int, seed: int, epoch: int, shuffle: bool) -> list[tuple[int, int]]:
    """(shard index, sample index inside that shard) of this rank's samples this epoch, in reader order.

    The shards are concatenated in `shard_order` and split into contiguous rank ranges, exactly as the
    DALI reader does with the same path list, so both backends give a rank the same samples.
    """
    order = shard_order(len(shard_sizes), seed, epoch, shuffle)
    flat = [(int(s), i) for s in order for i in range(shard_sizes[s])]
    start, end = rank_ranges(len(flat), world_size)[rank]
    return flat[start:end]


def rank_epoch_plan(shard_sizes: list[int], rank: int, world_size: int, *, batch_size: int, clips_per_video: int,
                    drop_last: bool, seed: int, epoch: int, shuffle: bool) -> list[tuple[int, int]]:
    """The rank's samples for one epoch, shuffled (training), then cut (drop) or wrapped (pad) to the common length."""
    samples = rank_epoch_samples(shard_sizes, rank, world_size, seed, epoch, shuffle)
    if shuffle:
        perm = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(rank), 0x51]).permutation(len(samples))
        samples = [samples[i] for i in perm]
    nb = batches_per_epoch(sum(shard_sizes), world_size, batch_size, clips_per_video, drop_last)
    need = videos_per_epoch(nb, batch_size, clips_per_video)
    if need <= len(samples):
        return samples[:need]
    if not samples:
        return []
    return [samples[i % len(samples)] for i in range(need)]
