"""Cut many clip views out of one set of decoded frames, on whatever device the frames are on.

Multi-view evaluation (T clips x S crops per video) decodes each distinct frame of a video once,
moves those frames to the device once, and cuts every view there with a single gather, instead of
decoding or transferring a frame once per view that uses it.
"""

from __future__ import annotations

import torch


def cut_views(frames: torch.Tensor, index: torch.Tensor, crops: torch.Tensor, out_size: tuple[int, int],
              flips: torch.Tensor | None = None) -> torch.Tensor:
    """(F, H, W, C) frames -> (N, T, h, w, C) views; row n takes frames index[n] and the (h, w) window at crops[n] = (y, x).

    index: (N, T) int64 positions into `frames`; crops: (N, 2) int64; flips: (N,) bool mirrors a row horizontally.
    """
    h, w = int(out_size[0]), int(out_size[1])
    if frames.dim() != 4 or index.dim() != 2 or crops.shape != (index.shape[0], 2):
        raise ValueError(f"cut_views: need frames (F, H, W, C), index (N, T), crops (N, 2); got {tuple(frames.shape)}, "
                         f"{tuple(index.shape)}, {tuple(crops.shape)}")
    if len(index) and (int(crops[:, 0].max()) + h > frames.shape[1] or int(crops[:, 1].max()) + w > frames.shape[2]
                       or int(crops.min()) < 0):
        raise ValueError(f"cut_views: a {h}x{w} window at {crops.tolist()} leaves the {tuple(frames.shape[1:3])} frames")
    dev = frames.device
    index, crops = index.to(dev, non_blocking=True), crops.to(dev, non_blocking=True)
    ys = crops[:, 0, None] + torch.arange(h, device=dev)  # (N, h)
    cols = torch.arange(w, device=dev).expand(len(crops), w)
    if flips is not None:
        cols = torch.where(flips.to(dev, non_blocking=True)[:, None], w - 1 - cols, cols)
    xs = crops[:, 1, None] + cols  # (N, w)
    return frames[index[:, :, None, None], ys[:, None, :, None], xs[:, None, None, :]]
