"""PyAV as a thread-pool frame decoder (CPU): the reference the NVDEC decoders are checked against."""

from __future__ import annotations

import numpy as np
import torch

DECODE_DEVICE = "cpu"


def can_decode(codec, device, width, height) -> bool:
    return True  # PyAV's wheels bundle FFmpeg with every common decoder


def make_decoder(device):
    from fastvid.video.pyav_backend import decode_frames

    def decode(data: bytes, indices: np.ndarray) -> torch.Tensor:
        frames = decode_frames(data, indices)
        return torch.from_numpy(np.stack([frames[int(i)] for i in indices]))

    return decode
