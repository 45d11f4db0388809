"""Every GPU decoder backend against PyAV on the same keys (GPU only; each skips when its package is missing).

NVDEC needs frames of at least 128x128, so these shards are 160x128. A decoder passes when it gives
the same keys in the same order, the same frames (the coded frame number in the red channel) and
pixel values within a small tolerance of PyAV's (decoders and resize kernels differ slightly).
"""

from __future__ import annotations

import pytest
import torch

from fastvid import _gpu
from conftest import video_loader
from fastvid.pipeline import backends

from test_loader import CLIP_LEN, STRIDE, clip_frames, collect, make_shards

pytestmark = pytest.mark.gpu

PACKAGES = {"dali": "nvidia.dali", "pynvvideocodec": "PyNvVideoCodec", "torchcodec": "torchcodec.decoders", "spdl": "spdl.io"}


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("gpu_decoders"), height=128, width=160)


@pytest.mark.parametrize("backend", list(PACKAGES))
def test_gpu_decoder_matches_pyav_on_the_same_keys(big, backend):
    if not _gpu.has_module(PACKAGES[backend]):
        pytest.skip(f"{PACKAGES[backend]} is not installed")
    if not backends.spec("video", backend).can_decode("h264", "cuda", 160, 128):
        pytest.skip(f"{backend} cannot decode here (its runtime libraries are missing)")
    kw = dict(train=True, clips_per_video=2, batch_size=4, clip_len=CLIP_LEN, frame_stride=STRIDE, seed=3, drop_last=False)
    gpu = video_loader(big.h264, backend=backend, device="cuda", num_threads=2, **kw)
    ref = video_loader(big.h264, backend="pyav", device="cpu", num_workers=0, **kw)
    got, want = collect(gpu, epoch=1), collect(ref, epoch=1)
    assert len(got) == len(want) == len(gpu)
    for g, p in zip(got, want):
        assert g["key"] == p["key"]
        assert g["video"].device.type == "cuda"
        assert clip_frames(g["video"].cpu()) == clip_frames(p["video"])
        diff = (g["video"].cpu() - p["video"]).abs()
        assert diff.mean().item() < 0.06, backend
    if backend != "dali":
        assert 1 <= gpu._impl.decoders_created <= 2  # decoders are per thread, reused across samples


def test_auto_on_a_gpu_takes_a_cpu_decoder_for_videos_below_nvdec_size(tmp_path):
    small = make_shards(tmp_path, height=48, width=64)
    ld = video_loader(small.h264, backend="auto", device="cuda", batch_size=2, clip_len=CLIP_LEN, frame_stride=STRIDE)
    assert ld.backend == "pyav"
    batch = next(iter(ld))
    assert batch["video"].device.type == "cuda" and batch["video"].shape[0] == 2
    big = video_loader(make_shards(tmp_path / "big", height=128, width=160).h264, backend="auto", device="cuda",
                      batch_size=2, clip_len=CLIP_LEN, frame_stride=STRIDE)
    assert big.backend == next(n for n in backends.auto_order("video", "cuda") if backends.spec("video", n).can_decode("h264", "cuda", 160, 128))
    assert torch.isfinite(next(iter(big))["video"]).all()
