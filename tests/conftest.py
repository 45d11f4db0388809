"""Shared pytest fixtures: GPU skipping and small generated clips with known content."""

from __future__ import annotations

import importlib
import sys

import pytest

from fastvid import _gpu


def pytest_collection_modifyitems(config, items):
    if _gpu.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def import_or_skip(name: str):
    """`name` imported, or the test skipped when importing it fails in any way. pytest.importorskip
    skips on ImportError only, but an installed package can fail otherwise: the registry's torchvision
    0.28/0.29 are CUDA builds whose import raises RuntimeError ("operator torchvision::nms does not
    exist") beside a CPU torch."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable here"
        first_line = (str(exc).splitlines() or [""])[0]
        pytest.skip(f"{name} is not usable here ({type(exc).__name__}: {first_line})")


@pytest.fixture
def torchvision():
    """The torchvision package with its models imported; skips the test where torchvision is missing or broken."""
    import_or_skip("torchvision.models.video")
    return sys.modules["torchvision"]


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory):
    """Tiny train/val video shard sets (2 motion classes, VP9) shared by the training tests."""
    from fastvid.cli import main as fastvid_main
    from fastvid.video.synth import make_motion_dataset

    root = tmp_path_factory.mktemp("train_shards")
    for split, per_class, seed in (("train", 4, 0), ("val", 3, 1)):
        make_motion_dataset(root / f"raw_{split}", videos_per_class=per_class, classes=["move_up", "move_down"], num_frames=16,
                            height=48, width=64, fps=15, codec="libx264", seed=seed)
        rc = fastvid_main(["shard", "videos", str(root / f"raw_{split}"), str(root / "data" / split), "--codec", "vp9",
                           "--workers", "1", "--split", split])
        assert rc == 0
    return root / "data"


def video_loader(shards, **kw):
    """A VideoLoader from flat keyword options (tests name a few options each): each goes to its group."""
    from dataclasses import fields

    from fastvid.pipeline.contract import LastBatch
    from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader

    if "drop_last" in kw:
        kw["last_batch"] = LastBatch.from_drop_last(kw.pop("drop_last"))
    groups = {}
    for name, cls in (("sampling", ClipSampling), ("augmentation", Augmentation), ("output", Output),
                      ("execution", Execution)):
        names = {f.name for f in fields(cls)}
        groups[name] = cls(**{k: kw.pop(k) for k in list(kw) if k in names})
    batch_size = kw.pop("batch_size")
    return VideoLoader(shards, batch_size, groups.pop("sampling"), **groups, **kw)


def event_loader(shards, batch_size, **kw):
    """An EventSequenceLoader from flat keyword options (window_mode is Windowing.mode): each goes to its group."""
    from dataclasses import fields

    from fastvid.events.sequence import Encoding, EventExecution, EventSequenceLoader, Windowing

    if "window_mode" in kw:
        kw["mode"] = kw.pop("window_mode")
    groups = {}
    for name, cls in (("windowing", Windowing), ("encoding", Encoding), ("execution", EventExecution)):
        names = {f.name for f in fields(cls)}
        groups[name] = cls(**{k: kw.pop(k) for k in list(kw) if k in names})
    return EventSequenceLoader(shards, batch_size, **groups, **kw)


def detection_shards(root, train: tuple[int, int], val: tuple[int, int]):
    """Train and val event shard sets of the detector's generated scene (fastvid.events.detect.synth) under
    root/shards; `train`/`val`: (recordings, duration in us). Returns root/shards."""
    from fastvid.events.detect.synth import CLASSES, make_moving_boxes_gen1
    from fastvid.events.writing import shard_events

    for seed, (split, (count, duration_us)) in enumerate((("train", train), ("val", val)), start=1):
        make_moving_boxes_gen1(root / "src" / split, count, duration_us=duration_us, seed=seed)
        shard_events(root / "src" / split, root / "shards" / split, segment_ms=500, split=split, classes=list(CLASSES))
    return root / "shards"
