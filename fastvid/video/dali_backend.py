"""DALI backend: one pipeline per loader, reused across epochs, fed the epoch's work list.

Graph (built once; each epoch feeds it the rank's work list and resets it at the end):

    fn.external_source(feeder)   video bytes (read through the .idx byte ranges), distinct frame indices,
                                 clip order, geometry                               (fastvid.video.plan)
    fn.decoders.video(bytes, frames=distinct indices, device="mixed"|"cpu")   each frame decoded once
    fn.sequence_rearrange(new_order)       frames of clip 1, clip 2, ... (clips may share frames)
    clips of a video share one box:  fn.resize(roi_start, roi_end)   crop + flip + resize in one op
    clips have boxes of their own:   fn.resize(size)  whole frames to the first box's scale (antialiased),
                                     fn.warp_affine(per-frame matrix)  each clip's crop and flip
    fn.crop_mirror_normalize(mean, std, dtype, layout CFHW or FHWC)

The pipeline starts with the one-box graph (measured ~2x faster on the CPU: a per-frame warp costs
as much as the decode there) and is rebuilt once with the per-clip graph when a plan with per-clip
boxes arrives.

The feeder runs the same plan as every other backend (sample order, clips, boxes, flips), so DALI
and PyAV give the same batches; resuming at any position is a matter of the work list. Decoding and
pixel work run in DALI's threads (CPU) or on the GPU; the feeder only reads bytes and plans.
A sample that fails to decode is found by re-running its batch one sample at a time, reported as a
Failure, and left out; the pipeline is rebuilt only then.
"""

from __future__ import annotations

import collections
import time

import numpy as np
import torch

from fastvid import _gpu
from fastvid.video import pixels
from fastvid.video.decoders import nvdec
from fastvid.pipeline.contract import Chunk, Failure, WorkItem
from fastvid.video.plan import plan_work
from fastvid.video.reader import read_sample
from fastvid.video.plan import ClipConfig
from fastvid.video.presets import normalization
from fastvid.video.reader import DALI_CPU_CODECS, ShardSet, TarHandles


def check_codec(shard_set: ShardSet, device: str) -> None:
    """DALI's CPU decoder handles VP8/VP9/MJPEG only: say what to do instead of failing deep in DALI."""
    if device == "cpu" and shard_set.codec not in DALI_CPU_CODECS:
        where = shard_set.shards[0].tar.parent
        raise ValueError(
            f"{where}: shards hold {shard_set.codec or 'unknown'}-coded video, which DALI's CPU decoder cannot decode "
            f"(it handles {', '.join(DALI_CPU_CODECS)}). Re-shard with `fastvid shard videos ... --codec vp9`, "
            f"use backend='pyav', or run on a GPU (device='cuda' decodes it with NVDEC).")


def can_decode(codec: str | None, device: str, width: int | None, height: int | None) -> bool:
    """Whether DALI can decode these shards on `device` (the registry's question)."""
    if not _gpu.dali_available():
        return False
    if device == "cpu":
        return codec in DALI_CPU_CODECS
    return nvdec.fits(codec, device, width, height)


def crop_matrices(plan, positions: np.ndarray, scaled: tuple[int, int], height: int, width: int, crop_at) -> np.ndarray:
    """(N*T, 2, 3) float32 destination->source affine maps that cut each clip's box (and flip) from frames
    already resized to `scaled` = (h', w') for the first clip's box.

    Coordinates are continuous (pixel i spans [i, i+1)). A clip whose box is the first one's is a pure
    integer shift (`crop_at`), so no second interpolation touches its pixels."""
    oh, ow = plan.out_size
    sy, sx = scaled[0] / height, scaled[1] / width
    first = tuple(int(v) for v in plan.boxes[0])
    rows = []
    for box, flip in zip(plan.boxes, plan.flips):
        if tuple(int(v) for v in box) == first:
            by, bx, bh, bw = float(crop_at[0]), float(crop_at[1]), float(oh), float(ow)
        else:
            y0, x0, h, w = (float(v) for v in box)
            by, bx, bh, bw = y0 * sy, x0 * sx, h * sy, w * sx
        ax = bw / ow
        m = [[-ax, 0.0, bx + bw], [0.0, bh / oh, by]] if flip else [[ax, 0.0, bx], [0.0, bh / oh, by]]
        rows.append(np.asarray(m, np.float32))
    per_clip = np.stack(rows)  # (N, 2, 3)
    return np.repeat(per_clip, positions.shape[1], axis=0)


_SWITCH = "fastvid: per-clip geometry needs the per-clip DALI graph"


class _Feeder:
    """The external source: each call returns the next batch of the current schedule (lists of work indices).

    It also queues, per batch it hands out, the keys/labels/clip counts (DALI returns batches in order,
    so the consumer pops them in step) and any samples whose metadata could not be planned."""

    def __init__(self, backend: "DALIBackend"):
        self.backend = backend
        self.schedule: collections.deque = collections.deque()
        self.epoch = 0
        self.work: list[WorkItem] = []
        self.issued: collections.deque = collections.deque()  # (work indices, keys, labels, clip counts, failures, stage_s, grid clips)
        self.stopped = False

    def start(self, epoch: int, work: list[WorkItem], batches: list[list[int]]):
        self.epoch, self.work = epoch, work
        self.schedule = collections.deque(batches)
        self.issued.clear()
        self.stopped = False

    def __call__(self):
        b = self.backend
        while True:
            if self.stopped or not self.schedule:
                raise StopIteration
            indices = self.schedule.popleft()
            t0 = time.perf_counter()
            out = [[] for _ in range(5)]
            graph_per_clip = b._built_per_clip
            keys, labels, clips, failures, grid = [], [], [], [], []
            for i in indices:
                item = self.work[i]
                try:
                    key, data, label, meta = read_sample(b.shard_set, item, handle=b.handle(item.shard))
                    plan = plan_work(b.config, meta, key, self.epoch, item)
                    height, width = int(meta["height"]), int(meta["width"])
                except Exception as exc:  # reported by the loader (the sample is left out of the batch)
                    key = b.shard_set.shards[item.shard].keys[item.sample]
                    failures.append(Failure(key, f"{b.shard_set.shards[item.shard].tar}: {type(exc).__name__}: {exc}"))
                    continue
                if not graph_per_clip and not pixels.shared_geometry(plan):
                    # The first plan whose clips have different boxes: switch to the per-clip graph (once).
                    b.per_clip = True
                    self.schedule.appendleft(indices)
                    raise RuntimeError(_SWITCH)
                unique, positions = pixels.distinct_frames(plan.frames)
                scaled, crop_at = pixels.scaled_crop(plan.boxes[0], plan.out_size, height, width)
                out[0].append(np.frombuffer(data, np.uint8))
                out[1].append(unique.astype(np.int32))
                out[2].append(positions.ravel().astype(np.int32))
                if graph_per_clip:  # whole-frame resize size, per-frame crop matrices
                    out[3].append(np.asarray(scaled, np.float32))
                    out[4].append(crop_matrices(plan, positions, scaled, height, width, crop_at))
                else:  # one ROI; a ROI whose start is past its end is mirrored by fn.resize: the flip costs nothing
                    y0, x0, h, w = (float(v) for v in plan.boxes[0])
                    xs, xe = (x0 + w, x0) if plan.flips[0] else (x0, x0 + w)
                    out[3].append(np.array([y0, xs], np.float32))
                    out[4].append(np.array([y0 + h, xe], np.float32))
                keys.append(key)
                labels.append(label)
                clips.append(positions.shape[0])
                grid.extend(plan.clips.tolist())
            stage = {"read": time.perf_counter() - t0}
            if not keys:  # a batch of samples that all failed: report them, move on to the next batch
                self.issued.append((indices, [], [], [], failures, stage, []))
                continue
            self.issued.append((indices, keys, labels, clips, failures, stage, grid))
            return out


class DALIBackend:
    """Decodes the epoch's work list with one long-lived DALI pipeline (see the module docstring)."""

    def __init__(self, shard_set: ShardSet, config: ClipConfig, *, videos_per_chunk: int, device: str, num_threads: int,
                 dtype: torch.dtype, channels_last: bool, prefetch: int = 2):
        _gpu.require_dali()
        self.shard_set = shard_set
        self.config = config
        self.videos_per_chunk = videos_per_chunk
        self.device = device
        # Plain "cuda" is torch's current device (torch.cuda.set_device(local_rank)), as the PyAV path's .to("cuda").
        index = torch.device(device).index if device.startswith("cuda") else None
        self.device_id = (index if index is not None else torch.cuda.current_device()) if device.startswith("cuda") else None
        self.num_threads = num_threads
        self.dtype = dtype
        self.channels_last = channels_last
        self.prefetch = prefetch
        check_codec(shard_set, "cuda" if self.device_id is not None else "cpu")
        self._handles = TarHandles(shard_set)
        self._feeder = _Feeder(self)
        self._pipe = None
        self.builds = 0  # pipelines built so far (one per loader unless a sample fails to decode)
        # Graph for plans whose clips share one box (one ROI resize per video, measured ~2x faster on the CPU
        # than a per-frame affine warp) until a plan with per-clip boxes arrives; then the per-clip graph.
        self.per_clip = False
        self._built_per_clip = False

    def handle(self, shard_index: int):
        return self._handles.get(shard_index)

    def build(self):
        from nvidia.dali import fn, pipeline_def, types

        mean, std = normalization(self.config.preset)
        out_h, out_w = self.config.preset.crop_size
        decoder_device = "mixed" if self.device_id is not None else "cpu"
        layout = "FHWC" if self.channels_last else "CFHW"
        dtype = types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
        per_clip = self._built_per_clip = self.per_clip

        @pipeline_def(batch_size=self.videos_per_chunk, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=self.prefetch, seed=0)
        def pipeline():
            # The last two inputs: (resize size, per-frame crop matrices) in the per-clip graph, else (ROI start, end).
            video, frames, order, geo_a, geo_b = fn.external_source(source=self._feeder, num_outputs=5, batch=True)
            # On the CPU, DALI 2.4 does not manage to seek inside in-memory streams (measured: the cost grows
            # with the start frame even with keyframes every 8 frames), so the index it would build first
            # is pure overhead there (~1.5x slower mid-video); NVDEC keeps the index for its seeks.
            clips = fn.decoders.video(video, device=decoder_device, frames=frames, pad_mode="edge",
                                      build_index=decoder_device == "mixed")
            clips = fn.sequence_rearrange(clips, new_order=order)
            if per_clip:
                clips = fn.resize(clips, size=geo_a, antialias=True)
                clips = fn.warp_affine(clips, matrix=fn.per_frame(geo_b), size=[out_h, out_w],
                                       interp_type=types.INTERP_LINEAR, fill_value=0)
            else:  # crop + flip + resize in one op
                clips = fn.resize(clips, roi_start=geo_a, roi_end=geo_b, size=[out_h, out_w], antialias=True)
            return fn.crop_mirror_normalize(clips, dtype=dtype, mean=mean.tolist(), std=std.tolist(), output_layout=layout)

        pipe = pipeline()
        pipe.build()
        self.builds += 1
        return pipe

    def _to_torch(self, tensor_list) -> list[torch.Tensor]:
        """Per-sample tensors (samples may hold different clip counts) on the loader's device."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out_dtype = torch.float16 if self.dtype == torch.float16 else torch.float32
        if tensor_list.is_dense_tensor():
            parts = [tensor_list.as_tensor()]
        else:
            parts = [tensor_list[i] for i in range(len(tensor_list))]
        tensors = []
        for dense in parts:
            shape = dense.shape()
            if self.device_id is not None:
                out = torch.empty(shape, dtype=out_dtype, device=torch.device("cuda", self.device_id))
                feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device_id))
            else:
                out = torch.empty(shape, dtype=out_dtype)
                feed_ndarray(dense, out)
            tensors.extend(out.unbind(0) if len(parts) == 1 and len(shape) == 5 else [out])
        return tensors

    def _clips(self, sample: torch.Tensor, n: int) -> torch.Tensor:
        """One sample's (3, N*T, h, w) or (N*T, h, w, 3) -> (N, 3, T, h, w) (a view when channels-last)."""
        t = sample.shape[0 if self.channels_last else 1] // n
        if self.channels_last:  # (N*T, h, w, 3) -> (N, 3, T, h, w) view, channels-last-3d memory
            return sample.view(n, t, *sample.shape[1:]).permute(0, 4, 1, 2, 3)
        return sample.view(3, n, t, *sample.shape[2:]).transpose(0, 1)

    def _drain(self, pipe):
        """End the current epoch of the pipeline early: stop feeding, discard what is in flight, reset."""
        self._feeder.stopped = True
        try:
            while True:
                pipe.run()
        except StopIteration:
            pipe.reset()
        except Exception:  # a decode error among the discarded batches: start afresh next epoch
            self._pipe = None

    def epoch_chunks(self, epoch: int, work: list[WorkItem]):
        batches = [list(range(i, min(i + self.videos_per_chunk, len(work)))) for i in range(0, len(work), self.videos_per_chunk)]
        self._feeder.start(epoch, work, batches)
        finished = False
        try:
            while True:
                if self._pipe is None:
                    self._pipe = self.build()
                t0 = time.perf_counter()
                try:
                    (clips,) = self._pipe.run()
                except StopIteration:
                    for _, _, _, _, failures, _, _ in self._feeder.issued:
                        yield from failures
                    self._feeder.issued.clear()
                    self._pipe.reset()
                    finished = True
                    return
                except RuntimeError as exc:
                    if self.per_clip and not self._built_per_clip:  # _SWITCH: same work, per-clip graph
                        self._pipe = None
                        self._feeder.start(epoch, work, [e[0] for e in self._feeder.issued] + list(self._feeder.schedule))
                        continue
                    yield from self._recover(exc)
                    continue
                # Batches whose samples all failed were issued without DALI output: report them first.
                while self._feeder.issued and not self._feeder.issued[0][1]:
                    yield from self._feeder.issued.popleft()[4]
                indices, keys, labels, counts, failures, stage, grid = self._feeder.issued.popleft()
                yield from failures
                samples = self._to_torch(clips)
                video = torch.cat([self._clips(s, n) for s, n in zip(samples, counts)]) if len(samples) > 1 else \
                    self._clips(samples[0], counts[0])
                label = torch.tensor(labels, dtype=torch.int64).repeat_interleave(torch.tensor(counts))
                stage = {**stage, "decode+pixels": time.perf_counter() - t0}
                yield Chunk({"video": video, "label": label, "clip": list(grid)}, [k for k, n in zip(keys, counts) for _ in range(n)],
                            stage_s=stage)
        finally:
            if not finished and self._pipe is not None:
                self._drain(self._pipe)

    def close(self):
        """Releases the pipeline and the open tar files now."""
        self._pipe = None
        self._handles.close()

    def _recover(self, exc: Exception):
        """A batch failed to decode: rebuild, then re-run that batch one sample at a time to find the bad ones."""
        feeder = self._feeder
        if not feeder.issued:
            raise RuntimeError(f"DALI pipeline failed outside any batch: {exc}") from exc
        indices = feeder.issued[0][0]
        rest = [entry[0] for entry in list(feeder.issued)[1:]] + list(feeder.schedule)
        self._pipe = None  # DALI leaves the pipeline unusable after an operator error
        if len(indices) == 1:
            item = feeder.work[indices[0]]
            key = self.shard_set.shards[item.shard].keys[item.sample]
            message = str(exc).strip().splitlines()
            detail = next((m for m in message if "rror" in m), message[-1] if message else "decode error")[:200]
            yield Failure(key, f"{self.shard_set.shards[item.shard].tar}: {detail}")
            feeder.start(feeder.epoch, feeder.work, rest)
        else:
            feeder.start(feeder.epoch, feeder.work, [[i] for i in indices] + rest)
