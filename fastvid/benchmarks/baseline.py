"""The torchvision-reference-style baseline loader that `fastvid bench loader` compares fastvid's loaders
against: benchmark code only (no training path uses it), kept apart from the video kind.

What torchvision's video classification reference does per clip, without fastvid's shards: open the
ORIGINAL video file, seek to the clip's start timestamp, decode with PyAV up to its end (every frame in
between is converted to RGB, as `torchvision.io.read_video` does), take every `frame_stride`-th frame,
then in torch: resize the whole frames to 128x171, random crop 112 (centre for eval), flip, normalize,
in a torch DataLoader with worker processes. One clip per video, placed by the baseline's own simple
sampler below (random start in training, evenly spaced starts in evaluation, short videos padded with the
last frame; not fastvid's clip grid), seeded by (seed, epoch, key) as fastvid's loaders are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastvid.video.presets import get_preset, normalization
from fastvid.video.pyav_backend import _worker_init  # one thread per decode worker, as the PyAV backend
from fastvid.video.sampling import sample_rng


# ---- clip starts: the baseline's own simple sampler (not the torchvision clip grid of fastvid.video.sampling) ----

def frame_step(frame_stride: int, fps: float | None = None, frame_rate: float | None = None) -> float:
    """Distance in source frames between two sampled frames."""
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    if frame_rate is None or not fps or fps <= 0:
        return float(frame_stride)
    if frame_rate <= 0:
        raise ValueError(f"frame_rate must be > 0, got {frame_rate}")
    return float(frame_stride) * float(fps) / float(frame_rate)


def clip_frame_indices(start: int, clip_len: int, step: float, num_frames: int) -> np.ndarray:
    """Frame indices of one clip starting at `start`; indices past the end repeat the last frame."""
    offsets = np.floor(np.arange(clip_len) * step + 1e-9).astype(np.int64)
    return np.minimum(int(start) + offsets, max(int(num_frames) - 1, 0))


def sample_clip_indices(num_frames: int, *, clip_len: int, frame_stride: int, clips_per_video: int = 1, train: bool = True,
                        fps: float | None = None, frame_rate: float | None = None, seed: int = 0, epoch: int = 0,
                        key: str = "") -> np.ndarray:
    """(clips_per_video, clip_len) frame indices with random (train) or evenly spaced (eval) starts, short videos padded."""
    if num_frames < 1:
        raise ValueError(f"sample {key!r} has no frames (num_frames={num_frames})")
    step = frame_step(frame_stride, fps, frame_rate)
    high = max(int(num_frames) - (int(math.floor((clip_len - 1) * step)) + 1), 0)
    if train:
        starts = sample_rng(seed, epoch, key, 0).integers(0, high + 1, size=clips_per_video)
    else:
        starts = np.floor(np.linspace(0, high, clips_per_video) + 0.5).astype(np.int64)
    return np.stack([clip_frame_indices(s, clip_len, step, num_frames) for s in starts])


# ---- reading and transforming clips ----

def probe_video(path) -> dict:
    """num_frames, fps, time base and start time of a file (the reference caches this in a pre-pass)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        num_frames = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
        return {"num_frames": int(num_frames), "fps": float(stream.average_rate), "time_base": float(stream.time_base),
                "start_pts": int(stream.start_time or 0)}


def read_clip(path, frame_indices, info: dict) -> np.ndarray:
    """(T, H, W, 3) uint8 frames `frame_indices` of a file: seek to the first, decode to the last (read_video style)."""
    import av

    first, last = int(min(frame_indices)), int(max(frame_indices))
    fps, tb = info["fps"], info["time_base"]
    start_pts = info["start_pts"] + int(first / fps / tb)
    frames = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(start_pts, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            index = int(round((frame.pts - info["start_pts"]) * tb * fps))
            if index < first:
                continue
            frames[index] = frame.to_ndarray(format="rgb24")  # read_video converts every frame of the range
            if index >= last:
                break
    if not frames:
        raise ValueError(f"{path}: no frame decoded around frame {first}")
    keys = sorted(frames)
    return np.stack([frames[min(keys, key=lambda k: abs(k - i))] for i in frame_indices])


class BaselineClipDataset(torch.utils.data.Dataset):
    """One clip per (video, epoch): read from the original file and transformed the torchvision way."""

    def __init__(self, videos: list[tuple[str, int]], *, clip_len: int, frame_stride: int, preset: str = "video_resnet",
                 train: bool = True, seed: int = 0, epoch: int = 0):
        self.videos = videos
        self.clip_len, self.frame_stride = clip_len, frame_stride
        self.preset = get_preset(preset)
        self.train, self.seed, self.epoch = train, seed, epoch
        mean, std = normalization(self.preset)
        self.mean, self.std = torch.from_numpy(mean / 255).view(3, 1, 1, 1), torch.from_numpy(std / 255).view(3, 1, 1, 1)
        self.infos = [probe_video(p) for p, _ in videos]

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        path, label = self.videos[i]
        info = self.infos[i]
        key = Path(path).stem
        idx = sample_clip_indices(info["num_frames"], clip_len=self.clip_len, frame_stride=self.frame_stride,
                                  train=self.train, seed=self.seed, epoch=self.epoch, key=key)[0]
        frames = torch.from_numpy(read_clip(path, idx, info))  # (T, H, W, 3) uint8
        # torchvision reference transforms: ConvertImageDtype -> Resize -> RandomCrop -> HFlip -> Normalize -> (C, T, H, W)
        video = frames.permute(0, 3, 1, 2).float() / 255.0
        video = F.interpolate(video, size=tuple(self.preset.resize_size), mode="bilinear", align_corners=False, antialias=True)
        ch, cw = self.preset.crop_size
        rng = np.random.default_rng([self.seed, self.epoch, i])
        h, w = video.shape[-2:]
        y0 = int(rng.integers(0, h - ch + 1)) if self.train else int(round((h - ch) / 2))
        x0 = int(rng.integers(0, w - cw + 1)) if self.train else int(round((w - cw) / 2))
        video = video[..., y0:y0 + ch, x0:x0 + cw]
        if self.train and rng.random() < 0.5:
            video = video.flip(-1)
        video = video.permute(1, 0, 2, 3)
        video = (video - self.mean) / self.std
        return video.contiguous(), label


def videos_from_shards(shards_dir, video_dir=None) -> list[tuple[str, int]]:
    """(original file, label) of every sample of a shard set, from the samples' json "source" (or under video_dir)."""
    from fastvid.video.reader import open_shard_set

    shard_set = open_shard_set(shards_dir)
    # "source" is relative to the dataset root that was sharded (the manifest's options.src) unless absolute.
    src = ((shard_set.manifest or {}).get("options") or {}).get("src")
    root = Path(src) if src else None
    out = []
    for si, shard in enumerate(shard_set.shards):
        with open(shard_set.local_tar(si), "rb") as f:
            for i in range(len(shard)):
                meta = json.loads(shard_set.read_components(si, i, exts=("json",), handle=f)["json"])
                source = _find_source(Path(meta["source"]), video_dir, root)
                if source is None:
                    where = f"under {video_dir}" if video_dir is not None else "(pass --videos DIR: the dataset root that was sharded)"
                    raise FileNotFoundError(f"{meta['source']}: original video of sample {shard.keys[i]} not found {where}")
                out.append((str(source), int(meta["label"])))
    return out


def _find_source(source: Path, video_dir, root: Path | None) -> Path | None:
    candidates = [source] if source.is_absolute() else []
    if video_dir is not None:
        candidates.append(Path(video_dir) / source)
    if root is not None:
        candidates.append(root / source)
    for c in candidates:
        if c.exists():
            return c
    if video_dir is not None:
        return next(iter(Path(video_dir).rglob(source.name)), None)
    return None


def baseline_loader(videos, *, batch_size: int, clip_len: int, frame_stride: int, num_workers: int, preset="video_resnet",
                    train=True, seed=0, epoch=0):
    dataset = BaselineClipDataset(videos, clip_len=clip_len, frame_stride=frame_stride, preset=preset, train=train,
                                  seed=seed, epoch=epoch)
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator,
                                       num_workers=num_workers, drop_last=True, persistent_workers=num_workers > 0,
                                       worker_init_fn=_worker_init if num_workers else None,
                                       prefetch_factor=2 if num_workers else None)
