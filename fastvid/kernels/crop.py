"""Fused multi-scale crop + bilinear resize + horizontal flip + normalize of uint8 clip batches.

`crop_resize_normalize(frames (N, T, H, W, C) uint8, boxes (N, 4) y0,x0,h,w, out_size, ...)` returns a
torch tensor (N, C, T, out_h, out_w): the same box for every frame of a clip, bilinear resampling with
half-pixel centres (equal to torch F.interpolate(mode="bilinear", align_corners=False, antialias=False)
applied to the cropped region), an optional mirror, then (value * scale - mean) / std.

device="cpu" runs the Numba twin (njit(parallel=True, cache=True), one compiled signature);
device="cuda" runs kernels/crop.cu in ONE launch per batch on torch's current stream, reading torch CUDA
tensors without a copy. `crop_resize_normalize_reference` is the plain torch version the tests and the
benchmark compare with.

This is a standalone operator for your own loops over decoded uint8 batches: no fastvid loader calls it
(the DALI backend crops with `fn.resize` regions of interest, the PyAV backend with slicing and
`F.interpolate`). `fastvid bench crop` measures it against the torch version.
"""

from __future__ import annotations

import numpy as np
import torch

_CUDA_KERNELS = {torch.float32: "crop_resize_normalize_f32", torch.float16: "crop_resize_normalize_f16",
                 torch.bfloat16: "crop_resize_normalize_bf16"}

_numba_kernel = None


def _get_numba_kernel():
    """Compile (or load from Numba's cache) the CPU kernel on first use."""
    global _numba_kernel
    if _numba_kernel is None:
        from fastvid.kernels import crop_numba

        _numba_kernel = crop_numba.crop_resize_normalize_cpu
    return _numba_kernel


def _out_hw(out_size) -> tuple[int, int]:
    if isinstance(out_size, (int, np.integer)):
        return int(out_size), int(out_size)
    h, w = out_size
    return int(h), int(w)


def _check_inputs(shape, boxes: np.ndarray, out_h: int, out_w: int, channels: int, mean, std):
    if len(shape) != 5:
        raise ValueError(f"crop_resize_normalize: frames must be (N, T, H, W, C) uint8, got shape {tuple(shape)}")
    n, _, height, width, c = shape
    if boxes.shape != (n, 4):
        raise ValueError(f"crop_resize_normalize: boxes must be (N, 4) = ({n}, 4) y0,x0,h,w, got {boxes.shape}")
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"crop_resize_normalize: out_size must be positive, got {(out_h, out_w)}")
    if n:
        y0, x0, h, w = boxes.T
        bad = (y0 < 0) | (x0 < 0) | (h < 1) | (w < 1) | (y0 + h > height) | (x0 + w > width)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"crop_resize_normalize: box {i} {boxes[i].tolist()} (y0,x0,h,w) is outside the {height}x{width} frame")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"crop_resize_normalize: mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")


def crop_resize_normalize(
    frames,
    boxes,
    out_size,
    flip=False,
    *,
    mean,
    std,
    device: str = "cpu",
    out_dtype: torch.dtype = torch.float32,
    scale: float = 1.0 / 255.0,
) -> torch.Tensor:
    """Crop each clip with its box, resize to `out_size`, mirror where `flip`, normalize; -> (N, C, T, h, w).

    frames: (N, T, H, W, C) uint8 numpy array or torch tensor (CPU or CUDA); boxes: (N, 4) or (4,) ints
    y0, x0, h, w; out_size: int or (h, w); flip: bool or (N,) bools; mean/std: per channel, in the units
    of `value * scale` (default scale 1/255, so ImageNet-style means in [0, 1]); out_dtype: float32,
    float16 or bfloat16. device "cpu" uses Numba, "cuda[:i]" the CUDA kernel.
    """
    if out_dtype not in _CUDA_KERNELS:
        raise ValueError(f"crop_resize_normalize: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    out_h, out_w = _out_hw(out_size)
    shape = tuple(frames.shape)
    n = shape[0] if shape else 0
    boxes_np = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.int64)
    if boxes_np.ndim == 1:
        boxes_np = np.tile(boxes_np, (n, 1))
    flip_np = np.asarray(flip.cpu() if isinstance(flip, torch.Tensor) else flip, dtype=bool)
    flip_np = np.broadcast_to(flip_np, (n,)).astype(np.uint8)
    channels = shape[-1] if len(shape) == 5 else 0
    _check_inputs(shape, boxes_np, out_h, out_w, channels, mean, std)
    if frames.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"crop_resize_normalize: frames must be uint8, got {frames.dtype}")
    mean_np = np.ascontiguousarray(mean, dtype=np.float32)
    inv_std_np = (1.0 / np.asarray(std, dtype=np.float64)).astype(np.float32)
    boxes_np = np.ascontiguousarray(boxes_np)  # kernels index (N, 4) rows directly

    from fastvid import _gpu

    dev = torch.device(_gpu.resolve_device(device if isinstance(device, str) else str(device)))
    if dev.type == "cuda":
        return _crop_cuda(frames, boxes_np, flip_np, mean_np, inv_std_np, float(scale), out_h, out_w, dev, out_dtype)
    if dev.type != "cpu":
        raise ValueError(f"crop_resize_normalize: device must be 'cpu' or 'cuda', got {device!r}")

    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    frames = np.ascontiguousarray(frames)
    _, t, _, _, c = shape
    out = np.empty((n, c, t, out_h, out_w), dtype=np.float32)
    if out.size:
        _get_numba_kernel()(frames, boxes_np, flip_np, mean_np, inv_std_np, np.float32(scale), out)
    result = torch.from_numpy(out)
    return result if out_dtype == torch.float32 else result.to(out_dtype)


def _crop_cuda(frames, boxes, flip, mean, inv_std, scale, out_h, out_w, dev, out_dtype):
    from fastvid import _gpu
    from fastvid.kernels import cuda

    cp = _gpu.require_cupy("the CUDA crop_resize_normalize kernel")
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    frames = frames.to(dev, non_blocking=True).contiguous()
    dev = frames.device
    n, t, height, width, c = frames.shape
    out = torch.empty((n, c, t, out_h, out_w), dtype=out_dtype, device=dev)
    if out.numel() == 0:
        return out
    # Per-clip parameters are tiny; they follow the frames onto the device on the same stream.
    boxes_d, flip_d, mean_d, inv_d = (torch.from_numpy(a).to(dev, non_blocking=True) for a in (boxes, flip, mean, inv_std))
    total = n * t * out_h * out_w
    with cp.cuda.Device(dev.index or 0), cuda.torch_stream(dev):
        kernel = cuda.get_function("crop.cu", _CUDA_KERNELS[out_dtype])
        kernel(cuda.grid_for(total), (256,), (
            cuda.as_cupy(frames), cuda.as_cupy(boxes_d), cuda.as_cupy(flip_d), cuda.as_cupy(mean_d), cuda.as_cupy(inv_d),
            np.float32(scale), cuda.as_cupy(out), np.int32(n), np.int32(t), np.int32(height), np.int32(width),
            np.int32(c), np.int32(out_h), np.int32(out_w)))
    return out


def crop_resize_normalize_reference(frames, boxes, out_size, flip=False, *, mean, std,
                                    scale: float = 1.0 / 255.0) -> torch.Tensor:
    """Plain torch version (per clip F.interpolate): the ground truth for tests and the benchmark baseline."""
    import torch.nn.functional as F

    frames = torch.as_tensor(frames)
    n = frames.shape[0]
    out_h, out_w = _out_hw(out_size)
    boxes = np.asarray(boxes, dtype=np.int64)
    if boxes.ndim == 1:
        boxes = np.tile(boxes, (n, 1))
    flips = np.broadcast_to(np.asarray(flip, dtype=bool), (n,))
    mean_t = torch.tensor(mean, dtype=torch.float32, device=frames.device).view(-1, 1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=frames.device).view(-1, 1, 1, 1)
    clips = []
    for i in range(n):
        y0, x0, h, w = (int(v) for v in boxes[i])
        crop = frames[i, :, y0:y0 + h, x0:x0 + w, :].permute(0, 3, 1, 2).float().contiguous()  # (T, C, h, w)
        resized = F.interpolate(crop, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
        if flips[i]:
            resized = resized.flip(-1)
        clip = resized.permute(1, 0, 2, 3)  # (C, T, h, w)
        clips.append((clip * scale - mean_t) / std_t)
    return torch.stack(clips) if clips else torch.empty((0, frames.shape[-1], frames.shape[1], out_h, out_w), device=frames.device)
