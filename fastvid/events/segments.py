"""Cutting a recording's time line into fixed-duration segments (pure logic, no I/O).

Segments are half-open, [t0, t1), aligned to multiples of the segment duration on the
recording's own clock (so segment k of every recording covers the same time of day offset),
and contiguous: an event or box with time t belongs to exactly one segment,
``floor(t / duration)`` relative to the first one. Empty segments inside a recording are kept,
so consecutive segments are consecutive in time (the sequence loader relies on that).
"""

from __future__ import annotations

import numpy as np


def segment_edges(t_first: int, t_last: int, duration_us: int) -> np.ndarray:
    """Edges e[0] < e[1] < ... < e[n] of the n segments covering [t_first, t_last] (inclusive).

    Segment k is [e[k], e[k+1]); e[0] = floor(t_first / d) * d, e[n] > t_last.
    """
    duration_us = int(duration_us)
    if duration_us <= 0:
        raise ValueError(f"segment duration must be positive, got {duration_us} us")
    if t_last < t_first:
        raise ValueError(f"time span is reversed: first {t_first} > last {t_last}")
    k0 = int(t_first) // duration_us
    k1 = int(t_last) // duration_us
    return np.arange(k0, k1 + 2, dtype=np.int64) * duration_us


def recording_edges(event_span: tuple[int, int] | None, box_times: np.ndarray | None, duration_us: int) -> np.ndarray:
    """Segment edges covering every event and every box of a recording (empty when it has neither)."""
    firsts, lasts = [], []
    if event_span is not None:
        firsts.append(int(event_span[0]))
        lasts.append(int(event_span[1]))
    if box_times is not None and len(box_times):
        firsts.append(int(np.min(box_times)))
        lasts.append(int(np.max(box_times)))
    if not firsts:
        return np.zeros(0, np.int64)
    return segment_edges(min(firsts), max(lasts), duration_us)


def split_sorted(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Offsets o (len(edges)) so that times[o[k]:o[k+1]] are the sorted `times` in [edges[k], edges[k+1]).

    Times before edges[0] or at/after edges[-1] fall outside every segment.
    """
    return np.searchsorted(np.asarray(times), np.asarray(edges), side="left").astype(np.int64)

