"""Which label times of a recording get a window, and which of their boxes supervise it (pure, no I/O).

`all`: every distinct box timestamp, with its boxes as stored. `rvt-gen1` / `rvt-gen4`: the selection of
RVT's preprocessing (uzh-rpg/RVT scripts/genx/preprocess_dataset.py), which its published numbers were
trained and evaluated on:

1. boxes are cropped to the sensor (x, y, x + w, y + h clipped to [0, W - 1] x [0, H - 1]; boxes left
   with no width or height dropped); then on GEN1 Prophesee's size filter (diagonal >= 30 px and both
   sides >= 10 px), on 1 Mpx a conservative one (both sides >= 5 px) and only its pedestrian, two-wheeler
   and car classes (class_id <= 2); in training also boxes wider than 9/10 of the sensor (faulty labels);
2. label times are the distinct timestamps of the boxes left; the first one at or after 100 ms is the
   reference, and a later time is kept when its distance to the last kept one is a whole number of base
   intervals within 2 ms (GEN1: 250 ms; 1 Mpx: 3 or 6 label periods, about 100 ms, from the median
   label period of the recording, which must be 30 or 60 Hz);
3. each kept time is supervised by its filtered boxes.
"""

from __future__ import annotations

import numpy as np

from fastvid.events.io import crop_boxes

SELECTIONS = ("all", "rvt-gen1", "rvt-gen4")
ALIGN_US = 100_000        # RVT's align_t_ms: label times before 100 ms are not references
TOLERANCE_US = 2_000      # jitter accepted around the base interval
GEN1_BASE_US = 250_000    # GEN1 labels are kept on a 4 Hz grid


def rvt_filter(boxes: np.ndarray, sensor_size, dataset: str, train: bool) -> np.ndarray:
    """The boxes RVT keeps (step 1 of the module docstring)."""
    if dataset not in ("gen1", "gen4"):
        raise ValueError(f"RVT's label selection exists for gen1 and gen4, not {dataset!r}")
    if dataset == "gen4":
        boxes = boxes[boxes["class_id"] <= 2]
    boxes = crop_boxes(boxes, sensor_size)
    w, h = boxes["w"], boxes["h"]
    if dataset == "gen1":
        keep = (w ** 2 + h ** 2 >= 30 ** 2) & (w >= 10) & (h >= 10)
    else:
        keep = (w >= 5) & (h >= 5)
    boxes = boxes[keep]
    if train:
        boxes = boxes[boxes["w"] <= (9 * sensor_size[0]) // 10]
    return boxes


def base_interval_us(times: np.ndarray, dataset: str) -> int:
    if dataset == "gen1":
        return GEN1_BASE_US
    period = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    hz = int(np.rint(1e6 / period)) if period > 0 else 0
    if hz not in (30, 60):
        raise ValueError(f"1 Mpx labels must come at 30 or 60 Hz for RVT's selection, this recording's are at {hz} Hz")
    return int(6 * period if hz == 60 else 3 * period)


def rvt_label_times(boxes: np.ndarray, sensor_size, dataset: str, train: bool) -> np.ndarray:
    """The label times RVT trains and evaluates on (steps 1-2); empty when no box survives the filters."""
    times = np.unique(rvt_filter(boxes, sensor_size, dataset, train)["t"].astype(np.int64))
    first = int(np.searchsorted(times, ALIGN_US, "left"))
    if first >= len(times):
        return np.zeros(0, np.int64)
    base = base_interval_us(times, dataset)
    kept = [int(times[first])]
    for t in times[first + 1:].tolist():
        count = round((t - kept[-1]) / base)
        if count > 0 and abs(t - kept[-1] - count * base) <= TOLERANCE_US:
            kept.append(t)
    return np.asarray(kept, np.int64)


def label_times(boxes: np.ndarray, selection: str, sensor_size=None, train: bool = True) -> np.ndarray:
    """Label times of one recording's boxes under `selection` (one of SELECTIONS)."""
    if selection == "all":
        return np.unique(boxes["t"].astype(np.int64))
    if selection in ("rvt-gen1", "rvt-gen4"):
        if sensor_size is None:
            raise ValueError("RVT's label selection needs the sensor size")
        return rvt_label_times(boxes, sensor_size, selection[4:], train)
    raise ValueError(f"unknown label selection {selection!r}; choose one of {', '.join(SELECTIONS)}")


def supervising_boxes(boxes: np.ndarray, selection: str, sensor_size=None, train: bool = True) -> np.ndarray:
    """The boxes of one label instant that supervise its window under `selection`."""
    if selection == "all":
        return boxes
    return rvt_filter(boxes, sensor_size, selection[4:], train)
