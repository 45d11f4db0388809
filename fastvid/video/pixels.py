"""Clip pixels from decoded frames, in torch on any device: gather, crop, resize, flip, normalize.

Backends whose decoder hands back whole frames (PyNvVideoCodec, torchcodec, SPDL on the GPU; PyAV
when the clips of a video have different boxes) turn them into clips here, so every such backend
applies a `ClipPlan` the same way: each distinct frame index is decoded once (`distinct_frames`),
each clip takes its own box and flip (`clips_from_frames`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def distinct_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, T) frame indices -> (sorted distinct indices, (N, T) positions into them)."""
    unique, inverse = np.unique(np.asarray(frames).ravel(), return_inverse=True)
    return unique.astype(np.int64), inverse.reshape(np.shape(frames)).astype(np.int64)


def shared_geometry(plan) -> bool:
    """True when every clip of the plan has the same box and flip (one resize serves all of them)."""
    boxes, flips = np.asarray(plan.boxes), np.asarray(plan.flips)
    return bool((boxes == boxes[:1]).all() and (flips == flips[:1]).all())


def scaled_crop(box, out_size, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Box (y0, x0, h, w) -> resize the whole frame to (H', W'), then crop out_size at (y, x): same pixels, cheaper.

    For the torchvision presets this is literally their transform (resize to 128x171, crop 112); for
    other boxes the crop lands within a pixel of the box.
    """
    y0, x0, h, w = (int(v) for v in box)
    oh, ow = int(out_size[0]), int(out_size[1])
    sh, sw = max(oh, int(round(height * oh / h))), max(ow, int(round(width * ow / w)))
    y = min(int(round(y0 * oh / h)), sh - oh)
    x = min(int(round(x0 * ow / w)), sw - ow)
    return (sh, sw), (y, x)


def clips_from_frames(frames: torch.Tensor, positions: np.ndarray, boxes, flips, out_size) -> torch.Tensor:
    """(F, H, W, 3) uint8 frames -> (N, T, out_h, out_w, 3) uint8 clips.

    Clip i takes frames[positions[i]], cropped to boxes[i] (y0, x0, h, w in the frames' pixels),
    resized to out_size with antialiasing (as PyAV's swscale and DALI's resize do) and mirrored when
    flips[i]. Clips that share a box are resized in one call.
    """
    oh, ow = int(out_size[0]), int(out_size[1])
    n, t = np.shape(positions)
    out = torch.empty((n, t, oh, ow, 3), dtype=torch.uint8, device=frames.device)
    boxes = np.asarray(boxes).reshape(n, 4)
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        groups.setdefault(tuple(int(v) for v in boxes[i]), []).append(i)
    index = torch.as_tensor(np.asarray(positions), device=frames.device)
    for (y0, x0, h, w), members in groups.items():
        sel = frames[index[members].reshape(-1)]  # (len*T, H, W, 3)
        crop = sel[:, y0:y0 + h, x0:x0 + w].permute(0, 3, 1, 2).float()
        if (h, w) != (oh, ow):
            crop = F.interpolate(crop, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
        crop = crop.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(len(members), t, oh, ow, 3)
        for j, i in enumerate(members):
            out[i] = crop[j].flip(2) if bool(flips[i]) else crop[j]
    return out


def normalize_clips(clips: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, device, dtype, channels_last: bool) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) normalized on `device` (uint8 travels, floats are made there).

    `scale` = 1/std and `shift` = mean/std, (1, 3, 1, 1, 1) tensors already on `device` (made once, not per batch:
    a per-batch blocking host->device copy would synchronize the stream every step)."""
    clips = clips.to(device, non_blocking=True).permute(0, 4, 1, 2, 3)  # channels-last-3d view, no copy
    video = clips.float().mul_(scale).sub_(shift)
    if dtype != torch.float32:
        video = video.to(dtype)
    return video if channels_last else video.contiguous()


def normalization_tensors(preset, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1/std, mean/std) of a preset as (1, 3, 1, 1, 1) tensors on `device`, for normalize_clips."""
    from fastvid.video.presets import normalization

    mean, std = normalization(preset)
    scale = torch.from_numpy(1.0 / std).view(1, 3, 1, 1, 1).to(device)
    shift = torch.from_numpy(mean / std).view(1, 3, 1, 1, 1).to(device)
    return scale, shift
