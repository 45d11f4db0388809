"""What every NVDEC decoder shares: the size and codec limits, and the device index of a 'cuda[:N]' string."""

from __future__ import annotations

# NVDEC's smallest frame (both dimensions) and the codecs fastvid shards use that it decodes.
NVDEC_MIN_SIZE = 128
NVDEC_CODECS = ("h264", "hevc", "vp9", "vp8", "av1", "mpeg4")


def fits(codec, device, width, height) -> bool:
    """NVDEC can take these shards: a GPU device, a codec it decodes, frames at least 128x128."""
    return device != "cpu" and codec in NVDEC_CODECS and min(width or 0, height or 0) >= NVDEC_MIN_SIZE


def device_index(device) -> int:
    import torch

    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index
