"""`fastvid bench loader`: clips/s, data-wait, CPU% and GPU utilization of the loaders vs a torchvision-style baseline.

    fastvid bench loader --shards shards/train --backends dali,pyav,baseline --device cpu --json loader.json

Every backend reads the same videos in the same run: "dali" and "pyav" from the shard set, "baseline"
(fastvid.data.baseline: PyAV random access into the original files, torch transforms, DataLoader) from
the files named by the samples' json "source" (or found under --videos). Without --shards, a
Kinetics-like set is generated in --work-dir (320x240 H.264 clips of 10 s at 25 fps, sharded to VP9
for the CPU or H.264 for the GPU). Ratios are clips/s over the baseline's clips/s in the same run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fastvid import _gpu
from fastvid.benchmarks.common import device_info, write_json

DEFAULTS = dict(batch_size=16, clip_len=16, frame_stride=2, preset="video_resnet", batches=20, warmup=2)


def add_arguments(p):
    p.add_argument("--shards", default=None, help="shard set directory (default: generate one in --work-dir)")
    p.add_argument("--videos", default=None, help="where the original videos are, for the baseline (default: json 'source')")
    p.add_argument("--backends", default="dali,pyav,baseline", help="comma-separated: dali, pyav, baseline")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--clip-len", type=int, default=DEFAULTS["clip_len"])
    p.add_argument("--frame-stride", type=int, default=DEFAULTS["frame_stride"])
    p.add_argument("--preset", default=DEFAULTS["preset"])
    p.add_argument("--batches", type=int, default=DEFAULTS["batches"], help="timed batches per backend (after warm-up)")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="untimed batches first")
    p.add_argument("--workers", type=int, default=None, help="threads (DALI) / worker processes (PyAV, baseline); default: cores")
    p.add_argument("--repeats", type=int, default=1, help="measure every backend this many times, interleaved; report medians")
    p.add_argument("--step-ms", type=float, default=0.0, help="simulated training step per batch, to measure data-wait")
    p.add_argument("--work-dir", default="bench_work/loader", help="where the generated videos and shards are kept")
    p.add_argument("--num-videos", type=int, default=60, help="videos to generate without --shards")
    p.add_argument("--shard-short-side", type=int, default=None,
                   help="without --shards: shard the generated videos at this short side (e.g. 128 for video_resnet)")
    p.add_argument("--json", default=None, help="result JSON path ('-' prints it)")


def make_dataset(work_dir, *, num_videos=60, num_frames=250, height=240, width=320, fps=25, codec="vp9", gop=50,
                 short_side: int | None = None) -> tuple[Path, Path]:
    """Kinetics-like source videos (H.264, keyframe every 2 s) and their shard set; reused when present.

    `short_side` re-encodes the shards at that short side (`fastvid shard --short-side`), the usual
    practice when a recipe trains at low resolution anyway (video_resnet resizes to 128x171).
    """
    import numpy as np

    from fastvid import cli
    from fastvid.synth import MOTION_CLASSES, motion_clip, write_video

    work_dir = Path(work_dir)
    src = work_dir / f"videos_{num_videos}x{num_frames}_{width}x{height}"
    out = work_dir / f"shards_{codec}_{num_videos}x{num_frames}_{width}x{height}" if short_side is None else \
        work_dir / f"shards_{codec}_{num_videos}x{num_frames}_{width}x{height}_ss{short_side}"
    if not (src / ".complete").exists():
        rng = np.random.default_rng(0)
        classes = list(MOTION_CLASSES)
        for i in range(num_videos):
            name = classes[i % len(classes)]
            path = src / name / f"{name}_{i:04d}.mp4"
            if not path.exists():
                tmp = path.with_name("tmp_" + path.name)
                write_video(tmp, motion_clip(name, num_frames, height, width, rng), fps=fps, codec="h264", gop=gop)
                tmp.replace(path)
        (src / ".complete").write_text("ok\n")
    if not (out / "manifest.json").exists():
        resize = ["--short-side", str(short_side)] if short_side else []
        code = cli.main(["shard", "videos", str(src), str(out), "--codec", codec, "--max-samples", "32", "--workers", "2", *resize])
        if code:
            raise RuntimeError(f"sharding {src} into {out} failed")
    return src, out


class _CpuClock:
    """CPU seconds of this process and its worker processes between start() and stop().

    Live children are followed by pid; children that exit in between (DataLoader workers at an epoch
    end) are counted through os.times() once reaped.
    """

    def __init__(self):
        import psutil

        self.me = psutil.Process()

    def _snapshot(self):
        import os

        live = {}
        for child in self.me.children(recursive=True):
            try:
                t = child.cpu_times()
                live[child.pid] = t.user + t.system
            except Exception:
                pass
        own = self.me.cpu_times()
        reaped = os.times()
        return own.user + own.system, reaped.children_user + reaped.children_system, live

    def start(self):
        self.t0 = self._snapshot()
        return self

    def stop(self) -> float:
        own0, reaped0, live0 = self.t0
        own1, reaped1, live1 = self._snapshot()
        children = sum(t - live0.get(pid, 0.0) for pid, t in live1.items())
        return (own1 - own0) + (reaped1 - reaped0) + children


def describe_shards(shards) -> dict:
    """Samples, codec and frame size of a shard set (from its first sample's json), stored with the result."""
    from fastvid.data.shards import open_shard_set, sample_metadata

    shard_set = open_shard_set(shards)
    meta = sample_metadata(shard_set, 0, 0, first_nonempty=True)
    return {"num_samples": shard_set.num_samples, "codec": shard_set.codec, "width": meta.get("width"),
            "height": meta.get("height"), "fps": meta.get("fps"), "num_frames_first": meta.get("num_frames")}


def _measure(batches_iter, *, batches: int, warmup: int, step_s: float, clips_of, sync=None) -> dict:
    from fastvid.metrics import ResourceSampler

    it = iter(batches_iter)
    t_first = time.perf_counter()
    for _ in range(warmup):
        next(it)
    first_s = time.perf_counter() - t_first
    waits, clips = [], 0
    clock = _CpuClock().start()
    with ResourceSampler(interval=0.2) as sampler:
        t0 = time.perf_counter()
        for _ in range(batches):
            tw = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            if sync:
                sync()
            waits.append(time.perf_counter() - tw)
            clips += clips_of(batch)
            if step_s:
                time.sleep(step_s)
        elapsed = time.perf_counter() - t0
        cpu_seconds = clock.stop()
    res = sampler.summary()
    return {"clips": clips, "batches": len(waits), "seconds": round(elapsed, 3), "clips_per_s": round(clips / elapsed, 2),
            "data_wait_ms_mean": round(1000 * sum(waits) / max(len(waits), 1), 2),
            "data_wait_fraction": round(sum(waits) / elapsed, 3), "warmup_s": round(first_s, 2),
            "cpu_percent": round(100 * cpu_seconds / elapsed, 1), "cpu_percent_sampler": res["cpu_percent"],
            "cpu_seconds_per_clip": round(cpu_seconds / max(clips, 1), 4), "gpu_util_mean": res["gpu_util_mean"], "rss_max_mb": round((res["rss_max_bytes"] or 0) / 2**20)}


def _endless(make_iter, first_epoch: int = 0):
    """Batches across epochs (a loader may have fewer batches per epoch than the benchmark wants)."""
    epoch = first_epoch
    while True:
        inner = iter(make_iter(epoch))
        yielded = False
        try:
            for batch in inner:
                yielded = True
                yield batch
        finally:
            close = getattr(inner, "close", None)
            if close:  # stops DALI pipelines and DataLoader workers now, not at garbage collection
                close()
        if not yielded:
            return
        epoch += 1


def run_benchmark(shards=None, *, videos=None, backends=("dali", "pyav", "baseline"), device="auto", work_dir="bench_work/loader",
                  quick=False, batch_size=DEFAULTS["batch_size"], clip_len=DEFAULTS["clip_len"], frame_stride=DEFAULTS["frame_stride"],
                  preset=DEFAULTS["preset"], batches=DEFAULTS["batches"], warmup=DEFAULTS["warmup"], workers=None, step_ms=0.0,
                  num_videos=60, shard_short_side=None, repeats=1) -> dict:
    """Measure each backend on the same videos; returns the result dict (also used by `fastvid bench all`)."""
    import os

    import torch

    from fastvid.data import VideoLoader
    from fastvid.data.baseline import baseline_loader, videos_from_shards

    device = _gpu.resolve_device(device)
    cuda = device.startswith("cuda")
    workers = workers or len(os.sched_getaffinity(0))
    if quick:
        batches, warmup, num_videos, batch_size = min(batches, 4), 1, min(num_videos, 24), min(batch_size, 8)
    generated = None
    if shards is None:
        src, shards = make_dataset(work_dir, num_videos=num_videos, num_frames=64 if quick else 250,
                                   codec="h264" if cuda else "vp9", short_side=shard_short_side)
        videos = videos or src
        generated = {"videos": str(src), "num_videos": num_videos, "frames": 64 if quick else 250, "size": "320x240",
                     "source_codec": "h264 (gop 50)", "shard_codec": "h264" if cuda else "vp9",
                     "shard_short_side": shard_short_side}
    sync = torch.cuda.synchronize if cuda else None
    result = {"device_info": device_info(), "device": device, "shards": str(shards), "shard_set": describe_shards(shards),
              "generated": generated,
              "config": {"batch_size": batch_size, "clip_len": clip_len, "frame_stride": frame_stride, "preset": preset,
                         "batches": batches, "warmup": warmup, "workers": workers, "step_ms": step_ms,
                         "repeats": repeats},
              "backends": {}}
    streams = {}
    for backend in backends:
        try:
            if backend == "baseline":
                vids = videos_from_shards(shards, videos)

                def make_iter(epoch, vids=vids):
                    loader = baseline_loader(vids, batch_size=batch_size, clip_len=clip_len, frame_stride=frame_stride,
                                             num_workers=workers, preset=preset, epoch=epoch)
                    for video, label in loader:
                        yield video.to(device, non_blocking=True), label

                streams[backend] = (make_iter, lambda b: b[0].shape[0])
            else:
                loader = VideoLoader(shards, batch_size=batch_size, clip_len=clip_len, frame_stride=frame_stride,
                                     preset=preset, backend=backend, device=device, num_threads=workers, num_workers=workers)

                def make_iter(epoch, loader=loader):
                    loader.set_epoch(epoch)
                    return iter(loader)

                streams[backend] = (make_iter, lambda b: b["video"].shape[0])
        except Exception as exc:  # e.g. DALI missing: the other backends still report
            result["backends"][backend] = {"error": f"{type(exc).__name__}: {exc}"}
    # Repeats interleave the backends, so a load change on a shared machine hits all of them; only one
    # backend runs at a time (its stream is closed, workers included, before the next one starts).
    runs: dict[str, list[dict]] = {b: [] for b in streams}
    for repeat in range(repeats):
        for backend, (make_iter, clips_of) in streams.items():
            print(f"bench loader: {backend} on {device} (run {repeat + 1}/{repeats}) ...", file=sys.stderr, flush=True)
            stream = _endless(make_iter, first_epoch=repeat)
            try:
                runs[backend].append(_measure(stream, batches=batches, warmup=warmup, step_s=step_ms / 1000,
                                              clips_of=clips_of, sync=sync))
            except Exception as exc:
                result["backends"][backend] = {"error": f"{type(exc).__name__}: {exc}"}
                break
            finally:
                stream.close()
            print(f"bench loader: {backend}: {runs[backend][-1]}", file=sys.stderr, flush=True)
    for backend, rs in runs.items():
        if rs and backend not in result["backends"]:
            median = sorted(rs, key=lambda r: r["clips_per_s"])[len(rs) // 2]
            result["backends"][backend] = {**median, "runs_clips_per_s": [r["clips_per_s"] for r in rs]}
    base = result["backends"].get("baseline", {}).get("clips_per_s")
    if base:
        result["speedup_vs_baseline"] = {b: round(r["clips_per_s"] / base, 2) for b, r in result["backends"].items()
                                         if b != "baseline" and "clips_per_s" in r}
    return result


def run(args) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"dali", "pyav", "baseline"}
    if unknown:
        raise ValueError(f"--backends: unknown {sorted(unknown)}; choose from dali, pyav, baseline")
    if args.shards is not None and not Path(args.shards).is_dir():
        raise FileNotFoundError(f"{args.shards}: shard set directory does not exist")
    result = run_benchmark(args.shards, videos=args.videos, backends=backends, device=args.device, work_dir=args.work_dir,
                           batch_size=args.batch_size, clip_len=args.clip_len, frame_stride=args.frame_stride,
                           preset=args.preset, batches=args.batches, warmup=args.warmup, workers=args.workers,
                           step_ms=args.step_ms, num_videos=args.num_videos, shard_short_side=args.shard_short_side,
                           repeats=args.repeats)
    write_json(result, args.json)
    rows = [f"{b}: {r['clips_per_s']} clips/s, data-wait {r['data_wait_ms_mean']} ms/batch, CPU {r['cpu_percent']}%"
            + (f", GPU {r['gpu_util_mean']}%" if r.get("gpu_util_mean") is not None else "")
            if "clips_per_s" in r else f"{b}: {r['error']}" for b, r in result["backends"].items()]
    print("\n".join(rows))
    if "speedup_vs_baseline" in result:
        print("speed-up vs baseline: " + ", ".join(f"{b} {x}x" for b, x in result["speedup_vs_baseline"].items()))
    return 0 if all("clips_per_s" in r for r in result["backends"].values()) else 1
