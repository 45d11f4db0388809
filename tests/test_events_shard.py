"""Event shards from GEN1-format recordings written here: segment round trip (every event and box
exactly once), iter_segments order, manifest/index/failures, resume, and the CLI."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from fastvid.cli import main as fastvid_main
from fastvid.events import iter_segments
from fastvid.events import codec as evcodec
from fastvid.events import writing as evwriting
from fastvid.events.types import EVENT_DTYPE
from fastvid.store.manifest import read_manifest, shard_files
from test_events_io import random_events, write_gen1_dat

GEN1_BOX = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"), ("confidence", "<f4"), ("track_id", "<u4")])


def write_boxes(path, ts, seed, sensor=(304, 240)):
    """GEN1-layout boxes of 30x20 px wholly inside the sensor (so cropping keeps them as they are)."""
    rng = np.random.default_rng(seed)
    boxes = np.zeros(len(ts), GEN1_BOX)
    boxes["ts"] = ts
    boxes["x"] = rng.uniform(0, sensor[0] - 31, len(ts))
    boxes["y"] = rng.uniform(0, sensor[1] - 21, len(ts))
    boxes["w"], boxes["h"] = 30, 20
    boxes["class_id"] = rng.integers(0, 2, len(ts))
    boxes["confidence"] = 1
    boxes["track_id"] = np.arange(len(ts))
    np.save(path, boxes)
    return boxes


@pytest.fixture
def gen1_dir(tmp_path):
    """Three recordings (one in a subfolder) with events exactly on segment borders."""
    src = tmp_path / "gen1"
    (src / "sub").mkdir(parents=True)
    recs = {}
    specs = {"rec_a": (src / "rec_a", 2000, 1_300_000, 1), "rec_b": (src / "sub" / "rec_b", 800, 700_000, 2), "rec_c": (src / "rec_c", 1500, 1_000_000, 3)}
    for name, (stem, n, t_max, seed) in specs.items():
        ts, xs, ys, ps = random_events(n, t_max, seed)
        ts = np.sort(np.concatenate([ts, [0, 499_999, 500_000, 500_000]]))[:n + 4]
        xs, ys, ps = (np.resize(a, len(ts)) for a in (xs, ys, ps))
        write_gen1_dat(f"{stem}_td.dat", ts, xs, ys, ps)
        box_ts = np.array([50_000, 499_999, 500_000, 650_000, t_max - 1])
        write_boxes(f"{stem}_bbox.npy", box_ts, seed)
        recs[name] = (ts, xs, ys, ps, box_ts)
    return src, recs


def test_encode_decode_roundtrip():
    ts, xs, ys, ps = random_events(1000, 500_000, seed=9)
    ev = np.zeros(1000, EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = ts + 10_000_000, xs, ys, ps
    data = evcodec.encode_events(ev, 10_000_000)
    np.testing.assert_array_equal(evcodec.decode_events(data, 10_000_000), ev)
    assert len(data) < ev.nbytes * 0.9  # compact: under the 16 B/event in-memory layout
    stored = evcodec.encode_events(ev, 10_000_000, compress_level=0)
    np.testing.assert_array_equal(evcodec.decode_events(stored, 10_000_000), ev)
    assert len(data) < len(stored) < ev.nbytes  # uncompressed is still delta/bit packed
    assert len(evcodec.decode_events(evcodec.encode_events(ev[:0], 5), 5)) == 0
    with pytest.raises(ValueError):
        evcodec.encode_events(ev, 20_000_000)


@pytest.mark.parametrize("codec,level,ext", [("zstd", 1, "events.npz.zst"), ("zstd", 9, "events.npz.zst"),
                                             ("deflate", 1, "events.npz"), ("stored", 1, "events.npz"), ("zstd", 0, "events.npz")])
def test_event_codecs_roundtrip(codec, level, ext):
    import io
    import zipfile

    from fastvid.events import codec as shard_codec

    ts, xs, ys, ps = random_events(2000, 500_000, seed=4)
    ev = np.zeros(len(ts), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = ts + 1_000_000, xs, ys, ps
    got_ext, data = shard_codec.encode_event_field(ev, 1_000_000, codec, level)
    assert got_ext == ext
    np.testing.assert_array_equal(shard_codec.decode_event_field(ext, data, 1_000_000, columns=False), ev)
    cols = shard_codec.decode_event_field(ext, data, 1_000_000)
    assert cols["t"].tolist() == ev["t"].tolist() and cols["x"].dtype == np.int16 and cols["p"].dtype == np.int8
    if ext.endswith(".zst"):  # a standard zstd frame around a stored .npz: readable without fastvid
        import zstandard

        with zipfile.ZipFile(io.BytesIO(zstandard.ZstdDecompressor().decompress(data))) as zf:
            assert sorted(zf.namelist()) == ["dt.npy", "n.npy", "p.npy", "x.npy", "y.npy"]
        with pytest.raises(ValueError, match="zstd"):
            shard_codec.decode_event_field(ext, data[:len(data) // 2], 1_000_000)
    with pytest.raises(ValueError, match="codec"):
        shard_codec.encode_event_field(ev, 0, "lzma")


def test_shard_and_iter_segments_preserve_everything(gen1_dir, tmp_path):
    src, recs = gen1_dir
    out = tmp_path / "shards"
    manifest = evwriting.shard_events(src, out, segment_ms=500, max_samples=3)
    assert manifest["kind"] == "events" and manifest["failures"] == []
    assert read_manifest(out)["num_samples"] == manifest["num_samples"]
    assert len(shard_files(out)) == len(manifest["shards"]) >= 2
    # rec_a spans [0, 1.3 s) -> 3 segments, rec_b [0, 0.7 s) -> 2, rec_c [0, 1 s) -> 2 (+1 if an event is at 1.0 s)
    segments = list(iter_segments(out))
    names = [s["meta"]["recording"] for s in segments]
    assert names == sorted(names)
    assert set(names) == {"rec_a", "sub/rec_b", "rec_c"}
    for name, (ts, xs, ys, ps, box_ts) in recs.items():
        rec = name if name != "rec_b" else "sub/rec_b"
        mine = [s for s in segments if s["meta"]["recording"] == rec]
        assert [s["meta"]["segment"] for s in mine] == list(range(len(mine)))
        assert len(mine) == ts.max() // 500_000 + 1
        events = np.concatenate([s["events"] for s in mine])
        assert events["t"].tolist() == ts.tolist()  # none lost, none duplicated, in order
        assert events["x"].tolist() == xs.tolist() and events["p"].tolist() == ps.tolist()
        boxes = np.concatenate([s["boxes"] for s in mine])
        assert boxes["t"].tolist() == box_ts.tolist()
        for s in mine:
            m = s["meta"]
            assert m["t1"] - m["t0"] == 500_000 and m["t0"] == 500_000 * m["segment"]
            assert m["num_events"] == len(s["events"]) and m["sensor_size"] == [304, 240]
            assert m["recording_t_end"] == max(int(ts.max()), int(box_ts.max())) + 1
            assert np.all((s["events"]["t"] >= m["t0"]) & (s["events"]["t"] < m["t1"]))
            assert np.all((s["boxes"]["t"] >= m["t0"]) & (s["boxes"]["t"] < m["t1"]))
        # border events: 499_999 in segment 0, both 500_000 events in segment 1
        assert 499_999 in mine[0]["events"]["t"] and (mine[1]["events"]["t"] == 500_000).sum() >= 2
        assert mine[0]["boxes"]["t"].tolist()[-1] == 499_999 and mine[1]["boxes"]["t"][0] == 500_000


def test_tar_members_and_dali_index(gen1_dir, tmp_path):
    src, _ = gen1_dir
    out = tmp_path / "shards"
    evwriting.shard_events(src, out, segment_ms=500, max_samples=2)
    # a plain list of tars reads the same as the shard set directory
    by_dir = [(s["meta"]["recording"], s["meta"]["segment"], len(s["events"])) for s in iter_segments(out)]
    by_list = [(s["meta"]["recording"], s["meta"]["segment"], len(s["events"])) for s in iter_segments([str(t) for t, _ in shard_files(out)])]
    assert by_dir == by_list and len(by_dir) == 7
    tar_path, idx_path = shard_files(out)[0]
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    # The default layout: the block layout (events.evb, lz4); the former npz layout is one option away.
    assert any(n.endswith(".events.evb") for n in names) and any(n.endswith(".boxes.npy") for n in names)
    header = idx_path.read_text().splitlines()[0].split()
    assert header[0].startswith("v1") and int(header[1]) == len(names) // 3


def test_broken_recordings_become_failures_and_resume(gen1_dir, tmp_path):
    src, _ = gen1_dir
    write_gen1_dat(src / "trunc_td.dat", [1, 2], [1, 1], [1, 1], [0, 1])
    with open(src / "trunc_td.dat", "ab") as f:
        f.write(b"\x00\x01")
    write_boxes(src / "trunc_bbox.npy", [1], 0)
    write_gen1_dat(src / "nobox_td.dat", [1, 2], [1, 1], [1, 1], [0, 1])
    out = tmp_path / "shards"
    manifest = evwriting.shard_events(src, out, segment_ms=500, max_samples=2)
    failures = {f["source"].rsplit("/", 1)[-1]: f["error"] for f in manifest["failures"]}
    assert set(failures) == {"trunc_td.dat", "nobox_td.dat"}
    assert "truncated" in failures["trunc_td.dat"] and "byte" in failures["trunc_td.dat"]
    assert "bbox" in failures["nobox_td.dat"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = evwriting.shard_events(src, out, segment_ms=500, max_samples=2)
    assert again["shards"] == manifest["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before  # kept, not rewritten


def test_cli_shard_events(gen1_dir, tmp_path, capsys):
    src, recs = gen1_dir
    out = tmp_path / "cli_shards"
    rc = fastvid_main(["shard", "events", str(src), str(out), "--format", "gen1", "--segment-ms", "250", "--compress-level", "0",
                       "--max-shard-bytes", "1GiB"])  # sizes as `shard videos` takes them
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["max_shard_bytes"] == 2**30
    assert manifest["kind"] == "events" and manifest["options"]["segment_ms"] == 250
    assert manifest["options"]["compress_level"] == 0
    total = sum(len(r[0]) for r in recs.values())
    assert sum(s["meta"]["num_events"] for s in iter_segments(out)) == total
    rc = fastvid_main(["shard", "events", str(tmp_path / "nowhere"), str(out)])
    assert rc == 1 and "nowhere" in capsys.readouterr().err


def test_inspect_counts_events_and_boxes_per_class(gen1_dir, tmp_path):
    from fastvid.store.inspect import format_summary, summarize

    src, recs = gen1_dir
    out = tmp_path / "shards"
    evwriting.shard_events(src, out, segment_ms=500, max_samples=3)
    summary = summarize(out, verify=True)
    assert summary["problems"] == []
    assert summary["num_events"] == sum(len(r[0]) for r in recs.values())
    assert summary["num_recordings"] == 3
    boxes = np.concatenate([s["boxes"] for s in iter_segments(out)])
    classes = read_manifest(out)["classes"]
    expected = {classes[c]: int(n) for c, n in zip(*np.unique(boxes["class_id"], return_counts=True))}
    assert summary["boxes_per_class"] == expected
    assert sum(expected.values()) == sum(len(r[4]) for r in recs.values())
    assert "events from 3 recordings" in format_summary(summary)


def test_truncated_event_shard_is_one_clear_error(gen1_dir, tmp_path):
    src, _ = gen1_dir
    out = tmp_path / "shards"
    evwriting.shard_events(src, out, segment_ms=500, max_samples=3)
    victim = shard_files(out)[0][0]
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with pytest.raises(ValueError, match=rf"{victim.name}: truncated or changed since it was indexed"):
        list(iter_segments(out))


@pytest.mark.parametrize("layout,codec,ext", [("npz", "zstd", "events.npz.zst"), ("blocks", "lz4", "events.evb"),
                                              ("blocks", "zstd", "events.evb"), ("blocks", "none", "events.evb")])
def test_corrupt_event_data_is_one_clear_error(gen1_dir, tmp_path, layout, codec, ext):
    """Damaged data inside a sample (bit rot, bad copy) raises deep in a decompressor (or, for lz4 and
    stored blocks, fails the block's CRC-32): it must come out as one ValueError naming the tar and the sample."""
    from fastvid.store.tarindex import indexed_samples

    src, _ = gen1_dir
    out = tmp_path / "shards"
    evwriting.shard_events(src, out, segment_ms=500, max_samples=3, storage=evwriting.EventLayout(layout, codec))
    victim, idx = shard_files(out)[0]
    key, fields = indexed_samples(victim, idx)[0]
    offset, size = fields[ext]
    data = bytearray(victim.read_bytes())
    for i in range(offset + size // 2, offset + size // 2 + 16):
        data[i] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{victim.name}: cannot decode segment"):
        list(iter_segments(out))


def test_cli_output_path_that_is_a_file_is_one_clear_error(gen1_dir, tmp_path, capsys):
    src, _ = gen1_dir
    out = tmp_path / "taken"
    out.write_text("not a directory")
    rc = fastvid_main(["shard", "events", str(src), str(out)])
    assert rc == 1 and "taken" in capsys.readouterr().err


def test_boxes_of_shards_written_before_class_confidence_are_normalized():
    import io

    from fastvid.events import codec as shard_codec
    from fastvid.events.io import BOX_DTYPE

    old_layout = np.dtype([("t", "<i8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "<i4"),
                           ("confidence", "<f4"), ("track_id", "<i4")])
    old = np.zeros(2, old_layout)
    old["t"], old["confidence"] = [5, 9], [0.5, 0.25]
    old["track_id"] = np.array([7, 3_000_000_000], np.uint32).view(np.int32)  # wrapped by the old int32 field
    buf = io.BytesIO()
    np.save(buf, old)
    boxes = shard_codec.decode_boxes(buf.getvalue())
    assert boxes.dtype == BOX_DTYPE
    assert boxes["class_confidence"].tolist() == [0.5, 0.25] and boxes["track_id"].tolist() == [7, 3_000_000_000]
