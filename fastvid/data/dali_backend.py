"""DALI backend, the fast path: webdataset reader -> video decoder (NVDEC or CPU) -> ROI resize -> normalize.

Graph per epoch (rebuilt each epoch so `set_epoch(e)` is reproducible on its own):

    fn.readers.webdataset(index_paths=.idx, shard_id=rank, num_shards=world_size, random_shuffle, seed)
      -> video bytes, cls, json
    fn.python_function(source_info, json) -> frame indices, ROI, ok      (fastvid.data.plan.plan_clips)
    fn.decoders.video(bytes, frames=indices, device="mixed"|"cpu")        (decodes only the clip frames)
    fn.resize(roi_start, roi_end, size)                                   (crop + flip + resize in one op)
    fn.crop_mirror_normalize(mean, std, dtype, layout CFHW or FHWC)

The Python callback only turns a sample's json into a few integers; decoding and pixel work run in
DALI's threads (CPU) or on the GPU. The clip plan depends on (seed, epoch, key), not on arrival
order, so the PyAV backend cuts the same clips.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastvid import _gpu
from fastvid.data import sampling
from fastvid.data.plan import ClipConfig, default_clips, plan_clips
from fastvid.data.presets import normalization
from fastvid.data.shards import DALI_CPU_CODECS, ShardSet, key_from_source_info

log = logging.getLogger("fastvid.data")


def check_codec(shard_set: ShardSet, device: str) -> None:
    """DALI's CPU decoder handles VP8/VP9/MJPEG only: say what to do instead of failing deep in DALI."""
    if device == "cpu" and shard_set.codec not in DALI_CPU_CODECS:
        where = shard_set.shards[0].tar.parent
        raise ValueError(
            f"{where}: shards hold {shard_set.codec or 'unknown'}-coded video, which DALI's CPU decoder cannot decode "
            f"(it handles {', '.join(DALI_CPU_CODECS)}). Re-shard with `fastvid shard videos ... --codec vp9`, "
            f"use backend='pyav', or run on a GPU (device='cuda' decodes it with NVDEC).")


class _Planner:
    """The graph's Python callback: (source_info, json bytes) -> frame indices, ROI start/end, ok flag.

    Until this backend executes the epoch's WorkItem plan (issue 10), it reads whole videos through DALI's
    reader: each video gives a fixed number of clips (the plan's default choice, repeated when the grid
    is smaller; a video with no full clip gives one padded clip) sharing the first clip's crop and flip,
    because fn.resize takes one ROI per sample.
    """

    def __init__(self, config: ClipConfig, epoch: int):
        self.config = config
        self.epoch = epoch
        self.num_frames = config.clips_per_video * config.clip_len
        self.padded = dataclasses.replace(config, short_videos="pad")

    def __call__(self, info, meta):
        key = key_from_source_info(bytes(np.asarray(info)).decode("utf-8", "replace"))
        try:
            meta = json.loads(bytes(np.asarray(meta)))
            clips = default_clips(self.config, meta, key, self.epoch)
            config = self.config if len(clips) else self.padded
            if not len(clips):
                clips = default_clips(config, meta, key, self.epoch)
            plan = plan_clips(config, meta, key, self.epoch, np.resize(clips, self.config.clips_per_video))
        except Exception:  # reported by the loader (ok=0 drops the clip and counts the key)
            return (np.zeros(self.num_frames, np.int32), np.zeros(2, np.float32), np.ones(2, np.float32), np.zeros(1, np.int32),
                    np.full(self.config.clips_per_video, -1, np.int32))
        y0, x0, h, w = (float(v) for v in plan.boxes[0])
        # A ROI whose start is past its end is mirrored by fn.resize: the horizontal flip costs nothing.
        xs, xe = (x0 + w, x0) if plan.flips[0] else (x0, x0 + w)
        return (plan.frames.ravel().astype(np.int32), np.array([y0, xs], np.float32), np.array([y0 + h, xe], np.float32),
                np.ones(1, np.int32), plan.clips.astype(np.int32))


def _dali_dtype(dtype: torch.dtype):
    from nvidia.dali import types

    return types.FLOAT16 if dtype == torch.float16 else types.FLOAT


class DALIBackend:
    """Yields chunks {"video": (n, 3, T, h, w), "label", "key"} for one epoch; runs as long as it is consumed."""

    def __init__(self, shard_set: ShardSet, config: ClipConfig, *, videos_per_batch: int, device: str, rank: int,
                 world_size: int, num_threads: int, dtype: torch.dtype, channels_last: bool, shuffle_buffer: int = 256,
                 prefetch: int = 2):
        _gpu.require_dali()
        self.shard_set = shard_set
        self.config = config
        self.videos_per_batch = videos_per_batch
        self.device = device
        # Plain "cuda" is torch's current device (torch.cuda.set_device(local_rank)), as the PyAV path's .to("cuda").
        index = torch.device(device).index if device.startswith("cuda") else None
        self.device_id = (index if index is not None else torch.cuda.current_device()) if device.startswith("cuda") else None
        self.rank, self.world_size = rank, world_size
        self.num_threads = num_threads
        self.dtype = dtype
        self.channels_last = channels_last
        self.shuffle_buffer = shuffle_buffer
        self.prefetch = prefetch
        self._index_dir: str | None = None
        check_codec(shard_set, "cuda" if self.device_id is not None else "cpu")
        # Samples DALI failed to decode: (tar path, key). They are kept out of later pipelines by
        # rewritten index files in which their line points at a neighbouring sample instead.
        self.blocked: set[tuple[str, str]] = set()

    def __del__(self):
        if self._index_dir:
            shutil.rmtree(self._index_dir, ignore_errors=True)

    def _index_path(self, shard) -> str | None:
        """The shard's .idx, or a rewritten copy when some of its samples are blocked."""
        bad = {key for tar, key in self.blocked if tar == str(shard.tar)}
        if not bad:
            return str(shard.idx) if shard.idx else None
        from fastvid.shard import dali_index

        entries = dali_index.read_index(shard.idx) if shard.idx else dali_index.index_entries(shard.tar)
        good = [i for i, k in enumerate(shard.keys) if k not in bad]
        if not good:
            raise RuntimeError(f"{shard.tar}: no sample of this shard can be decoded")
        # Same sample count (so the rank split and the shuffle stay as they were), blocked lines replaced
        # by the nearest good sample before them (or the first good one).
        fixed = [entries[i] if shard.keys[i] not in bad else entries[max([g for g in good if g < i] or [good[0]])]
                 for i in range(len(entries))]
        if self._index_dir is None:
            self._index_dir = tempfile.mkdtemp(prefix="fastvid-idx-")
        path = Path(self._index_dir) / (shard.tar.name.split(".", 1)[0] + f"-{len(bad)}.idx")
        path.write_text(dali_index.format_index(fixed))
        return str(path)

    def build(self, epoch: int):
        from nvidia.dali import fn, pipeline_def

        cfg = self.config
        order = sampling.shard_order(len(self.shard_set.shards), cfg.seed, epoch, cfg.train)
        shards = [self.shard_set.shards[i] for i in order if len(self.shard_set.shards[i])]
        paths = [str(s.tar) for s in shards]
        index_paths = [self._index_path(s) for s in shards]
        if any(p is None for p in index_paths):
            index_paths = None
        rank_size = max(e - s for s, e in sampling.rank_ranges(self.shard_set.num_samples, self.world_size))
        mean, std = normalization(cfg.preset)
        out_h, out_w = cfg.preset.crop_size
        planner = _Planner(cfg, epoch)
        decoder_device = "mixed" if self.device_id is not None else "cpu"
        layout = "FHWC" if self.channels_last else "CFHW"
        reader_seed = int(np.random.default_rng([cfg.seed & 0xFFFFFFFF, epoch, self.rank, 0xDA11]).integers(0, 2**31 - 1))

        @pipeline_def(batch_size=self.videos_per_batch, num_threads=self.num_threads, device_id=self.device_id,
                      seed=reader_seed, prefetch_queue_depth=self.prefetch)
        def pipeline():
            video, label, meta = fn.readers.webdataset(
                paths=paths, index_paths=index_paths, ext=[self.shard_set.video_ext, "cls", "json"],
                shard_id=self.rank, num_shards=self.world_size, random_shuffle=cfg.train,
                initial_fill=max(1, min(self.shuffle_buffer, rank_size)), seed=reader_seed,
                stick_to_shard=True, pad_last_batch=False, name="reader")
            info = fn.get_property(video, key="source_info")
            frames, roi_start, roi_end, ok, clip_ids = fn.python_function(info, meta, function=planner, num_outputs=5)
            # On the CPU, DALI 2.4 does not manage to seek inside in-memory streams (measured: the cost grows
            # with the start frame even with keyframes every 8 frames), so the index it would build first
            # is pure overhead there (~1.5x slower mid-video); NVDEC keeps the index for its seeks.
            clips = fn.decoders.video(video, device=decoder_device, frames=frames, pad_mode="edge",
                                      build_index=decoder_device == "mixed")
            clips = fn.resize(clips, roi_start=roi_start, roi_end=roi_end, size=[out_h, out_w], antialias=True)
            clips = fn.crop_mirror_normalize(clips, dtype=_dali_dtype(self.dtype), mean=mean.tolist(), std=std.tolist(),
                                             output_layout=layout)
            return clips, label, info, ok, clip_ids

        pipe = pipeline()
        pipe.build()
        return pipe

    def _to_torch(self, tensor_list) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out_dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        if self.device_id is not None:
            out = torch.empty(dense.shape(), dtype=out_dtype, device=torch.device("cuda", self.device_id))
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device_id))
        else:
            out = torch.empty(dense.shape(), dtype=out_dtype)
            feed_ndarray(dense, out)
        return out

    def _failed_key(self, exc: Exception) -> tuple[str, str] | None:
        """(tar, key) of the sample named in a DALI decoder error ('... for "tar:offset:member"')."""
        match = re.search(r'for "([^"]+:\d+:[^"]+)"', str(exc))
        if not match:
            return None
        info = match.group(1)
        return info.rsplit(":", 2)[0], key_from_source_info(info)

    def epoch_chunks(self, epoch: int):
        """Endless chunks for `epoch` (the reader wraps within the rank's shard); the loader stops when it has enough.

        A decoder error names the sample: it is blocked, the pipeline is rebuilt (same seed, so the same
        order) and fast-forwarded to where it failed, and the chunk stream goes on.
        """
        n, t = self.config.clips_per_video, self.config.clip_len
        done = 0
        pipe = self.build(epoch)
        try:
            while True:
                try:
                    clips, labels, infos, oks, clip_ids = pipe.run()
                except RuntimeError as exc:
                    failed = self._failed_key(exc)
                    if failed is None or failed in self.blocked:
                        raise RuntimeError(f"DALI pipeline failed and the failing sample could not be identified: {exc}") from exc
                    self.blocked.add(failed)
                    log.warning("fastvid: sample %s (%s) failed to decode and was skipped", failed[1], failed[0])
                    yield {"failed": (failed[1], str(exc).strip().splitlines()[-1][:200])}
                    pipe = None  # free it before the rebuild; a failing rebuild must raise its own error
                    pipe = self.build(epoch)
                    for _ in range(done):
                        pipe.run()
                    continue
                done += 1
                video = self._to_torch(clips)
                keys = [key_from_source_info(bytes(np.asarray(infos[i])).decode("utf-8", "replace")) for i in range(len(infos))]
                label = [int(bytes(np.asarray(labels[i])).decode().strip() or -1) for i in range(len(labels))]
                ok = [bool(np.asarray(oks[i])[0]) for i in range(len(oks))]
                grid_clips = [np.asarray(clip_ids[i]).tolist() for i in range(len(clip_ids))]
                bv = video.shape[0]
                if self.channels_last:  # (Bv, N*T, h, w, 3) -> (Bv*N, 3, T, h, w) view, channels-last-3d memory
                    video = video.view(bv * n, t, *video.shape[2:]).permute(0, 4, 1, 2, 3)
                elif n > 1:  # (Bv, 3, N*T, h, w) -> (Bv*N, 3, T, h, w)
                    video = video.view(bv, 3, n, t, *video.shape[3:]).transpose(1, 2).reshape(bv * n, 3, t, *video.shape[3:])
                for key, good in zip(keys, ok):
                    if not good:
                        log.warning("fastvid: sample %s has unusable metadata and was skipped", key)
                        yield {"failed": (key, "invalid or missing json metadata")}
                if not all(ok):
                    keep = torch.tensor([g for g in ok for _ in range(n)], device=video.device)
                    video = video[keep]
                    keys = [k for k, g in zip(keys, ok) if g]
                    label = [lb for lb, g in zip(label, ok) if g]
                    grid_clips = [c for c, g in zip(grid_clips, ok) if g]
                yield {"video": video, "label": torch.tensor(label, dtype=torch.int64).repeat_interleave(n),
                       "key": [k for k in keys for _ in range(n)], "clip": [c for row in grid_clips for c in row]}
        finally:
            pipe = None
