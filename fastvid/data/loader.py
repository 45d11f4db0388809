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
Every backend executes the same plan: the rank's work list for the epoch (fastvid.data.sampling)
and each item's ClipPlan (fastvid.data.plan), so all of them cut the same clips.

The loader keeps one backend for its lifetime (DALI pipeline, worker processes, decoder threads
persist across epochs) and turns its Chunk | Failure stream into batches with
fastvid.data.contract.rebatch: every rank yields the same number of batches (`LastBatch.DROP` for
training, `LastBatch.WRAP` for evaluation); a sample that fails is skipped, counted in
`stats["decode_failures"]` and its key logged.
"""

from __future__ import annotations

import logging

import torch

from fastvid import _gpu
from fastvid.data import backends, sampling
from fastvid.data.contract import LastBatch, RebatchStats, WorkItem, rebatch, resume_work
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
                 last_batch: LastBatch | None = None, prefetch: int = 2, shuffle_buffer: int | None = None):  # shuffle_buffer: accepted, unused (the plan shuffles)
        if batch_size < 1 or clip_len < 1 or clips_per_video < 1:
            raise ValueError(f"batch_size, clip_len and clips_per_video must be >= 1 (got {batch_size}, {clip_len}, {clips_per_video})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.device = _gpu.resolve_device(device)
        self.shard_set = open_shard_set(shards)
        self.config = ClipConfig(clip_len=clip_len, frame_stride=frame_stride, clips_per_video=clips_per_video, train=train,
                                 preset=get_preset(preset, crop_size, resize_size), frame_rate=frame_rate, seed=seed)
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
        self._skip_batches = 0
        self._batches_done = 0
        self.stats = {"decode_failures": 0, "failed_keys": [], "batches": 0, "clips": 0, "stage_s": {}, "worker_pids": set()}
        cpus = backends.cpu_count()
        # Whole videos per backend step: a video gives clips_per_video clips; the rebatcher cuts exact batches.
        self.videos_per_step = max(1, -(-batch_size // clips_per_video))
        self._num_batches = sampling.batches_per_epoch(self.shard_set.num_samples, world_size, batch_size, clips_per_video,
                                                       self.drop_last)
        if self.shard_set.num_samples < world_size:
            # Every rank must take part in evaluation's collectives: a rank with no video would fail alone and hang the rest.
            raise ValueError(f"{shards}: {self.shard_set.num_samples} videos cannot be split over {world_size} ranks "
                             "(a rank would get none); use fewer ranks")
        if self._num_batches == 0:
            raise ValueError(f"{shards}: {self.shard_set.num_samples} videos over {world_size} rank(s) give no full batch of "
                             f"{batch_size} clips; lower batch_size or pass drop_last=False")
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self._batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader uses seed {self.seed}")
        self.epoch = int(state["epoch"])
        self._skip_batches = int(state.get("batches_done", 0)) % max(self._num_batches, 1)

    # ---- iteration -----------------------------------------------------------------------------------
    def epoch_work(self, epoch: int | None = None) -> list[WorkItem]:
        """The rank's ordered work list for an epoch: what every backend executes."""
        epoch = self.epoch if epoch is None else epoch
        plan = sampling.rank_epoch_plan(self.shard_set.shard_sizes, self.rank, self.world_size, batch_size=self.batch_size,
                                        clips_per_video=self.config.clips_per_video, drop_last=self.drop_last,
                                        seed=self.seed, epoch=epoch, shuffle=self.train)
        return [item if isinstance(item, WorkItem) else WorkItem(*item) for item in plan]

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
        skip, self._skip_batches = self._skip_batches, 0
        self._batches_done = skip
        work, drop = resume_work(self.epoch_work(), skip, self.batch_size, self.config.clips_per_video)
        chunks = self._impl.epoch_chunks(self.epoch, work)
        stats = RebatchStats()
        where = str(self.shard_set.shards[0].tar.parent)
        produced = skip
        synced = [0, 0, 0]
        try:
            for batch in rebatch(self._observe(chunks), batch_size=self.batch_size, num_batches=self._num_batches - skip,
                                 drop_clips=drop, stats=stats, max_failures_in_a_row=self.shard_set.num_samples, where=where):
                produced += 1
                self._batches_done = produced
                self._sync_stats(stats, synced)
                # non_blocking: a blocking host->device copy would synchronize the stream every step.
                yield {"video": self._finish(batch.video), "label": batch.label.to(self.device, non_blocking=True),
                       "key": list(batch.keys)}
        finally:
            self._sync_stats(stats, synced)
            chunks.close()
        self._batches_done = 0

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
                f"preset={c.preset.name!r}, rank={self.rank}/{self.world_size}, batches={len(self)})")
