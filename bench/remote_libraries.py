"""Which transport should fastvid stream remote shards with? One rank's half of a 64-shard set, read through
each candidate from real servers on 127.0.0.1, with a cache an eighth of the set's size.

    python bench/remote_libraries.py --json bench/results/remote-libraries-cpu.json

Candidates (each in a fresh process, as rank 0 of 2, reading every sample's video bytes, no decoding):
- fastvid ShardStream: manifest + per-shard index/metadata at open, then whole shards into the bounded
  cache in the rank's plan order (window 4), samples read by byte range from local files;
- webdataset WebDataset: shards streamed sequentially (curl), split by node; with and without its
  whole-shard cache (cache_dir, cache_size);
- webdataset wids ShardListDataset: random access by sample index, whole shards downloaded into
  cache_dir (cache_size bytes), read in fastvid's plan order;
- fsspec filecache / blockcache over HTTP: whole-file copies (no size limit) / cached blocks fetched by
  range requests, samples read by byte range in fastvid's plan order;
- MosaicML Streaming StreamingDataset over S3 (moto; it reads no plain HTTP): the same samples written
  as MDS shards, its own per-rank partition, cache_limit; both ranks run (its process group needs the
  peer) as one node sharing one cache of twice the limit; fastvid ShardStream over the same S3 server
  for comparison.

Recorded per candidate: seconds to the first sample (from construction), samples and samples/s after
the first, bytes the server sent, the most bytes the cache directory held (sampled every 20 ms) against
the limit, and whether samples can be read by byte range from local files (what fastvid's DALI and PyAV
readers need). MosaicML Streaming is not a fastvid dependency: it is imported from --mosaic-path (a
`pip install --target DIR --no-deps mosaicml-streaming xxhash zstd python-snappy brotli catalogue` folder;
its text and vision helpers import transformers/torchvision, which are stubbed out for the import).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

SHARDS, PER_SHARD, PAD_KB, WINDOW = 64, 4, 128, 4


# ---- the rank-0 readers (one per candidate, run in a fresh process) -------------------------------------

def _plan(opened):
    """Rank 0's samples of fastvid's streamed plan (world 2, blocks of 2 shards): (shard, sample) in order."""
    from fastvid.video import sampling

    grid = [[1] * len(f.index) for f in opened.files]
    keys = [[key for key, _ in f.index] for f in opened.files]
    return sampling.shard_train_items(grid, keys, clips_per_video=1, seed=0, epoch=0, rank=0, world_size=2, block=2)


def _plan_set(url, cache):
    """The set's indexes (for fastvid's plan order and byte ranges), kept outside the candidate's cache."""
    from fastvid.store import reader
    from fastvid.store.cache import ShardCache

    return reader.open_files(url, ShardCache(Path(str(cache) + "-index"), 1 << 30), kind="video")


def read_fastvid(url, cache, limit, clock):
    from fastvid.store import reader
    from fastvid.store.cache import ShardCache
    from fastvid.store.stream import ShardStream, ShardUse

    opened = reader.open_files(url, ShardCache(cache, limit), kind="video")
    work = _plan(opened)
    stream = ShardStream(opened, [w.shard for w in work], window=WINDOW)
    use = ShardUse(stream, Counter(w.shard for w in work))
    fds = {}
    try:
        for w in work:
            path = stream.path(w.shard)
            if w.shard not in fds:
                fds[w.shard] = os.open(path, os.O_RDONLY)
            offset, size = opened.files[w.shard].index[w.sample][1]["mp4"]
            clock(len(os.pread(fds[w.shard], size, offset)))
            use.used(w.shard)
            if w.shard not in use.left:
                os.close(fds.pop(w.shard))
    finally:
        stream.close()


def read_webdataset(url, cache, limit, clock, cached=True):
    import webdataset as wds

    urls = [f"{url}/train-{i:06d}.tar" for i in range(SHARDS)]
    ds = wds.WebDataset(urls, shardshuffle=SHARDS, nodesplitter=wds.split_by_node, seed=0,
                        cache_dir=str(cache) if cached else None, cache_size=limit if cached else -1).shuffle(64)
    for sample in ds:
        clock(len(sample["mp4"]))


def read_wids(url, cache, limit, clock):
    import wids

    opened = _plan_set(url, cache)  # only for fastvid's plan order and the sample counts
    first = [0]
    for f in opened.files:
        first.append(first[-1] + len(f.index))
    shards = [{"url": f"{url}/train-{i:06d}.tar", "nsamples": len(f.index)} for i, f in enumerate(opened.files)]
    ds = wids.ShardListDataset(shards, cache_dir=str(cache), cache_size=limit, lru_size=WINDOW)
    for w in _plan(opened):
        clock(len(ds[first[w.shard] + w.sample][".mp4"].read()))


def read_fsspec(url, cache, limit, clock, kind="filecache"):
    import fsspec

    opened = _plan_set(url, cache)
    options = {"cache_storage": str(cache)}
    if kind == "blockcache":
        options["block_size"] = 1 << 20
    fs = fsspec.filesystem(kind, target_protocol="http", **options)
    files = {}
    for w in _plan(opened):
        if w.shard not in files:
            files[w.shard] = fs.open(f"{url}/train-{w.shard:06d}.tar", "rb")
        f = files[w.shard]
        offset, size = opened.files[w.shard].index[w.sample][1]["mp4"]
        f.seek(offset)
        clock(len(f.read(size)))


def read_mosaic(url, cache, limit, clock, default_block=False):
    import mosaic_import  # noqa: F401 (stubs the transformers/torchvision imports of streaming's helpers)
    from streaming import StreamingDataset

    # Shuffle blocks as fastvid's (2 shards' samples); MosaicML's default block (~4M samples) asks for the
    # rank's whole partition at once (measured as "mosaic-default-block").
    block = None if default_block else WINDOW // 2 * PER_SHARD
    ds = StreamingDataset(remote=url, local=str(cache), shuffle=True, shuffle_seed=0, batch_size=1,
                          shuffle_block_size=block, cache_limit=limit, predownload=WINDOW * PER_SHARD)
    for sample in ds:
        clock(len(sample["mp4"]))


# What each candidate imports, loaded before its clock starts (interpreter start-up is nobody's transport).
IMPORTS = {"fastvid": ["fastvid.store.reader", "fastvid.video.sampling", "fsspec.implementations.http", "s3fs"],
           "webdataset": ["webdataset"], "webdataset-nocache": ["webdataset"],
           "wids": ["wids", "fastvid.store.reader", "fastvid.video.sampling", "fsspec.implementations.http"],
           "fsspec-filecache": ["fsspec.implementations.cached", "fsspec.implementations.http", "fastvid.store.reader",
                                "fastvid.video.sampling"],
           "fsspec-blockcache": ["fsspec.implementations.cached", "fsspec.implementations.http", "fastvid.store.reader",
                                 "fastvid.video.sampling"],
           "mosaic": ["mosaic_import", "streaming", "boto3"], "mosaic-default-block": ["mosaic_import", "streaming", "boto3"]}

READERS = {"fastvid": read_fastvid, "webdataset": read_webdataset,
           "webdataset-nocache": lambda *a: read_webdataset(*a, cached=False), "wids": read_wids,
           "fsspec-filecache": read_fsspec, "fsspec-blockcache": lambda *a: read_fsspec(*a, kind="blockcache"),
           "mosaic": read_mosaic, "mosaic-default-block": lambda *a: read_mosaic(*a, default_block=True)}


def worker(name, url, cache, limit) -> dict:
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            total = 0
            for p in cache.rglob("*"):
                try:
                    if p.is_file() and not p.name.endswith(".lock"):
                        total += p.stat().st_size
                except OSError:
                    pass
            peak[0] = max(peak[0], total)
            stop.wait(0.02)

    import importlib

    for module in IMPORTS[name]:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    marks = {"first": None, "n": 0, "bytes": 0}
    t0 = time.perf_counter()

    def clock(nbytes):
        if marks["first"] is None:
            marks["first"] = time.perf_counter()
        marks["n"] += 1
        marks["bytes"] += nbytes

    READERS[name](url, cache, limit, clock)
    end = time.perf_counter()
    stop.set()
    watcher.join()
    after = end - marks["first"]
    return {"first_sample_s": round(marks["first"] - t0, 3), "samples": marks["n"], "total_s": round(end - t0, 3),
            "samples_per_s_after_first": round((marks["n"] - 1) / after, 1) if after > 0 else None,
            "cache_peak_bytes": peak[0]}


# ---- the run ------------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mds(src: Path, out: Path, shard_bytes: int, mosaic_path: str) -> None:
    """The set's samples as MosaicML MDS shards of about the same size."""
    code = ("import sys, json; sys.path[:0] = [sys.argv[3], sys.argv[4]]; import mosaic_import; "
            "from streaming import MDSWriter; from fastvid.store import reader; "
            "opened = reader.open_files(sys.argv[1], kind='video'); "
            "w = MDSWriter(out=sys.argv[2], columns={'mp4': 'bytes', 'cls': 'int', 'pad': 'bytes'}, size_limit=int(sys.argv[5]))\n"
            "for f in opened.files:\n"
            "    fd = open(f.tar, 'rb')\n"
            "    for key, comps in f.index:\n"
            "        def part(ext):\n"
            "            fd.seek(comps[ext][0]); return fd.read(comps[ext][1])\n"
            "        w.write({'mp4': part('mp4'), 'cls': int(part('cls')), 'pad': part('pad.bin')})\n"
            "w.finish()")
    subprocess.run([sys.executable, "-c", code, str(src), str(out), mosaic_path, str(Path(__file__).parent),
                    str(shard_bytes + 4096)], check=True)


def _run_candidate(name, url, env, ledger, ctx, ranks=1) -> dict:
    """Rank 0 of 2 reading through candidate `name` (rank 1 runs too when the library needs its peer:
    MosaicML's process group); its measurements, with the bytes the server sent to rank 0."""
    root, limit, set_bytes, mosaic_path = ctx
    ledger.bytes.clear()
    port = _free_port()
    procs = []
    for rank in range(ranks):
        # Alone, rank 0 acts as node 0 of 2; with its peer (MosaicML), both are one node sharing one cache
        # directory (MosaicML names its shared memory per node, so two nodes cannot share a machine).
        cache = root / "cache" / name.replace("@", "-")
        e = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(ranks),
                 NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", **env)
        if mosaic_path:
            e["PYTHONPATH"] = os.pathsep.join([mosaic_path, str(Path(__file__).parent), e.get("PYTHONPATH", "")])
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", name.split("@")[0], url, str(cache),
                                       str(limit * ranks)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=e))
    outs = [p.communicate(timeout=1800) for p in procs]
    failed = [e for p, (_, e) in zip(procs, outs) if p.returncode != 0]
    if failed:
        if os.environ.get("FASTVID_DEBUG"):
            print("\n".join(e[-3000:] for e in failed), file=sys.stderr)
        return {"error": (failed[-1].strip().splitlines() or ["?"])[-1]}
    result = json.loads(outs[0][0].strip().splitlines()[-1])
    served = sum(n for (rank, _), n in ledger.bytes.items() if rank == "0")
    result.update(served_bytes=served, served_share_of_set=round(served / set_bytes, 3), cache_limit_bytes=limit * ranks,
                  cache_within_limit=result["cache_peak_bytes"] <= limit * ranks)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--work", help="folder for sets and caches (default: a temporary folder)")
    p.add_argument("--mosaic-path", default=os.environ.get("MOSAIC_PATH"), help="folder holding mosaicml-streaming")
    p.add_argument("--only", help="comma-separated candidates (default: all)")
    p.add_argument("--worker", nargs=4, metavar=("NAME", "URL", "CACHE", "LIMIT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        name, url, cache, limit = args.worker
        print(json.dumps(worker(name, url, cache, int(limit))))
        return 0

    from fastvid.benchmarks.common import device_info, write_json
    from fastvid.benchmarks.remote import clip_bytes, write_clip_set
    from fastvid.benchmarks.servers import Ledger, http_server, s3_env, s3_server, upload_tree

    root = Path(args.work or tempfile.mkdtemp(prefix="fastvid-remote-libs-"))
    set_bytes = write_clip_set(root / "site" / "train", SHARDS, PER_SHARD, clip_bytes(root / "clips"), pad_bytes=PAD_KB << 10)
    limit = set_bytes // 8
    only = set(args.only.split(",")) if args.only else None
    results = {}
    ctx = (root, limit, set_bytes, args.mosaic_path)

    def run(name, url, env, ledger, ranks=1):
        if not only or name in only or name.split("@")[0] in only:
            results[name] = _run_candidate(name, url, env, ledger, ctx, ranks)
            print(f"{name}: {results[name]}", file=sys.stderr)

    ledger = Ledger()
    base, stop = http_server(root / "site", ledger)
    try:
        for name in ("fastvid", "webdataset", "webdataset-nocache", "wids", "fsspec-filecache", "fsspec-blockcache"):
            run(name, f"{base}/train", {}, ledger)
    finally:
        stop()
    if args.mosaic_path and (not only or only & {"mosaic", "mosaic-default-block", "fastvid@s3"}):
        _mds(root / "site" / "train", root / "mds" / "train", set_bytes // SHARDS, args.mosaic_path)
        s3_ledger = Ledger()
        endpoint, stop = s3_server(s3_ledger)
        try:
            upload_tree(endpoint, root / "site", "fastvid")
            upload_tree(endpoint, root / "mds", "mosaic")
            env = dict(s3_env(endpoint), S3_ENDPOINT_URL=endpoint)
            run("fastvid@s3", "s3://fastvid/train", env, s3_ledger)
            run("mosaic@s3", "s3://mosaic/train", env, s3_ledger, ranks=2)
            run("mosaic-default-block@s3", "s3://mosaic/train", env, s3_ledger, ranks=2)
        finally:
            stop()
    result = {"benchmark": "remote-libraries", "device_info": device_info(), "load_average": os.getloadavg(),
              "command": "python bench/remote_libraries.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "set": {"shards": SHARDS, "samples": SHARDS * PER_SHARD, "bytes": set_bytes, "pad_kb": PAD_KB},
              "rank": "0 of 2", "cache_limit_bytes": limit, "window_shards": WINDOW, "candidates": results}
    write_json(result, args.json)
    if not args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
