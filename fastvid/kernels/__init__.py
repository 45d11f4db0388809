"""fastvid.kernels: CUDA C kernels (compiled at first use with CuPy/NVRTC) and their Numba CPU twins.

- `crop`: a fused crop + bilinear resize + flip + normalize operator (`crop_resize_normalize`), Numba and
  CUDA; standalone (the video loaders do not call it), measured by `fastvid bench crop`.
- `cuda`: loading the `*.cu` sources shipped in this package with CuPy's RawModule, cached per device.
- `events.cu`: event-to-tensor kernels; their Python entry points live in `fastvid.events.representations`.

The crop boxes these kernels take are drawn by `fastvid.video.boxes` (pure numpy geometry).
Numba and CuPy are imported only when a kernel is first used, so `import fastvid.kernels` stays light.
"""

from __future__ import annotations

__all__ = ['crop_resize_normalize', 'crop_resize_normalize_reference', 'load_module', 'cuda_source']


def __getattr__(name):
    # Explicit imports on first use: importing the package stays cheap (no numpy, numba or torch).
    if name in ('crop_resize_normalize', 'crop_resize_normalize_reference'):
        from fastvid.kernels import crop

        return getattr(crop, name)
    if name in ('load_module', 'cuda_source'):
        from fastvid.kernels import cuda

        return getattr(cuda, name)
    raise AttributeError(f"module 'fastvid.kernels' has no attribute {name!r}")
