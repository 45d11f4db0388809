"""`EventSequenceLoader`: windows of an event shard set, `batch_size` streams in parallel, one window per
step per stream, as recurrent detectors train with truncated backpropagation through time.

    loader = EventSequenceLoader("shards/gen1/train", 8, Windowing(window_ms=50, mode="labels"),
                                 Encoding("stacked_histogram", bins=10, count_cutoff=10, dtype="uint8"),
                                 EventExecution(device="cuda", rank=rank, world_size=world))
    for step in loader:      # step["x"]: (B, C, H, W) from one batched kernel launch
        ...                  # step["boxes"], step["reset"], step["valid"], step["label_t"], ...

It is the events kind on the one pipeline: the windows of every recording come from one window
arithmetic (fastvid.events.windows, with label times chosen by fastvid.events.labels), a sampler
(fastvid.events.sampling: `stream` plays whole recordings, `random` plays RVT's random sequences) turns
them into the rank's steps, the event backend (fastvid.events.backend) reads and assembles each step's
events, and the pipeline's runner (fastvid.pipeline.runner) applies the failure policy, moves the batch
to the device and runs the representation kernel there (`finish`).

Every step yields
* ``x``: (B, C, H, W) representations of the B windows (float32, or float16 / uint8 with `dtype`);
* ``boxes``: B BOX_DTYPE arrays: the boxes with t0 <= t < t1 of each window (grid), or the labels of the
  window's label instant (labels mode; filtered as RVT does under an RVT label selection);
* ``reset``: (B,) bool, True where the stream starts a new recording / sequence (reset that stream's state);
* ``valid``: (B,) bool, False for padding windows (zero representation, no boxes): mask the loss with it;
* ``recording`` (B names or None), ``recording_id`` (B,) index into ``loader.recordings`` (-1 for
  padding), ``stream``, ``window`` (index in its recording, -1 for padding), ``t0``/``t1`` (window bounds
  in us, events t0 <= t < t1), ``label_t`` (labels mode: the label time the window ends at, -1 for the
  unlabelled windows of `fill`; grid mode: the latest box time inside the window, -1 when none),
  ``num_events`` (-1 where the window was read precomputed), ``step``.

Representations precomputed into the shards (`fastvid shard events --precompute ...`, RVT's practice) are
read instead of the events when they equal what the loader would compute: grid windows of the same
duration, representation and bins, and counts saturating where the stored uint8 ones do (dtype uint8, or
the same count_cutoff); `Encoding(precomputed=False)` always reads the events.

Scheduling is deterministic and computed identically on every rank (no communication); every rank plays
the same number of steps (``len(loader)``), so DDP collectives stay in step. A recording plays only up
to its real end, so the padding of its last shard segment never shows up as a valid window.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from fastvid.events import labels as label_rules
from fastvid.events import sampling
from fastvid.events.backend import EventBackend, Recording
from fastvid.events.codec import BOXES_EXT, META_EXT
from fastvid.events.reading import SegmentReader, index_segments, opened_segments
from fastvid.events.windows import WINDOW_MODES, WindowPlan, make_windows
from fastvid.pipeline.backends import cpu_count
from fastvid.pipeline.contract import FailurePolicy, RebatchStats
from fastvid.pipeline.runner import EpochBatches, FailureLimits, run_batches
from fastvid.pipeline.stats import StageStats

log = logging.getLogger(__name__)

OUTPUT_DTYPES = ("float32", "float16", "uint8")
_COUNT_KINDS = ("histogram", "stacked_histogram", "stacked_histogram_rvt")  # non-negative counts: uint8 holds them


@dataclass(frozen=True)
class Windowing:
    """Which windows an epoch plays (fastvid.events.windows, .labels, .sampling)."""

    window_ms: float = 50.0
    mode: str = "grid"          # grid: consecutive windows | labels: one window ending at each label time
    labels: str = "all"         # labels mode: which label times get a window (all | rvt-gen1 | rvt-gen4)
    fill: bool = False          # labels mode: unlabelled windows tile the time between label windows
    sampler: str = "stream"     # stream: whole recordings in order | random: RVT's random sequences
    seq_len: int = 20           # random sampler: windows per sequence
    shuffle: bool = True        # deal recordings in a (seed, epoch) order (False: by name)
    train: bool = True          # RVT's selection drops faulty huge boxes in training only


@dataclass(frozen=True)
class Encoding:
    """What a window becomes (fastvid.events.representations)."""

    representation: str = "stacked_histogram"
    bins: int = 10
    tau_us: float | None = None         # time_surface decay
    count_cutoff: float | None = None   # caps the counts of the stacked histograms (RVT's count_cutoff)
    dtype: str = "float32"              # float32 | float16 | uint8 (counts, saturating at 255; RVT stores uint8)
    precomputed: bool = True            # read representations stored in the shards when they match these windows


@dataclass(frozen=True)
class EventExecution:
    """Where and how the loader runs."""

    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    num_workers: int | None = None      # segment reader threads (default: up to 8, at most the streams)
    readahead: int = 2                  # segments read ahead per stream
    prefetch: int = 2                   # steps assembled ahead by a background thread (0: none)
    pin_memory: bool | None = None      # assemble in page-locked memory for a GPU (default: on for CUDA)
    sync_timing: bool = False           # synchronize around the GPU stages so stage_stats attribute GPU time
    stream_window: int | None = None    # streamed (remote) sets: shards a rank holds locally at once (default B + 2)
    failure_budget: int | float | None = FailurePolicy.budget


def _check(batch_size: int, w: Windowing, e: Encoding, x: EventExecution) -> None:
    from fastvid.events.representations import REPRESENTATIONS

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if x.world_size < 1 or not 0 <= x.rank < x.world_size:
        raise ValueError(f"rank must be in [0, world_size): got rank={x.rank}, world_size={x.world_size}")
    if not w.window_ms > 0:
        raise ValueError(f"window_ms must be positive, got {w.window_ms}")
    if w.mode not in WINDOW_MODES:
        raise ValueError(f"window_mode must be one of {', '.join(WINDOW_MODES)}, got {w.mode!r}")
    if w.labels not in label_rules.SELECTIONS:
        raise ValueError(f"labels must be one of {', '.join(label_rules.SELECTIONS)}, got {w.labels!r}")
    if w.sampler not in sampling.SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(sampling.SAMPLERS)}, got {w.sampler!r}")
    if e.representation not in REPRESENTATIONS:
        raise ValueError(f"unknown event representation {e.representation!r}; choose one of {sorted(REPRESENTATIONS)}")
    if e.dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {e.dtype!r}")
    if e.dtype == "uint8" and e.representation not in _COUNT_KINDS:
        raise ValueError(f"dtype uint8 holds event counts only ({', '.join(_COUNT_KINDS)}), not {e.representation!r}")
    if e.count_cutoff is not None and not e.count_cutoff > 0:
        raise ValueError(f"count_cutoff must be > 0, got {e.count_cutoff}")


def index_recordings(refs, reader: SegmentReader, boxes: bool = False, where="the event set",
                     fields: dict | None = None) -> tuple[list[Recording], dict]:
    """Recordings of an event shard set (segments in time order, clock, real end, label times) and the first
    segment's metadata (sensor size of sets without a manifest). Planning reads the per-shard metadata the
    store opened with the set (no sample read); segments without it cost one small read each. `boxes`: also
    every box of each recording (one read per segment, or from `fields`, `streamed_fields` of the boxes
    read ahead; RVT's label selection filters them)."""
    by_rec: dict[str, list] = {}
    for ref in refs:
        by_rec.setdefault(ref.recording, []).append(ref)
    recordings, first_meta = [], {}
    for name, segs in by_rec.items():
        indices = [s.segment for s in segs]
        if indices != list(range(indices[0], indices[0] + len(indices))):
            raise ValueError(f"{where}: recording {name!r} has missing segments (has {indices[:10]}...); "
                             "reshard it or pass every shard of the set")
        first = _segment_meta(reader, segs[0])
        duration = int(first["t1"]) - int(first["t0"])
        if duration <= 0:
            raise ValueError(f"{segs[0].tar}: segment {segs[0].key!r} has t1 <= t0")
        t_begin = int(first["t0"])
        padded_end = t_begin + duration * len(segs)
        t_end = min(int(first.get("recording_t_end", padded_end)), padded_end)
        all_boxes = _recording_boxes(reader, segs, fields) if boxes else None
        times = np.unique(all_boxes["t"]).astype(np.int64) if boxes else _label_times(reader, segs)
        recordings.append(Recording(first["recording"], tuple(segs), t_begin, max(t_end, t_begin + 1), duration,
                                    times, all_boxes))
        first_meta = first_meta or first
    return recordings, first_meta


def _segment_meta(reader: SegmentReader, ref) -> dict:
    if ref.meta and "t0" in ref.meta and "t1" in ref.meta:
        return ref.meta
    return json.loads(reader.read_fields(ref, {META_EXT})[META_EXT])


def _label_times(reader: SegmentReader, segs) -> np.ndarray:
    """Distinct box timestamps of a recording: from the per-shard metadata, else one boxes read per segment."""
    times = []
    for ref in segs:
        if BOXES_EXT not in ref.fields:
            continue
        if ref.meta is not None and "label_times" in ref.meta:
            times.append(np.asarray(ref.meta["label_times"], np.int64))
        else:
            times.append(reader.read_boxes(ref)["t"].astype(np.int64))
    return np.unique(np.concatenate(times)) if times else np.zeros(0, np.int64)


def _recording_boxes(reader: SegmentReader, segs, fields: dict | None = None) -> np.ndarray:
    """Every box of a recording, in time order (one small read per segment, or from `fields`)."""
    from fastvid.events.io import empty_boxes

    parts = []
    for ref in segs:
        if BOXES_EXT in ref.fields:
            data, address = (fields or {}).get((ref.shard, ref.key), (None, None))
            parts.append(reader.read_boxes(ref, data, address))
    boxes = np.concatenate(parts) if parts else empty_boxes()
    return boxes[np.argsort(boxes["t"], kind="stable")]


def streamed_fields(opened, refs, ext: str, threads: int = 8) -> dict:
    """{(shard, key): (bytes, the tar's address)} of field `ext` of every segment in `refs` that has it, read as
    byte ranges of the set's tars (concurrent range requests per tar, `threads` tars at a time) without fetching
    any tar whole. Ranges are not covered by the tars' sha256 (checked on whole fetches): the caller decodes
    them with its usual validation."""
    from concurrent.futures import ThreadPoolExecutor

    by_shard: dict[int, list] = {}
    for ref in refs:
        if ext in ref.fields:
            by_shard.setdefault(ref.shard, []).append(ref)

    def read(shard: int):
        got = opened.read_ranges(shard, [ref.fields[ext] for ref in by_shard[shard]])
        return {(shard, ref.key): (data, opened.files[shard].address) for ref, data in zip(by_shard[shard], got)}

    out: dict = {}
    with ThreadPoolExecutor(max(1, min(threads, len(by_shard)))) as pool:
        for part in pool.map(read, by_shard):
            out.update(part)
    return out


def recording_windows(rec: Recording, w: Windowing, window_us: int, sensor_size) -> WindowPlan:
    """The windows of one recording under `w` (labelled windows carry label_t; see the module docstring)."""
    if w.mode == "labels":
        times = rec.label_times if w.labels == "all" else label_rules.label_times(rec.boxes, w.labels, sensor_size, w.train)
        return make_windows("labels", rec.t_begin, rec.t_end, window_us, times, fill=w.fill)
    return sampling.grid_labels(make_windows("grid", rec.t_begin, rec.t_end, window_us), rec.label_times)


class EventSequenceLoader:
    """Streams `batch_size` windows per step from an event shard set (directory, URL or tar list); see the
    module docstring. `len(loader)` is the number of steps, equal on all ranks; `set_epoch(e)` reshuffles."""

    def __init__(self, shards, batch_size: int, windowing: Windowing = Windowing(), encoding: Encoding = Encoding(),
                 execution: EventExecution = EventExecution(), *, seed: int = 0, sensor_size=None):
        from fastvid import _gpu

        _check(batch_size, windowing, encoding, execution)
        self.shards, self.batch_size, self.seed = shards, batch_size, seed
        self.windowing, self.encoding, self.execution = windowing, encoding, execution
        self.window_us = int(round(windowing.window_ms * 1000))
        self.rank, self.world_size = execution.rank, execution.world_size
        self.device = _gpu.resolve_device(execution.device)
        # Page-locked memory only helps copies to a GPU (and needs CUDA to allocate).
        self.pin_memory = self.device.startswith("cuda") and (execution.pin_memory is None or bool(execution.pin_memory))
        self.epoch = 0
        refs, options = self._open(shards)
        # RVT's label selection filters every box of a recording: read them all at open (one read per segment;
        # of a streamed set, the boxes' byte ranges only: its tars are still fetched as ranks read them)
        rvt = windowing.mode == "labels" and windowing.labels != "all"
        fields = streamed_fields(self._opened, refs, BOXES_EXT) if rvt and self._opened is not None else None
        with SegmentReader() as reader:
            self.recordings, first_meta = index_recordings(refs, reader, boxes=rvt, where=shards, fields=fields)
        if not self.recordings:
            raise ValueError(f"{shards}: the event shard set holds no segments")
        self.sensor_size = tuple(int(v) for v in (sensor_size or options.get("sensor_size") or first_meta["sensor_size"]))
        # A streamed set: each rank plays whole shards' recordings (sampling.rank_recordings_by_shard).
        self._first_shards = [r.segments[0].shard for r in self.recordings] if self._opened is not None else None
        self.windows = [recording_windows(r, windowing, self.window_us, self.sensor_size) for r in self.recordings]
        if not any(len(w) for w in self.windows):
            raise ValueError(f"{shards}: no recording has labels to end windows at (window_mode='labels')")
        self.stage_stats = StageStats()
        self.stream_stats: dict = {}  # the last epoch's ShardStream statistics (streamed sets)
        self.stats = {"events": 0, "windows": 0, "padding_windows": 0, "failures": 0, "failed_keys": []}
        workers = min(8, batch_size, cpu_count()) if execution.num_workers is None else int(execution.num_workers)
        select = None
        if windowing.mode == "labels" and windowing.labels != "all":  # RVT's selection supervises with filtered boxes
            select = functools.partial(label_rules.supervising_boxes, selection=windowing.labels,
                                       sensor_size=self.sensor_size, train=windowing.train)
        self.precomputed = self._precomputed_field(options) if encoding.precomputed else None
        self._backend = EventBackend(self.recordings, self.windows, stats=self.stage_stats, pin=self.pin_memory,
                                     num_workers=workers, readahead=execution.readahead, prefetch=execution.prefetch,
                                     select=select, precomputed=self.precomputed)

    def _open(self, shards):
        """(segment refs, manifest options) of `shards`; a streamed (remote) set is kept in self._opened, its
        tars fetched per rank by a ShardStream while iterating (fastvid.store.stream)."""
        self._opened = None
        if not isinstance(shards, (str, os.PathLike)):
            return index_segments(shards), {}
        from fastvid.store.reader import open_files

        opened = open_files(shards, kind="events")
        if opened.kind != "events":
            raise ValueError(f"{opened.spec}: manifest kind is {opened.kind!r}, not an event shard set")
        self._opened = opened if opened.streamed else None
        return opened_segments(opened, fetch=False), (opened.manifest or {}).get("options", {})

    def _precomputed_field(self, options: dict):
        """(field, (C, H, W)) of a representation precomputed in the shards that equals what this loader computes
        (grid windows of the same duration, kind and bins; counts saturating where the stored uint8 ones do),
        else None."""
        from fastvid.events.precompute import parse_spec

        e, w = self.encoding, self.windowing
        cutoff = e.count_cutoff if e.count_cutoff is not None else (255 if e.dtype == "uint8" else None)
        if w.mode != "grid" or cutoff is None or e.representation not in ("stacked_histogram", "histogram"):
            return None
        for text in options.get("precompute") or []:
            spec = parse_spec(text)
            if (spec.kind, spec.window_us, spec.bins, spec.count_cutoff) == (
                    e.representation, self.window_us, e.bins if e.representation == "stacked_histogram" else 1,
                    min(255, int(cutoff))):
                return spec.ext, (spec.channels, self.sensor_size[1], self.sensor_size[0])
        return None

    # -- schedule ---------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def steps(self, rank: int | None = None) -> list[list[sampling.WindowItem]]:
        """The sampler's steps of `rank` (default: this loader's) for the current epoch."""
        rank = self.rank if rank is None else rank
        w = self.windowing
        if w.sampler == "random":
            return sampling.random_steps(self.windows, self.batch_size, w.seq_len, rank, self.world_size, self.seed,
                                         self.epoch, self._first_shards)
        return sampling.stream_steps([len(p) for p in self.windows], self.batch_size, rank, self.world_size, self.seed,
                                     self.epoch, w.shuffle, self._first_shards)

    def __len__(self) -> int:
        """Steps per epoch, the same on every rank."""
        return len(self.steps())

    @property
    def rank_recording_names(self) -> list[str]:
        """The recordings this rank plays this epoch, in order of first appearance."""
        ids = dict.fromkeys(item.recording for row in self.steps() for item in row if not item.padding)
        return [self.recordings[i].name for i in ids]

    # -- iteration --------------------------------------------------------------------------------

    def _sync(self) -> None:
        if self.execution.sync_timing and self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def _finish(self, batch: dict) -> dict:
        """On the device: the representation kernel over the batch's windows, then the output dtype."""
        from fastvid.events.representations import represent_batch

        self._sync()
        tic = time.perf_counter()
        e = self.encoding
        if "x" in batch:  # precomputed in the shards: uint8 counts already
            batch.pop("events")
            x = batch["x"].to(self.device, non_blocking=True)
            batch["x"] = x if e.dtype == "uint8" else x.to(torch.float16 if e.dtype == "float16" else torch.float32)
            batch["num_events"] = torch.full((self.batch_size,), -1, dtype=torch.int64)  # not stored with them
            self._sync()
            self.stage_stats.add("represent", time.perf_counter() - tic)
            return batch
        events = batch.pop("events")
        columns = events.values
        offsets = events.offsets.numpy()
        if not self.device.startswith("cuda"):
            columns = {k: v.numpy() for k, v in columns.items()}
        kw = {"bins": e.bins} if e.tau_us is None else {"bins": e.bins, "tau_us": e.tau_us}
        x = represent_batch(columns, offsets, e.representation, self.sensor_size, t0=batch["t0"].numpy(),
                            t1=batch["t1"].numpy(), device=self.device, count_clip=e.count_cutoff,
                            out_dtype="uint8" if e.dtype == "uint8" else "float32", **kw)
        if e.dtype == "float16":
            x = x.to(torch.float16)
        self._sync()
        self.stage_stats.add("represent", time.perf_counter() - tic)
        batch["x"] = x
        batch["num_events"] = torch.from_numpy(np.diff(offsets))
        return batch

    def __iter__(self):
        steps = self.steps()
        rebatch_stats = RebatchStats()
        limit = FailurePolicy(self.execution.failure_budget).limit(sum(len(row) for row in steps))
        stream = plan = None
        if self._opened is not None:  # fetch this rank's shards in the order it reads them, window by window
            plan = self._backend.plan_reads(steps)
            window = self.execution.stream_window or max(4, self.batch_size + 2)
            # A shard is held from its first read to its last (random sequences come back to it): a window
            # smaller than the most shards held at once would wait forever for room (+2: read-ahead's slack).
            if plan.peak_open > window:
                if self.execution.stream_window:
                    log.warning("fastvid: stream_window=%d is below the %d shards this rank's steps hold at once; "
                                "using %d", window, plan.peak_open, plan.peak_open + 2)
                window = plan.peak_open + 2
            stream = self._opened.stream(plan.order, window=window)
            self.stream_stats = stream.stats
        chunks = self._backend.epoch_chunks(self.epoch, steps, stream, plan)
        batches = run_batches(chunks, EpochBatches(self.batch_size, len(steps)),
                              FailureLimits(limit, where=str(self.shards)), device=self.device,
                              stage_stats=self.stage_stats, rebatch_stats=rebatch_stats, finish=self._finish,
                              device_fields={"events"})
        try:
            for index, batch in enumerate(batches):
                batch.pop("key")
                batch["step"] = index
                valid = int(batch["valid"].sum())
                self.stats["events"] += int(batch["num_events"].clamp(min=0).sum())
                self.stats["windows"] += valid
                self.stats["padding_windows"] += self.batch_size - valid
                yield batch
        finally:
            batches.close()
            if stream is not None:
                stream.close()
            self.stats["failures"] += rebatch_stats.failures
            self.stats["failed_keys"] += rebatch_stats.failed_keys
