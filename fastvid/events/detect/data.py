"""Windows of event data with their labels, as the detector trainer consumes them.

`detection_steps(loader)` is the one adapter over `fastvid.events.EventSequenceLoader` (grid windows,
the boxes of each window): every step becomes a `DetectionStep` whose labels are the boxes at the
latest label time inside the window (RVT's rule: a window is supervised by the labels at its end).
A label-aligned loader mode plugs in here. `RandomSequenceLoader` draws RVT-style random sequences of
consecutive windows that contain labels, and yields the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastvid.events.io import BOX_DTYPE


@dataclass
class DetectionStep:
    x: torch.Tensor            # (B, C, H, W) window representations
    labels: list               # B BOX_DTYPE arrays: the boxes at `label_t` (empty where unlabelled)
    label_t: np.ndarray        # (B,) int64 time of those labels, -1 where the window has none
    window_boxes: list         # B BOX_DTYPE arrays: every box of the window (evaluation ground truth)
    reset: torch.Tensor        # (B,) bool: start of a recording / sequence: reset that stream's state
    valid: torch.Tensor        # (B,) bool: False for padding windows
    recording: list            # B names (None for padding)


def window_labels(boxes: np.ndarray) -> tuple[np.ndarray, int]:
    """(boxes at the window's latest label time, that time) or (empty, -1)."""
    if len(boxes) == 0:
        return np.zeros(0, BOX_DTYPE), -1
    t = int(boxes["t"].max())
    return boxes[boxes["t"] == t], t


def detection_steps(loader):
    """DetectionSteps from an EventSequenceLoader (the one place that knows its step layout)."""
    for step in loader:
        labels, times = zip(*(window_labels(b) for b in step["boxes"])) if step["boxes"] else ((), ())
        yield DetectionStep(x=step["x"], labels=list(labels), label_t=np.asarray(times, np.int64),
                            window_boxes=list(step["boxes"]), reset=step["reset"].bool(), valid=step["valid"].bool(),
                            recording=list(step["recording"]))


def targets_from_boxes(boxes: np.ndarray, sensor_size, min_side: float = 1.0) -> torch.Tensor:
    """BOX_DTYPE labels -> (G, 5) [class, cx, cy, w, h], clipped to the sensor; slivers dropped."""
    W, H = sensor_size
    x0 = np.clip(boxes["x"], 0, W)
    y0 = np.clip(boxes["y"], 0, H)
    x1 = np.clip(boxes["x"] + boxes["w"], 0, W)
    y1 = np.clip(boxes["y"] + boxes["h"], 0, H)
    keep = ((x1 - x0) >= min_side) & ((y1 - y0) >= min_side)
    t = np.stack([boxes["class_id"].astype(np.float32), (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], 1)[keep]
    return torch.from_numpy(np.ascontiguousarray(t, np.float32)).reshape(-1, 5)


class RandomSequenceLoader:
    """RVT-style random sequences: each batch row plays `seq_len` consecutive windows of a recording,
    starting at a random window such that the sequence's last window holds labels; the stream's state
    is reset at every sequence start. Sequences per epoch: one per labelled window / seq_len (at least
    one batch), dealt to ranks disjointly by a (seed, epoch) permutation.

    Built on an EventSequenceLoader's index and reader (its recordings, sensor size, windows and
    representation settings); events of a sequence are read from its segments once.
    """

    def __init__(self, base, seq_len: int):
        from fastvid.events.reading import SegmentReader

        self.base = base
        self.seq_len = int(seq_len)
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.epoch = 0
        self._reader = SegmentReader()
        self._candidates = self._label_windows()
        if not self._candidates:
            raise ValueError(f"{base.shards}: no labelled windows to draw random sequences from")

    def _label_windows(self) -> list[tuple[int, int]]:
        """(recording index, window index) of every window holding a label, windows[seq_len-1:] only."""
        from fastvid.events.codec import BOXES_EXT, decode_boxes

        out = []
        w_us = self.base.window_us
        for r, rec in enumerate(self.base.recordings):
            times = []
            for ref in rec.segments:
                if BOXES_EXT in ref.fields:
                    fields = self._reader.read_fields(_only(ref, BOXES_EXT))
                    times.append(decode_boxes(fields[BOXES_EXT])["t"])
            windows = np.unique((np.concatenate(times) - rec.t_begin) // w_us) if times else np.zeros(0, np.int64)
            out.extend((r, int(w)) for w in windows if w >= self.seq_len - 1)
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _mine(self) -> list[tuple[int, int]]:
        b = self.base
        n_seq = max(b.batch_size * b.world_size, len(self._candidates) // self.seq_len)
        n_seq -= n_seq % (b.batch_size * b.world_size)
        rng = np.random.default_rng([b.seed, self.epoch, 7])
        picks = rng.choice(len(self._candidates), n_seq, replace=n_seq > len(self._candidates))
        return [self._candidates[i] for i in picks[b.rank::b.world_size]]

    def __len__(self) -> int:
        return len(self._mine()) // self.base.batch_size * self.seq_len

    def _events(self, rec, t0: int, t1: int) -> dict:
        """Columns of the recording's events in [t0, t1), from the segments that overlap it."""
        parts = []
        seg_us = (rec.t_end - rec.t_begin) // len(rec.segments)  # segments tile the recording evenly
        first, last = (t0 - rec.t_begin) // seg_us, (t1 - 1 - rec.t_begin) // seg_us
        for ref in rec.segments[max(0, first):last + 1]:
            sample = self._reader.read(ref, True)
            ev = sample["events"]
            a, z = np.searchsorted(ev["t"], [t0, t1])
            parts.append((ev, a, z, sample["boxes"]))
        cols = {k: np.concatenate([p[0][k][p[1]:p[2]] for p in parts]) for k in ("t", "x", "y", "p")}
        boxes = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, BOX_DTYPE)
        return cols, boxes[(boxes["t"] >= t0) & (boxes["t"] < t1)]

    def __iter__(self):
        from fastvid.events.representations import represent_batch

        b = self.base
        mine = self._mine()
        B, L, w_us = b.batch_size, self.seq_len, b.window_us
        kw = {"bins": b.bins} if b.tau_us is None else {"bins": b.bins, "tau_us": b.tau_us}
        for first in range(0, len(mine) - B + 1, B):
            seqs = []
            for r, last in mine[first:first + B]:
                rec = b.recordings[r]
                t_start = rec.t_begin + (last - L + 1) * w_us
                seqs.append((rec, t_start, *self._events(rec, t_start, t_start + L * w_us)))
            for i in range(L):
                cols, counts, boxes = {k: [] for k in ("t", "x", "y", "p")}, [], []
                t0s = np.array([s[1] + i * w_us for s in seqs], np.int64)
                for (rec, _, ev, bx), t0 in zip(seqs, t0s):
                    a, z = np.searchsorted(ev["t"], [t0, t0 + w_us])
                    for k in cols:
                        cols[k].append(ev[k][a:z])
                    counts.append(z - a)
                    boxes.append(bx[(bx["t"] >= t0) & (bx["t"] < t0 + w_us)])
                offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                x = represent_batch({k: np.concatenate(v) for k, v in cols.items()}, offsets, b.representation,
                                    b.sensor_size, t0=t0s, t1=t0s + w_us, device=b.device, **kw)
                labels, times = zip(*(window_labels(bx) for bx in boxes))
                yield DetectionStep(x=x, labels=list(labels), label_t=np.asarray(times, np.int64), window_boxes=boxes,
                                    reset=torch.full((B,), i == 0), valid=torch.ones(B, dtype=torch.bool),
                                    recording=[s[0].name for s in seqs])

    def close(self) -> None:
        self._reader.close()


def _only(ref, ext):
    from dataclasses import replace

    return replace(ref, fields={ext: ref.fields[ext]})
