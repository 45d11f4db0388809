"""Streaming event loader for recurrent detectors trained with truncated backpropagation through time.

As in HMNet / RVT training on GEN1, `batch_size` recordings are played in parallel, each in time
order, one fixed-duration window per step. Every step yields

* ``x``: (B, C, H, W) representations of the B windows, built on `device` with ONE
  `fastvid.events.represent_batch` call;
* ``boxes``: list of B BOX_DTYPE arrays, the boxes with t0 <= t < t1 of each window;
* ``reset``: (B,) bool, True where the stream starts a new recording at this step (the model must
  reset that stream's state);
* ``valid``: (B,) bool, False for padding windows (see below);
* ``recording`` (list of B names or None), ``recording_id`` (B,) index into ``loader.recordings``
  (-1 for padding), ``stream`` (B,), ``window`` (B,) index of the window in its recording (-1 for
  padding), ``t0``/``t1`` (B,) window bounds in us, ``num_events`` (B,), ``step``.

Scheduling policy (deterministic, computed identically on every rank, no communication):
recordings are shuffled with ``seed + epoch`` and dealt round-robin to ranks (disjoint sets);
on each rank a stream that finishes a recording is refilled at the next step with the next
recording of the rank's queue (greedy: the queue goes to whichever stream frees first). When
the queue is empty the stream is padded with empty windows marked ``valid = False`` (zero
representation, no boxes, ``reset = False``) until the longest stream of the longest rank is done,
so every rank yields the same number of steps (``len(loader)``) and DDP collectives stay in step.
Mask the loss with ``valid``.
"""

from __future__ import annotations

import collections
import heapq
import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastvid.events import io as evio
from fastvid.events.shard_codec import META_EXT
from fastvid.events.shard_read import SegmentReader, index_segments, shard_set_options
from fastvid.events.types import EVENT_DTYPE


@dataclass(frozen=True)
class Recording:
    name: str
    segments: tuple  # SegmentRef, in time order
    t_begin: int
    t_end: int


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


class _StreamCursor:
    """Plays one recording window by window; its next segments are read and decoded ahead in `pool`.

    Events stay as per-segment column chunks (no copies here): a window is a list of column slices,
    concatenated once per step for the whole batch.
    """

    def __init__(self, recording: Recording, window_us: int, reader: SegmentReader, num_windows: int,
                 pool=None, readahead: int = 2):
        self.recording = recording
        self.remaining = num_windows
        self.window_us = window_us
        self.reader = reader
        self.pool = pool
        self.readahead = max(1, readahead)
        self.pending: collections.deque = collections.deque()  # futures (or refs) in segment order
        self.next_segment = 0  # next segment to submit
        self.loaded_until = recording.t_begin  # events/boxes before this time are in the chunks
        self.chunks: collections.deque = collections.deque()  # column dicts, in time order
        self.boxes = evio.empty_boxes()
        self.window = 0
        self._submit()

    def _submit(self) -> None:
        segs = self.recording.segments
        while len(self.pending) < self.readahead and self.next_segment < len(segs):
            ref = segs[self.next_segment]
            self.pending.append(self.pool.submit(self.reader.read, ref, True) if self.pool else ref)
            self.next_segment += 1

    def _load_until(self, t: int) -> None:
        new_boxes = []
        while self.loaded_until < t and self.pending:
            item = self.pending.popleft()
            sample = item.result() if self.pool else self.reader.read(item, True)
            self._submit()
            if len(sample["events"]["t"]):
                self.chunks.append(sample["events"])
            new_boxes.append(sample["boxes"])
            self.loaded_until = int(sample["meta"]["t1"])
        if new_boxes:
            self.boxes = np.concatenate([self.boxes, *new_boxes])

    def close(self) -> None:
        for item in self.pending:
            if hasattr(item, "cancel"):
                item.cancel()
        self.pending.clear()
        self.chunks.clear()

    def next_window(self):
        """(list of column-dict pieces, boxes, t0, t1, window index) of the next window."""
        t0 = self.recording.t_begin + self.window * self.window_us
        t1 = t0 + self.window_us
        self._load_until(t1)
        # The chunks start at t0 (earlier windows consumed everything before): cut at t1.
        pieces = []
        while self.chunks:
            chunk = self.chunks[0]
            j = int(np.searchsorted(chunk["t"], t1, "left"))
            if j == len(chunk["t"]):
                pieces.append(self.chunks.popleft())
                continue
            if j:
                pieces.append({k: v[:j] for k, v in chunk.items()})
                self.chunks[0] = {k: v[j:] for k, v in chunk.items()}
            break
        k = int(np.searchsorted(self.boxes["t"], t1, "left"))
        boxes, self.boxes = self.boxes[:k], self.boxes[k:]
        index = self.window
        self.window += 1
        return pieces, boxes, t0, t1, index


class EventSequenceLoader:
    """Streams `batch_size` recordings of an event shard set in parallel, one window per step.

    shards: event shard set directory (manifest kind "events") or a list of tar paths.
    window_ms: duration of one step's window. representation/bins/tau_us: passed to
    `fastvid.events.represent_batch`. sensor_size: (W, H); default from the manifest / segments.
    shuffle: deal recordings to ranks/streams in a ``seed + epoch`` order (False: by name).
    prefetch: host batches prepared ahead by a background thread (0: none).
    num_workers / readahead: reader threads that read + inflate each stream's next `readahead`
    segments ahead of its windows (0 workers: read in place).
    `len(loader)` is the number of steps, equal on all ranks; `set_epoch(e)` reshuffles.
    """

    def __init__(self, shards, batch_size: int, window_ms: float = 50.0, representation: str = "stacked_histogram",
                 bins: int = 10, device: str = "cpu", rank: int = 0, world_size: int = 1, seed: int = 0,
                 sensor_size=None, *, shuffle: bool = True, tau_us: float | None = None, prefetch: int = 2,
                 num_workers: int | None = None, readahead: int = 2):
        from fastvid import _gpu

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size): got rank={rank}, world_size={world_size}")
        self.window_us = int(round(window_ms * 1000))
        if self.window_us <= 0:
            raise ValueError(f"window_ms must be positive, got {window_ms}")
        self.shards = shards
        self.batch_size = batch_size
        self.representation = representation
        self.bins = bins
        self.tau_us = tau_us
        self.device = _gpu.resolve_device(device)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle = shuffle
        self.prefetch = prefetch
        # Segment reads + inflate run in threads (zlib and numpy release the GIL).
        self.num_workers = min(4, batch_size) if num_workers is None else int(num_workers)
        self.readahead = readahead
        self.epoch = 0
        self.recordings = self._index(shards)
        if not self.recordings:
            raise ValueError(f"{shards}: the event shard set holds no segments")
        self.sensor_size = tuple(sensor_size) if sensor_size is not None else self._sensor_size()
        self.stats = {"events": 0, "windows": 0, "padding_windows": 0}

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
                # One small json read per recording: the first segment gives the clock and duration.
                first = json.loads(reader.read_fields(_only(segs[0], META_EXT))[META_EXT])
                duration = int(first["t1"]) - int(first["t0"])
                if duration <= 0:
                    raise ValueError(f"{segs[0].tar}: segment {segs[0].key!r} has t1 <= t0")
                recordings.append(Recording(first["recording"], tuple(segs), int(first["t0"]),
                                            int(first["t0"]) + duration * len(segs)))
                self._first_meta = first
        return recordings

    def _sensor_size(self) -> tuple[int, int]:
        size = shard_set_options(self.shards).get("sensor_size")
        if size:
            return tuple(int(v) for v in size)
        return tuple(int(v) for v in self._first_meta["sensor_size"])

    # -- schedule -----------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _lengths(self, rank: int) -> list[tuple[int, int]]:
        mine = rank_recordings(len(self.recordings), rank, self.world_size, self.seed, self.epoch, self.shuffle)
        return [(i, num_windows(self.recordings[i].t_begin, self.recordings[i].t_end, self.window_us)) for i in mine]

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

    def _steps(self, steps, queues, cursors, reader, pool, stop):
        B = self.batch_size
        for step in range(steps):
            if stop.is_set():
                return
            pieces, counts, boxes, names = [], np.zeros(B, np.int64), [], []
            t0s, t1s = np.zeros(B, np.int64), np.zeros(B, np.int64)
            window = np.full(B, -1, np.int64)
            rec_ids = np.full(B, -1, np.int64)
            reset, valid = np.zeros(B, bool), np.zeros(B, bool)
            for b in range(B):
                if queues[b] and queues[b][0].start == step:
                    slot = queues[b].pop(0)
                    cursors[b] = _StreamCursor(self.recordings[slot.recording], self.window_us, reader, slot.length,
                                               pool, self.readahead)
                    cursors[b].recording_id = slot.recording
                    reset[b] = True
                cur = cursors[b]
                if cur is None:
                    boxes.append(evio.empty_boxes())
                    names.append(None)
                    # Padding windows sit on an arbitrary empty span; the representation is all zeros.
                    t0s[b], t1s[b] = 0, self.window_us
                    continue
                window_pieces, window_boxes, t0, t1, index = cur.next_window()
                pieces.extend(window_pieces)
                counts[b] = sum(len(piece["t"]) for piece in window_pieces)
                boxes.append(window_boxes)
                names.append(cur.recording.name)
                t0s[b], t1s[b], window[b], valid[b] = t0, t1, index, True
                rec_ids[b] = cur.recording_id
                cur.remaining -= 1
                if cur.remaining == 0:
                    cur.close()
                    cursors[b] = None
            offsets = np.zeros(B + 1, np.int64)
            np.cumsum(counts, out=offsets[1:])
            # One copy per column for the whole batch, straight into the layout the kernels read.
            events = {name: np.concatenate([piece[name] for piece in pieces]) if pieces else _empty_columns()[name]
                      for name in _COLUMNS}
            yield {"events": events, "offsets": offsets, "t0": t0s, "t1": t1s, "boxes": boxes,
                   "recording": names, "recording_id": rec_ids, "window": window, "reset": reset, "valid": valid, "step": step}

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

    def __iter__(self):
        import torch

        from fastvid.events.representations import represent_batch

        kw = {"bins": self.bins}
        if self.tau_us is not None:
            kw["tau_us"] = self.tau_us
        for host in self._prefetched():
            x = represent_batch(host["events"], host["offsets"], self.representation, self.sensor_size,
                                t0=host["t0"], t1=host["t1"], device=self.device, **kw)
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
                "step": host["step"],
                "num_events": torch.from_numpy(np.diff(host["offsets"])),
            }


def _only(ref, ext):
    """A SegmentRef restricted to one field (to read just the json)."""
    from dataclasses import replace

    return replace(ref, fields={ext: ref.fields[ext]})
