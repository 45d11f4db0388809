"""`fastvid bench remote`: training from a remote set as the set grows — time to the first batch and bytes
each rank downloads, over a real HTTP server on 127.0.0.1.

For each set size (number of shards) a set of real H.264 clips is written (each sample padded with
`--pad-kb` of extra bytes, so the shards weigh what real ones do relative to the clips decoded), served,
and read by `--ranks` rank processes (each its own cache directory, as on separate nodes, limited to an
eighth of the set or the prefetch window, whichever is larger) through `VideoLoader` (PyAV, training
plan). Per rank it records: seconds to open the set and to the first batch, tar bytes downloaded before
the first batch, the bytes and requests of the small per-shard files (counted by the server), and over
the epoch: bytes, clips/s after the first batch, the most shards held at once. What must stay flat as the set grows: the tar bytes before
the first batch (at most the prefetch window), and each rank's share of the epoch's bytes (1/ranks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastvid.benchmarks.common import device_info, write_json


class Clip:
    def __init__(self, key, label, data, ext, pad: bytes = b""):
        self.key, self.source, self.label, self.data, self.ext, self.pad = key, f"clip:{key}", label, data, ext, pad


def encode_clip(clip: Clip) -> dict:
    """A sample: the clip, its label and the json planning reads (the clips are 8 frames of 48x32 at 15 fps)."""
    fields = {clip.ext: clip.data, "cls": clip.label,
              "json": {"num_frames": 8, "fps": 15.0, "width": 48, "height": 32, "codec": "h264", "label": clip.label}}
    if clip.pad:
        fields["pad.bin"] = clip.pad  # bytes on the wire the loader never reads (stands for bigger videos)
    return fields


def clip_bytes(work: Path) -> list[bytes]:
    """Two real H.264 MP4 clips (8 frames of 48x32), one per class."""
    from fastvid.video.synth import write_coded_video

    work.mkdir(parents=True, exist_ok=True)
    return [write_coded_video(work / f"clip{label}.mp4", num_frames=8, height=32, width=48, fps=15,
                              video_id=label).read_bytes() for label in range(2)]


def write_clip_set(out: Path, shards: int, per_shard: int, clips: list[bytes], split: str = "train", seed: int = 0,
                   pad_bytes: int = 0) -> int:
    """A video shard set of `shards` x `per_shard` samples (copies of the real clips); returns its tar bytes."""
    from fastvid.store.writer import ShardJob, write_shard_set

    pad = os.urandom(pad_bytes) if pad_bytes else b""
    items = [Clip(f"{split}{i:05d}", i % 2, clips[i % 2], "mp4", pad) for i in range(shards * per_shard)]
    manifest = write_shard_set(items, encode_clip, out, ShardJob(kind="video", classes=["up", "down"], options={"codec": "h264"},
                               split=split, max_samples=per_shard, seed=seed))
    return sum(s["bytes"] for s in manifest["shards"])


# ---- one rank -----------------------------------------------------------------------------------------

def rank_main(url: str, rank: int, world: int, window: int, batch_size: int) -> dict:
    """Read one epoch as rank `rank` of `world`; what it cost (run in its own process, its own cache)."""
    from fastvid.store.cache import default_cache
    from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader

    t0 = time.perf_counter()
    loader = VideoLoader(url, batch_size, ClipSampling(clip_len=4), seed=0,
                         augmentation=Augmentation(crop_size=32, resize_size=(36, 48)),
                         output=Output(device="cpu"),
                         execution=Execution(backend="pyav", num_workers=0, rank=rank, world_size=world,
                                             stream_window=window))
    cache = loader.shard_set.extra["opened"].cache
    opened_s = time.perf_counter() - t0
    small_bytes = cache.stats["downloaded_bytes"]  # 0: indexes and metadata are read into memory, not cached
    batches = iter(loader)
    next(batches)
    first_s = time.perf_counter() - t0
    at_first = cache.stats["downloaded_bytes"]
    stream = dict(loader.stream_stats)
    t1 = time.perf_counter()
    clips = sum(len(batch["key"]) for batch in batches)
    steady_s = time.perf_counter() - t1
    stats = loader.stream_stats
    loader.close()
    return {"rank": rank, "open_s": round(opened_s, 3), "first_batch_s": round(first_s, 3),
            "tar_bytes_before_first_batch": at_first - small_bytes,
            "shards_fetched_at_first_read": stream["held_at_first_path"],
            "epoch_bytes": cache.stats["downloaded_bytes"], "epoch_tar_shards": len(stats["fetched_shards"]),
            "clips_per_s_after_first_batch": round(clips / steady_s, 1) if steady_s else None,
            "max_shards_held": stats["max_held"], "cache_limit": default_cache().max_bytes}


def _run_rank(url: str, rank: int, world: int, window: int, batch_size: int, cache_dir: Path, cache_bytes: int) -> subprocess.Popen:
    env = dict(os.environ, FASTVID_CACHE_DIR=str(cache_dir), FASTVID_CACHE_SIZE=str(cache_bytes), OMP_NUM_THREADS="1",
               RANK=str(rank))  # the server's ledger attributes each connection to its process's RANK
    code = ("import json, sys; from fastvid.benchmarks.remote import rank_main; "
            "print(json.dumps(rank_main(sys.argv[1], *map(int, sys.argv[2:]))))")
    return subprocess.Popen([sys.executable, "-c", code, url, str(rank), str(world), str(window), str(batch_size)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ---- the benchmark ----------------------------------------------------------------------------------

def run_benchmark(sizes=(16, 64, 256), per_shard: int = 4, pad_kb: int = 128, ranks: int = 2, window: int = 4,
                  batch_size: int = 4, work: str | None = None) -> dict:
    from fastvid.benchmarks.servers import Ledger, http_server

    root = Path(work or tempfile.mkdtemp(prefix="fastvid-bench-remote-"))
    clips = clip_bytes(root / "clips")
    results = []
    for shards in sizes:
        site = root / f"site{shards}"
        set_bytes = write_clip_set(site / "train", shards, per_shard, clips, pad_bytes=pad_kb << 10)
        shard_bytes = set_bytes // shards
        cache_bytes = max(set_bytes // 8, (window + 2) * shard_bytes)
        ledger = Ledger()
        base, stop = http_server(site, ledger)
        try:
            procs = [_run_rank(f"{base}/train", r, ranks, window, batch_size, root / f"cache{shards}-{r}", cache_bytes)
                     for r in range(ranks)]
            outs = [p.communicate(timeout=1800) for p in procs]
        finally:
            stop()
        per_rank = []
        for p, (out, err) in zip(procs, outs):
            if p.returncode != 0:
                raise RuntimeError(f"bench remote: rank process failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
            row = json.loads(out.strip().splitlines()[-1])
            mine = {path: n for (who, path), n in ledger.bytes.items() if who == str(row["rank"])}
            row["small_file_bytes"] = sum(n for path, n in mine.items() if not path.endswith(".tar"))
            row["small_file_requests"] = sum(1 for path in mine if not path.endswith(".tar"))
            row["served_tar_bytes"] = sum(n for path, n in mine.items() if path.endswith(".tar"))
            per_rank.append(row)
        served = sum(ledger.bytes.values())
        results.append({"shards": shards, "samples": shards * per_shard, "set_bytes": set_bytes, "shard_bytes": shard_bytes,
                        "cache_bytes_per_rank": cache_bytes, "served_bytes": served,
                        "epoch_share_per_rank": [round(r["epoch_bytes"] / set_bytes, 3) for r in per_rank],
                        "ranks": per_rank})
        print(f"bench remote: {shards} shards ({set_bytes / 2**20:.1f} MiB): first batch after "
              + ", ".join(f"{r['first_batch_s']:.2f} s / {r['tar_bytes_before_first_batch'] / 2**20:.2f} MiB of tars"
                          for r in per_rank)
              + "; epoch share per rank " + ", ".join(f"{r['epoch_bytes'] / set_bytes:.2f}" for r in per_rank),
              file=sys.stderr)
    return {"benchmark": "remote", "device_info": device_info(), "load_average": os.getloadavg(),
            "settings": {"per_shard": per_shard, "pad_kb": pad_kb, "ranks": ranks, "stream_window": window,
                         "batch_size": batch_size, "backend": "pyav", "transport": "HTTP on 127.0.0.1"},
            "sizes": results}


def add_arguments(p) -> None:
    p.add_argument("--shards", default="16,64,256", help="set sizes to measure, in shards (default: 16,64,256)")
    p.add_argument("--per-shard", type=int, default=4, help="samples per shard (default: 4)")
    p.add_argument("--pad-kb", type=int, default=128, help="extra bytes per sample, in KiB (default: 128)")
    p.add_argument("--ranks", type=int, default=2, help="rank processes, each with its own cache (default: 2)")
    p.add_argument("--window", type=int, default=4, help="prefetch window in shards (default: 4)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--work", help="folder for the sets and caches (default: a new temporary folder)")
    p.add_argument("--json", help="write the results here ('-' prints them)")


def run(args) -> int:
    try:
        sizes = [int(s) for s in args.shards.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--shards takes comma-separated shard counts, got {args.shards!r}") from None
    result = run_benchmark(sizes, args.per_shard, args.pad_kb, args.ranks, args.window, args.batch_size, args.work)
    result["command"] = "fastvid bench remote " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "remote"] else [])
    write_json(result, args.json)
    if not args.json:
        print(json.dumps(result["sizes"], indent=2))
    return 0
