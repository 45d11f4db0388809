"""Synthetic videos with known content, for tests, benchmarks and the quickstart.

Two kinds:
- coded clips: every frame is one flat colour whose red channel encodes the frame index and
  whose green channel encodes a video id, so a decoded (even resized, cropped, lossy) frame
  tells which source frame it was (`frame_code`, `decode_frame_index`);
- motion clips: a shape moving in a class-specific direction over a textured background,
  a small learnable action-recognition problem (`motion_clip`).
Writing uses PyAV with real codecs (libx264, libvpx-vp9, mpeg4, ...).
"""

from __future__ import annotations

import fractions
import os
from pathlib import Path

import numpy as np

CODE_BASE = 16
CODE_STEP = 8
CODE_LEVELS = 28  # 16 + 8*27 = 232: stays inside video range (16..235) so codecs keep it


def frame_code(index: int) -> int:
    """Red level that marks frame `index` (cycles every CODE_LEVELS frames)."""
    return CODE_BASE + CODE_STEP * (index % CODE_LEVELS)


def decode_frame_index(red_level: float) -> int:
    """Inverse of frame_code for a decoded (possibly lossy) level: index modulo CODE_LEVELS."""
    return int(round((float(red_level) - CODE_BASE) / CODE_STEP)) % CODE_LEVELS


def coded_frames(num_frames: int, height: int, width: int, video_id: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: frame t is flat (frame_code(t), frame_code(video_id), 128)."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        frames[t] = (frame_code(t), frame_code(video_id), 128)
    return frames


_CONTAINER_FOR_CODEC = {"libx264": "mp4", "h264": "mp4", "libvpx-vp9": "webm", "vp9": "webm", "libvpx": "webm", "mpeg4": "mp4"}
_ENCODER_FOR_CODEC = {"h264": "libx264", "vp9": "libvpx-vp9", "vp8": "libvpx"}


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float | fractions.Fraction = 25, codec: str = "libx264",
                gop: int = 8, crf: int | None = None, container: str | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to `path` with PyAV. H and W must be even."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = _ENCODER_FOR_CODEC.get(codec, codec)
    from fastvid.video.transcode import exact_rate  # the production rule: synthetic clips get the rates shards get

    rate = exact_rate(fps)
    options = {}
    if encoder == "libx264":
        options = {"crf": str(18 if crf is None else crf), "preset": "veryfast", "tune": "zerolatency"}
    elif encoder in ("libvpx-vp9", "libvpx"):
        options = {"crf": str(20 if crf is None else crf), "b": "0", "deadline": "realtime", "cpu-used": "8"}
    with av.open(str(path), "w", format=container or _CONTAINER_FOR_CODEC.get(codec)) as out:
        stream = out.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_coded_video(path, num_frames: int = 24, height: int = 48, width: int = 64, fps=25, codec: str = "libx264",
                      video_id: int = 0, gop: int = 8) -> Path:
    return write_video(path, coded_frames(num_frames, height, width, video_id), fps=fps, codec=codec, gop=gop)


# Motion classes, chosen to survive the usual augmentations: a horizontal flip maps every class onto
# itself (no left/right pair), and moving shapes wrap around the frame edges so they never leave it.
# value: (dy, dx) direction of travel, "sideways" picks left or right per clip, None = size change / still.
MOTION_CLASSES = {
    "move_up": (-1.0, 0.0),
    "move_down": (1.0, 0.0),
    "move_sideways": "sideways",
    "grow": None,
    "shrink": None,
    "still": None,
}


def motion_clip(class_name: str, num_frames: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8 clip of a random-coloured square doing `class_name` over a noisy gradient."""
    if class_name not in MOTION_CLASSES:
        raise ValueError(f"unknown motion class {class_name!r}; choose from {', '.join(MOTION_CLASSES)}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg_colors = rng.uniform(30, 200, size=(2, 3)).astype(np.float32)
    mix = (xx / max(width - 1, 1) * rng.uniform(0.2, 1.0) + yy / max(height - 1, 1) * rng.uniform(0.0, 0.8))[..., None]
    mix = np.clip(mix, 0, 1)
    background = bg_colors[0] * (1 - mix) + bg_colors[1] * mix
    background += rng.normal(0, 6, size=background.shape).astype(np.float32)
    color = rng.uniform(0, 255, size=3).astype(np.float32)
    if np.abs(color - background.mean((0, 1))).max() < 60:  # keep the shape visible
        color = 255 - color
    size0 = rng.uniform(0.2, 0.3) * min(height, width)
    speed = rng.uniform(0.03, 0.05) * min(height, width)
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    direction = MOTION_CLASSES[class_name]
    if direction == "sideways":
        direction = (0.0, float(rng.choice([-1.0, 1.0])))
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        k = t - (num_frames - 1) / 2
        size = size0
        y, x = cy, cx
        if class_name in ("grow", "shrink"):
            rate = 1.5 / max(num_frames - 1, 1)  # the side changes by a factor of about 2.5 over the clip
            size = max(size0 * (1 + (rate if class_name == "grow" else -rate) * k), 3)
        elif direction is not None:
            y, x = cy + direction[0] * speed * k, cx + direction[1] * speed * k
        # Distance on a torus: a square leaving one edge re-enters at the opposite one.
        dy = np.abs((yy - y + height / 2) % height - height / 2)
        dx = np.abs((xx - x + width / 2) % width - width / 2)
        inside = (dy <= size / 2) & (dx <= size / 2)
        frame = np.where(inside[..., None], color, background)
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def make_motion_dataset(root: str | os.PathLike, *, videos_per_class: int = 20, classes=None, num_frames: int = 32,
                        height: int = 64, width: int = 80, fps: float = 25, codec: str = "libx264", seed: int = 0) -> list[Path]:
    """Write a Kinetics-layout dataset root/<class>/<class>_<i>.mp4 of motion clips; returns the paths."""
    rng = np.random.default_rng(seed)
    classes = list(classes or MOTION_CLASSES)
    ext = ".webm" if _CONTAINER_FOR_CODEC.get(codec) == "webm" else ".mp4"
    paths = []
    for name in classes:
        for i in range(videos_per_class):
            clip = motion_clip(name, num_frames, height, width, rng)
            paths.append(write_video(Path(root) / name / f"{name}_{i:04d}{ext}", clip, fps=fps, codec=codec))
    return paths
