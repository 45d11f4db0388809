"""VideoLoader end to end on real shards: DALI's CPU decoder on VP9 shards, PyAV on H.264 shards.

The clips are fastvid.video.synth coded videos: frame t is flat with red = frame_code(t) and green =
frame_code(video_id), so every decoded, cropped, resized and normalized clip tells which video
and which frames it holds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from fastvid import cli
from conftest import video_loader
from fastvid.video import plan, sampling
from fastvid.video.presets import KINETICS_MEAN, KINETICS_STD
from fastvid.video.reader import open_shard_set
from fastvid.video.synth import decode_frame_index, frame_code, write_coded_video

# class -> video lengths; one video (6 frames) is shorter than a clip of 4 frames at stride 2.
LAYOUT = {"archery": [20, 24, 28, 32], "bowling": [36, 40, 22], "cooking": [26, 30, 6]}
CLIP_LEN, STRIDE = 4, 2
MEAN = torch.tensor(KINETICS_MEAN) * 255
STD = torch.tensor(KINETICS_STD) * 255


@dataclasses.dataclass
class Dataset:
    vp9: Path
    h264: Path
    videos: dict  # key -> {"video_id", "label", "num_frames"}
    sources: Path  # the original (H.264 mp4) files, Kinetics layout


def make_shards(root: Path, height: int = 48, width: int = 64) -> Dataset:
    """Kinetics-layout coded videos under root/videos, sharded to VP9 and H.264 with `fastvid shard videos`."""
    src = root / "videos"
    table = {}
    vid = 0
    for label, (name, lengths) in enumerate(sorted(LAYOUT.items())):
        for j, n in enumerate(lengths):
            path = write_coded_video(src / name / f"{name}_{j}.mp4", num_frames=n, height=height, width=width, fps=25,
                                     codec="h264", video_id=vid, gop=8)
            table[path.name] = {"video_id": vid, "label": label, "num_frames": n}
            vid += 1
    for codec in ("vp9", "h264"):
        assert cli.main(["shard", "videos", str(src), str(root / codec), "--codec", codec, "--max-samples", "4"]) == 0
    videos = {}
    shard_set = open_shard_set(root / "vp9")
    for si, shard in enumerate(shard_set.shards):
        for i, key in enumerate(shard.keys):
            meta = json.loads(shard_set.read_components(si, i, exts=("json",))["json"])
            videos[key] = table[Path(meta["source"]).name]
            assert meta["num_frames"] == videos[key]["num_frames"]
    return Dataset(root / "vp9", root / "h264", videos, src)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Dataset:
    return make_shards(tmp_path_factory.mktemp("loader"))


def levels(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) normalized -> (B, 3, T) mean 0..255 levels of each frame."""
    return video.float().mean(dim=(-1, -2)) * STD.view(1, 3, 1) + MEAN.view(1, 3, 1)


def clip_frames(video: torch.Tensor) -> list[list[int]]:
    return [[decode_frame_index(r) for r in row] for row in levels(video)[:, 0].tolist()]


def expected_frames(ld, key, clip, data) -> list[int]:
    """The frames the pure planner assigns to grid clip `clip` of `key` (red level wraps at 28)."""
    from fastvid.video.plan import video_grid

    meta = {"num_frames": data.videos[key]["num_frames"], "fps": 25.0, "height": 48, "width": 64}
    return (video_grid(ld.config, meta, key)[clip] % 28).tolist()


SHORT = 6  # frames of the one video shorter than a clip (dropped by default, as torchvision does)


def loader(path, backend, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("clip_len", CLIP_LEN)
    kw.setdefault("frame_stride", STRIDE)
    kw.setdefault("num_workers", 0)
    return video_loader(path, backend=backend, device="cpu", **kw)


def collect(ld, epoch=0):
    ld.set_epoch(epoch)
    return list(ld)


BACKENDS = [("dali", "vp9"), ("pyav", "h264")]


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_batches_hold_the_right_videos_frames_and_values(data, backend, codec):
    ld = loader(getattr(data, codec), backend, seed=0)
    assert ld.backend == backend and ld.num_classes == 3 and ld.classes == sorted(LAYOUT) and ld.num_videos == 10
    batches = collect(ld)
    assert len(batches) == len(ld) == 10 // 4
    for b in batches:
        v = b["video"]
        assert v.shape == (4, 3, CLIP_LEN, 112, 112) and v.dtype == torch.float32 and v.device.type == "cpu"
        assert b["label"].dtype == torch.int64 and len(b["key"]) == 4
        lv = levels(v)
        for i, key in enumerate(b["key"]):
            info = data.videos[key]
            assert b["label"][i].item() == info["label"]
            # green marks the video, blue is 128: both exact up to codec rounding
            assert torch.allclose(lv[i, 1], torch.full((CLIP_LEN,), float(frame_code(info["video_id"]))), atol=3.5)
            assert torch.allclose(lv[i, 2], torch.full((CLIP_LEN,), 128.0), atol=3.5)
            # the normalized value itself: (128 - mean) / std for blue
            expected_blue = (128 - KINETICS_MEAN[2] * 255) / (KINETICS_STD[2] * 255)
            assert abs(v[i, 2].mean().item() - expected_blue) < 3.5 / (KINETICS_STD[2] * 255)
            # red marks the frame: exactly the frames of the grid clip the planner chose for (seed, epoch, key)
            clip = b["clip"][i]
            assert clip == int(plan.default_clips(ld.config, {**info, "fps": 25.0, "height": 48, "width": 64}, key, 0)[0])
            assert clip_frames(v[i:i + 1]) == [expected_frames(ld, key, clip, data)]


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_short_video_is_padded_with_its_last_frame(data, backend, codec):
    short = [k for k, v in data.videos.items() if v["num_frames"] == SHORT][0]
    if backend == "pyav":  # default: dropped (torchvision); the DALI reader reads whole videos and pads it
        dropped = loader(getattr(data, codec), backend, batch_size=1, train=False, drop_last=False)
        assert short not in {k for b in collect(dropped) for k in b["key"]} and len(dropped) == 9
    ld = loader(getattr(data, codec), backend, batch_size=1, train=False, drop_last=False, short_videos="pad")
    for b in collect(ld):
        if b["key"][0] == short:
            assert clip_frames(b["video"]) == [[0, 2, 4, 5]]
            break
    else:
        pytest.fail("short video never came")


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_same_seed_same_batches_other_epoch_other_order(data, backend, codec):
    a = collect(loader(getattr(data, codec), backend, seed=7, batch_size=2))
    b = collect(loader(getattr(data, codec), backend, seed=7, batch_size=2))
    assert [x["key"] for x in a] == [x["key"] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"])
    c = collect(loader(getattr(data, codec), backend, seed=7, batch_size=2), epoch=1)
    assert [x["key"] for x in a] != [x["key"] for x in c]
    d = collect(loader(getattr(data, codec), backend, seed=8, batch_size=2))
    assert [x["key"] for x in a] != [x["key"] for x in d]


def test_dali_and_pyav_cut_the_same_frames_for_a_key(data):
    seen = {}
    for backend, codec in BACKENDS:
        ld = loader(getattr(data, codec), backend, seed=3, batch_size=3, clips_per_video=1)
        for b in collect(ld, epoch=2):
            for key, frames in zip(b["key"], clip_frames(b["video"])):
                seen.setdefault(key, {})[backend] = frames
    both = [k for k, v in seen.items() if len(v) == 2]
    assert len(both) >= 5
    for key in both:
        assert seen[key]["dali"] == seen[key]["pyav"], key


@pytest.mark.parametrize("backend,codec", BACKENDS)
@pytest.mark.parametrize("world_size,drop_last", [(2, True), (3, True), (3, False)])
def test_ranks_are_disjoint_with_equal_batch_counts(data, backend, codec, world_size, drop_last):
    keys, counts = [], []
    for rank in range(world_size):
        ld = loader(getattr(data, codec), backend, batch_size=2, rank=rank, world_size=world_size, seed=1,
                    drop_last=drop_last, train=True)
        batches = collect(ld)
        counts.append((len(batches), len(ld)))
        keys.append({k for b in batches for k in b["key"]})
    # 9 clips (the short video is dropped): drop -> whole rounds of world x 2 clips; wrap -> ceil(largest rank / 2)
    expected = sampling.train_batches(9, world_size, 2) if drop_last else sampling.eval_batches(9, world_size, 2, 1)
    assert counts == [(expected, expected)] * world_size
    for i in range(world_size):
        for j in range(i + 1, world_size):
            assert not keys[i] & keys[j]
    if not drop_last and backend == "pyav":
        assert set().union(*keys) == {k for k, v in data.videos.items() if v["num_frames"] != SHORT}


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_eval_takes_evenly_spaced_clips_deterministically(data, backend, codec):
    ld = loader(getattr(data, codec), backend, train=False, clips_per_video=3, batch_size=6, drop_last=False)
    assert len(ld) == 5  # 27 clips: 9 videos (the short one dropped) x 3
    first, second = collect(ld), collect(ld, epoch=4)
    by_key = {}
    for x, y in zip(first, second):
        assert x["key"] == y["key"] and torch.equal(x["video"], y["video"])
        for key, frames in zip(x["key"], clip_frames(x["video"])):
            by_key.setdefault(key, []).append(frames)
    assert set(by_key) == {k for k, v in data.videos.items() if v["num_frames"] != SHORT}
    for key, clips in by_key.items():
        # UniformClipSampler: floor(linspace(0, K - 1, 3)) of the video's K-clip grid (step between clips 1)
        k = (data.videos[key]["num_frames"] - (CLIP_LEN - 1) * STRIDE - 1) + 1
        picks = [int(i) for i in torch.linspace(0, k - 1, 3).floor()]
        assert clips[:3] == [expected_frames(ld, key, c, data) for c in picks], key  # (the last batch wraps around)


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_frame_rate_derives_the_stride_from_each_videos_fps(data, backend, codec):
    # 25 fps clips at a target of 12.5 fps: every 2nd frame, as frame_stride=2 would give
    ld = loader(getattr(data, codec), backend, frame_stride=1, frame_rate=12.5, train=False, batch_size=10, drop_last=False)
    (batch,) = collect(ld)
    for key, frames in zip(batch["key"], clip_frames(batch["video"])):
        assert data.videos[key]["num_frames"] != SHORT  # dropped by default (torchvision's VideoClips)
        assert frames == [0, 2, 4, 6], key  # the first of the grid


def test_shards_given_as_a_list_of_tars(data, tmp_path):
    tars = sorted(data.vp9.glob("*.tar"))
    ld = loader(tars, "dali", batch_size=2)
    assert ld.num_videos == 10 and ld.classes == sorted(LAYOUT)
    assert set(next(iter(ld))["key"]) <= set(data.videos)
    with pytest.raises(FileNotFoundError, match="nope.tar"):
        loader([tmp_path / "nope.tar"], "pyav")
    with pytest.raises(FileNotFoundError, match="manifest"):
        loader(tmp_path, "pyav")  # a directory without manifest.json


@pytest.mark.parametrize("backend", ["dali", "pyav"])
def test_truncated_tar_is_one_clear_error_naming_it(data, backend, tmp_path):
    import shutil

    copy = tmp_path / "vp9"
    shutil.copytree(data.vp9, copy)
    victim = sorted(copy.glob("*.tar"))[0]
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with pytest.raises(ValueError, match=rf"{victim.name}: truncated or changed since it was indexed.*fastvid inspect --verify"):
        loader(copy, backend)


def test_h264_on_dali_cpu_is_a_clear_error(data):
    with pytest.raises(ValueError, match=r"--codec vp9.*backend='pyav'"):
        loader(data.h264, "dali")
    assert loader(data.h264, "auto").backend == "pyav"
    assert loader(data.vp9, "auto").backend == "dali"  # measured faster than PyAV on VP9 (video/kind.py's auto order)


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_half_precision_channels_last_and_workers(data, backend, codec):
    ld = loader(getattr(data, codec), backend, dtype=torch.float16, channels_last=True, num_workers=2, seed=2)
    ref = loader(getattr(data, codec), backend, seed=2)
    for b, r in zip(collect(ld), collect(ref)):
        v = b["video"]
        assert v.dtype == torch.float16 and v.shape == (4, 3, CLIP_LEN, 112, 112)
        assert v.is_contiguous(memory_format=torch.channels_last_3d)
        assert b["key"] == r["key"]
        assert torch.allclose(v.float(), r["video"], atol=2e-2)
    bf = loader(getattr(data, codec), backend, dtype=torch.bfloat16, batch_size=2)
    assert next(iter(bf))["video"].dtype == torch.bfloat16


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_state_dict_resumes_mid_epoch(data, backend, codec):
    ld = loader(getattr(data, codec), backend, batch_size=2, seed=5)
    ld.set_epoch(1)
    it = iter(ld)
    next(it)
    state = ld.state_dict()
    rest = [b["key"] for b in it]
    resumed = loader(getattr(data, codec), backend, batch_size=2, seed=5)
    resumed.load_state_dict(state)
    assert state["epoch"] == 1 and state["batches_done"] == 1
    assert [b["key"] for b in resumed] == rest


@dataclasses.dataclass(frozen=True)
class CopyItem:
    key: str
    source: str
    src_dir: str
    shard: int
    index: int
    damage: str


def copy_sample(item: CopyItem) -> dict:
    """Writer encode: a sample of an existing shard set, optionally damaged (video bytes cut, or json emptied)."""
    shard_set = open_shard_set(item.src_dir)
    comps = shard_set.read_components(item.shard, item.index)
    if item.damage == "video":
        comps[shard_set.video_ext] = comps[shard_set.video_ext][:40] + bytes(200)
    elif item.damage == "json":
        comps["json"] = b"{}"
    return comps


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_broken_samples_are_skipped_counted_and_logged(data, backend, codec, tmp_path, caplog):
    from fastvid.store.writer import ShardJob, write_shard_set

    src = open_shard_set(getattr(data, codec))
    flat = [(si, i, k) for si, s in enumerate(src.shards) for i, k in enumerate(s.keys)]
    damaged = {flat[1][2]: "video", flat[6][2]: "json"}
    items = [CopyItem(k, k, str(getattr(data, codec)), si, i, damaged.get(k, "")) for si, i, k in flat]
    write_shard_set(items, copy_sample, tmp_path, ShardJob(kind="video", classes=src.classes, options=src.manifest["options"],
                    max_samples=5))
    ld = loader(tmp_path, backend, batch_size=2, train=False, drop_last=False)
    batches = collect(ld)
    assert len(batches) == len(ld) == 5
    seen = {k for b in batches for k in b["key"]}
    assert not seen & set(damaged)
    assert ld.stats["decode_failures"] == 2 and set(ld.stats["failed_keys"]) == set(damaged)
    assert all(k in caplog.text for k in damaged)
    for b in batches:  # what did come is intact
        for i, key in enumerate(b["key"]):
            assert abs(levels(b["video"])[i, 1, 0].item() - frame_code(data.videos[key]["video_id"])) < 3.5


@pytest.mark.gpu
def test_nvdec_matches_dali_cpu_on_the_same_clips(tmp_path):
    # NVDEC decodes VP9 from 128x128 up: these clips are bigger than the CPU tests' 64x48.
    data = make_shards(tmp_path, height=128, width=160)
    cpu = loader(data.vp9, "dali", train=False, clips_per_video=2, batch_size=4, drop_last=False)
    gpu = video_loader(data.vp9, backend="dali", device="cuda", train=False, clips_per_video=2, batch_size=4,
                      clip_len=CLIP_LEN, frame_stride=STRIDE, drop_last=False)
    for c, g in zip(collect(cpu), collect(gpu)):
        assert c["key"] == g["key"]
        assert g["video"].device.type == "cuda"
        diff = (g["video"].cpu() - c["video"]).abs()
        assert diff.mean().item() < 0.05 and diff.max().item() < 0.5  # close, not bit-equal (decoder/resize kernels)
    h264 = video_loader(data.h264, backend="dali", device="cuda", train=False, batch_size=4, clip_len=CLIP_LEN,
                       frame_stride=STRIDE, drop_last=False)
    ref = loader(data.h264, "pyav", train=False, batch_size=4, drop_last=False)
    for g, p in zip(collect(h264), collect(ref)):
        assert g["key"] == p["key"]
        assert clip_frames(g["video"].cpu()) == clip_frames(p["video"])


def test_bench_loader_reports_every_backend_and_ratios(data, tmp_path):
    from fastvid.benchmarks import loader as bench

    out = tmp_path / "loader.json"
    parser = __import__("argparse").ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--shards", str(data.vp9), "--videos", str(data.sources), "--device", "cpu", "--batch-size", "2", "--clip-len", "4",
                              "--batches", "2", "--warmup", "1", "--workers", "1", "--json", str(out)])
    assert bench.run(args) == 0
    result = json.loads(out.read_text())
    # every backend that can decode VP9 on the CPU, side by side, plus the baseline (DALI's video reader peer is GPU-only)
    assert set(result["backends"]) == {"dali", "pyav", "pyav-threads", "baseline"}
    for name, r in result["backends"].items():
        assert r["clips"] == 4 and r["batches"] == 2 and r["clips_per_s"] > 0 and r["cpu_cores_used"] >= 0
        if name != "baseline":
            assert r["stage_ms_per_clip"] and all(v >= 0 for v in r["stage_ms_per_clip"].values())
    assert r["nvdec_util_mean"] is None
    assert set(result["speedup_vs_baseline"]) == {"dali", "pyav", "pyav-threads"}
    assert result["device_info"]["cpu_cores"] >= 1


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_iteration_makes_no_blocking_device_copies(data, backend, codec, monkeypatch):
    """A blocking .to(device) synchronizes the CUDA stream: the loader may only make non_blocking ones per batch."""
    real_to = torch.Tensor.to
    blocking = []

    def spy(self, *args, **kwargs):
        names_device = any(isinstance(a, (str, torch.device)) for a in args) or "device" in kwargs
        if names_device and not kwargs.get("non_blocking", False):
            blocking.append((args, kwargs))
        return real_to(self, *args, **kwargs)

    ld = loader(getattr(data, codec), backend, batch_size=2)
    monkeypatch.setattr(torch.Tensor, "to", spy)
    assert len(collect(ld)) == len(ld)
    assert blocking == []


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_shard_set_where_nothing_decodes_is_an_error_not_a_hang(data, backend, codec, tmp_path):
    """DALI's reader never runs out: without a bound on failures in a row it would skip bad samples forever."""
    from fastvid.store.writer import ShardJob, write_shard_set

    src = open_shard_set(getattr(data, codec))
    flat = [(si, i, k) for si, s in enumerate(src.shards) for i, k in enumerate(s.keys)]
    items = [CopyItem(k, k, str(getattr(data, codec)), si, i, "json") for si, i, k in flat]
    write_shard_set(items, copy_sample, tmp_path, ShardJob(kind="video", classes=src.classes, options=src.manifest["options"],
                    max_samples=5))
    ld = loader(tmp_path, backend, batch_size=2)
    with pytest.raises(RuntimeError, match="failed"):
        collect(ld)


def test_dali_plain_cuda_means_the_current_device(data, monkeypatch):
    """device="cuda" on rank 3 after torch.cuda.set_device(3) must decode on GPU 3, not on GPU 0."""
    from fastvid.video.dali_backend import DALIBackend
    from fastvid.video.plan import ClipConfig
    from fastvid.video.presets import get_preset

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    config = ClipConfig(clip_len=CLIP_LEN, frame_stride=STRIDE, clips_per_video=1, train=True, preset=get_preset("video_resnet"))
    kw = dict(videos_per_chunk=2, num_threads=1, dtype=torch.float32, channels_last=False)
    shard_set = open_shard_set(data.h264)
    assert DALIBackend(shard_set, config, device="cuda", **kw).device_id == 3
    assert DALIBackend(shard_set, config, device="cuda:1", **kw).device_id == 1


def test_more_ranks_than_videos_is_a_clear_error_on_every_rank(data):
    """Evaluation pads short ranks by wrapping, but a rank with no video at all would fail alone and hang the others."""
    n = len(data.videos)
    for rank in (0, n):
        with pytest.raises(ValueError, match=f"{n} videos cannot be split over {n + 1} ranks"):
            loader(data.h264, "pyav", train=False, rank=rank, world_size=n + 1)


def test_eval_views_decode_each_video_once_and_cut_all_views(data, monkeypatch):
    """--eval-views 2x3: every video gives 2 uniform clips x 3 crops from ONE decode of its frames."""
    from fastvid.video import pyav_backend

    calls = []
    real = pyav_backend.decode_frames

    def counting(data_bytes, indices, size=None):
        calls.append(size)
        return real(data_bytes, indices, size)

    monkeypatch.setattr(pyav_backend, "decode_frames", counting)
    ld = loader(data.h264, "pyav", train=False, clips_per_video=2, spatial_views=3, batch_size=6, drop_last=False)
    batches = collect(ld)
    assert len(batches) == len(ld) == 9  # 9 videos x 6 views / 6
    assert len(calls) == 9 and len(set(calls)) == 1  # one decode per video, at one scale for all views
    for b in batches:
        assert len(set(b["key"])) == 1 and b["video"].shape[0] == 6
        frames = clip_frames(b["video"])
        key = b["key"][0]
        k = data.videos[key]["num_frames"] - (CLIP_LEN - 1) * STRIDE
        assert b["clip"] == [0, 0, 0, k - 1, k - 1, k - 1]
        assert frames[:3] == [expected_frames(ld, key, 0, data)] * 3
        assert frames[3:] == [expected_frames(ld, key, k - 1, data)] * 3
    with pytest.raises(ValueError, match="spatial_views must be 1 or 3"):
        loader(data.h264, "pyav", train=False, spatial_views=2)


@pytest.mark.parametrize("backend,codec", BACKENDS)
def test_tsn_segments_take_one_frame_per_segment(data, backend, codec):
    ld = loader(getattr(data, codec), backend, sampler="segments", batch_size=2, seed=4)
    assert len(ld) == 5  # every video gives a sample (segments never drop a video)
    for b in collect(ld):
        for key, frames in zip(b["key"], clip_frames(b["video"])):
            n = data.videos[key]["num_frames"]
            expected = sampling.segment_indices(n, CLIP_LEN, True, plan._clip_rng(ld.config, 0, key, 0, 0))
            assert all(i * n / CLIP_LEN <= f < (i + 1) * n / CLIP_LEN for i, f in enumerate(expected))
            assert frames == (expected % 28).tolist()
    ev = loader(getattr(data, codec), backend, sampler="segments", train=False, batch_size=10, drop_last=False)
    (batch,) = collect(ev)
    for key, frames in zip(batch["key"], clip_frames(batch["video"])):
        assert frames == (sampling.segment_indices(data.videos[key]["num_frames"], CLIP_LEN, False) % 28).tolist()


def test_cut_views_gathers_the_same_pixels_as_slicing():
    from fastvid.video.views import cut_views

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (5, 20, 30, 3), dtype=torch.uint8, generator=g)
    index = torch.tensor([[0, 2, 4], [1, 1, 3]])
    crops = torch.tensor([[0, 0], [4, 12]])
    out = cut_views(frames, index, crops, (16, 18), torch.tensor([False, True]))
    assert out.shape == (2, 3, 16, 18, 3) and out.dtype == torch.uint8
    assert torch.equal(out[0], frames[[0, 2, 4], 0:16, 0:18])
    assert torch.equal(out[1], frames[[1, 1, 3], 4:20, 12:30].flip(2))
    with pytest.raises(ValueError, match="leaves"):
        cut_views(frames, index, torch.tensor([[0, 0], [5, 0]]), (16, 18))


@pytest.mark.gpu
def test_eval_views_are_cut_on_the_gpu_and_match_the_cpu(data):
    cpu = loader(data.h264, "pyav", train=False, clips_per_video=2, spatial_views=3, batch_size=6, drop_last=False)
    gpu = video_loader(data.h264, backend="pyav", device="cuda", train=False, clips_per_video=2, spatial_views=3, batch_size=6,
                      clip_len=CLIP_LEN, frame_stride=STRIDE, num_workers=0, drop_last=False)
    for a, b in zip(collect(cpu), collect(gpu)):
        assert b["video"].device.type == "cuda" and a["key"] == b["key"]
        torch.testing.assert_close(b["video"].cpu(), a["video"])


def test_pyav_workers_persist_across_epochs(data):
    """Workers start once per loader, not once per epoch: the same processes decode epoch 0 and epoch 1."""
    ld = loader(data.h264, "pyav", batch_size=2, num_workers=2)
    try:
        collect(ld, epoch=0)
        first = set(ld.stats["worker_pids"])
        ld.stats["worker_pids"].clear()
        e1 = collect(ld, epoch=1)
        assert len(first) == 2 and set(ld.stats["worker_pids"]) == first
        assert os.getpid() not in first
        # an epoch abandoned half-way (work still queued in the workers) does not leak into the next one
        it = iter(ld)
        next(it)
        it.close()
        assert [b["key"] for b in collect(ld, epoch=1)] == [b["key"] for b in e1]
        assert set(ld.stats["worker_pids"]) == first
    finally:
        ld.close()


def test_dali_pipeline_is_built_once_and_epochs_stay_reproducible(data):
    ld = loader(data.vp9, "dali", batch_size=2, seed=4)
    e0, e1, e0_again = collect(ld, 0), collect(ld, 1), collect(ld, 0)
    assert ld._impl.builds == 1
    assert [b["key"] for b in e0] == [b["key"] for b in e0_again] != [b["key"] for b in e1]
    for x, y in zip(e0, e0_again):
        assert torch.equal(x["video"], y["video"])
    # an epoch abandoned half-way leaves the pipeline usable for the next one
    it = iter(ld)
    next(it)
    it.close()
    assert [b["key"] for b in collect(ld, 1)] == [b["key"] for b in e1] and ld._impl.builds == 1


def test_every_cpu_backend_executes_the_same_plan(data):
    """Same keys in the same order and the same clip content (up to resize kernels) on the same work list."""
    runs = {}
    for backend, codec in [("dali", "vp9"), ("pyav", "vp9"), ("pyav-threads", "vp9"), ("pyav-threads", "h264")]:
        ld = loader(getattr(data, codec), backend, seed=6, batch_size=5, clips_per_video=2, num_threads=2)
        runs[(backend, codec)] = collect(ld, epoch=1)
        if backend == "pyav-threads":
            assert 1 <= ld._impl.decoders_created <= 2  # one decoder per thread, reused for every sample
    ref = runs[("pyav", "vp9")]
    for name, batches in runs.items():
        assert [b["key"] for b in batches] == [b["key"] for b in ref], name
        for b, r in zip(batches, ref):
            assert clip_frames(b["video"]) == clip_frames(r["video"]), name
            assert (b["video"] - r["video"]).abs().mean().item() < 0.05, name


def test_per_clip_boxes_switch_dali_to_its_per_clip_graph(data, monkeypatch):
    """Plans whose clips have their own boxes and flips (multi-view crops) run on every backend; DALI
    starts on its one-ROI-per-video graph and moves to the per-frame-warp graph at the first such plan."""
    import numpy as np

    from fastvid.video import dali_backend, pyav_backend
    from fastvid.video import plan as plan_module
    from fastvid.video.plan import ClipPlan

    def per_clip(config, meta, key, epoch, item):
        plan = plan_module.plan_work(config, meta, key, epoch, item)
        boxes = plan.boxes.copy()
        boxes[1::2, 2:] = boxes[1::2, 2:] * 3 // 4  # every other clip: a smaller box, mirrored
        flips = np.arange(len(boxes)) % 2 == 1
        return ClipPlan(plan.frames, boxes, flips, plan.out_size, plan.clips)

    for module in (dali_backend, pyav_backend):
        monkeypatch.setattr(module, "plan_work", per_clip)
    kw = dict(train=False, clips_per_video=2, batch_size=4, drop_last=False)
    dali, pyav = loader(data.vp9, "dali", **kw), loader(data.vp9, "pyav", **kw)
    got, want = collect(dali), collect(pyav)
    assert dali._impl.per_clip and dali._impl.builds == 2
    assert [b["key"] for b in got] == [b["key"] for b in want]
    for g, w in zip(got, want):
        assert clip_frames(g["video"]) == clip_frames(w["video"])
        assert (g["video"] - w["video"]).abs().mean().item() < 0.05
    assert [b["key"] for b in collect(dali, 1)] == [b["key"] for b in got] and dali._impl.builds == 2


@pytest.mark.parametrize("backend", ["dali", "pyav-threads"])
def test_eval_views_through_other_backends_match_pyav(data, backend):
    """--eval-views 2x3 through DALI's external source or the threaded decoders: PyAV's keys, grid clips and frames."""
    runs = []
    for name in ("pyav", backend):
        ld = loader(data.vp9, name, train=False, clips_per_video=2, spatial_views=3, batch_size=6, drop_last=False, num_threads=2)
        runs.append(collect(ld))
        ld.close()  # no decoder threads left running when a later test forks its workers
    ref, other = runs
    assert len(ref) == len(other) == 9
    for p, d in zip(ref, other):
        assert p["key"] == d["key"] and p["clip"] == d["clip"]
        assert clip_frames(p["video"]) == clip_frames(d["video"])
        assert (p["video"] - d["video"]).abs().mean().item() < 0.05


def test_pyav_first_epoch_starts_in_process_and_matches_the_workers(data):
    """The first epoch's first chunk is decoded in this process while the workers start (time to first batch);
    it gives the same clips as the workers would, and later chunks come from the workers."""
    inline = loader(data.h264, "pyav", batch_size=2, num_workers=2)
    plain = loader(data.h264, "pyav", batch_size=2, num_workers=0)
    try:
        got, want = collect(inline, epoch=0), collect(plain, epoch=0)
        assert [b["key"] for b in got] == [b["key"] for b in want]
        for a, b in zip(got, want):
            torch.testing.assert_close(a["video"], b["video"])
        assert os.getpid() not in inline.stats["worker_pids"] and len(inline.stats["worker_pids"]) == 2
    finally:
        inline.close()
        plain.close()
