"""Per-shard planning metadata (`<stem>.meta.json`): written with every shard, read instead of the sample
jsons (a set of 8,000 samples opens with no per-sample read), validated like any untrusted file, computed
once for sets written before it existed, reported by `fastvid inspect`; the per-shard training plan of
streamed sets; event writers keeping a recording's segments together."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import numpy as np
import pytest

from conftest import video_loader
from fastvid.cli import main as fastvid_main
from fastvid.store import reader, shardmeta
from fastvid.store.format import MANIFEST_NAME, meta_name_for, plain_file_name
from fastvid.store.writer import ShardJob, write_shard_set
from fastvid.video import sampling
from fastvid.video.reader import ShardSet


class Item:
    def __init__(self, key, label, frames):
        self.key, self.source, self.label, self.frames = key, f"src/{key}", label, frames


def fake_video(item):
    """A tiny fake sample: planning reads only the json (the bytes are never decoded here)."""
    return {"mp4": b"not a video", "cls": item.label,
            "json": {"num_frames": item.frames, "fps": 25.0, "width": 64, "height": 48, "codec": "h264",
                     "label": item.label, "source": item.source}}


def write_fake_set(out, n, per_shard=1000):
    items = [Item(f"v{i:05d}", i % 3, 16 + i % 40) for i in range(n)]
    write_shard_set(items, fake_video, out, ShardJob(kind="video", classes=["a", "b", "c"], options={}, max_samples=per_shard))
    return items


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta") / "big"
    items = write_fake_set(out, 8000)
    return out, {it.key: it for it in items}


class ReadCounter:
    """Counts the calls of the functions that read sample components (video and events) or byte ranges."""

    def __init__(self, monkeypatch):
        from fastvid.events import reading as ev_reading
        from fastvid.store import remote

        self.calls = Counter()
        for owner, name in ((ShardSet, "read_components"), (ev_reading.SegmentReader, "read_fields"),
                            (remote, "read_ranges")):
            original = getattr(owner, name)

            def counted(*args, _original=original, _name=name, **kw):
                self.calls[_name] += 1
                return _original(*args, **kw)

            monkeypatch.setattr(owner, name, counted)


def test_opening_8000_samples_reads_no_sample_json(big_set, monkeypatch):
    out, items = big_set
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert len(manifest["shards"]) == 8 and all("meta_sha256" in s and "index_sha256" in s for s in manifest["shards"])
    counter = ReadCounter(monkeypatch)
    loader = video_loader(out, batch_size=8, clip_len=8, backend="pyav", device="cpu", num_workers=0)
    work = loader.epoch_work()
    assert counter.calls == Counter()  # no sample component and no byte range was read to plan the epoch
    # The plan used the metadata: grids follow each video's frame count (clip_len 8, stride 1: frames - 7 clips).
    shard_set = loader.shard_set
    for si, shard in enumerate(shard_set.shards[:2]):
        for i, key in enumerate(shard.keys[:50]):
            assert loader._grid_sizes[si][i] == items[key].frames - 7
    assert len(work) == len(loader) * 8 and loader.shard_set.codec == "h264"
    loader.close()


def test_metadata_file_is_validated(big_set, tmp_path):
    out, items = big_set
    name = meta_name_for("train-000000.tar")
    good = (out / name).read_bytes()
    doc = json.loads(good)
    keys = doc["keys"]
    assert doc["format"] == "fastvid-shard-meta" and doc["kind"] == "video" and len(keys) == 1000
    assert set(doc["columns"]) == {"num_frames", "fps", "width", "height", "codec", "label"}
    meta = shardmeta.parse(good, name, kind="video", keys=keys)
    item = items[keys[3]]
    assert meta.record(3) == {"num_frames": item.frames, "fps": 25.0, "width": 64, "height": 48, "codec": "h264",
                              "label": item.label}
    bad_cases = {
        "not the index's": dict(doc, keys=keys[::-1]),
        "one value per sample": dict(doc, columns=dict(doc["columns"], fps=[25.0])),
        "not an identifier": dict(doc, columns={"../x": [1] * len(keys)}),
        "of kind 'events'": dict(doc, kind="events"),
        "holds": dict(doc, columns=dict(doc["columns"], codec=[{"x": 1}] * len(keys))),
    }
    for message, bad in bad_cases.items():
        with pytest.raises(ValueError, match=message):
            shardmeta.parse(json.dumps(bad).encode(), name, kind="video", keys=keys)
    with pytest.raises(ValueError, match="not a JSON number"):
        shardmeta.parse(good.replace(b"25.0", b"Infinity", 1), name, kind="video", keys=keys)


def test_old_set_computes_metadata_once_and_keeps_it(tmp_path, monkeypatch, capfd):
    out = tmp_path / "old"
    write_fake_set(out, 300, per_shard=100)
    # As an older fastvid wrote it: no metadata files, no hashes of them in the manifest.
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    for shard in manifest["shards"]:
        shard.pop("meta_sha256")
        (out / meta_name_for(shard["name"])).unlink()
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert fastvid_main(["inspect", str(out)]) == 0
    assert "per-shard metadata: no" in capfd.readouterr().out
    counter = ReadCounter(monkeypatch)
    first = reader.open_shard_set(out)
    err = capfd.readouterr().err
    assert "3 shard(s) have no per-shard metadata" in err and str(out) in err
    assert counter.calls["read_ranges"] == 3  # one pass over each shard's jsons
    assert sorted(p.name for p in out.glob("*.meta.json")) == [meta_name_for(s["name"]) for s in manifest["shards"]]
    again = reader.open_shard_set(out)
    assert capfd.readouterr().err == "" and counter.calls["read_ranges"] == 3  # kept: not computed again
    assert [s.meta.columns for s in again.shards] == [s.meta.columns for s in first.shards]
    assert fastvid_main(["inspect", str(out), "--verify"]) == 0
    assert "verify: OK" in capfd.readouterr().out


READ_ONLY_CHECK = """
import sys
from fastvid.store import reader
opened = reader.open_shard_set(sys.argv[1])
print(opened.shards[1].meta.record(0)["num_frames"], opened.shards[1].keys[0])
reader.open_shard_set(sys.argv[1])
"""


def test_metadata_of_read_only_old_set_goes_to_the_cache(tmp_path):
    """The set's directory is a read-only bind mount (a private mount namespace: nothing outlives the test)."""
    import subprocess
    import sys

    out = tmp_path / "ro"
    write_fake_set(out, 50, per_shard=25)
    for p in out.glob("*.meta.json"):
        p.unlink()
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private read-only mount")
    script = tmp_path / "check.py"
    script.write_text(READ_ONLY_CHECK)
    env = dict(os.environ, FASTVID_CACHE_DIR=str(tmp_path / "cache"))
    cmd = f"mount --bind {out} {out} && mount -o remount,bind,ro {out} && {sys.executable} {script} {out}"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", cmd], capture_output=True, text=True,
                       env=env, timeout=120)
    if r.returncode != 0 and ("Operation not permitted" in r.stderr or "permission denied" in r.stderr.lower()):
        pytest.skip(f"no private mounts here ({r.stderr.strip()[:80]})")
    assert r.returncode == 0, r.stderr
    frames, key = r.stdout.split()
    assert int(frames) == 16 + int(key[1:]) % 40
    # One message (the second open found the kept copies), naming the cache; nothing written beside the shards.
    assert r.stderr.count("have no per-shard metadata") == 1 and str(tmp_path / "cache" / "meta") in r.stderr
    assert not list(out.glob("*.meta.json")) and len(list((tmp_path / "cache" / "meta").glob("*.meta.json"))) == 2


def test_inspect_reports_kind_and_metadata(big_set, capfd):
    out, _ = big_set
    assert fastvid_main(["inspect", str(out), "--json"]) == 0
    summary = json.loads(capfd.readouterr().out)
    assert summary["kind"] == "video" and summary["per_shard_metadata"] == "all"
    assert fastvid_main(["inspect", str(out)]) == 0
    text = capfd.readouterr().out
    assert ": video shard set" in text and "per-shard metadata: yes" in text


def test_percent_encoded_names_are_not_plain():
    for name in ("%2E%2E%2Fprivate%2Fx.tar", "a%2fb.tar", "%2e%2e"):
        with pytest.raises(ValueError, match="not a plain file name"):
            plain_file_name(name, "manifest.json")
    assert plain_file_name("train-000001.tar", "m") == "train-000001.tar"


# -- the per-shard plan of streamed sets ----------------------------------------------------------------


def test_shard_plan_splits_shards_between_ranks_with_equal_counts():
    rng = np.random.default_rng(0)
    grid = [[int(k) for k in rng.integers(0, 5, rng.integers(5, 12))] for _ in range(40)]
    keys = [[f"s{s}v{i}" for i in range(len(g))] for s, g in enumerate(grid)]
    world = 3
    plans = [sampling.shard_train_items(grid, keys, clips_per_video=2, seed=7, epoch=1, rank=r, world_size=world, block=2)
             for r in range(world)]
    total = sampling.num_train_clips(grid, 2)
    assert all(len(p) == total // world for p in plans)  # equal counts on every rank
    everything = [(w.shard, w.sample, w.clips) for p in plans for w in p]
    assert len(set(everything)) == len(everything)  # no clip twice
    # Each rank reads about a third of the shards; only the shards at the cuts are shared.
    shard_sets = [set(w.shard for w in p) for p in plans]
    assert all(len(a & b) <= 1 for i, a in enumerate(shard_sets) for b in shard_sets[i + 1:])
    assert all(abs(len(s) - 40 / world) <= 2 for s in shard_sets)
    # Clips are shuffled only within blocks of 2 shards: a rank's shards appear in a few runs, in order.
    for p in plans:
        order = sampling.first_use_order(p)
        for j in range(0, len(p), 1):
            blocks_seen = {order.index(w.shard) // 2 for w in p[max(0, j - 1):j + 1]}
            assert max(blocks_seen) - min(blocks_seen) <= 1
    # Same arguments, same plan; another epoch, another one.
    again = sampling.shard_train_items(grid, keys, clips_per_video=2, seed=7, epoch=1, rank=0, world_size=world, block=2)
    other = sampling.shard_train_items(grid, keys, clips_per_video=2, seed=7, epoch=2, rank=0, world_size=world, block=2)
    assert again == plans[0] and other != plans[0]
    # Per-video clip picks are the global plan's (RandomClipSampler's draws).
    picked = sorted(everything)
    global_plan = sorted((w.shard, w.sample, w.clips) for w in sampling.train_items(grid, keys, clips_per_video=2, seed=7, epoch=1))
    assert set(picked) <= set(global_plan) and len(global_plan) - len(picked) < world


def test_shard_plan_resumes_exactly_on_the_same_world_size(big_set):
    out, _ = big_set
    kw = dict(batch_size=8, clip_len=8, backend="pyav", device="cpu", num_workers=0, plan="shards", world_size=2)
    loaders = [video_loader(out, rank=r, **kw) for r in range(2)]
    full = [loader.epoch_work() for loader in loaders]
    assert len(full[0]) == len(full[1]) == len(loaders[0]) * 8
    state = dict(loaders[0].state_dict(), position=3 * 2 * 8)  # 3 steps done on every rank
    for r, loader in enumerate(loaders):
        loader.load_state_dict(state)
        assert loader.epoch_work() == full[r][3 * 8:] and loader.remaining_batches == len(loader) - 3
        loader.close()


# -- events: a recording's segments stay together ----------------------------------------------------


class Segment:
    def __init__(self, recording, k):
        self.recording, self.segment = recording, k
        self.key, self.source = f"{recording}_s{k:06d}", f"{recording}#{k}"


def test_grouped_writer_keeps_a_recordings_segments_together(tmp_path):
    items = [Segment(f"rec{r}", k) for r in range(12) for k in range(7)]
    write_shard_set(items, lambda it: {"json": {"recording": it.recording}}, tmp_path / "ev", ShardJob(kind="events",
                    classes=["car"], options={}, max_samples=10, group=lambda it: it.recording))
    opened = reader.open_files(tmp_path / "ev", tables=True, kind="events")
    where: dict[str, list] = {}
    order = []
    for si, f in enumerate(opened.files):
        for key, _ in f.index:
            rec, k = key.rsplit("_s", 1)
            where.setdefault(rec, []).append(si)
            order.append((rec, int(k)))
    for rec, shards in where.items():
        assert shards == sorted(shards) and shards[-1] - shards[0] <= 1  # 7 segments span at most 2 shards of 10
    assert [k for rec, k in order if rec == "rec3"] == list(range(7))  # in time order
    assert [rec for rec, _ in order] != sorted(rec for rec, _ in order)  # recordings are still shuffled


def test_event_loader_plans_from_metadata_without_reads(tmp_path, monkeypatch):
    from test_events_shard import write_boxes
    from test_events_io import random_events, write_gen1_dat

    from conftest import event_loader
    from fastvid.events import shard_events

    src = tmp_path / "gen1"
    src.mkdir()
    for r in range(3):
        ts, xs, ys, ps = random_events(1500, 1_200_000, r)
        write_gen1_dat(src / f"rec{r}_td.dat", ts, xs, ys, ps)
        write_boxes(src / f"rec{r}_bbox.npy", np.array([50_000, 260_000, 260_000, 700_000, 1_150_000]) + r, r)
    shard_events(src, tmp_path / "ev", segment_ms=250, max_samples=4)
    counter = ReadCounter(monkeypatch)
    loader = event_loader(tmp_path / "ev", 2, window_ms=50, window_mode="labels")
    assert counter.calls == Counter()
    names = sorted(r.name for r in loader.recordings)
    assert names == ["rec0", "rec1", "rec2"]
    labels = {r.name: r.label_times.tolist() for r in loader.recordings}
    assert labels["rec1"] == [50_001, 260_001, 700_001, 1_150_001]
