"""`fastvid shard events --format gen4`: Prophesee 1 Mpx recordings as RVT distributes them (.h5 events,
blosc-compressed through hdf5plugin, with .npy labels), written here with h5py, sharded and read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")

from fastvid.cli import main as fastvid_main  # noqa: E402
from fastvid.events import iter_segments  # noqa: E402
from fastvid.events import layouts as shard_sources  # noqa: E402

TOOLBOX_BOX = np.dtype([("t", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"),
                        ("class_confidence", "<f4"), ("track_id", "<u4")])


def write_gen4_h5(path, t, x, y, p, size=None, compress=True):
    kw = dict(hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.SHUFFLE)) if compress else {}
    with h5py.File(path, "w") as f:
        g = f.create_group("events")
        for name, arr, dtype in (("t", t, "i8"), ("x", x, "u2"), ("y", y, "u2"), ("p", p, "i1")):
            g.create_dataset(name, data=np.asarray(arr, dtype), chunks=True, **kw)
        if size is not None:
            g.create_dataset("width", data=size[0])
            g.create_dataset("height", data=size[1])


@pytest.fixture
def gen4_dir(tmp_path, monkeypatch):
    # a small stride so that locating segment starts crosses sample blocks in a small file
    monkeypatch.setattr(shard_sources, "_H5_STRIDE", 16)
    monkeypatch.setattr(shard_sources, "_H5_CHUNK", 64)
    src = tmp_path / "gen4" / "train"
    src.mkdir(parents=True)
    rng = np.random.default_rng(3)
    n = 700
    t = np.sort(rng.integers(0, 1_400_000, n))
    t[[100, 400, 401]] = t[[99, 399, 399]] - [5, 7, 3]  # the clock glitches backwards, as in the real files
    k = int(np.searchsorted(t, 500_000))  # at the 500 ms segment border: 499_999, a glitch back, 500_000
    t[k - 2], t[k - 1], t[k] = 499_999, 499_990, 500_000
    x, y = rng.integers(0, 1280, n), rng.integers(0, 720, n)
    p = rng.choice([-1, 1], n)  # RVT's files use -1/+1
    write_gen4_h5(src / "moorea_2019_td.h5", t, x, y, p, size=(1280, 720))
    boxes = np.zeros(4, TOOLBOX_BOX)
    boxes["t"] = [100_000, 100_000, 600_000, 1_300_000]
    boxes["x"], boxes["y"], boxes["w"], boxes["h"] = [10, 1270, 50, -20], [10, 5, 700, 30], [40, 30, 20, 60], [30, 20, 40, 40]
    boxes["class_id"] = [0, 2, 1, 2]
    boxes["class_confidence"] = [1.0, 0.5, 0.25, 0.75]
    boxes["track_id"] = [1, 2, 3, 2**32 - 2]
    np.save(src / "moorea_2019_bbox.npy", boxes)
    corrected = np.maximum.accumulate(t)
    return src, (corrected, x, y, (p > 0).astype(int)), boxes


def test_gen4_shard_roundtrip(gen4_dir, tmp_path):
    src, (t, x, y, p), boxes = gen4_dir
    out = tmp_path / "shards"
    rc = fastvid_main(["shard", "events", str(src), str(out), "--format", "gen4", "--segment-ms", "500"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["failures"] == [] and manifest["options"]["format"] == "gen4"
    assert manifest["classes"][:3] == ["pedestrian", "two wheeler", "car"]
    assert manifest["options"]["sensor_size"] == [1280, 720]
    segments = list(iter_segments(out))
    assert [s["meta"]["segment"] for s in segments] == [0, 1, 2]
    events = np.concatenate([s["events"] for s in segments])
    assert events["t"].tolist() == t.tolist()  # every event kept, on the non-decreasing clock
    assert events["x"].tolist() == x.tolist() and events["y"].tolist() == y.tolist() and events["p"].tolist() == p.tolist()
    for s in segments:
        m = s["meta"]
        assert np.all((s["events"]["t"] >= m["t0"]) & (s["events"]["t"] < m["t1"]))
    assert segments[0]["events"]["t"][-1] == 499_999 and segments[1]["events"]["t"][0] == 500_000
    got = np.concatenate([s["boxes"] for s in segments])
    # cropped to 1280x720: box 1 loses 1270+30-1279 = 21 px of width, box 2 its bottom, box 3 its left part
    assert got["t"].tolist() == [100_000, 100_000, 600_000, 1_300_000]
    assert got["x"].tolist() == [10, 1270, 50, 0] and got["w"].tolist() == [40, 9, 20, 40]
    assert got["y"].tolist() == [10, 5, 700, 30] and got["h"].tolist() == [30, 20, 19, 40]
    assert got["class_confidence"].tolist() == [1.0, 0.5, 0.25, 0.75] and got["track_id"].tolist()[-1] == 2**32 - 2
    assert segments[0]["meta"]["recording_t_end"] == max(int(t.max()), 1_300_000) + 1


def test_gen4_bad_files_are_failures(tmp_path):
    src = tmp_path / "bad"
    src.mkdir()
    with h5py.File(src / "nox_td.h5", "w") as f:
        f.create_dataset("events/t", data=np.arange(3))
    np.save(src / "nox_bbox.npy", np.zeros(0, TOOLBOX_BOX))
    (src / "junk_td.h5").write_bytes(b"not hdf5")
    np.save(src / "junk_bbox.npy", np.zeros(0, TOOLBOX_BOX))
    write_gen4_h5(src / "ok_td.h5", [5, 6], [1, 2], [1, 2], [0, 1], compress=False)
    np.save(src / "ok_bbox.npy", np.zeros(0, TOOLBOX_BOX))
    from fastvid.events.writing import shard_events

    manifest = shard_events(src, tmp_path / "out", format="gen4")
    errors = {f["source"].rsplit("/", 1)[-1]: f["error"] for f in manifest["failures"]}
    assert set(errors) == {"nox_td.h5", "junk_td.h5"}
    assert "lacks dataset" in errors["nox_td.h5"] and "'x'" in errors["nox_td.h5"]
    assert "not a readable HDF5 file" in errors["junk_td.h5"]
    segs = list(iter_segments(tmp_path / "out"))
    assert [s["meta"]["recording"] for s in segs] == ["ok"] and segs[0]["meta"]["sensor_size"] == [1280, 720]
