"""Ray engine for `fastvid shard videos --engine ray [--ray-address ADDRESS]`: re-encoding fans out over a
Ray cluster as Ray tasks; the shard writer (fastvid.store.writer) still assembles the tars.

Why this split: shard boundaries depend on encoded sizes (`--max-shard-bytes`), so the same shards as
the local engine come from feeding the writer the same encoded samples in the same order. Ray tasks
encode (one CPU each, a bounded window in flight so memory stays flat); the driver takes results in
item order and hands them to the writer, which keeps every guarantee: the seed's shuffle and shard
assignment, atomic tar writes, failures recorded in the manifest, resume on rerun, the progress bar.
A Ray worker that dies (OOM killer, preemption, a codec crash) has its task retried `max_retries`
times by Ray; when it keeps dying the job stops with an error naming the input, and rerunning the same
command resumes from the last complete shard.

Ray tasks rather than Ray Data: on this workload (one CPU-bound encode per clip, results needed in
order) a plain bounded task window measured faster than `ray.data` `map` with `preserve_order`
(see bench/shard.py); Ray Data's streaming executor adds per-block overhead that buys nothing here.
Inputs must be readable from every node (a shared filesystem); the output directory is the driver's.
"""

from __future__ import annotations

import collections
import sys
from typing import Callable

DEFAULT_MAX_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError("--engine ray needs Ray: pip install 'fastvid[ray]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address` ('auto' = the one `ray start --head` runs here), or start a local
    instance with `num_cpus`; returns True when this call started Ray (and so should shut it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, configure_logging=False, log_to_driver=True)
    if address:
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise ConnectionError(
                f"--ray-address {address}: {exc}. If the cluster uses token authentication (`ray start` enables it "
                "by default since Ray 2.59), run with RAY_AUTH_MODE=token and the cluster's token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN") from None
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def iter_encoded(encode: Callable, items, workers: int, *, max_retries: int = DEFAULT_MAX_RETRIES, window: int | None = None):
    """Yield (item, ok, fields|error) in item order, encoding each item in a Ray task (the writer's
    `_iter_encoded` contract). At most `window` tasks are in flight (default: 2 x the cluster's CPUs)."""
    ray = _ray()
    from fastvid.store.writer import _encode_one

    cpus = int(ray.cluster_resources().get("CPU", 1))
    window = window or max(2, 2 * cpus)
    task = ray.remote(num_cpus=1, max_retries=max_retries)(_encode_one)
    encode_ref = ray.put(encode)
    pending = collections.deque()
    it = iter(items)
    for item in it:
        pending.append((item, task.remote(encode_ref, item)))
        if len(pending) >= window:
            break
    while pending:
        item, ref = pending.popleft()
        try:
            ok, payload = ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.RayTaskError,
                ray.exceptions.ObjectLostError) as exc:
            for _, other in pending:
                ray.cancel(other, force=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise RuntimeError(
                f"a Ray worker died {max_retries + 1} times while encoding {item.source} ({type(exc).__name__}: {first}); "
                "rerun the same command to resume from the last complete shard") from exc
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, task.remote(encode_ref, nxt)))
        yield item, ok, payload


def engine(address: str | None = None, num_cpus: int | None = None, max_retries: int = DEFAULT_MAX_RETRIES):
    """An encoder for `write_shard_set(..., ShardJob(engine=...))` that runs on Ray (connecting when first used)."""

    def run(encode, items, workers):
        started = connect(address, num_cpus or (workers if not address else None))
        ray = _ray()
        try:
            resources = ray.cluster_resources()
            print(f"ray: {len(ray.nodes())} node(s), {int(resources.get('CPU', 0))} CPUs", file=sys.stderr)
            yield from iter_encoded(encode, items, workers, max_retries=max_retries)
        finally:
            if started:
                ray.shutdown()

    return run
