"""Numba CPU twin of kernels/crop.cu (crop + bilinear resize + flip + normalize).

Kept apart from crop.py so numba is imported (and the kernel loaded from its on-disk cache) only on
first use. Callers pass fixed dtypes (uint8 frames, int64 boxes, uint8 flips, float32 parameters and
output), so exactly one signature is ever compiled.
"""

import numba
import numpy as np


@numba.njit(inline="always")
def _source_index(dst, scale, in_size):
    """torch's area_pixel_compute_source_index (align_corners=False) plus the neighbour and weight."""
    src = scale * (np.float32(dst) + np.float32(0.5)) - np.float32(0.5)
    if src < np.float32(0.0):
        src = np.float32(0.0)
    lo = min(int(src), in_size - 1)
    hi = lo + 1 if lo < in_size - 1 else lo
    return lo, hi, np.float32(src - np.float32(lo))


@numba.njit(parallel=True, cache=True, fastmath=False)
def crop_resize_normalize_cpu(frames, boxes, flip, mean, inv_std, scale_in, out):
    """frames (N,T,H,W,C) u8, boxes (N,4) i64, flip (N,) u8, mean/inv_std (C,) f32 -> out (N,C,T,oh,ow) f32."""
    n_clips, n_frames = frames.shape[0], frames.shape[1]
    channels = frames.shape[4]
    out_h, out_w = out.shape[3], out.shape[4]
    one = np.float32(1.0)
    # Column sources and weights depend only on the clip (box and flip): tabulate them once per clip,
    # as flat offsets into a frame row, instead of recomputing them for every row of every frame.
    col0 = np.empty((n_clips, out_w), np.int64)
    col1 = np.empty((n_clips, out_w), np.int64)
    col_w1 = np.empty((n_clips, out_w), np.float32)
    for n in range(n_clips):
        x0, bw = boxes[n, 1], boxes[n, 3]
        scale_w = np.float32(bw) / np.float32(out_w)
        for x in range(out_w):
            xs = out_w - 1 - x if flip[n] else x  # the flip mirrors the resized output
            w0, w1, wl1 = _source_index(xs, scale_w, bw)
            col0[n, x] = (x0 + w0) * channels
            col1[n, x] = (x0 + w1) * channels
            col_w1[n, x] = wl1
    # One parallel task per output row of every frame of every clip: enough work to split on any batch.
    for row in numba.prange(n_clips * n_frames * out_h):
        y = row % out_h
        nt = row // out_h
        t = nt % n_frames
        n = nt // n_frames
        y0, bh = boxes[n, 0], boxes[n, 2]
        h0, h1, hl1 = _source_index(y, np.float32(bh) / np.float32(out_h), bh)
        hl0 = one - hl1
        row0 = frames[n, t, y0 + h0].ravel()
        row1 = frames[n, t, y0 + h1].ravel()
        for c in range(channels):
            m, s = mean[c], inv_std[c]
            out_row = out[n, c, t, y]
            for x in range(out_w):
                a = col0[n, x] + c
                b = col1[n, x] + c
                wl1 = col_w1[n, x]
                wl0 = one - wl1
                v = hl0 * (wl0 * np.float32(row0[a]) + wl1 * np.float32(row0[b])) + \
                    hl1 * (wl0 * np.float32(row1[a]) + wl1 * np.float32(row1[b]))
                out_row[x] = (v * scale_in - m) * s
