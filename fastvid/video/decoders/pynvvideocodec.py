"""NVIDIA PyNvVideoCodec (`pip install pynvvideocodec`) as a thread-pool frame decoder on NVDEC.

One SimpleDecoder per thread, created on the first sample and re-pointed at every next sample with
`reconfigure_decoder` (its decoder cache avoids a new NVDEC session per video). The wheel bundles its
demuxer (libavformat), so no system FFmpeg is needed. Frames come back as RGB (HWC) in device memory
and are copied out of the decoder's surfaces (which it reuses) before the next sample.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from fastvid import _gpu
from fastvid.video.decoders import nvdec

DECODE_DEVICE = "cuda"


def can_decode(codec, device, width, height) -> bool:
    return nvdec.fits(codec, device, width, height) and _gpu.cuda_available() and _gpu.has_module("PyNvVideoCodec")


def make_decoder(device):
    nvc = _gpu.require("PyNvVideoCodec", "the pynvvideocodec loader backend")
    gpu_id = nvdec.device_index(device)
    state = {"decoder": None, "spill": None}

    def open_source(data: bytes):
        decoder = state["decoder"]
        if decoder is None:
            # On the calling thread's current stream (the backend runs each thread on a stream of its own), so
            # the frames and the torch work that crops them are ordered without a device-wide sync.
            state["decoder"] = nvc.SimpleDecoder(data, gpu_id=gpu_id, use_device_memory=True,
                                                 cuda_stream=torch.cuda.current_stream().cuda_stream,
                                                 output_color_type=nvc.OutputColorType.RGB)
            return
        try:
            decoder.reconfigure_decoder(data)
        except TypeError:  # releases whose reconfigure takes a path only: go through one cache file per thread
            if state["spill"] is None:
                fd, state["spill"] = tempfile.mkstemp(prefix="fastvid-nvc-", suffix=".mp4")
                os.close(fd)
            with open(state["spill"], "wb") as f:
                f.write(data)
            decoder.reconfigure_decoder(state["spill"])

    def decode(data: bytes, indices: np.ndarray) -> torch.Tensor:
        open_source(data)
        decoder = state["decoder"]
        last = len(decoder) - 1
        wanted = [min(int(i), last) for i in indices]  # metadata that over-counts: pad with the last frame
        got = decoder.get_batch_frames_by_index(sorted(set(wanted)))
        by_index = dict(zip(sorted(set(wanted)), got))
        # RGB output: (H, W, 3) uint8 per frame; stack copies them out of the decoder's reused surfaces.
        return torch.stack([torch.from_dlpack(by_index[i]) for i in wanted])

    return decode
