"""Loading the CUDA C sources of this package with CuPy (RawModule / NVRTC) and launching on torch's stream.

Sources are read with importlib.resources (they ship in the wheel as package data), compiled on first
use and kept per (source, device): CuPy's own on-disk kernel cache makes a second process start fast.
Torch CUDA tensors cross to CuPy without a copy through __cuda_array_interface__.
"""

from __future__ import annotations

import importlib.resources
import threading

from fastvid import _gpu

_modules: dict[tuple[str, int], object] = {}
_lock = threading.Lock()

# NVRTC options: fast math is NOT used so that results stay close to the Numba twins.
NVRTC_OPTIONS = ("-std=c++17",)


def cuda_source(name: str) -> str:
    """The text of kernels/<name> (e.g. 'crop.cu')."""
    return importlib.resources.files("fastvid.kernels").joinpath(name).read_text()


def load_module(name: str, device: int | None = None):
    """The compiled cupy.RawModule for kernels/<name> on `device` (default: the current one)."""
    cp = _gpu.require_cupy(f"the CUDA kernels in {name}")
    dev = cp.cuda.Device().id if device is None else int(device)
    key = (name, dev)
    module = _modules.get(key)
    if module is None:
        with _lock:
            module = _modules.get(key)
            if module is None:
                with cp.cuda.Device(dev):
                    module = cp.RawModule(code=cuda_source(name), options=NVRTC_OPTIONS)
                    module.compile()
                _modules[key] = module
    return module


def get_function(source: str, kernel: str, device: int | None = None):
    return load_module(source, device).get_function(kernel)


def torch_stream(device=None):
    """A CuPy view of torch's current CUDA stream on `device`, so kernels order correctly with torch work."""
    import torch

    cp = _gpu.require_cupy()
    return cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)


def as_cupy(tensor):
    """A CuPy array sharing memory with a torch CUDA tensor (no copy). bf16/fp16 go as int16 bit views."""
    import torch

    cp = _gpu.require_cupy()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.view(torch.int16)
    return cp.asarray(tensor)


def grid_for(n: int, block: int = 256, max_blocks: int = 65535 * 16) -> tuple[int]:
    """A 1-D grid covering n threads (kernels use grid-stride loops, so capping is safe)."""
    return (max(1, min((int(n) + block - 1) // block, max_blocks)),)
