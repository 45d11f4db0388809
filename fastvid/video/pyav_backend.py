"""PyAV backend: shard bytes -> PyAV decode -> crop/resize/flip, in persistent DataLoader worker processes.

The CPU decoder for every codec (DALI's CPU decoder handles VP8/VP9 only). It reads the samples'
byte ranges through the .idx files, cuts clips with the same pure planner (fastvid.video.plan) as
every other backend and applies the same box/flip/resize/normalize, so a (seed, epoch, key) clip
holds the same frames in every backend.

Scaling: one decode per worker process, workers default to all cores, and the workers are started
once and kept across epochs (`persistent_workers`): each epoch only sends the new work list, so a
small data set pays no respawn per epoch. Each worker keeps its tar files open.
"""

from __future__ import annotations

import functools
import io
import itertools
import multiprocessing.context
import os
import sys
import time
import types

import numpy as np
import torch

from fastvid.video import pixels
from fastvid.pipeline.contract import Chunk, Failure, WorkItem
from fastvid.video.plan import plan_work
from fastvid.video.reader import TarHandles, read_sample
from fastvid.video.pixels import scaled_crop
from fastvid.video.plan import ClipConfig
from fastvid.video.views import cut_views


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


def cut_clip(frames: np.ndarray, crop_at, out_size, flip: bool) -> np.ndarray:
    """(T, H', W', 3) scaled frames -> (T, out_h, out_w, 3) uint8 crop, mirrored when `flip`."""
    y, x = crop_at
    clip = frames[:, y:y + out_size[0], x:x + out_size[1]]
    return np.ascontiguousarray(clip[:, :, ::-1] if flip else clip)


class ClipDataset(torch.utils.data.Dataset):
    """A task (epoch, candidate work items) -> {"clips": (N, T, h, w, 3) uint8 (or the evaluation views' "frames",
    "index", "crops", "flips"), "label", "key", "clip" (grid clip of each row), "failed", ...}.

    Tasks carry their work, not an index into a plan held by the dataset: persistent workers keep the
    dataset object they were started with, so the epoch's plan travels with each task instead. A
    sample that fails to decode is replaced by the next candidate (the following work items of the
    plan) and reported in "failed".
    """

    def __init__(self, shard_set, config: ClipConfig):
        self.shard_set = shard_set
        self.config = config
        self._handles = TarHandles(shard_set)

    def _handle(self, shard_index, paths: dict):
        """The open tar of a shard; for a streamed set, the local copy the main process named in the task
        (workers never fetch: the main process's ShardStream does, and says where the file is)."""
        if not self.shard_set.streamed:
            return self._handles.get(shard_index)
        where = paths[shard_index]
        if isinstance(where, str):  # the fetch failed: its message
            raise ValueError(where)
        return self._handles.get(shard_index, where)

    def load(self, item: WorkItem, epoch: int, paths: dict | None = None) -> dict:
        t0 = time.perf_counter()
        key, data, label, meta = read_sample(self.shard_set, item, handle=self._handle(item.shard, paths or {}))
        plan = plan_work(self.config, meta, key, epoch, item)
        t1 = time.perf_counter()
        height, width = int(meta["height"]), int(meta["width"])
        # Rows that scale the frame to the same size share one decode, scaled in the decoder's RGB conversion
        # (every distinct frame decoded once: all views of an evaluation item, every clip of a training item).
        cuts = [scaled_crop(box, plan.out_size, height, width) for box in plan.boxes]
        clip_ids = plan.clips.tolist()
        if not self.config.train and len({size for size, _ in cuts}) == 1:
            # Evaluation views (T clips x S crops): the distinct frames travel once; views are cut on the device.
            wanted, positions = pixels.distinct_frames(plan.frames)
            decoded = decode_frames(data, wanted, size=cuts[0][0])
            t2 = time.perf_counter()
            return {"frames": torch.from_numpy(np.stack([decoded[int(f)] for f in wanted])),
                    "index": torch.from_numpy(positions), "crops": torch.tensor([at for _, at in cuts], dtype=torch.int64),
                    "flips": torch.from_numpy(plan.flips.copy()), "label": label, "key": key, "clip": clip_ids,
                    "stage_s": {"read": t1 - t0, "decode": t2 - t1}}
        out = [None] * len(cuts)
        decode_s = 0.0
        for size in dict.fromkeys(size for size, _ in cuts):
            rows = [r for r, (s, _) in enumerate(cuts) if s == size]
            t = time.perf_counter()
            decoded = decode_frames(data, plan.frames[rows].ravel(), size=size)
            decode_s += time.perf_counter() - t
            for r in rows:
                out[r] = cut_clip(np.stack([decoded[int(i)] for i in plan.frames[r]]), cuts[r][1], plan.out_size,
                                  bool(plan.flips[r]))
        pixels_s = time.perf_counter() - t1 - decode_s
        return {"clips": torch.from_numpy(np.stack(out)), "label": label, "key": key, "clip": clip_ids,
                "stage_s": {"read": t1 - t0, "decode": decode_s, "pixels": pixels_s}}

    def __getitem__(self, task):
        epoch, candidates, paths = task if len(task) == 3 else (*task, {})
        failed = []
        for n, item in enumerate(candidates):
            if n and self.shard_set.streamed and item.shard not in paths:
                continue  # a replacement whose shard is not local yet: it is decoded in its own task later
            try:
                out = self.load(item, epoch, paths)
                out["failed"] = failed
                return out
            except Exception as exc:  # a broken sample must not stop training: skip it, report the key
                key = self.shard_set.shards[item.shard].keys[item.sample]
                failed.append((key, f"{self.shard_set.shards[item.shard].tar}: {type(exc).__name__}: {exc}"))
        return {"clips": None, "label": -1, "key": None, "failed": failed, "stage_s": {}}


def collate(items):
    good = [it for it in items if it["key"] is not None]
    stage_s: dict[str, float] = {}
    for it in items:
        for k, v in it["stage_s"].items():
            stage_s[k] = stage_s.get(k, 0.0) + v
    if good and "frames" in good[0]:  # evaluation views: frames once per video, cut later on the device
        offsets = np.cumsum([0] + [it["frames"].shape[0] for it in good[:-1]])
        n = [it["index"].shape[0] for it in good]
        views = {"frames": torch.cat([it["frames"] for it in good]),
                 "index": torch.cat([it["index"] + int(o) for it, o in zip(good, offsets)]),
                 "crops": torch.cat([it["crops"] for it in good]), "flips": torch.cat([it["flips"] for it in good])}
    else:
        n = [it["clips"].shape[0] for it in good]
        views = {"clips": torch.cat([it["clips"] for it in good]) if good else None}
    return {**views, "label": torch.tensor([it["label"] for it in good], dtype=torch.int64).repeat_interleave(torch.tensor(n, dtype=torch.int64)),
            "key": [it["key"] for it, k in zip(good, n) for _ in range(k)], "clip": [c for it in good for c in it["clip"]],
            "failed": [f for it in items for f in it["failed"]], "stage_s": stage_s, "pid": os.getpid()}


def _worker_init(_, owner: int | None = None):
    from fastvid.store.writer import obey_parent

    torch.set_num_threads(1)  # one decode per worker: oversubscribing cores only adds contention
    # SIGTERM/SIGINT to the whole process group (Slurm, `timeout`, launchers, Ctrl-C) reach the workers too: they
    # leave the decision to the trainer (checkpoint mid-epoch, exit 75), taking SIGTERM from it alone; they die
    # with their parent (the trainer, or the fork server that dies with it). owner None: the parent.
    obey_parent(os.getppid(), owner=owner)


if hasattr(multiprocessing.context, "ForkServerContext"):  # POSIX; Windows has spawn only (and no DALI)
    class _ForkServerProcessWithoutMain(multiprocessing.context.ForkServerProcess):
        """A fork-server process that does not import the parent's __main__ again.

        multiprocessing tells every spawned or fork-server child to import the parent's main module first (so
        that objects defined there unpickle). A user's script without `if __name__ == "__main__":` would then run
        again in every decode worker, which dies ("DataLoader worker exited unexpectedly"). Decode workers only
        need fastvid's own objects, so while one is started the parent's main module is hidden (the fork server,
        when this starts it, is told no main module either)."""

        @staticmethod
        def _Popen(process_obj):
            main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                return multiprocessing.context.ForkServerProcess._Popen(process_obj)
            finally:
                sys.modules["__main__"] = main

    class _ForkServerWithoutMain(multiprocessing.context.ForkServerContext):
        """The fork server's context for decode workers. The server is in the trainer's process group too, so it must
        survive a SIGTERM sent to the group (its workers die with it): it imports `fastvid.video.forkserver_init`
        first, which ignores SIGTERM there (the server ends when the trainer does). Replaces any other preload list;
        takes effect when this process starts the fork server, not on one already running."""

        def __init__(self):
            super().__init__()
            self.set_forkserver_preload(["fastvid.video.forkserver_init"])

        Process = _ForkServerProcessWithoutMain


class _EpochTasks:
    """The DataLoader's batch sampler: yields the current epoch's tasks; replaced per epoch, workers stay.
    Iterated in the main process as the DataLoader dispatches tasks, so `resolve` (a streamed set: name the
    local copy of each task's shard, waiting for the stream to fetch it) runs just in time."""

    def __init__(self):
        self.batches: list[list] = []
        self.resolve = None

    def __iter__(self):
        if self.resolve is None:
            return iter(self.batches)
        return ([self.resolve(task) for task in batch] for batch in self.batches)

    def __len__(self):
        return len(self.batches)


class PyAVBackend:
    """Decodes the epoch's work list in chunks of `videos_per_chunk` videos (each giving its clips)."""

    def __init__(self, shard_set, config: ClipConfig, *, videos_per_chunk: int, num_workers: int, device="cpu",
                 dtype=torch.float32, channels_last: bool = False, prefetch: int = 4, max_retries: int = 8):
        self.dataset = ClipDataset(shard_set, config)
        self.scale, self.shift = pixels.normalization_tensors(config.preset, device)
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.videos_per_chunk = videos_per_chunk
        self.num_workers = num_workers
        self.out_size = config.preset.crop_size
        self.prefetch = prefetch
        self.max_retries = max_retries
        self._tasks = _EpochTasks()
        self._tasks.resolve = self._with_paths if shard_set.streamed else None
        self._loader = None

    def _with_paths(self, task):
        """(epoch, candidates, {shard: local path or the fetch error}): the first candidate's shard is waited
        for; the replacements' shards are named when they are already local."""
        epoch, candidates = task
        shard_set = self.dataset.shard_set
        stream = shard_set.__dict__.get("stream")
        if stream is None:
            return task
        paths: dict = {}
        for n, item in enumerate(candidates):
            if item.shard in paths:
                continue
            try:
                # This runs on the consumer's thread (the DataLoader dispatching ahead): waiting for window room
                # would wait for itself, so a shard past the window is fetched at once.
                where = stream.path(item.shard, beyond_window=True) if n == 0 else stream.local(item.shard)
            except Exception as exc:  # the download failed: the worker reports it for the sample
                where = str(exc)
            if where is not None:
                paths[item.shard] = where
        return (epoch, candidates, paths)

    def _dataloader(self):
        if self._loader is None:
            # Forking a process in which DALI pipelines (which now live as long as their loader) run threads can
            # deadlock the child on a lock held at fork time: start workers from a fork server then.
            context = _ForkServerWithoutMain() if self.num_workers and "nvidia.dali" in sys.modules else None  # noqa: F821
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self._tasks, num_workers=self.num_workers, collate_fn=collate,
                worker_init_fn=functools.partial(_worker_init, owner=os.getpid()) if self.num_workers else None, persistent_workers=self.num_workers > 0,
                prefetch_factor=self.prefetch if self.num_workers else None, pin_memory=str(self.device).startswith("cuda"),
                multiprocessing_context=context)
        return self._loader

    def _batches(self):
        """An iterator over the epoch's batches; the first one starts the worker processes, with SIGINT/SIGTERM
        deferred so that none reaches a worker before it is set up to leave them to this process."""
        from fastvid.store.writer import signals_deferred

        loader = self._dataloader()
        if self.num_workers and loader.multiprocessing_context is not None:
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()  # the fork server's start would do it, unblocking the signals
        with signals_deferred():
            return iter(loader)

    def epoch_chunks(self, epoch: int, work: list[WorkItem]):
        n = len(work)
        # Each task lists its item and the next ones of the plan as replacements for a failing sample.
        tasks = [(int(epoch), tuple(work[(i + r) % n] for r in range(min(self.max_retries + 1, n)))) for i in range(n)]
        chunks = [tasks[i:i + self.videos_per_chunk] for i in range(0, n, self.videos_per_chunk)]
        inline = []
        if self.num_workers and self._loader is None and len(chunks) > 1:
            # First epoch: while the worker processes start (from a fork server, each imports torch: seconds),
            # this process decodes the first chunk itself, so the first batch does not wait for them.
            inline, chunks = chunks[:1], chunks[1:]
        self._tasks.batches = chunks
        workers = self._batches()
        for out in itertools.chain((self._inline(chunk) for chunk in inline), workers):
            for key, error in out["failed"]:
                yield Failure(key, error)
            if "frames" in out:
                frames = out["frames"].to(self.device, non_blocking=True)
                clips = cut_views(frames, out["index"], out["crops"], self.out_size, out["flips"])
            elif out["clips"] is None:
                continue
            else:
                clips = out["clips"]
            video = pixels.normalize_clips(clips, self.scale, self.shift, self.device, self.dtype, self.channels_last)
            yield Chunk({"video": video, "label": out["label"], "clip": out["clip"]}, out["key"], stage_s=out["stage_s"],
                        worker_pid=out["pid"])

    def _inline(self, chunk) -> dict:
        """A chunk decoded in this process (not by a worker: no worker pid)."""
        resolve = self._tasks.resolve
        out = collate([self.dataset[resolve(task) if resolve is not None else task] for task in chunk])
        out["pid"] = None
        return out

    def close(self):
        """Stops the worker processes now (they otherwise live as long as the loader)."""
        if self._loader is not None:
            it = getattr(self._loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
            self._loader = None
