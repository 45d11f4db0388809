"""`VideoLoader`: batches of normalized clips from a fastvid shard set, through any registered backend.

    loader = VideoLoader("shards/train", batch_size=32, clip_len=16, frame_stride=2, device="cuda",
                         rank=rank, world_size=world_size, seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:            # {"video": (B, 3, T, H, W), "label": (B,), "key": [B keys]}
            ...

Backends (fastvid.data.backends): "dali", "pyav", "pyav-threads" and the NVDEC candidates
"pynvvideocodec", "torchcodec", "spdl"; "auto" = the first of backends.AUTO_ORDER[device] that can decode
the shards' codec and frame size on this device (so videos below NVDEC's 128x128 go to a CPU decoder).
Every backend executes the same plan: the rank's work list for the epoch (below) and each item's
ClipPlan (fastvid.data.plan), so all of them cut the same clips.

Epoch plan (fastvid.data.sampling, identical on every rank so DDP never hangs): in training every
clip of the epoch is its own WorkItem in one list shuffled across the data set, and each step takes
world_size x batch_size consecutive clips of it, so every rank yields the same number of batches and
`state_dict()` only needs the global position (a resume may use another world size); evaluation
gives each rank a contiguous range of videos (all T x S views of a video in one item), the short
ranks wrapping around to the largest. The shard jsons are read once at open for every video's clip
grid.

The loader keeps one backend for its lifetime (DALI pipeline, worker processes, decoder threads
persist across epochs) and turns its Chunk | Failure stream into batches with
fastvid.data.contract.rebatch (`LastBatch.DROP` for training, `LastBatch.WRAP` for evaluation); a
sample that fails is skipped, counted in `stats["decode_failures"]` and its key logged; its place is
filled by the next sample.
"""

from __future__ import annotations

import logging

import torch

from fastvid import _gpu
from fastvid.data import backends, sampling
from fastvid.data import plan as epoch_plan
from fastvid.data.contract import LastBatch, RebatchStats, WorkItem, rebatch
from fastvid.data.plan import ClipConfig
from fastvid.data.presets import get_preset
from fastvid.data.shards import open_shard_set, sample_metadata

log = logging.getLogger("fastvid.data")


def choose_backend(backend: str, device: str, codec: str | None, width: int | None = None, height: int | None = None) -> str:
    """See fastvid.data.backends.choose_backend."""
    return backends.choose_backend(backend, device, codec, width, height)


class VideoLoader:
    def __init__(self, shards, *, batch_size: int, clip_len: int, frame_stride: int = 1, clips_per_video: int = 1,
                 train: bool = True, preset: str = "video_resnet", crop_size=None, resize_size=None,
                 frame_rate: float | None = None, backend: str = "auto", device: str = "cuda", rank: int = 0,
                 world_size: int = 1, seed: int = 0, num_threads: int | None = None, num_workers: int | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, drop_last: bool | None = None,
                 last_batch: LastBatch | None = None, prefetch: int = 2,
                 shuffle_buffer: int | None = None,  # accepted, unused (the plan shuffles)
                 step_between_clips: int = 1, short_videos: str = "drop",
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
        if last_batch is None:
            last_batch = LastBatch.from_drop_last(train if drop_last is None else bool(drop_last))
        self.last_batch = LastBatch(last_batch)
        self.drop_last = self.last_batch is LastBatch.DROP
        self.dtype = dtype
        self.channels_last = channels_last
        first = sample_metadata(self.shard_set, 0, 0, first_nonempty=True)
        self.backend = choose_backend(backend, "cuda" if self.device.startswith("cuda") else "cpu", self.shard_set.codec,
                                      first.get("width"), first.get("height"))
        self.epoch = 0
        self._start = 0           # global clip position the next epoch pass starts from (elastic resume)
        self._batches_done = 0
        self.stats = {"decode_failures": 0, "failed_keys": [], "batches": 0, "clips": 0, "stage_s": {}, "worker_pids": set()}
        cpus = backends.cpu_count()
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
        self.options = backends.BackendOptions(
            videos_per_chunk=self.videos_per_step, device=self.device, num_threads=num_threads or cpus,
            num_workers=cpus if num_workers is None else num_workers, dtype=dtype, channels_last=channels_last,
            prefetch=prefetch)
        self._impl = backends.create(self.backend, self.shard_set, self.config, self.options)

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

    def epoch_work(self, epoch: int | None = None) -> list[WorkItem]:
        """This rank's WorkItems for the current epoch from the current position (fastvid.data.sampling):
        what every backend executes."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.train and self.drop_last:
            items = sampling.train_items(self._grid_sizes, [s.keys for s in self.shard_set.shards],
                                         clips_per_video=self.config.clips_per_video, seed=self.seed, epoch=epoch,
                                         clip_sampling=self.config.clip_sampling)
            return sampling.rank_train_items(items, self.rank, self.world_size, self.batch_size, self._start)
        if self.train:  # training without dropping the tail (drop_last=False): the last batches wrap around
            items = sampling.train_items(self._grid_sizes, [s.keys for s in self.shard_set.shards],
                                         clips_per_video=self.config.clips_per_video, seed=self.seed, epoch=epoch,
                                         clip_sampling=self.config.clip_sampling)
        else:
            items = sampling.eval_items(self._grid_sizes, self.config.clips_per_video)
        return sampling.rank_eval_items(items, self.rank, self.world_size, self.batch_size, self.clips_per_item)

    # ---- iteration -----------------------------------------------------------------------------------
    def _finish(self, video: torch.Tensor) -> torch.Tensor:
        if video.device.type != torch.device(self.device).type:
            video = video.to(self.device, non_blocking=True)
        if video.dtype != self.dtype:
            video = video.to(self.dtype)
        if self.channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        return video

    def _observe(self, chunks):
        """Pass the backend's stream through, noting stage times and which processes decoded."""
        stage = self.stats["stage_s"]
        for chunk in chunks:
            for k, v in getattr(chunk, "stage_s", {}).items():
                stage[k] = stage.get(k, 0.0) + v
            pid = getattr(chunk, "worker_pid", None)
            if pid is not None:
                self.stats["worker_pids"].add(pid)
            yield chunk

    def __iter__(self):
        # The work list starts at the saved position (elastic resume): consumed items are never decoded again.
        self._batches_done = 0
        chunks = self._impl.epoch_chunks(self.epoch, self.epoch_work())
        stats = RebatchStats()
        synced = [0, 0, 0]
        try:
            for batch in rebatch(self._observe(chunks), batch_size=self.batch_size, num_batches=self.remaining_batches,
                                 stats=stats, max_failures_in_a_row=self.shard_set.num_samples,
                                 where=str(self.shard_set.shards[0].tar.parent)):
                self._batches_done += 1
                self._sync_stats(stats, synced)
                # non_blocking: a blocking host->device copy would synchronize the stream every step.
                yield {"video": self._finish(batch.video), "label": batch.label.to(self.device, non_blocking=True),
                       "key": list(batch.keys), "clip": list(batch.clips)}
        finally:
            self._sync_stats(stats, synced)
            chunks.close()
        # A full pass ends the resumed part of the epoch: another pass over it starts from its beginning.
        self._batches_done = 0
        self._start = 0

    def _sync_stats(self, stats: RebatchStats, synced: list[int]) -> None:
        """Add what `stats` counted since the last call (synced = [failures, batches, clips] already added)."""
        self.stats["failed_keys"].extend(stats.failed_keys[synced[0]:])
        self.stats["decode_failures"] += stats.failures - synced[0]
        self.stats["batches"] += stats.batches - synced[1]
        self.stats["clips"] += stats.clips - synced[2]
        synced[:] = [stats.failures, stats.batches, stats.clips]

    def close(self) -> None:
        """Stops the backend's workers, threads or pipeline now (otherwise at garbage collection)."""
        close = getattr(self._impl, "close", None)
        if close:
            close()

    def __repr__(self):
        c = self.config
        return (f"VideoLoader(backend={self.backend!r}, device={self.device!r}, videos={self.num_videos}, "
                f"classes={self.num_classes}, batch_size={self.batch_size}, clip_len={c.clip_len}, "
                f"frame_stride={c.frame_stride}, clips_per_video={c.clips_per_video}, train={c.train}, "
                f"preset={c.preset.name!r}, sampler={c.sampler!r}, rank={self.rank}/{self.world_size}, batches={len(self)})")
