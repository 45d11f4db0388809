"""One epoch of any loader: a backend's Chunk | Failure stream -> exact batches on the device.

`run_batches` is what every kind's loader iterates: it feeds the backend's stream through `rebatch`
(exact batches, the failure policy), notes each chunk's stage times and worker process in the loader's
`StageStats`, moves each batch to the device (fastvid.pipeline.device) and applies the kind's `finish`
(dtype, memory format, a device-side representation), timing the consumer's wait and the transfer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from fastvid.pipeline.contract import Chunk, Failure, RebatchStats, rebatch
from fastvid.pipeline.device import to_device
from fastvid.pipeline.stats import StageStats


def _observe(chunks: Iterable[Chunk | Failure], stats: StageStats, worker_pids: set | None):
    for chunk in chunks:
        if isinstance(chunk, Chunk):
            stats.merge(chunk.stage_s)
            if chunk.worker_pid is not None and worker_pids is not None:
                worker_pids.add(chunk.worker_pid)
        yield chunk


@dataclass(frozen=True)
class EpochBatches:
    """What an epoch yields: `num_batches` batches of `batch_size` rows (the last one `last_rows` when given),
    after leaving out the first `drop_rows` rows of the stream (already used elsewhere)."""

    batch_size: int
    num_batches: int
    last_rows: int | None = None
    drop_rows: int = 0


@dataclass(frozen=True)
class FailureLimits:
    """The failure policy's limits for one epoch (FailurePolicy.limit) and the name of the set for messages."""

    max_failures: float = math.inf
    max_in_a_row: int | None = None
    where: str = "the shard set"


def run_batches(chunks: Iterable[Chunk | Failure], epoch: EpochBatches, limits: FailureLimits, *, device: str,
                stage_stats: StageStats, rebatch_stats: RebatchStats, finish: Callable[[dict], dict] | None = None,
                device_fields: set[str] | None = None, worker_pids: set | None = None) -> Iterator[dict]:
    """The epoch's batches on `device`, from a backend's stream. `device_fields`: the fields moved to the
    device (None: every tensor); `finish` runs after the move (the kind's device-side stage, which times
    itself); `worker_pids` collects the processes that decoded."""
    batches = rebatch(_observe(chunks, stage_stats, worker_pids), batch_size=epoch.batch_size,
                      num_batches=epoch.num_batches, drop_clips=epoch.drop_rows, stats=rebatch_stats,
                      max_failures_in_a_row=limits.max_in_a_row, max_failures=limits.max_failures, where=limits.where,
                      last_rows=epoch.last_rows)
    try:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            t1 = time.perf_counter()
            if device_fields is None:
                batch = to_device(batch, device)
            else:
                batch.update(to_device({k: batch[k] for k in device_fields}, device))
            stage_stats.add("wait", t1 - t0)
            stage_stats.add("transfer", time.perf_counter() - t1)
            yield finish(batch) if finish is not None else batch
    finally:
        batches.close()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
