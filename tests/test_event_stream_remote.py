"""Event sets streamed from a real HTTP server on 127.0.0.1: opening fetches no tar, each of two ranks
plays whole shards' recordings and downloads about half of the set through a ShardStream, the first step
waits for the stream's window only, and the windows equal those of the same set read locally."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import event_loader
from fastvid.events.writing import shard_events
from remote_servers import Ledger, http_server
from test_events_io import random_events, write_gen1_dat
from test_events_shard import write_boxes

SENSOR = (64, 48)
RECORDINGS = 8  # of 1 s in 500 ms segments, 2 segments per shard: one recording per shard


@pytest.fixture(scope="module")
def event_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("evremote")
    src = root / "src"
    src.mkdir()
    for r in range(RECORDINGS):
        ts, xs, ys, ps = random_events(3000, 1_000_000, seed=r, width=SENSOR[0], height=SENSOR[1])
        write_gen1_dat(src / f"rec{r}_td.dat", ts, xs, ys, ps, width=SENSOR[0], height=SENSOR[1])
        write_boxes(src / f"rec{r}_bbox.npy", np.arange(50_000, 1_000_000, 50_000), seed=r, sensor=SENSOR)
    shard_events(src, root / "data" / "ev", segment_ms=500, max_samples=2)
    return root


def _windows(loader) -> dict:
    out = {}
    for step in loader:
        for b in range(len(step["recording"])):
            if step["valid"][b]:
                out[(step["recording"][b], int(step["window"][b]))] = (step["x"][b].clone(), step["boxes"][b]["t"].tolist())
    return out


def assert_same_windows(remote: dict, local: dict) -> None:
    """The same windows, each with the same input and boxes."""
    assert remote.keys() == local.keys()
    for key, (x, boxes) in local.items():
        assert torch.equal(remote[key][0], x) and remote[key][1] == boxes


def test_two_ranks_stream_half_the_set_each_and_match_the_local_windows(event_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    ledger = Ledger()
    base, stop = http_server(event_root, ledger)
    kw = dict(window_ms=100, window_mode="labels", representation="histogram", bins=1, device="cpu", shuffle=True,
              seed=4)
    try:
        local = _windows(event_loader(event_root / "data" / "ev", 2, **kw))
        seen, tars = {}, []
        for rank in range(2):
            before = ledger.tar_gets()
            loader = event_loader(f"{base}/data/ev", 2, rank=rank, world_size=2, stream_window=2, **kw)
            assert ledger.tar_gets() == before  # opening fetched the manifest and the small per-shard files only
            steps = iter(loader)
            next(steps)
            assert ledger.tar_gets() - before <= 2  # the first step waited for the window's shards, not the set
            for name, window in ((k[0], k[1]) for k in _windows(loader)):
                seen[(name, window)] = rank
            tars.append(ledger.tar_gets() - before)
            ranks = {}
            for (name, _), r in seen.items():
                ranks.setdefault(name, set()).add(r)
        # every recording on exactly one rank, each rank about half the shards, all windows as read locally
        assert all(len(r) == 1 for r in ranks.values()) and set(ranks) == {f"rec{r}" for r in range(RECORDINGS)}
        assert tars == [RECORDINGS // 2, RECORDINGS // 2]
        remote = {}
        for rank in range(2):
            remote.update(_windows(event_loader(f"{base}/data/ev", 2, rank=rank, world_size=2, stream_window=2, **kw)))
        assert_same_windows(remote, local)
    finally:
        stop()


def test_rvt_label_selection_reads_only_the_boxes_at_open(event_root, tmp_path, monkeypatch):
    """RVT's selection needs every box at open: a streamed set serves their byte ranges only (no tar fetched
    whole before the first step), and the selected windows and their boxes equal the local set's."""
    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    ledger = Ledger()
    base, stop = http_server(event_root, ledger)
    kw = dict(window_ms=100, window_mode="labels", labels="rvt-gen1", representation="histogram", bins=1, device="cpu",
              shuffle=True, seed=4)
    set_bytes = sum(p.stat().st_size for p in (event_root / "data" / "ev").glob("*.tar"))
    try:
        local_loader = event_loader(event_root / "data" / "ev", 2, **kw)
        local = _windows(local_loader)
        everything = sum(len(w) for w in event_loader(event_root / "data" / "ev", 2, **{**kw, "labels": "all"}).windows)
        assert 0 < sum(len(w) for w in local_loader.windows) < everything  # the selection keeps some label times
        loader = event_loader(f"{base}/data/ev", 2, stream_window=2, **kw)
        opened = sum(ledger.tar_bytes_by_rank("/data/ev").values())
        assert 0 < opened < set_bytes / 20  # the boxes' ranges, not tars
        assert not list((tmp_path / "cache").rglob("*.tar"))
        remote = _windows(loader)
        assert_same_windows(remote, local)
    finally:
        stop()


def test_precomputed_windows_stream_each_tar_once_and_match_the_local_set(event_root, tmp_path, monkeypatch):
    """Stored histograms of a streamed set: every tar is fetched exactly once (a shard is given back only when
    its last window and that window's boxes are both read: with one window per segment, every window's boxes
    are read while its histogram is), and windows and boxes equal the local set's."""
    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    pre = event_root / "data" / "pre"
    if not (pre / "manifest.json").exists():
        shard_events(event_root / "src", pre, segment_ms=50, max_samples=2,
                     precompute=["stacked_histogram:window_ms=50:bins=2"])
    tars = len(list(pre.glob("*.tar")))
    ledger = Ledger()
    base, stop = http_server(event_root, ledger)
    kw = dict(window_ms=50, representation="stacked_histogram", bins=2, dtype="uint8", device="cpu", shuffle=True,
              seed=1, num_workers=2)
    try:
        local_loader = event_loader(pre, 2, **kw)
        assert local_loader.precomputed is not None
        local = _windows(local_loader)
        for _ in range(2):  # two epochs, two cold caches
            before = ledger.tar_gets("/data/pre")
            loader = event_loader(f"{base}/data/pre", 2, stream_window=2, **kw)
            assert loader.precomputed is not None
            remote = _windows(loader)
            assert ledger.tar_gets("/data/pre") - before == tars  # one GET per tar, none fetched twice
            assert_same_windows(remote, local)
            monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache2"))
    finally:
        stop()


@pytest.mark.parametrize("mode", ["grid", "labels"])
def test_recordings_spanning_many_shards_stream_through_a_small_window(event_root, tmp_path, monkeypatch, mode):
    """Each recording in 5 shards, 2 streams, a window of 2 shards: the stream fetches shards in the order
    the steps first read them (not run by run, which would fill the window with one stream's shards and
    leave the other waiting for good), each tar once, and the windows equal the local set's."""
    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    many = event_root / "data" / "many"
    if not (many / "manifest.json").exists():
        shard_events(event_root / "src", many, segment_ms=100, max_samples=2)
    tars = len(list(many.glob("*.tar")))
    assert tars == 5 * RECORDINGS
    ledger = Ledger()
    base, stop = http_server(event_root, ledger)
    kw = dict(window_ms=50, window_mode=mode, representation="histogram", bins=1, device="cpu", shuffle=True, seed=2,
              num_workers=2)
    try:
        local = _windows(event_loader(many, 2, **kw))
        loader = event_loader(f"{base}/data/many", 2, stream_window=2, **kw)
        assert len(loader._backend.plan_reads(loader.steps()).order) == tars
        remote = _windows(loader)
        assert ledger.tar_gets("/data/many") == tars
        assert_same_windows(remote, local)
    finally:
        stop()


def test_random_sequences_over_a_streamed_set_hold_every_shard_they_come_back_to(event_root, tmp_path, monkeypatch,
                                                                                   caplog):
    """RVT's random sequences come back to a shard later in the epoch, so a shard stays held from its first
    read to its last: the stream's window is raised to the most shards held at once (a warning when an
    explicit stream_window is smaller) instead of waiting forever, and every window equals the local one."""
    monkeypatch.setenv("FASTVID_CACHE_DIR", str(tmp_path / "cache"))
    many = event_root / "data" / "many"
    if not (many / "manifest.json").exists():
        shard_events(event_root / "src", many, segment_ms=100, max_samples=2)
    ledger = Ledger()
    base, stop = http_server(event_root, ledger)
    kw = dict(window_ms=50, window_mode="labels", sampler="random", seq_len=5, representation="histogram", bins=1,
              device="cpu", seed=2, num_workers=2)
    try:
        local = _windows(event_loader(many, 2, **kw))
        loader = event_loader(f"{base}/data/many", 2, stream_window=2, **kw)
        plan = loader._backend.plan_reads(loader.steps())
        assert plan.peak_open > 2
        with caplog.at_level("WARNING"):
            remote = _windows(loader)
        assert f"stream_window=2 is below the {plan.peak_open} shards" in caplog.text
        assert ledger.tar_gets("/data/many") == len(plan.order)  # each shard it reads, once
        assert remote and all(torch.equal(x, local[key][0]) and boxes == local[key][1]
                              for key, (x, boxes) in remote.items() if key in local)
        assert len(set(remote) & set(local)) > len(remote) // 2
    finally:
        stop()
