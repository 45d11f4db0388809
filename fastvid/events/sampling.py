"""What every event training step plays (pure, no I/O): the two samplers over one set of windows.

Both samplers work on the same `WindowPlan` of each recording (fastvid.events.windows) and give a rank
its epoch as steps of `batch_size` rows, each row a `WindowItem` (window `window` of recording
`recording` on stream `stream`, `reset` where the stream starts a new recording or sequence, padding
rows with recording -1). The loader reads exactly those windows, whatever the sampler.

* ``stream`` (TBPTT, as HMNet / RVT stream whole recordings): recordings are shuffled with
  (seed, epoch) and dealt round-robin to ranks; on a rank, a stream that finishes a recording takes
  the next one of the rank's queue at the next step (greedy refill); streams with an empty queue are
  padded until the longest rank is done, so every rank plays the same number of steps.
* ``random`` (RVT's random sequences): each row plays `seq_len` consecutive windows of a recording
  ending at a labelled window, the state reset at the first; one sequence per `seq_len` labelled windows
  per epoch (at least one batch on every rank), drawn with (seed, epoch) and dealt to ranks disjointly.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

SAMPLERS = ("stream", "random")


@dataclass(frozen=True)
class WindowItem:
    stream: int
    recording: int  # index into the loader's recordings; -1: padding
    window: int     # index into that recording's WindowPlan; -1: padding
    reset: bool     # the stream starts a new recording / sequence here: reset its state

    @property
    def padding(self) -> bool:
        return self.recording < 0


@dataclass(frozen=True)
class StreamSlot:
    """Recording `recording` plays on a stream from step `start` for `length` steps."""

    recording: int
    start: int
    length: int


def rank_recordings(num_recordings: int, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Indices of the recordings of one rank: a seeded permutation dealt round-robin (disjoint over ranks)."""
    order = np.arange(num_recordings)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_recordings)
    return [int(i) for i in order[rank::world_size]]


def rank_recordings_by_shard(first_shards: list[int], rank: int, world_size: int, seed: int, epoch: int,
                             shuffle: bool) -> list[int]:
    """The recordings of one rank for a streamed set: whole shards' recordings (shards in a seeded order,
    cut into world_size contiguous parts of about equal recording counts), so a rank downloads about
    1/world_size of the set instead of every shard. Disjoint over ranks."""
    shards = sorted(set(first_shards))
    if shuffle:
        shards = [shards[i] for i in np.random.default_rng([seed, epoch, 11]).permutation(len(shards))]
    by_shard: dict[int, list[int]] = {}
    for rec, shard in enumerate(first_shards):
        by_shard.setdefault(shard, []).append(rec)
    ordered = [rec for shard in shards for rec in by_shard[shard]]
    n = len(ordered)
    return ordered[rank * n // world_size:(rank + 1) * n // world_size]


def plan_streams(lengths: list[tuple[int, int]], batch_size: int) -> list[list[StreamSlot]]:
    """Greedy refill: each (recording, num_windows), in order, goes to the stream that becomes free first."""
    free = [(0, s) for s in range(batch_size)]
    heapq.heapify(free)
    plan: list[list[StreamSlot]] = [[] for _ in range(batch_size)]
    for rec, length in lengths:
        at, stream = heapq.heappop(free)
        plan[stream].append(StreamSlot(rec, at, length))
        heapq.heappush(free, (at + length, stream))
    return plan


def plan_steps(plan: list[list[StreamSlot]]) -> int:
    return max((slot.start + slot.length for stream in plan for slot in stream), default=0)


def _padding(stream: int) -> WindowItem:
    return WindowItem(stream, -1, -1, False)


def stream_steps(num_windows: list[int], batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
                 shuffle: bool = True, first_shards: list[int] | None = None) -> list[list[WindowItem]]:
    """The stream sampler's epoch for `rank`: steps x batch_size items (recordings without windows skipped).
    `first_shards` (a streamed set: each recording's first shard): ranks take whole shards' recordings."""
    playable = [i for i, n in enumerate(num_windows) if n > 0]

    def plan_of(r: int) -> list[list[StreamSlot]]:
        if first_shards is not None:
            mine = rank_recordings_by_shard([first_shards[i] for i in playable], r, world_size, seed, epoch, shuffle)
        else:
            mine = rank_recordings(len(playable), r, world_size, seed, epoch, shuffle)
        return plan_streams([(playable[i], num_windows[playable[i]]) for i in mine], batch_size)

    steps = max(plan_steps(plan_of(r)) for r in range(world_size))
    rows = [[_padding(b) for b in range(batch_size)] for _ in range(steps)]
    for b, stream in enumerate(plan_of(rank)):
        for slot in stream:
            for w in range(slot.length):
                rows[slot.start + w][b] = WindowItem(b, slot.recording, w, w == 0)
    return rows


def labelled_ends(windows, seq_len: int) -> list[tuple[int, int]]:
    """(recording, window) of every labelled window with seq_len - 1 windows before it in its recording."""
    return [(r, int(w)) for r, plan in enumerate(windows) for w in np.flatnonzero(plan.label_t >= 0) if w >= seq_len - 1]


def random_steps(windows, batch_size: int, seq_len: int, rank: int, world_size: int, seed: int,
                 epoch: int, first_shards: list[int] | None = None) -> list[list[WindowItem]]:
    """The random-sequence sampler's epoch for `rank`: rows of seq_len consecutive windows of one
    recording, each ending at a labelled window (grid windows that hold a box count as labelled).
    `first_shards` (a streamed set): each rank draws from its own shards' recordings only."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    ends = labelled_ends(windows, seq_len)
    if not ends:
        raise ValueError(f"no recording has a labelled window with {seq_len - 1} windows before it (seq_len {seq_len})")
    if first_shards is not None:
        mine = _rank_draws(ends, first_shards, batch_size, seq_len, rank, world_size, seed, epoch)
    else:
        per_step = batch_size * world_size
        count = max(per_step, len(ends) // seq_len)
        count -= count % per_step
        picks = np.random.default_rng([seed, epoch, 7]).choice(len(ends), count, replace=count > len(ends))
        mine = [ends[i] for i in picks[rank::world_size]]
    steps = []
    for first in range(0, len(mine) - batch_size + 1, batch_size):
        group = mine[first:first + batch_size]
        for i in range(seq_len):
            steps.append([WindowItem(b, rec, last - seq_len + 1 + i, i == 0) for b, (rec, last) in enumerate(group)])
    return steps


def _rank_draws(ends, first_shards, batch_size, seq_len, rank, world_size, seed, epoch) -> list[tuple[int, int]]:
    """A streamed set's random sequences of one rank: drawn among its own recordings' labelled windows, the
    same count on every rank (the smallest rank's share, at least one batch)."""
    def ends_of(r: int):
        recs = set(rank_recordings_by_shard(first_shards, r, world_size, seed, epoch, True))
        return [e for e in ends if e[0] in recs]

    count = max(batch_size, min(len(ends_of(r)) for r in range(world_size)) // seq_len)
    count -= count % batch_size
    own = ends_of(rank)
    if not own:
        raise ValueError(f"rank {rank} has no labelled window to end a sequence at (too few recordings per rank)")
    picks = np.random.default_rng([seed, epoch, 7, rank]).choice(len(own), count, replace=count > len(own))
    return [own[i] for i in picks]


def grid_labels(plan, box_times: np.ndarray):
    """A grid WindowPlan with label_t set to the latest box time inside each window (-1: no box), so the
    random sampler can end sequences at grid windows that hold labels."""
    from dataclasses import replace

    box_times = np.asarray(box_times, np.int64)
    idx = np.searchsorted(box_times, plan.stop, "left") - 1
    has = (idx >= 0) & (box_times[np.clip(idx, 0, None)] >= plan.start) if len(box_times) else np.zeros(len(plan), bool)
    label_t = np.where(has, box_times[np.clip(idx, 0, None)] if len(box_times) else -1, -1).astype(np.int64)
    return replace(plan, label_t=label_t)
