"""Preemption: SIGTERM -> stop after the current step, checkpoint, exit with PREEMPTED_EXIT_CODE.

The signal handler only sets a flag; the training loop polls it after every step. One process reads
its own flag (free). Under DDP the ranks must stop at the same step, so each step starts an
asynchronous all-reduce (max) of the local flag and reads the result of the one started the step
before: the vote has had a whole step to complete, collectives stay in the same order on every rank,
and a stop takes effect at most two steps after the signal. The vote is a CPU tensor on a gloo group
(with NCCL training, a gloo side group made once), so it never waits for the GPU: no per-step host
sync, unlike reading a flag reduced on the GPU.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

# EX_TEMPFAIL from sysexits.h: "try again later". A scheduler or script can requeue on this code and
# resume from OUTPUT/checkpoint.pth; any other non-zero code is a real failure.
PREEMPTED_EXIT_CODE = 75


class StopFlag:
    """Set by SIGTERM (preemption); read by StopVote and the epoch loop."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def install(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __call__(self) -> bool:
        return self.requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class StopVote:
    """Per-step agreement on the stop flag across ranks, one step behind (see the module docstring)."""

    def __init__(self, flag):
        self.flag = flag
        self.distributed = dist.is_available() and dist.is_initialized()
        # Every rank builds its StopVote at the same point, as new_group requires.
        self.group = dist.new_group(backend="gloo") if self.distributed and dist.get_backend() != "gloo" else None
        self._pending = None

    def poll(self) -> bool:
        """Call once per step on every rank; True when all ranks are to stop now."""
        if not self.distributed:
            return bool(self.flag())
        agreed = self._collect()
        tensor = torch.tensor([float(bool(self.flag()))])
        self._pending = (dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group, async_op=True), tensor)
        return agreed

    def _collect(self) -> bool:
        if self._pending is None:
            return False
        work, tensor = self._pending
        self._pending = None
        work.wait()
        return bool(tensor.item() > 0)

    def drain(self) -> None:
        """Finish the outstanding all-reduce (end of the epoch), so no collective is left in flight."""
        self._collect()
