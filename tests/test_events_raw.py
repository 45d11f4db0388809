"""Prophesee RAW recordings (EVT 2.0 and EVT 3.0): files written here word by word from the format's
description (independent of fastvid's decoder), read with `read_raw` / `read_events`, sharded with
`fastvid shard events --format raw`, and EVT 2.0 cross-checked against expelliarmus when installed."""

from __future__ import annotations

import numpy as np
import pytest

from fastvid.cli import main as fastvid_main
from fastvid.events import iter_segments
from fastvid.events import io as evio
from fastvid.events.raw import read_raw, read_raw_header

HEADER = "% camera_integrator_name Prophesee\n% evt {v}\n% format EVT{f};height=480;width=640\n% end\n"


def write_evt2(path, t, x, y, p, header=True):
    """32-bit words: TIME_HIGH (0x8, t >> 6) at every change, CD_OFF/CD_ON (0x0/0x1) with t & 63, x, y."""
    words, high = [], None
    for ti, xi, yi, pi in zip(t, x, y, p):
        if ti >> 6 != high:
            high = ti >> 6
            words.append((0x8 << 28) | high)
        words.append((int(pi) << 28) | ((ti & 0x3F) << 22) | (int(xi) << 11) | int(yi))
    with open(path, "wb") as f:
        if header:
            f.write(HEADER.format(v="2.0", f="2").encode())
        f.write(np.array(words, "<u4").tobytes())


def write_evt3(path, t, x, y, p):
    """16-bit words, as a sensor sends them: TIME_HIGH (0x8) at every 4096 us step (rolling over at
    2**24 us), TIME_LOW (0x6), ADDR_Y (0x0), then ADDR_X (0x2) for a lone event or VECT_BASE_X (0x3)
    + VECT_12 (0x4) / VECT_8 (0x5) masks for runs of events on one row at one time."""
    words, step = [(0x8 << 12) | 0], 0
    i = 0
    n = len(t)
    while i < n:
        ti = int(t[i])
        while step < ti >> 12:
            step += 1
            words.append((0x8 << 12) | (step & 0xFFF))
        words.append((0x6 << 12) | (ti & 0xFFF))
        words.append((0x0 << 12) | int(y[i]))
        j = i  # events of one run: same time, row and polarity, x increasing within 20 px
        while j + 1 < n and t[j + 1] == ti and y[j + 1] == y[i] and p[j + 1] == p[i] and x[i] < x[j + 1] < x[i] + 20:
            j += 1
        if j == i:
            words.append((0x2 << 12) | (int(p[i]) << 11) | int(x[i]))
        else:
            base = int(x[i])
            words.append((0x3 << 12) | (int(p[i]) << 11) | base)
            offsets = [int(x[k]) - base for k in range(i, j + 1)]
            mask12 = sum(1 << o for o in offsets if o < 12)
            mask8 = sum(1 << (o - 12) for o in offsets if o >= 12)
            words.append((0x4 << 12) | mask12)
            words.append((0x5 << 12) | mask8)
        i = j + 1
    with open(path, "wb") as f:
        f.write(HEADER.format(v="3.0", f="3").encode())
        f.write(np.array(words, "<u2").tobytes())


def sample_events(seed=0, n=400, t_max=40_000_000):
    """Sorted events including a run on one row for the vector words and a span past the 2**24 us rollover."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, t_max, n))
    x, y, p = rng.integers(0, 600, n), rng.integers(0, 480, n), rng.integers(0, 2, n)
    run = np.arange(100, 106)
    t[run], y[run], p[run] = t[100], 7, 1
    x[run] = min(int(x[100]), 600) + np.array([0, 1, 5, 11, 12, 19])
    order = np.lexsort((x, t))
    return t[order], x[order], y[order], p[order]


@pytest.mark.parametrize("writer", [write_evt2, write_evt3])
def test_read_raw_matches_written_events(tmp_path, writer):
    t, x, y, p = sample_events()
    path = tmp_path / "rec.raw"
    writer(path, t, x, y, p)
    ev, header = read_raw(path, return_header=True)
    assert header.sensor_size == (640, 480) and header.encoding == ("evt2" if writer is write_evt2 else "evt3")
    assert ev["t"].tolist() == t.tolist()  # past the EVT 3.0 24-bit rollover too
    assert ev["x"].tolist() == x.tolist() and ev["y"].tolist() == y.tolist() and ev["p"].tolist() == p.tolist()
    part = evio.read_events(path, 10_000_000, 20_000_000)
    assert part["t"].tolist() == t[(t >= 10_000_000) & (t < 20_000_000)].tolist()


def test_evt2_agrees_with_expelliarmus(tmp_path):
    expelliarmus = pytest.importorskip("expelliarmus")
    t, x, y, p = sample_events(seed=1)
    write_evt2(tmp_path / "a.raw", t, x, y, p)
    theirs = expelliarmus.Wizard(encoding="evt2").read(str(tmp_path / "a.raw"))
    ours = read_raw(tmp_path / "a.raw")
    for name in "txyp":
        assert ours[name].tolist() == theirs[name].tolist()


def test_bad_raw_files(tmp_path):
    (tmp_path / "nofmt.raw").write_bytes(b"% date today\n% end\n\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="names no event format"):
        read_raw(tmp_path / "nofmt.raw")
    (tmp_path / "e21.raw").write_bytes(b"% format EVT21;height=720;width=1280\n% end\n")
    with pytest.raises(ValueError, match="not supported"):
        read_raw(tmp_path / "e21.raw")
    write_evt2(tmp_path / "cut.raw", [1, 2], [1, 2], [1, 2], [0, 1])
    with open(tmp_path / "cut.raw", "ab") as f:
        f.write(b"\x01")
    with pytest.raises(ValueError, match="truncated"):
        read_raw(tmp_path / "cut.raw")
    assert read_raw_header(tmp_path / "cut.raw").data_offset == len(HEADER.format(v="2.0", f="2"))


def test_shard_raw_recordings(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    t, x, y, p = sample_events(seed=2, t_max=1_200_000)
    write_evt3(src / "drive_a.raw", t, x, y, p)
    boxes = np.zeros(2, [("t", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"),
                         ("class_confidence", "<f4"), ("track_id", "<u4")])
    boxes["t"], boxes["w"], boxes["h"] = [300_000, 900_000], 20, 20
    np.save(src / "drive_a_bbox.npy", boxes)
    out = tmp_path / "shards"
    assert fastvid_main(["shard", "events", str(src), str(out), "--format", "raw", "--classes", "car,person"]) == 0
    segments = list(iter_segments(out))
    assert [s["meta"]["segment"] for s in segments] == [0, 1, 2]
    assert segments[0]["meta"]["sensor_size"] == [640, 480] and segments[0]["meta"]["source"].endswith("drive_a.raw")
    events = np.concatenate([s["events"] for s in segments])
    assert events["t"].tolist() == t.tolist() and events["x"].tolist() == x.tolist()
    assert np.concatenate([s["boxes"] for s in segments])["t"].tolist() == [300_000, 900_000]
    assert not any(path.name.startswith(".prepared") for path in out.iterdir())  # the decoded copy is gone


def test_events_read_benchmark_writes_files_both_readers_agree_on(tmp_path):
    """The benchmark's vectorized EVT 2.0 writer and this file's word-by-word writer give the same bytes;
    the benchmark itself checks read_dat and read_raw against its events before timing."""
    from fastvid.benchmarks import events_read
    from fastvid.events.types import EVENT_DTYPE

    t, x, y, p = sample_events(seed=3, t_max=100_000)
    ev = np.zeros(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    events_read.write_evt2(tmp_path / "v.raw", ev)
    write_evt2(tmp_path / "w.raw", t, x, y, p, header=False)
    body = (tmp_path / "v.raw").read_bytes()
    assert body[read_raw_header(tmp_path / "v.raw").data_offset:] == (tmp_path / "w.raw").read_bytes()
    result = events_read.run_benchmark(work_dir=str(tmp_path / "work"), quick=True, events=5000, repeats=1)
    assert {"fastvid read_dat", "plain numpy", "fastvid read_raw (EVT 2.0)"} <= set(result["readers"])
