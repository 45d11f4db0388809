"""Process-group setup for `torchrun` (env://) and single-process runs, plus small collective helpers.

Under torchrun (WORLD_SIZE > 1) every process joins the default group: NCCL when training on CUDA
(one GPU per LOCAL_RANK), gloo on CPU. Run directly, there is no process group and every helper
degrades to the local value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastvid import _gpu


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Set once this process has joined a process group (see exit_process).
_joined_group = False


def exit_process(rc: int):
    """End a `python -m fastvid` process. After a gloo process group, interpreter shutdown can abort
    ("terminate called without an active exception": gloo's threads meet C++ static destructors; measured
    5 of 120 worker exits after a clean destroy_process_group, 0 of 120 with this), so such a process
    flushes its output and leaves with os._exit, skipping those destructors; others exit normally."""
    if not _joined_group:
        raise SystemExit(rc)
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def init_distributed(device: str, dist_url: str = "env://") -> DistInfo:
    """Pick the device and, when launched by torchrun with WORLD_SIZE > 1, init the process group."""
    device = _gpu.resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        index = local_rank if device == "cuda" else int(device.split(":")[1])
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device(device)
    backend = None
    if world_size > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=rank, **kwargs)
            global _joined_group
            _joined_group = True
    return DistInfo(rank, world_size, local_rank, dev, backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or max); identity without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj) -> list:
    if dist.is_available() and dist.is_initialized():
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
