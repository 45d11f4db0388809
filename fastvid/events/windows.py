"""Where the windows of one recording lie (pure logic, no I/O): the one window arithmetic every event
sampler (stream and random sequences, fastvid.events.sampling) and the loader use.

Every window is half-open on the recording clock: its events are those with start <= t < stop.
Two modes:

* ``grid``: consecutive windows of `window_us` from the recording's first segment start up to its
  real end (its last event or box), so no window lies wholly in the padding of the last segment;
  a window's boxes are those with start <= t < stop.
* ``labels``: one window per label time T, ending exactly at T and including it, as RVT builds its
  inputs: events with T - window_us <= t <= T (so start = T - window_us, stop = T + 1); its boxes
  are the labels of that instant (t == T). Windows of close labels overlap. Which label times get a
  window is the caller's choice (every distinct time, or RVT's selection: fastvid.events.labels).
  With `fill`, unlabelled windows of `window_us` tile the time before each label window back to the
  previous one (ending at T - window_us, T - 2 window_us, ...; the earliest may overlap the previous
  window), so a recurrent model sees every event between two label times, as RVT's sequences do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WINDOW_MODES = ("grid", "labels")


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one recording, in time order (starts and stops non-decreasing)."""

    start: np.ndarray  # (n,) int64, inclusive
    stop: np.ndarray  # (n,) int64, exclusive
    box_from: np.ndarray  # (n,) int64: a window's boxes are those with box_from <= t < stop
    label_t: np.ndarray  # (n,) int64: the label time a window ends at (labels mode), -1 on the grid

    def __len__(self) -> int:
        return len(self.start)


def grid_windows(t_begin: int, t_end: int, window_us: int) -> WindowPlan:
    """ceil((t_end - t_begin) / window_us) windows (at least one) tiling [t_begin, t_end)."""
    window_us = int(window_us)
    if window_us <= 0:
        raise ValueError(f"window duration must be positive, got {window_us} us")
    n = max(1, -(-(int(t_end) - int(t_begin)) // window_us))
    start = int(t_begin) + np.arange(n, dtype=np.int64) * window_us
    return WindowPlan(start, start + window_us, start, np.full(n, -1, np.int64))


def label_windows(label_times, window_us: int, fill: bool = False, t_begin: int | None = None) -> WindowPlan:
    """One window per distinct label time T: events in [T - window_us, T], boxes at T. With `fill`,
    unlabelled windows (label_t -1, no boxes) tile back from each label window to the previous label
    window (or to `t_begin` before the first label)."""
    window_us = int(window_us)
    if window_us <= 0:
        raise ValueError(f"window duration must be positive, got {window_us} us")
    t = np.unique(np.asarray(label_times, dtype=np.int64))
    if not fill or len(t) == 0:
        return WindowPlan(t - window_us, t + 1, t.copy(), t.copy())
    starts, stops, labels = [], [], []
    free_from = int(t[0]) - window_us if t_begin is None else int(t_begin)  # first instant no window covers yet
    for T in t.tolist():
        # Unlabelled windows [T - (j+1) w, T - j w), j = k..1, cover [free_from, T - w); the first one may
        # reach back over the previous window (windows keep one duration, and nothing is left unseen).
        k = max(0, -(-(T - window_us - free_from) // window_us))
        for j in range(k, 0, -1):
            starts.append(T - (j + 1) * window_us)
            stops.append(T - j * window_us)
            labels.append(-1)
        starts.append(T - window_us)
        stops.append(T + 1)
        labels.append(T)
        free_from = T + 1
    start, stop, label_t = (np.asarray(v, np.int64) for v in (starts, stops, labels))
    # An unlabelled window has no boxes: box_from = stop makes its box slice empty.
    return WindowPlan(start, stop, np.where(label_t >= 0, label_t, stop), label_t)


def make_windows(mode: str, t_begin: int, t_end: int, window_us: int, label_times=None, fill: bool = False) -> WindowPlan:
    if mode == "grid":
        return grid_windows(t_begin, t_end, window_us)
    if mode == "labels":
        return label_windows(np.zeros(0, np.int64) if label_times is None else label_times, window_us, fill, t_begin)
    raise ValueError(f"unknown window mode {mode!r}; choose one of {', '.join(WINDOW_MODES)}")


def segments_needed(plan: WindowPlan, t_begin: int, segment_us: int, num_segments: int) -> np.ndarray:
    """Sorted indices of the segments (segment k covers [t_begin + k*segment_us, ... + segment_us))
    that hold any part of any window; segments between windows are never read."""
    if len(plan) == 0 or num_segments == 0:
        return np.zeros(0, np.int64)
    first = np.clip((plan.start - int(t_begin)) // int(segment_us), 0, num_segments - 1)
    last = np.clip((plan.stop - 1 - int(t_begin)) // int(segment_us), 0, num_segments - 1)
    keep = np.zeros(num_segments, bool)
    for a, b in zip(first.tolist(), last.tolist()):
        keep[a:b + 1] = True
    return np.flatnonzero(keep)
