"""Streaming event loader for recurrent detectors trained with truncated backpropagation through time.

As in HMNet / RVT training on GEN1, `batch_size` recordings are played in parallel, each in time
order, one window per step. Where the windows lie is the window mode (fastvid.events.windows):
``grid`` (fixed-duration windows from the recording start to its last event or box) or ``labels``
(one window ending at each label timestamp, inclusive, as RVT builds its inputs). Every step yields

* ``x``: (B, C, H, W) representations of the B windows, built on `device` with ONE
  `fastvid.events.represent_batch` call (float32, or float16 / uint8 with `dtype`);
* ``boxes``: list of B BOX_DTYPE arrays: the boxes with t0 <= t < t1 of each window (grid), or the
  labels of the window's label instant (labels);
* ``reset``: (B,) bool, True where the stream starts a new recording at this step (the model must
  reset that stream's state);
* ``valid``: (B,) bool, False for padding windows (see below);
* ``recording`` (list of B names or None), ``recording_id`` (B,) index into ``loader.recordings``
  (-1 for padding), ``stream`` (B,), ``window`` (B,) index of the window in its recording (-1 for
  padding), ``t0``/``t1`` (B,) window bounds in us (events t0 <= t < t1), ``label_t`` (B,) the
  label time of the window (labels mode; -1 otherwise), ``num_events`` (B,), ``step``.

Scheduling policy (deterministic, computed identically on every rank, no communication):
recordings are shuffled with ``seed + epoch`` and dealt round-robin to ranks (disjoint sets);
on each rank a stream that finishes a recording is refilled at the next step with the next
recording of the rank's queue (greedy: the queue goes to whichever stream frees first). When
the queue is empty the stream is padded with empty windows marked ``valid = False`` (zero
representation, no boxes, ``reset = False``) until the longest stream of the longest rank is done,
so every rank yields the same number of steps (``len(loader)``) and DDP collectives stay in step.
A recording plays only up to its real end, so the padding of its last shard segment never shows up
as a valid window. Mask the loss with ``valid``.
"""

from __future__ import annotations

import collections
import heapq
import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fastvid.events import io as evio
from fastvid.events.codec import BOXES_EXT, META_EXT, decode_boxes, decode_sample
from fastvid.events.reading import SegmentReader, index_segments, shard_set_options
from fastvid.events.types import EVENT_DTYPE
from fastvid.events.windows import WINDOW_MODES, WindowPlan, make_windows, segments_needed

OUTPUT_DTYPES = ("float32", "float16", "uint8")
_COUNT_KINDS = ("histogram", "stacked_histogram", "stacked_histogram_rvt")  # counts: uint8 can hold them


@dataclass(frozen=True)
class Recording:
    name: str
    segments: tuple  # SegmentRef, in time order
    t_begin: int  # start of the first segment
    t_end: int  # one past the last event or box (the segments' padded end for older shards)
    segment_us: int
    label_times: np.ndarray | None = None  # distinct box timestamps (read for window_mode="labels")

    def segment_t0(self, k: int) -> int:
        return self.t_begin + k * self.segment_us


@dataclass(frozen=True)
class StreamSlot:
    """Recording `recording` (index into the loader's recordings) plays on a stream from `start` for `length` steps."""

    recording: int
    start: int
    length: int


def num_windows(t_begin: int, t_end: int, window_us: int) -> int:
    return max(1, -(-(int(t_end) - int(t_begin)) // int(window_us)))


def rank_recordings(num_recordings: int, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Indices of the recordings of one rank: a seeded permutation dealt round-robin (disjoint over ranks)."""
    order = np.arange(num_recordings)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_recordings)
    return [int(i) for i in order[rank::world_size]]


def plan_streams(lengths: list[tuple[int, int]], batch_size: int) -> list[list[StreamSlot]]:
    """Greedy refill: each (recording, num_windows), in order, goes to the stream that becomes free first."""
    free = [(0, s) for s in range(batch_size)]
    heapq.heapify(free)
    plan: list[list[StreamSlot]] = [[] for _ in range(batch_size)]
    for rec, length in lengths:
        at, stream = heapq.heappop(free)
        plan[stream].append(StreamSlot(rec, at, length))
        heapq.heappush(free, (at + length, stream))
    return plan


def plan_steps(plan: list[list[StreamSlot]]) -> int:
    return max((slot.start + slot.length for stream in plan for slot in stream), default=0)


_COLUMNS = ("t", "x", "y", "p")


def _empty_columns() -> dict:
    return {name: np.zeros(0, EVENT_DTYPE[name]) for name in _COLUMNS}


class StageTimes:
    """Seconds spent per loader stage, summed over threads (read/decode run in parallel workers, so
    their sums can exceed wall time). Thread-safe; `snapshot()` gives a plain dict."""

    STAGES = ("read", "decode", "assemble", "wait", "transfer", "represent")

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._s = dict.fromkeys(self.STAGES, 0.0)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._s[stage] += seconds

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._s)


def _read_segment(reader: SegmentReader, ref, times: StageTimes) -> dict:
    """Read one segment's bytes, then decode them to columns, timing both (runs in reader threads)."""
    t = time.perf_counter()
    fields = reader.read_fields(ref)
    t_read = time.perf_counter()
    try:
        sample = decode_sample(fields, columns=True)
    except Exception:
        sample = reader.read(ref, True)  # raises the reader's one clear error naming the tar and sample
    times.add("read", t_read - t)
    times.add("decode", time.perf_counter() - t_read)
    return sample


class _StreamCursor:
    """Plays one recording window by window; the segments its windows need are read and decoded ahead
    in `pool` (segments no window touches are never read).

    Events stay as per-segment column chunks (no copies here): a window is a list of column slices,
    concatenated once per step for the whole batch.
    """

    def __init__(self, recording: Recording, windows: WindowPlan, reader: SegmentReader, times: StageTimes,
                 pool=None, readahead: int = 2):
        self.recording = recording
        self.windows = windows
        self.remaining = len(windows)
        self.reader = reader
        self.times = times
        self.pool = pool
        self.readahead = max(1, readahead)
        self.todo = collections.deque(segments_needed(windows, recording.t_begin, recording.segment_us,
                                                      len(recording.segments)).tolist())
        self.pending: collections.deque = collections.deque()  # (segment index, future or ref), in order
        self.chunks: collections.deque = collections.deque()  # column dicts, in time order, none empty
        self.boxes = evio.empty_boxes()
        self.window = 0
        self._submit()

    def _submit(self) -> None:
        while len(self.pending) < self.readahead and self.todo:
            k = self.todo.popleft()
            ref = self.recording.segments[k]
            item = self.pool.submit(_read_segment, self.reader, ref, self.times) if self.pool else ref
            self.pending.append((k, item))

    def _load_until(self, stop: int) -> None:
        """Load every needed segment that starts before `stop`."""
        new_boxes = []
        while self.pending and self.recording.segment_t0(self.pending[0][0]) < stop:
            _, item = self.pending.popleft()
            sample = item.result() if self.pool else _read_segment(self.reader, item, self.times)
            self._submit()
            if len(sample["events"]["t"]):
                self.chunks.append(sample["events"])
            new_boxes.append(sample["boxes"])
        if new_boxes:
            self.boxes = np.concatenate([self.boxes, *new_boxes])

    def close(self) -> None:
        for _, item in self.pending:
            if hasattr(item, "cancel"):
                item.cancel()
        self.pending.clear()
        self.todo.clear()
        self.chunks.clear()

    def next_window(self):
        """(list of column-dict pieces, boxes, start, stop, label time, window index) of the next window."""
        w = self.window
        a, b = int(self.windows.start[w]), int(self.windows.stop[w])
        self._load_until(b)
        # Windows start in order: events before this one's start are never needed again.
        while self.chunks:
            t = self.chunks[0]["t"]
            if t[-1] < a:
                self.chunks.popleft()
                continue
            if t[0] < a:
                j = int(np.searchsorted(t, a, "left"))
                self.chunks[0] = {k: v[j:] for k, v in self.chunks[0].items()}
            break
        # Cut at the stop without consuming: windows of close labels overlap.
        pieces = []
        for chunk in self.chunks:
            t = chunk["t"]
            if t[0] >= b:
                break
            if t[-1] < b:
                pieces.append(chunk)
                continue
            j = int(np.searchsorted(t, b, "left"))
            pieces.append({k: v[:j] for k, v in chunk.items()})
            break
        lo = int(np.searchsorted(self.boxes["t"], int(self.windows.box_from[w]), "left"))
        self.boxes = self.boxes[lo:]
        boxes = self.boxes[:int(np.searchsorted(self.boxes["t"], b, "left"))]
        self.window += 1
        return pieces, boxes, a, b, int(self.windows.label_t[w]), w


class EventSequenceLoader:
    """Streams `batch_size` recordings of an event shard set in parallel, one window per step.

    shards: event shard set directory (manifest kind "events") or a list of tar paths.
    window_ms: duration of one window. window_mode: "grid" (consecutive windows) or "labels" (one
    window ending at each label timestamp, inclusive; recordings without labels are skipped).
    representation/bins/tau_us: passed to `fastvid.events.represent_batch` with each window's bounds as
    t0/t1 (stacked_histogram's bins split the window; stacked_histogram_rvt's its first..last event, as
    RVT); count_cutoff caps the counts of both (RVT's count_cutoff). dtype: "float32", "float16", or
    "uint8" (counts of the histograms only, saturating at 255; RVT stores uint8).
    sensor_size: (W, H); default from the manifest / segments.
    shuffle: deal recordings to ranks/streams in a ``seed + epoch`` order (False: by name).
    prefetch: host batches prepared ahead by a background thread (0: none).
    num_workers / readahead: reader threads that read + inflate each stream's next `readahead`
    segments ahead of its windows (0 workers: read in place).
    pin_memory: assemble each batch's events in page-locked host memory and copy them to the GPU
    asynchronously (default: on for CUDA devices).
    sync_timing: synchronize the device around the transfer and representation stages so that
    `stage_times` attributes GPU time correctly (for benchmarks; it costs overlap).
    `len(loader)` is the number of steps, equal on all ranks; `set_epoch(e)` reshuffles.
    """

    def __init__(self, shards, batch_size: int, window_ms: float = 50.0, representation: str = "stacked_histogram",
                 bins: int = 10, device: str = "cpu", rank: int = 0, world_size: int = 1, seed: int = 0,
                 sensor_size=None, *, shuffle: bool = True, tau_us: float | None = None, prefetch: int = 2,
                 num_workers: int | None = None, readahead: int = 2, window_mode: str = "grid",
                 count_cutoff: float | None = None, dtype: str = "float32", pin_memory: bool | None = None,
                 sync_timing: bool = False):
        from fastvid import _gpu
        from fastvid.events.representations import REPRESENTATIONS

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size): got rank={rank}, world_size={world_size}")
        self.window_us = int(round(window_ms * 1000))
        if self.window_us <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode must be one of {', '.join(WINDOW_MODES)}, got {window_mode!r}")
        if representation not in REPRESENTATIONS:
            raise ValueError(f"unknown event representation {representation!r}; choose one of {sorted(REPRESENTATIONS)}")
        if dtype not in OUTPUT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")
        if dtype == "uint8" and representation not in _COUNT_KINDS:
            raise ValueError(f"dtype uint8 holds event counts only ({', '.join(_COUNT_KINDS)}), not {representation!r}")
        if count_cutoff is not None and not count_cutoff > 0:
            raise ValueError(f"count_cutoff must be > 0, got {count_cutoff}")
        self.shards = shards
        self.batch_size = batch_size
        self.representation = representation
        self.bins = bins
        self.tau_us = tau_us
        self.window_mode = window_mode
        self.count_cutoff = count_cutoff
        self.dtype = dtype
        self.device = _gpu.resolve_device(device)
        # Page-locked memory only helps copies to a GPU (and needs CUDA to allocate).
        self.pin_memory = self.device.startswith("cuda") and (pin_memory is None or bool(pin_memory))
        self.sync_timing = sync_timing
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle = shuffle
        self.prefetch = prefetch
        # Segment reads + decompression run in threads (zstd, zlib and numpy release the GIL); decode is
        # the host's heaviest stage, so use the cores (up to 8) when the batch has enough streams.
        import os

        self.num_workers = min(8, batch_size, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.readahead = readahead
        self.epoch = 0
        self.recordings = self._index(shards)
        if not self.recordings:
            raise ValueError(f"{shards}: the event shard set holds no segments")
        self.windows = [make_windows(window_mode, r.t_begin, r.t_end, self.window_us, r.label_times)
                        for r in self.recordings]
        self._playable = [i for i, w in enumerate(self.windows) if len(w)]
        if not self._playable:
            raise ValueError(f"{shards}: no recording has labels to end windows at (window_mode='labels')")
        self.sensor_size = tuple(sensor_size) if sensor_size is not None else self._sensor_size()
        self.stats = {"events": 0, "windows": 0, "padding_windows": 0}
        self.stage_times = StageTimes()

    # -- indexing ---------------------------------------------------------------------------

    def _index(self, shards) -> list[Recording]:
        refs = index_segments(shards)
        by_rec: dict[str, list] = {}
        for ref in refs:
            by_rec.setdefault(ref.recording, []).append(ref)
        recordings = []
        with SegmentReader() as reader:
            for name, segs in by_rec.items():
                indices = [s.segment for s in segs]
                if indices != list(range(indices[0], indices[0] + len(indices))):
                    raise ValueError(f"{shards}: recording {name!r} has missing segments (has {indices[:10]}...); "
                                     "reshard it or pass every shard of the set")
                # The first segment gives the clock, duration and end: from the per-shard metadata read at
                # open, or (a segment without it) one small json read.
                first = segs[0].meta if segs[0].meta and "t0" in segs[0].meta and "t1" in segs[0].meta else \
                    json.loads(reader.read_fields(segs[0], {META_EXT})[META_EXT])
                duration = int(first["t1"]) - int(first["t0"])
                if duration <= 0:
                    raise ValueError(f"{segs[0].tar}: segment {segs[0].key!r} has t1 <= t0")
                t_begin = int(first["t0"])
                padded_end = t_begin + duration * len(segs)
                t_end = min(int(first.get("recording_t_end", padded_end)), padded_end)
                labels = self._label_times(reader, segs) if self.window_mode == "labels" else None
                recordings.append(Recording(first["recording"], tuple(segs), t_begin, max(t_end, t_begin + 1),
                                            duration, labels))
                self._first_meta = first
        return recordings

    @staticmethod
    def _label_times(reader: SegmentReader, segs) -> np.ndarray:
        """Distinct box timestamps of a recording (one small read per segment)."""
        times = []
        for ref in segs:
            if BOXES_EXT not in ref.fields:
                continue
            if ref.meta is not None and "label_times" in ref.meta:  # from the per-shard metadata: no read
                times.append(np.asarray(ref.meta["label_times"], np.int64))
                continue
            try:
                times.append(decode_boxes(reader.read_fields(ref, {BOXES_EXT})[BOXES_EXT])["t"])
            except ValueError as exc:
                raise ValueError(f"{ref.tar}: cannot decode the boxes of segment {ref.key!r} ({exc})") from None
        return np.unique(np.concatenate(times)) if times else np.zeros(0, np.int64)

    def _sensor_size(self) -> tuple[int, int]:
        size = shard_set_options(self.shards).get("sensor_size")
        if size:
            return tuple(int(v) for v in size)
        return tuple(int(v) for v in self._first_meta["sensor_size"])

    # -- schedule -----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _lengths(self, rank: int) -> list[tuple[int, int]]:
        mine = rank_recordings(len(self._playable), rank, self.world_size, self.seed, self.epoch, self.shuffle)
        return [(self._playable[i], len(self.windows[self._playable[i]])) for i in mine]

    def plan(self, rank: int | None = None) -> list[list[StreamSlot]]:
        """The stream schedule of `rank` (default: this loader's) for the current epoch."""
        return plan_streams(self._lengths(self.rank if rank is None else rank), self.batch_size)

    def __len__(self) -> int:
        """Steps per epoch, the same on every rank (the longest rank's schedule)."""
        return max(plan_steps(self.plan(r)) for r in range(self.world_size))

    @property
    def rank_recording_names(self) -> list[str]:
        return [self.recordings[i].name for i, _ in self._lengths(self.rank)]

    # -- iteration ----------------------------------------------------------------------------

    def _host_batches(self, stop: threading.Event):
        """Yield per-step host data: concatenated events, offsets, window bounds, boxes, flags."""
        plan = self.plan()
        steps = len(self)
        B = self.batch_size
        queues = [list(stream) for stream in plan]
        cursors: list[_StreamCursor | None] = [None] * B
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="fastvid-event-read") if self.num_workers > 0 else None
        with SegmentReader() as reader:
            try:
                yield from self._steps(steps, queues, cursors, reader, pool, stop)
            finally:
                for cur in cursors:
                    if cur is not None:
                        cur.close()
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)

    def _concat(self, pieces: list, total: int) -> dict:
        """One copy per column for the whole batch, straight into the layout the kernels read (into
        page-locked memory when pinning, so the copy to the GPU is asynchronous and needs no staging)."""
        if not self.pin_memory:
            return {name: np.concatenate([piece[name] for piece in pieces]) if pieces else _empty_columns()[name]
                    for name in _COLUMNS}
        import torch

        out = {}
        for name in _COLUMNS:
            dtype = EVENT_DTYPE[name]
            buf = torch.empty(total, dtype=getattr(torch, dtype.name), pin_memory=True)
            if pieces:
                np.concatenate([piece[name] for piece in pieces], out=buf.numpy())
            out[name] = buf
        return out

    def _steps(self, steps, queues, cursors, reader, pool, stop):
        B = self.batch_size
        times = self.stage_times
        for step in range(steps):
            if stop.is_set():
                return
            tic = time.perf_counter()
            pieces, counts, boxes, names = [], np.zeros(B, np.int64), [], []
            t0s, t1s = np.zeros(B, np.int64), np.zeros(B, np.int64)
            window = np.full(B, -1, np.int64)
            label_t = np.full(B, -1, np.int64)
            rec_ids = np.full(B, -1, np.int64)
            reset, valid = np.zeros(B, bool), np.zeros(B, bool)
            for b in range(B):
                if queues[b] and queues[b][0].start == step:
                    slot = queues[b].pop(0)
                    cursors[b] = _StreamCursor(self.recordings[slot.recording], self.windows[slot.recording], reader,
                                               times, pool, self.readahead)
                    cursors[b].recording_id = slot.recording
                    reset[b] = True
                cur = cursors[b]
                if cur is None:
                    boxes.append(evio.empty_boxes())
                    names.append(None)
                    # Padding windows sit on an arbitrary empty span; the representation is all zeros.
                    t0s[b], t1s[b] = 0, self.window_us
                    continue
                window_pieces, window_boxes, t0, t1, label, index = cur.next_window()
                pieces.extend(window_pieces)
                counts[b] = sum(len(piece["t"]) for piece in window_pieces)
                boxes.append(window_boxes)
                names.append(cur.recording.name)
                t0s[b], t1s[b], window[b], label_t[b], valid[b] = t0, t1, index, label, True
                rec_ids[b] = cur.recording_id
                cur.remaining -= 1
                if cur.remaining == 0:
                    cur.close()
                    cursors[b] = None
            offsets = np.zeros(B + 1, np.int64)
            np.cumsum(counts, out=offsets[1:])
            events = self._concat(pieces, int(offsets[-1]))
            times.add("assemble", time.perf_counter() - tic)
            yield {"events": events, "offsets": offsets, "t0": t0s, "t1": t1s, "boxes": boxes, "recording": names,
                   "recording_id": rec_ids, "window": window, "label_t": label_t, "reset": reset, "valid": valid,
                   "step": step}

    def _prefetched(self):
        """Host batches produced by a background thread (file reads, inflate and numpy release the GIL)."""
        stop = threading.Event()
        if self.prefetch <= 0:
            yield from self._host_batches(stop)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        done = object()

        def produce():
            try:
                for item in self._host_batches(stop):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as exc:  # handed to the consumer, raised there
                q.put(exc)

        thread = threading.Thread(target=produce, name="fastvid-event-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    def _sync(self) -> None:
        if self.sync_timing and self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def _to_device(self, events: dict) -> dict:
        """Host columns -> device tensors (asynchronous from pinned memory); CPU keeps numpy."""
        if not self.device.startswith("cuda"):
            return events
        import torch

        return {name: (col if isinstance(col, torch.Tensor) else torch.from_numpy(col)).to(self.device, non_blocking=True)
                for name, col in events.items()}

    def _finish(self, x):
        """count_cutoff is applied by the kernel call; here only the output dtype."""
        import torch

        if self.dtype == "float16":
            return x.to(torch.float16)
        if self.dtype == "uint8":
            return x.clamp_(max=255).to(torch.uint8)
        return x

    def __iter__(self):
        import torch

        from fastvid.events.representations import represent_batch

        kw = {"bins": self.bins}
        if self.tau_us is not None:
            kw["tau_us"] = self.tau_us
        times = self.stage_times
        batches = self._prefetched()
        while True:
            tic = time.perf_counter()
            host = next(batches, None)
            if host is None:
                return
            t_got = time.perf_counter()
            times.add("wait", t_got - tic)
            events = self._to_device(host["events"])
            self._sync()
            t_moved = time.perf_counter()
            times.add("transfer", t_moved - t_got)
            x = represent_batch(events, host["offsets"], self.representation, self.sensor_size,
                                t0=host["t0"], t1=host["t1"], device=self.device, count_clip=self.count_cutoff, **kw)
            x = self._finish(x)
            self._sync()
            times.add("represent", time.perf_counter() - t_moved)
            self.stats["events"] += int(host["offsets"][-1])
            self.stats["windows"] += int(host["valid"].sum())
            self.stats["padding_windows"] += int((~host["valid"]).sum())
            yield {
                "x": x,
                "boxes": host["boxes"],
                "reset": torch.from_numpy(host["reset"]),
                "valid": torch.from_numpy(host["valid"]),
                "recording": host["recording"],
                "recording_id": torch.from_numpy(host["recording_id"]),
                "stream": torch.arange(self.batch_size),
                "window": torch.from_numpy(host["window"]),
                "t0": torch.from_numpy(host["t0"]),
                "t1": torch.from_numpy(host["t1"]),
                "label_t": torch.from_numpy(host["label_t"]),
                "step": host["step"],
                "num_events": torch.from_numpy(np.diff(host["offsets"])),
            }
