"""One epoch of any loader: a backend's Chunk | Failure stream -> exact batches on the device.

`run_batches` is what every kind's loader iterates: it feeds the backend's stream through `rebatch`
(exact batches, the failure policy), notes each chunk's stage times and worker process in the loader's
`StageStats`, moves each batch to the device (fastvid.pipeline.device) and applies the kind's `finish`
(dtype, memory format, a device-side representation), timing the consumer's wait and the transfer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

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


def run_batches(chunks: Iterable[Chunk | Failure], *, batch_size: int, num_batches: int, device: str,
                stage_stats: StageStats, rebatch_stats: RebatchStats, max_failures: float,
                max_failures_in_a_row: int | None = None, where: str = "the shard set", drop_rows: int = 0,
                finish: Callable[[dict], dict] | None = None, worker_pids: set | None = None,
                last_rows: int | None = None) -> Iterator[dict]:
    """Exactly `num_batches` batches of `batch_size` rows (the last `last_rows`, when given), on `device`,
    from a backend's stream."""
    batches = rebatch(_observe(chunks, stage_stats, worker_pids), batch_size=batch_size, num_batches=num_batches,
                      drop_clips=drop_rows, stats=rebatch_stats, max_failures_in_a_row=max_failures_in_a_row,
                      max_failures=max_failures, where=where, last_rows=last_rows)
    try:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            t1 = time.perf_counter()
            batch = to_device(batch, device)
            if finish is not None:
                batch = finish(batch)
            stage_stats.add("wait", t1 - t0)
            stage_stats.add("transfer", time.perf_counter() - t1)
            yield batch
    finally:
        batches.close()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
