"""Windows of event data with their labels, as the detector trainer consumes them.

`detection_steps(loader)` is the one adapter over `fastvid.events.EventSequenceLoader` (whatever its
sampler: streamed recordings or RVT's random sequences): every step becomes a `DetectionStep`. In the
loader's label mode (the detector's default) a window ends at a label time T, holds the events of
[T - window, T] and is supervised by the labels of T (RVT's rule); unlabelled fill windows have none.
In grid mode a window is supervised by the boxes at the latest label time inside it.
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
