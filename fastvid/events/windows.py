"""Where the windows of one recording lie, for the sequence loader (pure logic, no I/O).

Every window is half-open on the recording clock: its events are those with start <= t < stop.
Two modes:

* ``grid``: consecutive windows of `window_us` from the recording's first segment start up to its
  real end (its last event or box), so no window lies wholly in the padding of the last segment;
  a window's boxes are those with start <= t < stop.
* ``labels``: one window per distinct label timestamp T, ending exactly at T and including it, as
  RVT builds its inputs: events with T - window_us <= t <= T (so start = T - window_us,
  stop = T + 1); its boxes are the labels of that instant (t == T). Windows of close labels overlap.
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


def label_windows(label_times, window_us: int) -> WindowPlan:
    """One window per distinct label time T: events in [T - window_us, T], boxes at T."""
    window_us = int(window_us)
    if window_us <= 0:
        raise ValueError(f"window duration must be positive, got {window_us} us")
    t = np.unique(np.asarray(label_times, dtype=np.int64))
    return WindowPlan(t - window_us, t + 1, t.copy(), t.copy())


def make_windows(mode: str, t_begin: int, t_end: int, window_us: int, label_times=None) -> WindowPlan:
    if mode == "grid":
        return grid_windows(t_begin, t_end, window_us)
    if mode == "labels":
        return label_windows(np.zeros(0, np.int64) if label_times is None else label_times, window_us)
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
