"""PyAV fallback backend: shard bytes -> PyAV decode -> torch crop/resize/flip/normalize, in DataLoader workers.

Used when DALI is missing or cannot decode the codec on this device (DALI's CPU decoder handles
VP8/VP9 only). It reads the same byte ranges as DALI's webdataset reader (through the .idx files),
cuts clips with the same pure planner (fastvid.data.plan) and applies the same box/flip/resize/normalize,
so a (seed, epoch, key) clip holds the same frames in both backends.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import torch

from fastvid.data.plan import ClipConfig, plan_clips
from fastvid.data.presets import normalization
from fastvid.data.views import cut_views

log = logging.getLogger("fastvid.data")

# Clips starting this far into a video are reached by seeking rather than decoding from frame 0.
SEEK_MIN_FRAME = 12


def _chain(first, rest):
    yield first
    yield from rest


def decode_frames(data: bytes, indices, size: tuple[int, int] | None = None) -> dict[int, np.ndarray]:
    """{index: (H, W, 3) uint8 RGB} for the wanted frame indices of an in-memory video.

    `size` = (h, w) scales the frames in the same swscale call that converts them to RGB (much cheaper
    than converting at full size and resizing afterwards).

    Decodes from the keyframe before the first wanted frame (or from the start for early clips) and
    stops after the last wanted frame; frames are counted in presentation order (the shard json's
    num_frames counts the same way). Indices past the end get the last frame (short-video padding,
    even when the metadata over-counts the frames).
    """
    import av

    wanted = set(int(i) for i in indices)
    first_wanted, last_wanted = min(wanted), max(wanted)
    out: dict[int, np.ndarray] = {}
    previous = None
    scale = {} if size is None else {"height": int(size[0]), "width": int(size[1]), "interpolation": "BILINEAR"}
    count = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        start = stream.start_time or 0
        frames = None
        if first_wanted >= SEEK_MIN_FRAME and rate and stream.time_base:
            # Constant-rate shards (fastvid re-encodes to one) map frame index <-> pts exactly: seek to the
            # keyframe before the clip instead of decoding the video from its start.
            container.seek(start + int(first_wanted / (rate * stream.time_base)), stream=stream, backward=True)
            frames = container.decode(stream)
            first = next(frames, None)
            landed = None if first is None or first.pts is None else int(round(float((first.pts - start) * stream.time_base * rate)))
            if landed is None or landed > first_wanted:  # no usable timestamps (or a variable rate): decode from 0
                container.seek(start, stream=stream, backward=True)
                frames = None
            else:
                count = landed
                frames = _chain(first, frames)
        for frame in frames if frames is not None else container.decode(stream):
            if count in wanted:
                out[count] = frame.to_ndarray(format="rgb24", **scale)
            previous = frame
            count += 1
            if count > last_wanted:
                break
    if previous is None:
        raise ValueError("no decodable video frames")
    missing = wanted.difference(out)
    if missing:
        last = out.get(count - 1)
        if last is None:
            last = previous.to_ndarray(format="rgb24", **scale)
        for i in missing:
            out[i] = last
    return out


def scaled_crop(box, out_size, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Box (y0, x0, h, w) -> resize the whole frame to (H', W'), then crop out_size at (y, x): same pixels, cheaper.

    For the torchvision presets this is literally their transform (resize to 128x171, crop 112); for
    other boxes the crop lands within a pixel of the box.
    """
    y0, x0, h, w = (int(v) for v in box)
    oh, ow = int(out_size[0]), int(out_size[1])
    sh, sw = max(oh, int(round(height * oh / h))), max(ow, int(round(width * ow / w)))
    y = min(int(round(y0 * oh / h)), sh - oh)
    x = min(int(round(x0 * ow / w)), sw - ow)
    return (sh, sw), (y, x)


def cut_clip(frames: np.ndarray, crop_at, out_size, flip: bool) -> np.ndarray:
    """(T, H', W', 3) scaled frames -> (T, out_h, out_w, 3) uint8 crop, mirrored when `flip`."""
    y, x = crop_at
    clip = frames[:, y:y + out_size[0], x:x + out_size[1]]
    return np.ascontiguousarray(clip[:, :, ::-1] if flip else clip)


def normalize_clips(clips: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, device, dtype, channels_last: bool) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) normalized on `device` (uint8 travels, floats are made there).

    `scale` = 1/std and `shift` = mean/std, (1, 3, 1, 1, 1) tensors already on `device` (made once, not per batch:
    a per-batch blocking host->device copy would synchronize the stream every step)."""
    clips = clips.to(device, non_blocking=True).permute(0, 4, 1, 2, 3)  # channels-last-3d view, no copy
    video = clips.float().mul_(scale).sub_(shift)
    if dtype != torch.float32:
        video = video.to(dtype)
    return video if channels_last else video.contiguous()


class ClipDataset(torch.utils.data.Dataset):
    """Index i of the rank's epoch plan (WorkItems) -> {"clips": (N, T, h, w, 3) uint8, "label", "key", "clip" (grid
    clip of each row), "failed": [(key, error)]}.

    A sample that fails to decode is replaced by the next one of the plan (so the batch count stays
    the same on every rank) and reported in "failed".
    """

    def __init__(self, shard_set, config: ClipConfig, max_retries: int = 8):
        self.shard_set = shard_set
        self.config = config
        self.plan: list = []  # fastvid.data.contract.WorkItem
        self.epoch = 0
        self.max_retries = max_retries
        self._handles: dict[int, object] = {}

    def set_plan(self, plan, epoch: int):
        self.plan, self.epoch = list(plan), int(epoch)

    def __len__(self):
        return len(self.plan)

    def _handle(self, shard_index):
        if shard_index not in self._handles:
            self._handles[shard_index] = open(self.shard_set.shards[shard_index].tar, "rb")
        return self._handles[shard_index]

    def load(self, shard_index: int, sample_index: int, clips=None) -> dict:
        shard = self.shard_set.shards[shard_index]
        key = shard.keys[sample_index]
        comps = self.shard_set.read_components(shard_index, sample_index, exts=(self.shard_set.video_ext, "cls", "json"),
                                               handle=self._handle(shard_index))
        if self.shard_set.video_ext not in comps:
            raise ValueError(f"no {self.shard_set.video_ext} component")
        meta = json.loads(comps["json"]) if "json" in comps else {}
        label = int(comps["cls"].decode().strip()) if "cls" in comps else int(meta["label"])
        plan = plan_clips(self.config, meta, key, self.epoch, clips)
        height, width = int(meta["height"]), int(meta["width"])
        # Rows that scale the frame to the same size share one decode (every distinct frame decoded once:
        # all views of an evaluation item, every training item of one clip).
        cuts = [scaled_crop(box, plan.out_size, height, width) for box in plan.boxes]
        if not self.config.train and len({size for size, _ in cuts}) == 1:
            # Evaluation views (T clips x S crops): the distinct frames travel once; views are cut on the device.
            wanted = sorted(set(plan.frames.ravel().tolist()))
            decoded = decode_frames(comps[self.shard_set.video_ext], wanted, size=cuts[0][0])
            position = {f: i for i, f in enumerate(wanted)}
            return {"frames": torch.from_numpy(np.stack([decoded[f] for f in wanted])),
                    "index": torch.tensor([[position[int(f)] for f in row] for row in plan.frames], dtype=torch.int64),
                    "crops": torch.tensor([at for _, at in cuts], dtype=torch.int64),
                    "flips": torch.from_numpy(plan.flips.copy()), "label": label, "key": key, "clip": plan.clips.tolist()}
        out = [None] * len(cuts)
        for size in dict.fromkeys(size for size, _ in cuts):
            rows = [r for r, (s, _) in enumerate(cuts) if s == size]
            decoded = decode_frames(comps[self.shard_set.video_ext], plan.frames[rows].ravel(), size=size)
            for r in rows:
                out[r] = cut_clip(np.stack([decoded[int(i)] for i in plan.frames[r]]), cuts[r][1], plan.out_size,
                                  bool(plan.flips[r]))
        return {"clips": torch.from_numpy(np.stack(out)), "label": label, "key": key, "clip": plan.clips.tolist()}

    def __getitem__(self, i):
        failed = []
        for attempt in range(self.max_retries + 1):
            work = self.plan[(i + attempt) % len(self.plan)]
            shard_index, sample_index = work.shard, work.sample
            try:
                item = self.load(shard_index, sample_index, work.clips)
                item["failed"] = failed
                return item
            except Exception as exc:  # a broken sample must not stop training: skip it, report the key
                key = self.shard_set.shards[shard_index].keys[sample_index]
                failed.append((key, f"{type(exc).__name__}: {exc}"))
        raise RuntimeError(f"{self.max_retries + 1} consecutive samples failed to decode, last: {failed[-1]}")


def collate(items):
    if "frames" in items[0]:  # evaluation views: frames once per video, cut later on the device
        offsets = np.cumsum([0] + [it["frames"].shape[0] for it in items[:-1]])
        n = [it["index"].shape[0] for it in items]
        views = {"frames": torch.cat([it["frames"] for it in items]),
                 "index": torch.cat([it["index"] + int(o) for it, o in zip(items, offsets)]),
                 "crops": torch.cat([it["crops"] for it in items]), "flips": torch.cat([it["flips"] for it in items])}
    else:
        views = {"clips": torch.cat([it["clips"] for it in items])}
        n = [it["clips"].shape[0] for it in items]
    labels = torch.tensor([it["label"] for it in items], dtype=torch.int64).repeat_interleave(torch.tensor(n))
    keys = [it["key"] for it, k in zip(items, n) for _ in range(k)]
    failed = [f for it in items for f in it["failed"]]
    clip_ids = [c for it in items for c in it["clip"]]
    return {**views, "label": labels, "key": keys, "clip": clip_ids, "failed": failed}


def _worker_init(_):
    torch.set_num_threads(1)  # one decode per worker: oversubscribing 2 cores only adds contention


class PyAVBackend:
    """Iterates the rank's epoch plan in chunks of `videos_per_batch` videos (each giving N clips)."""

    def __init__(self, shard_set, config: ClipConfig, *, videos_per_batch: int, num_workers: int, device="cpu",
                 dtype=torch.float32, channels_last: bool = False):
        self.dataset = ClipDataset(shard_set, config)
        mean, std = normalization(config.preset)
        self.scale = torch.from_numpy(1.0 / std).view(1, 3, 1, 1, 1).to(device)
        self.shift = torch.from_numpy(mean / std).view(1, 3, 1, 1, 1).to(device)
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.videos_per_batch = videos_per_batch
        self.num_workers = num_workers
        self.out_size = config.preset.crop_size

    def epoch_chunks(self, plan, epoch: int):
        self.dataset.set_plan(plan, epoch)
        batches = [list(range(i, min(i + self.videos_per_batch, len(plan)))) for i in range(0, len(plan), self.videos_per_batch)]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=collate,
            worker_init_fn=_worker_init if self.num_workers else None, persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None, pin_memory=str(self.device).startswith("cuda"))
        for chunk in loader:
            for key, error in chunk.pop("failed"):
                log.warning("fastvid: sample %s failed to decode and was skipped: %s", key, error)
                yield {"failed": (key, error)}
            if "frames" in chunk:
                frames = chunk.pop("frames").to(self.device, non_blocking=True)
                clips = cut_views(frames, chunk.pop("index"), chunk.pop("crops"), self.out_size, chunk.pop("flips"))
            else:
                clips = chunk.pop("clips")
            video = normalize_clips(clips, self.scale, self.shift, self.device, self.dtype, self.channels_last)
            yield {"video": video, **chunk}
