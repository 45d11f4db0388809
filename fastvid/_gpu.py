"""The one place where optional GPU and accelerator imports are guarded.

Everything GPU-only (CuPy, DALI's GPU operators, NVML) is reached through these helpers,
so a CPU-only install gets one clear message with the install hint instead of a traceback
from deep inside a module.
"""

from __future__ import annotations

import functools
import importlib

_HINTS = {
    "cupy": "pip install 'fastvid[gpu]'  (CuPy for CUDA 13: cupy-cuda13x)",
    "nvidia.dali": "pip install nvidia-dali-cuda130",
    "pynvml": "pip install nvidia-ml-py",
    "PyNvVideoCodec": "pip install 'fastvid[gpu-decoders]'  (pynvvideocodec; needs an NVIDIA driver)",
    "torchcodec.decoders": "pip install 'fastvid[gpu-decoders]'  (torchcodec matching your torch; needs FFmpeg 4-8 libraries)",
    "spdl.io": "pip install 'fastvid[gpu-decoders]'  (spdl-io; needs FFmpeg libraries)",
    "nvidia.nvcomp": "pip install 'fastvid[gpu]'  (nvidia-nvcomp-cu13, nvCOMP's Python API: GPU decompression of event shards)",
}


class MissingDependency(ImportError):
    """An optional dependency needed for the requested path is not installed."""


def require(module: str, why: str = ""):
    """Import `module` or raise MissingDependency with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # includes CUDA libraries missing under an installed package
        hint = _HINTS.get(module, f"pip install {module}")
        purpose = f" for {why}" if why else ""
        raise MissingDependency(f"{module} is needed{purpose} but could not be imported ({exc}). Install it: {hint}") from exc


def require_cupy(why: str = "GPU kernels"):
    return require("cupy", why)


def require_dali(why: str = "the DALI loader backend"):
    return require("nvidia.dali", why)


@functools.lru_cache(maxsize=None)
def has_module(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@functools.lru_cache(maxsize=None)
def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if not has_module("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def require_nvcomp(why: str = "decompressing event shards on the GPU"):
    return require("nvidia.nvcomp", why)


def dali_available() -> bool:
    return has_module("nvidia.dali")


def resolve_device(device: str | None) -> str:
    """'auto' or None -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda:N' kept as given."""
    if device in (None, "auto"):
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise RuntimeError(f"device={device!r} was asked for but no CUDA device is visible; use device='cpu'")
    return device
