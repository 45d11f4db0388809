"""Flip and zoom-in augmentation drawn once per sequence: a stream keeps its transform from the step
that resets it until its next reset, so the recurrent state sees one consistent geometry.

Each transform is an affine map of the input applied with one `grid_sample` for the whole batch; the
same map moves the boxes. Parameters come from (seed, epoch, rank, stream, step), so they repeat
exactly after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastvid.events.io import BOX_DTYPE


@dataclass
class Transform:
    flip: bool = False
    zoom: float = 1.0   # >= 1: magnification of a crop of 1/zoom of the sensor
    cx: float = 0.0     # crop centre in normalized [-1, 1] input coordinates
    cy: float = 0.0


def draw_transform(rng: np.random.Generator, flip_p: float, max_zoom: float, zoom_p: float = 0.5) -> Transform:
    t = Transform(flip=bool(rng.random() < flip_p))
    if max_zoom > 1.0 and rng.random() < zoom_p:
        t.zoom = float(rng.uniform(1.0, max_zoom))
        room = 1.0 - 1.0 / t.zoom
        t.cx, t.cy = float(rng.uniform(-room, room)), float(rng.uniform(-room, room))
    return t


def apply_to_tensor(x: torch.Tensor, transforms: list[Transform]) -> torch.Tensor:
    """Output pixel u (normalized) samples input u * s / zoom + centre, s = -1 on x when flipped."""
    if all(t.zoom == 1.0 and not t.flip for t in transforms):
        return x
    theta = torch.zeros(len(transforms), 2, 3, dtype=torch.float32)
    for i, t in enumerate(transforms):
        theta[i, 0, 0] = (-1.0 if t.flip else 1.0) / t.zoom
        theta[i, 1, 1] = 1.0 / t.zoom
        theta[i, 0, 2], theta[i, 1, 2] = t.cx, t.cy
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False).to(x.dtype)


def apply_to_boxes(boxes: np.ndarray, t: Transform, sensor_size) -> np.ndarray:
    """The boxes as they appear in the transformed window (possibly partly outside; clip later)."""
    if t.zoom == 1.0 and not t.flip:
        return boxes
    W, H = sensor_size
    out = boxes.copy()

    def to_out(px, size, centre, sign):
        u = 2.0 * px / size - 1.0
        return ((u - centre) * t.zoom * sign + 1.0) * size / 2.0

    sx = -1.0 if t.flip else 1.0
    xa, xb = to_out(boxes["x"], W, t.cx, sx), to_out(boxes["x"] + boxes["w"], W, t.cx, sx)
    ya, yb = to_out(boxes["y"], H, t.cy, 1.0), to_out(boxes["y"] + boxes["h"], H, t.cy, 1.0)
    out["x"], out["w"] = np.minimum(xa, xb), np.abs(xb - xa)
    out["y"], out["h"] = ya, yb - ya
    return out.astype(BOX_DTYPE)


class SequenceAugment:
    """Keeps one Transform per stream; a new one is drawn where `reset` is True."""

    def __init__(self, batch_size: int, sensor_size, flip_p: float = 0.5, max_zoom: float = 1.0, seed: int = 0,
                 rank: int = 0):
        self.sensor_size = tuple(sensor_size)
        self.flip_p, self.max_zoom = flip_p, max_zoom
        self.seed, self.rank = seed, rank
        self.epoch = 0
        self.transforms = [Transform() for _ in range(batch_size)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, x: torch.Tensor, labels: list, reset, step_index: int):
        for b, r in enumerate(reset.tolist()):
            if r:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, b, step_index])
                self.transforms[b] = draw_transform(rng, self.flip_p, self.max_zoom)
        x = apply_to_tensor(x, self.transforms)
        return x, [apply_to_boxes(bx, t, self.sensor_size) for bx, t in zip(labels, self.transforms)]
