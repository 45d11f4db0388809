"""`VideoLoader`: batches of normalized clips from a fastvid shard set, through any registered backend.

    loader = VideoLoader("shards/train", 32, ClipSampling(clip_len=16, frame_stride=2), seed=0,
                         output=Output(device="cuda"), execution=Execution(rank=rank, world_size=world_size))
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:            # {"video": (B, 3, T, H, W), "label": (B,), "key": [B keys]}
            ...

Options come in four groups: ClipSampling (which clips), Augmentation (crop, resize, normalization),
Output (device, dtype, memory format, last-batch rule) and Execution (backend, ranks, threads and
workers, prefetch, failure budget).

Backends (registered by fastvid.video.kind): "dali", "pyav", "pyav-threads" and the NVDEC candidates
"pynvvideocodec", "torchcodec", "spdl"; "auto" = the first of the video kind's order for the device that
can decode the shards' codec and frame size (so videos below NVDEC's 128x128 go to a CPU decoder).
Every backend executes the same plan: the rank's work list for the epoch (below) and each item's
ClipPlan (fastvid.video.plan), so all of them cut the same clips.

Epoch plan (fastvid.video.sampling, identical on every rank so DDP never hangs): in training every
clip of the epoch is its own WorkItem in one list shuffled across the data set, and each step takes
world_size x batch_size consecutive clips of it, so every rank yields the same number of batches and
`state_dict()` only needs the global position (a resume may use another world size); evaluation
gives each rank a contiguous range of videos (all T x S views of a video in one item), the short
ranks wrapping around to the largest. Every video's clip grid comes from the per-shard metadata read
at open (no sample json is read).

Streamed (remote) sets: in training each rank reads its own part of the shards (`Execution.plan`
"auto" or "shards"; fastvid.video.sampling.shard_train_items: shards permuted per epoch, clips
shuffled within blocks of stream_window // 2 shards, n // world_size clips per rank), and a
fastvid.store.stream.ShardStream fetches that rank's shards in the order it reads them, holding at most
`Execution.stream_window` shards (the block being read and the next); a shard whose rows were all
delivered is released to the cache's eviction. Local sets keep the global clip shuffle above.

The loader keeps one backend for its lifetime (DALI pipeline, worker processes, decoder threads
persist across epochs) and turns its Chunk | Failure stream into batches with
fastvid.pipeline.runner (`LastBatch.DROP` or `PARTIAL` for training, `LastBatch.WRAP` for evaluation) under the
pipeline's failure policy: a sample that fails is skipped, counted in `stats["decode_failures"]` and its
key logged, its place filled by the next sample; past `Execution.failure_budget` the epoch fails naming
the bad samples. Stage times are in `stage_stats` (fastvid.pipeline.stats).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastvid import _gpu
from fastvid.pipeline import backends
from fastvid.pipeline.contract import Failure, FailurePolicy, LastBatch, RebatchStats, WorkItem
from fastvid.pipeline.runner import EpochBatches, FailureLimits, run_batches
from fastvid.pipeline.stats import StageStats
from fastvid.video import plan as epoch_plan
from fastvid.video import sampling
from fastvid.video.plan import ClipConfig
from fastvid.video.presets import get_preset
from fastvid.video.reader import open_shard_set, sample_metadata

PLANS = ("auto", "global", "shards")


@dataclass(frozen=True)
class ClipSampling:
    """Which clips an epoch takes (fastvid.video.sampling; defaults are torchvision's reference)."""

    clip_len: int
    frame_stride: int = 1                 # distance between a clip's frames, counted at frame_rate
    clips_per_video: int = 1              # training: clips drawn per video; evaluation: temporal views T
    frame_rate: float | None = None       # resample videos to this rate first (torchvision's frame_rate)
    step_between_clips: int = 1           # frames between the starts of a video's grid clips
    short_videos: str = "drop"            # drop (torchvision) | pad (repeat the last frame)
    clip_sampling: str = "without_replacement"
    sampler: str = "clips"                # clips (VideoClips grid) | segments (TSN)
    spatial_views: int = 1                # evaluation: spatial crops S per clip (1 centre, 3 along the long side)


@dataclass(frozen=True)
class Augmentation:
    """Crop, resize and normalization of the clips (fastvid.video.presets)."""

    preset: str = "video_resnet"
    crop_size: int | tuple[int, int] | None = None     # None: the preset's
    resize_size: int | tuple[int, int] | None = None   # None: the preset's


@dataclass(frozen=True)
class Output:
    """What the batches look like and where they are delivered."""

    device: str = "cuda"
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    last_batch: LastBatch | None = None   # None: DROP in training, WRAP in evaluation; PARTIAL: torchvision's tail


@dataclass(frozen=True)
class Execution:
    """How the loader runs: backend, ranks, parallelism and the failure budget."""

    backend: str = "auto"
    rank: int = 0
    world_size: int = 1
    num_threads: int | None = None        # decode threads (DALI, threaded decoders); default: the cores
    num_workers: int | None = None        # decode processes (PyAV); default: the cores
    prefetch: int = 2                     # chunks decoded ahead
    failure_budget: int | float | None = FailurePolicy.budget  # failed samples an epoch tolerates (count or fraction)
    plan: str = "auto"                    # training plan: auto (shards for streamed sets, else global) | global | shards
    stream_window: int = 8                # streamed sets: shards a rank holds locally (the block it reads + the next)


class VideoLoader:
    def __init__(self, shards, batch_size: int, sampling: ClipSampling, *, train: bool = True, seed: int = 0,
                 augmentation: Augmentation = Augmentation(), output: Output = Output(),
                 execution: Execution = Execution()):
        s, a, o, x = sampling, augmentation, output, execution
        if batch_size < 1 or s.clip_len < 1 or s.clips_per_video < 1:
            raise ValueError(f"batch_size, clip_len and clips_per_video must be >= 1 (got {batch_size}, {s.clip_len}, "
                             f"{s.clips_per_video})")
        if not 0 <= x.rank < x.world_size:
            raise ValueError(f"rank {x.rank} is outside world_size {x.world_size}")
        if o.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {o.dtype}")
        if x.plan not in PLANS:
            raise ValueError(f"plan must be one of {', '.join(PLANS)}, got {x.plan!r}")
        if x.stream_window < 1:
            raise ValueError(f"stream_window must be >= 1 shard, got {x.stream_window}")
        self.device = _gpu.resolve_device(o.device)
        self.shard_set = open_shard_set(shards)
        self.config = ClipConfig(clip_len=s.clip_len, frame_stride=s.frame_stride, clips_per_video=s.clips_per_video,
                                 train=train, preset=get_preset(a.preset, a.crop_size, a.resize_size),
                                 frame_rate=s.frame_rate, seed=seed, step_between_clips=s.step_between_clips,
                                 short_videos=s.short_videos, clip_sampling=s.clip_sampling, sampler=s.sampler,
                                 spatial_views=s.spatial_views)
        self.batch_size = batch_size
        self.rank, self.world_size = x.rank, x.world_size
        self.seed = seed
        self.train = train
        self.last_batch = LastBatch(o.last_batch) if o.last_batch is not None else LastBatch.from_drop_last(train)
        self.drop_last = self.last_batch is LastBatch.DROP
        # Training plans rounds of world x batch clips (DROP, PARTIAL); evaluation (and training with WRAP) wraps.
        self._rounds = train and self.last_batch in (LastBatch.DROP, LastBatch.PARTIAL)
        self._partial = self.last_batch is LastBatch.PARTIAL
        self.dtype = o.dtype
        self.channels_last = o.channels_last
        self.failure_policy = FailurePolicy(x.failure_budget)
        self.stream_window = x.stream_window
        # Streamed sets in training: each rank its own part of the shards (sampling.shard_train_items).
        self.shard_plan = train and (x.plan == "shards" or (x.plan == "auto" and self.shard_set.streamed))
        self.stream_stats: dict = {}
        first = sample_metadata(self.shard_set, 0, 0, first_nonempty=True)
        self.backend = backends.choose_backend("video", x.backend, "cuda" if self.device.startswith("cuda") else "cpu",
                                               self.shard_set.codec, first.get("width"), first.get("height"))
        self.epoch = 0
        self._start = 0           # global clip position the next epoch pass starts from (elastic resume)
        self._batches_done = 0
        self.stage_stats = StageStats()
        self.stats = {"decode_failures": 0, "failed_keys": [], "batches": 0, "clips": 0, "stage_s": {}, "worker_pids": set()}
        self._plan_epochs(shards)
        cpus = backends.cpu_count()
        self.options = backends.BackendOptions(
            videos_per_chunk=self.videos_per_step, device=self.device, num_threads=x.num_threads or cpus,
            num_workers=cpus if x.num_workers is None else x.num_workers, dtype=o.dtype, channels_last=o.channels_last,
            prefetch=x.prefetch)
        self._impl = backends.create("video", self.backend, self.shard_set, self.config, self.options)

    def _plan_epochs(self, shards) -> None:
        """Clip grids of every video and the epoch's size; clear errors for sets that give no batch."""
        c = self.config
        if self.shard_set.num_samples < self.world_size:
            # Every rank must take part in evaluation's collectives: a rank with no video would fail alone and hang the rest.
            raise ValueError(f"{shards}: {self.shard_set.num_samples} videos cannot be split over {self.world_size} ranks "
                             "(a rank would get none); use fewer ranks")
        # Clip-grid sizes of every video (from the shard jsons, read once): the epoch plan needs them.
        self._grid_sizes = epoch_plan.grid_sizes(self.shard_set, c)
        # Clips per work item: 1 in training (every clip its own sample), T x S views of a video in evaluation.
        self.clips_per_item = 1 if self.train else c.clips_per_video * c.views_per_clip
        self.videos_per_step = max(1, -(-self.batch_size // self.clips_per_item))
        self._num_items = (sampling.num_train_clips(self._grid_sizes, c.clips_per_video, c.clip_sampling) if self.train
                           else sum(1 for sizes in self._grid_sizes for k in sizes if k > 0))
        self._rank_clips = self._num_items // self.world_size  # shard plan: every rank's clips per epoch
        if self._num_items == 0:
            raise ValueError(f"{shards}: no video holds a clip of {c.clip_len} frames (frame_stride {c.frame_stride}, "
                             f"frame_rate {c.frame_rate}); use short_videos='pad' or shorter clips")
        if not self.train and self._num_items < self.world_size:
            raise ValueError(f"{shards}: {self._num_items} videos with a full clip cannot be split over {self.world_size} ranks")
        self._num_batches = self._batches_from(0)
        if self._num_batches == 0:
            raise ValueError(f"{shards}: {self._num_items} clips over {self.world_size} rank(s) give no full batch of "
                             f"{self.batch_size} clips; use a smaller batch size (--batch-size) or more videos")

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
        if self.shard_plan:
            left = max(self._rank_clips - self._shard_plan_start(start), 0)
            return left // self.batch_size if self.drop_last else -(-left // self.batch_size)
        if self._rounds:
            return sampling.train_batches(self._num_items, self.world_size, self.batch_size, start, self._partial)
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
        position = min(self._start + self._batches_done * self.world_size * self.batch_size, self._num_items)
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

    def _shard_plan_start(self, position: int) -> int:
        """Where a rank's part of a shard-plan epoch resumes: the batches every rank has done (position counts
        clips over all ranks) times the batch size; exact on the same world size (see fastvid.video.sampling)."""
        return position // (self.world_size * self.batch_size) * self.batch_size

    def epoch_work(self, epoch: int | None = None) -> list[WorkItem]:
        """This rank's WorkItems for the current epoch from the current position (fastvid.video.sampling):
        what every backend executes."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shard_plan:
            items = sampling.shard_train_items(self._grid_sizes, [s.keys for s in self.shard_set.shards],
                                               clips_per_video=self.config.clips_per_video, seed=self.seed, epoch=epoch,
                                               rank=self.rank, world_size=self.world_size,
                                               block=max(1, self.stream_window // 2), clip_sampling=self.config.clip_sampling)
            start = self._shard_plan_start(self._start)
            end = start + self._batches_from(self._start) * self.batch_size if self.drop_last else len(items)
            return items[start:end]
        if self._rounds:
            items = sampling.train_items(self._grid_sizes, [s.keys for s in self.shard_set.shards],
                                         clips_per_video=self.config.clips_per_video, seed=self.seed, epoch=epoch,
                                         clip_sampling=self.config.clip_sampling)
            return sampling.rank_train_items(items, self.rank, self.world_size, self.batch_size, self._start, self._partial)
        if self.train:  # training without dropping the tail (drop_last=False): the last batches wrap around
            items = sampling.train_items(self._grid_sizes, [s.keys for s in self.shard_set.shards],
                                         clips_per_video=self.config.clips_per_video, seed=self.seed, epoch=epoch,
                                         clip_sampling=self.config.clip_sampling)
        else:
            items = sampling.eval_items(self._grid_sizes, self.config.clips_per_video)
        return sampling.rank_eval_items(items, self.rank, self.world_size, self.batch_size, self.clips_per_item)

    # ---- iteration -----------------------------------------------------------------------------------
    def _finish(self, batch: dict) -> dict:
        video = batch["video"]
        if video.dtype != self.dtype:
            video = video.to(self.dtype)
        if self.channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        batch["video"] = video
        return batch

    def __iter__(self):
        # The work list starts at the saved position (elastic resume): consumed items are never decoded again.
        self._batches_done = 0
        stats = RebatchStats()
        synced = [0, 0, 0]
        work = self.epoch_work()
        chunks = self._impl.epoch_chunks(self.epoch, work)
        stream = None
        if self.shard_set.streamed:  # fetch this rank's shards in the order it reads them, window by window
            stream = self.shard_set.extra["opened"].stream(sampling.first_use_order(work), window=self.stream_window)
            self.shard_set.stream = stream
            self.stream_stats = stream.stats
            chunks = self._count_use(chunks, work, stream)
        epoch = EpochBatches(self.batch_size, self.remaining_batches, last_rows=self._last_rows())
        limits = FailureLimits(self.failure_policy.limit(len(work)), max_in_a_row=self.shard_set.num_samples,
                               where=str(self.shard_set.shards[0].tar.parent))
        batches = run_batches(chunks, epoch, limits, device=self.device, stage_stats=self.stage_stats,
                              rebatch_stats=stats, finish=self._finish,
                              worker_pids=self.stats["worker_pids"])
        try:
            for batch in batches:
                self._batches_done += 1
                self._sync_stats(stats, synced)
                yield batch
        finally:
            self._sync_stats(stats, synced)
            batches.close()
            if stream is not None:
                self.shard_set.stream = None
                stream.close()
        # A full pass ends the resumed part of the epoch: another pass over it starts from its beginning.
        self._batches_done = 0
        self._start = 0

    def _last_rows(self) -> int | None:
        """Rows of the epoch's last batch where it may be smaller (PARTIAL), else None (all batch_size)."""
        if self.shard_plan and self._partial:
            left = max(self._rank_clips - self._shard_plan_start(self._start), 0)
            return left - (self._batches_from(self._start) - 1) * self.batch_size if left % self.batch_size else None
        if not (self._rounds and self._partial):
            return None
        return sampling.last_batch_rows(self._num_items, self.world_size, self.batch_size, self._start)

    def _count_use(self, chunks, work: list[WorkItem], stream):
        """Pass the chunks through, telling the stream when the rank has received every row of a shard."""
        from collections import Counter

        from fastvid.store.stream import ShardUse

        rows = self.clips_per_item
        counts = Counter()
        for item in work:
            counts[item.shard] += rows
        use = ShardUse(stream, counts)
        if not hasattr(self, "_shard_of_key"):
            self._shard_of_key = {k: si for si, s in enumerate(self.shard_set.shards) for k in s.keys}
        for chunk in chunks:
            if isinstance(chunk, Failure):
                use.used(self._shard_of_key.get(chunk.key, -1), rows)
            else:
                for key in chunk.keys:
                    use.used(self._shard_of_key.get(key, -1), 1)
            yield chunk

    def _sync_stats(self, stats: RebatchStats, synced: list[int]) -> None:
        """Add what `stats` counted since the last call (synced = [failures, batches, clips] already added)."""
        self.stats["failed_keys"].extend(stats.failed_keys[synced[0]:])
        self.stats["decode_failures"] += stats.failures - synced[0]
        self.stats["batches"] += stats.batches - synced[1]
        self.stats["clips"] += stats.clips - synced[2]
        self.stats["stage_s"] = self.stage_stats.seconds()
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
