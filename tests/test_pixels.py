"""Per-clip geometry: each clip takes its own box and flip, and each distinct frame is decoded once."""

from __future__ import annotations

import numpy as np
import torch

from fastvid.video import pixels
from fastvid.video.dali_backend import crop_matrices
from fastvid.video.plan import ClipPlan


def test_distinct_frames_decode_each_index_once():
    unique, positions = pixels.distinct_frames(np.array([[0, 2, 4], [2, 4, 6]]))
    assert unique.tolist() == [0, 2, 4, 6]
    assert unique[positions].tolist() == [[0, 2, 4], [2, 4, 6]]


def test_each_clip_takes_its_own_box_and_flip():
    # frame f: value = 10 * f + column index (so crops, flips and frame order are all visible)
    h, w = 8, 12
    frames = torch.stack([(torch.arange(w).repeat(h, 1) + 10 * f).to(torch.uint8) for f in range(3)])
    frames = frames.unsqueeze(-1).expand(3, h, w, 3).contiguous()
    positions = np.array([[0, 1], [2, 1]])
    boxes = np.array([[0, 0, 4, 4], [2, 6, 4, 4]])
    clips = pixels.clips_from_frames(frames, positions, boxes, np.array([False, True]), (4, 4))
    assert clips.shape == (2, 2, 4, 4, 3)
    assert clips[0, 0, 0, :, 0].tolist() == [0, 1, 2, 3]          # frame 0, columns 0..3
    assert clips[0, 1, 3, :, 0].tolist() == [10, 11, 12, 13]      # frame 1
    assert clips[1, 0, 0, :, 0].tolist() == [29, 28, 27, 26]      # frame 2, columns 6..9 mirrored
    assert clips[1, 1, 0, :, 0].tolist() == [19, 18, 17, 16]


def test_dali_crop_matrices_map_output_pixels_onto_each_clips_box():
    """Destination (x, y) -> source = M @ (x, y, 1), continuous coordinates: pixel centres land inside the box."""
    plan = ClipPlan(np.array([[0, 1], [1, 2]]), np.array([[10, 20, 100, 100], [0, 0, 200, 300]]), np.array([False, True]), (50, 50), np.array([0, 1]))
    scaled = (120, 150)  # frames of 240x300 resized for the first box (100 px -> 50 px)
    m = crop_matrices(plan, np.zeros((2, 2), int), scaled, 240, 300, crop_at=(5, 10))
    assert m.shape == (4, 2, 3)
    centre = np.array([0.5, 0.5, 1.0])
    # clip 0 (first box): a pure shift by crop_at, no scaling
    assert np.allclose(m[0], [[1, 0, 10], [0, 1, 5]]) and np.allclose(m[1], m[0])
    # clip 1: box 300x200 source px = 150x100 scaled px onto 50x50, mirrored: x runs from the right edge
    assert np.allclose(m[2] @ centre, [150 - 0.5 * 3, 0.5 * 2])
    assert np.allclose(m[2] @ np.array([49.5, 49.5, 1.0]), [150 - 49.5 * 3, 49.5 * 2])
