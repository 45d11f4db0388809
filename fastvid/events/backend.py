"""The event backend of the pipeline: a rank's steps of windows (fastvid.events.sampling) -> one Chunk per
step (the B windows' events as Ragged rows, their bounds, boxes and flags) or a Failure.

Each stream keeps a cursor over the run of consecutive windows it plays (a whole recording for the
stream sampler, `seq_len` windows for random sequences); the segments those windows need — and no
others — are read and decoded ahead in reader threads (zstd, zlib and numpy release the GIL) and kept
as column chunks until the windows have passed them. A producer thread assembles each step's events
into one (page-locked, for a GPU) buffer per column, `prefetch` steps ahead of the consumer.

Failure policy (fastvid.pipeline.contract): a segment that cannot be read or decoded makes its window a
padding row (valid False, no events, no boxes) and yields one Failure naming the tar, the segment and the
error; the stream's remaining windows of that run are padding too, and the stream is reset at its next
run, so rows keep their place in the TBPTT batch.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from fastvid.events import io as evio
from fastvid.events.codec import decode_sample
from fastvid.events.reading import SegmentReader
from fastvid.events.types import EVENT_DTYPE
from fastvid.events.windows import WindowPlan, segments_needed
from fastvid.pipeline.backends import cpu_count
from fastvid.pipeline.contract import Chunk, Failure, Ragged
from fastvid.pipeline.device import host_buffer, host_zeros

COLUMNS = ("t", "x", "y", "p")


@dataclass(frozen=True)
class Recording:
    name: str
    segments: tuple  # SegmentRef, in time order
    t_begin: int     # start of the first segment
    t_end: int       # one past the last event or box (the segments' padded end for older shards)
    segment_us: int
    label_times: np.ndarray          # distinct box timestamps, sorted
    boxes: np.ndarray | None = None  # every box (BOX_DTYPE, by time) when read at open; else read with the segments

    def segment_t0(self, k: int) -> int:
        return self.t_begin + k * self.segment_us


def _read_segment(reader: SegmentReader, ref, stats) -> dict:
    """Read one segment's bytes, then decode them to columns, timing both (runs in reader threads)."""
    t = time.perf_counter()
    fields = reader.read_fields(ref)
    t_read = time.perf_counter()
    try:
        sample = decode_sample(fields, columns=True)
    except Exception:
        sample = reader.read(ref, True)  # raises the reader's one clear error naming the tar and sample
    stats.add("read", t_read - t)
    stats.add("decode", time.perf_counter() - t_read)
    return sample


def _sub_plan(plan: WindowPlan, first: int, last: int) -> WindowPlan:
    rows = slice(first, last + 1)
    return WindowPlan(plan.start[rows], plan.stop[rows], plan.box_from[rows], plan.label_t[rows])


class StreamCursor:
    """Plays windows `first..last` of one recording in order; the segments they need are read ahead in
    `pool`. Events stay as per-segment column chunks (no copies): a window is a list of column slices,
    concatenated once per step for the whole batch."""

    def __init__(self, recording: Recording, plan: WindowPlan, first: int, reader: SegmentReader, stats,
                 pool=None, readahead: int = 2, use=None):
        self.recording = recording
        self.use = use  # fastvid.store.stream.ShardUse of a streamed set: told after each segment read
        self.windows = plan
        self.first = first
        self.reader, self.stats, self.pool = reader, stats, pool
        self.readahead = max(1, readahead)
        self.todo = collections.deque(segments_needed(plan, recording.t_begin, recording.segment_us,
                                                      len(recording.segments)).tolist())
        self.pending: collections.deque = collections.deque()  # (segment index, future or ref), in order
        self.chunks: collections.deque = collections.deque()   # column dicts, in time order, none empty
        self.boxes = evio.empty_boxes()                       # boxes of the loaded segments not yet passed
        self.window = 0
        self._submit()

    def _submit(self) -> None:
        while len(self.pending) < self.readahead and self.todo:
            k = self.todo.popleft()
            ref = self.recording.segments[k]
            item = self.pool.submit(_read_segment, self.reader, ref, self.stats) if self.pool else ref
            self.pending.append((k, item))

    def _load_until(self, stop: int) -> None:
        """Load every needed segment that starts before `stop`."""
        new_boxes = []
        while self.pending and self.recording.segment_t0(self.pending[0][0]) < stop:
            k, item = self.pending.popleft()
            sample = item.result() if self.pool else _read_segment(self.reader, item, self.stats)
            if self.use is not None:
                self.use.used(self.recording.segments[k].shard)
            self._submit()
            if len(sample["events"]["t"]):
                self.chunks.append(sample["events"])
            boxes = sample["boxes"]
            new_boxes.append(boxes[np.argsort(boxes["t"], kind="stable")])
        if new_boxes:
            self.boxes = np.concatenate([self.boxes, *new_boxes])

    def close(self) -> None:
        for _, item in self.pending:
            if hasattr(item, "cancel"):
                item.cancel()
        if self.use is not None:  # segments this run will not read now: the stream may let their shards go
            for k in [k for k, _ in self.pending] + list(self.todo):
                self.use.used(self.recording.segments[k].shard)
        self.pending.clear()
        self.todo.clear()
        self.chunks.clear()

    def next_window(self):
        """(column-dict pieces, start, stop, label time, window index in the recording) of the next window."""
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
            pieces.append({k: v[:int(np.searchsorted(t, b, "left"))] for k, v in chunk.items()})
            break
        # Boxes before this window's first box time are never needed again (windows' box_from is non-decreasing).
        lo = int(np.searchsorted(self.boxes["t"], int(self.windows.box_from[w]), "left"))
        self.boxes = self.boxes[lo:]
        self.window += 1
        return pieces, a, b, int(self.windows.label_t[w]), self.first + w

    def window_boxes(self, b: int) -> np.ndarray:
        """Boxes of the window just played (stop b): box_from <= t < stop."""
        return self.boxes[:int(np.searchsorted(self.boxes["t"], b, "left"))]


def window_boxes(boxes: np.ndarray, plan: WindowPlan, w: int, select=None) -> np.ndarray:
    """The boxes of window w among `boxes` (sorted by time): box_from <= t < stop (labels mode: the labels of its
    instant); `select(boxes)` may filter them (RVT's label selection supervises with filtered boxes)."""
    lo, hi = np.searchsorted(boxes["t"], [int(plan.box_from[w]), int(plan.stop[w])], "left")
    boxes = boxes[lo:hi]
    return select(boxes) if select is not None and len(boxes) else boxes


@dataclass(frozen=True)
class ReadPlan:
    """A rank's shard reads over an epoch (EventBackend.plan_reads)."""

    order: list[int]            # shards in the order of their first read
    counts: dict[int, int]      # reads per shard (a shard is done after its last)
    peak_open: int              # the most shards between their first and last read at one step


def runs(steps) -> dict[tuple[int, int], int]:
    """(step, stream) where a run starts -> index of its last window (runs are consecutive windows of one
    recording on one stream, starting at a reset)."""
    out = {}
    open_runs: dict[int, tuple[int, int]] = {}  # stream -> (step, stream) of its open run
    for s, row in enumerate(steps):
        for item in row:
            if item.padding or item.reset:
                open_runs.pop(item.stream, None)
            if item.padding:
                continue
            if item.reset:
                open_runs[item.stream] = (s, item.stream)
            start = open_runs.get(item.stream)
            if start is not None:
                out[start] = item.window
    return out


class EventBackend:
    """epoch_chunks(epoch, steps) -> one Chunk per step (or Failures); see the module docstring."""

    def __init__(self, recordings: list[Recording], windows: list[WindowPlan], *, stats, pin: bool,
                 num_workers: int, readahead: int = 2, prefetch: int = 2, select=None, precomputed=None):
        self.recordings, self.windows = recordings, windows
        self.stats, self.pin = stats, pin
        self.num_workers, self.readahead, self.prefetch = num_workers, readahead, prefetch
        self.select = select
        # (field, (C, H, W)) of representations precomputed in the shards for exactly these grid windows:
        # steps then read them (uint8) instead of events (fastvid.events.precompute).
        self.precomputed = precomputed
        # (tar, segment key) -> its boxes, while its precomputed windows are read (by the step thread only)
        self._box_cache: dict = {}

    def epoch_chunks(self, epoch: int, steps, stream=None, reads: ReadPlan | None = None):
        """The steps' chunks; `stream` (a ShardStream over the set, in the order of `reads`, this epoch's
        `plan_reads(steps)`, made here when not given): read each tar from it."""
        stop = threading.Event()
        if self.prefetch <= 0:
            yield from self._produce(steps, stop, stream, reads)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        done = object()

        def produce():
            try:
                for item in self._produce(steps, stop, stream, reads):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            # Hand the GIL to the consumer now: otherwise it waits for this thread's next
                            # switch interval (5 ms) at every step, a convoy that halved CPU throughput.
                            time.sleep(0)
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

    def plan_reads(self, steps) -> ReadPlan:
        """The shards the steps read, in the order of their first read (by step, then stream), how many reads
        each gets (segments of the runs' windows; one per window when representations are read precomputed)
        and the most shards in use at once. A ShardStream fetches in this order within its window: ordered
        run by run instead, a recording spanning more shards than the window would hold the window while the
        other streams wait for theirs."""
        first: dict[int, tuple[int, int]] = {}
        last: dict[int, int] = {}
        counts = collections.Counter()

        def note(shard: int, when: tuple[int, int]) -> None:
            counts[shard] += 1
            if shard not in first or when < first[shard]:
                first[shard] = when
            last[shard] = max(last.get(shard, when[0]), when[0])

        for (s, b), end in runs(steps).items():
            item = steps[s][b]
            rec, plan = self.recordings[item.recording], self.windows[item.recording]
            sub = _sub_plan(plan, item.window, end)  # window i of the run plays at step s + i
            if self.precomputed is not None:
                for i, start in enumerate(sub.start.tolist()):
                    note(rec.segments[(int(start) - rec.t_begin) // rec.segment_us].shard, (s + i, b))
                continue
            for k in segments_needed(sub, rec.t_begin, rec.segment_us, len(rec.segments)).tolist():
                # the first window reaching into segment k (windows are in time order)
                i = int(np.searchsorted(sub.stop, rec.t_begin + k * rec.segment_us, "right"))
                note(rec.segments[k].shard, (s + min(i, len(sub) - 1), b))
        # shards in use at once: from the step of a shard's first read to that of its last
        change = collections.Counter()
        for shard, (s, _) in first.items():
            change[s] += 1
            change[last[shard] + 1] -= 1
        peak = open_now = 0
        for s in sorted(change):
            open_now += change[s]
            peak = max(peak, open_now)
        return ReadPlan(sorted(first, key=first.__getitem__), dict(counts), peak)

    def _produce(self, steps, stop: threading.Event, stream=None, reads: ReadPlan | None = None):
        from fastvid.store.stream import ShardUse

        ends = runs(steps)
        batch = len(steps[0]) if steps else 0
        cursors: list[StreamCursor | None] = [None] * batch
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="fastvid-event-read") if self.num_workers > 0 else None
        # Without reader threads this thread's progress is what frees the stream's window: it may fetch past it.
        with SegmentReader(stream, beyond_window=pool is None) as reader:
            use = None
            if stream is not None:
                use = ShardUse(stream, (reads or self.plan_reads(steps)).counts, on_done=reader.release)
            try:
                for s, row in enumerate(steps):
                    if stop.is_set():
                        return
                    if self.precomputed is not None:
                        yield from self._precomputed_step(row, reader, pool, use)
                    else:
                        yield from self._step(s, row, ends, cursors, reader, pool, use)
            finally:
                for cur in cursors:
                    if cur is not None:
                        cur.close()
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)

    def _step(self, s: int, row, ends, cursors, reader, pool, use=None):
        tic = time.perf_counter()
        rows = [_PaddingRow(item.stream) for item in row]
        for b, item in enumerate(row):
            if item.reset and cursors[b] is not None:
                cursors[b].close()
                cursors[b] = None
            if item.padding:
                continue
            if item.reset:
                rec, plan = self.recordings[item.recording], self.windows[item.recording]
                cursors[b] = StreamCursor(rec, _sub_plan(plan, item.window, ends[(s, b)]), item.window, reader, self.stats,
                                          pool, self.readahead, use)
            cur = cursors[b]
            if cur is None:  # the run broke on a bad segment: padding until the stream's next reset
                continue
            try:
                pieces, t0, t1, label, window = cur.next_window()
            except (ValueError, OSError) as exc:
                cur.close()
                cursors[b] = None
                yield Failure(f"{cur.recording.name}@{item.window}", str(exc))
                continue
            plan = self.windows[item.recording]
            if cur.recording.boxes is not None:  # read at open (RVT's selection)
                boxes = window_boxes(cur.recording.boxes, plan, window, self.select)
            else:
                boxes = window_boxes(cur.window_boxes(t1), plan, window, self.select)
            rows[b] = _Row(item, cur.recording.name, pieces, t0, t1, label, boxes)
        chunk = self._assemble(rows)
        self.stats.add("assemble", time.perf_counter() - tic)
        yield chunk

    def _precomputed_step(self, row, reader, pool, use=None):
        """One step from representations stored in the shards: each window's uint8 tensor read into the batch by
        the reader threads (decompression and the scatter release the GIL) while this thread finds the windows'
        boxes; the step's reads are all submitted before any bookkeeping so that it overlaps them."""
        tic = time.perf_counter()
        field, shape = self.precomputed
        x = host_zeros((len(row), *shape), torch.uint8, self.pin)
        target = x.numpy()
        wanted = [b for b, item in enumerate(row) if not item.padding]
        where = {}  # b -> (recording, segment index, window start, window stop)
        for b in wanted:
            item = row[b]
            rec, plan = self.recordings[item.recording], self.windows[item.recording]
            t0, t1 = int(plan.start[item.window]), int(plan.stop[item.window])
            where[b] = (rec, (t0 - rec.t_begin) // rec.segment_us, t0, t1)

        def read(b: int):
            rec, k, t0, t1 = where[b]
            try:
                reader.read_representation(rec.segments[k], field, [(t0 - rec.segment_t0(k)) // (t1 - t0)],
                                           out=target[b:b + 1], out_zeroed=True)
            except (ValueError, OSError) as exc:
                return Failure(f"{rec.name}@{row[b].window}", str(exc))
            return None

        def read_group(group):
            return [read(b) for b in group]

        # A window read is a few hundred microseconds of decode: one task per window would cost more in thread
        # hand-offs than it saves, so each of at most one task per core reads a contiguous share of the windows.
        tasks = max(1, min(len(wanted), self.num_workers, cpu_count()))
        reads = ([pool.submit(read_group, g.tolist()) for g in np.array_split(np.asarray(wanted, np.int64), tasks) if len(g)]
                 if pool is not None else None)
        rows = [_PaddingRow(item.stream) for item in row]
        failures = {}
        for b in wanted:
            item = row[b]
            rec, k, t0, t1 = where[b]
            try:
                boxes = rec.boxes if rec.boxes is not None else self._segment_boxes(reader, rec.segments[k], self._box_cache)
            except (ValueError, OSError) as exc:
                failures[b] = Failure(f"{rec.name}@{item.window}", str(exc))
                continue
            plan = self.windows[item.recording]
            rows[b] = _Row(item, rec.name, [], t0, t1, int(plan.label_t[item.window]),
                           window_boxes(boxes, plan, item.window, self.select))
        done = [got for f in reads for got in f.result()] if reads is not None else [read(b) for b in wanted]
        if use is not None:  # only now: the window and its segment's boxes are both read (a shard's last use frees it)
            for b in wanted:
                rec, k = where[b][:2]
                use.used(rec.segments[k].shard)
        for b, got in zip(wanted, done):
            bad = got or failures.get(b)
            if bad is not None:
                yield bad
                rows[b] = _PaddingRow(row[b].stream)
                target[b] = 0  # a window whose boxes failed may have been read: padding holds zeros
        chunk = self._assemble(rows)
        chunk.data["x"] = x
        self.stats.add("read", time.perf_counter() - tic)
        yield chunk

    @staticmethod
    def _segment_boxes(reader, ref, cache: dict) -> np.ndarray:
        """A segment's boxes by time, decoded once while its windows are read (`cache` holds the last few)."""
        key = (ref.tar, ref.key)
        boxes = cache.get(key)
        if boxes is None:
            boxes = reader.read_boxes(ref)
            while len(cache) >= 256:  # segments of the streams' current windows only
                cache.pop(next(iter(cache)))
            cache[key] = boxes
        return boxes

    def _assemble(self, rows) -> Chunk:
        counts = np.array([r.count for r in rows], np.int64)
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        pieces = [p for r in rows for p in r.pieces]
        columns = {}
        for name in COLUMNS:
            dtype = EVENT_DTYPE[name]
            buf = host_buffer(total, getattr(torch, dtype.name), self.pin)
            if pieces:
                np.concatenate([p[name] for p in pieces], out=buf.numpy())
            columns[name] = buf
        data = {
            "events": Ragged(columns, torch.from_numpy(offsets)),
            "t0": torch.tensor([r.t0 for r in rows], dtype=torch.int64),
            "t1": torch.tensor([r.t1 for r in rows], dtype=torch.int64),
            "label_t": torch.tensor([r.label_t for r in rows], dtype=torch.int64),
            "window": torch.tensor([r.window for r in rows], dtype=torch.int64),
            "recording_id": torch.tensor([r.recording_id for r in rows], dtype=torch.int64),
            "stream": torch.tensor([r.stream for r in rows], dtype=torch.int64),
            "reset": torch.tensor([r.reset for r in rows], dtype=torch.bool),
            "valid": torch.tensor([r.valid for r in rows], dtype=torch.bool),
            "boxes": [r.boxes for r in rows],
            "recording": [r.name for r in rows],
        }
        return Chunk(data, [r.key for r in rows])


class _Row:
    def __init__(self, item, name, pieces, t0, t1, label_t, boxes):
        self.stream, self.recording_id, self.reset, self.valid = item.stream, item.recording, item.reset, True
        self.name, self.pieces, self.t0, self.t1, self.label_t, self.boxes = name, pieces, t0, t1, label_t, boxes
        self.window = item.window
        self.count = sum(len(p["t"]) for p in pieces)
        self.key = f"{name}@{item.window}"


class _PaddingRow:
    """A row with no window: an arbitrary empty span, zero representation, no boxes, valid False."""

    def __init__(self, stream: int):
        self.stream, self.recording_id, self.reset, self.valid = stream, -1, False, False
        self.name, self.pieces, self.t0, self.t1, self.label_t = None, [], 0, 1, -1
        self.boxes = evio.empty_boxes()
        self.window, self.count, self.key = -1, 0, f"padding/{stream}"
