"""`fastvid bench crop`: clips/s of the fused multi-scale crop + resize + flip + normalize.

A batch of uint8 clips (N, T, H, W, 3) gets TSM multi-scale boxes and random flips, then goes through
`crop_resize_normalize` (Numba on cpu, one CUDA launch on cuda) and through the torch baseline in the
same run: per clip crop -> F.interpolate(bilinear) -> flip -> normalize, the way a torchvision-style
transform does it. Timings are interleaved round-robin; the median is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from fastvid.benchmarks.common import device_info, kernel_devices, median_seconds, write_json


def add_arguments(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "all"],
                   help="auto: cuda if visible, plus cpu")
    p.add_argument("--batch", type=int, default=8, help="clips per call")
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=340)
    p.add_argument("--out-size", type=int, default=224)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median reported)")
    p.add_argument("--json", default=None, help="write the result here ('-' prints it)")


@dataclass
class CropBench:
    """Options of `run_benchmark` (the CLI flags' defaults)."""

    device: str = "auto"          # "auto" (cuda if visible, plus cpu), "cpu", "cuda" or "all"
    batch: int = 8                # clips per call
    clip_len: int = 16
    height: int = 256             # input frame size
    width: int = 340
    out_size: int = 224           # square output side
    dtype: str = "float32"        # output dtype: float32, float16 or bfloat16
    repeats: int = 10             # timed calls per measurement (median reported)
    quick: bool = False           # shrink the batch and repeats: a smoke run
    progress: bool = True         # tqdm progress bar
    work_dir: str | None = None   # accepted for `bench all` (unused)


def run_benchmark(options: CropBench) -> dict:
    """Time the fused kernel and the torch F.interpolate baseline per device; returns a JSON-ready dict."""
    import torch
    from tqdm import tqdm

    from fastvid.video.boxes import sample_multiscale_boxes
    from fastvid.kernels import crop_resize_normalize, crop_resize_normalize_reference
    from fastvid.video.presets import IMAGENET_MEAN, IMAGENET_STD

    o = options
    if o.quick:
        o = replace(o, batch=min(o.batch, 2), clip_len=min(o.clip_len, 8), repeats=min(o.repeats, 3))
    out_dtype = getattr(torch, o.dtype)
    rng = np.random.default_rng(0)
    frames_np = rng.integers(0, 256, (o.batch, o.clip_len, o.height, o.width, 3), dtype=np.uint8)
    boxes = sample_multiscale_boxes(o.height, o.width, o.batch, seed=0, out_size=o.out_size)
    flip = rng.random(o.batch) < 0.5
    rows = []
    for dev in tqdm(kernel_devices(o.device, "crop"), desc="bench crop", disable=not o.progress):
        frames = torch.from_numpy(frames_np).to(dev)
        sync = torch.cuda.synchronize if dev == "cuda" else None
        fns = {
            "fused": lambda: crop_resize_normalize(frames, boxes, o.out_size, flip=flip, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=dev, out_dtype=out_dtype),
            "torch_interpolate": lambda: crop_resize_normalize_reference(frames, boxes, o.out_size, flip=flip, mean=IMAGENET_MEAN, std=IMAGENET_STD).to(out_dtype),
        }
        seconds, best = median_seconds(fns, o.repeats, sync, with_min=True)
        for impl, sec in seconds.items():
            rows.append({"device": dev, "implementation": impl if impl != "fused" else ("numba" if dev == "cpu" else "cupy cuda"),
                         "ms_per_batch": sec * 1e3, "clips_per_s": o.batch / sec,
                         "best_clips_per_s": o.batch / best[impl],
                         "speedup_vs_torch": seconds["torch_interpolate"] / sec})
    return {
        "benchmark": "crop",
        "device_info": device_info(),
        "config": {"batch": o.batch, "clip_len": o.clip_len, "height": o.height, "width": o.width, "out_size": o.out_size,
                   "dtype": o.dtype, "repeats": o.repeats, "statistic": "median",
                   "boxes": "sample_multiscale_boxes (TSM scales, 13 fixed offsets)", "input": "uint8 on the device"},
        "results": rows,
        "speedup_vs_torch_interpolate": {f"fused_{r['device']}_vs_torch_interpolate": r["speedup_vs_torch"]
                                         for r in rows if r["implementation"] != "torch_interpolate"},
    }


def format_table(result: dict) -> str:
    lines = [f"{'device':6} {'implementation':18} {'clips/s':>9} {'ms/batch':>9} {'x torch':>8}"]
    for r in result["results"]:
        lines.append(f"{r['device']:6} {r['implementation']:18} {r['clips_per_s']:9.1f} {r['ms_per_batch']:9.2f} "
                     f"{r['speedup_vs_torch']:8.2f}")
    return "\n".join(lines)


def run(args) -> int:
    result = run_benchmark(CropBench(device=args.device, batch=args.batch, clip_len=args.clip_len, height=args.height,
                                     width=args.width, out_size=args.out_size, dtype=args.dtype, repeats=args.repeats))
    print(format_table(result))
    cfg = result["config"]
    print(f"crop: {cfg['batch']}x{cfg['clip_len']} frames {cfg['height']}x{cfg['width']} -> {cfg['out_size']} "
          f"on {result['device_info']['device']}")
    write_json(result, args.json)
    return 0
