"""SyncBatchNorm conversion, including a gloo/CPU path.

torch's SyncBatchNorm only synchronizes CUDA (and a few accelerator) tensors; on CPU it raises. The
CPU subclass below computes the same cross-process batch statistics with an autograd-aware
all-reduce (torch.distributed.nn), so `--sync-bn` behaves the same under `torchrun` on CPU/gloo as
on GPUs/NCCL (where torch's own CUDA kernels are used).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(_BatchNorm):
    """Synchronized BatchNorm for CPU tensors: the training forward all-reduces sum, sum of squares and
    count. (Not an nn.SyncBatchNorm subclass: DDP refuses those on CPU modules.) Same state_dict as
    BatchNorm/SyncBatchNorm; `process_group` as nn.SyncBatchNorm's (None = the default group)."""

    process_group = None

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.float()
        count = torch.full((1,), x.numel() // c, dtype=torch.float32)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]), self.process_group or dist.group.WORLD)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                unbiased = var.detach() * (total / (total - 1).clamp_min(1))
                self.running_var.mul_(1 - f).add_(unbiased, alpha=f)
        shape = [1, c] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """BatchNorm*d -> SyncBatchNorm (CPUSyncBatchNorm on CPU); returns (model, layers converted)."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    converted = 0
    for m in model.modules():
        if isinstance(m, nn.SyncBatchNorm):
            converted += 1
            if device.type != "cuda":
                m.__class__ = CPUSyncBatchNorm
    return model, converted
