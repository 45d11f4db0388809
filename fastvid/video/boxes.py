"""Pure crop geometry for the TSM-style multi-scale crop: which boxes a clip may be cropped with.

This follows GroupMultiScaleCrop of TSM / PaddleVideo: the crop height and width are each one of
`scales x short side` (snapped to the output size when within 3 pixels), an (h, w) pair is allowed
when the two scale indices differ by at most `max_distort`, and the crop is placed on a fixed grid
of offsets in steps of (W - w) // 4 and (H - h) // 4 (4 corners + centre, plus 8 more positions with
`more_fixed_offsets`: 13 in total). Boxes are (y0, x0, h, w) in input pixels; no I/O, numpy only,
so the loader can draw boxes on the CPU and hand them to any crop operator or kernel.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SCALES = (1.0, 0.875, 0.75, 0.66)

# Offsets in units of (w_step, h_step), in TSM's order: corners and centre first ...
_BASIC_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2))
# ... then centre-left, centre-right, lower-centre, upper-centre and the four quarter points.
_MORE_OFFSETS = ((0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def size_pair(size) -> tuple[int, int]:
    """An int or (h, w) -> (h, w)."""
    if np.isscalar(size):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def crop_sizes(height: int, width: int, scales=DEFAULT_SCALES, out_size=224) -> tuple[list[int], list[int]]:
    """Candidate crop heights and widths: int(short side x scale), snapped to the output size within 3 px.

    A snapped size never exceeds the image (a 222-pixel image with out_size 224 keeps 222).
    """
    out_h, out_w = size_pair(out_size)
    base = min(height, width)
    sizes = [int(base * s) for s in scales]
    hs = [min(out_h if abs(s - out_h) < 3 else s, height) for s in sizes]
    ws = [min(out_w if abs(s - out_w) < 3 else s, width) for s in sizes]
    return hs, ws


def crop_pairs(height: int, width: int, scales=DEFAULT_SCALES, max_distort: int = 1, out_size=224) -> np.ndarray:
    """All allowed (h, w) crop sizes, shape (P, 2): scale indices i (height) and j (width) with |i - j| <= max_distort."""
    hs, ws = crop_sizes(height, width, scales, out_size)
    pairs = [(h, w) for i, h in enumerate(hs) for j, w in enumerate(ws) if abs(i - j) <= max_distort]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def offset_grid(more_fixed_offsets: bool = True) -> np.ndarray:
    """Fixed offsets in step units, shape (5 or 13, 2) as (x multiple, y multiple)."""
    grid = _BASIC_OFFSETS + (_MORE_OFFSETS if more_fixed_offsets else ())
    return np.asarray(grid, dtype=np.int64)


def fixed_offsets(height: int, width: int, crop_h: int, crop_w: int, more_fixed_offsets: bool = True) -> np.ndarray:
    """The fixed (y0, x0) positions for one crop size, shape (5 or 13, 2), duplicates kept as in TSM."""
    w_step = (width - crop_w) // 4
    h_step = (height - crop_h) // 4
    grid = offset_grid(more_fixed_offsets)
    return np.stack([grid[:, 1] * h_step, grid[:, 0] * w_step], axis=1)


def sample_multiscale_boxes(
    height: int,
    width: int,
    n: int,
    scales=DEFAULT_SCALES,
    max_distort: int = 1,
    fixed_offsets: bool = True,
    more_fixed_offsets: bool = True,
    seed=None,
    out_size=224,
) -> np.ndarray:
    """Draw `n` multi-scale crop boxes for frames of `height` x `width`, shape (n, 4) int64 (y0, x0, h, w).

    Each box picks an allowed (h, w) pair uniformly, then a position uniformly from the fixed grid
    (`fixed_offsets=True`, TSM's default) or uniformly from all positions where the crop fits.
    `seed` is an int, None (fresh entropy) or a numpy Generator; the same int gives the same boxes.
    `out_size` (int or (h, w)) is the size the crop will be resized to; it only matters for snapping.
    """
    height, width, n = int(height), int(width), int(n)
    if height <= 0 or width <= 0:
        raise ValueError(f"sample_multiscale_boxes: image size must be positive, got {height}x{width}")
    if n < 0:
        raise ValueError(f"sample_multiscale_boxes: n must be >= 0, got {n}")
    if not len(scales) or any(not (0 < s <= 1) for s in scales):
        raise ValueError(f"sample_multiscale_boxes: scales must be in (0, 1], got {tuple(scales)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    pairs = crop_pairs(height, width, scales, max_distort, out_size)
    if len(pairs) == 0:
        raise ValueError(f"sample_multiscale_boxes: no (h, w) pair satisfies max_distort={max_distort}")
    chosen = pairs[rng.integers(len(pairs), size=n)]
    crop_h, crop_w = chosen[:, 0], chosen[:, 1]
    if fixed_offsets:
        grid = offset_grid(more_fixed_offsets)
        pos = grid[rng.integers(len(grid), size=n)]
        y0 = pos[:, 1] * ((height - crop_h) // 4)
        x0 = pos[:, 0] * ((width - crop_w) // 4)
    else:
        # Uniform over every position where the crop fits (both ends inclusive, as random.randint).
        y0 = np.floor(rng.random(n) * (height - crop_h + 1)).astype(np.int64)
        x0 = np.floor(rng.random(n) * (width - crop_w + 1)).astype(np.int64)
    return np.stack([y0, x0, crop_h, crop_w], axis=1).astype(np.int64)


def center_boxes(height: int, width: int, n: int, crop_size) -> np.ndarray:
    """`n` identical centre crops (y0, x0, h, w) of `crop_size` (int or (h, w)), for evaluation."""
    ch, cw = size_pair(crop_size)
    ch, cw = min(ch, height), min(cw, width)
    box = [(height - ch) // 2, (width - cw) // 2, ch, cw]
    return np.tile(np.asarray(box, dtype=np.int64), (int(n), 1))
