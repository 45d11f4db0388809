"""`fastvid bench loader`: every loader backend side by side, in steady state, vs a torchvision-style baseline.

    fastvid bench loader --shards shards/train --device cuda --json loader.json       # every available backend
    fastvid bench loader --backends dali,pyav,baseline --device cpu

Every backend reads the same videos in the same run: the registered backends (fastvid.pipeline.backends)
that can decode the shard set on the device, from the shards; "dali-video" (DALI's own
`fn.readers.video` on the original files, the "DALI alone" peer) and "baseline" (fastvid.benchmarks.baseline:
PyAV random access into the original files, torch transforms, DataLoader) from the files named by the
samples' json "source" (or found under --videos). Without --shards, a Kinetics-like set is generated
in --work-dir (320x240 H.264 clips of 10 s at 25 fps, sharded to VP9 for the CPU or H.264 for the GPU),
large enough for one epoch of >= 30 batches, so a measurement is not dominated by epoch starts.
Loaders are built once per backend and kept across epochs and repeats (persistent workers and
pipelines), as in training. Reported per backend: clips/s, data wait, CPU cores used (psutil),
GPU and NVDEC utilization (pynvml, on GPU), and per-stage seconds per clip where the backend
reports them. Ratios are clips/s over the baseline's clips/s in the same run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from fastvid import _gpu
from fastvid.benchmarks.common import device_info, write_json

DEFAULTS = dict(batch_size=16, clip_len=16, frame_stride=2, preset="video_resnet", batches=30, warmup=3, num_videos=480)
PEERS = ("dali-video", "baseline")  # not fastvid backends: measured alongside them


def add_arguments(p):
    p.add_argument("--shards", default=None, help="shard set directory (default: generate one in --work-dir)")
    p.add_argument("--videos", default=None, help="where the original videos are, for the baseline (default: json 'source')")
    p.add_argument("--backends", default="all", help="comma-separated backends (fastvid.pipeline.backends) and peers "
                   "(dali-video, baseline); 'all' = every backend that can decode the shards here, plus the peers")
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
    p.add_argument("--num-videos", type=int, default=DEFAULTS["num_videos"],
                   help="videos to generate without --shards (default: 30 batches of the default batch size)")
    p.add_argument("--shard-short-side", type=int, default=None,
                   help="without --shards: shard the generated videos at this short side (e.g. 128 for video_resnet)")
    p.add_argument("--json", default=None, help="result JSON path ('-' prints it)")


def make_dataset(work_dir, *, num_videos=60, num_frames=250, height=240, width=320, fps=25, codec="vp9", gop=50,
                 short_side: int | None = None) -> tuple[Path, Path]:
    """Kinetics-like source videos (H.264, keyframe every 2 s) and their shard set; reused when present.

    `short_side` re-encodes the shards at that short side (`fastvid shard --short-side`), the usual
    practice when a recipe trains at low resolution anyway (video_resnet resizes to 128x171).
    """
    from fastvid.video.synth import MOTION_CLASSES

    work_dir = Path(work_dir)
    src = work_dir / f"videos_{num_videos}x{num_frames}_{width}x{height}"
    out = work_dir / f"shards_{codec}_{num_videos}x{num_frames}_{width}x{height}" if short_side is None else \
        work_dir / f"shards_{codec}_{num_videos}x{num_frames}_{width}x{height}_ss{short_side}"
    if not (src / ".complete").exists():
        import concurrent.futures

        from fastvid.pipeline.backends import cpu_count

        classes = list(MOTION_CLASSES)
        jobs = [(src / classes[i % len(classes)] / f"{classes[i % len(classes)]}_{i:04d}.mp4", classes[i % len(classes)], i)
                for i in range(num_videos)]
        jobs = [j for j in jobs if not j[0].exists()]
        # One process per core: generating (and encoding) a 480-video default set is minutes on one core.
        with concurrent.futures.ProcessPoolExecutor(max(1, min(cpu_count(), len(jobs) or 1))) as pool:
            for f in [pool.submit(_make_video, path, name, i, num_frames, height, width, fps, gop) for path, name, i in jobs]:
                f.result()
        (src / ".complete").write_text("ok\n")
    if not (out / "manifest.json").exists():
        from fastvid.pipeline.backends import cpu_count

        import argparse

        from fastvid.video import cli as shard_videos

        resize = ["--short-side", str(short_side)] if short_side else []
        parser = argparse.ArgumentParser()
        shard_videos.add_arguments(parser)
        shard_videos.run(parser.parse_args([str(src), str(out), "--codec", codec, "--max-samples", "32",
                                            "--workers", str(cpu_count()), *resize]))
    return src, out


def _make_video(path: Path, name: str, index: int, num_frames: int, height: int, width: int, fps: int, gop: int) -> None:
    """One generated source video (seeded by its index, so a set is the same however it is split over processes)."""
    import numpy as np

    from fastvid.video.synth import motion_clip, write_video

    tmp = path.with_name("tmp_" + path.name)  # keeps the suffix: write_video picks the container from it
    try:
        write_video(tmp, motion_clip(name, num_frames, height, width, np.random.default_rng(index)), fps=fps, codec="h264",
                    gop=gop)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    from fastvid.video.reader import open_shard_set, sample_metadata

    shard_set = open_shard_set(shards)
    meta = sample_metadata(shard_set, 0, 0, first_nonempty=True)
    return {"num_samples": shard_set.num_samples, "codec": shard_set.codec, "width": meta.get("width"),
            "height": meta.get("height"), "fps": meta.get("fps"), "num_frames_first": meta.get("num_frames")}


class _DecoderUtil:
    """Mean NVDEC utilization (%) over a window, sampled from NVML on a thread; None without a GPU."""

    def __init__(self, device: str, interval: float = 0.2):
        import threading

        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        self._handle = None
        if not str(device).startswith("cuda"):
            return
        try:
            import pynvml
            import torch

            from fastvid.metrics import _nvml_handle_for_cuda_index

            pynvml.nvmlInit()
            index = torch.device(device).index
            self._nvml = pynvml
            self._handle = _nvml_handle_for_cuda_index(pynvml, torch.cuda.current_device() if index is None else index,
                                                       pynvml.nvmlDeviceGetCount())
        except Exception:  # no NVML: the column stays empty
            self._handle = None

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.samples.append(int(self._nvml.nvmlDeviceGetDecoderUtilization(self._handle)[0]))
            except Exception:
                return

    def __enter__(self):
        import threading

        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def _measure(batches_iter, *, batches: int, warmup: int, step_s: float, clips_of, sync=None, stages=None, device="cpu") -> dict:
    """Time `batches` batches after `warmup`; `stages()` returns the backend's cumulative stage seconds (or None)."""
    from fastvid.metrics import ResourceSampler

    it = iter(batches_iter)
    t_first = time.perf_counter()
    for _ in range(warmup):
        next(it)
    first_s = time.perf_counter() - t_first
    waits, clips = [], 0
    stage0 = dict(stages() or {}) if stages else {}
    clock = _CpuClock().start()
    with ResourceSampler(interval=0.2) as sampler, _DecoderUtil(device) as nvdec:
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
    stage1 = dict(stages() or {}) if stages else {}
    # Stage seconds are summed over workers/threads: per clip they say where the work goes, not wall time.
    per_clip = {k: round(1000 * (v - stage0.get(k, 0.0)) / max(clips, 1), 3) for k, v in stage1.items()}
    return {"clips": clips, "batches": len(waits), "seconds": round(elapsed, 3), "clips_per_s": round(clips / elapsed, 2),
            "data_wait_ms_mean": round(1000 * sum(waits) / max(len(waits), 1), 2),
            "data_wait_fraction": round(sum(waits) / elapsed, 3), "warmup_s": round(first_s, 2),
            "cpu_percent": round(100 * cpu_seconds / elapsed, 1), "cpu_cores_used": round(cpu_seconds / elapsed, 2),
            "cpu_percent_sampler": res["cpu_percent"], "cpu_seconds_per_clip": round(cpu_seconds / max(clips, 1), 4),
            "stage_ms_per_clip": per_clip or None, "gpu_util_mean": res["gpu_util_mean"], "nvdec_util_mean": nvdec.mean,
            "rss_max_mb": round((res["rss_max_bytes"] or 0) / 2**20)}


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
            if close:  # ends the epoch now (DataLoader iterators, DALI epochs), not at garbage collection
                close()
        if not yielded:
            return
        epoch += 1


def dali_video_peer(files: list[tuple[str, int]], *, batch_size: int, clip_len: int, frame_stride: int, preset: str,
                    device: str, num_threads: int):
    """DALI's own `fn.readers.video` on the original files (resize, crop, normalize on the device): the
    "DALI alone" peer. Returns make_iter(epoch) -> batches of (video, label); GPU reader on CUDA,
    `fn.experimental.readers.video` on the CPU."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    from fastvid.video.presets import get_preset, normalization

    p = get_preset(preset)
    mean, std = normalization(p)
    cuda = str(device).startswith("cuda")
    import torch

    device_id = (torch.device(device).index or 0) if cuda else None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=0, prefetch_queue_depth=2)
    def pipeline():
        kw = dict(filenames=[f for f, _ in files], labels=[lb for _, lb in files], sequence_length=clip_len,
                  stride=frame_stride, random_shuffle=True, initial_fill=min(256, len(files)), name="reader")
        if cuda:
            video, label = fn.readers.video(device="gpu", file_list_include_preceding_frame=False, **kw)
        else:
            video, label = fn.experimental.readers.video(device="cpu", **kw)
        video = fn.resize(video, size=list(p.resize_size), antialias=True)
        video = fn.crop_mirror_normalize(video, crop=list(p.crop_size), mean=mean.tolist(), std=std.tolist(),
                                         dtype=types.FLOAT, output_layout="CFHW")
        return video, label

    pipe = pipeline()
    pipe.build()
    iterator = DALIGenericIterator([pipe], ["video", "label"], reader_name="reader", auto_reset=True)

    def make_iter(epoch):
        for out in iterator:
            yield out[0]["video"], out[0]["label"]

    return make_iter


def available_backends(shard_set, device: str) -> list[str]:
    """Registered backends that can decode this shard set on `device`, in the registry's order."""
    from fastvid.pipeline import backends
    from fastvid.video.reader import sample_metadata

    meta = sample_metadata(shard_set, 0, 0, first_nonempty=True)
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    names = []
    for name in backends.names("video"):
        spec = backends.spec("video", name)
        try:
            if spec.can_decode(shard_set.codec, kind, meta.get("width"), meta.get("height")):
                names.append(name)
        except Exception:
            pass
    return names


@dataclass
class LoaderBench:
    """Options of `run_benchmark` (the CLI flags' defaults)."""

    shards: str | Path | None = None           # shard set directory (None: generate one in work_dir)
    videos: str | Path | None = None           # the original videos, for the peers (None: json "source")
    backends: tuple[str, ...] = ("all",)       # backends and peers; "all": every one that can decode the set
    device: str = "auto"
    work_dir: str = "bench_work/loader"        # where the generated videos and shards are kept
    quick: bool = False                        # fewer batches and videos: a smoke run
    batch_size: int = DEFAULTS["batch_size"]
    clip_len: int = DEFAULTS["clip_len"]
    frame_stride: int = DEFAULTS["frame_stride"]
    preset: str = DEFAULTS["preset"]
    batches: int = DEFAULTS["batches"]         # timed batches per backend (after warm-up)
    warmup: int = DEFAULTS["warmup"]           # untimed batches first
    workers: int | None = None                 # threads (DALI) / worker processes (PyAV, baseline); None: cores
    step_ms: float = 0.0                       # simulated training step per batch, to measure data-wait
    num_videos: int = DEFAULTS["num_videos"]   # videos to generate without shards
    shard_short_side: int | None = None        # without shards: shard the generated videos at this short side
    repeats: int = 1                           # runs per backend, interleaved; medians reported


def run_benchmark(options: LoaderBench) -> dict:
    """Measure each backend on the same videos; returns the result dict (also used by `fastvid bench all`)."""
    from fastvid.pipeline import backends as registry

    o = replace(options, device=_gpu.resolve_device(options.device), workers=options.workers or registry.cpu_count())
    if o.quick:
        o = replace(o, batches=min(o.batches, 4), warmup=1, num_videos=min(o.num_videos, 24), batch_size=min(o.batch_size, 8))
    generated = None
    if o.shards is None:
        o, generated = _generate(o)
    wanted = _wanted_backends(o)
    result = {"device_info": device_info(), "device": o.device, "shards": str(o.shards), "shard_set": describe_shards(o.shards),
              "generated": generated,
              "config": {"batch_size": o.batch_size, "clip_len": o.clip_len, "frame_stride": o.frame_stride, "preset": o.preset,
                         "batches": o.batches, "warmup": o.warmup, "workers": o.workers, "step_ms": o.step_ms,
                         "repeats": o.repeats, "backends": wanted},
              "backends": {}}
    factories = _factories(wanted, o, result)
    runs = _steady_state_runs(factories, o, result)
    for backend, rs in runs.items():
        if rs and backend not in result["backends"]:
            median = sorted(rs, key=lambda r: r["clips_per_s"])[len(rs) // 2]
            result["backends"][backend] = {**median, "runs_clips_per_s": [r["clips_per_s"] for r in rs]}
    _first_batch_times(factories, result, o.repeats)
    base = result["backends"].get("baseline", {}).get("clips_per_s")
    if base:
        result["speedup_vs_baseline"] = {b: round(r["clips_per_s"] / base, 2) for b, r in result["backends"].items()
                                         if b != "baseline" and "clips_per_s" in r}
    return result


def _generate(o: LoaderBench) -> tuple[LoaderBench, dict]:
    """A Kinetics-like set made (or reused) in work_dir: the options with its shards (and videos), and its description."""
    cuda = o.device.startswith("cuda")
    src, shards = make_dataset(o.work_dir, num_videos=o.num_videos, num_frames=64 if o.quick else 250,
                               codec="h264" if cuda else "vp9", short_side=o.shard_short_side)
    generated = {"videos": str(src), "num_videos": o.num_videos, "frames": 64 if o.quick else 250, "size": "320x240",
                 "source_codec": "h264 (gop 50)", "shard_codec": "h264" if cuda else "vp9",
                 "shard_short_side": o.shard_short_side}
    return replace(o, shards=shards, videos=o.videos or src), generated


def _wanted_backends(o: LoaderBench) -> list[str]:
    """The backends asked for, with "all" expanded to every backend that decodes the set here, plus the peers."""
    from fastvid.video.reader import open_shard_set

    wanted = list(o.backends)
    if "all" in wanted:
        cuda = o.device.startswith("cuda")
        wanted = [b for b in wanted if b != "all"]
        wanted += [b for b in available_backends(open_shard_set(o.shards), o.device) if b not in wanted]
        # DALI's CPU video reader cannot decode the H.264 source files: its peer runs on the GPU only.
        wanted += [b for b in PEERS if b not in wanted and (b != "dali-video" or (cuda and _gpu.dali_available()))]
    return wanted


def _steady_state_runs(factories: dict, o: LoaderBench, result: dict) -> dict[str, list[dict]]:
    """backend -> its `repeats` measurements; a backend that fails gets its error in result["backends"]."""
    import torch

    sync = torch.cuda.synchronize if o.device.startswith("cuda") else None
    streams, loaders = _streams(factories, o.device, o.quick)
    # Repeats interleave the backends, so a load change on a shared machine hits all of them; only one
    # backend runs at a time (its epoch is closed before the next backend starts; persistent workers idle).
    runs: dict[str, list[dict]] = {b: [] for b in streams}
    try:
        for repeat in range(o.repeats):
            for backend, (make_iter, clips_of, stages) in streams.items():
                if backend in result["backends"]:
                    continue
                print(f"bench loader: {backend} on {o.device} (run {repeat + 1}/{o.repeats}) ...", file=sys.stderr, flush=True)
                stream = _endless(make_iter, first_epoch=repeat)
                try:
                    runs[backend].append(_measure(stream, batches=o.batches, warmup=o.warmup, step_s=o.step_ms / 1000,
                                                  clips_of=clips_of, sync=sync, stages=stages, device=o.device))
                except Exception as exc:
                    result["backends"][backend] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                finally:
                    stream.close()
                print(f"bench loader: {backend}: {runs[backend][-1]}", file=sys.stderr, flush=True)
    finally:
        for loader in loaders:
            loader.close()
    return runs


def _factories(wanted: list[str], o: LoaderBench, result: dict) -> dict:
    """backend -> (make: () -> a fresh loader, kind: "video" | "baseline" | "peer"); a backend that cannot be
    set up gets its error in result["backends"]."""
    from fastvid.benchmarks.baseline import baseline_loader, videos_from_shards
    from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader

    out = {}
    for backend in wanted:
        try:
            if backend == "baseline":
                vids = videos_from_shards(o.shards, o.videos)
                out[backend] = (lambda epoch=0, vids=vids: baseline_loader(
                    vids, batch_size=o.batch_size, clip_len=o.clip_len, frame_stride=o.frame_stride, num_workers=o.workers,
                    preset=o.preset, epoch=epoch), "baseline")
            elif backend == "dali-video":
                out[backend] = (dali_video_peer(videos_from_shards(o.shards, o.videos), batch_size=o.batch_size,
                                                clip_len=o.clip_len, frame_stride=o.frame_stride, preset=o.preset,
                                                device=o.device, num_threads=o.workers), "peer")
            else:
                out[backend] = (lambda backend=backend: VideoLoader(
                    o.shards, o.batch_size, ClipSampling(clip_len=o.clip_len, frame_stride=o.frame_stride),
                    augmentation=Augmentation(o.preset), output=Output(device=o.device),
                    execution=Execution(backend=backend, num_threads=o.workers, num_workers=o.workers)), "video")
        except Exception as exc:  # e.g. a package missing: the other backends still report
            result["backends"][backend] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _streams(factories: dict, device: str, quick: bool):
    """backend -> (make_iter(epoch), clips of a batch, stage seconds) for the steady-state runs, and the
    VideoLoaders made for them (one per backend for all runs, so its workers persist as in training)."""
    streams, loaders = {}, []
    for backend, (make, kind) in factories.items():
        if kind == "baseline":
            def make_iter(epoch, make=make):
                for video, label in make(epoch):
                    yield video.to(device, non_blocking=True), label

            streams[backend] = (make_iter, lambda b: b[0].shape[0], None)
        elif kind == "peer":
            streams[backend] = (make, lambda b: b[0].shape[0], None)
        else:
            loader = make()
            loaders.append(loader)
            if len(loader) < 30 and not quick:
                print(f"bench loader: note: one epoch is {len(loader)} batches (< 30); epoch starts weigh in",
                      file=sys.stderr, flush=True)

            def make_iter(epoch, loader=loader):
                loader.set_epoch(epoch)
                return iter(loader)

            streams[backend] = (make_iter, lambda b: b["video"].shape[0], lambda loader=loader: loader.stage_stats.seconds())
    return streams, loaders


def time_to_first_batch(make) -> float:
    """Seconds from making a fresh loader (opening the set, starting workers or pipelines) to its first batch."""
    t0 = time.perf_counter()
    loader = make()
    try:
        next(iter(loader))
        return time.perf_counter() - t0
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()


def _first_batch_times(factories: dict, result: dict, repeats: int) -> None:
    """Each fastvid backend's and the baseline's time to first batch from a fresh loader (median of `repeats`):
    what a small epoch or the start of a run pays before any steady state."""
    for backend, (make, kind) in factories.items():
        row = result["backends"].get(backend)
        if kind == "peer" or row is None or "error" in row:
            continue
        times = [time_to_first_batch(make) for _ in range(repeats)]
        row["time_to_first_batch_s"] = round(sorted(times)[len(times) // 2], 3)
        row["runs_time_to_first_batch_s"] = [round(x, 3) for x in times]


def run(args) -> int:
    from fastvid.pipeline.backends import names

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    known = {"all", *names("video"), *PEERS}
    unknown = set(backends) - known
    if unknown:
        raise ValueError(f"--backends: unknown {sorted(unknown)}; choose from {', '.join(sorted(known))}")
    if args.shards is not None and not Path(args.shards).is_dir():
        raise FileNotFoundError(f"{args.shards}: shard set directory does not exist")
    taken = {f.name: getattr(args, f.name) for f in fields(LoaderBench) if f.name not in ("backends", "quick")}
    result = run_benchmark(LoaderBench(**taken, backends=tuple(backends)))
    write_json(result, args.json)
    rows = [f"{b}: {r['clips_per_s']} clips/s, data-wait {r['data_wait_ms_mean']} ms/batch, {r['cpu_cores_used']} cores"
            + (f", first batch {r['time_to_first_batch_s']} s" if "time_to_first_batch_s" in r else "")
            + (f", GPU {r['gpu_util_mean']}%" if r.get("gpu_util_mean") is not None else "")
            + (f", NVDEC {r['nvdec_util_mean']}%" if r.get("nvdec_util_mean") is not None else "")
            if "clips_per_s" in r else f"{b}: {r['error']}" for b, r in result["backends"].items()]
    print("\n".join(rows))
    if "speedup_vs_baseline" in result:
        print("speed-up vs baseline: " + ", ".join(f"{b} {x}x" for b, x in result["speedup_vs_baseline"].items()))
    return 0 if all("clips_per_s" in r for r in result["backends"].values()) else 1
