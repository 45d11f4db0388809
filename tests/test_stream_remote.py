"""Streaming remote sets from real servers on 127.0.0.1 (an HTTP server and moto's S3-compatible server):
opening fetches only the manifest and the small per-shard files; a rank's first batch waits for at most
its prefetch window of shards; two ranks (torchrun, gloo) train an epoch of a 64-shard set through a
shared cache an eighth of the set's size, each downloading about half of it, the cache never above
its limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import video_loader
from fastvid.store.cache import ShardCache
from remote_servers import (Ledger, cache_peak, clip_bytes, http_server, s3_env, s3_server, upload_tree,
                            write_clip_set)

SHARDS, PER_SHARD = 64, 2


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    """data/train: 64 shards of 2 real H.264 clips; data/val: 4 shards of 2."""
    root = tmp_path_factory.mktemp("stream")
    clips = clip_bytes(root)
    sizes = {"train": write_clip_set(root / "data" / "train", SHARDS, PER_SHARD, clips, "train"),
             "val": write_clip_set(root / "data" / "val", 4, PER_SHARD, clips, "val", seed=1)}
    return root / "data", sizes


@pytest.fixture(params=["http", "s3"])
def served(request, clip_root, monkeypatch):
    """(URL of the data directory, ledger of bytes served per rank, env for subprocesses)."""
    data, sizes = clip_root
    ledger = Ledger()
    if request.param == "http":
        base, stop = http_server(data.parent, ledger)
        url, env = f"{base}/data", {}
    else:
        pytest.importorskip("moto.server")
        pytest.importorskip("s3fs")
        endpoint, stop = s3_server(ledger)
        env = s3_env(endpoint)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        upload_tree(endpoint, data, "bucket")
        url = "s3://bucket"
    try:
        yield url, ledger, env, sizes, request.param
    finally:
        stop()


def test_first_batch_waits_for_the_prefetch_window_only(served, tmp_path):
    url, ledger, _, _, proto = served
    cache = tmp_path / "cache"
    os.environ["FASTVID_CACHE_DIR"] = str(cache)
    try:
        loader = video_loader(f"{url}/train", batch_size=2, clip_len=4, backend="pyav", device="cpu", num_workers=0,
                              world_size=2, rank=0, stream_window=2)
        opened_gets = dict(ledger.gets)
        # Opening read the manifest and the 64 indexes and metadata files, no tar.
        assert ledger.tar_gets() == 0
        assert sum(1 for p in opened_gets if p.endswith(".idx")) == SHARDS
        assert sum(1 for p in opened_gets if p.endswith(".meta.json")) == SHARDS
        batches = iter(loader)
        first = next(batches)
        assert first["video"].shape == (2, 3, 4, 112, 112)
        assert 1 <= ledger.tar_gets() <= 2  # the first batch needed at most the window's shards
        assert loader.stream_stats["held_at_first_path"] <= 2
        rest = list(batches)
        assert len(rest) + 1 == len(loader) == SHARDS * PER_SHARD // 2 // 2
        # This rank fetched about half of the set: its own part, nothing else.
        assert SHARDS // 2 <= ledger.tar_gets() <= SHARDS // 2 + 2
        assert loader.stream_stats["max_held"] <= 2
        loader.close()
    finally:
        os.environ.pop("FASTVID_CACHE_DIR", None)


def _tiny_train_args(url: str, out: Path) -> list[str]:
    return ["--data-path", url, "--model", "r3d_18", "--model-width", "8", "--device", "cpu", "--clip-len", "4",
            "--frame-rate", "none", "--clips-per-video", "1", "-b", "2", "-j", "0", "--lr", "0.01",
            "--lr-warmup-epochs", "0", "--train-resize-size", "36", "48", "--train-crop-size", "32", "32",
            "--val-resize-size", "36", "48", "--val-crop-size", "32", "32", "--print-freq", "8", "--backend", "pyav",
            "--epochs", "1", "--stream-window", "2", "--output-dir", str(out)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_train_an_epoch_through_a_cache_an_eighth_of_the_set(served, tmp_path):
    url, ledger, extra_env, sizes, proto = served
    cache = tmp_path / "cache"
    limit = sizes["train"] // 8
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", FASTVID_CACHE_DIR=str(cache),
               FASTVID_CACHE_SIZE=str(limit), **extra_env)
    env.pop("FASTVID_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "fastvid", "train", *_tiny_train_args(url, tmp_path / "run")]
    stop, peak = threading.Event(), [0]
    watcher = threading.Thread(target=cache_peak, args=(cache, stop, peak), daemon=True)
    watcher.start()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    finally:
        stop.set()
        watcher.join()
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0] and rows[0]["world_size"] == 2
    assert rows[0]["steps"] == SHARDS * PER_SHARD // 2 // 2  # 128 clips over 2 ranks x batch 2
    assert rows[0]["val_videos"] == 8
    # Each rank downloaded about half of the training set, the two halves (nearly) disjoint.
    prefix = "/data/train/" if proto == "http" else "/bucket/train/"
    per_rank = ledger.tar_bytes_by_rank(prefix)
    assert set(per_rank) == {"0", "1"}, per_rank
    for rank, n in per_rank.items():
        assert 0.4 * sizes["train"] <= n <= 0.6 * sizes["train"], (rank, n, sizes["train"])
    tars = ledger.tars_by_rank(prefix)
    assert len(tars["0"] & tars["1"]) <= 2 and len(tars["0"] | tars["1"]) == SHARDS
    # The shared cache never held more than its limit (an eighth of the set), temp files included.
    assert 0 < peak[0] <= limit, (peak[0], limit)
    assert ShardCache(cache, limit).used_bytes() <= limit


@pytest.fixture(scope="module")
def vp9_site(tmp_path_factory):
    """3 shards of 2 VP9 videos (DALI's CPU decoder reads VP9 only), served over HTTP."""
    from fastvid.cli import main as fastvid_main
    from fastvid.video.synth import write_coded_video

    root = tmp_path_factory.mktemp("vp9")
    for vid in range(6):
        name = "ab"[vid % 2]
        write_coded_video(root / "src" / name / f"{name}{vid}.mp4", num_frames=12, height=32, width=48, fps=25,
                          video_id=vid, gop=8)
    assert fastvid_main(["shard", "videos", str(root / "src"), str(root / "site" / "set"), "--codec", "vp9",
                         "--max-samples", "2", "--workers", "1"]) == 0
    # A server in its own process: DataLoader workers forked from this one would inherit an in-process server's
    # accepted keep-alive sockets, which then never close and stall the client's next request on them.
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(root / "site")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{base}/set/manifest.json", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    yield base, root / "site" / "set"
    server.terminate()
    server.wait(timeout=10)


@pytest.mark.parametrize("backend", ["pyav-workers", "pyav-threads", "dali"])
def test_every_backend_reads_a_streamed_set_like_the_local_one(vp9_site, backend, tmp_path, monkeypatch):
    """PyAV worker processes get each shard's local path with their task; threads and DALI's feeder ask the
    stream: all give the batches the same plan gives on the local copy."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    base, local_dir = vp9_site
    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    kw = dict(batch_size=2, clip_len=4, device="cpu", num_threads=2, num_workers=2, stream_window=2,
              backend="pyav" if backend == "pyav-workers" else backend)
    remote_loader = video_loader(f"{base}/set", **kw)
    local_loader = video_loader(local_dir, plan="shards", **kw)
    for epoch in (0, 1):  # the second epoch streams again (its shards come back from the cache)
        remote_loader.set_epoch(epoch)
        local_loader.set_epoch(epoch)
        a, b = list(remote_loader), list(local_loader)
        assert len(a) == 3 and [x["key"] for x in a] == [x["key"] for x in b]
        assert all((x["video"] == y["video"]).all() and (x["label"] == y["label"]).all() for x, y in zip(a, b))
        assert remote_loader.stats["decode_failures"] == 0
        # Threads and DALI's feeder wait for the window; PyAV's DataLoader dispatches prefetch x workers
        # chunks (2 x 2 x 2 clips = 4 shards of 2 here) ahead on the consuming thread, past the window.
        assert remote_loader.stream_stats["max_held"] <= (2 if backend != "pyav-workers" else 2 + 4)
    remote_loader.close()
    local_loader.close()
