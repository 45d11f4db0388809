"""`fastvid doctor`: where does the time go between a shard set and a training step, and which knob moves it.

    fastvid doctor --shards shards/k400/train --model r2plus1d_18 --device cuda [--tune] --out doctor/

Times each stage on a sample of the shard set, one stage at a time, on the real components:
tar read (the .idx byte ranges), demux (all PyAV packets of the video, no decoding), decode (the
clip's frames from the keyframe before them, PyAV), crop/resize/normalize (fastvid.video.pixels on the device), host-to-device (a uint8
batch), training step (forward, backward, optimizer on one batch replayed: the replay ceiling, the
rate the model alone sustains), and the loader end to end with the chosen backend. CPU-side stages
are scaled by the loader's parallelism (workers/threads). The stage with the lowest rate is the
bottleneck; the report names it in one line with the knob that moves it. `--tune` tries a few
thread/prefetch settings on the real loader and reports the best. Output: a table on stdout,
doctor.json and doctor.png in --out.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fastvid.store.atomic import atomic_path

STAGES = ("tar read", "demux", "decode", "crop/resize/normalize", "host-to-device", "training step")

KNOBS = {
    "tar read": "prefetch (--prefetch) and storage: read larger shards sequentially, keep them on local disk",
    "demux": "shard GOP: re-shard with a shorter --gop (less to demux per clip) or use an NVDEC backend",
    "decode": "backend (an NVDEC backend on GPU), threads/workers, or a smaller shard short side (--short-side) / --gop",
    "crop/resize/normalize": "backend (one that does the pixel work on the GPU: dali, pynvvideocodec) or more threads",
    "host-to-device": "prefetch (pinned memory, non-blocking copies) or a backend that decodes on the GPU",
    "training step": "none on the data side: the model is the limit (AMP, channels-last, --compile, batch size)",
}


def sig(x: float, digits: int = 3) -> str:
    """`x` with `digits` significant digits, never in exponent form and never a rounded-off zero:
    0.5 -> "0.5", 0.01234 -> "0.0123", 12.34 -> "12.3", 1234.7 -> "1235" (whole numbers past `digits` stay whole)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"  # "0", "inf", "nan"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    if decimals <= 0:
        return f"{x:.0f}"
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".")


def add_arguments(p):
    p.add_argument("--shards", required=True, help="shard set directory")
    p.add_argument("--model", default="r3d_18", help="model name (fastvid.train.models.list_models())")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    from fastvid.pipeline import backends

    p.add_argument("--backend", default="auto", choices=["auto", *backends.names("video")], help="loader backend to diagnose (default: what auto picks)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--clip-len", type=int, default=16)
    p.add_argument("--frame-stride", type=int, default=2)
    p.add_argument("--preset", default="video_resnet")
    p.add_argument("--samples", type=int, default=16, help="samples timed per stage")
    p.add_argument("--batches", type=int, default=6, help="loader batches timed end to end")
    p.add_argument("--workers", type=int, default=None, help="loader threads/workers (default: cores)")
    p.add_argument("--model-width", type=int, default=None, help="model width (default: the model's; small = quick CPU runs)")
    p.add_argument("--tune", action="store_true", help="also try threads x prefetch settings on the loader")
    p.add_argument("--out", default="doctor", help="directory for doctor.json and doctor.png")


def _time_stages(shard_set, config, work, device) -> dict:
    """Seconds per clip of read, demux, decode and pixels over the sampled work items (one at a time)."""
    import io

    import av
    import numpy as np
    import torch

    from fastvid.video import pixels
    from fastvid.video.plan import plan_work
    from fastvid.video.reader import read_sample
    from fastvid.video.pyav_backend import decode_frames

    totals = dict.fromkeys(("tar read", "demux", "decode", "crop/resize/normalize"), 0.0)
    clips = 0
    scale, shift = pixels.normalization_tensors(config.preset, device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for item in work:
        t0 = time.perf_counter()
        key, data, _, meta = read_sample(shard_set, item)
        t1 = time.perf_counter()
        with av.open(io.BytesIO(data)) as container:
            for _ in container.demux(container.streams.video[0]):
                pass
        t2 = time.perf_counter()
        plan = plan_work(config, meta, key, 0, item)
        unique, positions = pixels.distinct_frames(plan.frames)
        t3 = time.perf_counter()
        decoded = decode_frames(data, unique)
        t4 = time.perf_counter()
        frames = torch.from_numpy(np.stack([decoded[int(i)] for i in unique])).to(device)
        sync()
        t5 = time.perf_counter()
        out = pixels.clips_from_frames(frames, positions, plan.boxes, plan.flips, plan.out_size)
        pixels.normalize_clips(out, scale, shift, device, torch.float32, False)
        sync()
        t6 = time.perf_counter()
        totals["tar read"] += t1 - t0
        totals["demux"] += t2 - t1  # the whole stream: what a decoder that seeks badly pays at most
        totals["decode"] += t4 - t3  # the clip's frames from the keyframe before them (its packets included)
        totals["crop/resize/normalize"] += t6 - t5
        clips += positions.shape[0]
    return {k: v / max(clips, 1) for k, v in totals.items()}


def _time_h2d(batch_uint8, device, repeats: int = 5) -> float:
    """Seconds per clip to move a uint8 batch to the device (pinned, as the loaders do); a copy on the CPU."""
    import torch

    cuda = str(device).startswith("cuda")
    src = batch_uint8.pin_memory() if cuda else batch_uint8
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst = src.to(device, non_blocking=True) if cuda else src.clone()
    if cuda:
        torch.cuda.synchronize()
    del dst
    return (time.perf_counter() - t0) / (repeats * batch_uint8.shape[0])


def _replay_step(model, batch, device, steps: int = 3) -> float:
    """Seconds per clip of forward + backward + SGD step on one batch, replayed (the model-only ceiling)."""
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    video, label = batch["video"], batch["label"]
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(video), label)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, kernels
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / (steps * video.shape[0])


def _loader_rate(make_loader, batches: int) -> tuple[float, dict]:
    loader = make_loader()
    try:
        it = iter(loader)
        next(it)  # warm-up: workers, pipeline
        t0 = time.perf_counter()
        n = 0
        for _ in range(batches):
            b = next(it, None)
            if b is None:
                break
            n += b["video"].shape[0]
        rate = n / (time.perf_counter() - t0)
        it.close()
        return rate, loader.stage_stats.seconds()
    finally:
        loader.close()


@dataclass(frozen=True)
class DoctorOptions:
    """What `diagnose` times and how (the `fastvid doctor` flags besides --shards and --out; defaults as the CLI's)."""

    model: str = "r3d_18"
    model_width: int | None = None  # None: the model's own width
    device: str = "auto"
    backend: str = "auto"  # "auto": what the loader picks
    batch_size: int = 8
    clip_len: int = 16
    frame_stride: int = 2
    preset: str = "video_resnet"
    samples: int = 16  # samples timed per stage
    batches: int = 6  # loader batches timed end to end
    workers: int | None = None  # None: the cores
    tune: bool = False  # also try threads x prefetch settings on the loader


def diagnose(shards, options: DoctorOptions | None = None) -> dict:
    """Time every stage of `shards` into the model, name the bottleneck and its knob (doctor.json's content)."""
    import torch

    from fastvid import _gpu
    from fastvid.benchmarks.common import device_info
    from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader
    from fastvid.pipeline import backends
    from fastvid.train.models import get_model

    o = options or DoctorOptions()
    device = _gpu.resolve_device(o.device)
    workers = o.workers or backends.cpu_count()

    def make_loader(threads=workers, prefetch=2):
        n = min(threads, workers) if threads else workers
        return VideoLoader(shards, o.batch_size, ClipSampling(clip_len=o.clip_len, frame_stride=o.frame_stride), seed=0,
                           augmentation=Augmentation(o.preset), output=Output(device=device),
                           execution=Execution(backend=o.backend, num_threads=n, num_workers=n, prefetch=prefetch))

    probe = make_loader()
    chosen = probe.backend
    work = probe.epoch_work(0)[:o.samples]
    per_clip = _time_stages(probe.shard_set, probe.config, work, device)
    batch = next(iter(probe))
    probe.close()
    uint8 = torch.randint(0, 256, (batch["video"].shape[0], o.clip_len, *batch["video"].shape[-2:], 3), dtype=torch.uint8)
    per_clip["host-to-device"] = _time_h2d(uint8, device)
    kwargs = {"width": o.model_width} if o.model_width else {}
    net = get_model(o.model, num_classes=max(probe.num_classes, 2), **kwargs).to(device)
    per_clip["training step"] = _replay_step(net, batch, device)
    # CPU stages run on `workers` processes/threads at once; device stages run one at a time.
    parallel = {"tar read": workers, "demux": workers, "decode": workers, "crop/resize/normalize": workers if device == "cpu" else 1,
                "host-to-device": 1, "training step": 1}
    rates = {s: parallel[s] / per_clip[s] if per_clip[s] > 0 else float("inf") for s in STAGES}
    loader_rate, loader_stages = _loader_rate(make_loader, o.batches)
    bottleneck = min(STAGES, key=lambda s: rates[s])
    data_bound = loader_rate < rates["training step"]
    if not data_bound:
        bottleneck = "training step"
    line = summary_line(bottleneck, rates, loader_rate, chosen)
    result = {
        "device_info": device_info(), "device": device, "shards": str(shards), "model": o.model, "backend": chosen,
        "config": {"batch_size": o.batch_size, "clip_len": o.clip_len, "frame_stride": o.frame_stride, "preset": o.preset,
                   "samples": len(work), "batches": o.batches, "workers": workers},
        "stages": {s: {"ms_per_clip": float(sig(1000 * per_clip[s])), "parallelism": parallel[s],
                       "clips_per_s": float(sig(rates[s]))}
                   for s in STAGES},
        "loader_clips_per_s": float(sig(loader_rate)), "loader_stage_s": {k: float(sig(v)) for k, v in loader_stages.items()},
        "replay_ceiling_clips_per_s": float(sig(rates["training step"])), "data_bound": data_bound,
        "bottleneck": bottleneck, "knob": KNOBS[bottleneck], "summary": line,
    }
    if o.tune:
        trials = []
        for threads in sorted({1, max(1, workers // 2), workers}):
            for prefetch in (2, 4):
                rate, _ = _loader_rate(lambda t=threads, p=prefetch: make_loader(t, p), o.batches)
                trials.append({"threads": threads, "prefetch": prefetch, "clips_per_s": float(sig(rate))})
        best = max(trials, key=lambda t: t["clips_per_s"])
        result["tune"] = {"trials": trials, "best": best}
    return result


def summary_line(bottleneck: str, rates: dict, loader_rate: float, backend: str) -> str:
    """The one line that names the bottleneck, the rates behind it and the knob that moves it."""
    return (f"bottleneck: {bottleneck} ({sig(rates[bottleneck])} clips/s; loader {sig(loader_rate)} clips/s with backend "
            f"{backend!r}, model alone {sig(rates['training step'])} clips/s) -> knob: {KNOBS[bottleneck]}")


def write_png(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["stages"]) + ["loader (end to end)"]
    rates = [result["stages"][s]["clips_per_s"] for s in result["stages"]] + [result["loader_clips_per_s"]]
    colors = ["tab:red" if s == result["bottleneck"] else "tab:blue" for s in result["stages"]] + ["tab:gray"]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.barh(range(len(names)), rates, color=colors)
    for i, v in enumerate(rates):
        ax.text(v, i, f" {sig(v)}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("clips/s the stage sustains (log scale)")
    ax.set_title(f"fastvid doctor: {result['model']} on {result['device']}, backend {result['backend']}\n"
                 f"bottleneck: {result['bottleneck']}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def table(result: dict) -> str:
    rows = [f"{'stage':<24}{'ms/clip':>10}{'parallel':>10}{'clips/s':>12}"]
    for s, r in result["stages"].items():
        mark = "  <- bottleneck" if s == result["bottleneck"] else ""
        rows.append(f"{s:<24}{sig(r['ms_per_clip']):>10}{r['parallelism']:>10}{sig(r['clips_per_s']):>12}{mark}")
    rows.append(f"{'loader end to end':<24}{'':>10}{'':>10}{sig(result['loader_clips_per_s']):>12}")
    rows.append(result["summary"])
    if "tune" in result:
        best = result["tune"]["best"]
        rows.append(f"tune: best threads={best['threads']} prefetch={best['prefetch']} ({sig(best['clips_per_s'])} clips/s)")
    return "\n".join(rows)


def run(args) -> int:
    from fastvid.benchmarks.common import write_json

    if not Path(args.shards).is_dir():
        raise FileNotFoundError(f"{args.shards}: shard set directory does not exist")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"doctor: timing stages of {args.shards} ...", file=sys.stderr, flush=True)
    options = DoctorOptions(model=args.model, model_width=args.model_width, device=args.device, backend=args.backend,
                            batch_size=args.batch_size, clip_len=args.clip_len, frame_stride=args.frame_stride,
                            preset=args.preset, samples=args.samples, batches=args.batches, workers=args.workers,
                            tune=args.tune)
    result = diagnose(args.shards, options)
    write_json(result, out / "doctor.json")
    write_png(result, out / "doctor.png")
    print(table(result))
    print(f"doctor: {out / 'doctor.json'}, {out / 'doctor.png'}")
    return 0
