"""Augmentation presets of the video recipes, as pure geometry: one crop box, flip and output size per clip.

Every preset is expressed as "take this (y0, x0, h, w) box of the source frame, optionally flip it
horizontally, resize it to (out_h, out_w), normalize with mean/std". A resize followed by a crop
(torchvision's video_resnet and S3D transforms) maps to the box that the crop covers in source
pixels, so both backends do a single region-of-interest resize per frame: DALI with `fn.resize`
(roi_start/roi_end, flipped ROI for the mirror), PyAV/torch with slicing + `F.interpolate`.
All frames of a clip share one box and one flip. Boxes are integers so both backends crop the same pixels.

Presets (sizes are parameters, these are the recipes' defaults):
- video_resnet (torchvision reference): resize to 128x171, random crop 112 (centre for eval), flip 0.5,
  Kinetics mean/std;
- s3d (torchvision S3D): resize to 256x256, random crop 224 (centre for eval), flip 0.5, Kinetics mean/std;
- tsm (PaddleVideo TSM): multi-scale crop, scales (1, .875, .75, .66) on the fixed-offset grid, resized
  to 224, flip 0.5; eval resizes the short side to 256 and centre-crops 224; ImageNet mean/std.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fastvid.video.boxes import sample_multiscale_boxes, size_pair

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    name: str
    crop_size: tuple[int, int]            # output (h, w)
    resize_size: tuple[int, int] | int    # (h, w) full-frame resize, or int = short side (tsm eval)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_crop: str = "resize_random_crop"  # or "multiscale"
    flip_prob: float = 0.5
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


PRESETS = {
    "video_resnet": Preset("video_resnet", (112, 112), (128, 171), KINETICS_MEAN, KINETICS_STD),
    "s3d": Preset("s3d", (224, 224), (256, 256), KINETICS_MEAN, KINETICS_STD),
    "tsm": Preset("tsm", (224, 224), 256, IMAGENET_MEAN, IMAGENET_STD, train_crop="multiscale"),
}


def get_preset(name: str, crop_size=None, resize_size=None) -> Preset:
    """The named preset, with crop/resize sizes overridden when given."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    if crop_size is not None:
        preset = replace(preset, crop_size=size_pair(crop_size))
    if resize_size is not None:
        # An int is a short side, as torchvision's Resize(int) (and --*-resize-size with one value) means.
        preset = replace(preset, resize_size=int(resize_size) if isinstance(resize_size, (int, np.integer)) else size_pair(resize_size))
    return preset


@dataclass(frozen=True)
class ClipGeometry:
    """Where one clip is cut from the source frame and how it is presented."""
    box: tuple[int, int, int, int]  # y0, x0, h, w in source pixels
    flip: bool
    out_size: tuple[int, int]       # (h, w) after the resize


def _resized_box(height: int, width: int, resize_hw: tuple[int, int], crop_y: int, crop_x: int, crop_hw: tuple[int, int]):
    """Box in source pixels covered by crop (crop_y, crop_x, crop_hw) of the frame resized to resize_hw."""
    sy, sx = height / resize_hw[0], width / resize_hw[1]
    y0, x0 = int(round(crop_y * sy)), int(round(crop_x * sx))
    h = max(1, min(int(round(crop_hw[0] * sy)), height - y0))
    w = max(1, min(int(round(crop_hw[1] * sx)), width - x0))
    return y0, x0, h, w


def _short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    if height <= width:
        return short, int(round(width * short / height))
    return int(round(height * short / width)), short


def clip_geometry(preset: Preset, height: int, width: int, train: bool, rng: np.random.Generator | None = None,
                  n: int = 1) -> list[ClipGeometry]:
    """Crop box, flip and output size of `n` clips of a `height` x `width` video (rng required for training)."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if train and rng is None:
        raise ValueError("clip_geometry(train=True) needs an rng")
    out = preset.crop_size
    if isinstance(preset.resize_size, int):  # short side resize (tsm eval)
        resize_hw = _short_side_size(height, width, preset.resize_size)
    else:
        resize_hw = preset.resize_size
    crop_hw = (min(out[0], resize_hw[0]), min(out[1], resize_hw[1]))
    clips = []
    if train and preset.train_crop == "multiscale":
        boxes = sample_multiscale_boxes(height, width, n, scales=preset.scales, max_distort=1, fixed_offsets=True,
                                        more_fixed_offsets=True, seed=rng, out_size=out)
        flips = rng.random(n) < preset.flip_prob
        return [ClipGeometry(tuple(int(v) for v in b), bool(f), out) for b, f in zip(boxes, flips)]
    for _ in range(n):
        if train:
            cy = int(rng.integers(0, resize_hw[0] - crop_hw[0] + 1))
            cx = int(rng.integers(0, resize_hw[1] - crop_hw[1] + 1))
            flip = bool(rng.random() < preset.flip_prob)
        else:
            # torchvision's center_crop rounds the offset.
            cy = int(round((resize_hw[0] - crop_hw[0]) / 2.0))
            cx = int(round((resize_hw[1] - crop_hw[1]) / 2.0))
            flip = False
        clips.append(ClipGeometry(_resized_box(height, width, resize_hw, cy, cx, crop_hw), flip, out))
    return clips


def normalization(preset: Preset) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) on the 0..255 scale, float32 (3,)."""
    return np.asarray(preset.mean, np.float32) * 255.0, np.asarray(preset.std, np.float32) * 255.0


def view_geometry(preset: Preset, height: int, width: int, num_views: int) -> list[ClipGeometry]:
    """Evaluation crops: 1 = the centre crop; 3 = the start, centre and end of the resized frame's long
    side (left/centre/right, or top/centre/bottom), centred on the short side (SlowFast's 3-crop test)."""
    if num_views == 1:
        return clip_geometry(preset, height, width, False)
    if num_views != 3:
        raise ValueError(f"spatial views must be 1 or 3, got {num_views}")
    out = preset.crop_size
    resize_hw = (_short_side_size(height, width, preset.resize_size) if isinstance(preset.resize_size, int)
                 else preset.resize_size)
    crop_hw = (min(out[0], resize_hw[0]), min(out[1], resize_hw[1]))
    free_y, free_x = resize_hw[0] - crop_hw[0], resize_hw[1] - crop_hw[1]
    views = []
    for pos in (0.0, 0.5, 1.0):
        if resize_hw[1] >= resize_hw[0]:  # landscape: move along x
            cy, cx = int(round(free_y / 2.0)), int(round(free_x * pos))
        else:
            cy, cx = int(round(free_y * pos)), int(round(free_x / 2.0))
        views.append(ClipGeometry(_resized_box(height, width, resize_hw, cy, cx, crop_hw), False, out))
    return views
