"""EventSequenceLoader over event shards built here from GEN1-format files: every window's
representation equals a single `represent` call on the original events of that window, streams
play recordings in time order with resets at recording starts, ranks get disjoint recordings and
the same number of steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import event_loader
from fastvid.events import sampling as seqlib
from fastvid.events.writing import shard_events
from test_events_io import random_events, write_gen1_dat
from test_events_shard import write_boxes

# recording -> duration (us), events; lengths differ so streams refill at different steps.
RECORDINGS = {"r0": (900_000, 900), "r1": (400_000, 300), "r2": (1_300_000, 1200), "r3": (250_000, 200), "r4": (700_000, 500)}
SENSOR = (64, 48)


@pytest.fixture(scope="module")
def event_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    src = root / "src"
    src.mkdir()
    originals = {}
    for i, (name, (duration, n)) in enumerate(RECORDINGS.items()):
        ts, xs, ys, ps = random_events(n, duration, seed=10 + i, width=SENSOR[0], height=SENSOR[1])
        write_gen1_dat(src / f"{name}_td.dat", ts, xs, ys, ps, width=SENSOR[0], height=SENSOR[1])
        box_ts = np.arange(0, duration, 50_000) + 7
        boxes = write_boxes(src / f"{name}_bbox.npy", box_ts, seed=i, sensor=SENSOR)
        originals[name] = (ts, xs, ys, ps, boxes)
    out = root / "shards"
    shard_events(src, out, segment_ms=300, max_samples=4)
    return out, originals


def _window_events(orig, t0, t1):
    from fastvid.events.types import EVENT_DTYPE

    ts, xs, ys, ps, _ = orig
    m = (ts >= t0) & (ts < t1)
    ev = np.zeros(int(m.sum()), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = ts[m], xs[m], ys[m], ps[m]
    return ev


def test_plan_refills_greedily_and_pads():
    plan = seqlib.plan_streams([(0, 5), (1, 2), (2, 3), (3, 1)], batch_size=2)
    # recording 2 goes to stream 1 (free at step 2); at step 5 both are free: the tie goes to stream 0
    assert plan[0] == [seqlib.StreamSlot(0, 0, 5), seqlib.StreamSlot(3, 5, 1)]
    assert plan[1] == [seqlib.StreamSlot(1, 0, 2), seqlib.StreamSlot(2, 2, 3)]
    assert seqlib.plan_steps(plan) == 6
    ranks = [seqlib.rank_recordings(10, r, 3, seed=1, epoch=0, shuffle=True) for r in range(3)]
    assert sorted(sum(ranks, [])) == list(range(10))
    assert ranks != [seqlib.rank_recordings(10, r, 3, seed=1, epoch=1, shuffle=True) for r in range(3)]


def test_windows_match_single_represent_calls(event_set):
    # (import from the module: the package attribute `represent` is shadowed by the submodule once imported)
    from fastvid.events.representations import represent

    out, originals = event_set
    B = 3  # 36 windows over 3 streams: the greedy refill leaves padding at the end
    loader = event_loader(out, batch_size=B, window_ms=100, representation="stacked_histogram", bins=3,
                                 device="cpu", shuffle=False)
    assert loader.sensor_size == SENSOR
    steps = list(loader)
    assert len(steps) == len(loader)
    seen = {name: [] for name in RECORDINGS}
    box_seen = {name: 0 for name in RECORDINGS}
    last = [None] * B
    for step in steps:
        assert step["x"].shape[:2] == (B, 6) and tuple(step["x"].shape[-2:]) == (SENSOR[1], SENSOR[0])
        for b in range(B):
            name = step["recording"][b]
            if not step["valid"][b]:
                assert name is None and int(step["recording_id"][b]) == -1 and not step["reset"][b] and float(step["x"][b].abs().sum()) == 0
                assert len(step["boxes"][b]) == 0
                continue
            w = int(step["window"][b])
            assert loader.recordings[int(step["recording_id"][b])].name == name
            # time order within a stream; reset exactly when a new recording starts
            assert bool(step["reset"][b]) == (w == 0)
            if w > 0:
                assert last[b] == (name, w - 1)
            last[b] = (name, w)
            t0, t1 = int(step["t0"][b]), int(step["t1"][b])
            assert t1 - t0 == 100_000
            expected_events = _window_events(originals[name], t0, t1)
            assert int(step["num_events"][b]) == len(expected_events)
            expected = represent(expected_events, "stacked_histogram", sensor_size=SENSOR, bins=3, t0=t0, t1=t1)
            torch.testing.assert_close(step["x"][b].cpu(), expected.cpu())
            seen[name].append(len(expected_events))
            boxes = originals[name][4]
            want = boxes["ts"][(boxes["ts"] >= t0) & (boxes["ts"] < t1)]
            assert step["boxes"][b]["t"].tolist() == want.tolist()
            box_seen[name] += len(want)
    for name, (duration, n) in RECORDINGS.items():
        assert sum(seen[name]) == len(originals[name][0])  # every event in exactly one window
        last_t = max(int(originals[name][0].max()), int(originals[name][4]["ts"].max()))
        # 100 ms windows up to the last event or box, not to the end of its padded 300 ms segment
        assert len(seen[name]) == last_t // 100_000 + 1
        assert box_seen[name] == len(originals[name][4])
    total = sum(len(v) for v in seen.values())
    assert sum(int(s["valid"].sum()) for s in steps) == total == 36  # 9 + 4 + 13 + 3 + 7
    assert len(steps) == 14  # streams: r0 (9), r1 then r3 then r4 (4 + 3 + 7), r2 (13)
    assert sum(int((~s["valid"]).sum()) for s in steps) == B * 14 - 36


def test_ranks_disjoint_and_equal_steps(event_set):
    out, _ = event_set
    loaders = [event_loader(out, batch_size=2, window_ms=150, representation="histogram", bins=1,
                                   device="cpu", rank=r, world_size=2, seed=3) for r in range(2)]
    names = [set(ld.rank_recording_names) for ld in loaders]
    assert not names[0] & names[1] and names[0] | names[1] == set(RECORDINGS)
    assert len(loaders[0]) == len(loaders[1])
    counts, played = [], []
    for ld in loaders:
        steps = list(ld)
        counts.append(len(steps))
        played.append({n for s in steps for n in s["recording"] if n is not None})
    assert counts[0] == counts[1] == len(loaders[0])
    assert played == names
    loaders[0].set_epoch(1)
    assert loaders[0].rank_recording_names != [] and len(loaders[0]) >= 1


def test_bad_arguments(event_set):
    out, _ = event_set
    with pytest.raises(ValueError, match="rank"):
        event_loader(out, batch_size=2, window_ms=50, representation="histogram", bins=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="window_ms"):
        event_loader(out, batch_size=2, window_ms=0, representation="histogram", bins=1)


def test_threading_options_give_identical_steps_and_early_stop(event_set):
    out, _ = event_set
    kw = dict(batch_size=2, window_ms=120, representation="histogram", bins=1, device="cpu", seed=5)
    plain = list(event_loader(out, prefetch=0, num_workers=0, **kw))
    threaded = list(event_loader(out, prefetch=3, num_workers=2, readahead=3, **kw))
    assert len(plain) == len(threaded) > 3
    for a, b in zip(plain, threaded):
        assert a["recording"] == b["recording"] and torch.equal(a["x"], b["x"]) and torch.equal(a["reset"], b["reset"])
    import threading

    loader = event_loader(out, prefetch=2, num_workers=2, **kw)
    for i, _step in enumerate(loader):
        if i == 1:
            break  # abandoning the iterator must not leave reader threads behind
    import gc

    gc.collect()
    names = [t.name for t in threading.enumerate()]
    assert not any(n.startswith(("fastvid-event-prefetch", "fastvid-event-read")) for n in names), names


@pytest.mark.gpu
def test_cuda_steps_match_cpu(event_set):
    out, _ = event_set
    kw = dict(batch_size=3, window_ms=100, representation="voxel_grid", bins=4, seed=1)
    cpu = list(event_loader(out, device="cpu", **kw))
    gpu = list(event_loader(out, device="cuda", **kw))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b["x"].is_cuda and a["recording"] == b["recording"]
        torch.testing.assert_close(b["x"].cpu(), a["x"], rtol=1e-5, atol=1e-5)


def test_rvt_stacked_histogram_by_name_in_the_loader(event_set):
    # These windows are sparse (about 1 event per ms in 100 ms): RVT's convention (bins over each window's
    # first..last event) and the window-bounds default differ on most of them.
    from test_represent import rvt_stacked_histogram

    out, originals = event_set
    kw = dict(batch_size=2, window_ms=100, bins=3, device="cpu", shuffle=False, count_cutoff=2, dtype="uint8")
    rvt_steps = list(event_loader(out, representation="stacked_histogram_rvt", **kw))
    window_steps = list(event_loader(out, representation="stacked_histogram", **kw))
    windows = differ = 0
    for rvt, window in zip(rvt_steps, window_steps, strict=True):
        assert rvt["x"].dtype == torch.uint8
        for b in np.flatnonzero(rvt["valid"].numpy()):
            t0, t1 = int(rvt["t0"][b]), int(rvt["t1"][b])
            events = _window_events(originals[rvt["recording"][b]], t0, t1)
            assert torch.equal(rvt["x"][b], rvt_stacked_histogram(events, 3, SENSOR[1], SENSOR[0], count_cutoff=2))
            windows += 1
            differ += not torch.equal(rvt["x"][b], window["x"][b])
    assert windows == 36 and differ > windows // 2
