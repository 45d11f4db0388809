"""`VideoLoader`: batches of normalized clips from a fastvid shard set, via DALI or PyAV.

    loader = VideoLoader("shards/train", batch_size=32, clip_len=16, frame_stride=2, device="cuda",
                         rank=rank, world_size=world_size, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:            # {"video": (B, 3, T, H, W), "label": (B,), "key": [B keys]}
            ...

Backends: "dali" (fn.readers.webdataset + DALI video decoder, NVDEC with device="cuda"), "pyav"
(PyAV in DataLoader workers), "auto" = DALI when it is installed and can decode the shards' codec on
this device, else PyAV. Both cut the same clips for a given (seed, epoch, key) (fastvid.data.plan).

Epoch plan (fastvid.data.sampling, identical on every rank so DDP never hangs): in training every
clip of the epoch is its own WorkItem in one list shuffled across the data set, and each step takes
world_size x batch_size consecutive clips of it, so every rank yields the same number of batches and
`state_dict()` only needs the global position (a resume may use another world size); evaluation
gives each rank a contiguous range of videos (all T x S views of a video in one item), the short
ranks wrapping around to the largest. The shard jsons are read once at open for every video's clip
grid. A sample that fails is skipped, counted in `stats["decode_failures"]` and its key logged; its
place is filled by the next sample.
"""

from __future__ import annotations

import logging
import os

import torch

from fastvid import _gpu
from fastvid.data import plan as epoch_plan
from fastvid.data import sampling
from fastvid.data.plan import ClipConfig
from fastvid.data.presets import get_preset
from fastvid.data.shards import DALI_CPU_CODECS, open_shard_set

log = logging.getLogger("fastvid.data")

BACKENDS = ("auto", "dali", "pyav")


def choose_backend(backend: str, device: str, codec: str | None) -> str:
    """'auto' -> 'dali' when DALI imports and can decode `codec` on `device`, else 'pyav'."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    if not _gpu.dali_available():
        return "pyav"
    if device == "cpu" and codec not in DALI_CPU_CODECS:
        return "pyav"
    return "dali"


class VideoLoader:
    def __init__(self, shards, *, batch_size: int, clip_len: int, frame_stride: int = 1, clips_per_video: int = 1,
                 train: bool = True, preset: str = "video_resnet", crop_size=None, resize_size=None,
                 frame_rate: float | None = None, backend: str = "auto", device: str = "cuda", rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_threads: int | None = None, num_workers: int | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, drop_last: bool | None = None,
                 shuffle_buffer: int = 256, step_between_clips: int = 1, short_videos: str = "drop",
                 clip_sampling: str = "without_replacement", sampler: str = "clips", spatial_views: int = 1):
        if batch_size < 1 or clip_len < 1 or clips_per_video < 1:
            raise ValueError(f"batch_size, clip_len and clips_per_video must be >= 1 (got {batch_size}, {clip_len}, {clips_per_video})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.device = _gpu.resolve_device(device)
        self.shard_set = open_shard_set(shards)
        self.config = ClipConfig(clip_len=clip_len, frame_stride=frame_stride, clips_per_video=clips_per_video, train=train,
                                 preset=get_preset(preset, crop_size, resize_size), frame_rate=frame_rate, seed=seed,
                                 step_between_clips=step_between_clips, short_videos=short_videos,
                                 clip_sampling=clip_sampling, sampler=sampler, spatial_views=spatial_views)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed = seed
        self.train = train
        self.drop_last = train if drop_last is None else bool(drop_last)
        self.dtype = dtype
        self.channels_last = channels_last
        self.backend = choose_backend(backend, "cuda" if self.device.startswith("cuda") else "cpu", self.shard_set.codec)
        self.epoch = 0
        self._start = 0           # global clip position the next epoch pass starts from (elastic resume)
        self._batches_done = 0
        self.stats = {"decode_failures": 0, "failed_keys": [], "batches": 0, "clips": 0}
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.shard_set.num_samples < world_size:
            # Every rank must take part in evaluation's collectives: a rank with no video would fail alone and hang the rest.
            raise ValueError(f"{shards}: {self.shard_set.num_samples} videos cannot be split over {world_size} ranks "
                             "(a rank would get none); use fewer ranks")
        # Clip-grid sizes of every video (from the shard jsons, read once): the epoch plan needs them.
        self._grid_sizes = epoch_plan.grid_sizes(self.shard_set, self.config)
        # Clips per work item: 1 in training (every clip its own sample), T x S views of a video in evaluation.
        self.clips_per_item = 1 if train else clips_per_video * self.config.views_per_clip
        self.videos_per_step = max(1, -(-batch_size // self.clips_per_item))
        self._num_items = (sampling.num_train_clips(self._grid_sizes, clips_per_video, self.config.clip_sampling) if train
                           else sum(1 for sizes in self._grid_sizes for k in sizes if k > 0))
        if self._num_items == 0:
            raise ValueError(f"{shards}: no video holds a clip of {clip_len} frames (frame_stride {frame_stride}, frame_rate "
                             f"{frame_rate}); use short_videos='pad' or shorter clips")
        if not train and self._num_items < world_size:
            raise ValueError(f"{shards}: {self._num_items} videos with a full clip cannot be split over {world_size} ranks")
        self._num_batches = self._batches_from(0)
        if self._num_batches == 0:
            raise ValueError(f"{shards}: {self._num_items} clips over {world_size} rank(s) give no full batch of "
                             f"{batch_size} clips; use a smaller batch size (--batch-size) or more videos")
        if self.backend == "dali":
            from fastvid.data.dali_backend import DALIBackend

            if self.config.views_per_clip > 1:
                raise ValueError("spatial views (eval_views TxS with S > 1) need backend='pyav' until the DALI backend "
                                 "executes WorkItem plans")
            # DALI reads whole videos (clips_per_video clips each) until it executes WorkItem plans (issue 10).
            self._impl = DALIBackend(self.shard_set, self.config, videos_per_batch=max(1, -(-batch_size // clips_per_video)),
                                     device=self.device,
                                     rank=rank, world_size=world_size, num_threads=num_threads or cpus,
                                     dtype=torch.float16 if dtype == torch.float16 else torch.float32,
                                     channels_last=channels_last, shuffle_buffer=shuffle_buffer)
        else:
            from fastvid.data.pyav_backend import PyAVBackend

            self._impl = PyAVBackend(self.shard_set, self.config, videos_per_batch=self.videos_per_step,
                                     num_workers=cpus if num_workers is None else num_workers, device=self.device,
                                     dtype=dtype, channels_last=channels_last)

    # ---- contract attributes -----------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return self.shard_set.classes

    @property
    def num_classes(self) -> int:
        return len(self.shard_set.classes)

    @property
    def num_videos(self) -> int:
        return self.shard_set.num_samples

    def __len__(self) -> int:
        return self._num_batches

    def _batches_from(self, start: int) -> int:
        if self.train and self.drop_last:
            return sampling.train_batches(self._num_items, self.world_size, self.batch_size, start)
        return sampling.eval_batches(self._num_items, self.world_size, self.batch_size, self.clips_per_item)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._start = 0
        self.epoch = int(epoch)

    @property
    def remaining_batches(self) -> int:
        """Batches the next pass over the current epoch yields (fewer than len() after a mid-epoch resume)."""
        return self._batches_from(self._start) if self.train else self._num_batches

    def state_dict(self) -> dict:
        """Where this epoch stands, independent of the world size: the global clip position reached."""
        position = self._start + self._batches_done * self.world_size * self.batch_size
        return {"epoch": self.epoch, "position": position, "seed": self.seed, "batches_done": self._batches_done,
                "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue an epoch at the saved global clip position, on any number of ranks and any batch size."""
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader uses seed {self.seed}")
        self.epoch = int(state["epoch"])
        if "position" in state:
            self._start = int(state["position"])
        else:  # a checkpoint from before positions were saved: same world size and batch size assumed
            self._start = int(state.get("batches_done", 0)) * self.world_size * self.batch_size

    def _plan(self) -> list:
        """This rank's WorkItems for the current epoch from the current position (fastvid.data.sampling)."""
        if self.train and self.drop_last:
            items = sampling.train_items(self._grid_sizes, [s.keys for s in self.shard_set.shards],
                                         clips_per_video=self.config.clips_per_video, seed=self.seed, epoch=self.epoch,
                                         clip_sampling=self.config.clip_sampling)
            return sampling.rank_train_items(items, self.rank, self.world_size, self.batch_size, self._start)
        if self.train:  # training without dropping the tail (drop_last=False): the last batches wrap around
            items = sampling.train_items(self._grid_sizes, [s.keys for s in self.shard_set.shards],
                                         clips_per_video=self.config.clips_per_video, seed=self.seed, epoch=self.epoch,
                                         clip_sampling=self.config.clip_sampling)
        else:
            items = sampling.eval_items(self._grid_sizes, self.config.clips_per_video)
        return sampling.rank_eval_items(items, self.rank, self.world_size, self.batch_size, self.clips_per_item)

    # ---- iteration -----------------------------------------------------------------------------------
    def _chunks(self):
        if self.backend == "dali":
            return self._impl.epoch_chunks(self.epoch)
        return self._impl.epoch_chunks(self._plan(), self.epoch)

    def _finish(self, video: torch.Tensor) -> torch.Tensor:
        if video.device.type != torch.device(self.device).type:
            video = video.to(self.device, non_blocking=True)
        if video.dtype != self.dtype:
            video = video.to(self.dtype)
        if self.channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        return video

    def __iter__(self):
        total, skip = self.remaining_batches, 0
        if self.backend == "dali" and self._start:
            # DALI reads whole videos in its reader's order, not the WorkItem plan: resume by dropping batches.
            skip = self._start // (self.world_size * self.batch_size)
            total = self._num_batches
        self._batches_done = 0
        produced = 0
        pending: list[dict] = []
        pending_clips = 0
        chunks = self._chunks()
        last_batch = None
        failed_in_a_row = 0
        try:
            while produced < total:
                chunk = next(chunks, None)
                if chunk is None:  # source exhausted (only after failures): repeat clips so every rank keeps step
                    if last_batch is None and not pending:
                        raise RuntimeError("no clip could be decoded from the shard set")
                    chunk = pending[0] if pending else last_batch
                elif "failed" in chunk:
                    self.stats["decode_failures"] += 1
                    self.stats["failed_keys"].append(chunk["failed"][0])
                    failed_in_a_row += 1
                    # DALI's reader never runs out: once every sample has failed, skipping would go on forever.
                    if failed_in_a_row > self.shard_set.num_samples:
                        raise RuntimeError(f"{failed_in_a_row} samples in a row failed to decode, last {chunk['failed'][0]!r}: "
                                           f"{chunk['failed'][1]}; no clip can be read from {self.shard_set.shards[0].tar.parent}")
                    continue
                if chunk["key"]:
                    failed_in_a_row = 0
                pending.append(chunk)
                pending_clips += len(chunk["key"])
                while pending_clips >= self.batch_size and produced < total:
                    if len(pending) == 1 and pending_clips == self.batch_size:
                        batch, pending, pending_clips = pending[0], [], 0
                    else:
                        video = torch.cat([c["video"] for c in pending])
                        label = torch.cat([c["label"] for c in pending])
                        keys = [k for c in pending for k in c["key"]]
                        clip_ids = [i for c in pending for i in c.get("clip", [-1] * len(c["key"]))]
                        b = self.batch_size
                        batch = {"video": video[:b], "label": label[:b], "key": keys[:b], "clip": clip_ids[:b]}
                        rest = {"video": video[b:], "label": label[b:], "key": keys[b:], "clip": clip_ids[b:]}
                        pending = [rest] if rest["key"] else []
                        pending_clips = len(rest["key"])
                    last_batch = batch
                    produced += 1
                    if produced <= skip:
                        continue
                    self._batches_done = produced - skip
                    self.stats["batches"] += 1
                    self.stats["clips"] += len(batch["key"])
                    # non_blocking: a blocking host->device copy would synchronize the stream every step.
                    yield {"video": self._finish(batch["video"]), "label": batch["label"].to(self.device, non_blocking=True),
                           "key": list(batch["key"]), "clip": list(batch.get("clip", [-1] * len(batch["key"])))}
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        # A full pass ends the resumed part of the epoch: another pass over it starts from its beginning.
        self._batches_done = 0
        self._start = 0

    def __repr__(self):
        c = self.config
        return (f"VideoLoader(backend={self.backend!r}, device={self.device!r}, videos={self.num_videos}, "
                f"classes={self.num_classes}, batch_size={self.batch_size}, clip_len={c.clip_len}, "
                f"frame_stride={c.frame_stride}, clips_per_video={c.clips_per_video}, train={c.train}, "
                f"preset={c.preset.name!r}, sampler={c.sampler!r}, rank={self.rank}/{self.world_size}, batches={len(self)})")
