"""Window placement (pure) and the loader's label-aligned mode, output dtypes and count cutoff, on a
GEN1-format recording written here with events placed on the window borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import event_loader
from fastvid.events.writing import shard_events
from fastvid.events.windows import grid_windows, label_windows, make_windows, segments_needed
from test_events_io import write_gen1_dat

SENSOR = (16, 8)
DELTA = 50_000
# label time -> [(class_id, class_confidence, track_id)]; 120 ms overlaps the 100 ms window,
# 520 ms reaches back over the 500 ms segment border, 1.2 s is in the third segment.
LABELS = {100_000: [(0, 0.5, 1), (1, 0.25, 2**31 + 7)], 120_000: [(1, 0.75, 2)], 520_000: [(0, 1.0, 3)],
          1_200_000: [(1, 0.125, 4)]}
TOOLBOX_BOX = np.dtype([("t", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"),
                        ("class_confidence", "<f4"), ("track_id", "<u4")])


def test_grid_and_label_windows_pure():
    g = grid_windows(0, 250_001, 100_000)
    assert g.start.tolist() == [0, 100_000, 200_000] and g.stop.tolist() == [100_000, 200_000, 300_000]
    assert g.box_from.tolist() == g.start.tolist() and g.label_t.tolist() == [-1, -1, -1]
    assert len(grid_windows(5, 5, 10)) == 1
    lw = label_windows([300, 100, 300, 50_000], 1000)
    assert lw.label_t.tolist() == [100, 300, 50_000]
    assert lw.start.tolist() == [-900, -700, 49_000] and lw.stop.tolist() == [101, 301, 50_001]
    assert lw.box_from.tolist() == [100, 300, 50_000]
    assert segments_needed(lw, 0, 10_000, 8).tolist() == [0, 4, 5]
    assert segments_needed(g, 0, 100_000, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="window mode"):
        make_windows("frames", 0, 1, 1)


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    ts = list(rng.integers(0, 1_300_000, 400))
    for T in LABELS:  # just outside, on the first instant, on the label instant, just after
        ts += [T - DELTA - 1, T - DELTA, T, T + 1]
    ts += [100_000] * 10  # a burst on one pixel, to exceed the count cutoff
    ts = np.sort(np.array(ts, np.int64))
    xs, ys, ps = rng.integers(0, SENSOR[0], len(ts)), rng.integers(0, SENSOR[1], len(ts)), rng.integers(0, 2, len(ts))
    burst = np.flatnonzero(ts == 100_000)[-10:]
    xs[burst], ys[burst], ps[burst] = 3, 2, 1
    write_gen1_dat(src / "rec_td.dat", ts, xs, ys, ps, width=SENSOR[0], height=SENSOR[1])
    rows = [(T, c, conf, tid) for T, boxes in LABELS.items() for c, conf, tid in boxes]
    boxes = np.zeros(len(rows), TOOLBOX_BOX)
    boxes["t"] = [r[0] for r in rows]
    boxes["class_id"] = [r[1] for r in rows]
    boxes["class_confidence"] = [r[2] for r in rows]
    boxes["track_id"] = [r[3] for r in rows]
    boxes["x"], boxes["y"], boxes["w"], boxes["h"] = 1, 1, 6, 4
    np.save(src / "rec_bbox.npy", boxes)
    # a recording with no labels at all: no window in labels mode
    write_gen1_dat(src / "quiet_td.dat", [10, 20], [1, 2], [1, 2], [0, 1], width=SENSOR[0], height=SENSOR[1])
    np.save(src / "quiet_bbox.npy", np.zeros(0, TOOLBOX_BOX))
    out = root / "shards"
    shard_events(src, out, segment_ms=500, max_samples=2)
    return out, (ts, xs, ys, ps)


def test_label_mode_ends_windows_at_label_times_inclusive(labelled_set):
    from fastvid.events.representations import represent
    from fastvid.events.types import EVENT_DTYPE

    out, (ts, xs, ys, ps) = labelled_set
    loader = event_loader(out, batch_size=2, window_ms=DELTA / 1000, window_mode="labels",
                                 representation="stacked_histogram", bins=2, device="cpu", shuffle=False)
    assert [r.name for r in loader.recordings] == ["quiet", "rec"] and loader.rank_recording_names == ["rec"]
    steps = list(loader)
    assert len(steps) == len(LABELS) == len(loader)
    for step, (T, want) in zip(steps, LABELS.items()):
        assert bool(step["valid"][0]) and not bool(step["valid"][1])
        assert bool(step["reset"][0]) == (T == 100_000)
        assert int(step["label_t"][0]) == T and int(step["t0"][0]) == T - DELTA and int(step["t1"][0]) == T + 1
        inside = (ts >= T - DELTA) & (ts <= T)  # RVT: [T - delta, T], both ends included
        assert int(step["num_events"][0]) == int(inside.sum())
        ev = np.zeros(int(inside.sum()), EVENT_DTYPE)
        ev["t"], ev["x"], ev["y"], ev["p"] = ts[inside], xs[inside], ys[inside], ps[inside]
        expected = represent(ev, "stacked_histogram", sensor_size=SENSOR, bins=2, t0=T - DELTA, t1=T + 1)
        torch.testing.assert_close(step["x"][0], expected)
        got = step["boxes"][0]
        assert got["t"].tolist() == [T] * len(want)  # the labels of that instant only
        assert [(int(c), float(f), int(k)) for c, f, k in zip(got["class_id"], got["class_confidence"], got["track_id"])] == want


def test_grid_mode_stops_at_the_last_event(labelled_set):
    out, (ts, *_rest) = labelled_set
    loader = event_loader(out, batch_size=1, window_ms=100, representation="histogram", bins=1, device="cpu",
                                 shuffle=False)
    steps = [s for s in loader if s["recording"][0] == "rec"]
    last = int(ts.max())  # 1_300_000 > every box; padded segments would run to 1.5 s
    assert len(steps) == last // 100_000 + 1
    assert int(steps[-1]["t0"][0]) <= last < int(steps[-1]["t1"][0])
    assert sum(int(s["num_events"][0]) for s in steps) == len(ts)


def test_output_dtypes_and_count_cutoff(labelled_set):
    out, _ = labelled_set
    kw = dict(batch_size=2, window_ms=DELTA / 1000, window_mode="labels", representation="stacked_histogram", bins=2,
              device="cpu", shuffle=False)
    full = [s["x"] for s in event_loader(out, **kw)]
    assert full[0].max() >= 10  # the burst
    cut = [s["x"] for s in event_loader(out, count_cutoff=3, dtype="uint8", **kw)]
    half = [s["x"] for s in event_loader(out, dtype="float16", **kw)]
    for f, c, h in zip(full, cut, half):
        assert c.dtype == torch.uint8 and h.dtype == torch.float16
        assert torch.equal(c, f.clamp(max=3).to(torch.uint8))
        assert torch.equal(h, f.to(torch.float16))
    with pytest.raises(ValueError, match="uint8"):
        event_loader(out, batch_size=1, representation="voxel_grid", dtype="uint8")
    with pytest.raises(ValueError, match="window_mode"):
        event_loader(out, batch_size=1, window_mode="frames")


@pytest.mark.gpu
def test_pinned_cuda_label_windows_match_cpu(labelled_set):
    out, _ = labelled_set
    kw = dict(batch_size=2, window_ms=DELTA / 1000, window_mode="labels", representation="stacked_histogram", bins=2,
              shuffle=False, count_cutoff=4, dtype="uint8")
    cpu = list(event_loader(out, device="cpu", **kw))
    gpu = list(event_loader(out, device="cuda", pin_memory=True, **kw))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b["x"].is_cuda and torch.equal(a["x"], b["x"].cpu())


def test_events_io_benchmark_stages_count_every_event(tmp_path):
    """The steady-state benchmark, tiny: every generated event goes through each measured stage."""
    from fastvid.benchmarks.events_io import EventsIOBench, run_benchmark

    r = run_benchmark(EventsIOBench(device="cpu", work_dir=str(tmp_path), quick=True, recordings=2, duration_s=0.3,
                                    rate_meps=0.05, batch_size=2, baseline=False, repeats=1))
    n = r["data"]["events"]
    assert r["stages"]["read"]["events"] == n == r["loader"]["events"] == r["loader_stages_synced"]["events"]
    decode = r["stages"]["decode_one_thread"]
    assert set(decode) == {"shards", "zstd", "deflate", "stored", "blocks-lz4", "blocks-zstd", "blocks-none"}
    assert decode["zstd"]["events"] == decode["blocks-lz4"]["events"] == n
    assert set(r["loader"]["stage_seconds"]) == {"read", "decode", "assemble", "wait", "transfer", "represent"}
    assert r["loader"]["stage_seconds"]["represent"] > 0
