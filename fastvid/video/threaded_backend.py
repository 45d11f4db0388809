"""A backend around a frame decoder: a pool of threads, one long-lived decoder per thread.

For decoders that return whole frames (PyNvVideoCodec, torchcodec, SPDL on NVDEC; PyAV on the CPU):
each thread reads a work item's bytes through the .idx byte ranges, plans its clips, asks its own
decoder for the distinct frame indices once, and cuts the clips with fastvid.video.pixels on the
decoder's device. Decoders are created once per thread and reused for every sample (no per-clip
decoder set-up); several threads mean several concurrent NVDEC sessions, which the driver spreads
over the GPU's decoder engines. Chunks come out in work-list order, `prefetch` chunks ahead.

A decoder module provides `DECODE_DEVICE` ("cpu" or "cuda"), `can_decode(codec, device, w, h)` and
`make_decoder(device) -> decode(data: bytes, indices: sorted np.ndarray) -> (F, H, W, 3) uint8 tensor`.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque

import torch

from fastvid.video import pixels
from fastvid.pipeline.contract import Chunk, Failure, WorkItem
from fastvid.video.plan import plan_work
from fastvid.video.reader import TarHandles, read_sample


class ThreadedBackend:
    def __init__(self, shard_set, config, make_decoder, *, videos_per_chunk: int, device: str, num_threads: int,
                 dtype=torch.float32, channels_last: bool = False, prefetch: int = 2, decode_device: str = "cpu"):
        self.shard_set = shard_set
        self.config = config
        self.make_decoder = make_decoder
        self.videos_per_chunk = videos_per_chunk
        self.device = device
        # Frames stay where they were decoded (the GPU for NVDEC decoders), clips are moved at the end.
        self.decode_device = device if decode_device == "cuda" and str(device).startswith("cuda") else "cpu"
        if decode_device == "cuda" and self.decode_device == "cpu":
            raise ValueError("this decoder runs on the GPU: use device='cuda'")
        self.num_threads = max(1, int(num_threads))
        self.dtype, self.channels_last = dtype, channels_last
        self.prefetch = max(1, int(prefetch))
        self.scale, self.shift = pixels.normalization_tensors(config.preset, device)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._decoders = 0

    def _thread_state(self):
        state = self._local.__dict__
        if "decode" not in state:
            with self._lock:
                self._decoders += 1
            state["decode"] = self.make_decoder(self.decode_device)
            state["handles"] = TarHandles(self.shard_set)
            if str(self.decode_device).startswith("cuda"):
                state["stream"] = torch.cuda.Stream(device=self.decode_device)
        return state

    @property
    def decoders_created(self) -> int:
        """Decoders made so far: one per thread that has worked, never one per sample."""
        return self._decoders

    def _load(self, item: WorkItem, epoch: int):
        state = self._thread_state()
        try:
            t0 = time.perf_counter()
            key, data, label, meta = read_sample(self.shard_set, item, handle=state["handles"].get(item.shard))
            plan = plan_work(self.config, meta, key, epoch, item)
            unique, positions = pixels.distinct_frames(plan.frames)
            t1 = time.perf_counter()
            stream = state.get("stream")
            with torch.cuda.stream(stream) if stream is not None else _nothing():
                frames = state["decode"](data, unique)
                t2 = time.perf_counter()
                clips = pixels.clips_from_frames(frames, positions, plan.boxes, plan.flips, plan.out_size)
            if stream is not None:
                stream.synchronize()  # the clips are handed to another thread's stream
            t3 = time.perf_counter()
            return key, label, (clips, plan.clips.tolist()), {"read": t1 - t0, "decode": t2 - t1, "pixels": t3 - t2}
        except Exception as exc:  # reported by the loader; the sample is left out
            key = self.shard_set.shards[item.shard].keys[item.sample]
            return key, None, None, f"{self.shard_set.shards[item.shard].tar}: {type(exc).__name__}: {exc}"

    def epoch_chunks(self, epoch: int, work: list[WorkItem]):
        if self._pool is None:  # threads (and their decoders) live as long as the backend, across epochs
            self._pool = concurrent.futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix="fastvid-decode")
        groups = [work[i:i + self.videos_per_chunk] for i in range(0, len(work), self.videos_per_chunk)]
        inflight: deque = deque()
        pending = iter(groups)
        try:
            while True:
                while len(inflight) < self.prefetch:
                    group = next(pending, None)
                    if group is None:
                        break
                    inflight.append([self._pool.submit(self._load, item, epoch) for item in group])
                if not inflight:
                    return
                results = [f.result() for f in inflight.popleft()]
                stage: dict[str, float] = {}
                good = []
                for key, label, clips, info in results:
                    if clips is None:
                        yield Failure(key, info)
                        continue
                    for k, v in info.items():
                        stage[k] = stage.get(k, 0.0) + v
                    good.append((key, label, clips))
                if not good:
                    continue
                t0 = time.perf_counter()
                uint8 = torch.cat([c for _, _, (c, _) in good])
                video = pixels.normalize_clips(uint8, self.scale, self.shift, self.device, self.dtype, self.channels_last)
                counts = [c.shape[0] for _, _, (c, _) in good]
                label = torch.tensor([lb for _, lb, _ in good], dtype=torch.int64).repeat_interleave(torch.tensor(counts))
                stage["normalize"] = time.perf_counter() - t0
                yield Chunk({"video": video, "label": label, "clip": [i for _, _, (_, ids) in good for i in ids]},
                            [k for (k, _, _), n in zip(good, counts) for _ in range(n)], stage_s=stage)
        finally:
            for futures in inflight:
                for f in futures:
                    f.cancel()

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
