"""fastvid.kernels: CUDA C kernels (compiled at first use with CuPy/NVRTC) and their Numba CPU twins.

- `crop`: a fused crop + bilinear resize + flip + normalize operator (`crop_resize_normalize`), Numba and
  CUDA; standalone (the video loaders do not call it), measured by `fastvid bench crop`.
- `cuda`: loading the `*.cu` sources shipped in this package with CuPy's RawModule, cached per device.
- `events.cu`: event-to-tensor kernels; their Python entry points live in `fastvid.events.representations`.

The crop boxes these kernels take are drawn by `fastvid.data.boxes` (pure numpy geometry).
Numba and CuPy are imported only when a kernel is first used, so `import fastvid.kernels` stays light.
"""

_EXPORTS = {
    "crop_resize_normalize": "fastvid.kernels.crop",
    "crop_resize_normalize_reference": "fastvid.kernels.crop",
    "load_module": "fastvid.kernels.cuda",
    "cuda_source": "fastvid.kernels.cuda",
}

__all__ = [*_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastvid.kernels' has no attribute {name!r}")
