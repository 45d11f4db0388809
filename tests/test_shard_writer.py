"""The generic shard writer: tars, DALI index, manifest, failures, resume, shuffling, node split + merge.

Items here are tiny byte payloads (no video) so every property of the writer is checked exactly;
DALI's real webdataset reader reads the shards back through fastvid's index files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile

import numpy as np
import pytest

from fastvid.store import tarindex
from fastvid.store.manifest import file_sha256, read_manifest, shard_files
from fastvid.store.merge import merge_manifests
from fastvid.store.writer import shuffled_order, ShardJob, write_shard_set

CLASSES = ["a", "b", "c", "d"]


@dataclasses.dataclass(frozen=True)
class Item:
    key: str
    source: str
    label: int
    size: int


def payload(item: Item) -> bytes:
    return bytes([(item.label * 31 + item.size) % 256]) * item.size


def encode_item(item: Item) -> dict:
    """Writer encode used by these tests: fails for sources ending in 'bad'."""
    if item.source.endswith("bad"):
        raise ValueError(f"cannot decode {item.source}")
    return {"bin": payload(item), "cls": item.label, "json": {"source": item.source, "label": item.label}}


def make_items(per_class: int = 6, bad: int = 1) -> list[Item]:
    # Class-sorted, like a directory walk of a Kinetics tree.
    items = [Item(f"{c}_{i:03d}", f"{c}/{i}", label, 100 + 37 * i + label) for label, c in enumerate(CLASSES) for i in range(per_class)]
    items += [Item(f"broken_{i}", f"x/{i}.bad", 0, 10) for i in range(bad)]
    return items


def write(items, out, **kw):
    kw.setdefault("max_samples", 5)
    encode = kw.pop("encode", encode_item)
    return write_shard_set(items, encode, out, ShardJob(kind="video", classes=CLASSES, options={"codec": "test"}, **kw))


def tar_samples(tar_path) -> list[tuple[str, dict]]:
    samples: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            key, ext = tarindex.split_member_name(m.name)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return list(samples.items())


def test_manifest_tar_contents_and_failures(tmp_path):
    items = make_items()
    manifest = write(items, tmp_path)
    good = [it for it in items if not it.source.endswith("bad")]
    assert manifest == read_manifest(tmp_path)
    assert manifest["format"] == "fastvid-shards" and manifest["version"] == 1 and manifest["kind"] == "video"
    assert manifest["num_samples"] == len(good) == 24
    assert manifest["classes"] == CLASSES
    assert manifest["failures"] == [{"source": "x/0.bad", "error": "ValueError: cannot decode x/0.bad"}]
    assert [s["samples"] for s in manifest["shards"]] == [5, 5, 5, 5, 4]
    assert [s["name"] for s in manifest["shards"]] == [f"train-{i:06d}.tar" for i in range(5)]
    assert manifest["options"]["codec"] == "test" and manifest["options"]["seed"] == 0
    by_key = {it.key: it for it in good}
    seen = []
    for shard, (tar, idx) in zip(manifest["shards"], shard_files(tmp_path)):
        assert tar.stat().st_size == shard["bytes"] and file_sha256(tar) == shard["sha256"]
        assert idx == tmp_path / (tar.stem + ".idx")
        for key, fields in tar_samples(tar):
            item = by_key[key]
            assert set(fields) == {"bin", "cls", "json"}
            assert fields["bin"] == payload(item)
            assert fields["cls"] == str(item.label).encode()
            assert json.loads(fields["json"]) == {"source": item.source, "label": item.label}
            seen.append(key)
    assert sorted(seen) == sorted(by_key)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_dali_index_matches_tar_and_dali_reads_every_sample(tmp_path):
    from nvidia.dali import fn, pipeline_def

    items = make_items(per_class=5, bad=0)
    manifest = write(items, tmp_path, max_samples=7)
    pairs = shard_files(tmp_path)
    for tar, idx in pairs:
        lines = idx.read_text().splitlines()
        entries = tarindex.read_index(idx)
        assert lines[0] == f"v1.2 {len(entries)}"
        with open(tar, "rb") as f:  # every (offset, size) points at the member's bytes
            for components in entries:
                for ext, offset, size, name in components:
                    f.seek(offset)
                    data = f.read(size)
                    assert name.endswith("." + ext)
                    if ext == "cls":
                        assert data.isdigit()

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        data, cls, info = fn.readers.webdataset(paths=[str(t) for t, _ in pairs], index_paths=[str(i) for _, i in pairs],
                                                ext=["bin", "cls", "json"])
        return data, cls, info

    p = pipe()
    p.build()
    by_source = {it.source: it for it in items}
    read = []
    for _ in range(manifest["num_samples"]):
        data, cls, info = (np.array(x[0]) for x in p.run())
        info = json.loads(info.tobytes())
        item = by_source[info["source"]]
        assert data.tobytes() == payload(item)
        assert int(cls.tobytes()) == item.label
        read.append(info["source"])
    assert sorted(read) == sorted(by_source)


def test_shuffle_mixes_classes_and_is_deterministic(tmp_path):
    items = make_items(per_class=10, bad=0)
    write(items, tmp_path / "s0", max_samples=8, seed=0)
    write(items, tmp_path / "s0again", max_samples=8, seed=0)
    write(items, tmp_path / "s1", max_samples=8, seed=1)

    def keys(out):
        return [k for tar, _ in shard_files(out) for k, _ in tar_samples(tar)]

    k0 = keys(tmp_path / "s0")
    assert k0 == keys(tmp_path / "s0again")  # same seed, same order
    assert k0 != keys(tmp_path / "s1")
    assert k0 == [items[i].key for i in shuffled_order(len(items), 0)]
    # Class-sorted input comes out mixed: every shard of 8 holds at least 3 of the 4 classes.
    for tar, _ in shard_files(tmp_path / "s0"):
        labels = {int(f["cls"]) for _, f in tar_samples(tar)}
        assert len(labels) >= 3, labels
    # Byte-identical reruns (fixed member mtimes): same sha256 per shard.
    assert [s["sha256"] for s in read_manifest(tmp_path / "s0")["shards"]] == \
           [s["sha256"] for s in read_manifest(tmp_path / "s0again")["shards"]]


def test_workers_give_the_same_shards(tmp_path):
    items = make_items(per_class=4)
    one = write(items, tmp_path / "w1", workers=1)
    two = write(items, tmp_path / "w2", workers=2)
    assert one["shards"] == two["shards"] and one["failures"] == two["failures"]


def test_max_shard_bytes(tmp_path):
    items = make_items(per_class=6, bad=0)
    limit = 4096
    manifest = write(items, tmp_path, max_samples=None, max_shard_bytes=limit)
    assert manifest["num_samples"] == 24
    assert len(manifest["shards"]) > 3
    for (tar, _), shard in zip(shard_files(tmp_path), manifest["shards"]):
        # Data members (header + padded data) of each shard stay within the limit.
        with tarfile.open(tar) as t:
            used = sum(512 + -(-m.size // 512) * 512 for m in t)
        assert used <= limit or shard["samples"] == 1


def _stats(out):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("*.tar"))}


def test_resume_skips_complete_shards_and_ignores_temp_files(tmp_path):
    items = make_items()
    first = write(items, tmp_path)
    before = _stats(tmp_path)
    # Rerun: nothing is rewritten.
    again = write(items, tmp_path)
    assert again == first
    assert _stats(tmp_path) == before
    # Simulate a crash in the middle of shard 3: shards 3 and 4 gone, a half-written temp of 3 left behind.
    (tmp_path / "train-000003.tar").unlink()
    (tmp_path / "train-000004.tar").unlink()
    (tmp_path / "train-000004.idx").unlink()
    with open(tmp_path / "train-000003.tar.tmp-424242", "wb") as f:
        f.write(b"\0" * 1000)
    # And a final-named tar truncated behind the writer's back is not trusted either.
    data = (tmp_path / "train-000002.tar").read_bytes()
    (tmp_path / "train-000002.tar").write_bytes(data[: len(data) // 2])
    resumed = write(items, tmp_path)
    after = _stats(tmp_path)
    assert resumed == first  # same bytes (deterministic), same failures
    for name in ("train-000000.tar", "train-000001.tar"):
        assert after[name] == before[name]  # untouched: same inode and mtime
    assert after["train-000002.tar"] != before["train-000002.tar"]
    assert not list(tmp_path.glob("*.tmp-*"))
    assert sorted(after) == sorted(before)


def test_changed_options_or_inputs_refuse_without_overwrite_and_swap_with_it(tmp_path):
    items = make_items()
    write(items, tmp_path, max_samples=5)
    before = _stats(tmp_path)
    with pytest.raises(ValueError, match=r"complete shard set made with other options.*max_samples 5 -> 12.*--overwrite"):
        write(items, tmp_path, max_samples=12)
    assert _stats(tmp_path) == before  # untouched
    # --overwrite killed half way: the old set is intact (the new one is built beside it)
    with pytest.raises(SystemExit):
        write(items, tmp_path, max_samples=12, overwrite=True, encode=_exit_at(15))
    assert _stats(tmp_path) == before and read_manifest(tmp_path)["options"]["max_samples"] == 5
    manifest = write(items, tmp_path, max_samples=12, overwrite=True)  # resumes the staged set, then swaps
    assert [s["samples"] for s in manifest["shards"]] == [12, 12]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert sorted(p.name for p in tmp_path.glob("*.idx")) == ["train-000000.idx", "train-000001.idx"]
    assert _stats(tmp_path)["train-000000.tar"] != before["train-000000.tar"]
    assert read_manifest(tmp_path)["options"]["max_samples"] == 12 and shard_files(tmp_path)
    assert not any(p.name.startswith(f".{tmp_path.name}.") for p in tmp_path.parent.iterdir())  # staging gone
    changed = [dataclasses.replace(it, size=it.size + 1) if i == 0 else it for i, it in enumerate(items)]
    mid = _stats(tmp_path)
    with pytest.raises(ValueError, match="the inputs differ"):
        write(changed, tmp_path, max_samples=12)
    write(changed, tmp_path, max_samples=12, overwrite=True)
    assert _stats(tmp_path)["train-000000.tar"] != mid["train-000000.tar"]


class _exit_at:
    """An encoder that stops the job (as SIGTERM does) at its n-th call."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, item):
        self.calls += 1
        if self.calls == self.n:
            raise SystemExit(143)
        return encode_item(item)


def test_node_split_and_merge(tmp_path):
    items = make_items(per_class=7, bad=2)
    single = write(items, tmp_path / "single")
    out = tmp_path / "multi"
    parts = [write(items, out, num_nodes=3, node_rank=r) for r in range(3)]
    names = [s["name"] for p in parts for s in p["shards"]]
    assert all(n.startswith(f"train-n{r:03d}-") for r, p in enumerate(parts) for n in [s["name"] for s in p["shards"]])
    assert len(set(names)) == len(names)
    assert not (out / "manifest.json").exists()
    assert sorted((out / f"manifest-n{r:03d}.json").exists() for r in range(3)) == [True] * 3
    with pytest.raises(FileNotFoundError, match="merge"):
        read_manifest(out)
    # Partial manifests of a missing node are refused unless allowed.
    os.rename(out / "manifest-n002.json", tmp_path / "kept.json")
    with pytest.raises(ValueError, match=r"nodes \[2\] of 3"):
        merge_manifests(out)
    os.rename(tmp_path / "kept.json", out / "manifest-n002.json")

    from fastvid.cli import main

    assert main(["manifest", str(out)]) == 0
    merged = read_manifest(out)
    assert merged["num_samples"] == single["num_samples"] == 28
    assert sorted(f["source"] for f in merged["failures"]) == sorted(f["source"] for f in single["failures"])
    keys_multi = sorted(k for tar, _ in shard_files(out) for k, _ in tar_samples(tar))
    keys_single = sorted(k for tar, _ in shard_files(tmp_path / "single") for k, _ in tar_samples(tar))
    assert keys_multi == keys_single  # disjoint parts that cover everything
    assert merged["classes"] == CLASSES and "node_rank" not in merged


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no dots"):
        write([Item("a.b", "src/a.b", 0, 10)], tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        write([Item("a", "1", 0, 10), Item("a", "2", 0, 10)], tmp_path)
    with pytest.raises(ValueError, match="node_rank"):
        write(make_items(), tmp_path, num_nodes=2, node_rank=2)
    write(make_items(), tmp_path / "one_split")
    with pytest.raises(ValueError, match="own directory"):
        write(make_items(), tmp_path / "one_split", split="val")
    with pytest.raises(RuntimeError, match="nothing was written"):
        write([Item("x", "x.bad", 0, 10)], tmp_path / "none")
    with pytest.raises(RuntimeError, match="--strict: 1 inputs failed"):
        write(make_items(), tmp_path / "strict", strict=True)
    # --strict still leaves a complete, readable shard set with the failure recorded.
    assert read_manifest(tmp_path / "strict")["failures"][0]["source"] == "x/0.bad"


def test_atomic_path_leaves_no_temp_and_the_old_file_when_the_body_raises(tmp_path):
    from fastvid.store.atomic import atomic_path

    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and f".tmp-{os.getpid()}" in tmp.name
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="fastvid-shards"):
        read_manifest(tmp_path)


def test_malformed_dali_index_names_the_file(tmp_path):
    write(make_items(), tmp_path)
    tar, idx = shard_files(tmp_path)[0]
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join([lines[0], lines[1].replace(" ", " x", 2)] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=rf"{idx.name}: malformed line"):
        tarindex.read_index(idx)
    with pytest.raises(ValueError, match=rf"{idx.name}: malformed line"):
        tarindex.indexed_samples(tar, idx)
    idx.write_text("v1.2 many\n")
    with pytest.raises(ValueError, match=rf"{idx.name}: malformed header"):
        tarindex.read_index(idx)
    idx.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=rf"{idx.name}: not a DALI"):
        tarindex.indexed_samples(tar, idx)
