"""Fused crop + bilinear resize + flip + normalize: Numba (and CUDA) against torch F.interpolate."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastvid.video.boxes import sample_multiscale_boxes
from fastvid.kernels import crop_resize_normalize, crop_resize_normalize_reference

MEAN, STD = (0.43, 0.39, 0.37), (0.22, 0.21, 0.23)


def _frames(n=3, t=4, h=48, w=64, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, t, h, w, c), dtype=np.uint8)


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("out_size", [32, (40, 24), (80, 100), (7, 13)])
def test_matches_torch_interpolate(out_size):
    frames = _frames()
    boxes = sample_multiscale_boxes(48, 64, 3, seed=1, out_size=32)
    flip = [True, False, True]
    out = crop_resize_normalize(frames, boxes, out_size, flip=flip, mean=MEAN, std=STD)
    ref = crop_resize_normalize_reference(frames, boxes, out_size, flip=flip, mean=MEAN, std=STD)
    oh, ow = (out_size, out_size) if isinstance(out_size, int) else out_size
    assert out.shape == (3, 3, 4, oh, ow) and out.dtype == torch.float32
    _close(out, ref)


def test_reference_is_plain_f_interpolate_of_the_crop():
    # Guard the reference itself: one clip, one frame, spelled out with F.interpolate.
    frames = _frames(n=1, t=1)
    y0, x0, h, w = 5, 9, 30, 41
    crop = torch.from_numpy(frames[0, 0, y0:y0 + h, x0:x0 + w]).permute(2, 0, 1)[None].float()
    expect = F.interpolate(crop, size=(16, 20), mode="bilinear", align_corners=False, antialias=False)[0]
    expect = (expect / 255.0 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    got = crop_resize_normalize(frames, [y0, x0, h, w], (16, 20), mean=MEAN, std=STD)
    _close(got[0, :, 0], expect)


def test_identity_box_returns_the_pixels():
    frames = _frames(n=2, t=3, h=12, w=10)
    out = crop_resize_normalize(frames, [0, 0, 12, 10], (12, 10), mean=(0, 0, 0), std=(1, 1, 1), scale=1.0)
    assert torch.equal(out, torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float())


def test_flip_mirrors_the_output():
    frames = _frames(n=2, t=2)
    box = [4, 6, 36, 50]
    plain = crop_resize_normalize(frames, box, (24, 30), flip=False, mean=MEAN, std=STD)
    flipped = crop_resize_normalize(frames, box, (24, 30), flip=True, mean=MEAN, std=STD)
    assert torch.equal(flipped, plain.flip(-1))
    mixed = crop_resize_normalize(frames, box, (24, 30), flip=np.array([False, True]), mean=MEAN, std=STD)
    assert torch.equal(mixed[0], plain[0]) and torch.equal(mixed[1], flipped[1])


def test_constant_frame_normalizes_to_known_value():
    frames = np.full((1, 2, 20, 20, 3), 200, dtype=np.uint8)
    out = crop_resize_normalize(frames, [2, 3, 11, 13], 8, mean=MEAN, std=STD)
    for c in range(3):
        expect = (200 / 255 - MEAN[c]) / STD[c]
        assert torch.allclose(out[0, c], torch.full((2, 8, 8), expect), atol=1e-5)


def test_single_channel_and_torch_input():
    frames = _frames(n=2, t=2, c=1)
    boxes = np.array([[0, 0, 48, 48], [10, 5, 30, 40]])
    a = crop_resize_normalize(torch.from_numpy(frames), torch.from_numpy(boxes), 16, mean=(0.5,), std=(0.25,))
    b = crop_resize_normalize_reference(frames, boxes, 16, mean=(0.5,), std=(0.25,))
    assert a.shape == (2, 1, 2, 16, 16)
    _close(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_outputs_are_rounded_float32(dtype):
    frames = _frames()
    boxes = sample_multiscale_boxes(48, 64, 3, seed=2, out_size=24)
    full = crop_resize_normalize(frames, boxes, 24, mean=MEAN, std=STD)
    half = crop_resize_normalize(frames, boxes, 24, mean=MEAN, std=STD, out_dtype=dtype)
    assert half.dtype == dtype
    assert torch.equal(half, full.to(dtype))


def test_bad_input_is_rejected_with_a_clear_error():
    frames = _frames(n=2)
    with pytest.raises(ValueError, match="outside the 48x64 frame"):
        crop_resize_normalize(frames, [[0, 0, 49, 10], [0, 0, 10, 10]], 8, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match=r"\(N, T, H, W, C\)"):
        crop_resize_normalize(frames[0], [0, 0, 10, 10], 8, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="uint8"):
        crop_resize_normalize(frames.astype(np.float32), [0, 0, 10, 10], 8, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="mean/std"):
        crop_resize_normalize(frames, [0, 0, 10, 10], 8, mean=(0.5,), std=(0.5,))


def test_empty_batch():
    out = crop_resize_normalize(np.zeros((0, 2, 8, 8, 3), np.uint8), np.zeros((0, 4), np.int64), 4, mean=MEAN, std=STD)
    assert out.shape == (0, 3, 2, 4, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_numba(dtype):
    frames = _frames(n=4, t=5, h=60, w=80)
    boxes = sample_multiscale_boxes(60, 80, 4, seed=5, out_size=48)
    flip = [False, True, True, False]
    cpu = crop_resize_normalize(frames, boxes, (48, 40), flip=flip, mean=MEAN, std=STD, out_dtype=dtype)
    gpu = crop_resize_normalize(frames, boxes, (48, 40), flip=flip, mean=MEAN, std=STD, device="cuda", out_dtype=dtype)
    assert gpu.is_cuda and gpu.dtype == dtype and gpu.shape == cpu.shape
    tol = 1e-5 if dtype == torch.float32 else (1e-2 if dtype == torch.float16 else 2e-2)
    torch.testing.assert_close(gpu.cpu().float(), cpu.float(), rtol=tol, atol=tol)


@pytest.mark.gpu
def test_cuda_reads_torch_cuda_tensors_in_place():
    frames = torch.from_numpy(_frames(n=2, t=3)).cuda()
    boxes = sample_multiscale_boxes(48, 64, 2, seed=9, out_size=32)
    gpu = crop_resize_normalize(frames, boxes, 32, flip=[True, False], mean=MEAN, std=STD, device="cuda")
    ref = crop_resize_normalize_reference(frames.cpu(), boxes, 32, flip=[True, False], mean=MEAN, std=STD)
    torch.testing.assert_close(gpu.cpu(), ref, rtol=1e-5, atol=1e-5)


def test_crop_benchmark_runs():
    from fastvid.benchmarks.crop import CropBench, run_benchmark

    result = run_benchmark(CropBench(device="cpu", batch=2, clip_len=2, height=48, width=64, out_size=32, repeats=1,
                                     progress=False))
    impls = {r["implementation"] for r in result["results"]}
    assert impls == {"numba", "torch_interpolate"}
    assert all(r["clips_per_s"] > 0 for r in result["results"])
    assert result["speedup_vs_torch_interpolate"]["fused_cpu_vs_torch_interpolate"] > 0
