"""The contract between the epoch planner, the loader backends and the training loop.

The planner (fastvid.data.sampling) gives each rank an ordered list of `WorkItem`s for an epoch: which
sample, which clips of that video's clip grid (fastvid.data.plan.plan_clips gives their frames, crop
boxes and flips). Nothing about the order or the partition over ranks is decided by a backend. A backend
yields, in that order, `Chunk` (decoded, normalized clips of one or more work items) or `Failure`
(a sample that could not be read, named by key) from `epoch_chunks(epoch, work)`. Everything a training
loop relies on beyond that — exact batch sizes, the same batch count on every rank, failure
accounting — is `rebatch`, so no backend re-implements it. Resuming mid-epoch is the planner's job: the
work list starts at the saved global clip position, so consumed items are never decoded again.

End-of-epoch rule (`LastBatch`, named as DALI's LastBatchPolicy): `DROP` cuts the epoch to the full
batches of the shortest rank (training), `WRAP` pads to the longest rank by wrapping around the rank's
own samples (evaluation: wrapped clips repeat keys, so per-key averaging is unaffected). Either way
every rank yields the same number of batches, so DDP never waits on an uneven tail.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch


class LastBatch(enum.Enum):
    DROP = "drop"  # epoch = full batches of the shortest rank; the ragged tail is dropped
    WRAP = "wrap"  # epoch = batches of the longest rank; shorter ranks wrap around their own samples

    @classmethod
    def from_drop_last(cls, drop_last: bool) -> "LastBatch":
        return cls.DROP if drop_last else cls.WRAP


@dataclass(frozen=True)
class WorkItem:
    """One entry of a rank's epoch plan: sample `sample` of shard `shard`.

    `clips`: which clips of that video's clip grid this item takes; None = the config's default
    (`clips_per_video` clips)."""

    shard: int
    sample: int
    clips: tuple[int, ...] | None = None


@dataclass
class Chunk:
    """Decoded clips, in work-list order: video (n, 3, T, h, w) normalized on the loader's device."""

    video: torch.Tensor
    label: torch.Tensor  # (n,) int64
    keys: list[str]
    # Grid clip of each row (the ClipPlan's clips; evaluation views repeat their clip), None where unknown.
    clips: list[int] | None = None
    # Seconds spent per stage for these clips (read, decode, pixels, ...), where the backend can tell;
    # `fastvid doctor` and `fastvid bench loader` sum them.
    stage_s: dict[str, float] = field(default_factory=dict)
    # Process that decoded the chunk (worker processes are persistent across epochs).
    worker_pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class Failure:
    """A sample that could not be read or decoded; the loader counts and logs it and goes on."""

    key: str
    error: str


@dataclass
class Batch:
    video: torch.Tensor
    label: torch.Tensor
    keys: list[str]
    clips: list[int]  # grid clip of each row, -1 where the backend did not say


def _clip_ids(chunk: Chunk) -> list[int]:
    return list(chunk.clips) if chunk.clips is not None else [-1] * len(chunk.keys)


def _tail(chunk: Chunk, start: int) -> Chunk:
    """The clips of `chunk` from row `start` on."""
    return Chunk(chunk.video[start:], chunk.label[start:], list(chunk.keys[start:]), _clip_ids(chunk)[start:])


class RebatchStats:
    """What rebatch saw: failures (count and keys) and the clips and batches it yielded."""

    def __init__(self):
        self.failures = 0
        self.failed_keys: list[str] = []
        self.last_error = ""
        self.batches = 0
        self.clips = 0


def _cut(pending: list[Chunk], size: int) -> tuple[Batch, list[Chunk]]:
    """The first `size` clips of `pending` as one batch, and what is left over."""
    if len(pending) == 1 and len(pending[0]) == size:
        c = pending[0]
        return Batch(c.video, c.label, list(c.keys), _clip_ids(c)), []
    video = torch.cat([c.video for c in pending]) if len(pending) > 1 else pending[0].video
    label = torch.cat([c.label for c in pending]) if len(pending) > 1 else pending[0].label
    keys = [k for c in pending for k in c.keys]
    clips = [i for c in pending for i in _clip_ids(c)]
    batch = Batch(video[:size], label[:size], keys[:size], clips[:size])
    rest = [Chunk(video[size:], label[size:], keys[size:], clips[size:])] if len(keys) > size else []
    return batch, rest


def rebatch(chunks: Iterable[Chunk | Failure], *, batch_size: int, num_batches: int, drop_clips: int = 0,
            stats: RebatchStats | None = None, max_failures_in_a_row: int | None = None,
            where: str = "the shard set") -> Iterator[Batch]:
    """Exactly `num_batches` batches of `batch_size` clips from a backend's chunk stream.

    - Clips keep their order; a chunk may be split over two batches.
    - `drop_clips`: clips at the start of the stream to leave out (already used elsewhere).
    - A `Failure` is counted in `stats`; more than `max_failures_in_a_row` in a row (sources that never
      run out, such as a reader that wraps) is an error instead of an endless loop.
    - If the stream ends early (samples failed), the epoch is completed by repeating clips already cut
      this epoch, so every rank still yields `num_batches` batches; an epoch with no clip at all is an error.
    """
    if batch_size < 1 or num_batches < 0 or drop_clips < 0:
        raise ValueError(f"batch_size must be >= 1 and num_batches, drop_clips >= 0 (got {batch_size}, {num_batches}, {drop_clips})")
    stats = stats if stats is not None else RebatchStats()
    pending: list[Chunk] = []
    pending_clips = 0
    first: Batch | None = None
    produced = 0
    failed_in_a_row = 0
    source = iter(chunks)
    while produced < num_batches:
        item = next(source, None)
        if item is None:
            if first is None and not pending:
                last = f"; last: {stats.failed_keys[-1]!r}: {stats.last_error}" if stats.failed_keys else ""
                raise RuntimeError(f"no clip could be decoded from {where} ({stats.failures} samples failed{last})")
            # Refill from what this epoch already produced (first batch, else the pending clips).
            item = Chunk(first.video, first.label, list(first.keys), list(first.clips)) if first is not None else pending[0]
        elif isinstance(item, Failure):
            stats.failures += 1
            stats.failed_keys.append(item.key)
            stats.last_error = item.error
            failed_in_a_row += 1
            if max_failures_in_a_row is not None and failed_in_a_row > max_failures_in_a_row:
                raise RuntimeError(f"{failed_in_a_row} samples in a row failed to decode, last {item.key!r}: {item.error}; "
                                   f"no clip can be read from {where}")
            continue
        if len(item) == 0:
            continue
        failed_in_a_row = 0
        if drop_clips:
            if len(item) <= drop_clips:
                drop_clips -= len(item)
                continue
            item = _tail(item, drop_clips)
            drop_clips = 0
        pending.append(item)
        pending_clips += len(item)
        while pending_clips >= batch_size and produced < num_batches:
            batch, pending = _cut(pending, batch_size)
            pending_clips -= batch_size
            if first is None:
                first = batch
            produced += 1
            stats.batches += 1
            stats.clips += len(batch.keys)
            yield batch


def plan_work(config, meta: dict, key: str, epoch: int, item: WorkItem):
    """The ClipPlan of one work item: `plan.plan_clips`, told which clips when the item names them."""
    from fastvid.data.plan import plan_clips

    if item.clips is None:
        return plan_clips(config, meta, key, epoch)
    return plan_clips(config, meta, key, epoch, clips=item.clips)


def read_sample(shard_set, item: WorkItem, handle=None) -> tuple[str, bytes, int, dict]:
    """(key, video bytes, label, json metadata) of a work item, read through the .idx byte ranges."""
    import json

    key = shard_set.shards[item.shard].keys[item.sample]
    comps = shard_set.read_components(item.shard, item.sample, exts=(shard_set.video_ext, "cls", "json"), handle=handle)
    if shard_set.video_ext not in comps:
        raise ValueError(f"no {shard_set.video_ext} component")
    meta = json.loads(comps["json"]) if "json" in comps else {}
    label = int(comps["cls"].decode().strip()) if "cls" in comps else int(meta["label"])
    return key, comps[shard_set.video_ext], label, meta
