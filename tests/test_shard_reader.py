"""The shard format module and the one shard-set reader: manifest rules, kind dispatch, brace patterns,
pipe: commands, shards served by a real HTTP server and a real S3-compatible server (moto) on
127.0.0.1, the bounded cache shared by concurrent processes, and webdataset's `wids` on fastvid sets."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fastvid import cli
from conftest import video_loader
from fastvid.video.reader import open_shard_set
from fastvid.store import format as fmt
from fastvid.store import reader, remote
from fastvid.store.cache import ShardCache
from fastvid.store.format import MANIFEST_NAME
from fastvid.video.synth import write_coded_video


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    """7 VP9 videos of 3 classes in 3 shards (at most 3 samples each)."""
    root = tmp_path_factory.mktemp("reader")
    vid = 0
    for name, count in (("a", 3), ("b", 2), ("c", 2)):
        for j in range(count):
            write_coded_video(root / "src" / name / f"{name}{j}.mp4", num_frames=10 + vid, height=32, width=48, fps=25,
                              codec="h264", video_id=vid, gop=8)
            vid += 1
    assert cli.main(["shard", "videos", str(root / "src"), str(root / "set"), "--codec", "vp9", "--max-samples", "3",
                     "--workers", "1"]) == 0
    return root / "set"


def keys_labels(shard_set):
    return [(k, shard_set.read_components(si, i, exts=("cls",))["cls"]) for si, s in enumerate(shard_set.shards)
            for i, k in enumerate(s.keys)]


# -- format ------------------------------------------------------------------------------------------


def test_manifest_rules_reject_bad_sets(shard_dir, tmp_path):
    manifest = json.loads((shard_dir / MANIFEST_NAME).read_text())
    assert fmt.validate_manifest(manifest) is manifest and manifest["num_samples"] == 7
    bad = dict(manifest, shards=[dict(manifest["shards"][0], samples=-1)] + manifest["shards"][1:])
    with pytest.raises(ValueError, match="'samples' must be a non-negative integer"):
        fmt.validate_manifest(bad, "m.json")
    bad = dict(manifest, shards=[dict(manifest["shards"][0], sha256="../../etc")] + manifest["shards"][1:])
    with pytest.raises(ValueError, match="'sha256' must be 64 lowercase hex digits"):
        fmt.validate_manifest(bad, "m.json")
    # A shard name that leaves the set's directory is refused when the set is opened, naming the manifest.
    evil = tmp_path / "evil"
    shutil.copytree(shard_dir, evil)
    outside = dict(manifest, shards=[dict(manifest["shards"][0], name="../set/" + manifest["shards"][0]["name"])]
                   + manifest["shards"][1:])
    (evil / MANIFEST_NAME).write_text(json.dumps(outside))
    with pytest.raises(ValueError, match=rf"{MANIFEST_NAME}: shard name '\.\./set/.*' is not a plain file name"):
        open_shard_set(evil)
    assert fmt.shard_name(fmt.shard_prefix("val", 2, 4), 7) == "val-n002-000007.tar"
    assert fmt.SHARD_NAME_PATTERN.match("val-n002-000007.tar") and not fmt.SHARD_NAME_PATTERN.match("../x-000001.tar")
    with pytest.raises(ValueError, match="no dots or whitespace"):
        fmt.check_key("a.b", "src.mp4")
    with pytest.raises(ValueError, match="no dots or whitespace"):  # a newline would split the DALI index line
        fmt.check_key("clip_0001\n", "src.mp4")
    assert fmt.check_key("clip_0001", "src.mp4") == "clip_0001"


def test_reader_is_chosen_by_kind(shard_dir, tmp_path):
    from fastvid.events.reading import SegmentRef
    from fastvid.store.writer import ShardJob, write_shard_set

    video = reader.open_shard_set(shard_dir)
    assert video.num_samples == 7 and video.classes == ["a", "b", "c"] and video.codec == "vp9"

    class Item:
        def __init__(self, i):
            self.key, self.source = f"rec_s{i:06d}", f"rec#{i}"

    write_shard_set([Item(i) for i in range(3)], _event_fields, tmp_path / "ev", ShardJob(kind="events", classes=["car"],
                    options={}, max_samples=2))
    refs = reader.open_shard_set(tmp_path / "ev")
    assert [type(r) for r in refs] == [SegmentRef] * 3 and [r.segment for r in refs] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"holds 'events' samples, this reader needs kind 'video'"):
        open_shard_set(tmp_path / "ev")


def _event_fields(item):
    return {"events.npz": b"not decoded here", "json": {"recording": "rec"}}


def test_brace_pattern_list_and_pipe(shard_dir, tmp_path):
    whole = keys_labels(open_shard_set(shard_dir))
    assert keys_labels(open_shard_set(f"{shard_dir}/train-{{000000..000002}}.tar")) == whole
    assert keys_labels(open_shard_set(f"file://{shard_dir}/train-{{000000..000002}}.tar")) == whole
    cache = ShardCache(tmp_path / "cache", 1 << 30)
    piped = open_shard_set([f"pipe:cat {shard_dir}/train-00000{i}.tar" for i in range(3)], cache=cache)
    assert keys_labels(piped) == whole  # no index travels with a pipe: it is built in the cache
    assert all(s.idx is not None and s.idx.parent == cache.root for s in piped.shards)
    with pytest.raises(remote.ShardSourceError, match=r"pipe:false: command exited with status 1"):
        open_shard_set("pipe:false", cache=cache)


def test_a_tar_list_without_kind_is_refused_by_the_core_reader(shard_dir, tmp_path):
    # No manifest names the kind of piped tars, and the core assumes none: the caller passes it.
    piped = [f"pipe:cat {shard_dir}/train-00000{i}.tar" for i in range(3)]
    cache = ShardCache(tmp_path / "cache", 1 << 30)
    with pytest.raises(ValueError, match=r"pipe:cat .*: these shards have no manifest\.json naming their kind; pass kind="):
        reader.open_shard_set(piped, cache=cache)
    assert keys_labels(reader.open_shard_set(piped, kind="video", cache=cache)) == keys_labels(open_shard_set(shard_dir))
    assert reader.open_shard_set(shard_dir).num_samples == 7  # a set's manifest names its kind


def test_wids_reads_fastvid_shard_sets(shard_dir):
    wids = pytest.importorskip("wids")
    index = json.loads((shard_dir / fmt.WIDS_INDEX_NAME).read_text())
    assert index["wids_version"] == 1 and sum(s["nsamples"] for s in index["shardlist"]) == 7
    ds = wids.ShardListDataset(str(shard_dir / fmt.WIDS_INDEX_NAME), transformations=[])
    assert len(ds) == 7
    ours = open_shard_set(shard_dir)
    expected = [(k, c) for k, c in keys_labels(ours)]
    got = []
    for i in range(len(ds)):
        sample = ds[i]
        assert sample[".webm"].read()[:4] == b"\x1a\x45\xdf\xa3"  # EBML magic: the stored VP9 WebM
        got.append((sample["__key__"], sample[".cls"].read()))
    assert got == expected


# -- HTTP and S3 ---------------------------------------------------------------------------------------


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    counts: dict = {}

    def do_GET(self):
        type(self).counts[self.path] = type(self).counts.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_root(shard_dir):
    handler = functools.partial(_CountingHandler, directory=str(shard_dir.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loader_and_inspect_read_over_http(shard_dir, http_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    url = f"{http_root}/set"
    # A streamed set is planned per shard (each rank its own shards): the same plan on the local copy gives
    # the same batches.
    local = video_loader(shard_dir, batch_size=2, clip_len=4, backend="pyav", device="cpu", num_workers=0, plan="shards")
    remote_loader = video_loader(url + "/", batch_size=2, clip_len=4, backend="pyav", device="cpu", num_workers=0)
    assert remote_loader.shard_set.streamed and remote_loader.shard_plan
    assert remote_loader.shard_set.shards[0].tar.parent == tmp_path / "cache"
    a, b = list(local), list(remote_loader)
    assert [x["key"] for x in a] == [x["key"] for x in b] and len(a) == 3
    assert all((x["label"] == y["label"]).all() and (x["video"] == y["video"]).all() for x, y in zip(a, b))
    braced = open_shard_set(f"{url}/train-{{000000..000002}}.tar")  # indexes and manifest found beside the tars
    assert keys_labels(braced) == keys_labels(local.shard_set) and braced.manifest["num_samples"] == 7
    assert cli.main(["inspect", url, "--verify"]) == 0
    assert "verify: OK" in capsys.readouterr().out
    # Bad addresses: one clear error with the URL exactly as given.
    with pytest.raises(FileNotFoundError, match=rf"{http_root}/nothing/manifest.json: does not exist"):
        open_shard_set(f"{http_root}/nothing")
    with pytest.raises(FileNotFoundError, match=r"nosuchproto://bucket/x: unknown protocol 'nosuchproto'"):
        open_shard_set("nosuchproto://bucket/x")


def test_loader_reads_from_s3_compatible_server(shard_dir, tmp_path, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for var, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                           ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", endpoint),
                           ("FASTVID_CACHE_DIR", str(tmp_path / "cache"))):
            monkeypatch.setenv(var, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bucket")
        for f in shard_dir.iterdir():
            s3.upload_file(str(f), "bucket", f"k400/train/{f.name}")
        # The endpoint comes from AWS_ENDPOINT_URL, as the README's "train from S3" says.
        remote_set = open_shard_set("s3://bucket/k400/train")
        assert keys_labels(remote_set) == keys_labels(open_shard_set(shard_dir))
        with pytest.raises(FileNotFoundError, match=r"s3://bucket/k400/nothing/manifest.json: does not exist"):
            open_shard_set("s3://bucket/k400/nothing/")
    finally:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # its clients point at this server
        server.stop()


# -- the cache -----------------------------------------------------------------------------------------


def test_cache_downloads_once_for_concurrent_processes(shard_dir, http_root, tmp_path):
    url = f"{http_root}/set/train-000001.tar"
    _CountingHandler.counts.pop("/set/train-000001.tar", None)
    # Three processes (ranks of one node) start together; each prints the sha256 of what it got.
    code = ("import hashlib, sys; from fastvid.store.cache import ShardCache; "
            "print(hashlib.sha256(ShardCache(sys.argv[1], 1 << 30).fetch(sys.argv[2]).read_bytes()).hexdigest())")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "c"), url], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert results == [hashlib.sha256((shard_dir / "train-000001.tar").read_bytes()).hexdigest()] * 3
    assert _CountingHandler.counts["/set/train-000001.tar"] == 1
    assert not [p for p in (tmp_path / "c").iterdir() if ".tmp-" in p.name]


def test_cache_evicts_least_recently_used_but_never_pinned_entries(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in "abcd":
        (src / f"{name}.bin").write_bytes(name.encode() * 100)
    one = ShardCache(tmp_path / "c", 250)   # room for two entries
    a = one.fetch(f"pipe:cat {src}/a.bin")
    one.release()
    other = ShardCache(tmp_path / "c", 250)  # a second rank on the same node
    b = other.fetch(f"file://{src}/b.bin")    # pinned by `other`
    c = one.fetch(f"file://{src}/c.bin")      # evicts a (least recent, unpinned), not the pinned b
    assert not a.exists() and b.read_bytes() == b"b" * 100 and c.read_bytes() == b"c" * 100
    from fastvid.store.cache import CacheFullError

    with pytest.raises(CacheFullError, match=r"d\.bin: the shard cache .* cannot hold"):
        one.fetch(f"file://{src}/d.bin", size_hint=100)  # b and c are pinned
    other.release()
    d = one.fetch(f"file://{src}/d.bin", size_hint=100)  # now b may go
    assert d.read_bytes() == b"d" * 100 and not b.exists() and c.exists()
    assert one.used_bytes() == 200


def test_train_data_path_may_be_a_url(shard_dir, http_root, tmp_path, monkeypatch):
    import torch

    from fastvid.video.config import TrainConfig
    from fastvid.train.distributed import DistInfo
    from fastvid.video.task import build_loader

    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    cfg = TrainConfig(data_path=http_root, batch_size=2, clip_len=4, backend="pyav", workers=0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    ld = build_loader(cfg, info, "set", train=True, preset="video_resnet")
    assert ld.num_videos == 7 and ld.classes == ["a", "b", "c"]
    assert ld.shard_set.shards[0].tar.parent == tmp_path / "cache"
