"""A generated GEN1-format detection set: rectangles moving across a small sensor, as the events their
edges fire, and their boxes as labels (`*_td.dat` + `*_bbox.npy` in the Prophesee toolbox's dtype).

Class 0 ("car") rectangles are wide, class 1 ("pedestrian") tall; each moves at constant velocity and
bounces off the sensor borders. A pixel fires when an edge sweeps over it: ON events on the leading
edges, OFF on the trailing ones, plus uniform background noise.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastvid.events.io import write_dat
from fastvid.events.types import EVENT_DTYPE

# Prophesee's box layout in *_bbox.npy files.
TOOLBOX_BOX_DTYPE = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"),
                              ("class_id", "<u1"), ("class_confidence", "<f4"), ("track_id", "<u4")])
CLASSES = ("car", "pedestrian")


def _object(rng, sensor_size):
    W, H = sensor_size
    cls = int(rng.integers(0, 2))
    long_side, short_side = rng.uniform(0.26, 0.36) * H, rng.uniform(0.15, 0.2) * H
    w, h = (long_side, short_side) if cls == 0 else (short_side, long_side)
    pos = np.array([rng.uniform(0, W - w), rng.uniform(0, H - h)])
    speed = rng.uniform(0.6, 1.2) * H  # px/s: crosses the sensor in about a second
    angle = rng.uniform(0, 2 * np.pi)
    return {"cls": cls, "wh": np.array([w, h]), "pos": pos, "vel": speed * np.array([np.cos(angle), np.sin(angle)])}


def simulate(duration_us: int, sensor_size=(64, 48), num_objects: int = 2, seed: int = 0, tick_us: int = 2000,
             edge_rate: float = 0.6, noise_per_s: float = 2000.0, label_period_us: int = 50_000):
    """(events EVENT_DTYPE sorted by t, boxes TOOLBOX_BOX_DTYPE) of one recording."""
    rng = np.random.default_rng(seed)
    W, H = sensor_size
    objs = [_object(rng, sensor_size) for _ in range(num_objects)]
    chunks, boxes = [], []
    label_times = set(range(label_period_us - tick_us, duration_us, label_period_us))  # just before each window end
    for t in range(0, duration_us, tick_us):
        for k, o in enumerate(objs):
            o["pos"] = o["pos"] + o["vel"] * tick_us * 1e-6
            for d, size in ((0, W), (1, H)):
                if o["pos"][d] < 0 or o["pos"][d] + o["wh"][d] > size:
                    o["vel"][d] = -o["vel"][d]
                    o["pos"][d] = np.clip(o["pos"][d], 0, size - o["wh"][d])
            x0, y0 = o["pos"]
            w, h = o["wh"]
            # Points along each edge; polarity by whether the edge leads (ON) or trails (OFF) the motion.
            for (ax, ay, bx, by, nx, ny) in ((x0, y0, x0 + w, y0, 0, -1), (x0, y0 + h, x0 + w, y0 + h, 0, 1),
                                             (x0, y0, x0, y0 + h, -1, 0), (x0 + w, y0, x0 + w, y0 + h, 1, 0)):
                along = o["vel"][0] * nx + o["vel"][1] * ny
                n = rng.poisson(edge_rate * max(abs(bx - ax), abs(by - ay)) * min(1.0, abs(along) * tick_us * 1e-6 * 2))
                if n == 0:
                    continue
                u = rng.uniform(0, 1, n)
                ev = np.zeros(n, EVENT_DTYPE)
                ev["t"] = t + rng.integers(0, tick_us, n)
                ev["x"] = np.clip(ax + u * (bx - ax), 0, W - 1)
                ev["y"] = np.clip(ay + u * (by - ay), 0, H - 1)
                ev["p"] = 1 if along > 0 else 0
                chunks.append(ev)
            if t in label_times:
                b = np.zeros(1, TOOLBOX_BOX_DTYPE)
                b["ts"], b["x"], b["y"], b["w"], b["h"] = t, x0, y0, w, h
                b["class_id"], b["class_confidence"], b["track_id"] = o["cls"], 1.0, k
                boxes.append(b)
    n_noise = rng.poisson(noise_per_s * duration_us * 1e-6)
    noise = np.zeros(n_noise, EVENT_DTYPE)
    noise["t"], noise["x"], noise["y"], noise["p"] = (rng.integers(0, duration_us, n_noise), rng.integers(0, W, n_noise),
                                                      rng.integers(0, H, n_noise), rng.integers(0, 2, n_noise))
    events = np.concatenate(chunks + [noise])
    events = events[np.argsort(events["t"], kind="stable")]
    return events, (np.concatenate(boxes) if boxes else np.zeros(0, TOOLBOX_BOX_DTYPE))


def make_moving_boxes_gen1(root: str | os.PathLike, num_recordings: int, duration_us: int = 2_000_000,
                           sensor_size=(64, 48), num_objects: int = 2, seed: int = 0) -> Path:
    """Write `num_recordings` recordings `rec_NNN_td.dat` / `rec_NNN_bbox.npy` under `root`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num_recordings):
        events, boxes = simulate(duration_us, sensor_size, num_objects, seed=seed * 1000 + i)
        write_dat(root / f"rec_{i:03d}_td.dat", events, sensor_size=sensor_size)
        np.save(root / f"rec_{i:03d}_bbox.npy", boxes)
    return root
