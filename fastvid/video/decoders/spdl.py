"""SPDL (`pip install spdl-io`) as a thread-pool frame decoder: SPDL's demuxer, NVDEC decode, RGB on the GPU.

Per sample: `spdl.io.demux_video(bytes, bsf=<codec>_mp4toannexb)` (NVDEC wants Annex B for
H.264/HEVC), `decode_packets_nvdec` (SPDL keeps one NVDEC decoder per thread and reuses it),
then the wanted frames are picked. It decodes the packets up to the last wanted frame.
SPDL loads the system's FFmpeg libraries: without them `can_decode` is False.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fastvid import _gpu
from fastvid.video.decoders import nvdec

DECODE_DEVICE = "cuda"


@functools.lru_cache(maxsize=None)
def _spdl_usable() -> bool:
    if not _gpu.has_module("spdl.io"):
        return False
    try:  # the package imports lazily; its native part loads FFmpeg's libraries on first use
        import spdl.io

        spdl.io.demux_video(b"")
    except RuntimeError as exc:
        return "libspdl" not in str(exc)  # "Failed to import libspdl": no usable FFmpeg on this system
    except Exception:
        return True  # the library loaded and rejected the empty input, as it should
    return True


def can_decode(codec, device, width, height) -> bool:
    return nvdec.fits(codec, device, width, height) and _gpu.cuda_available() and _spdl_usable()


def make_decoder(device):
    spdl_io = _gpu.require("spdl.io", "the spdl loader backend (it also needs FFmpeg libraries)")
    config = spdl_io.cuda_config(device_index=nvdec.device_index(device))

    def decode(data: bytes, indices: np.ndarray) -> torch.Tensor:
        probe = spdl_io.demux_video(data)
        codec = probe.codec.name
        packets = spdl_io.demux_video(data, bsf=f"{codec}_mp4toannexb") if codec in ("h264", "hevc") else probe
        frames = spdl_io.to_torch(spdl_io.decode_packets_nvdec(packets, device_config=config, pix_fmt="rgb"))
        if frames.shape[-1] != 3 and frames.shape[1] == 3:  # (F, 3, H, W) releases
            frames = frames.permute(0, 2, 3, 1)
        last = frames.shape[0] - 1
        return frames[torch.as_tensor([min(int(i), last) for i in indices], device=frames.device)]

    return decode
