"""torchcodec's CUDA decoder (`pip install torchcodec`) as a thread-pool frame decoder on NVDEC.

`VideoDecoder(bytes, device="cuda:N")` per sample (torchcodec keeps its NVDEC decoder contexts in a
cache of its own, so a new VideoDecoder object does not mean a new hardware session) and
`get_frames_at(indices)`. torchcodec loads the system's FFmpeg libraries (4-8) at import: without
them (as on the project's GPU machine) `can_decode` is False and the backend is not chosen.
"""

from __future__ import annotations

import numpy as np
import torch

from fastvid import _gpu
from fastvid.video.decoders import nvdec

DECODE_DEVICE = "cuda"


def can_decode(codec, device, width, height) -> bool:
    return nvdec.fits(codec, device, width, height) and _gpu.cuda_available() and _gpu.has_module("torchcodec.decoders")


def make_decoder(device):
    decoders = _gpu.require("torchcodec.decoders", "the torchcodec loader backend (it also needs FFmpeg 4-8 libraries)")
    target = f"cuda:{nvdec.device_index(device)}"

    def decode(data: bytes, indices: np.ndarray) -> torch.Tensor:
        decoder = decoders.VideoDecoder(data, device=target, dimension_order="NHWC", seek_mode="approximate")
        last = decoder.metadata.num_frames - 1 if decoder.metadata.num_frames else None
        wanted = [int(i) if last is None else min(int(i), last) for i in indices]
        return decoder.get_frames_at(indices=wanted).data  # (F, H, W, 3) uint8 on the GPU

    return decode
