"""`fastvid bench events-io`: events/s from event shards to representation tensors on the device.

Measures, at steady state (by default 32 GEN1-like recordings streamed 16 at a time; generated here
unless --shards is given):
* shard: `fastvid shard events` throughput (events/s written);
* stages, each alone: read (the segments' bytes from the tars), decode (bytes -> columns, one
  thread, per codec: the shards' own and re-encodings of the same segments in the npz layout (zstd, deflate,
  stored) and the block layout (lz4, zstd, none));
* loader: `EventSequenceLoader` end to end (shards -> (B, C, H, W) tensors on the device, one
  batched representation call per step), also as a multiple of real time (GEN1 averages ~0.67 M
  events/s); then once more with the device synchronized around each stage, for the loader's own
  per-stage seconds (read, decode: summed over reader threads; assemble: cutting windows and
  concatenating the batch; wait: the training loop waiting for a host batch; transfer; represent);
* baseline: the no-shard way, read each window from the DAT file (memory-mapped binary search) and
  build its representation with one `represent` call per window; the ratio is loader vs baseline.
`run_benchmark(EventsIOBench(...)) -> dict` is what `fastvid bench all` calls.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

GEN1_EVENTS_PER_S = 0.67e6  # average GEN1 event rate of a recording


def make_gen1_like(src: Path, recordings: int, duration_s: float, rate_meps: float, sensor_size=(304, 240),
                   seed: int = 0) -> dict:
    """GEN1-like `<name>_td.dat` + `<name>_bbox.npy` files: uniform random events (incompressible
    x/y, so the compression numbers are a worst case) and a few boxes every 250 ms."""
    from fastvid.events.io import read_dat_header, write_dat
    from fastvid.events.types import EVENT_DTYPE

    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    box_dtype = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"),
                          ("confidence", "<f4"), ("track_id", "<u4")])
    for r in range(recordings):
        dat = src / f"rec{r:03d}_td.dat"
        bbox = src / f"rec{r:03d}_bbox.npy"
        duration_us = int(duration_s * 1e6)
        n = int(rate_meps * 1e6 * duration_s)
        # Reuse only complete data of the same size: the DAT (written atomically) goes last, so an
        # interrupted run never leaves a DAT without its box file.
        if not dat.exists() or not bbox.exists() or read_dat_header(dat).num_events != n:
            ev = np.empty(n, EVENT_DTYPE)
            ev["t"] = np.sort(rng.integers(0, duration_us, n))
            ev["x"] = rng.integers(0, sensor_size[0], n)
            ev["y"] = rng.integers(0, sensor_size[1], n)
            ev["p"] = rng.integers(0, 2, n)
            ts = np.repeat(np.arange(0, duration_us, 250_000), 3)
            boxes = np.zeros(len(ts), box_dtype)
            boxes["ts"] = ts
            boxes["x"], boxes["y"], boxes["w"], boxes["h"] = 10, 20, 40, 30
            boxes["class_id"] = rng.integers(0, 2, len(ts))
            boxes["confidence"] = 1
            boxes["track_id"] = np.tile(np.arange(3), len(ts) // 3)
            dat.unlink(missing_ok=True)
            np.save(bbox, boxes)
            write_dat(dat, ev, sensor_size)
        total += n
    return {"recordings": recordings, "seconds_per_recording": duration_s, "events": total, "event_rate_meps": rate_meps}


def _numba_threads():
    try:
        import numba

        return numba.get_num_threads()
    except Exception:
        return None


def _load_average():
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _warm_up(representation: str, bins: int, sensor_size, device: str) -> None:
    """Compile the Numba kernels / load the CUDA module outside the timed parts."""
    from fastvid.events.representations import represent_batch
    from fastvid.events.types import EVENT_DTYPE

    ev = np.zeros(4, EVENT_DTYPE)
    ev["t"] = [0, 1, 2, 3]
    represent_batch(ev, np.array([0, 2, 4]), representation, sensor_size, bins=bins, t0=[0, 0], t1=[4, 4], device=device)
    _sync(device)


def bench_baseline(src: Path, window_ms: float, representation: str, bins: int, sensor_size, device: str,
                   max_windows: int | None = None) -> dict:
    """Per window: read_dat(t0, t1) from the DAT file, then one `represent` call."""
    from fastvid.events.io import dat_time_span, read_dat
    from fastvid.events.representations import represent

    window_us = int(window_ms * 1000)
    events = windows = 0
    start = time.perf_counter()
    for dat in sorted(src.glob("*_td.dat")):
        span = dat_time_span(dat)
        if span is None:
            continue
        for t0 in range(span[0] // window_us * window_us, span[1] + 1, window_us):
            ev = read_dat(dat, t0, t0 + window_us)
            represent(ev, representation, sensor_size=sensor_size, bins=bins, t0=t0, t1=t0 + window_us, device=device)
            events += len(ev)
            windows += 1
            if max_windows is not None and windows >= max_windows:
                break
        if max_windows is not None and windows >= max_windows:
            break
    _sync(device)
    seconds = time.perf_counter() - start
    return {"events": events, "windows": windows, "seconds": round(seconds, 4), "events_per_s": events / seconds,
            "real_time_x": events / seconds / GEN1_EVENTS_PER_S}


def bench_stages(shards, repeats: int, max_segments: int = 64) -> dict:
    """Read and decode, each alone: all segments' bytes (read), then per codec the decode of up to
    `max_segments` segments held in memory (one thread)."""
    from fastvid.events import codec
    from fastvid.events.reading import SegmentReader, index_segments

    refs = index_segments(shards)
    out = {}
    with SegmentReader() as reader:
        best, fields = None, []
        for _ in range(repeats):
            start = time.perf_counter()
            fields = [reader.read_fields(ref) for ref in refs]
            seconds = time.perf_counter() - start
            best = seconds if best is None else min(best, seconds)
    nbytes = sum(len(v) for f in fields for v in f.values())
    samples = [codec.decode_sample(f) for f in fields[:max_segments]]
    n_events = sum(len(s["events"]) for s in samples)
    all_events = sum(int(json.loads(f[codec.META_EXT])["num_events"]) for f in fields)
    out["read"] = {"segments": len(fields), "bytes": nbytes, "events": all_events, "seconds": round(best, 4),
                   "events_per_s": all_events / best, "bytes_per_s": nbytes / best}
    decode = {}
    for name, level in (("shards", None), ("zstd", 1), ("deflate", 1), ("stored", 0), ("blocks-lz4", 1),
                        ("blocks-zstd", 1), ("blocks-none", 0)):
        if name == "shards":
            encoded = [(codec.events_field(f), f[codec.events_field(f)], s["meta"]["t0"])
                       for f, s in zip(fields, samples)]
        else:
            layout, _, name_codec = name.rpartition("-")
            encoded = [(*codec.encode_event_field(s["events"], s["meta"]["t0"], name_codec, level, layout or "npz"),
                        s["meta"]["t0"]) for s in samples]
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            for ext, data, t0 in encoded:
                codec.decode_event_field(ext, data, t0)
            timings.append(time.perf_counter() - start)
        seconds = min(timings)
        decode[name] = {"segments": len(encoded), "events": n_events, "seconds": round(seconds, 4),
                        "events_per_s": n_events / seconds,
                        "bytes_per_event": sum(len(d) for _, d, _ in encoded) / max(n_events, 1)}
    out["decode_one_thread"] = decode
    return out


def _run_loader(loader, repeats: int, device: str) -> dict:
    timings, stages = [], None
    for _ in range(repeats):
        loader.stats.update(events=0, windows=0, padding_windows=0)
        loader.stage_stats.reset()
        start = time.perf_counter()
        steps = 0
        shape = None
        for batch in loader:
            steps += 1
            shape = tuple(batch["x"].shape)
        _sync(device)
        seconds = time.perf_counter() - start
        if not timings or seconds < min(timings):
            stages = loader.stage_stats.seconds()
        timings.append(seconds)
    seconds = min(timings)
    ev = loader.stats["events"]
    return {"steps": steps, "batch_shape": list(shape or ()), "windows": loader.stats["windows"],
            "padding_windows": loader.stats["padding_windows"], "events": ev, "seconds": round(seconds, 4),
            "events_per_s": ev / seconds, "steps_per_s": steps / seconds,
            "real_time_x": ev / seconds / GEN1_EVENTS_PER_S,
            "stage_seconds": {k: round(v, 4) for k, v in stages.items()},
            "stage_events_per_s": {k: (ev / v if v > 0 else None) for k, v in stages.items()}}


@dataclass
class EventsIOBench:
    """Options of `run_benchmark` (the CLI flags' defaults; None: a default that depends on `quick`)."""

    device: str = "auto"
    work_dir: str = "bench_work/events-io"  # where generated recordings and shards are kept
    quick: bool = False                     # small inputs (a smoke run, not for reporting)
    shards: str | Path | None = None        # an existing event shard set (default: generate GEN1-like data and shard it)
    recordings: int | None = None           # generated recordings (default 32; quick 2)
    duration_s: float | None = None         # seconds per generated recording (default 4; quick 1)
    rate_meps: float = 0.67                 # generated event rate, M events/s (GEN1 average: 0.67)
    segment_ms: float = 500.0
    window_ms: float = 50.0
    batch_size: int | None = None           # parallel streams (default 16; quick 2)
    representation: str = "stacked_histogram"
    bins: int = 10
    baseline: bool = True                   # also time the per-window DAT read baseline
    repeats: int | None = None              # timed runs per measurement, best kept (default 3; quick 1)
    numba_threads: int | None = None        # threads of the CPU representation kernels (default: numba's)
    compress_level: int = 1                 # shard codec level for generated data (0 = stored)
    codec: str = "lz4"                      # shard codec for generated data
    num_workers: int | None = None          # loader reader threads (default: the loader's)
    dtype: str = "float32"                  # loader output dtype
    count_cutoff: float | None = None       # cap of the histogram counts (RVT's count_cutoff)


def run_benchmark(options: EventsIOBench) -> dict:
    from fastvid import _gpu
    from fastvid.benchmarks.common import device_info

    o, quick = options, options.quick
    o = replace(o, device=_gpu.resolve_device(o.device), recordings=o.recordings or (2 if quick else 32),
                duration_s=o.duration_s or (1.0 if quick else 4.0), batch_size=o.batch_size or (2 if quick else 16),
                repeats=o.repeats or (1 if quick else 3))
    if o.numba_threads:  # the CPU kernels' thread count (oversubscribed CPUs make parallel regions stall)
        import numba

        numba.set_num_threads(o.numba_threads)
    result = {"device": o.device, "device_info": device_info(), "quick": o.quick, "repeats": o.repeats,
              "representation": o.representation, "numba_threads": _numba_threads(),
              "load_average_before": _load_average(), "batch_size": o.batch_size, "dtype": o.dtype,
              "count_cutoff": o.count_cutoff, "bins": o.bins, "window_ms": o.window_ms, "segment_ms": o.segment_ms,
              "codec": o.codec, "compress_level": o.compress_level, "gen1_events_per_s_of_recording": GEN1_EVENTS_PER_S}
    src, shards = None, o.shards
    if shards is None:
        src, shards = _generate_and_shard(o, result)

    result["stages"] = bench_stages(shards, o.repeats)
    result["decode"] = result["stages"]["decode_one_thread"]["shards"]  # (key kept for earlier result files)
    sensor_size = _loader_runs(o, shards, result)

    if o.baseline and src is not None:
        runs = [bench_baseline(src, o.window_ms, o.representation, o.bins, sensor_size, o.device,
                               max_windows=None if o.quick else 400) for _ in range(o.repeats)]
        result["baseline_dat_per_window"] = max(runs, key=lambda r: r["events_per_s"])
        result["speedup_loader_vs_dat_per_window"] = (result["loader"]["events_per_s"]
                                                      / result["baseline_dat_per_window"]["events_per_s"])
    result["load_average_after"] = _load_average()
    return result


def _generate_and_shard(o: EventsIOBench, result: dict) -> tuple[Path, Path]:
    """GEN1-like recordings in the work dir, sharded afresh (timed: result["data"], result["shard"])."""
    from fastvid.events.writing import EventLayout, shard_events

    work = Path(o.work_dir)
    src = work / "gen1_like"
    result["data"] = make_gen1_like(src, o.recordings, o.duration_s, o.rate_meps)
    shards = work / f"shards_{int(o.segment_ms)}ms"
    if shards.exists():  # our own output of an earlier run: shard again so the timing is real
        shutil.rmtree(shards)
    start = time.perf_counter()
    shard_events(src, shards, segment_ms=o.segment_ms,
                 storage=EventLayout("npz" if o.codec in ("deflate", "stored") else "blocks", o.codec, o.compress_level))
    seconds = time.perf_counter() - start
    result["shard"] = {"seconds": round(seconds, 3), "events_per_s": result["data"]["events"] / seconds}
    raw_bytes = sum(p.stat().st_size for p in src.glob("*_td.dat"))
    shard_bytes = sum(p.stat().st_size for p in Path(shards).glob("*.tar"))
    result["shard"]["bytes_per_event"] = shard_bytes / max(result["data"]["events"], 1)
    result["shard"]["dat_bytes_per_event"] = raw_bytes / max(result["data"]["events"], 1)
    return src, shards


def _loader_runs(o: EventsIOBench, shards, result: dict):
    """`EventSequenceLoader` end to end, then once more synchronized per stage; returns the set's sensor size."""
    from fastvid.events.sequence import Encoding, EventExecution, EventSequenceLoader, Windowing

    windowing = Windowing(window_ms=o.window_ms, shuffle=False)
    encoding = Encoding(o.representation, bins=o.bins, dtype=o.dtype, count_cutoff=o.count_cutoff)

    def loader_of(**execution):
        return EventSequenceLoader(shards, o.batch_size, windowing, encoding,
                                   EventExecution(device=o.device, num_workers=o.num_workers, **execution))

    loader = loader_of()
    _warm_up(o.representation, o.bins, loader.sensor_size, o.device)
    result["loader"] = _run_loader(loader, o.repeats, o.device)
    result["loader_vs_gen1_real_time"] = result["loader"]["real_time_x"]
    # The same run with the device synchronized around transfer and represent: per-stage seconds.
    result["loader_stages_synced"] = _run_loader(loader_of(sync_timing=True), 1, o.device)
    return loader.sensor_size


def add_arguments(p):
    p.add_argument("--shards", default=None, help="an existing event shard set (default: generate GEN1-like data and shard it)")
    p.add_argument("--work-dir", default="bench_work/events-io", help="where generated recordings and shards are kept")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--recordings", type=int, default=None, help="generated recordings (default 32; --quick 2)")
    p.add_argument("--duration-s", type=float, default=None, help="seconds per generated recording (default 4; --quick 1)")
    p.add_argument("--rate-meps", type=float, default=0.67, help="generated event rate, M events/s (GEN1 average: 0.67)")
    p.add_argument("--segment-ms", type=float, default=500.0)
    p.add_argument("--window-ms", type=float, default=50.0)
    p.add_argument("--batch-size", type=int, default=None, help="parallel streams (default 16; --quick 2)")
    p.add_argument("--num-workers", type=int, default=None, help="loader reader threads (default: the loader's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "uint8"], help="loader output dtype")
    p.add_argument("--count-cutoff", type=float, default=None, help="cap of the histogram counts (RVT's count_cutoff)")
    p.add_argument("--codec", default="lz4", choices=["lz4", "zstd", "none", "deflate", "stored"],
                   help="shard codec for generated data (lz4, zstd, none: block layout; deflate, stored: npz layout)")
    p.add_argument("--representation", default="stacked_histogram")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--no-baseline", action="store_true", help="skip the per-window DAT read baseline")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per measurement, best kept (default 3; --quick 1)")
    p.add_argument("--compress-level", type=int, default=1, help="shard codec level for generated data (0 = stored)")
    p.add_argument("--numba-threads", type=int, default=None, help="threads of the CPU representation kernels (default: numba's)")
    p.add_argument("--quick", action="store_true", help="small inputs (a smoke run, not for reporting)")
    p.add_argument("--json", default=None, help="result path (default bench/results/events-io-<device>.json; '-' prints)")


def run(args) -> int:
    from fastvid import _gpu
    from fastvid.benchmarks.common import write_json

    device = _gpu.resolve_device(args.device)
    taken = {f.name: getattr(args, f.name) for f in fields(EventsIOBench) if f.name not in ("device", "baseline")}
    result = run_benchmark(EventsIOBench(**taken, device=device, baseline=not args.no_baseline))
    path = args.json or f"bench/results/events-io-{'cuda' if device.startswith('cuda') else 'cpu'}.json"
    write_json(result, path)
    lines = [f"events-io on {result['device_info']['device']} ({result['representation']}, bins {result['bins']}, "
             f"{result['window_ms']} ms windows):"]
    if "shard" in result:
        lines.append(f"  shard   {result['shard']['events_per_s'] / 1e6:8.2f} M events/s "
                     f"({result['shard']['bytes_per_event']:.2f} B/event in shards vs {result['shard']['dat_bytes_per_event']:.2f} in DAT)")
    st = result["stages"]
    lines.append(f"  read    {st['read']['events_per_s'] / 1e6:8.2f} M events/s  ({st['read']['bytes_per_s'] / 1e6:.0f} MB/s)")
    for name, d in st["decode_one_thread"].items():
        lines.append(f"  decode  {d['events_per_s'] / 1e6:8.2f} M events/s  one thread, {name} ({d['bytes_per_event']:.2f} B/event)")
    stages = result["loader_stages_synced"]["stage_seconds"]
    lines.append("  loader stages (s, synced run): " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
    lines.append(f"  loader  {result['loader']['events_per_s'] / 1e6:8.2f} M events/s  ({result['loader']['real_time_x']:.0f}x GEN1 real time) "
                 f"-> {result['loader']['batch_shape']} on {device}")
    if "baseline_dat_per_window" in result:
        b = result["baseline_dat_per_window"]
        lines.append(f"  baseline (DAT read + represent per window) {b['events_per_s'] / 1e6:.2f} M events/s; "
                     f"loader is {result['speedup_loader_vs_dat_per_window']:.1f}x")
    lines.append(f"  -> {path}")
    print("\n".join(lines))
    return 0
