"""The one place batches leave the host: page-locked staging buffers and the asynchronous copy to the
loader's device, for every kind (a blocking copy would synchronize the stream every step)."""

from __future__ import annotations

import torch


def host_buffer(shape, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """An empty host tensor to assemble a batch in; page-locked when it will be copied to a GPU (pinned
    memory makes the copy asynchronous and needs no staging copy)."""
    return torch.empty(shape, dtype=dtype, pin_memory=pin)


def host_zeros(shape, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """A zeroed host tensor to scatter a batch into. Unpinned, it comes from calloc (numpy), whose pages the
    kernel hands out already zeroed: about 3x cheaper than empty + zero_ for a batch of sparse windows."""
    if pin:
        return torch.zeros(shape, dtype=dtype, pin_memory=True)
    import numpy as np

    return torch.from_numpy(np.zeros(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


def pins(device: str) -> bool:
    """Whether batches for `device` are worth assembling in page-locked memory."""
    return str(device).startswith("cuda")


def to_device(batch: dict, device: str) -> dict:
    """Every tensor (and Ragged rows) of `batch` on `device` (non-blocking; other values as they are)."""
    from fastvid.pipeline.contract import Ragged

    target = torch.device(device)
    out = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and value.device != target:
            value = value.to(target, non_blocking=True)
        elif isinstance(value, Ragged) and any(v.device != target for v in value.values.values()):
            value = value.to(target)
        out[name] = value
    return out
