"""The contract between a kind's epoch planner, the loader backends and the training loop, for every kind.

A planner (fastvid.video.sampling, fastvid.events.sampling) gives each rank an ordered list of work items
for an epoch (video: a sample and which clips of its grid; events: a window of a recording on a stream).
Nothing about the order or the partition over ranks is decided by a backend. A backend yields, in that
order, `Chunk` (rows of decoded, device-ready samples of one or more work items) or `Failure` (a sample
that could not be read, named by key) from `epoch_chunks(epoch, work)`. Everything a training loop
relies on beyond that — exact batch sizes, the same batch count on every rank, the failure policy — is
`rebatch`, so no backend re-implements it. Resuming mid-epoch is the planner's job: the work list starts
at the saved position, so consumed items are never decoded again.

Failure policy (`FailurePolicy`, the same for every backend and kind): a sample that fails is skipped,
counted and logged (a backend whose rows must keep their place, such as the event streams of a TBPTT
batch, yields a padding row in its chunk besides the Failure); past the budget the epoch fails with
the names of the bad samples.

End-of-epoch rule (`LastBatch`, named as DALI's LastBatchPolicy): `PARTIAL` ends the epoch with a
smaller last batch, the same size on every rank, short ranks padded by repeating items (training as
torchvision's DataLoader with a DistributedSampler: every sample is seen); `DROP` cuts the epoch to the
full batches of the shortest rank (training); `WRAP` pads to the longest rank by wrapping around the
rank's own samples (evaluation: wrapped clips repeat keys, so per-key averaging is unaffected). Either
way every rank yields the same number of batches, so DDP never waits on an uneven tail.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("fastvid.pipeline")


class LastBatch(enum.Enum):
    PARTIAL = "partial"  # epoch = every item; the last batch may be smaller (equal on every rank, padded)
    DROP = "drop"  # epoch = full batches of the shortest rank; the ragged tail is dropped
    WRAP = "wrap"  # epoch = batches of the longest rank; shorter ranks wrap around their own samples

    @classmethod
    def from_drop_last(cls, drop_last: bool) -> "LastBatch":
        return cls.DROP if drop_last else cls.WRAP


@dataclass(frozen=True)
class WorkItem:
    """One entry of a video rank's epoch plan: sample `sample` of shard `shard`.

    `clips`: which clips of that video's clip grid this item takes; None = the config's default
    (`clips_per_video` clips)."""

    shard: int
    sample: int
    clips: tuple[int, ...] | None = None


@dataclass
class Ragged:
    """Rows of different lengths (the events of each window of a batch): row i is
    `values[name][offsets[i]:offsets[i + 1]]` for every column of `values`."""

    values: dict[str, torch.Tensor]
    offsets: torch.Tensor  # (n + 1,) int64, offsets[0] == 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, rows: slice) -> "Ragged":
        start, stop, _ = rows.indices(len(self))
        a, b = int(self.offsets[start]), int(self.offsets[max(start, stop)])
        return Ragged({k: v[a:b] for k, v in self.values.items()}, self.offsets[start:max(start, stop) + 1] - a)

    @staticmethod
    def concat(parts: list["Ragged"]) -> "Ragged":
        shifts = torch.tensor([0] + [int(p.offsets[-1]) for p in parts[:-1]]).cumsum(0)
        offsets = torch.cat([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)])
        return Ragged({k: torch.cat([p.values[k] for p in parts]) for k in parts[0].values}, offsets)

    def to(self, device, non_blocking: bool = True) -> "Ragged":
        """The values on `device`; the offsets stay on the host (kernels take them as launch arguments)."""
        return Ragged({k: v.to(device, non_blocking=non_blocking) for k, v in self.values.items()}, self.offsets)


@dataclass
class Chunk:
    """Rows of decoded samples, in work-list order. Every tensor of `data` holds one row per key on dim 0
    (video: "video" (n, 3, T, h, w), "label" (n,)); every list holds one entry per key ("clip": the grid
    clip of each row); a `Ragged` holds rows of different lengths (events: the events of each window)."""

    data: dict[str, Any]
    keys: list[str]
    # Seconds spent per stage for these rows (read, decode, pixels, ...), where the backend can tell;
    # added to the loader's StageStats (fastvid.pipeline.stats), which `doctor`, `bench` and the logs read.
    stage_s: dict[str, float] = field(default_factory=dict)
    # Process that decoded the chunk (worker processes are persistent across epochs).
    worker_pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, start: int, stop: int | None = None) -> "Chunk":
        """Rows [start, stop) as a chunk (views of the tensors, no copy)."""
        return Chunk({name: value[start:stop] for name, value in self.data.items()}, self.keys[start:stop])


@dataclass(frozen=True)
class Failure:
    """A sample that could not be read or decoded; rebatch counts and logs it and goes on."""

    key: str
    error: str


@dataclass(frozen=True)
class FailurePolicy:
    """How many failed samples an epoch tolerates: `budget` is a count (int) or a fraction of the epoch's
    work items (float); None tolerates any number. More than that and the epoch fails, naming them."""

    budget: int | float | None = 0.01
    min_budget: int = 16  # a fractional budget never allows fewer than this many (small sets, first epochs)

    def limit(self, num_items: int) -> float:
        if self.budget is None:
            return math.inf
        if isinstance(self.budget, float):
            return max(self.min_budget, math.ceil(self.budget * num_items))
        return int(self.budget)


class FailureBudgetExceeded(RuntimeError):
    pass


class RebatchStats:
    """What rebatch saw: failures (count, keys, last error) and the rows and batches it yielded."""

    def __init__(self):
        self.failures = 0
        self.failed_keys: list[str] = []
        self.last_error = ""
        self.batches = 0
        self.clips = 0


def _concat(values: list):
    if len(values) == 1:
        return values[0]
    if isinstance(values[0], torch.Tensor):
        return torch.cat(values)
    if isinstance(values[0], Ragged):
        return Ragged.concat(values)
    return [v for value in values for v in value]


def _cut(pending: list[Chunk], size: int) -> tuple[dict, list[Chunk]]:
    """The first `size` rows of `pending` as one batch ({"key": [...], **fields}), and what is left over."""
    if len(pending) == 1 and len(pending[0]) == size:
        c = pending[0]
        return {**c.data, "key": list(c.keys)}, []
    whole = Chunk({name: _concat([c.data[name] for c in pending]) for name in pending[0].data},
                  [k for c in pending for k in c.keys])
    head = whole.rows(0, size)
    rest = [whole.rows(size)] if len(whole) > size else []
    return {**head.data, "key": list(head.keys)}, rest


def _fail(item: Failure, stats: RebatchStats, limit: float, where: str) -> None:
    stats.failures += 1
    stats.failed_keys.append(item.key)
    stats.last_error = item.error
    log.warning("fastvid: sample %s failed to decode and was skipped: %s", item.key, item.error)
    if stats.failures > limit:
        names = ", ".join(repr(k) for k in stats.failed_keys[:20]) + (" ..." if len(stats.failed_keys) > 20 else "")
        raise FailureBudgetExceeded(
            f"{stats.failures} samples of {where} failed this epoch, more than the failure budget ({int(limit)}): "
            f"{names}; last error: {item.error}")


def _rows(produced: int, num_batches: int, batch_size: int, last_rows: int | None) -> int:
    """Rows of the next batch: batch_size, or last_rows for the last one."""
    return last_rows if last_rows is not None and produced == num_batches - 1 else batch_size


def rebatch(chunks: Iterable[Chunk | Failure], *, batch_size: int, num_batches: int, drop_clips: int = 0,
            stats: RebatchStats | None = None, max_failures_in_a_row: int | None = None,
            max_failures: float = math.inf, where: str = "the shard set", last_rows: int | None = None) -> Iterator[dict]:
    """Exactly `num_batches` batches of `batch_size` rows from a backend's chunk stream (the last of them
    `last_rows` rows when given: LastBatch.PARTIAL).

    - Rows keep their order; a chunk may be split over two batches.
    - `drop_clips`: rows at the start of the stream to leave out (already used elsewhere).
    - A `Failure` is counted in `stats` and logged; more than `max_failures` in the epoch (the
      FailurePolicy's limit) fails the epoch naming the samples, and more than `max_failures_in_a_row`
      in a row (sources that never run out, such as a reader that wraps) is an error instead of an
      endless loop.
    - If the stream ends early (samples failed), the epoch is completed by repeating rows already cut
      this epoch, so every rank still yields `num_batches` batches; an epoch with no row at all is an error.
    """
    if batch_size < 1 or num_batches < 0 or drop_clips < 0:
        raise ValueError(f"batch_size must be >= 1 and num_batches, drop_clips >= 0 (got {batch_size}, {num_batches}, {drop_clips})")
    stats = stats if stats is not None else RebatchStats()
    pending: list[Chunk] = []
    pending_rows = 0
    first: dict | None = None
    produced = 0
    failed_in_a_row = 0
    source = iter(chunks)
    while produced < num_batches:
        item = next(source, None)
        if item is None:
            if first is None and not pending:
                last = f"; last: {stats.failed_keys[-1]!r}: {stats.last_error}" if stats.failed_keys else ""
                raise RuntimeError(f"no sample could be decoded from {where} ({stats.failures} samples failed{last})")
            # Refill from what this epoch already produced (first batch, else the pending rows).
            item = Chunk({k: v for k, v in first.items() if k != "key"}, list(first["key"])) if first is not None else pending[0]
        elif isinstance(item, Failure):
            _fail(item, stats, max_failures, where)
            failed_in_a_row += 1
            if max_failures_in_a_row is not None and failed_in_a_row > max_failures_in_a_row:
                raise RuntimeError(f"{failed_in_a_row} samples in a row failed to decode, last {item.key!r}: {item.error}; "
                                   f"no sample can be read from {where}")
            continue
        if len(item) == 0:
            continue
        failed_in_a_row = 0
        if drop_clips:
            if len(item) <= drop_clips:
                drop_clips -= len(item)
                continue
            item = item.rows(drop_clips)
            drop_clips = 0
        pending.append(item)
        pending_rows += len(item)
        while produced < num_batches and pending_rows >= (size := _rows(produced, num_batches, batch_size, last_rows)):
            batch, pending = _cut(pending, size)
            pending_rows -= size
            if first is None:
                first = batch
            produced += 1
            stats.batches += 1
            stats.clips += len(batch["key"])
            yield batch
